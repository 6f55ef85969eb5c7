//! Media through the node's built-in relay, and through `trunkline-relay` driven by Kamailio's
//! rtpengine module. The peers are real: SIPp playing a G.711 pcap and echoing RTP, baresip,
//! Kamailio. Assets (scenarios, the pcap generator, Kamailio and baresip configuration) are the
//! ones in `tests/media/` (see tests/media/README.md).
//!
//! Every decision comes from counters, SDP and SIP traces, never from how fast something ran;
//! the only time bound asserted is the media timeout's (hang-up within timeout + 2 s of the
//! last packet), which is the feature itself. Sleeps and polls only bound how long a test runs.
//!
//! Network rule: everything is on loopback. The NAT test advertises a private address
//! (192.168.77.1) in SDP and proves from counters that nothing was relayed anywhere but to the
//! real source.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trunkline_e2e::child::Proc;
use trunkline_e2e::media_node::{media_node, MediaSettings};
use trunkline_e2e::ng::{ng, query_streams, Bv};
use trunkline_e2e::pcap::{make_pcap, PPS};
use trunkline_e2e::relay_metrics::{dropped, media_idle, one_session_relaying, relayed, settled};
use trunkline_e2e::relay_sdp::{ensure_names_relay, received_sdp};
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, media_scenario, rtp_caller};
use trunkline_e2e::*;

// ---------------------------------------------------------------------------------------------
// Assets, ports, processes
// ---------------------------------------------------------------------------------------------

fn media_dir() -> PathBuf {
    workspace_root().join("tests").join("media")
}

/// `TRUNKLINE_RELAY_BIN`, else `<workspace>/target/release/trunkline-relay`.
fn relay_binary() -> PathBuf {
    std::env::var_os("TRUNKLINE_RELAY_BIN").map_or_else(
        || workspace_root().join("target/release/trunkline-relay"),
        PathBuf::from,
    )
}

/// A port free for UDP and TCP whose successor is free too (baresip binds SIP port + 1).
fn free_port_pair(ip: Ipv4Addr) -> Result<u16> {
    for _ in 0..200 {
        let p = free_port(ip)?;
        if p < u16::MAX && free_port_is(ip, p + 1) {
            return Ok(p);
        }
    }
    bail!("no two consecutive free ports on {ip}")
}

fn free_port_is(ip: Ipv4Addr, p: u16) -> bool {
    std::net::TcpListener::bind((ip, p)).is_ok() && UdpSocket::bind((ip, p)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// SDP and SIPp traces
// ---------------------------------------------------------------------------------------------

/// Fails unless the SDP `who` received names the relay (127.0.0.1) and a port in `range`,
/// rather than the other party's address `other`.
fn assert_anchored(
    who: &str,
    got: (IpAddr, u16),
    range: (u16, u16),
    other: SocketAddr,
) -> Result<()> {
    ensure_names_relay(&format!("{who}: SDP"), got, range)?;
    let (ip, port) = got;
    ensure!(
        SocketAddr::new(ip, port) != other && ip != other.ip(),
        "{who}: SDP names the other party's media address {other}"
    );
    Ok(())
}

/// One message of a `-trace_msg` log with its time (Unix seconds).
struct Timed {
    at: f64,
    sent: bool,
    text: String,
}

/// Seconds since the Unix epoch (local time, which is fine for differences) of a SIPp trace
/// stamp `YYYY-MM-DD HH:MM:SS.micros`.
fn trace_time(stamp: &str) -> Option<f64> {
    let mut f = stamp.split_whitespace();
    let date: Vec<i64> = f
        .next()?
        .split('-')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let time: Vec<f64> = f
        .next()?
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let ([y, m, d], [hh, mm, ss]) = (date.as_slice(), time.as_slice()) else {
        return None;
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if *m <= 2 { y - 1 } else { *y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days as f64 * 86_400.0 + hh * 3600.0 + mm * 60.0 + ss)
}

/// Parses a SIPp `-trace_msg` log keeping each message's timestamp (the
/// `YYYY-MM-DD HH:MM:SS.micros` after the dashes).
fn timed_trace(path: &Path) -> Result<Vec<Timed>> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for block in text
        .split("-----------------------------------------------")
        .skip(1)
    {
        let mut lines = block.lines();
        let Some(stamp) = lines.next() else { continue };
        let Some(at) = trace_time(stamp) else {
            continue;
        };
        let Some(kind) = lines.next() else { continue };
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let body = lines
            .skip_while(|l| l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        out.push(Timed {
            at,
            sent,
            text: body,
        });
    }
    Ok(out)
}

fn first_at(msgs: &[Timed], sent: bool, start: &str) -> Result<f64> {
    msgs.iter()
        .find(|m| m.sent == sent && m.text.starts_with(start))
        .map(|m| m.at)
        .ok_or_else(|| {
            anyhow!(
                "no {} '{start}' in the trace",
                if sent { "sent" } else { "received" }
            )
        })
}

/// Receive queue (bytes) and drop count of the UDP socket bound to `addr`, from /proc/net/udp.
fn udp_socket_queue(addr: SocketAddr) -> Option<(u64, u64)> {
    let IpAddr::V4(ip) = addr.ip() else {
        return None;
    };
    let want = format!(
        "{:08X}:{:04X}",
        u32::from_le_bytes(ip.octets()),
        addr.port()
    );
    let table = std::fs::read_to_string("/proc/net/udp").ok()?;
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.get(1) != Some(&want.as_str()) {
            return None;
        }
        let rx = f.get(4)?.split(':').nth(1)?;
        let rx = u64::from_str_radix(rx, 16).ok()?;
        let drops = f.last()?.parse().ok()?;
        Some((rx, drops))
    })
}

/// UDP sockets on this machine whose remote address is `ip` (connected sockets only).
fn udp_sockets_towards(ip: Ipv4Addr) -> Vec<String> {
    let want = format!("{:08X}:", u32::from_le_bytes(ip.octets()));
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(2)
                .is_some_and(|r| r.starts_with(&want))
        })
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// ng protocol (rtpengine's control protocol) client, for trunkline-relay
// ---------------------------------------------------------------------------------------------

/// Starts `trunkline-relay` (rtpengine's command line) and waits for an ng pong.
fn start_relay(out: &Path, ng_addr: SocketAddr, ports: (u16, u16)) -> Result<Proc> {
    let bin = relay_binary();
    ensure!(
        bin.exists(),
        "{} does not exist: run `cargo build --release --bin trunkline-relay` or set \
         TRUNKLINE_RELAY_BIN",
        bin.display()
    );
    let mut relay = Proc::spawn(
        "trunkline-relay",
        Command::new(&bin)
            .args(["--interface", "127.0.0.1"])
            .args(["--listen-ng", &ng_addr.to_string()])
            .args(["--port-min", &ports.0.to_string()])
            .args(["--port-max", &ports.1.to_string()])
            .args(["--timeout", "60", "--foreground", "--log-level", "6"]),
        out.join("relay.log"),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        relay.check_alive()?;
        if let Ok(r) = ng(ng_addr, &[("command", "ping")]) {
            if r.get("result").and_then(Bv::str).as_deref() == Some("pong") {
                return Ok(relay);
            }
        }
        if Instant::now() >= deadline {
            bail!(
                "trunkline-relay gave no ng pong on {ng_addr}; log:\n{}",
                tail(&relay.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

// ---------------------------------------------------------------------------------------------
// 1. SIPp with RTP through the node
// ---------------------------------------------------------------------------------------------

/// SIPp caller plays a 3 s G.711 pcap during a 6 s call, the SIPp callee echoes it. The SDP
/// each side receives names the node's relay (127.0.0.1, a port of [media]), not the other
/// party; the relay forwarded more packets than the caller sent (so the echo came back through
/// it) and no more than twice as many; the echo arrived at the caller's media socket; the call
/// succeeds on both sides and the relay frees everything afterwards.
#[test]
fn media_sipp_call_is_anchored_and_relayed() -> Result<()> {
    let out = out_dir("media_sipp_anchored")?;
    let range = (41000, 41099);
    let sent = make_pcap(&out, 3)?;
    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let uac_mp = free_udp_block(UAC_IP, 4)?;
    let uas = echo_callee(&media_scenario("uas_rtp.xml"), uas_mp)
        .timeout_secs(40)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, &MediaSettings::new(range, 60))?;
    let mut client = rtp_caller(&media_scenario("uac_rtp.xml"), node.sip_addr(), uac_mp)
        .duration_ms(6000)
        .timeout_secs(30)
        .spawn(&out)?;

    // During the call: one session, its ports, and the echo reaching the caller's media socket
    // (SIPp's caller does not read it, so echoed packets queue up there).
    let uac_media = SocketAddr::new(IpAddr::V4(UAC_IP), uac_mp);
    let mut echo_seen = None;
    let mut during = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && client.is_running() {
        if let Some((rx, drops)) = udp_socket_queue(uac_media) {
            if rx > 0 || drops > 0 {
                echo_seen = Some((rx, drops));
            }
        }
        let m = node.metrics()?;
        if one_session_relaying(&m) {
            during = Some(m);
        }
        if echo_seen.is_some() && during.is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let r = client.wait(Duration::from_secs(40))?;
    r.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;

    let during = during.ok_or_else(|| anyhow!("never saw an active media session relaying"))?;
    let ports = during.value("trunkline_media_ports_in_use", &[])?;
    ensure!(
        ports >= 4.0,
        "media ports in use during the call: {ports} (want >= 4: RTP+RTCP per side)"
    );
    let (rx, drops) = echo_seen.ok_or_else(|| {
        anyhow!("no RTP ever arrived at the caller's media socket {uac_media} (the echo did not come back)")
    })?;
    eprintln!("caller media socket: rx queue {rx} bytes, {drops} drops");

    assert_anchored(
        "INVITE at the callee",
        received_sdp(&server.messages_log(), "INVITE ")?,
        range,
        uac_media,
    )?;
    assert_anchored(
        "200 at the caller",
        received_sdp(&client.messages_log(), "SIP/2.0 200")?,
        range,
        SocketAddr::new(IpAddr::V4(UAS_IP), uas_mp),
    )?;

    let m = settled(&node)?;
    let (rel, drp) = (relayed(&m), dropped(&m));
    eprintln!("relay: {rel} packets relayed, {drp} dropped; the caller sent {sent}");
    ensure!(
        rel > sent as f64,
        "relayed {rel} packets, not more than the {sent} the caller sent: no echo came back through the relay"
    );
    ensure!(
        rel >= 1.5 * sent as f64 && rel <= 2.0 * sent as f64,
        "relayed {rel} packets for {sent} sent and echoed (want {}..={})",
        1.5 * sent as f64,
        2 * sent
    );
    ensure!(
        m.sum("trunkline_media_bytes_total") >= rel * 172.0,
        "media bytes too low for {rel} PCMU packets"
    );
    media_idle(&node)?;
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. NAT: the caller advertises an address it does not send from
// ---------------------------------------------------------------------------------------------

/// The caller is behind a NAT: its SDP says `c=IN IP4 192.168.77.1` (its LAN address), but its
/// SIP and its RTP (sent by this test, first) come from 127.0.0.2. The node's rule for callers
/// sends to the SIP source's address with the SDP's port, which is where the RTP comes from, so
/// the caller is latched by its first packet. Every packet sent is echoed back by the SIPp
/// callee through the relay and arrives at the real source; the relay's counters then prove that
/// no packet was relayed anywhere else: it relayed exactly 2 x sent (sent to the callee + as many
/// echoes, all of which we received) and dropped none. No UDP socket is connected to
/// 192.168.77.1.
#[test]
fn media_nat_caller_is_latched() -> Result<()> {
    const NAT_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
    const PACKETS: u16 = 150;
    let out = out_dir("media_nat_latching")?;
    let range = (41100, 41199);
    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let rtp_port = free_udp_block(UAC_IP, 2)?;
    let rtp = UdpSocket::bind((UAC_IP, rtp_port)).context("binding the caller's RTP socket")?;
    let uas = echo_callee(&media_scenario("uas_rtp.xml"), uas_mp)
        .timeout_secs(40)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, &MediaSettings::new(range, 60))?;
    let mut client = Sipp::uac(&media_scenario("uac_sdp_only.xml"), node.sip_addr())
        .calls(1)
        .duration_ms(8000)
        .trace_msg()
        .timeout_secs(30)
        .arg("-default_behaviors")
        .arg("all,-abortunexp")
        .arg("-key")
        .arg("sdp_ip")
        .arg(&NAT_IP.to_string())
        .arg("-key")
        .arg("sdp_port")
        .arg(&rtp_port.to_string())
        .spawn(&out)?;

    // The relay's port for the caller, from the 200 the caller received.
    let mut relay_a = None;
    let found = wait_until(Duration::from_secs(10), || {
        relay_a = received_sdp(&client.messages_log(), "SIP/2.0 200").ok();
        relay_a.is_some()
    });
    ensure!(
        found,
        "the caller got no 200 with SDP; trace:\n{}",
        tail(&client.messages_log(), 40)
    );
    let (ip, port) = relay_a.unwrap_or((IpAddr::V4(NODE_IP), 0));
    assert_anchored(
        "200 at the caller",
        (ip, port),
        range,
        SocketAddr::new(IpAddr::V4(UAS_IP), uas_mp),
    )?;
    let relay_a = SocketAddr::new(ip, port);
    let the_sdp = received_sdp(&server.messages_log(), "INVITE ")?;
    assert_anchored(
        "INVITE at the callee",
        the_sdp,
        range,
        SocketAddr::new(IpAddr::V4(NAT_IP), rtp_port),
    )?;

    // The caller sends first: PACKETS PCMU packets, 20 ms apart, counting echoes meanwhile.
    rtp.set_read_timeout(Some(Duration::from_millis(5)))?;
    let mut echoes = 0u64;
    let mut strangers = Vec::new();
    let mut buf = [0u8; 2048];
    let mut receive = |until: Instant, echoes: &mut u64| {
        while Instant::now() < until {
            if let Ok((n, from)) = rtp.recv_from(&mut buf) {
                if from == relay_a && n == 172 {
                    *echoes += 1;
                } else {
                    strangers.push(format!("{n} bytes from {from}"));
                }
            }
        }
    };
    let start = Instant::now();
    let mut towards_nat = Vec::new();
    for seq in 0..PACKETS {
        let mut pkt = vec![0x80, 0x00];
        pkt.extend_from_slice(&seq.to_be_bytes());
        pkt.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
        pkt.extend_from_slice(&0x4e41_5431u32.to_be_bytes());
        pkt.extend_from_slice(&[0xffu8; 160]);
        rtp.send_to(&pkt, relay_a)?;
        if seq == PACKETS / 2 {
            towards_nat = udp_sockets_towards(NAT_IP);
        }
        receive(
            start + Duration::from_millis(20 * (u64::from(seq) + 1)),
            &mut echoes,
        );
    }
    let drain_until = Instant::now() + Duration::from_secs(2);
    while echoes < u64::from(PACKETS) && Instant::now() < drain_until {
        receive(Instant::now() + Duration::from_millis(50), &mut echoes);
    }

    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    ensure!(
        towards_nat.is_empty(),
        "UDP sockets connected to {NAT_IP}: {towards_nat:?}"
    );
    ensure!(
        strangers.is_empty(),
        "unexpected datagrams at the caller's RTP socket: {strangers:?}"
    );
    ensure!(
        echoes == u64::from(PACKETS),
        "the caller (advertising {NAT_IP}) got {echoes} of its {PACKETS} packets back: \
         media did not flow both ways to its real address"
    );
    let m = settled(&node)?;
    let (rel, drp) = (relayed(&m), dropped(&m));
    eprintln!("relay: {rel} relayed, {drp} dropped; caller sent {PACKETS}, got {echoes} echoes");
    // Caller -> callee is at most PACKETS, callee -> caller at most what the callee got (it only
    // echoes), and we received PACKETS echoes: so exactly 2 x PACKETS relayed means every packet
    // relayed toward the caller reached 127.0.0.2, none went to the advertised 192.168.77.1.
    ensure!(
        rel == 2.0 * f64::from(PACKETS),
        "relayed {rel} packets, want exactly {} (caller's {PACKETS} + their echoes)",
        2 * PACKETS
    );
    ensure!(drp == 0.0, "the relay dropped {drp} packets");
    media_idle(&node)?;
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. Two baresip instances through the node
// ---------------------------------------------------------------------------------------------

/// One headless baresip (tests/media/baresip/config.template) on 127.0.0.1.
struct Baresip {
    proc: Proc,
    ctrl: u16,
}

impl Baresip {
    fn start(out: &Path, name: &str, account: &str) -> Result<(Baresip, u16)> {
        let dir = out.join(name);
        std::fs::create_dir_all(&dir)?;
        let sip = free_port_pair(NODE_IP)?;
        let ctrl = free_port(NODE_IP)?;
        let template = std::fs::read_to_string(media_dir().join("baresip/config.template"))?;
        std::fs::write(
            dir.join("config"),
            template
                .replace("@SIP_PORT@", &sip.to_string())
                .replace("@CTRL_PORT@", &ctrl.to_string()),
        )?;
        std::fs::write(
            dir.join("accounts"),
            format!("{}\n", account.replace("@SIP_PORT@", &sip.to_string())),
        )?;
        std::fs::write(dir.join("contacts"), "")?;
        let proc = Proc::spawn(
            &format!("baresip {name}"),
            Command::new("baresip").arg("-f").arg(&dir),
            dir.join("baresip.log"),
        )?;
        Ok((Baresip { proc, ctrl }, sip))
    }

    fn wait_ctrl(&mut self) -> Result<()> {
        let addr = SocketAddr::new(IpAddr::V4(NODE_IP), self.ctrl);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            self.proc.check_alive()?;
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "{}: ctrl_tcp {addr} never accepted; log:\n{}",
            self.proc.name,
            tail(&self.proc.log, 30)
        )
    }

    /// One ctrl_tcp command (netstring-framed JSON); returns the response's JSON text.
    fn command(&self, command: &str, params: &str) -> Result<String> {
        let addr = SocketAddr::new(IpAddr::V4(NODE_IP), self.ctrl);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_millis(200)))?;
        let body = format!(r#"{{"command":"{command}","params":"{params}","token":"e2e"}}"#);
        s.write_all(format!("{}:{body},", body.len()).as_bytes())?;
        let mut buf = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut chunk = [0u8; 4096];
        while Instant::now() < deadline {
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(_) => {}
            }
            // netstrings: LEN ":" BODY ","
            let mut rest = &buf[..];
            while let Some(colon) = rest.iter().position(|&b| b == b':') {
                let Some(len) = std::str::from_utf8(&rest[..colon])
                    .ok()
                    .and_then(|l| l.parse::<usize>().ok())
                else {
                    break;
                };
                let Some(msg) = rest.get(colon + 1..colon + 1 + len) else {
                    break;
                };
                let text = String::from_utf8_lossy(msg).replace(' ', "");
                if text.contains("\"response\":true") {
                    return Ok(text);
                }
                rest = rest.get(colon + 2 + len..).unwrap_or_default();
            }
        }
        bail!("{}: no ctrl_tcp response to {command}", self.proc.name)
    }

    /// End-of-call RTP statistics (`rtp_stats yes`): (packets sent, packets received).
    fn rtp_packets(&self) -> Option<(u64, u64)> {
        let log = self.proc.log_text();
        let line = log
            .lines()
            .find(|l| l.trim_start().starts_with("packets:"))?;
        let mut f = line.split_whitespace().skip(1);
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    }
}

/// baresip a calls baresip b through the node (a's outbound proxy; the node's trunk is b),
/// holds 10 s, hangs up. b establishes the call and sees the hang-up; each end received at
/// least half the RTP the other sent at 50 packets/s for the hold; everything either received
/// went through the relay (relayed >= a's + b's received packets, and >= 500).
#[test]
fn media_baresip_call_through_node() -> Result<()> {
    const HOLD_SECS: u64 = 10;
    let out = out_dir("media_baresip")?;
    let range = (41200, 41299);
    let (mut b, b_sip) = Baresip::start(
        &out,
        "b",
        "<sip:b@127.0.0.1:@SIP_PORT@>;regint=0;answermode=auto",
    )?;
    let node = media_node(
        &out,
        SocketAddr::new(IpAddr::V4(NODE_IP), b_sip),
        &MediaSettings::new(range, 60),
    )?;
    let (mut a, _) = Baresip::start(
        &out,
        "a",
        &format!(
            "<sip:a@127.0.0.1:@SIP_PORT@>;regint=0;outbound=\"sip:{}\"",
            node.sip_addr()
        ),
    )?;
    b.wait_ctrl()?;
    a.wait_ctrl()?;
    let dial = a.command("dial", &format!("sip:b@127.0.0.1:{b_sip}"))?;
    ensure!(dial.contains("\"ok\":true"), "dial refused: {dial}");
    let established = wait_until(Duration::from_secs(10), || {
        b.proc.log_text().contains("Call established")
            && a.proc.log_text().contains("Call established")
    });
    ensure!(
        established,
        "the call was not established; a:\n{}\nb:\n{}",
        tail(&a.proc.log, 20),
        tail(&b.proc.log, 20)
    );
    std::thread::sleep(Duration::from_secs(HOLD_SECS / 2));
    let during = node.metrics()?;
    ensure!(
        one_session_relaying(&during),
        "mid-call the relay has no active session relaying: sessions {:?}, relayed {}",
        during.get("trunkline_media_sessions_active", &[]),
        relayed(&during)
    );
    std::thread::sleep(Duration::from_secs(HOLD_SECS - HOLD_SECS / 2));
    a.command("hangup", "")?;
    let closed = wait_until(Duration::from_secs(10), || {
        a.rtp_packets().is_some() && b.rtp_packets().is_some()
    });
    ensure!(
        closed,
        "no end-of-call RTP stats (hang-up not seen?); a:\n{}\nb:\n{}",
        tail(&a.proc.log, 20),
        tail(&b.proc.log, 20)
    );
    let (a_tx, a_rx) = a.rtp_packets().unwrap_or_default();
    let (b_tx, b_rx) = b.rtp_packets().unwrap_or_default();
    eprintln!("baresip a: sent {a_tx}, received {a_rx}; b: sent {b_tx}, received {b_rx}");
    let _ = a.command("quit", "");
    let _ = b.command("quit", "");
    let m = settled(&node)?;
    let rel = relayed(&m);
    eprintln!("relay: {rel} relayed, {} dropped", dropped(&m));
    let min_rx = PPS / 2 * HOLD_SECS;
    ensure!(
        a_rx >= min_rx && b_rx >= min_rx,
        "RTP received: a {a_rx}, b {b_rx} (want >= {min_rx} each: both directions)"
    );
    ensure!(
        rel >= (a_rx + b_rx) as f64 && rel >= 500.0,
        "relayed {rel} packets, fewer than the {} the two ends received (or < 500): media bypassed the relay",
        a_rx + b_rx
    );
    media_idle(&node)?;
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Media timeout
// ---------------------------------------------------------------------------------------------

/// `[media] timeout_secs = 3`: the caller plays a 1 s pcap and then stays silent. The node hangs
/// up with BYE on both legs no earlier than the timeout and within timeout + 2 s of the last
/// packet (from the SIPp traces: last packet = ACK + pcap length); it counts a media timeout
/// and a completed call (status 200).
#[test]
fn media_timeout_hangs_up_both_legs() -> Result<()> {
    const TIMEOUT: u64 = 3;
    let out = out_dir("media_timeout")?;
    let range = (41300, 41399);
    let packets = make_pcap(&out, 1)?;
    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let uac_mp = free_udp_block(UAC_IP, 4)?;
    let uas = echo_callee(&media_scenario("uas_rtp.xml"), uas_mp)
        .timeout_secs(30)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, &MediaSettings::new(range, TIMEOUT))?;
    let mut client = rtp_caller(
        &media_scenario("uac_rtp_timeout.xml"),
        node.sip_addr(),
        uac_mp,
    )
    .timeout_secs(30)
    .spawn(&out)?;
    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;

    let uac = timed_trace(&client.messages_log())?;
    let uas = timed_trace(&server.messages_log())?;
    let ack = first_at(&uac, true, "ACK ")?;
    let last_packet = ack + (packets - 1) as f64 / PPS as f64;
    let timeout = TIMEOUT as f64;
    for (who, trace) in [("caller", &uac), ("callee", &uas)] {
        let bye = first_at(trace, false, "BYE ")?;
        let after = bye - last_packet;
        eprintln!("{who}: BYE {after:.3} s after the last RTP packet");
        ensure!(
            after >= timeout - 0.5,
            "{who} got the BYE {after:.3} s after the last RTP packet: before the {TIMEOUT} s timeout"
        );
        ensure!(
            after <= timeout + 2.0,
            "{who} got the BYE {after:.3} s after the last RTP packet (want <= {TIMEOUT} + 2 s)"
        );
        ensure!(
            trace
                .iter()
                .any(|m| m.sent && m.text.starts_with("SIP/2.0 200") && m.text.contains("BYE")),
            "{who} did not answer the BYE"
        );
    }
    let m = node.wait_metrics(Duration::from_secs(5), |m| {
        m.sum("trunkline_media_timeouts_total") >= 1.0
    })?;
    let t = m.value("trunkline_media_timeouts_total", &[("reason", "timeout")])?;
    ensure!(
        t >= 1.0,
        "trunkline_media_timeouts_total{{reason=\"timeout\"}} = {t}, want >= 1"
    );
    ensure!(relayed(&m) > 0.0, "no RTP relayed before the silence");
    media_idle(&node)?;
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4b. No media timeout while the callee rings
// ---------------------------------------------------------------------------------------------

/// `[media] timeout_secs = 2`, and a callee that rings 5 s (180, no early media) before it
/// answers: the relay's inactivity timeout does not run while the call rings, so the caller
/// gets the 200 (before, the silent ringing session timed out and the caller got an error),
/// the call completes, and no media timeout is counted.
#[test]
fn media_timeout_does_not_run_while_the_callee_rings() -> Result<()> {
    const TIMEOUT: u64 = 2;
    let out = out_dir("media_long_ring")?;
    let range = (41500, 41599);
    let uas = Sipp::uas("uas_long_ring.xml")
        .calls(1)
        .timeout_secs(30)
        .trace_msg()
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, &MediaSettings::new(range, TIMEOUT))?;
    let mut client = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(1)
        .duration_ms(1000)
        .timeout_secs(30)
        .trace_msg()
        .spawn(&out)?;
    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    let statuses = final_invite_statuses(&client.messages_log())?;
    ensure!(
        !statuses.is_empty() && statuses.iter().all(|s| *s == 200),
        "the caller's INVITE got {statuses:?}, want [200] after 5 s of ringing"
    );
    let m = settled(&node)?;
    let timeouts = m.sum("trunkline_media_timeouts_total");
    ensure!(timeouts == 0.0, "{timeouts} media timeouts counted");
    media_idle(&node)?;
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. Kamailio's rtpengine module driving trunkline-relay
// ---------------------------------------------------------------------------------------------

/// Kamailio (tests/media/kamailio.cfg, WITH_RTPENGINE) proxies a SIPp call with RTP to a SIPp
/// echo callee, its rtpengine module pointed at `trunkline-relay`. The SDP both ends receive is
/// rewritten to the relay (127.0.0.1, relay ports); mid-call the relay's ng `list` has the call
/// under the caller's Call-ID and `query` shows two parties, each with >= 100 RTP packets
/// received, the caller latched at its real media address; after the BYE the relay forgets the
/// call (Kamailio's `delete`).
#[test]
fn media_kamailio_rtpengine_module_drives_trunkline_relay() -> Result<()> {
    let out = out_dir("media_kamailio_relay")?;
    let range = (41400, 41499);
    make_pcap(&out, 6)?;
    let ng_addr = SocketAddr::new(IpAddr::V4(NODE_IP), free_port(NODE_IP)?);
    let mut relay = start_relay(&out, ng_addr, range)?;

    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let uac_mp = free_udp_block(UAC_IP, 4)?;
    let uas = echo_callee(&media_scenario("uas_rtp.xml"), uas_mp)
        .timeout_secs(40)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;

    let kam_port = free_port(NODE_IP)?;
    let kam_addr = SocketAddr::new(IpAddr::V4(NODE_IP), kam_port);
    let mut kamailio = Proc::spawn(
        "kamailio",
        Command::new("kamailio")
            .arg("-f")
            .arg(media_dir().join("kamailio.cfg"))
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(&out)
            .args(["-A", "WITH_RTPENGINE"])
            .arg("-A")
            .arg(format!("RTPENGINE_SOCK=\"udp:{ng_addr}\""))
            .arg("-A")
            .arg(format!(
                "CTL_SOCK=\"unix:{}\"",
                out.join("kamailio_ctl").display()
            ))
            .arg("-A")
            .arg(format!("UAS_DST=\"sip:{}\"", uas.addr()?))
            .arg("-A")
            .arg(format!("KAM_LISTEN=udp:{kam_addr}"))
            .arg("-A")
            .arg(format!("KAM_ALIAS=\"{kam_addr}\"")),
        out.join("kamailio.log"),
    )?;
    let bound = wait_until(Duration::from_secs(10), || {
        UdpSocket::bind(kam_addr).is_err() || !kamailio.alive()
    });
    kamailio.check_alive()?;
    ensure!(
        bound,
        "kamailio never bound {kam_addr}; log:\n{}",
        tail(&kamailio.log, 30)
    );
    std::thread::sleep(Duration::from_millis(500)); // its children start after the bind

    let mut client = rtp_caller(&media_scenario("uac_rtp.xml"), kam_addr, uac_mp)
        .duration_ms(8000)
        .timeout_secs(30)
        .spawn(&out)?;

    // Mid-call: the call in ng list, both parties with >= 100 packets received.
    let mut call_id = None;
    let mut streams = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(12);
    while Instant::now() < deadline && client.is_running() {
        relay.check_alive()?;
        let list = ng(ng_addr, &[("command", "list")])?;
        if let Some(id) = list
            .get("calls")
            .map(Bv::list)
            .and_then(<[Bv]>::first)
            .and_then(Bv::str)
        {
            let q = ng(ng_addr, &[("command", "query"), ("call-id", &id)])?;
            streams = query_streams(&q);
            call_id = Some(id);
            if streams.len() >= 2 && streams.iter().all(|s| s.2 >= 100) {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    eprintln!("relay query for {call_id:?}: {streams:?}");

    let call_id = call_id.ok_or_else(|| {
        anyhow!(
            "the relay never listed the call; relay log:\n{}\nkamailio log:\n{}",
            tail(&relay.log, 20),
            tail(&kamailio.log, 20)
        )
    })?;
    let uac_call_id = parse_trace(&client.messages_log())?
        .iter()
        .find(|m| m.sent && m.method() == Some("INVITE"))
        .and_then(|m| m.header("Call-ID").map(str::to_string))
        .ok_or_else(|| anyhow!("no INVITE in the caller's trace"))?;
    ensure!(
        call_id == uac_call_id,
        "the relay's call {call_id:?} is not the caller's {uac_call_id:?}"
    );
    ensure!(
        streams.len() == 2,
        "query shows {} streams, want 2 parties: {streams:?}",
        streams.len()
    );
    for (tag, local, packets, _) in &streams {
        ensure!(
            *packets >= 100,
            "party {tag}: {packets} RTP packets received by the relay (want >= 100): {streams:?}"
        );
        ensure!(
            (i64::from(range.0)..=i64::from(range.1)).contains(local),
            "party {tag}: local port {local} outside the relay's range"
        );
    }
    let caller = SocketAddr::new(IpAddr::V4(UAC_IP), uac_mp).to_string();
    ensure!(
        streams
            .iter()
            .any(|s| s.3.as_deref() == Some(caller.as_str())),
        "no party latched at the caller's media address {caller}: {streams:?}"
    );

    assert_anchored(
        "INVITE at the callee",
        received_sdp(&server.messages_log(), "INVITE ")?,
        range,
        SocketAddr::new(IpAddr::V4(UAC_IP), uac_mp),
    )?;
    assert_anchored(
        "200 at the caller",
        received_sdp(&client.messages_log(), "SIP/2.0 200")?,
        range,
        SocketAddr::new(IpAddr::V4(UAS_IP), uas_mp),
    )?;

    // Kamailio's rtpengine_delete() on the BYE: the relay forgets the call.
    let mut remaining = Vec::new();
    let forgotten = wait_until(Duration::from_secs(5), || {
        remaining = ng(ng_addr, &[("command", "list")])
            .map(|l| l.get("calls").map(Bv::list).unwrap_or_default().to_vec())
            .unwrap_or_default();
        remaining.is_empty()
    });
    ensure!(
        forgotten,
        "after the BYE the relay still lists {remaining:?}"
    );
    relay.check_alive()?;
    kamailio.check_alive()?;
    Ok(())
}

//! SIP-I/SIP-T calls (ITU-T Q.1912.5, RFC 3204) through the node with media anchoring: the
//! INVITE and the 200 carry `multipart/mixed` bodies (SDP + ISUP), as carrier trunks send them.
//! SIPp plays both sides (tests/scenarios/uac_sipi.xml, uas_sipi.xml); each checks with `ereg`
//! that the SDP part it received names the relay and the ISUP part arrived unchanged, and this
//! test checks the same byte for byte from SIPp's message logs: every part but the SDP identical
//! to what the other side sent, the SDP part naming 127.0.0.1 and a port of the node's [media]
//! range, Content-Length equal to the body received. RTP then flows through the relay (SIPp plays
//! a pcap, the callee echoes it) like in media.rs.
//!
//! Helpers below mirror the few of tests/media.rs this needs (each test file is its own crate).

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

const BOUNDARY: &[u8] = b"--unique-boundary-1";
const MULTIPART: &str = "multipart/mixed;boundary=unique-boundary-1";
/// RTP packets per second in the generated pcap (20 ms PCMU).
const PPS: u64 = 50;

/// Writes `<out>/pcmu.pcap` (tests/media/make_pcap.py) of `secs` seconds; returns its packets.
fn make_pcap(out: &Path, secs: u64) -> Result<u64> {
    let status = Command::new("python3")
        .arg(workspace_root().join("tests/media/make_pcap.py"))
        .arg(out.join("pcmu.pcap"))
        .arg(secs.to_string())
        .stdin(Stdio::null())
        .status()
        .context("running python3 tests/media/make_pcap.py")?;
    ensure!(status.success(), "make_pcap.py failed with {status}");
    Ok(secs * PPS)
}

/// An even UDP port on `ip` such that `port..port + n` are all free now.
fn free_udp_block(ip: Ipv4Addr, n: u16) -> Result<u16> {
    for _ in 0..200 {
        let probe = UdpSocket::bind((ip, 0))?;
        let base = probe.local_addr()?.port() & !1;
        drop(probe);
        if base < 1024 || base.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (base..base + n).map(|p| UdpSocket::bind((ip, p))).collect();
        if held.iter().all(std::result::Result::is_ok) {
            return Ok(base);
        }
    }
    bail!("no block of {n} free UDP ports on {ip}")
}

/// A node whose only trunk (`anchor_media = true`) is `trunk`, its relay on 127.0.0.1 with
/// ports `range`.
fn media_node(out: &Path, trunk: SocketAddr, range: (u16, u16)) -> Result<Node> {
    let cfg = NodeConfig::new(trunk, Transport::Udp)?;
    let base = cfg.to_toml();
    ensure!(
        base.contains("\n[routing]"),
        "unexpected node TOML layout:\n{base}"
    );
    let mut toml = base.replacen("\n[routing]", "anchor_media = true\n\n[routing]", 1);
    toml.push_str(&format!(
        "\n[media]\nenabled = true\nbind = \"127.0.0.1\"\nport_min = {}\nport_max = {}\n\
         timeout_secs = 60\nworkers = 0\n",
        range.0, range.1
    ));
    Node::start_toml(&cfg, &toml, out)
}

fn relayed(m: &Metrics) -> f64 {
    m.get("trunkline_media_packets_total", &[("result", "relayed")])
        .unwrap_or(0.0)
}

/// `-mp PORT` and the lenient default behaviours the media scenarios run with.
fn with_media(sipp: Sipp, port: u16) -> Sipp {
    sipp.arg("-mp")
        .arg(&port.to_string())
        .arg("-default_behaviors")
        .arg("all,-abortunexp")
}

// ---------------------------------------------------------------------------------------------
// SIPp message logs, byte for byte
// ---------------------------------------------------------------------------------------------

/// One message of a `-trace_msg` log as the bytes that were on the wire: SIPp writes the
/// datagram length ("message sent (N bytes)" / "message received [N] bytes") and then the
/// message verbatim.
struct Wire {
    sent: bool,
    bytes: Vec<u8>,
}

impl Wire {
    fn head_body(&self) -> Result<(&[u8], &[u8])> {
        let at = find(&self.bytes, b"\r\n\r\n", 0)
            .ok_or_else(|| anyhow!("no end of headers in:\n{}", self.text()))?;
        Ok((&self.bytes[..at + 2], &self.bytes[at + 4..]))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        let (head, _) = self.head_body().ok()?;
        String::from_utf8_lossy(head).lines().find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

fn wire_log(path: &Path) -> Result<Vec<Wire>> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let sep = b"----------------------------------------------- ";
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = find(&data, sep, i) {
        let line_end = find(&data, b"\n", at).ok_or_else(|| anyhow!("truncated log"))?;
        let kind_end = find(&data, b"\n", line_end + 1).ok_or_else(|| anyhow!("truncated log"))?;
        let kind = String::from_utf8_lossy(&data[line_end + 1..kind_end]).into_owned();
        i = kind_end;
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let n: usize = kind
            .split(|c: char| !c.is_ascii_digit())
            .find(|s| !s.is_empty())
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| anyhow!("no length in '{kind}'"))?;
        // "...bytes:\n\n<message>"
        let start = kind_end + 2;
        let bytes = data
            .get(start..start + n)
            .ok_or_else(|| anyhow!("log ends inside a message of {n} bytes"))?
            .to_vec();
        i = start + n;
        out.push(Wire { sent, bytes });
    }
    Ok(out)
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| from + p)
}

/// The first message of `log` sent (or received) whose start line begins with `start`.
fn message(log: &Path, sent: bool, start: &str) -> Result<Wire> {
    wire_log(log)?
        .into_iter()
        .find(|m| m.sent == sent && m.bytes.starts_with(start.as_bytes()))
        .ok_or_else(|| {
            anyhow!(
                "no {} '{start}' in {}",
                if sent { "sent" } else { "received" },
                log.display()
            )
        })
}

/// The body cut at each `--unique-boundary-1`: preamble, then each part (with its
/// headers), then what follows the close delimiter's `--`.
fn segments(body: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut i = 0;
    while let Some(at) = find(body, BOUNDARY, i) {
        out.push(&body[i..at]);
        i = at + BOUNDARY.len();
    }
    out.push(&body[i..]);
    out
}

/// Connection address and audio port of an SDP text.
fn sdp_audio(text: &str) -> Option<(IpAddr, u16)> {
    let mut c = None;
    let mut port = None;
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("c=IN IP4 ") {
            c = c.or_else(|| a.trim().parse().ok());
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().and_then(|p| p.parse().ok());
        }
    }
    Some((c?, port?))
}

/// `what` crossed the node: `got` (received) against `sent` (what the other side sent). Same
/// multipart Content-Type; Content-Length equal to the body on the wire; the same parts in the
/// same order, every one but the SDP byte for byte (ISUP, part headers, close delimiter); the
/// SDP part naming the relay (127.0.0.1, a port in `range`) instead of `sender_media`.
fn assert_sip_i_anchored(
    what: &str,
    sent: &Wire,
    got: &Wire,
    range: (u16, u16),
    sender_media: (IpAddr, u16),
) -> Result<()> {
    ensure!(
        got.header("Content-Type").as_deref() == Some(MULTIPART),
        "{what}: Content-Type {:?}, want {MULTIPART}",
        got.header("Content-Type")
    );
    let (_, body) = got.head_body()?;
    let cl = got
        .header("Content-Length")
        .ok_or_else(|| anyhow!("{what}: no Content-Length"))?;
    ensure!(
        cl == body.len().to_string(),
        "{what}: Content-Length {cl} but the body on the wire is {} bytes:\n{}",
        body.len(),
        got.text()
    );
    let (_, sent_body) = sent.head_body()?;
    let (a, b) = (segments(sent_body), segments(body));
    ensure!(
        a.len() == b.len() && a.len() >= 4,
        "{what}: {} segments sent, {} received:\n{}",
        a.len(),
        b.len(),
        got.text()
    );
    let mut sdp_parts = 0;
    for (s, g) in a.iter().zip(&b) {
        let is_sdp = find(s, b"Content-Type: application/sdp\r\n", 0).is_some();
        if !is_sdp {
            ensure!(
                s == g,
                "{what}: a non-SDP part changed:\nsent {:?}\ngot  {:?}",
                String::from_utf8_lossy(s),
                String::from_utf8_lossy(g)
            );
            continue;
        }
        sdp_parts += 1;
        let sdp = String::from_utf8_lossy(g);
        ensure!(
            sdp.starts_with("\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n")
                && sdp.ends_with("\r\n\r\n"),
            "{what}: SDP part headers or framing changed:\n{sdp}"
        );
        let (ip, port) =
            sdp_audio(&sdp).ok_or_else(|| anyhow!("{what}: no c=/m=audio in:\n{sdp}"))?;
        ensure!(
            ip == IpAddr::V4(NODE_IP) && (range.0..=range.1).contains(&port),
            "{what}: SDP part names {ip}:{port}, not the relay (127.0.0.1, ports {}..={})",
            range.0,
            range.1
        );
        let before = sdp_audio(&String::from_utf8_lossy(s));
        ensure!(
            before == Some(sender_media),
            "{what}: the sender's SDP named {before:?}, expected {sender_media:?}"
        );
    }
    ensure!(sdp_parts == 1, "{what}: {sdp_parts} SDP parts");
    Ok(())
}

/// A SIPp caller sends a SIP-I INVITE (SDP + ISUP IAM) through an anchoring node to a SIPp
/// callee that answers with SIP-I (ISUP ANM + SDP). Both SDP parts are anchored on the relay,
/// the ISUP parts arrive unchanged, Content-Length fits, the call completes on both sides, RTP
/// goes both ways through the relay, and the relay frees everything afterwards.
#[test]
fn sipi_multipart_call_is_anchored_and_isup_kept() -> Result<()> {
    let out = out_dir("sipi_anchored")?;
    let range = (41100, 41199);
    let sent = make_pcap(&out, 2)?;
    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let uac_mp = free_udp_block(UAC_IP, 4)?;
    let uas = with_media(Sipp::uas("uas_sipi.xml"), uas_mp)
        .calls(1)
        .trace_msg()
        .timeout_secs(40)
        .arg("-rtp_echo")
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, range)?;
    let mut client = with_media(Sipp::uac("uac_sipi.xml", node.sip_addr()), uac_mp)
        .calls(1)
        .duration_ms(4000)
        .trace_msg()
        .timeout_secs(30)
        .arg("-key")
        .arg("sdp_ip")
        .arg(&UAC_IP.to_string())
        .spawn(&out)?;

    // During the call: one session relaying packets.
    let mut during = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && client.is_running() && !during {
        let m = node.metrics()?;
        during = m.get("trunkline_media_sessions_active", &[]) == Some(1.0) && relayed(&m) > 0.0;
        std::thread::sleep(Duration::from_millis(200));
    }
    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    ensure!(during, "never saw an active media session relaying");

    let uac_log = client.messages_log();
    let uas_log = server.messages_log();
    assert_sip_i_anchored(
        "INVITE at the callee",
        &message(&uac_log, true, "INVITE ")?,
        &message(&uas_log, false, "INVITE ")?,
        range,
        (IpAddr::V4(UAC_IP), uac_mp),
    )?;
    assert_sip_i_anchored(
        "200 at the caller",
        &message(&uas_log, true, "SIP/2.0 200 OK\r\n")?,
        &message(&uac_log, false, "SIP/2.0 200 OK\r\n")?,
        range,
        (IpAddr::V4(UAS_IP), uas_mp),
    )?;

    // RTP went through the relay both ways: more packets relayed than the caller sent (the
    // echo came back through it), and no more than sent + echoed.
    let mut last = node.metrics()?;
    let settle = Instant::now() + Duration::from_secs(10);
    let m = loop {
        std::thread::sleep(Duration::from_millis(1300));
        let m = node.metrics()?;
        if relayed(&m) == relayed(&last) || Instant::now() >= settle {
            break m;
        }
        last = m;
    };
    let rel = relayed(&m);
    eprintln!("relay: {rel} packets relayed; the caller sent {sent}");
    ensure!(
        rel > sent as f64 && rel <= 2.0 * sent as f64,
        "relayed {rel} packets for {sent} sent and echoed (want more than {sent}, at most {})",
        2 * sent
    );
    let idle = node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_media_sessions_active", &[]) == Some(0.0)
            && m.get("trunkline_media_ports_in_use", &[]) == Some(0.0)
    })?;
    ensure!(
        idle.get("trunkline_media_ports_in_use", &[]) == Some(0.0),
        "the relay still holds ports after the call"
    );
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

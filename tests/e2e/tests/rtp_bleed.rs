//! RTP Bleed, with `trunkline-relay` and Debian's rtpengine held to one assertion.
//!
//! Each relay is started by the test on ports of its own (rtpengine in user space, `--table
//! -1`), and the test checks that the relay ports of the call are bound by the process it
//! started, not by some other relay on the machine. Over ng, an offer and an answer anchor a
//! call between a caller on 127.0.0.2 and a callee on 127.0.0.3; then a stranger on 127.0.0.9
//! sprays the caller's relay port before either party sends. The parties then talk, the
//! stranger sprays again, they talk again. Both relays must give every packet of each party
//! to the other and nothing at all to the stranger.
//!
//! `trunkline-relay` is further held to what rtpengine does not do: the stranger's packets are
//! dropped and counted (ng `query` shows them as errors), and the same holds when the stranger
//! sprays both relay ports of the call (rtpengine 10.5 then relays the caller's first packet
//! to the stranger: it takes the last source seen in its learning window as the destination).
//!
//! Network rule: everything is on loopback; every loop is bounded.

use anyhow::{anyhow, bail, ensure, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use trunkline_e2e::child::Proc;
use trunkline_e2e::ng::{ng, Bv};
use trunkline_e2e::*;

/// Where the stranger sends from.
const STRANGER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 9);
/// Packets each party sends per round.
const TALK: u16 = 20;
/// Packets the stranger sprays per round and port.
const SPRAY: u16 = 5;

/// `TRUNKLINE_RELAY_BIN`, else `<workspace>/target/release/trunkline-relay`.
fn relay_binary() -> PathBuf {
    std::env::var_os("TRUNKLINE_RELAY_BIN").map_or_else(
        || workspace_root().join("target/release/trunkline-relay"),
        PathBuf::from,
    )
}

/// The relay under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Under {
    Trunkline,
    Rtpengine,
}

/// Starts the relay with ng on `ng_addr`, media ports `range`, one interface 127.0.0.1, and
/// waits for its ng pong.
fn start(under: Under, out: &Path, ng_addr: SocketAddr, range: (u16, u16)) -> Result<Proc> {
    let (min, max) = (range.0.to_string(), range.1.to_string());
    let mut cmd = match under {
        Under::Trunkline => {
            let bin = relay_binary();
            ensure!(
                bin.exists(),
                "{} does not exist: run `cargo build --release --bin trunkline-relay` or set \
                 TRUNKLINE_RELAY_BIN",
                bin.display()
            );
            let mut c = Command::new(bin);
            c.args([
                "--interface",
                "127.0.0.1",
                "--listen-ng",
                &ng_addr.to_string(),
            ])
            .args(["--port-min", &min, "--port-max", &max])
            .args(["--foreground", "--log-level", "6"]);
            c
        }
        Under::Rtpengine => {
            let found = Command::new("sh")
                .args(["-c", "command -v rtpengine"])
                .output()
                .is_ok_and(|o| o.status.success());
            ensure!(
                found,
                "rtpengine is not installed (apt-get install --no-install-recommends \
                 rtpengine-daemon; tests/run.sh does)"
            );
            let mut c = Command::new("rtpengine");
            c.args(["--config-file=none", "--table=-1", "--interface=127.0.0.1"])
                .arg(format!("--listen-ng={ng_addr}"))
                .arg(format!("--port-min={min}"))
                .arg(format!("--port-max={max}"))
                .args(["--foreground", "--log-stderr", "--log-level=6"]);
            c
        }
    };
    let name = format!("{under:?}");
    let mut relay = Proc::spawn(&name, &mut cmd, out.join(format!("{name}.log")))?;
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
                "{name} gave no ng pong on {ng_addr}; log:\n{}",
                tail(&relay.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Whether process `pid` holds the UDP socket bound to 127.0.0.1:`port`: its inode in
/// /proc/net/udp is among the process's file descriptors.
fn bound_by(pid: u32, port: u16) -> Result<bool> {
    let local = format!("0100007F:{port:04X}");
    let table = std::fs::read_to_string("/proc/net/udp")?;
    let inode = table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(1) == Some(&local.as_str()))
            .then(|| f.get(9).map(|s| s.to_string()))
            .flatten()
    });
    let Some(inode) = inode else {
        return Ok(false);
    };
    let want = format!("socket:[{inode}]");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        if std::fs::read_link(fd?.path()).is_ok_and(|l| l.to_string_lossy() == want) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A party's (or the stranger's) media socket on `ip`.
fn media_socket(ip: Ipv4Addr) -> Result<UdpSocket> {
    let s = UdpSocket::bind((ip, 0))?;
    s.set_read_timeout(Some(Duration::from_millis(50)))?;
    Ok(s)
}

fn sdp(s: &UdpSocket) -> Result<String> {
    let a = s.local_addr()?;
    Ok(format!(
        "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n",
        ip = a.ip(),
        port = a.port()
    ))
}

/// The relay address an ng reply's SDP names for its audio: the media-level `c=` if there
/// is one (it overrides the session's), else the session-level one.
fn anchored(reply: &Bv) -> Result<SocketAddr> {
    let sdp = reply
        .get("sdp")
        .and_then(Bv::str)
        .ok_or_else(|| anyhow!("no SDP in the ng reply {reply:?}"))?;
    let (session, media) = sdp
        .split_once("m=audio")
        .ok_or_else(|| anyhow!("no m=audio in {sdp}"))?;
    let connection = |part: &str| {
        part.lines()
            .find_map(|l| l.strip_prefix("c=IN IP4 "))
            .map(str::to_owned)
    };
    let ip = connection(media)
        .or_else(|| connection(session))
        .ok_or_else(|| anyhow!("no c= in {sdp}"))?;
    let port = sdp
        .lines()
        .find_map(|l| l.strip_prefix("m=audio "))
        .and_then(|m| m.split_whitespace().next())
        .ok_or_else(|| anyhow!("no m=audio in {sdp}"))?;
    Ok(SocketAddr::new(ip.trim().parse()?, port.parse()?))
}

/// A PCMU packet of `ssrc` carrying `tag` and its sequence number.
fn rtp(ssrc: u32, seq: u16, tag: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(tag);
    p.extend_from_slice(&seq.to_be_bytes());
    p
}

/// What a socket received, by who sent it (the tag in the payload).
#[derive(Debug, Default)]
struct Got {
    caller: u64,
    callee: u64,
    stranger: u64,
}

/// Reads `s` for `window` (every datagram), counting by tag.
fn drain(s: &UdpSocket, window: Duration, got: &mut Got) {
    let mut buf = [0u8; 2048];
    let until = Instant::now() + window;
    while Instant::now() < until {
        if let Ok((n, _)) = s.recv_from(&mut buf) {
            match buf.get(12..n.saturating_sub(2)) {
                Some(b"caller") => got.caller += 1,
                Some(b"callee") => got.callee += 1,
                _ => got.stranger += 1,
            }
        }
    }
}

/// Reads `s` until it has `want` packets of the tag `which` picks (or 3 s passed).
fn receive(s: &UdpSocket, got: &mut Got, want: u64, which: fn(&Got) -> u64) {
    let deadline = Instant::now() + Duration::from_secs(3);
    while which(got) < want && Instant::now() < deadline {
        drain(s, Duration::from_millis(50), got);
    }
}

/// What one run showed.
struct Outcome {
    /// At the caller, callee and stranger.
    caller: Got,
    callee: Got,
    stranger: Got,
    /// The relay's ng `query` of the call, before the delete.
    query: Bv,
}

/// The RTP Bleed scenario against the relay on `ng_addr` (process `pid`, media `range`): the
/// stranger sprays the caller's relay port (and the callee's, with `both`) before anyone
/// talks, and again between two rounds of talk.
fn bleed(
    call: &str,
    ng_addr: SocketAddr,
    pid: u32,
    range: (u16, u16),
    both: bool,
) -> Result<Outcome> {
    let caller = media_socket(UAC_IP)?;
    let callee = media_socket(UAS_IP)?;
    let stranger = media_socket(STRANGER_IP)?;
    let offer = ng(
        ng_addr,
        &[
            ("command", "offer"),
            ("call-id", call),
            ("from-tag", "caller-tag"),
            ("sdp", &sdp(&caller)?),
        ],
    )?;
    let to_callee_side = anchored(&offer).context("the offer")?;
    let answer = ng(
        ng_addr,
        &[
            ("command", "answer"),
            ("call-id", call),
            ("from-tag", "caller-tag"),
            ("to-tag", "callee-tag"),
            ("sdp", &sdp(&callee)?),
        ],
    )?;
    let to_caller_side = anchored(&answer).context("the answer")?;
    for relay_port in [to_caller_side, to_callee_side] {
        ensure!(
            relay_port.ip() == IpAddr::V4(NODE_IP)
                && (range.0..=range.1).contains(&relay_port.port()),
            "relay address {relay_port} is not 127.0.0.1 in {range:?}"
        );
        ensure!(
            bound_by(pid, relay_port.port())?,
            "{relay_port} is not bound by the relay this test started (pid {pid})"
        );
    }
    let sprayed = if both {
        vec![to_caller_side, to_callee_side]
    } else {
        vec![to_caller_side]
    };
    let spray = |first: u16| -> Result<()> {
        for port in &sprayed {
            for i in 0..SPRAY {
                stranger.send_to(&rtp(0x5757, first + i, b"intruder"), port)?;
            }
        }
        Ok(())
    };
    let (mut at_caller, mut at_callee, mut at_stranger) =
        (Got::default(), Got::default(), Got::default());
    let mut talk = |round: u16| -> Result<()> {
        for seq in 0..TALK {
            caller.send_to(&rtp(0xca11, round * TALK + seq, b"caller"), to_caller_side)?;
        }
        let want = u64::from((round + 1) * TALK);
        receive(&callee, &mut at_callee, want, |g| g.caller);
        for seq in 0..TALK {
            callee.send_to(&rtp(0xca1e, round * TALK + seq, b"callee"), to_callee_side)?;
        }
        receive(&caller, &mut at_caller, want, |g| g.callee);
        Ok(())
    };
    spray(0)?;
    talk(0)?;
    spray(100)?;
    talk(1)?;
    // Anything relayed to the stranger would long have arrived.
    drain(&stranger, Duration::from_millis(300), &mut at_stranger);
    drain(&caller, Duration::from_millis(100), &mut at_caller);
    drain(&callee, Duration::from_millis(100), &mut at_callee);
    let query = ng(ng_addr, &[("command", "query"), ("call-id", call)])?;
    ng(ng_addr, &[("command", "delete"), ("call-id", call)])?;
    Ok(Outcome {
        caller: at_caller,
        callee: at_callee,
        stranger: at_stranger,
        query,
    })
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "caller got {:?}, callee got {:?}, stranger got {:?}",
            self.caller, self.callee, self.stranger
        )
    }
}

/// What both relays are held to: each party got every packet the other sent, the stranger
/// got nothing.
fn assert_no_bleed(who: &str, o: &Outcome) -> Result<()> {
    let all = u64::from(2 * TALK);
    ensure!(
        o.stranger.caller == 0 && o.stranger.callee == 0 && o.stranger.stranger == 0,
        "{who}: the stranger received {:?}: RTP Bleed",
        o.stranger
    );
    ensure!(
        o.callee.caller == all,
        "{who}: the callee got {} of the caller's {all} packets",
        o.callee.caller
    );
    ensure!(
        o.caller.callee == all,
        "{who}: the caller got {} of the callee's {all} packets",
        o.caller.callee
    );
    Ok(())
}

/// The `errors` of the RTP stream of party `tag` in an ng `query` reply.
fn rtp_errors(query: &Bv, tag: &str) -> Option<i64> {
    query
        .get("tags")?
        .get(tag)?
        .get("medias")?
        .list()
        .first()?
        .get("streams")?
        .list()
        .first()?
        .get("stats")?
        .get("errors")?
        .int()
}

fn free_range(first: u16) -> (u16, u16) {
    (first, first + 99)
}

#[test]
fn trunkline_relay_gives_a_stranger_nothing() -> Result<()> {
    let out = out_dir("rtp_bleed_trunkline")?;
    let ng_addr = SocketAddr::new(IpAddr::V4(NODE_IP), free_port(NODE_IP)?);
    let range = free_range(43200);
    let mut relay = start(Under::Trunkline, &out, ng_addr, range)?;
    let pid = relay.pid().ok_or_else(|| anyhow!("no pid"))?;

    let o = bleed("bleed-trunkline-1", ng_addr, pid, range, false)?;
    eprintln!("trunkline-relay, caller's port sprayed: {o:?}");
    assert_no_bleed("trunkline-relay", &o)?;
    ensure!(
        o.callee.stranger == 0,
        "the callee got {} of the stranger's packets",
        o.callee.stranger
    );
    let errors = rtp_errors(&o.query, "caller-tag");
    ensure!(
        errors == Some(i64::from(2 * SPRAY)),
        "the caller's stream counts {errors:?} errors, want the stranger's {}",
        2 * SPRAY
    );

    // Both of the call's ports sprayed: still nothing, on either side.
    let o = bleed("bleed-trunkline-2", ng_addr, pid, range, true)?;
    eprintln!("trunkline-relay, both ports sprayed: {o:?}");
    assert_no_bleed("trunkline-relay", &o)?;
    ensure!(o.callee.stranger == 0 && o.caller.stranger == 0, "{o:?}");
    for tag in ["caller-tag", "callee-tag"] {
        let errors = rtp_errors(&o.query, tag);
        ensure!(
            errors == Some(i64::from(2 * SPRAY)),
            "{tag}: {errors:?} errors, want {}",
            2 * SPRAY
        );
    }
    relay.check_alive()?;
    Ok(())
}

#[test]
fn rtpengine_gives_a_stranger_nothing() -> Result<()> {
    let out = out_dir("rtp_bleed_rtpengine")?;
    let ng_addr = SocketAddr::new(IpAddr::V4(NODE_IP), free_port(NODE_IP)?);
    let range = free_range(43300);
    let mut relay = start(Under::Rtpengine, &out, ng_addr, range)?;
    let pid = relay.pid().ok_or_else(|| anyhow!("no pid"))?;
    let o = bleed("bleed-rtpengine-1", ng_addr, pid, range, false)?;
    eprintln!("rtpengine, caller's port sprayed: {o:?}");
    assert_no_bleed("rtpengine", &o)?;
    relay.check_alive()?;
    Ok(())
}

//! SIP-I/SIP-T calls (ITU-T Q.1912.5, RFC 3204) through the node with media anchoring: the
//! INVITE and the 200 carry `multipart/mixed` bodies (SDP + ISUP), as carrier trunks send them.
//! SIPp plays both sides (tests/scenarios/uac_sipi.xml, uas_sipi.xml); each checks with `ereg`
//! that the SDP part it received names the relay and the ISUP part arrived unchanged, and this
//! test checks the same byte for byte from SIPp's message logs: every part but the SDP identical
//! to what the other side sent, the SDP part naming 127.0.0.1 and a port of the node's [media]
//! range, Content-Length equal to the body received. RTP then flows through the relay (SIPp plays
//! a pcap, the callee echoes it) like in media.rs, whose helpers (pcap, media node, relay
//! counters, SDP checks) it shares from the crate's library.

use anyhow::{anyhow, ensure, Context, Result};
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};
use trunkline_e2e::media_node::{media_node, MediaSettings};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::relay_metrics::{one_session_relaying, relayed, settled, wait_relay_idle};
use trunkline_e2e::relay_sdp::{ensure_names_relay, sdp_audio};
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const BOUNDARY: &[u8] = b"--unique-boundary-1";
const MULTIPART: &str = "multipart/mixed;boundary=unique-boundary-1";
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
        ensure_names_relay(&format!("{what}: SDP part"), (ip, port), range)?;
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
    let uas = echo_callee("uas_sipi.xml", uas_mp)
        .timeout_secs(40)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let node = media_node(&out, uas.addr()?, &MediaSettings::new(range, 60))?;
    let mut client = rtp_caller("uac_sipi.xml", node.sip_addr(), uac_mp)
        .duration_ms(4000)
        .timeout_secs(30)
        .spawn(&out)?;

    // During the call: one session relaying packets.
    let mut during = false;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && client.is_running() && !during {
        during = one_session_relaying(&node.metrics()?);
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
    let m = settled(&node)?;
    let rel = relayed(&m);
    eprintln!("relay: {rel} packets relayed; the caller sent {sent}");
    ensure!(
        rel > sent as f64 && rel <= 2.0 * sent as f64,
        "relayed {rel} packets for {sent} sent and echoed (want more than {sent}, at most {})",
        2 * sent
    );
    let idle = wait_relay_idle(&node)?;
    ensure!(
        idle.get("trunkline_media_ports_in_use", &[]) == Some(0.0),
        "the relay still holds ports after the call"
    );
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

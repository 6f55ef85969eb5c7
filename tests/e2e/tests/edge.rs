//! The node on the edge: strangers cannot place calls through it (no open relay, no
//! toll fraud), a scanner learns as little as the operator wants, and a trunk that refuses
//! connections gives callers a 503 at once instead of a 408 half a minute later.

use anyhow::{ensure, Context, Result};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};
use trunkline_e2e::*;

/// Callers the node serves come from 127.0.0.4; SIPp's default caller address, 127.0.0.2,
/// is a stranger.
const CALLER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 4);
const STRANGERS: u64 = 20;

fn only_known_callers(cfg: &mut NodeConfig) {
    cfg.sip_extra
        .push("access_sources = [\"127.0.0.1/32\", \"127.0.0.4/32\"]".into());
    // These tests look at the answer each stranger's request gets; a stranger past the
    // per-source limit gets none at all (trunk_limits.rs checks that), so it is raised
    // above what they send here.
    cfg.sip_extra
        .push("source_limit.max_requests = 100000".into());
}

/// svmap (SIPVicious) from a stranger's address: the SIP devices it reports at `node`.
fn svmap_from_stranger(node: SocketAddr, out: &std::path::Path) -> Result<String> {
    let output = Command::new("svmap")
        .args([
            "-b",
            "127.0.0.2",
            "-p",
            &node.port().to_string(),
            &node.ip().to_string(),
        ])
        .output()
        .context("svmap (Debian package sipvicious) must be installed")?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    std::fs::write(out.join("svmap.log"), &text)?;
    Ok(text)
}

#[test]
fn strangers_get_403_and_no_call_while_known_callers_get_through() -> Result<()> {
    let out = out_dir("edge_strangers")?;
    let uas = Sipp::uas("uas_basic.xml").trace_msg().timeout_secs(120);
    let (mut node, mut server) = node_with_callee(&out, uas, Transport::Udp, only_known_callers)?;

    // A stranger dials out through the node: every attempt is refused.
    let stranger = Sipp::uac("uac_forbidden.xml", node.sip_addr())
        .name("stranger")
        .calls(STRANGERS)
        .rate(20)
        .timeout_secs(60);
    stranger
        .spawn(&out)?
        .wait(Duration::from_secs(90))?
        .assert_all_ok(STRANGERS)?;
    let m = node.metrics()?;
    let refused = m
        .get(
            "trunkline_sip_rejected_total",
            &[("reason", "untrusted_source")],
        )
        .unwrap_or(0.0);
    ensure!(
        refused >= STRANGERS as f64,
        "each stranger's request counted as untrusted (INVITEs and their ACKs): {refused}"
    );
    ensure!(
        m.sum("trunkline_calls_total") == 0.0,
        "no call was started for a stranger"
    );

    // A known caller still gets through.
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .local_ip(CALLER_IP)
        .calls(5)
        .rate(5)
        .duration_ms(200)
        .timeout_secs(60);
    uac.spawn(&out)?
        .wait(Duration::from_secs(60))?
        .assert_all_ok(5)?;
    assert_calls(&node, "200", 5.0)?;
    server.kill();
    let invites = parse_trace(&server.messages_log())?
        .iter()
        .filter(|m| !m.sent && m.method() == Some("INVITE"))
        .count();
    ensure!(
        invites == 5,
        "the trunk saw {invites} INVITEs: only the known caller's 5 may reach it"
    );

    // A scanner from a stranger's address sees a device that says no.
    let scan = svmap_from_stranger(node.sip_addr(), &out)?;
    ensure!(
        scan.contains(&node.sip_addr().to_string()),
        "with reply_to_unknown, svmap sees the node refuse:\n{scan}"
    );
    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

#[test]
fn a_silent_node_is_invisible_to_a_scanner() -> Result<()> {
    let out = out_dir("edge_silent")?;
    let uas = Sipp::uas("uas_basic.xml").timeout_secs(60);
    let (mut node, _server) = node_with_callee(&out, uas, Transport::Udp, |cfg| {
        only_known_callers(cfg);
        cfg.sip_extra.push("reply_to_unknown = false".into());
    })?;
    let scan = svmap_from_stranger(node.sip_addr(), &out)?;
    ensure!(
        !scan.contains(&node.sip_addr().to_string()) && scan.contains("found nothing"),
        "svmap found the node although it never answers strangers:\n{scan}"
    );
    // A stranger's INVITE gets no answer at all.
    let sock = UdpSocket::bind("127.0.0.2:0")?;
    let invite = format!(
        "INVITE sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKsilent\r\n\
         Max-Forwards: 70\r\nFrom: <sip:eve@{me}>;tag=e1\r\nTo: <sip:+15550100@{node}>\r\n\
         Call-ID: silent@127.0.0.2\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n",
        node = node.sip_addr(),
        me = sock.local_addr()?
    );
    sock.send_to(invite.as_bytes(), node.sip_addr())?;
    let got = collect_udp(&sock, Duration::from_secs(2), false)?;
    ensure!(got.is_empty(), "a stranger got {got:?}");
    let m = node.metrics()?;
    ensure!(m.sum("trunkline_calls_total") == 0.0);
    node.assert_healthy()?;
    node.stop()?;
    Ok(())
}

#[test]
fn a_trunk_refusing_connections_gives_the_caller_503_at_once() -> Result<()> {
    let out = out_dir("edge_trunk_refuses")?;
    // A TCP trunk address where nothing listens (bound, then released).
    let closed = TcpListener::bind("127.0.0.3:0")?.local_addr()?;
    let cfg = NodeConfig::new(closed, Transport::Tcp)?;
    let mut node = Node::start(&cfg, &out)?;
    let sock = UdpSocket::bind("127.0.0.4:0")?;
    let me = sock.local_addr()?;
    let invite = format!(
        "INVITE sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKrefused\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=r1\r\nTo: <sip:+15550100@{node}>\r\n\
         Call-ID: refused@127.0.0.4\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\n\
         Content-Length: 0\r\n\r\n",
        node = node.sip_addr()
    );
    let sent = Instant::now();
    sock.send_to(invite.as_bytes(), node.sip_addr())?;
    // Timer B is 32 s: any final answer well before it comes from the transport error.
    let got = collect_udp(&sock, Duration::from_secs(20), true)?;
    let finals: Vec<u16> = got
        .iter()
        .filter_map(|m| status_code(m))
        .filter(|s| *s >= 200)
        .collect();
    ensure!(
        finals == [503],
        "caller got {finals:?} after {:?}, want one 503 (RFC 3261 §8.1.3.1), not a 408 after Timer B",
        sent.elapsed()
    );
    node.assert_healthy()?;
    node.stop()?;
    Ok(())
}

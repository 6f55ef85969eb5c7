//! Trunk limits and the per-source limit against SIPp: a carrier that takes at most five
//! calls at once gets exactly five of eight held calls and the other three callers get
//! 503; a peer trunk allowed four calls in gets exactly four through and two 503s with
//! Retry-After; a stranger that keeps sending is answered a bounded number of times and
//! then blocked, while calls from the access network go on.

use anyhow::{ensure, Result};
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;
use trunkline_e2e::cluster::metric;
use trunkline_e2e::*;

const HOLD_MS: u64 = 3000;

fn limited(node: &Node, trunk: &str, direction: &str, limit: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| {
            m.get(
                "trunkline_trunk_limited_total",
                &[("trunk", trunk), ("direction", direction), ("limit", limit)],
            )
        })
        .unwrap_or(0.0)
}

/// Runs `calls` held calls from `uac`, all placed within a fraction of a second; returns
/// (successful, failed) as SIPp counted them.
fn burst(uac: Sipp, calls: u64, out: &std::path::Path) -> Result<(u64, u64)> {
    let mut run = uac
        .calls(calls)
        .rate(200)
        .duration_ms(HOLD_MS)
        .timeout_secs(60)
        .spawn(out)?;
    let r = run.wait(Duration::from_secs(60))?;
    Ok((r.successful.unwrap_or(0), r.failed.unwrap_or(0)))
}

#[test]
fn trunk_call_limits_hold_at_exactly_the_configured_numbers() -> Result<()> {
    let out = out_dir("trunk_limits")?;
    // The carrier answers the 5 + 4 calls the limits let through.
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(9)
        .timeout_secs(90)
        .spawn(&out)?;
    let peer_port = free_port(UAC_IP)?;
    let peer = SocketAddr::from((UAC_IP, peer_port));
    let cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[trunks.limits]\ncalls_out = 5\n\n\
             [[trunks]]\nname = \"peer\"\naddress = \"{peer}\"\n\n\
             [trunks.limits]\ncalls_in = 4\n\n[routing]"
        ),
    );
    ensure!(
        toml.contains("calls_in = 4"),
        "the test did not set the limits"
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;

    // Eight callers from the access network toward a carrier limited to five calls out.
    let (ok, failed) = burst(Sipp::uac("uac_basic.xml", node.sip_addr()), 8, &out)?;
    eprintln!("outbound limit 5: {ok} calls up, {failed} refused");
    ensure!(
        (ok, failed) == (5, 3),
        "calls_out = 5: {ok} succeeded, {failed} failed (want 5 and 3)"
    );
    ensure!(
        limited(&node, "carrier", "out", "calls") == 3.0,
        "trunkline_trunk_limited_total for carrier out: {}",
        limited(&node, "carrier", "out", "calls")
    );

    // Six calls from a peer trunk allowed four in.
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr()).port(peer_port);
    let (ok, failed) = burst(uac, 6, &out)?;
    eprintln!("inbound limit 4: {ok} calls up, {failed} refused");
    ensure!(
        (ok, failed) == (4, 2),
        "calls_in = 4: {ok} succeeded, {failed} failed (want 4 and 2)"
    );
    ensure!(
        limited(&node, "peer", "in", "calls") == 2.0,
        "trunkline_trunk_limited_total for peer in: {}",
        limited(&node, "peer", "in", "calls")
    );
    let uac_errors = std::fs::read_to_string(out.join("uac_errors.log")).unwrap_or_default();
    ensure!(
        uac_errors.contains("SIP/2.0 503") && uac_errors.contains("Retry-After"),
        "the refused callers were not told 503 with Retry-After:\n{uac_errors}"
    );
    uas.wait(Duration::from_secs(30))?.assert_all_ok(9)?;
    ensure!(
        wait_until(Duration::from_secs(5), || metric(
            &node,
            "trunkline_calls_active"
        ) == 0.0),
        "calls left over after every call ended"
    );
    Ok(())
}

#[test]
fn a_stranger_that_keeps_sending_is_blocked_and_callers_go_on() -> Result<()> {
    let out = out_dir("source_limit")?;
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(20)
        .timeout_secs(60)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    // 127.0.0.2 (SIPp's callers) is the access network; 127.0.0.66 is nobody.
    cfg.sip_extra
        .push("access_sources = [\"127.0.0.2/32\"]".into());
    cfg.sip_extra.extend([
        "source_limit.max_requests = 10".into(),
        "source_limit.window_secs = 5".into(),
        "source_limit.block_secs = 60".into(),
    ]);
    let node = Node::start(&cfg, &out)?;
    let stranger = UdpSocket::bind("127.0.0.66:0")?;
    stranger.set_read_timeout(Some(Duration::from_millis(200)))?;
    let sip = node.sip_addr();
    let me = stranger.local_addr()?;
    let mut answered = 0;
    for i in 0..40 {
        let options = format!(
            "OPTIONS sip:{sip} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-sl{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:scan@{me}>;tag=s{i}\r\nTo: <sip:{sip}>\r\n\
             Call-ID: sl{i}@{me}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
        );
        stranger.send_to(options.as_bytes(), sip)?;
        let mut buf = [0u8; 4096];
        if let Ok((n, _)) = stranger.recv_from(&mut buf) {
            let text = String::from_utf8_lossy(&buf[..n]);
            ensure!(
                text.starts_with("SIP/2.0 403"),
                "a stranger was answered {text}"
            );
            answered += 1;
        }
    }
    eprintln!("stranger: 40 requests, {answered} answered");
    ensure!(
        answered == 10,
        "max_requests = 10: the stranger got {answered} answers"
    );
    ensure!(metric(&node, "trunkline_sip_sources_blocked_total") == 1.0);
    ensure!(metric(&node, "trunkline_sip_source_dropped_total") == 29.0);
    // Callers from the access network are not held up.
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(20)
        .rate(50)
        .timeout_secs(60);
    run_pair(uac, &mut uas, &out, 20, Duration::from_secs(60))?;
    Ok(())
}

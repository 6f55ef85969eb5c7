//! Drain through the admin API with SIPp on both sides: once `trunkctl node drain` has
//! run, a new INVITE gets 503 with Retry-After and is not sent on, while the calls that
//! were established before it run to their normal end (BYE / 200 from the caller).

use anyhow::{ensure, Result};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

const CALLS: u64 = 5;

#[test]
fn a_drained_node_refuses_new_calls_and_lets_established_ones_end() -> Result<()> {
    let out = out_dir("admin_drain")?;
    let uas_builder = Sipp::uas("uas_basic.xml")
        .calls(CALLS)
        .timeout_secs(60)
        .resolve_port()?;
    let mut cfg = NodeConfig::new(uas_builder.addr()?, Transport::Udp)?;
    cfg.id = format!("drain{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr().to_string();
    let mut uas = uas_builder.spawn(&out)?;
    let mut established = Sipp::uac("uac_basic.xml", node.sip_addr())
        .name("established")
        .calls(CALLS)
        .rate(20)
        .duration_ms(4000)
        .timeout_secs(60)
        .spawn(&out)?;

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = trunkctl(
            &[
                "--server",
                &admin,
                "calls",
                "list",
                "--state",
                "established",
                "-o",
                "json",
            ],
            &[],
        )?;
        ensure!(code == 0, "calls list: {code} {err}");
        let v: serde_json::Value = serde_json::from_str(&out)?;
        if v["calls"].as_array().map_or(0, Vec::len) as u64 == CALLS {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the calls never all got established: {out}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let (code, _, err) = trunkctl(&["--server", &admin, "node", "drain"], &[])?;
    ensure!(code == 0, "node drain: {code} {err}");

    // A new caller is refused with 503 and Retry-After (the scenario checks both)...
    let mut refused = Sipp::uac("uac_unavailable.xml", node.sip_addr())
        .name("refused")
        .calls(1)
        .timeout_secs(20)
        .spawn(&out)?;
    refused.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    // ...while the established calls still end as their caller ends them.
    ensure!(
        established.is_running(),
        "the established calls ended before the refused call was checked"
    );
    established
        .wait(Duration::from_secs(60))?
        .assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;

    // Exactly the established calls ended normally, and nothing is left.
    assert_calls(&node, "200", CALLS as f64)?;
    // Undrained, it answers OPTIONS 200 again (a draining node answers them 503).
    let (code, _, err) = trunkctl(&["--server", &admin, "node", "undrain"], &[])?;
    ensure!(code == 0, "node undrain: {code} {err}");
    node.assert_healthy()?;
    Ok(())
}

/// `trunkctl node drain --shutdown` is SIGTERM through the API: the node refuses new
/// calls, lets the established ones end, and exits 0 once they have, before its
/// drain_secs; `undrain` cannot take it back.
#[test]
fn a_shutdown_drain_through_the_api_ends_the_process_with_status_0() -> Result<()> {
    let out = out_dir("admin_drain_shutdown")?;
    let uas_builder = Sipp::uas("uas_basic.xml")
        .calls(2)
        .timeout_secs(60)
        .resolve_port()?;
    let mut cfg = NodeConfig::new(uas_builder.addr()?, Transport::Udp)?;
    cfg.id = format!("drsd{}", std::process::id() % 1_000_000);
    let mut node = Node::start(&cfg, &out)?;
    let admin = cfg.admin_addr().to_string();
    let mut uas = uas_builder.spawn(&out)?;
    let mut established = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(2)
        .rate(10)
        .duration_ms(3000)
        .timeout_secs(60)
        .spawn(&out)?;
    let up = wait_until(Duration::from_secs(10), || {
        trunkctl_json(&admin, &["calls", "list", "--state", "established"])
            .ok()
            .and_then(|v| v["calls"].as_array().map(Vec::len))
            == Some(2)
    });
    ensure!(up, "the two calls never got established");
    let (code, _, err) = trunkctl_at(&admin, &["node", "drain", "--shutdown"])?;
    ensure!(code == 0, "node drain --shutdown: {code} {err}");
    let (code, _, err) = trunkctl_at(&admin, &["node", "undrain"])?;
    ensure!(code != 0, "undrain after a shutdown drain succeeded: {err}");
    established
        .wait(Duration::from_secs(30))?
        .assert_all_ok(2)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(2)?;
    let status = node.wait_exit(Duration::from_secs(10))?;
    ensure!(status.success(), "the node exited with {status}");
    Ok(())
}

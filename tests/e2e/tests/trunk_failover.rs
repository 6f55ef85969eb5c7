//! Failover between the trunks of a route, against SIPp trunks: a call to +44 goes to the
//! UK trunk first and to the default trunk when the UK trunk answers 503 or cannot be
//! reached at all (TCP connection refused); the caller sees one call that is answered.
//! A 486 from the UK trunk is the callee's answer: no other trunk is tried and the caller
//! gets 486.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

const UK_NUMBER: &str = "+442071234567";

fn failovers(node: &Node, trunk: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get("trunkline_route_failovers_total", &[("trunk", trunk)]))
        .unwrap_or(0.0)
}

/// A node whose +44 route goes to `uk` (over `uk_transport`) before the default trunk
/// `carrier`.
fn node(
    out: &std::path::Path,
    carrier: std::net::SocketAddr,
    uk: std::net::SocketAddr,
    uk_transport: &str,
) -> Result<Node> {
    let cfg = NodeConfig::new(carrier, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks]]\nname = \"uk\"\naddress = \"{uk}\"\ntransport = \"{uk_transport}\"\n\n\
             [[routes]]\nprefix = \"+44\"\ntrunk = \"uk\"\n\n[routing]"
        ),
    );
    Node::start_toml(&cfg, &toml, out)
}

fn call(node: &Node, scenario: &str, calls: u64, out: &std::path::Path) -> Result<SippResult> {
    Sipp::uac(scenario, node.sip_addr())
        .calls(calls)
        .rate(10)
        .timeout_secs(30)
        .arg("-s")
        .arg(UK_NUMBER)
        .spawn(out)?
        .wait(Duration::from_secs(40))
}

#[test]
fn a_call_fails_over_on_503_and_on_a_refused_connection_but_not_on_486() -> Result<()> {
    // The UK trunk answers 503: every call is answered by the default trunk.
    let out = out_dir("trunk_failover_503")?;
    let mut uk = Sipp::uas("uas_unavailable.xml")
        .name("uk")
        .calls(3)
        .timeout_secs(60)
        .spawn(&out)?;
    let mut carrier = Sipp::uas("uas_basic.xml")
        .name("carrier")
        .calls(3)
        .timeout_secs(60)
        .spawn(&out)?;
    let n = node(&out, carrier.addr, uk.addr, "udp")?;
    call(&n, "uac_basic.xml", 3, &out)?.assert_all_ok(3)?;
    uk.wait(Duration::from_secs(30))?.assert_all_ok(3)?;
    carrier.wait(Duration::from_secs(30))?.assert_all_ok(3)?;
    ensure!(
        failovers(&n, "uk") == 3.0,
        "failovers: {}",
        failovers(&n, "uk")
    );
    drop(n);

    // The UK trunk refuses TCP connections: the transport error fails over at once.
    let out = out_dir("trunk_failover_refused")?;
    let mut carrier = Sipp::uas("uas_basic.xml")
        .name("carrier")
        .calls(2)
        .timeout_secs(60)
        .spawn(&out)?;
    let closed = std::net::SocketAddr::from((UAS_IP, free_port(UAS_IP)?));
    let n = node(&out, carrier.addr, closed, "tcp")?;
    call(&n, "uac_basic.xml", 2, &out)?.assert_all_ok(2)?;
    carrier.wait(Duration::from_secs(30))?.assert_all_ok(2)?;
    ensure!(
        failovers(&n, "uk") == 2.0,
        "failovers: {}",
        failovers(&n, "uk")
    );
    drop(n);

    // The UK callee is busy: that is the answer, the default trunk is never asked.
    let out = out_dir("trunk_failover_busy")?;
    let mut uk = Sipp::uas("uas_busy.xml")
        .name("uk")
        .calls(2)
        .timeout_secs(60)
        .spawn(&out)?;
    let carrier = Sipp::uas("uas_basic.xml")
        .name("carrier")
        .trace_msg()
        .timeout_secs(60)
        .spawn(&out)?;
    let n = node(&out, carrier.addr, uk.addr, "udp")?;
    call(&n, "uac_busy.xml", 2, &out)?.assert_all_ok(2)?;
    uk.wait(Duration::from_secs(30))?.assert_all_ok(2)?;
    ensure!(failovers(&n, "uk") == 0.0, "a 486 failed over");
    let to_carrier = parse_trace(&carrier.messages_log())
        .unwrap_or_default()
        .iter()
        .filter(|m| !m.sent && m.method() == Some("INVITE"))
        .count();
    ensure!(
        to_carrier == 0,
        "the default trunk got {to_carrier} INVITEs after a 486"
    );
    Ok(())
}

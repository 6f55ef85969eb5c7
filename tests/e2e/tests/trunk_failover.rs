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

/// A callee trunk on 127.0.0.3 running `scenario` until the test ends, its messages traced.
fn trunk_uas(out: &std::path::Path, name: &str, scenario: &str) -> Result<SippRun> {
    Sipp::uas(scenario)
        .name(name)
        .trace_msg()
        .timeout_secs(120)
        .spawn(out)
}

const PEER_IP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 41);

#[test]
fn route_lists_share_by_weight_pass_a_silent_trunk_and_route_per_source() -> Result<()> {
    let out = out_dir("trunk_route_lists")?;
    let a = trunk_uas(&out, "a", "uas_basic.xml")?;
    let b = trunk_uas(&out, "b", "uas_basic.xml")?;
    let c = trunk_uas(&out, "c", "uas_basic.xml")?;
    let mut late = Sipp::uas("uas_late.xml")
        .name("late")
        .trace_msg()
        .calls(3)
        .timeout_secs(60)
        .spawn(&out)?;
    let carrier = trunk_uas(&out, "carrier", "uas_basic.xml")?;
    let trunk = |name: &str, addr: std::net::SocketAddr| {
        format!("[[trunks]]\nname = \"{name}\"\naddress = \"{addr}\"\n\n")
    };
    let cfg = NodeConfig::new(carrier.addr, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "{}{}{}{}[[trunks]]\nname = \"peer\"\naddress = \"{PEER_IP}:5060\"\n\
             sources = [\"{PEER_IP}\"]\n\n\
             [[routes]]\nprefix = \"+44\"\ntrunks = [{{ name = \"a\", priority = 1, weight = 3 }}, \
             {{ name = \"b\", priority = 1, weight = 1 }}, {{ name = \"c\", priority = 2 }}]\n\n\
             [[routes]]\nprefix = \"+44\"\nfrom_trunk = \"peer\"\ntrunk = \"c\"\n\n\
             [[routes]]\nprefix = \"+33\"\ntrunks = [\"late\", \"c\"]\nprovisional_timeout_ms = 1000\n\n\
             [routing]",
            trunk("a", a.addr),
            trunk("b", b.addr),
            trunk("c", c.addr),
            trunk("late", late.addr),
        ),
    );
    let n = Node::start_toml(&cfg, &toml, &out)?;

    // Priority 1 shares the calls 3:1; priority 2 and the default trunk get none.
    Sipp::uac("uac_basic.xml", n.sip_addr())
        .name("weighted")
        .calls(40)
        .rate(20)
        .duration_ms(100)
        .timeout_secs(60)
        .arg("-s")
        .arg(UK_NUMBER)
        .spawn(&out)?
        .wait(Duration::from_secs(90))?
        .assert_all_ok(40)?;
    let (na, nb, nc) = (a.calls_offered(), b.calls_offered(), c.calls_offered());
    ensure!(
        na + nb == 40 && nb > 0 && na > nb && nc == 0 && carrier.calls_offered() == 0,
        "a {na}, b {nb} (weights 3:1), c {nc} and the default {} (want 0)",
        carrier.calls_offered()
    );

    // The same number from the peer trunk takes the peer's own route.
    Sipp::uac("uac_basic.xml", n.sip_addr())
        .name("from_peer")
        .local_ip(PEER_IP)
        .calls(2)
        .timeout_secs(30)
        .arg("-s")
        .arg(UK_NUMBER)
        .spawn(&out)?
        .wait(Duration::from_secs(40))?
        .assert_all_ok(2)?;
    ensure!(
        c.calls_offered() == 2 && a.calls_offered() + b.calls_offered() == 40,
        "the peer's calls went to a {}, b {}, c {} (want all to c)",
        a.calls_offered() - na,
        b.calls_offered() - nb,
        c.calls_offered()
    );

    // The first trunk of +33 says nothing for 1 s: each call goes on to c at once and
    // is answered; the late trunk's INVITE is cancelled when it finally rings.
    Sipp::uac("uac_basic.xml", n.sip_addr())
        .name("past_silent")
        .calls(3)
        .rate(3)
        .timeout_secs(30)
        .arg("-s")
        .arg("+33123456789")
        .spawn(&out)?
        .wait(Duration::from_secs(40))?
        .assert_all_ok(3)?;
    late.wait(Duration::from_secs(30))?.assert_all_ok(3)?;
    ensure!(
        c.calls_offered() == 5,
        "c was offered {} calls, want 5",
        c.calls_offered()
    );
    ensure!(
        failovers(&n, "late") == 3.0,
        "failovers from the silent trunk: {}",
        failovers(&n, "late")
    );
    // Each call left the silent trunk on the route's timer, not on Timer B.
    let m = n.metrics()?;
    let timeouts = |timer: &str| {
        m.get("trunkline_transaction_timeouts_total", &[("timer", timer)])
            .unwrap_or(0.0)
    };
    ensure!(
        timeouts("P") == 3.0 && timeouts("B") == 0.0,
        "provisional timeouts {}, Timer B timeouts {}",
        timeouts("P"),
        timeouts("B")
    );
    Ok(())
}

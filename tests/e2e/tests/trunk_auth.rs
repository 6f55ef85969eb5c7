//! Digest authentication of a trunk that calls from an address no rule names, against
//! SIPp's `[authentication]`: the node challenges with 407, the right password makes the
//! call the trunk's, a wrong one is refused with 403, and a source that keeps failing is
//! blocked while the trunk's own calls from elsewhere go on.
//!
//! SIPp 3.6 (Debian's) answers MD5 challenges only, so the node offers MD5 here; the
//! SHA-256 computation is checked against RFC 7616's example in `trunkline-call`.

use anyhow::{ensure, Result};
use std::net::Ipv4Addr;
use std::time::Duration;
use trunkline_e2e::cluster::metric;
use trunkline_e2e::*;

const USER: &str = "pbx-7";
const PASSWORD: &str = "n0t-a-real-secret";
const GOOD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
const BAD_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 5);

fn auth_results(node: &Node, result: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get("trunkline_sip_auth_total", &[("result", result)]))
        .unwrap_or(0.0)
}

fn caller(node: &Node, ip: Ipv4Addr, password: &str, calls: u64) -> Sipp {
    Sipp::uac("uac_auth.xml", node.sip_addr())
        .local_ip(ip)
        .calls(calls)
        .rate(10)
        .duration_ms(200)
        .timeout_secs(30)
        .arg("-au")
        .arg(USER)
        .arg("-ap")
        .arg(password)
}

#[test]
fn a_trunk_proves_its_password_and_a_guesser_is_refused_then_blocked() -> Result<()> {
    let out = out_dir("trunk_auth")?;
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(5)
        .timeout_secs(90)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    // Nobody on 127.0.0.2 or .5 is trusted by address: only the password tells.
    cfg.sip_extra.extend([
        "access_sources = [\"127.0.0.1/32\"]".into(),
        "auth.algorithms = [\"MD5\"]".into(),
        "source_limit.max_auth_failures = 3".into(),
    ]);
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks]]\nname = \"pbx\"\naddress = \"127.0.0.9:5060\"\n\n\
             [trunks.auth]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n[routing]"
        ),
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;

    // The trunk with the right password: five calls, each challenged once.
    let r = caller(&node, GOOD_IP, PASSWORD, 5)
        .name("good")
        .spawn(&out)?
        .wait(Duration::from_secs(60))?;
    r.assert_all_ok(5)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(5)?;
    let (challenged, valid) = (
        auth_results(&node, "challenged"),
        auth_results(&node, "valid"),
    );
    eprintln!("right password: {challenged} challenges, {valid} valid");
    ensure!(
        challenged == 5.0 && valid == 5.0,
        "5 calls: {challenged} challenged, {valid} valid"
    );
    let calls = node.metrics()?.sum("trunkline_calls_total");
    ensure!(calls == 5.0, "the node counted {calls} calls, not 5");

    // A guesser: three wrong answers get 403, then its address is blocked.
    let r = caller(&node, BAD_IP, "guess", 3)
        .name("guess")
        .spawn(&out)?
        .wait(Duration::from_secs(60))?;
    ensure!(
        r.successful == Some(0) && r.failed == Some(3),
        "wrong password: {:?} succeeded, {:?} failed",
        r.successful,
        r.failed
    );
    let errors = std::fs::read_to_string(out.join("guess_errors.log")).unwrap_or_default();
    ensure!(
        errors.contains("SIP/2.0 403"),
        "a wrong password was not answered 403:\n{errors}"
    );
    ensure!(auth_results(&node, "invalid") == 3.0);
    ensure!(metric(&node, "trunkline_sip_sources_blocked_total") == 1.0);
    // Blocked: even the right password from there gets no answer now.
    let dropped_before = metric(&node, "trunkline_sip_source_dropped_total");
    let r = caller(&node, BAD_IP, PASSWORD, 1)
        .name("blocked")
        .timeout_secs(5)
        .spawn(&out)?
        .wait(Duration::from_secs(30))?;
    ensure!(
        r.successful != Some(1),
        "a blocked source still got its call through"
    );
    let dropped = metric(&node, "trunkline_sip_source_dropped_total") - dropped_before;
    ensure!(
        dropped >= 1.0,
        "nothing from the blocked source was dropped"
    );
    let calls = node.metrics()?.sum("trunkline_calls_total");
    ensure!(
        calls == 5.0,
        "calls were started for the guesser: {calls} in all"
    );
    Ok(())
}

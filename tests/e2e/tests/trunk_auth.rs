//! Digest authentication of a trunk that calls from an address no rule names, against
//! SIPp's `[authentication]`: the node challenges with 407, the right password makes the
//! call the trunk's, a wrong one is refused with 403, and a source that keeps failing is
//! blocked while the trunk's own calls from elsewhere go on.
//!
//! SIPp 3.6 (Debian's) answers MD5 challenges only, so the node offers MD5 to it; the
//! SHA-256 challenge is answered by linphonec (Debian's `linphone-cli`), an independent
//! implementation of RFC 7616/8760.

use anyhow::{ensure, Result};
use std::net::Ipv4Addr;
use std::time::Duration;
use trunkline_e2e::cluster::metric;
use trunkline_e2e::linphone::Linphone;
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

/// The node's configuration with trunk `pbx` known only by its digest credentials: nobody
/// on 127.0.0.2 or .5 is trusted by address.
fn start_node(cfg: &mut NodeConfig, algorithms: &str, out: &std::path::Path) -> Result<Node> {
    cfg.sip_extra.extend([
        "access_sources = [\"127.0.0.1/32\"]".into(),
        format!("auth.algorithms = [{algorithms}]"),
        "source_limit.max_auth_failures = 3".into(),
    ]);
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks]]\nname = \"pbx\"\naddress = \"127.0.0.9:5060\"\n\n\
             [trunks.auth]\nusername = \"{USER}\"\npassword = \"{PASSWORD}\"\n\n[routing]"
        ),
    );
    Node::start_toml(cfg, &toml, out)
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
    let node = start_node(&mut cfg, "\"MD5\"", &out)?;

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

/// The header lines `name:` of the SIP messages in linphonec's log.
fn header_lines<'a>(log: &'a str, name: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| {
            l.split_once(':')
                .is_some_and(|(h, _)| h.eq_ignore_ascii_case(name))
        })
        .collect()
}

#[test]
fn a_sha256_challenge_is_answered_by_linphone_and_a_wrong_password_refused() -> Result<()> {
    let out = out_dir("trunk_auth_sha256")?;
    let mut uas = Sipp::uas("uas_basic.xml")
        .calls(1)
        .timeout_secs(90)
        .spawn(&out)?;
    let mut cfg = NodeConfig::new(uas.addr, Transport::Udp)?;
    let node = start_node(&mut cfg, "\"SHA-256\"", &out)?;
    let target = format!("sip:+441234567@{}", node.sip_addr());

    // The right password: challenged with SHA-256 only, answered with SHA-256, connected.
    let mut good = Linphone::call(&out, "linphone_good", GOOD_IP, USER, PASSWORD, &target)?;
    good.wait_state("StreamsRunning", Duration::from_secs(20))?;
    let log = good.log_text();
    let challenges = header_lines(&log, "Proxy-Authenticate");
    let answers = header_lines(&log, "Proxy-Authorization");
    eprintln!("challenges: {challenges:?}\nanswers: {answers:?}");
    ensure!(
        !challenges.is_empty() && challenges.iter().all(|c| c.contains("algorithm=SHA-256")),
        "the node's challenges are not all SHA-256: {challenges:?}"
    );
    ensure!(
        answers.iter().any(|a| a.contains("algorithm=SHA-256")
            && a.contains("qop=auth")
            && a.split("response=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .is_some_and(|r| r.len() == 64 && r.bytes().all(|b| b.is_ascii_hexdigit()))),
        "linphonec sent no SHA-256 answer (64 hex digits): {answers:?}"
    );
    good.command("terminate")?;
    good.wait_state("Released", Duration::from_secs(15))?;
    good.quit()?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    let (challenged, valid) = (
        auth_results(&node, "challenged"),
        auth_results(&node, "valid"),
    );
    ensure!(
        challenged == 1.0 && valid == 1.0,
        "one call: {challenged} challenged, {valid} valid"
    );
    ensure!(node.metrics()?.sum("trunkline_calls_total") == 1.0);

    // A wrong password: 403, no call.
    let mut bad = Linphone::call(&out, "linphone_guess", BAD_IP, USER, "guess", &target)?;
    bad.wait_state("Error", Duration::from_secs(20))?;
    let log = bad.log_text();
    ensure!(
        log.contains("SIP/2.0 403"),
        "a wrong SHA-256 answer was not refused with 403:\n{}",
        tail(&bad.sip_log, 40)
    );
    bad.stop();
    ensure!(auth_results(&node, "invalid") == 1.0);
    let calls = node.metrics()?.sum("trunkline_calls_total");
    ensure!(
        calls == 1.0,
        "a call was started for the wrong password: {calls} in all"
    );
    Ok(())
}

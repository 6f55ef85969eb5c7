//! The node authenticating itself to a carrier: SIPp as a carrier that challenges the
//! node's INVITE and BYE with 401 and checks each answer with `verifyauth`. With the
//! trunk's `[trunks.outbound_auth]` every call goes through and ends cleanly, and the
//! caller never sees a challenge; with a wrong password the carrier refuses the answer
//! and the node does not try again (the caller hears 403).
//!
//! SIPp 3.6 (Debian's) verifies MD5 only; the SHA-256 answer is checked in
//! `trunkline-b2bua`'s tests.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

fn node(out: &std::path::Path, carrier: std::net::SocketAddr, password: &str) -> Result<Node> {
    let cfg = NodeConfig::new(carrier, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[trunks.outbound_auth]\nusername = \"trunkline-7\"\npassword = \"{password}\"\n\n\
             [routing]"
        ),
    );
    Node::start_toml(&cfg, &toml, out)
}

#[test]
fn the_node_answers_the_carriers_challenges_for_invite_and_bye() -> Result<()> {
    let out = out_dir("trunk_outbound_auth")?;
    let mut carrier = Sipp::uas("uas_challenging.xml")
        .name("carrier")
        .trace_msg()
        .calls(3)
        .timeout_secs(60)
        .spawn(&out)?;
    let node = node(&out, carrier.addr, "carrier-secret")?;
    let mut caller = Sipp::uac("uac_basic.xml", node.sip_addr())
        .name("caller")
        .trace_msg()
        .calls(3)
        .rate(5)
        .duration_ms(300)
        .timeout_secs(30)
        .spawn(&out)?;
    let caller_log = caller.messages_log();
    caller.wait(Duration::from_secs(40))?.assert_all_ok(3)?;
    let carrier_log = carrier.messages_log();
    carrier.wait(Duration::from_secs(30))?.assert_all_ok(3)?;
    let seen = parse_trace(&carrier_log)?;
    let answered = |method: &str| {
        seen.iter()
            .filter(|m| !m.sent && m.method() == Some(method))
            .filter(|m| m.header("Authorization").is_some())
            .count()
    };
    ensure!(
        answered("INVITE") == 3 && answered("BYE") == 3,
        "the carrier got {} INVITEs and {} BYEs with credentials, not 3 each",
        answered("INVITE"),
        answered("BYE")
    );
    let challenged = parse_trace(&caller_log)?
        .iter()
        .filter(|m| matches!(m.status(), Some(401 | 407)))
        .count();
    ensure!(challenged == 0, "the caller saw {challenged} challenges");
    Ok(())
}

#[test]
fn a_wrong_password_is_refused_once_and_the_caller_hears_403() -> Result<()> {
    let out = out_dir("trunk_outbound_auth_wrong")?;
    let mut carrier = Sipp::uas("uas_challenging.xml")
        .name("carrier")
        .trace_msg()
        .calls(1)
        .timeout_secs(20)
        .spawn(&out)?;
    let node = node(&out, carrier.addr, "not-the-password")?;
    let mut caller = Sipp::uac("uac_basic.xml", node.sip_addr())
        .name("caller")
        .trace_msg()
        .calls(1)
        .timeout_secs(20)
        .spawn(&out)?;
    let caller_log = caller.messages_log();
    caller.wait(Duration::from_secs(30))?;
    let finals = final_invite_statuses(&caller_log)?;
    // (Repeated: this caller does not ACK a failure.)
    ensure!(
        !finals.is_empty() && finals.iter().all(|s| *s == 403),
        "the caller got {finals:?}, not 403"
    );
    let carrier_log = carrier.messages_log();
    let c = carrier.wait(Duration::from_secs(30))?;
    ensure!(
        c.failed == Some(1),
        "the carrier's call should have failed on the wrong answer: {:?} failed",
        c.failed
    );
    let invites = parse_trace(&carrier_log)?
        .iter()
        .filter(|m| !m.sent && m.method() == Some("INVITE"))
        .count();
    ensure!(
        invites == 2,
        "the node sent {invites} INVITEs: one, and one answer, and no more"
    );
    Ok(())
}

fn registration_metric(node: &Node, name: &str, labels: &[(&str, &str)]) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get(name, labels))
        .unwrap_or(-1.0)
}

#[test]
fn the_node_registers_to_a_carrier_retries_after_a_refusal_and_refreshes() -> Result<()> {
    let out = out_dir("trunk_register")?;
    let mut registrar = Sipp::uas("uas_registrar.xml")
        .name("registrar")
        .trace_msg()
        .calls(1)
        .timeout_secs(40)
        .spawn(&out)?;
    let cfg = NodeConfig::new(registrar.addr, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        "[trunks.outbound_auth]\nusername = \"trunkline-7\"\npassword = \"carrier-secret\"\n\n\
         [trunks.register]\ndomain = \"carrier.test\"\nexpires_secs = 60\nretry_min_secs = 1\n\n\
         [routing]",
    );
    let mut node = Node::start_toml(&cfg, &toml, &out)?;
    let log = registrar.messages_log();
    let registers = || -> Vec<TracedMessage> {
        parse_trace(&log)
            .unwrap_or_default()
            .into_iter()
            .filter(|m| !m.sent && m.method() == Some("REGISTER"))
            .collect()
    };
    // Registered, then refreshed: five REGISTERs and the refresh's 200.
    ensure!(
        wait_until(Duration::from_secs(30), || {
            registers().len() >= 5
                && registration_metric(
                    &node,
                    "trunkline_trunk_registration_changes_total",
                    &[("trunk", "carrier"), ("state", "registered")],
                ) >= 1.0
        }),
        "the registrar got {} REGISTERs, not 5",
        registers().len()
    );
    let seen = registers();
    let cseqs: Vec<u32> = seen
        .iter()
        .filter_map(|m| m.header("CSeq")?.split_whitespace().next()?.parse().ok())
        .collect();
    ensure!(
        cseqs.windows(2).all(|w| w[1] == w[0] + 1),
        "CSeq goes up by one per REGISTER: {cseqs:?}"
    );
    let first = &seen[0];
    ensure!(
        first.text.starts_with("REGISTER sip:carrier.test SIP/2.0")
            && first
                .header("To")
                .is_some_and(|t| t.contains("sip:trunkline-7@carrier.test"))
            && first.header("Expires") == Some("60"),
        "the REGISTER names the wrong registrar, AOR or lifetime:\n{}",
        first.text
    );
    let contact = first.header("Contact").unwrap_or_default();
    ensure!(
        contact.contains(&node.sip_addr().to_string()),
        "the Contact {contact:?} is not the node's SIP address {}",
        node.sip_addr()
    );
    let trunk = [("trunk", "carrier")];
    ensure!(registration_metric(&node, "trunkline_trunk_registered", &trunk) == 1.0);
    ensure!(
        registration_metric(&node, "trunkline_trunk_registration_last_status", &trunk) == 200.0
    );
    let changes = |state| {
        registration_metric(
            &node,
            "trunkline_trunk_registration_changes_total",
            &[("trunk", "carrier"), ("state", state)],
        )
    };
    ensure!(
        changes("failed") == 1.0 && changes("registered") == 1.0,
        "state changes: failed {}, registered {}",
        changes("failed"),
        changes("registered")
    );
    // trunkctl shows the same registration.
    let shown = trunkctl_json(&cfg.admin_addr().to_string(), &["trunks", "get", "carrier"])?;
    let state = &shown["trunks"][0]["state"];
    ensure!(
        state["registration"] == "registered"
            && state["registrationLastStatus"] == 200
            && state["registrationExpiresMs"].as_u64().unwrap_or(0) > 1_700_000_000_000,
        "trunkctl shows the registration as {state}"
    );
    // Shutting down, the node removes its binding (answering the challenge) and exits 0.
    let status = node.stop()?;
    ensure!(status.success(), "the node exited {status}");
    registrar.wait(Duration::from_secs(20))?.assert_all_ok(1)?;
    let all = registers();
    ensure!(
        all.len() == 7,
        "the registrar got {} REGISTERs, not 7",
        all.len()
    );
    ensure!(
        all[5..].iter().all(|m| m.header("Expires") == Some("0")),
        "the last REGISTERs do not remove the binding:\n{}",
        all[5].text
    );
    Ok(())
}

//! One call per scenario through the node: the caller must see exactly the outcome a user
//! expects (the right final response), the callee must see its side of it, and the node's
//! metrics must count the call with that status and show no call left active.

use anyhow::{ensure, Context, Result};
use std::time::Duration;
use trunkline_e2e::*;

/// Runs one call of `uac`/`uas` through a fresh node; returns the node (for metrics) and the
/// caller's final INVITE response codes.
fn one_call(test: &str, uac: &str, uas: &str) -> Result<(Node, Vec<u16>, SippRun, SippRun)> {
    let out = out_dir(test)?;
    let server = Sipp::uas(uas).calls(1).trace_msg().timeout_secs(90);
    let (node, mut server) = node_with_callee(&out, server, Transport::Udp, |_| {})?;
    let mut client = Sipp::uac(uac, node.sip_addr())
        .calls(1)
        .duration_ms(500)
        .trace_msg()
        .timeout_secs(70)
        .spawn(&out)?;
    client
        .wait(Duration::from_secs(90))?
        .assert_all_ok(1)
        .with_context(|| format!("node log tail:\n{}", tail(&node.log, 30)))?;
    server.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    let finals = final_invite_statuses(&client.messages_log())?;
    Ok((node, finals, client, server))
}

#[test]
fn basic_call_is_answered_and_hung_up() -> Result<()> {
    let (mut node, finals, _, _) = one_call("scenario_basic", "uac_basic.xml", "uas_basic.xml")?;
    ensure!(
        finals.first() == Some(&200),
        "caller's INVITE final responses: {finals:?}"
    );
    assert_calls(&node, "200", 1.0)?;
    node.assert_healthy()
}

#[test]
fn caller_cancel_gets_487() -> Result<()> {
    let (mut node, finals, client, server) =
        one_call("scenario_cancel", "uac_cancel.xml", "uas_cancel.xml")?;
    ensure!(
        finals == vec![487],
        "caller's INVITE final responses: {finals:?}"
    );
    let cancel_ok = parse_trace(&client.messages_log())?.iter().any(|m| {
        !m.sent
            && m.status() == Some(200)
            && m.header("CSeq").is_some_and(|c| c.ends_with("CANCEL"))
    });
    ensure!(cancel_ok, "caller got no 200 for its CANCEL");
    let callee_cancelled = parse_trace(&server.messages_log())?
        .iter()
        .any(|m| !m.sent && m.method() == Some("CANCEL"));
    ensure!(callee_cancelled, "the callee never received a CANCEL");
    assert_calls(&node, "487", 1.0)?;
    node.assert_healthy()
}

#[test]
fn callee_busy_gives_caller_486() -> Result<()> {
    let (mut node, finals, _, _) = one_call("scenario_busy", "uac_busy.xml", "uas_busy.xml")?;
    ensure!(
        finals == vec![486],
        "caller's INVITE final responses: {finals:?}"
    );
    assert_calls(&node, "486", 1.0)?;
    node.assert_healthy()
}

/// The callee takes the INVITE and never answers: after Timer B (64 x T1 = 32 s) the caller
/// gets 408.
#[test]
fn silent_callee_gives_caller_408_after_timer_b() -> Result<()> {
    let out = out_dir("scenario_noanswer")?;
    let server = Sipp::uas("uas_noanswer.xml").calls(1).trace_msg();
    let (mut node, mut server) = node_with_callee(&out, server, Transport::Udp, |_| {})?;
    let mut client = Sipp::uac("uac_noanswer.xml", node.sip_addr())
        .calls(1)
        .trace_msg()
        .timeout_secs(70)
        .spawn(&out)?;
    client.wait(Duration::from_secs(90))?.assert_all_ok(1)?;
    let finals = final_invite_statuses(&client.messages_log())?;
    ensure!(
        finals.first() == Some(&408),
        "caller's INVITE final responses: {finals:?}"
    );
    let callee_invited = parse_trace(&server.messages_log())?
        .iter()
        .any(|m| !m.sent && m.method() == Some("INVITE"));
    ensure!(callee_invited, "the callee never received the INVITE");
    server.kill();
    let m = assert_calls(&node, "408", 1.0)?;
    let timer_b = m.value("trunkline_transaction_timeouts_total", &[("timer", "B")])?;
    ensure!(timer_b >= 1.0, "Timer B expiries counted: {timer_b}");
    node.assert_healthy()
}

#[test]
fn callee_hangs_up_and_caller_gets_bye() -> Result<()> {
    let (mut node, finals, client, _) = one_call(
        "scenario_callee_bye",
        "uac_callee_bye.xml",
        "uas_callee_bye.xml",
    )?;
    ensure!(
        finals.first() == Some(&200),
        "caller's INVITE final responses: {finals:?}"
    );
    let bye = parse_trace(&client.messages_log())?
        .iter()
        .any(|m| !m.sent && m.method() == Some("BYE"));
    ensure!(bye, "the caller never received the BYE");
    assert_calls(&node, "200", 1.0)?;
    node.assert_healthy()
}

/// Hold (a=sendonly) and resume (a=sendrecv): the callee checks each re-INVITE's direction by
/// regexp in its scenario, the caller checks each answer (a=recvonly, then a=sendrecv).
#[test]
fn reinvite_hold_and_resume_are_relayed() -> Result<()> {
    let (mut node, finals, _, server) =
        one_call("scenario_reinvite", "uac_reinvite.xml", "uas_reinvite.xml")?;
    ensure!(
        finals == vec![200, 200, 200],
        "caller's INVITE final responses: {finals:?}"
    );
    let invites_at_callee = parse_trace(&server.messages_log())?
        .iter()
        .filter(|m| !m.sent && m.method() == Some("INVITE"))
        .count();
    ensure!(
        invites_at_callee >= 3,
        "the callee saw {invites_at_callee} INVITEs, want 3"
    );
    let m = assert_calls(&node, "200", 1.0)?;
    let invites = m.value("trunkline_sip_requests_total", &[("method", "INVITE")])?;
    ensure!(
        invites >= 6.0,
        "INVITE requests counted (both legs): {invites}, want >= 6"
    );
    node.assert_healthy()
}

/// 183 with SDP reaches the caller (its scenario requires an m= line in the 183), then 200.
#[test]
fn early_media_183_is_relayed() -> Result<()> {
    let (mut node, finals, client, _) = one_call(
        "scenario_early_media",
        "uac_early_media.xml",
        "uas_early_media.xml",
    )?;
    ensure!(
        finals.first() == Some(&200),
        "caller's INVITE final responses: {finals:?}"
    );
    let early = parse_trace(&client.messages_log())?
        .iter()
        .any(|m| !m.sent && m.status() == Some(183) && m.text.contains("m=audio"));
    ensure!(early, "the caller got no 183 with SDP");
    assert_calls(&node, "200", 1.0)?;
    node.assert_healthy()
}

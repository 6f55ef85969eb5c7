//! Trunk health by OPTIONS pings against SIPp: a trunk that answers its pings
//! (`uas_pinged.xml`) takes the calls routed to it; once it stops answering it is marked down and
//! its calls go to the default trunk instead; when it answers again it is back up and
//! takes them again. The state and its changes are in the metrics.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

const UK_NUMBER: &str = "+442071234567";

fn trunk_up(node: &Node, trunk: &str) -> Option<f64> {
    node.metrics()
        .ok()?
        .get("trunkline_trunk_up", &[("trunk", trunk)])
}

fn changes(node: &Node, trunk: &str, state: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| {
            m.get(
                "trunkline_trunk_state_changes_total",
                &[("trunk", trunk), ("state", state)],
            )
        })
        .unwrap_or(0.0)
}

fn invites_received(log: &std::path::Path) -> Result<usize> {
    Ok(parse_trace(log)?
        .iter()
        .filter(|m| !m.sent && m.method() == Some("INVITE"))
        .count())
}

/// The UK trunk's health as `trunkctl trunks get uk -o json` shows it.
fn health_shown(cfg: &NodeConfig) -> Result<String> {
    let v = trunkctl_json(&cfg.admin_addr().to_string(), &["trunks", "get", "uk"])?;
    Ok(v["trunks"][0]["state"]["health"]
        .as_str()
        .map_or_else(|| format!("nothing in {v}"), str::to_string))
}

fn call_uk(node: &Node, out: &std::path::Path) -> Result<()> {
    Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(1)
        .timeout_secs(30)
        .arg("-s")
        .arg(UK_NUMBER)
        .spawn(out)?
        .wait(Duration::from_secs(30))?
        .assert_all_ok(1)
}

#[test]
fn a_trunk_that_stops_answering_pings_is_skipped_until_it_answers_again() -> Result<()> {
    let out = out_dir("trunk_health")?;
    // The UK trunk answers its pings and takes calls (each ping is a SIPp "call", so
    // no call count: what reached it is read from its message trace).
    let uk_builder = Sipp::uas("uas_pinged.xml")
        .name("uk")
        .trace_msg()
        .timeout_secs(120)
        .resolve_port()?;
    let mut uk = uk_builder.clone().spawn(&out)?;
    let mut carrier = Sipp::uas("uas_basic.xml")
        .name("carrier")
        .calls(1)
        .timeout_secs(90)
        .spawn(&out)?;
    let cfg = NodeConfig::new(carrier.addr, Transport::Udp)?;
    let toml = cfg.to_toml().replace(
        "[routing]",
        &format!(
            "[[trunks]]\nname = \"uk\"\naddress = \"{}\"\n\n\
             [trunks.health]\ninterval_secs = 1\ndown_after = 2\nup_after = 2\n\
             up_statuses = [\"2xx\"]\n\n\
             [[routes]]\nprefix = \"+44\"\ntrunk = \"uk\"\n\n[routing]",
            uk_builder.addr()?
        ),
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;
    ensure!(
        wait_until(Duration::from_secs(10), || trunk_up(&node, "uk")
            == Some(1.0)),
        "the UK trunk was never reported up: {:?}",
        trunk_up(&node, "uk")
    );

    // Up: the UK call goes to the UK trunk.
    call_uk(&node, &out)?;
    uk.kill();
    ensure!(
        invites_received(&uk.messages_log())? == 1,
        "the UK trunk did not get the UK call"
    );

    // The UK trunk is gone: two missed pings, down.
    ensure!(
        wait_until(Duration::from_secs(10), || trunk_up(&node, "uk")
            == Some(0.0)),
        "the silent UK trunk was never marked down"
    );
    ensure!(changes(&node, "uk", "down") == 1.0);
    let shown = health_shown(&cfg)?;
    ensure!(shown == "down", "trunkctl shows the UK trunk {shown:?}");
    // Its calls go to the default trunk meanwhile.
    call_uk(&node, &out)?;
    carrier.wait(Duration::from_secs(30))?.assert_all_ok(1)?;

    // Back on its address and answering: up after two answers, and it takes the call.
    let mut uk2 = uk_builder.name("uk2").spawn(&out)?;
    ensure!(
        wait_until(Duration::from_secs(10), || trunk_up(&node, "uk")
            == Some(1.0)),
        "the UK trunk answering again was never marked up"
    );
    ensure!(changes(&node, "uk", "up") == 1.0);
    let shown = health_shown(&cfg)?;
    ensure!(shown == "up", "trunkctl shows the UK trunk {shown:?}");
    call_uk(&node, &out)?;
    uk2.kill();
    ensure!(
        invites_received(&uk2.messages_log())? == 1,
        "the UK trunk back up did not get the UK call"
    );
    let last_change = node
        .metrics()?
        .get(
            "trunkline_trunk_last_change_timestamp_seconds",
            &[("trunk", "uk")],
        )
        .unwrap_or(0.0);
    ensure!(
        last_change > 1.7e9,
        "last change not recorded: {last_change}"
    );
    Ok(())
}

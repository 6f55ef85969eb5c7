//! Topology hiding: the callee must see nothing of the caller's Call-IDs, tags, branches or
//! address, and the caller nothing of the callee's tags, branches or address.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

/// Runs 3 calls with traces on both sides; returns the leaks found (see `topology_leaks`).
fn leaks(test: &str, uac: &str, uas: &str) -> Result<Vec<String>> {
    let out = out_dir(test)?;
    let server = Sipp::uas(uas).calls(3).trace_msg();
    let (mut node, mut server) = node_with_callee(&out, server, Transport::Udp, |_| {})?;
    let mut client = Sipp::uac(uac, node.sip_addr())
        .calls(3)
        .rate(10)
        .duration_ms(200)
        .trace_msg()
        .timeout_secs(60)
        .spawn(&out)?;
    client.wait(Duration::from_secs(90))?.assert_all_ok(3)?;
    server.wait(Duration::from_secs(30))?.assert_all_ok(3)?;
    let leaks = topology_leaks(&client.messages_log(), &server.messages_log())?;
    node.assert_healthy()?;
    Ok(leaks)
}

fn in_headers(leaks: &[String]) -> Vec<&String> {
    leaks.iter().filter(|l| l.ends_with("headers")).collect()
}

#[test]
fn caller_and_callee_signalling_is_hidden() -> Result<()> {
    let leaks = leaks("topology_basic", "uac_basic.xml", "uas_basic.xml")?;
    let h = in_headers(&leaks);
    ensure!(
        h.is_empty(),
        "identifiers leaked in SIP headers through the node: {h:#?}"
    );
    Ok(())
}

/// The callee sends the BYE here, so its own branches and From tags are checked too.
#[test]
fn callee_requests_are_hidden_from_the_caller() -> Result<()> {
    let leaks = leaks(
        "topology_callee_bye",
        "uac_callee_bye.xml",
        "uas_callee_bye.xml",
    )?;
    let h = in_headers(&leaks);
    ensure!(
        h.is_empty(),
        "identifiers leaked in SIP headers through the node: {h:#?}"
    );
    Ok(())
}

/// Media addresses in SDP (o=/c= lines) are hidden only once the node anchors media.
#[test]
fn caller_and_callee_media_addresses_are_hidden() -> Result<()> {
    let leaks = leaks("topology_sdp", "uac_basic.xml", "uas_basic.xml")?;
    ensure!(
        leaks.is_empty(),
        "topology leaks through the node: {leaks:#?}"
    );
    Ok(())
}

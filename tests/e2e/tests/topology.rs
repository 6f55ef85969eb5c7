//! Topology hiding: the callee must see nothing of the caller's Call-IDs, tags, branches or
//! address, and the caller nothing of the callee's tags, branches or address.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

fn hidden(test: &str, uac: &str, uas: &str) -> Result<()> {
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
    ensure!(
        leaks.is_empty(),
        "topology leaks through the node: {leaks:#?}"
    );
    node.assert_healthy()
}

#[test]
fn caller_and_callee_are_hidden_from_each_other() -> Result<()> {
    hidden("topology_basic", "uac_basic.xml", "uas_basic.xml")
}

/// The callee sends the BYE here, so its own branches and From tags are checked too.
#[test]
fn callee_requests_are_hidden_from_the_caller() -> Result<()> {
    hidden(
        "topology_callee_bye",
        "uac_callee_bye.xml",
        "uas_callee_bye.xml",
    )
}

//! Load through the node: 1000 basic calls at 50 calls/s must all succeed on both sides, and the
//! node's metrics must count them and return to no active call.

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

const CALLS: u64 = 1000;

fn load(test: &str, a_leg: Transport, b_leg: Transport) -> Result<()> {
    let out = out_dir(test)?;
    let uas = Sipp::uas("uas_basic.xml")
        .transport(b_leg)
        .calls(CALLS)
        .timeout_secs(240);
    let (mut node, mut server) = node_with_callee(&out, uas, b_leg, |_| {})?;
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .transport(a_leg)
        .calls(CALLS)
        .rate(50)
        .duration_ms(1000)
        .timeout_secs(180);
    run_pair(uac, &mut server, &out, CALLS, Duration::from_secs(240))?;
    assert_calls(&node, "200", CALLS as f64)?;
    node.assert_healthy()?;
    let status = node.stop()?;
    ensure!(status.success(), "node exited with {status} on SIGTERM");
    Ok(())
}

#[test]
fn calls_udp() -> Result<()> {
    load("calls_udp", Transport::Udp, Transport::Udp)
}

#[test]
fn calls_tcp() -> Result<()> {
    load("calls_tcp", Transport::Tcp, Transport::Tcp)
}

#[test]
fn calls_udp_a_leg_tcp_b_leg() -> Result<()> {
    load("calls_udp_to_tcp", Transport::Udp, Transport::Tcp)
}

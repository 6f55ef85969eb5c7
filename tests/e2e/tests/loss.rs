//! 5 % message loss on both SIPp sides: every call must still complete, through SIPp's own
//! retransmissions and the node's (RFC 3261 timers A, E, G and 2xx retransmission).

use anyhow::{ensure, Result};
use std::time::Duration;
use trunkline_e2e::*;

const CALLS: u64 = 200;

#[test]
fn calls_complete_with_5_percent_loss() -> Result<()> {
    let out = out_dir("loss")?;
    // SIPp's -lost may drop a message after reading it and then meet the peer's retransmission
    // as unexpected; with -abortunexp off that does not abort the call, and every message the
    // scenario requires must still arrive.
    let uas = Sipp::uas("uas_basic.xml")
        .calls(CALLS)
        .lost(5)
        .arg("-default_behaviors")
        .arg("all,-abortunexp")
        .timeout_secs(240);
    let (mut node, mut server) = node_with_callee(&out, uas, Transport::Udp, |_| {})?;
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(CALLS)
        .rate(20)
        .duration_ms(1000)
        .lost(5)
        .arg("-default_behaviors")
        .arg("all,-abortunexp")
        .timeout_secs(180);
    run_pair(uac, &mut server, &out, CALLS, Duration::from_secs(240))?;
    let m = assert_calls(&node, "200", CALLS as f64)?;
    let retrans = m.sum("trunkline_sip_retransmissions_total");
    ensure!(
        retrans > 0.0,
        "the node retransmitted nothing although SIPp dropped ~5 % of what it received"
    );
    node.assert_healthy()
}

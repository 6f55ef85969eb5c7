//! Owner routing: an in-dialog request that reaches a node of the cluster other than the
//! one that owns its call (a load balancer spreading SIP over the nodes) is forwarded to
//! the owner over the cluster service, handled there, and answered through the node the
//! request was sent to.

use anyhow::{bail, Result};
use std::net::Ipv4Addr;
use std::time::Duration;
use trunkline_e2e::cluster::{converge, start_clustered, start_etcd};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CALLS: u64 = 10;
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];

fn forwarded(node: &Node, direction: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get("trunkline_sip_forwarded_total", &[("direction", direction)]))
        .unwrap_or(0.0)
}

#[test]
fn an_in_dialog_request_sent_to_the_wrong_node_reaches_the_owner_and_is_answered() -> Result<()> {
    let out = out_dir("cluster_strays")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;
    let uas_builder = Sipp::uas("uas_info.xml")
        .calls(CALLS)
        .timeout_secs(60)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("stray{}x{run}", i + 1);
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, "")?;
        nodes.push((node, admin));
        ids.push(cfg.id);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for (_, admin) in &nodes {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let (owner, wrong) = match &nodes[..] {
        [a, b] => (&a.0, &b.0),
        _ => bail!("two nodes were started"),
    };
    let stray = wrong.sip_addr();
    // Calls go to the owner; each INFO goes to the other node.
    let mut uac = Sipp::uac("uac_stray_info.xml", owner.sip_addr())
        .calls(CALLS)
        .rate(10)
        .timeout_secs(60)
        .arg("-key")
        .arg("stray_host")
        .arg(&stray.ip().to_string())
        .arg("-key")
        .arg("stray_port")
        .arg(&stray.port().to_string())
        .spawn(&out)?;
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    // Every INFO went from the wrong node to the owner (retransmissions may add some).
    let (sent, got) = (forwarded(wrong, "out"), forwarded(owner, "in"));
    eprintln!("forwarded: {sent} sent by the wrong node, {got} received by the owner");
    if sent < CALLS as f64 || got < CALLS as f64 {
        bail!("{CALLS} INFOs went to the wrong node; it forwarded {sent}, the owner got {got}");
    }
    // The owner's 200s left from the node the caller sent the INFOs to.
    let through = wrong
        .metrics()
        .ok()
        .and_then(|m| m.get("trunkline_sip_sent_for_other_nodes_total", &[]))
        .unwrap_or(0.0);
    eprintln!("answers sent through the wrong node for the owner: {through}");
    if through < CALLS as f64 {
        bail!("the owner's answers to {CALLS} INFOs: {through} left through the node they were sent to");
    }
    Ok(())
}

//! Replication factor 2: every call of the first node is held by both other nodes. When
//! the first two nodes die together, the third adopts every one of the first node's calls
//! (for half of them the second node was first on the ring, and the third takes them
//! once the second has left it too): nothing is lost, and the calls end through it.

use anyhow::{bail, ensure, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, kill9, metric, start_clustered, start_etcd};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CALLS: u64 = 20;
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];

#[test]
fn with_two_replicas_a_call_survives_its_owner_and_one_holder_dying_together() -> Result<()> {
    let out = out_dir("cluster_factor2")?;
    make_pcap(&out, 1)?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;
    let b_mp = free_udp_block(UAS_IP, 4)?;
    let uas_builder = echo_callee("uas_adopted.xml", b_mp)
        .calls(CALLS)
        .timeout_secs(120)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("rf{}x{run}", i + 1);
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, "replication_factor = 2\n")?;
        nodes.push((node, admin));
        ids.push(cfg.id);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for (_, admin) in &nodes {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let (first, second, survivor) = match &nodes[..] {
        [a, b, c] => (&a.0, &b.0, &c.0),
        _ => bail!("three nodes were started"),
    };

    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut uac = rtp_caller("uac_adopted.xml", first.sip_addr(), a_mp)
        .calls(CALLS)
        .rate(20)
        .duration_ms(3_000)
        .timeout_secs(120)
        .arg("-s")
        .arg("15550123")
        .spawn(&out)?;
    let want = CALLS as f64;
    first.wait_metrics(Duration::from_secs(30), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want)
    })?;
    let both = wait_until(Duration::from_secs(5), || {
        metric(second, "trunkline_cluster_replicas_held") == want
            && metric(survivor, "trunkline_cluster_replicas_held") == want
    });
    ensure!(
        both,
        "with factor 2 both other nodes hold every call: {} and {} of {CALLS}",
        metric(second, "trunkline_cluster_replicas_held"),
        metric(survivor, "trunkline_cluster_replicas_held")
    );

    kill9(first);
    kill9(second);
    let killed = Instant::now();
    let adopted = wait_until(Duration::from_secs(TTL + 10), || {
        metric(survivor, "trunkline_cluster_calls_adopted_total") == want
    });
    ensure!(
        adopted,
        "{:?} after the kill the survivor adopted {} of {CALLS} (lost {})",
        killed.elapsed(),
        metric(survivor, "trunkline_cluster_calls_adopted_total"),
        metric(survivor, "trunkline_cluster_calls_lost_total")
    );
    eprintln!(
        "all {CALLS} calls adopted by the last node {:?} after its two peers were killed",
        killed.elapsed()
    );
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    let m = survivor.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
    })?;
    ensure!(
        m.value("trunkline_cluster_calls_lost_total", &[])? == 0.0,
        "the survivor counted calls lost"
    );
    Ok(())
}

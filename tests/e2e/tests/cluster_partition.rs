//! A node that was only cut off, not dead: frozen (SIGSTOP) past its lease, it answers
//! nothing, so its buddies adopt its calls. When it runs again it rejoins, is told which
//! calls were adopted, and lets them go without sending anything for them: the endpoints
//! see the adopter alone from the takeover on.

use anyhow::{bail, ensure, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, metric, start_clustered, start_etcd};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CALLS: u64 = 20;
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];
/// How long the callers hold after the adopter's re-INVITE: the frozen node is resumed
/// meanwhile, so anything it sent for the calls would reach the SIPp ends, which fail a
/// call on any message their scenario does not expect.
const HOLD_AFTER_ADOPTION_MS: u64 = 10_000;

fn sig(node: &Node, name: &str) -> Result<()> {
    let Some(pid) = node.pid() else {
        bail!("the node has no process");
    };
    let status = std::process::Command::new("kill")
        .args([format!("-{name}"), pid.to_string()])
        .status()?;
    ensure!(status.success(), "kill -{name} {pid}: {status}");
    Ok(())
}

#[test]
fn a_frozen_node_loses_its_calls_to_its_buddy_and_lets_them_go_when_it_runs_again() -> Result<()> {
    let out = out_dir("cluster_partition")?;
    make_pcap(&out, 1)?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;
    let b_mp = free_udp_block(UAS_IP, 4)?;
    let uas_builder = echo_callee("uas_adopted.xml", b_mp)
        .calls(CALLS)
        .timeout_secs(90)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("part{}x{run}", i + 1);
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, "")?;
        nodes.push((node, admin));
        ids.push(cfg.id);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for (_, admin) in &nodes {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let (frozen, buddy) = match &nodes[..] {
        [a, b] => (&a.0, &b.0),
        _ => bail!("two nodes were started"),
    };
    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut uac = rtp_caller("uac_adopted.xml", frozen.sip_addr(), a_mp)
        .calls(CALLS)
        .rate(20)
        .duration_ms(HOLD_AFTER_ADOPTION_MS)
        .timeout_secs(90)
        .arg("-s")
        .arg("15550123")
        .spawn(&out)?;
    let want = CALLS as f64;
    frozen.wait_metrics(Duration::from_secs(30), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want)
    })?;
    ensure!(
        wait_until(Duration::from_secs(5), || metric(
            buddy,
            "trunkline_cluster_replicas_held"
        ) == want),
        "the buddy holds {} of {CALLS} calls",
        metric(buddy, "trunkline_cluster_replicas_held")
    );

    // Frozen: no keep-alive, no answer to a ping, no media. Its buddy adopts every call.
    sig(frozen, "STOP")?;
    let stopped = Instant::now();
    let adopted = wait_until(Duration::from_secs(TTL + 8), || {
        metric(buddy, "trunkline_cluster_calls_adopted_total") == want
    });
    if !adopted {
        let _ = sig(frozen, "CONT");
        bail!(
            "the buddy adopted {} of {CALLS} calls of a frozen node",
            metric(buddy, "trunkline_cluster_calls_adopted_total")
        );
    }
    eprintln!(
        "all {CALLS} calls adopted {:?} after SIGSTOP",
        stopped.elapsed()
    );

    // Running again: it rejoins, hears its calls were adopted, and lets them go.
    sig(frozen, "CONT")?;
    let resumed = Instant::now();
    let released = wait_until(Duration::from_secs(10), || {
        metric(frozen, "trunkline_calls_active") == 0.0
    });
    ensure!(
        released,
        "the resumed node still has {} active calls",
        metric(frozen, "trunkline_calls_active")
    );
    eprintln!(
        "the resumed node let its {CALLS} calls go {:?} after SIGCONT",
        resumed.elapsed()
    );
    // The callers hang up to the adopter; neither end heard anything from the resumed node
    // (an unexpected request would fail its call).
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    let m = buddy.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
    })?;
    ensure!(
        m.value("trunkline_cluster_calls_lost_total", &[])? == 0.0,
        "the buddy lost calls"
    );
    // The resumed node sent no BYE and hung nothing up: its calls were let go, not ended.
    let fm = frozen.metrics()?;
    let byes = fm
        .get(
            "trunkline_sip_requests_total",
            &[("direction", "out"), ("method", "BYE")],
        )
        .unwrap_or(0.0);
    ensure!(byes == 0.0, "the resumed node sent {byes} BYEs");
    Ok(())
}

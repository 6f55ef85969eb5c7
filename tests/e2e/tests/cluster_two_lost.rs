//! Two nodes lost at once. With replication factor 1 each call of the first node is held
//! by one buddy, the second or the third node as the ring says; when the first two die
//! together, the third adopts the calls it held and counts the ones the second held as
//! lost (it learns how many from the first node's census), and its own calls, whose
//! replicas went with the dead, go on untouched.

use anyhow::{bail, ensure, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, kill9, metric, start_clustered, start_etcd};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const TTL: u64 = 4;
/// Calls placed through the first node (the one that dies with the second).
const DOOMED: u64 = 40;
/// Calls placed through the survivor.
const OWN: u64 = 10;
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];

#[test]
fn calls_whose_owner_and_buddy_die_together_are_counted_lost_and_no_other_call_is_touched(
) -> Result<()> {
    let out = out_dir("cluster_two_lost")?;
    make_pcap(&out, 1)?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;

    // One trunk answers the calls that get adopted, the other plain calls.
    let b_mp = free_udp_block(UAS_IP, 4)?;
    let doomed_uas = echo_callee("uas_adopted.xml", b_mp)
        .name("uas_doomed")
        .calls(DOOMED)
        .timeout_secs(120)
        .resolve_port()?;
    let mut uas_doomed = doomed_uas.clone().spawn(&out)?;
    let own_uas = Sipp::uas("uas_basic.xml")
        .name("uas_own")
        .calls(OWN)
        .timeout_secs(120)
        .resolve_port()?;
    let mut uas_own = own_uas.clone().spawn(&out)?;

    // Trunks and routes are the cluster's (the first node's file seeds etcd): the doomed
    // calls (to 15550123) take the default trunk, the survivor's (to "service") the other.
    let routes = format!(
        "\n[[trunks]]\nname = \"own\"\naddress = \"{}\"\ntransport = \"udp\"\n\n\
         [[routes]]\nprefix = \"service\"\ntrunk = \"own\"\n",
        own_uas.addr()?
    );
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, doomed_uas.addr()?, Transport::Udp)?;
        cfg.id = format!("two{}x{run}", i + 1);
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, &routes)?;
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

    // The first node's calls, each held by the second or the survivor.
    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut uac_doomed = rtp_caller("uac_adopted.xml", first.sip_addr(), a_mp)
        .name("uac_doomed")
        .calls(DOOMED)
        .rate(20)
        .duration_ms(3_000)
        .timeout_secs(120)
        .arg("-s")
        .arg("15550123")
        .spawn(&out)?;
    let want = DOOMED as f64;
    first.wait_metrics(Duration::from_secs(30), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want)
    })?;
    let spread = wait_until(Duration::from_secs(5), || {
        metric(second, "trunkline_cluster_replicas_held")
            + metric(survivor, "trunkline_cluster_replicas_held")
            == want
    });
    let on_second = metric(second, "trunkline_cluster_replicas_held");
    let on_survivor = metric(survivor, "trunkline_cluster_replicas_held");
    ensure!(
        spread,
        "the first node's {DOOMED} calls are held {on_second} by the second node and \
         {on_survivor} by the survivor"
    );
    ensure!(
        on_second > 0.0 && on_survivor > 0.0,
        "the ring put every call on one buddy ({on_second} / {on_survivor})"
    );
    eprintln!("the first node's calls: {on_second} held by the second node, {on_survivor} by the survivor");

    // The survivor's own calls, replicated to the two that will die.
    let mut uac_own = Sipp::uac("uac_basic.xml", survivor.sip_addr())
        .name("uac_own")
        .calls(OWN)
        .rate(10)
        .duration_ms(15_000)
        .timeout_secs(120)
        .spawn(&out)?;
    survivor.wait_metrics(Duration::from_secs(15), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(OWN as f64)
    })?;
    // The census goes out at most once a second: let the latest one reach the survivor.
    std::thread::sleep(Duration::from_millis(2_500));

    kill9(first);
    kill9(second);
    let killed = Instant::now();
    let settled = wait_until(Duration::from_secs(TTL + 8), || {
        metric(survivor, "trunkline_cluster_calls_adopted_total")
            + metric(survivor, "trunkline_cluster_calls_lost_total")
            >= want
    });
    let adopted = metric(survivor, "trunkline_cluster_calls_adopted_total");
    let lost = metric(survivor, "trunkline_cluster_calls_lost_total");
    ensure!(
        settled,
        "{:?} after the kill the survivor has adopted {adopted} and counted {lost} lost of {DOOMED}",
        killed.elapsed()
    );
    eprintln!(
        "{:?} after the kill: {adopted} adopted, {lost} counted lost",
        killed.elapsed()
    );
    ensure!(
        adopted == on_survivor && lost == on_second,
        "adopted {adopted} (held here: {on_survivor}), lost {lost} (held by the second node: {on_second})"
    );
    let log = survivor.log_text();
    ensure!(
        log.contains("calls lost: their node and every node holding them are gone"),
        "the survivor did not log the lost calls"
    );

    // The survivor's own calls end normally, through it, at both ends.
    uac_own.wait(Duration::from_secs(60))?.assert_all_ok(OWN)?;
    uas_own.wait(Duration::from_secs(30))?.assert_all_ok(OWN)?;
    // The adopted calls end with the caller's BYE through the survivor; the lost ones
    // wait for a re-INVITE that never comes, so the doomed SIPp ends are only read.
    let stats = out.join("uac_doomed_stats.csv");
    let ended = wait_until(Duration::from_secs(30), || {
        read_stats(&stats).0 == Some(on_survivor as u64)
    });
    ensure!(
        ended,
        "the caller completed {:?} calls, {on_survivor} were adopted",
        read_stats(&stats).0
    );
    uac_doomed.kill();
    uas_doomed.kill();
    survivor.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
    })?;
    Ok(())
}

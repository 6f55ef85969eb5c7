//! An etcd outage under load: three clustered nodes (127.0.0.11, .12, .13), each with long
//! calls up and a steady trickle of new ones; etcd is stopped for 30 s (its process, by PID;
//! its data dir kept), then started again on the same data and ports. Nothing may happen to
//! a call: the membership is only believed while the watch is connected, and after the
//! restart a node whose old lease expires before it registers again still answers on its
//! cluster address, so nobody adopts anything. During the outage every node keeps its last
//! view (three members) and takes new calls; after it, every node is connected and
//! registered again and lists all three, the long calls are still up on their own node with
//! every one of them held by a buddy, and they end with the caller's BYE through that node.

use anyhow::{bail, ensure, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, metric, nodes, start_clustered, start_etcd, view};
use trunkline_e2e::*;

/// The nodes' lease; short, so that leases certainly expire during the outage and the
/// restart has to deal with registrations that are gone.
const TTL: u64 = 4;
/// How long etcd stays down: the requirement's 30 s, far past the lease.
const OUTAGE: Duration = Duration::from_secs(30);
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];
/// Long calls per node, all up before etcd goes.
const LONG: u64 = 5;
/// How long the long calls last (SIPp's -d): from before the outage until after the
/// cluster has converged again (set up ~2 s + outage 30 s + etcd start ~1 s + at most
/// CONVERGE_LIMIT) and the trickle has ended, so their BYEs are the last thing to happen.
const LONG_HOLD_MS: u64 = 54_000;
/// Trickle calls per node, one a second, each held TRICKLE_HOLD_MS: they start 1.5 s
/// before etcd stops and go on until about 6 s after it is back.
const TRICKLE: u64 = 40;
const TRICKLE_HOLD_MS: u64 = 2_000;
/// Calls per node started once every node has noticed the outage, and finished within it.
const DURING: u64 = 5;
/// From etcd answering again to every node being connected, registered and listing all
/// three: the registration and watch retry at most every 5 s (their back-off's ceiling),
/// plus a connection attempt and a few polling rounds.
const CONVERGE_LIMIT: Duration = Duration::from_secs(15);
/// SIPp's global -timeout: longer than the whole test, so only a hung call trips it.
const SIPP_TIMEOUT_SECS: u64 = 100;

/// An unlabelled metric of `node`; -1 when it cannot be read, so that no comparison holds.
/// How many times `needle` occurs in `node`'s log past byte `from`.
fn log_count(node: &Node, from: usize, needle: &str) -> usize {
    node.log_text()
        .get(from..)
        .map_or(0, |t| t.matches(needle).count())
}

/// Whether the node at `admin` is back in the cluster: its watch connected, its key
/// registered under a live lease, all three nodes listed as active (the API's view), and its
/// metrics agreeing. `registered` matters: until every node has put its key under a new
/// lease, an old lease that etcd restored on restart can still expire and take a key away.
fn back(node: &Node, admin: &str, all: &[(String, String)]) -> Result<bool> {
    let v = nodes(admin)?;
    let mut got = view(&v);
    got.sort();
    Ok(v["etcdConnected"] == true
        && v["registered"] == true
        && got == all
        && metric(node, "trunkline_cluster_etcd_connected") == 1.0
        && metric(node, "trunkline_cluster_members") == 3.0)
}

#[test]
fn an_etcd_outage_under_load_touches_no_call_and_adopts_nothing() -> Result<()> {
    let test_start = Instant::now();
    let out = out_dir("cluster_etcd_outage")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let data = out.join("etcd-data");
    let mut etcd = start_etcd(&out, &data, client, peer, 1)?;

    // One callee for the three nodes: the trunks are the cluster's shared document, which
    // the first node seeds with its file, so every node sends its calls to the same trunk.
    // Each node's share is counted on the node (its calls_total).
    let per_node = LONG + TRICKLE + DURING;
    let uas_builder = Sipp::uas("uas_basic.xml")
        .calls(per_node * 3)
        .timeout_secs(SIPP_TIMEOUT_SECS)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let mut running = Vec::new();
    let mut admins = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("eo{}x{run}", i + 1);
        // The SIPp calls carry no RTP: the relay's default 60 s no-media timeout must not
        // be what ends a long call.
        cfg.media_extra.push("timeout_secs = 300".into());
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, "")?;
        running.push(node);
        admins.push(admin);
        ids.push(cfg.id);
    }
    let want: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    let mut all: Vec<(String, String)> = ids
        .iter()
        .map(|id| (id.clone(), "NODE_STATE_ACTIVE".to_string()))
        .collect();
    all.sort();
    for admin in &admins {
        converge(admin, &want, Duration::from_secs(10))?;
    }

    // The long calls, LONG per node, settled and each held by a buddy before anything else.
    let mut long = Vec::new();
    for (i, node) in running.iter().enumerate() {
        long.push(
            Sipp::uac("uac_basic.xml", node.sip_addr())
                .name(&format!("long{}", i + 1))
                .calls(LONG)
                .rate(10)
                .duration_ms(LONG_HOLD_MS)
                .timeout_secs(SIPP_TIMEOUT_SECS)
                .spawn(&out)?,
        );
    }
    let long_started = Instant::now();
    let total_long = (LONG * 3) as f64;
    let held = || -> f64 {
        running
            .iter()
            .map(|n| metric(n, "trunkline_cluster_replicas_held"))
            .sum()
    };
    let settled = wait_until(Duration::from_secs(10), || {
        running
            .iter()
            .all(|n| metric(n, "trunkline_cluster_replicated_calls") == LONG as f64)
            && held() == total_long
    });
    ensure!(
        settled,
        "the long calls never all settled and replicated: replicated {:?}, held in all {}",
        running
            .iter()
            .map(|n| metric(n, "trunkline_cluster_replicated_calls"))
            .collect::<Vec<_>>(),
        held()
    );
    let held_before: Vec<f64> = running
        .iter()
        .map(|n| metric(n, "trunkline_cluster_replicas_held"))
        .collect();
    eprintln!("{LONG} long calls up on each node; replicas held per node: {held_before:?}");

    // The trickle: new calls on every node, before, during and after the outage.
    let mut trickle = Vec::new();
    for (i, node) in running.iter().enumerate() {
        trickle.push(
            Sipp::uac("uac_basic.xml", node.sip_addr())
                .name(&format!("trickle{}", i + 1))
                .calls(TRICKLE)
                .rate(1)
                .duration_ms(TRICKLE_HOLD_MS)
                .timeout_secs(SIPP_TIMEOUT_SECS)
                .spawn(&out)?,
        );
    }
    // A few trickle calls in every state (ringing, settled, ending) when etcd goes.
    std::thread::sleep(Duration::from_millis(1500));

    // etcd stops: SIGTERM to the process this test started, by its PID (then SIGKILL after
    // 5 s if it lingers); the data dir stays.
    etcd.stop();
    let stopped = Instant::now();
    let noticed = wait_until(Duration::from_secs(10), || {
        running
            .iter()
            .all(|n| metric(n, "trunkline_cluster_etcd_connected") == 0.0)
    });
    ensure!(
        noticed,
        "not every node noticed etcd had gone within 10 s: etcd_connected {:?}",
        running
            .iter()
            .map(|n| metric(n, "trunkline_cluster_etcd_connected"))
            .collect::<Vec<_>>()
    );
    eprintln!(
        "every node saw etcd go within {:?} of its stop",
        stopped.elapsed()
    );

    // New calls through every node while etcd is down.
    let mut during = Vec::new();
    for (i, node) in running.iter().enumerate() {
        during.push(
            Sipp::uac("uac_basic.xml", node.sip_addr())
                .name(&format!("during{}", i + 1))
                .calls(DURING)
                .rate(5)
                .duration_ms(1_000)
                .timeout_secs(SIPP_TIMEOUT_SECS)
                .spawn(&out)?,
        );
    }
    // Until the outage has lasted OUTAGE, every node keeps the view it had (three members)
    // and stays disconnected: an outage alone changes nothing.
    let mut samples = 0u32;
    let mut api_checked = false;
    while stopped.elapsed() < OUTAGE {
        for (i, node) in running.iter().enumerate() {
            let (members, connected) = (
                metric(node, "trunkline_cluster_members"),
                metric(node, "trunkline_cluster_etcd_connected"),
            );
            ensure!(
                members == 3.0 && connected == 0.0,
                "{} during the outage ({:?} in): members {members}, etcd_connected {connected}",
                ids[i],
                stopped.elapsed()
            );
        }
        samples += 1;
        // The admin API says the same, once the calls started during the outage are done
        // (trunkctl costs a process per call; once is enough).
        if !api_checked && during.iter_mut().all(|u| !u.is_running()) {
            for admin in &admins {
                let v = nodes(admin)?;
                let mut got = view(&v);
                got.sort();
                ensure!(
                    v["etcdConnected"] == false && got == all,
                    "{admin} during the outage: {v}"
                );
            }
            api_checked = true;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // The calls made during the outage ended before it did, every one a success.
    for u in &mut during {
        ensure!(
            !u.is_running(),
            "sipp {} still running after {OUTAGE:?} of outage",
            u.name
        );
        u.wait(Duration::from_secs(1))?.assert_all_ok(DURING)?;
    }
    ensure!(
        api_checked,
        "the admin API was never read during the outage"
    );
    eprintln!(
        "{DURING} new calls through each node during the outage, all answered and ended; \
         every node kept three members over {samples} samples"
    );

    // etcd is back, on the same data dir and ports.
    let logs_at: Vec<usize> = running.iter().map(|n| n.log_text().len()).collect();
    let launched = Instant::now();
    let _etcd2 = start_etcd(&out, &data, client, peer, 2)?;
    let up = Instant::now();
    eprintln!(
        "etcd down for {:?} (it answered {:?} after its start)",
        up - stopped,
        up - launched
    );

    // Convergence: every node connected, registered and listing all three again.
    let mut converged_at = Vec::new();
    for (i, admin) in admins.iter().enumerate() {
        let left = CONVERGE_LIMIT.saturating_sub(up.elapsed());
        converge(admin, &want, left)?;
        let mut last = false;
        while up.elapsed() < CONVERGE_LIMIT {
            last = back(&running[i], admin, &all)?;
            if last {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !last {
            bail!(
                "{} not back in the cluster {CONVERGE_LIMIT:?} after etcd: {}; metrics: \
                 etcd_connected {}, members {}, registered {};\nlog:\n{}",
                ids[i],
                nodes(admin)?,
                metric(&running[i], "trunkline_cluster_etcd_connected"),
                metric(&running[i], "trunkline_cluster_members"),
                metric(&running[i], "trunkline_cluster_registered"),
                tail(&running[i].log, 30)
            );
        }
        converged_at.push(up.elapsed());
    }
    let took = up.elapsed();
    eprintln!(
        "membership converged {took:?} after etcd came back (per node, when seen: {converged_at:?})"
    );

    // Stable: etcd restores its leases with their TTL plus its election timeout (1 s), so
    // by TTL + 3 s after its return every old lease is gone and no key may have gone with it.
    let settle = Duration::from_secs(TTL + 3);
    if let Some(rest) = settle.checked_sub(up.elapsed()) {
        std::thread::sleep(rest);
    }
    for (i, admin) in admins.iter().enumerate() {
        ensure!(
            back(&running[i], admin, &all)?,
            "{} left the cluster again after converging: {}",
            ids[i],
            nodes(admin)?
        );
    }
    for (i, node) in running.iter().enumerate() {
        eprintln!(
            "{} after etcd's return: saw a node leave {} time(s), kept a live node's calls {} \
             time(s)",
            ids[i],
            log_count(node, logs_at[i], "cluster: node left"),
            log_count(node, logs_at[i], "still answers; its calls stay with it")
        );
    }

    // The trickle ran through it all.
    for u in &mut trickle {
        u.wait(Duration::from_secs(30))?.assert_all_ok(TRICKLE)?;
    }
    // With the trickle over, only the long calls are up: each still on its own node (none
    // ended, none moved) and each held by a buddy again, before their BYEs are due.
    let byes_due = long_started + Duration::from_millis(LONG_HOLD_MS);
    let quiet = wait_until(byes_due.saturating_duration_since(Instant::now()), || {
        running.iter().all(|n| {
            metric(n, "trunkline_calls_active") == LONG as f64
                && metric(n, "trunkline_cluster_replicated_calls") == LONG as f64
        }) && held() == total_long
    });
    ensure!(
        quiet,
        "before the long calls' BYEs: calls_active {:?}, replicated {:?}, held in all {} \
         (want {LONG} per node, {total_long} held)",
        running
            .iter()
            .map(|n| metric(n, "trunkline_calls_active"))
            .collect::<Vec<_>>(),
        running
            .iter()
            .map(|n| metric(n, "trunkline_cluster_replicated_calls"))
            .collect::<Vec<_>>(),
        held()
    );
    eprintln!(
        "after the outage the {total_long} long calls are still up on their nodes, held per \
         node: {:?}; their BYEs are due in {:?}",
        running
            .iter()
            .map(|n| metric(n, "trunkline_cluster_replicas_held"))
            .collect::<Vec<_>>(),
        byes_due.saturating_duration_since(Instant::now())
    );

    // The long calls end with the caller's BYE, through the node that set them up.
    for u in &mut long {
        u.wait(Duration::from_secs(30))?.assert_all_ok(LONG)?;
    }
    uas.wait(Duration::from_secs(15))?
        .assert_all_ok(per_node * 3)?;

    // Nothing was adopted, lost or declared dead anywhere, and each node ended exactly the
    // calls it was sent, all answered.
    for (i, node) in running.iter().enumerate() {
        let m = node.wait_metrics(Duration::from_secs(10), |m| {
            m.get("trunkline_calls_active", &[]) == Some(0.0)
                && m.get("trunkline_cluster_replicas_held", &[]) == Some(0.0)
                && m.get("trunkline_cluster_replicated_calls", &[]) == Some(0.0)
        })?;
        let adopted = m.value("trunkline_cluster_calls_adopted_total", &[])?;
        let lost = m.value("trunkline_cluster_calls_lost_total", &[])?;
        let dead = m.value("trunkline_cluster_owners_dead_total", &[])?;
        let answered = m.value("trunkline_calls_total", &[("status", "200")])?;
        let ended = m.sum("trunkline_calls_total");
        eprintln!(
            "{}: adopted {adopted}, lost {lost}, owners dead {dead}, calls ended {ended} \
             ({answered} answered)",
            ids[i]
        );
        ensure!(
            adopted == 0.0 && lost == 0.0 && dead == 0.0,
            "{}: an etcd restart made a live node look dead: adopted {adopted}, lost {lost}, \
             owners dead {dead};\nlog:\n{}",
            ids[i],
            tail(&node.log, 40)
        );
        ensure!(
            answered == per_node as f64 && ended == per_node as f64,
            "{} ended {ended} calls ({answered} answered); it was sent {per_node}",
            ids[i]
        );
        ensure!(
            m.value("trunkline_calls_active", &[])? == 0.0
                && m.value("trunkline_cluster_replicas_held", &[])? == 0.0
                && m.value("trunkline_cluster_replicated_calls", &[])? == 0.0,
            "{} still has calls or replicas after every call ended",
            ids[i]
        );
        ensure!(
            m.value("trunkline_cluster_etcd_connected", &[])? == 1.0
                && m.value("trunkline_cluster_members", &[])? == 3.0,
            "{} lost the cluster again at the end",
            ids[i]
        );
    }
    for mut node in running {
        node.assert_healthy()?;
    }
    eprintln!("test took {:?}", test_start.elapsed());
    Ok(())
}

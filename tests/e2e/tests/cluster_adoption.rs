//! Call adoption: three clustered nodes, each on a loopback address of its own (127.0.0.11,
//! .12, .13) so that a move is visible to the endpoints. A hundred SIPp calls settle on the
//! first node and are replicated to its buddies; the node is killed with SIGKILL. Once its
//! lease has expired, the buddy holding each call adopts it: the call is listed there under
//! its old id with its numbers and answer time, both SIPp ends get a re-INVITE whose offer
//! (the adopter's relay) and Contact (the adopter) are not the dead node's, the caller's RTP,
//! started only then, flows through the adopter's relay both ways (the callee echoes it),
//! and the calls end with BYEs sent to the adopter, every one of them a success for SIPp.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, kill9, metric, nodes, start_clustered, start_etcd, view};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

/// The nodes' lease: how long after the kill the survivors learn of it.
const TTL: u64 = 4;
/// The issue asks for a hundred calls.
const CALLS: u64 = 100;
const CALLEE: &str = "15550123";
/// The node that dies, and the two that survive it. uac_adopted.xml and uas_adopted.xml
/// name 127.0.0.11: the re-INVITE's Contact and offer must be elsewhere.
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];
/// How long each call lasts after its adoption (SIPp's -d): long enough to read every call's
/// media counters on its adopter while it is still up.
const HOLD_AFTER_ADOPTION_MS: u64 = 15_000;
/// Seconds of RTP the caller plays after the re-INVITE.
const RTP_SECS: u64 = 2;

/// What the first node showed of a call, for comparison with what its adopter shows.
#[derive(Debug, PartialEq)]
struct Shown {
    caller_number: String,
    callee_number: String,
    answered_at: String,
    caller_sip_call_id: String,
    callee_sip_call_id: String,
}

impl Shown {
    fn of(c: &Value) -> Shown {
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Shown {
            caller_number: s(&c["callerNumber"]),
            callee_number: s(&c["calleeNumber"]),
            answered_at: s(&c["answeredAt"]),
            caller_sip_call_id: s(&c["caller"]["sipCallId"]),
            callee_sip_call_id: s(&c["callee"]["sipCallId"]),
        }
    }
}

/// Every live call of node `id` (the node at `admin`), all pages: `--node`, since without it
/// a clustered node lists the calls of every node.
fn live_calls(admin: &str, id: &str) -> Result<Vec<Value>> {
    let v = trunkctl_json(admin, &["calls", "list", "--all", "--node", id])?;
    Ok(v["calls"].as_array().cloned().unwrap_or_default())
}

/// Every live call of the cluster, as the node at `admin` lists it (no `--node`).
fn cluster_calls(admin: &str) -> Result<Vec<Value>> {
    let v = trunkctl_json(admin, &["calls", "list", "--all"])?;
    Ok(v["calls"].as_array().cloned().unwrap_or_default())
}

/// An unlabelled metric of `node`; -1 when it cannot be read, so that no comparison holds.
fn count(m: &Value) -> u64 {
    // uint64 is a string in protobuf's JSON mapping.
    m["rtpPackets"].as_str().unwrap_or("0").parse().unwrap_or(0)
}

/// Whether `call` (a GetCall answer on the node at `adopter`) shows media anchored on that
/// node's relay and RTP received from both SIPp ends, from the addresses they signalled.
fn media_flows(call: &Value, adopter: Ipv4Addr, caller_media: &str, callee_media: &str) -> bool {
    let relay = format!("{adopter}:");
    let a = &call["caller"]["media"][0];
    let b = &call["callee"]["media"][0];
    call["mediaAnchored"] == true
        && a["relayAddress"]
            .as_str()
            .is_some_and(|r| r.starts_with(&relay))
        && b["relayAddress"]
            .as_str()
            .is_some_and(|r| r.starts_with(&relay))
        && a["latchedAddress"] == caller_media
        && b["latchedAddress"] == callee_media
        && count(a) > 0
        && count(b) > 0
}

#[test]
fn a_dead_nodes_calls_are_adopted_and_end_cleanly() -> Result<()> {
    let out = out_dir("cluster_adoption")?;
    make_pcap(&out, RTP_SECS)?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;

    // The trunk: one SIPp for all three nodes, echoing the RTP it gets.
    let b_mp = free_udp_block(UAS_IP, 4)?;
    let uas_builder = echo_callee("uas_adopted.xml", b_mp)
        .calls(CALLS)
        .timeout_secs(120)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;

    let mut started = Vec::new();
    let mut admins = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("adopt{}x{run}", i + 1);
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, "")?;
        started.push(node);
        admins.push(admin);
        ids.push(cfg.id);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for admin in &admins {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let mut started = started.into_iter();
    let (mut first, survivors) = match (started.next(), started.next(), started.next()) {
        (Some(a), Some(b), Some(c)) => (a, [b, c]),
        _ => bail!("three nodes were started"),
    };
    let survivor_admins = [admins[1].clone(), admins[2].clone()];
    let survivor_ips = [NODE_IPS[1], NODE_IPS[2]];

    // The calls, all to the first node. The caller waits for the adopter's re-INVITE, then
    // plays RTP and holds for HOLD_AFTER_ADOPTION_MS.
    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut uac = rtp_caller("uac_adopted.xml", first.sip_addr(), a_mp)
        .calls(CALLS)
        .rate(50)
        .duration_ms(HOLD_AFTER_ADOPTION_MS)
        .timeout_secs(120)
        .arg("-s")
        .arg(CALLEE)
        .spawn(&out)?;
    let caller_media = SocketAddr::new(IpAddr::V4(UAC_IP), a_mp).to_string();
    let callee_media = SocketAddr::new(IpAddr::V4(UAS_IP), b_mp).to_string();

    // Every call settled and replicated: only then is each held by a survivor.
    let want = CALLS as f64;
    let m = first.wait_metrics(Duration::from_secs(30), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want)
    })?;
    ensure!(
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want),
        "the first node replicated {:?} of its {CALLS} calls; uac still running: {}",
        m.get("trunkline_cluster_replicated_calls", &[]),
        uac.is_running()
    );
    let held_by = |i: usize| metric(&survivors[i], "trunkline_cluster_replicas_held");
    let spread = wait_until(Duration::from_secs(5), || held_by(0) + held_by(1) == want);
    ensure!(
        spread,
        "the survivors hold {} and {} of the first node's {CALLS} calls",
        held_by(0),
        held_by(1)
    );
    let held = [held_by(0), held_by(1)];
    let listed = live_calls(&admins[0], &ids[0])?;
    ensure!(
        listed.len() as u64 == CALLS,
        "the first node lists {} calls, not {CALLS}",
        listed.len()
    );
    let mut shown: HashMap<String, Shown> = HashMap::new();
    for c in &listed {
        ensure!(
            c["state"] == "CALL_STATE_ESTABLISHED",
            "a call that is not established before the kill: {c}"
        );
        let id = c["id"].as_str().context("a call without an id")?;
        let s = Shown::of(c);
        // Non-empty, so that the comparison with the adopter's view means something.
        ensure!(
            s.caller_number.starts_with("+4930555")
                && s.callee_number == CALLEE
                && !s.answered_at.is_empty()
                && !s.caller_sip_call_id.is_empty()
                && !s.callee_sip_call_id.is_empty(),
            "the first node's view of {id}: {c}"
        );
        shown.insert(id.to_string(), s);
    }
    for (k, admin) in survivor_admins.iter().enumerate() {
        let own = live_calls(admin, &ids[k + 1])?;
        ensure!(own.is_empty(), "{admin} carries calls of its own: {own:?}");
        // Asked without --node, any node lists the cluster's calls: the first node's here.
        let all: HashSet<String> = cluster_calls(admin)?
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_string))
            .collect();
        ensure!(
            shown.keys().all(|id| all.contains(id)) && all.len() == shown.len(),
            "{admin} lists {} calls of the cluster, not the first node's {CALLS}",
            all.len()
        );
    }
    eprintln!(
        "{CALLS} calls up on {}, held by {} ({}) and {} ({})",
        ids[0], ids[1], held[0], ids[2], held[1]
    );

    // The first node dies without a word.
    kill9(&first);
    let killed = Instant::now();
    ensure!(
        wait_until(Duration::from_secs(2), || !first.is_alive()),
        "the first node outlived SIGKILL"
    );
    drop(first);

    // Poll both survivors until every call of the dead node is listed on one of them. The
    // survivors learn of the death when its lease expires (at most TTL after the kill), then
    // check that its cluster address does not answer and adopt: TTL + 2 s is the bound. The
    // polling sees the end up to one round late (a round is two or three `trunkctl` runs and
    // a 100 ms pause; the mean round is printed below), hence 500 ms of slack. Polling goes
    // on well past the bound so that a failure says whether adoption was slow or never
    // happened.
    let bound = Duration::from_secs(TTL + 2) + Duration::from_millis(500);
    let give_up = Duration::from_secs(TTL + 20);
    let mut adopter_of: HashMap<String, usize> = HashMap::new();
    let mut adopted: Vec<Value> = Vec::new();
    // When the first survivor stopped listing the dead node: tells the lease's share of the
    // takeover time from the adoption's.
    let mut left: Option<Duration> = None;
    let mut rounds = 0u32;
    let took = loop {
        rounds += 1;
        if left.is_none()
            && !view(&nodes(&survivor_admins[0])?)
                .iter()
                .any(|(id, _)| *id == ids[0])
        {
            left = Some(killed.elapsed());
        }
        adopter_of.clear();
        adopted.clear();
        for (k, admin) in survivor_admins.iter().enumerate() {
            for c in live_calls(admin, &ids[k + 1])? {
                let id = c["id"].as_str().unwrap_or_default().to_string();
                if !shown.contains_key(&id) {
                    continue;
                }
                if let Some(other) = adopter_of.insert(id.clone(), k) {
                    bail!(
                        "{id} is listed on both {} and {}",
                        ids[other + 1],
                        ids[k + 1]
                    );
                }
                adopted.push(c);
            }
        }
        if adopter_of.len() == shown.len() {
            break killed.elapsed();
        }
        if killed.elapsed() > give_up {
            let counters = |k: usize| {
                format!(
                    "{}: adopted {}, lost {}",
                    ids[k + 1],
                    metric(&survivors[k], "trunkline_cluster_calls_adopted_total"),
                    metric(&survivors[k], "trunkline_cluster_calls_lost_total")
                )
            };
            bail!(
                "{} of {CALLS} calls listed as adopted {give_up:?} after the kill (the dead node \
                 left the membership after {left:?}; {}; {});\n{} log:\n{}\n{} log:\n{}",
                adopter_of.len(),
                counters(0),
                counters(1),
                ids[1],
                tail(&survivors[0].log, 30),
                ids[2],
                tail(&survivors[1].log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let per_node = [0, 1].map(|k| adopter_of.values().filter(|v| **v == k).count());
    eprintln!(
        "takeover: all {CALLS} calls adopted {took:?} after the kill (lease {TTL} s; the dead \
         node left the membership after {left:?}; mean polling round {:?}); {} adopted {}, \
         {} adopted {}",
        took / rounds,
        ids[1],
        per_node[0],
        ids[2],
        per_node[1]
    );
    ensure!(
        took <= bound,
        "the takeover took {took:?}, more than the lease ({TTL} s) + 2 s (+ 500 ms polling)"
    );
    for c in &adopted {
        let id = c["id"].as_str().unwrap_or_default();
        ensure!(
            shown.get(id) == Some(&Shown::of(c)),
            "{id} on its adopter: {:?}; on the dead node it was {:?}",
            Shown::of(c),
            shown.get(id)
        );
        ensure!(
            matches!(
                c["state"].as_str(),
                Some("CALL_STATE_ESTABLISHED" | "CALL_STATE_HELD")
            ),
            "{id} adopted in state {}",
            c["state"]
        );
    }
    for k in 0..2 {
        ensure!(
            per_node[k] as f64 == held[k],
            "{} held {} of the calls but adopted {}: a call is adopted by the buddy holding it",
            ids[k + 1],
            held[k],
            per_node[k]
        );
    }

    // Media: each call's relay on its adopter latched onto both SIPp ends and counts their
    // packets. The caller only plays RTP once its re-INVITE is answered, so none of this
    // can have come through the dead node.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut pending: Vec<(String, usize)> = adopter_of.clone().into_iter().collect();
    pending.sort();
    let mut last = Value::Null;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for (id, k) in pending {
            let v = trunkctl_json(&survivor_admins[k], &["calls", "get", &id])?;
            if !media_flows(&v, survivor_ips[k], &caller_media, &callee_media) {
                last = v;
                still.push((id, k));
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "{} adopted calls without RTP from {caller_media} and {callee_media} through their \
             adopter's relay; last GetCall: {last}",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("RTP flows through the adopters' relays on all {CALLS} calls");

    // trunkctl on a node without the call finds the node that has it: a transfer to a
    // trunk that does not exist reaches the adopter, which names the trunk (the node asked
    // would only have said NOT_FOUND, exit 3), and the call goes on unchanged.
    if let Some((id, k)) = adopter_of.iter().min() {
        let other = &survivor_admins[1 - *k];
        let (code, _, err) =
            trunkctl_at(other, &["calls", "transfer", id, "3000", "--trunk", "nope"])?;
        ensure!(
            code == 2 && err.contains("nope"),
            "transfer of {id} through the other survivor: exit {code}: {err}"
        );
    }

    // The calls end: the caller's BYE to the adopter, the adopter's to the callee.
    uac.wait(Duration::from_secs(90))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;

    let mut total = 0.0;
    for (k, node) in survivors.iter().enumerate() {
        let m = node.wait_metrics(Duration::from_secs(10), |m| {
            m.get("trunkline_calls_active", &[]) == Some(0.0)
                && m.get("trunkline_cluster_replicas_held", &[]) == Some(0.0)
        })?;
        let adopted = m.value("trunkline_cluster_calls_adopted_total", &[])?;
        let lost = m.value("trunkline_cluster_calls_lost_total", &[])?;
        eprintln!("{}: adopted {adopted}, lost {lost}", ids[k + 1]);
        ensure!(
            adopted == per_node[k] as f64,
            "{} counts {adopted} calls adopted, it listed {}",
            ids[k + 1],
            per_node[k]
        );
        ensure!(lost == 0.0, "{} lost {lost} calls", ids[k + 1]);
        ensure!(
            m.value("trunkline_calls_active", &[])? == 0.0,
            "{} still has active calls after both SIPp ends hung up",
            ids[k + 1]
        );
        ensure!(
            m.value("trunkline_cluster_replicas_held", &[])? == 0.0,
            "{} still holds replicas after every call ended",
            ids[k + 1]
        );
        total += adopted;
    }
    ensure!(
        total == want,
        "the survivors adopted {total} calls, not {CALLS}"
    );
    for mut node in survivors {
        node.assert_healthy()?;
    }
    Ok(())
}

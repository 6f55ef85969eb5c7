//! Drain under load (the drain handover): three clustered nodes, each on a loopback address of
//! its own (127.0.0.11, .12, .13). Fifty SIPp calls settle on the first node and are
//! replicated to its buddies; the node gets SIGTERM with a short `[shutdown] drain_secs`.
//! While it drains, the others see it DRAINING, a new call to it is refused with 503 and
//! Retry-After, and its calls stay with it. At the deadline it hands every call to the buddy
//! holding it (`Replication/Handover`, not the death path): each call is listed on its adopter
//! under its old id with its numbers and answer time, both SIPp ends get the adopter's
//! re-INVITE (Contact and offer off 127.0.0.11), the caller's RTP, started only then, flows
//! through the adopter's relay both ways, and the node exits 0 and leaves the membership. No
//! call is cut: every call ends with the caller's BYE through its adopter, a success for both
//! SIPp ends.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, metric, sigterm, start_clustered, start_etcd};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

/// The nodes' lease. A drained node revokes its lease as it leaves, so the survivors must see
/// it go well before a lease could expire.
const TTL: u64 = 4;
/// The drained node's `[shutdown] drain_secs`: long enough to check, before the deadline, that
/// the node refuses a new call and still carries its own (about 1.5 s of SIPp and trunkctl
/// runs), short enough to keep the test quick.
const DRAIN_SECS: u64 = 3;
const CALLS: u64 = 50;
const CALLEE: &str = "15550123";
/// The drained node and the two that take its calls. uac_adopted.xml and uas_adopted.xml
/// name 127.0.0.11: the re-INVITE's Contact and offer must be elsewhere.
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];
/// How long each call lasts after its adoption (SIPp's -d): long enough to read every call's
/// media counters on its adopter while it is still up (50 `trunkctl calls get`).
const HOLD_AFTER_ADOPTION_MS: u64 = 12_000;
/// Seconds of RTP the caller plays after the re-INVITE.
const RTP_SECS: u64 = 2;
/// From the drain deadline to every call listed on a survivor. The handover is one flush of
/// what the buddies lack (nothing, every call was replicated before the SIGTERM), one RPC per
/// buddy and an actor start per call, all on loopback: tens of milliseconds. A second is
/// ample and still well under the node's own limit for it (3 s, `HANDOVER_LIMIT`), past which
/// it would give the calls up.
const HANDOVER_BOUND: Duration = Duration::from_secs(1);
/// The polling sees the end up to one round late (a round is two `trunkctl` runs and a
/// 100 ms pause; the mean round is printed).
const POLL_SLACK: Duration = Duration::from_millis(500);
/// What the drained node logs at its deadline, and what each buddy logs when it takes calls.
const NODE_HANDOVER: &str = "drain deadline passed: calls handed over to buddies";
const BUDDY_HANDOVER: &str = "cluster: calls handed over by a draining node";
/// What a buddy logs when it adopts a dead node's calls: a drain must not end that way.
const DEATH_TAKEOVER: &str = "cluster: node is gone";

/// What the drained node showed of a call, for comparison with what its adopter shows.
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

/// `text` without ANSI colour sequences (the node colours its log even into a file).
fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // ESC [ parameters letter: skip through the final letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The `key=value` fields of every line of `log` that carries `message`.
fn logged(log: &str, message: &str) -> Vec<HashMap<String, String>> {
    strip_ansi(log)
        .lines()
        .filter_map(|l| l.split_once(message).map(|(_, rest)| rest))
        .map(|rest| {
            rest.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A numeric field of a logged line (see [`logged`]), or an error naming the line.
fn field(fields: &HashMap<String, String>, key: &str) -> Result<u64> {
    fields
        .get(key)
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no numeric {key} in the logged fields {fields:?}"))
}

#[test]
fn a_drained_node_hands_its_calls_to_buddies_and_exits_0() -> Result<()> {
    let out = out_dir("cluster_drain")?;
    make_pcap(&out, RTP_SECS)?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;

    // The trunk: one SIPp for all three nodes, echoing the RTP it gets. It takes exactly
    // CALLS calls: were the drained node to pass on the call it must refuse, the trunk would
    // count one more.
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
        cfg.id = format!("drain{}x{run}", i + 1);
        // Only the node that drains needs the short deadline; the others keep the default.
        let extra = if i == 0 {
            format!("[shutdown]\ndrain_secs = {DRAIN_SECS}\n")
        } else {
            String::new()
        };
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, &extra)?;
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

    // Every call settled and replicated: only then can each be handed over.
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
            "a call that is not established before the drain: {c}"
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
    }
    eprintln!(
        "{CALLS} calls up on {}, held by {} ({}) and {} ({})",
        ids[0], ids[1], held[0], ids[2], held[1]
    );

    // SIGTERM: the drain starts; the deadline is DRAIN_SECS from now.
    sigterm(&first);
    let termed = Instant::now();
    let deadline = Duration::from_secs(DRAIN_SECS);

    // The others see it draining (published in etcd), which also shows that the node has
    // taken the signal before the new call below is sent.
    let draining = [
        (ids[0].as_str(), "DRAINING"),
        (ids[1].as_str(), "ACTIVE"),
        (ids[2].as_str(), "ACTIVE"),
    ];
    for admin in &survivor_admins {
        converge(admin, &draining, Duration::from_secs(2))?;
    }
    // Its calls stay with it while it drains: still all listed there, none on a survivor.
    let on_first = live_calls(&admins[0], &ids[0])?.len() as u64;
    let early: usize = survivor_admins
        .iter()
        .zip(&ids[1..])
        .map(|(a, id)| live_calls(a, id).map(|c| c.len()))
        .sum::<Result<usize>>()?;
    let checked_at = termed.elapsed();
    ensure!(
        checked_at < deadline,
        "the calls were listed {checked_at:?} after the SIGTERM, past the {DRAIN_SECS} s drain: \
         the check proves nothing; the machine is too slow for this test"
    );
    ensure!(
        on_first == CALLS && early == 0,
        "while draining, the first node lists {on_first} of its {CALLS} calls and the survivors \
         list {early} as theirs ({checked_at:?} after the SIGTERM)"
    );
    // A new caller is refused with 503 and Retry-After (the scenario checks both).
    let mut refused = Sipp::uac("uac_unavailable.xml", first.sip_addr())
        .name("refused")
        .calls(1)
        .timeout_secs(10)
        .trace_msg()
        .spawn(&out)?;
    refused.wait(Duration::from_secs(15))?.assert_all_ok(1)?;
    let refused_by = termed.elapsed();
    ensure!(
        refused_by < deadline,
        "the refused call ended {refused_by:?} after the SIGTERM, past the {DRAIN_SECS} s \
         drain: it did not test the drain; the machine is too slow for this test"
    );
    eprintln!(
        "draining: the first node still lists its {CALLS} calls after {checked_at:?}, a new call \
         got 503 by {refused_by:?}"
    );

    // Poll both survivors until every call of the drained node is listed on one of them. A
    // round that ended before the deadline must list none of them: the handover is at the
    // deadline, not before. Polling goes on well past the bound so that a failure says
    // whether the handover was slow or never happened.
    let give_up = deadline + Duration::from_secs(TTL + 15);
    let mut adopter_of: HashMap<String, usize> = HashMap::new();
    let mut adopted: Vec<Value> = Vec::new();
    let mut rounds = 0u32;
    let polling = Instant::now();
    let took = loop {
        rounds += 1;
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
        let now = termed.elapsed();
        ensure!(
            adopter_of.is_empty() || now >= deadline,
            "{} calls were listed on the survivors {now:?} after the SIGTERM, before the \
             {DRAIN_SECS} s drain deadline",
            adopter_of.len()
        );
        if adopter_of.len() == shown.len() {
            break now;
        }
        if now > give_up {
            let counters = |k: usize| {
                format!(
                    "{}: adopted {}, lost {}",
                    ids[k + 1],
                    metric(&survivors[k], "trunkline_cluster_calls_adopted_total"),
                    metric(&survivors[k], "trunkline_cluster_calls_lost_total")
                )
            };
            bail!(
                "{} of {CALLS} calls listed on the survivors {now:?} after the SIGTERM \
                 ({}; {});\n{} log:\n{}\n{} log:\n{}\n{} log:\n{}",
                adopter_of.len(),
                counters(0),
                counters(1),
                ids[0],
                tail(&first.log, 30),
                ids[1],
                tail(&survivors[0].log, 30),
                ids[2],
                tail(&survivors[1].log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let handover = took.saturating_sub(deadline);
    let per_node = [0, 1].map(|k| adopter_of.values().filter(|v| **v == k).count());

    // The drained node exits 0 by itself once it has let its calls go; nothing else is sent
    // to it. Its own limits (main.rs) are 3 s for the handover and 5 s for the app to stop
    // after the deadline, which has passed: 10 s more covers both.
    let status = first.wait_exit(Duration::from_secs(10))?;
    let exited = termed.elapsed();
    let log = first.log_text();
    let at_deadline = logged(&log, NODE_HANDOVER);
    let Some(node_said) = at_deadline.first() else {
        bail!(
            "the drained node never logged `{NODE_HANDOVER}` (exit {status}); log tail:\n{}",
            tail(&first.log, 30)
        );
    };
    let took_ms = field(node_said, "took_ms")?;
    let said = |k: &str| node_said.get(k).map_or("?", String::as_str);
    eprintln!(
        "handover: all {CALLS} calls listed on the survivors {handover:?} after the {DRAIN_SECS} \
         s deadline ({took:?} after the SIGTERM; mean polling round {:?}); the node took \
         {took_ms} ms (adopting {}, unreplicated {}, released {}) and exited with {status} \
         {exited:?} after the SIGTERM; {} adopted {}, {} adopted {}",
        polling.elapsed() / rounds,
        said("adopting"),
        said("unreplicated"),
        said("released"),
        ids[1],
        per_node[0],
        ids[2],
        per_node[1]
    );
    ensure!(
        status.success(),
        "the drained node exited {status}, not 0; log tail:\n{}",
        tail(&first.log, 30)
    );
    ensure!(
        handover <= HANDOVER_BOUND + POLL_SLACK,
        "the handover took {handover:?} after the deadline, more than {HANDOVER_BOUND:?} \
         (+ {POLL_SLACK:?} polling)"
    );
    ensure!(
        field(node_said, "adopting")? == CALLS
            && field(node_said, "unreplicated")? == 0
            && field(node_said, "released")? == CALLS,
        "the drained node's handover: {node_said:?}; want all {CALLS} adopting and released, \
         none unreplicated"
    );
    // The lease is revoked as the node leaves: the survivors see it gone at once, not a lease
    // TTL later.
    let two = [(ids[1].as_str(), "ACTIVE"), (ids[2].as_str(), "ACTIVE")];
    for admin in &survivor_admins {
        converge(admin, &two, Duration::from_secs(1))?;
    }
    drop(first);

    // Each buddy took the calls through the handover, not the death path (which would have
    // adopted them too, once the node had left, and which this test must not pass on).
    let mut handed = 0;
    for (k, node) in survivors.iter().enumerate() {
        let log = node.log_text();
        let takes = logged(&log, BUDDY_HANDOVER);
        let mine: u64 = takes
            .iter()
            .filter(|f| f.get("owner") == Some(&ids[0]))
            .map(|f| field(f, "adopting"))
            .sum::<Result<u64>>()?;
        ensure!(
            mine == per_node[k] as u64,
            "{} logged `{BUDDY_HANDOVER}` for {mine} calls but lists {} adopted: {takes:?}",
            ids[k + 1],
            per_node[k]
        );
        let deaths = logged(&log, DEATH_TAKEOVER);
        ensure!(
            deaths.is_empty(),
            "{} took the drained node for dead: {deaths:?}",
            ids[k + 1]
        );
        handed += mine;
    }
    ensure!(
        handed == CALLS,
        "the buddies took {handed} calls, not {CALLS}"
    );

    for c in &adopted {
        let id = c["id"].as_str().unwrap_or_default();
        ensure!(
            shown.get(id) == Some(&Shown::of(c)),
            "{id} on its adopter: {:?}; on the drained node it was {:?}",
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
    // can have come through the drained node.
    let media_deadline = Instant::now() + Duration::from_secs(10);
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
            Instant::now() < media_deadline,
            "{} adopted calls without RTP from {caller_media} and {callee_media} through their \
             adopter's relay; last GetCall: {last}",
            pending.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("RTP flows through the adopters' relays on all {CALLS} calls");

    // No call was cut: each ends with the caller's BYE to its adopter, the adopter's to the
    // callee, a success on both sides.
    uac.wait(Duration::from_secs(90))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    // The drained node let its calls go without a word: the caller got no BYE at all, and
    // every BYE the callee got came through an adopter (its Via), one call each.
    let byes = |log: &std::path::Path| -> Result<Vec<TracedMessage>> {
        Ok(parse_trace(log)?
            .into_iter()
            .filter(|m| !m.sent && m.method() == Some("BYE"))
            .collect())
    };
    let to_caller = byes(&uac.messages_log())?;
    ensure!(
        to_caller.is_empty(),
        "the caller got {} BYEs, the first: {}",
        to_caller.len(),
        to_caller[0].text
    );
    let to_callee = byes(&uas.messages_log())?;
    let from_drained: Vec<&TracedMessage> = to_callee
        .iter()
        .filter(|m| {
            m.header("Via")
                .is_some_and(|v| v.contains(&format!("{}:", NODE_IPS[0])))
        })
        .collect();
    ensure!(
        from_drained.is_empty(),
        "the drained node sent the callee {} BYEs, the first: {}",
        from_drained.len(),
        from_drained[0].text
    );
    let mut bye_calls: Vec<&str> = to_callee
        .iter()
        .filter_map(|m| m.header("Call-ID"))
        .collect();
    bye_calls.sort_unstable();
    bye_calls.dedup();
    ensure!(
        bye_calls.len() as u64 == CALLS,
        "the callee got BYEs on {} calls, not {CALLS}",
        bye_calls.len()
    );

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

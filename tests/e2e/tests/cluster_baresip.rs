//! Adoption seen by a real endpoint that no test code drives. Three clustered nodes on
//! 127.0.0.11, .12 and .13; baresip b is their trunk and answers by itself, baresip a calls it
//! through the first node (its outbound proxy). Both play a sine tone, so RTP flows both ways
//! without anyone driving it. Once the call is replicated the first node is killed with
//! SIGKILL; within the lease (+ 2 s) a survivor lists the call under its old id, and from then
//! on its relay carries the RTP of both ends, from the very sockets they used before, its
//! counters growing; each baresip ends the call having received more packets than the dead
//! node could have passed it. a then hangs up by itself (ctrl_tcp `hangup`): its BYE must
//! reach the adopter, which ends the call and sends b a BYE.
//!
//! What baresip does with the adopter's re-INVITE (another Contact, a c= line naming the
//! adopter's relay, a raised o= version) is what this test is about: it answers for itself,
//! and everything after the kill is judged from what it then does (where it sends RTP and its
//! BYE). baresip runs with its SIP trace on (`-s`), so its log shows the re-INVITE and its
//! answer, and the failure messages quote it.
//!
//! Both baresips are on 127.0.0.1, told apart by port: baresip sends RTP from a socket bound
//! to the wildcard address, so on loopback its media always comes from 127.0.0.1 whatever its
//! SIP address (see trunkline_e2e::baresip); on another address its SDP would name a source
//! it does not send from and every relay would have to learn it as behind a NAT, which is not
//! what this test is about.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use trunkline_e2e::baresip::Baresip;
use trunkline_e2e::cluster::{converge, kill9, start_clustered, start_etcd};
use trunkline_e2e::*;

/// The nodes' lease: how long after the kill the survivors learn of it.
const TTL: u64 = 4;
/// The node that carries the call and dies, and the two that survive it.
const NODE_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(127, 0, 0, 11),
    Ipv4Addr::new(127, 0, 0, 12),
    Ipv4Addr::new(127, 0, 0, 13),
];
/// Both baresips' address (see the top of the file).
const BARESIP_IP: Ipv4Addr = NODE_IP;
/// How long the adopter's counters are watched once media flows through it.
const WATCH: Duration = Duration::from_secs(2);
/// Fewest packets each end must send through the adopter's relay during [`WATCH`], and
/// receive through it over the rest of the call: baresip sends 50 a second (20 ms PCMU), so
/// half of what 2 s carry.
const MIN_GROWTH: u64 = 50;

/// Every live call of node `id` (the node at `admin`), all pages.
fn live_calls(admin: &str, id: &str) -> Result<Vec<Value>> {
    let v = trunkctl_json(admin, &["calls", "list", "--all", "--node", id])?;
    Ok(v["calls"].as_array().cloned().unwrap_or_default())
}

/// `calls get <id>` on the node at `admin`.
fn get_call(admin: &str, id: &str) -> Result<Value> {
    trunkctl_json(admin, &["calls", "get", id])
}

/// What a GetCall answer shows of one party's audio stream on the relay.
#[derive(Debug)]
struct Side {
    relay: String,
    advertised: String,
    latched: String,
    packets: u64,
}

impl Side {
    /// `leg` is "caller" or "callee".
    fn of(call: &Value, leg: &str) -> Side {
        let m = &call[leg]["media"][0];
        let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
        Side {
            relay: s(&m["relayAddress"]),
            advertised: s(&m["advertisedAddress"]),
            latched: s(&m["latchedAddress"]),
            // uint64 is a string in protobuf's JSON mapping.
            packets: m["rtpPackets"]
                .as_str()
                .and_then(|p| p.parse().ok())
                .unwrap_or(0),
        }
    }

    /// Anchored on `node`'s relay, latched onto the address the party's SDP names (on
    /// baresip's address) and counting its RTP.
    fn flows(&self, node: Ipv4Addr) -> bool {
        self.relay.starts_with(&format!("{node}:"))
            && self.advertised.starts_with(&format!("{BARESIP_IP}:"))
            && self.latched == self.advertised
            && self.packets > 0
    }
}

/// Polls `calls get` on the node at `admin` (on `node`) until the call is anchored there with
/// both parties' RTP arriving; returns the answer that showed it.
fn wait_media(admin: &str, id: &str, node: Ipv4Addr, limit: Duration) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let v = get_call(admin, id)?;
        let flows = v["mediaAnchored"] == true
            && Side::of(&v, "caller").flows(node)
            && Side::of(&v, "callee").flows(node);
        if flows {
            return Ok(v);
        }
        if Instant::now() >= deadline {
            bail!(
                "{limit:?}: the call's media never flowed through {node}'s relay from both \
                 parties' SDP addresses; last GetCall: {v}"
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The last `n` lines of `trace`.
fn last_lines(trace: &str, n: usize) -> String {
    let lines: Vec<&str> = trace.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Both baresips' SIP traces and the nodes' logs, for a failure message.
fn logs(a: &Baresip, b: &Baresip, nodes: &[(&str, &Node)]) -> String {
    let mut s = format!(
        "baresip a:\n{}\nbaresip b:\n{}",
        last_lines(&a.trace_since(0), 120),
        last_lines(&b.trace_since(0), 120)
    );
    for (id, n) in nodes {
        s.push_str(&format!("\n{id} log:\n{}", tail(&n.log, 30)));
    }
    s
}

/// Fails unless `trace` (a baresip's SIP trace since the kill) shows a re-INVITE from
/// `adopter` whose offer names `adopter_ip`, taken as such by baresip and answered 200.
fn reinvite_accepted(
    who: &str,
    trace: &str,
    me: SocketAddr,
    adopter: SocketAddr,
    adopter_ip: Ipv4Addr,
) -> Result<()> {
    let invite = format!("UDP {adopter} -> {me}\nINVITE sip:");
    let offer = format!("c=IN IP4 {adopter_ip}");
    let taken = "call: got re-INVITE (SDP Offer)";
    let ok = format!("UDP {me} -> {adopter}\nSIP/2.0 200 ");
    let at = trace.find(&invite);
    let answered = at.is_some_and(|i| {
        let rest = &trace[i..];
        rest.contains(&offer) && rest.contains(taken) && rest.contains(&ok)
    });
    ensure!(
        answered,
        "baresip {who} shows no re-INVITE from the adopter {adopter} with {offer} that it took \
         ({taken:?}) and answered 200; its trace since the kill:\n{trace}"
    );
    Ok(())
}

#[test]
fn baresip_call_keeps_its_audio_when_its_node_dies() -> Result<()> {
    let out = out_dir("cluster_baresip")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;

    // b answers every call by itself; the three nodes route every call to it.
    let mut b = Baresip::start(
        &out,
        "b",
        BARESIP_IP,
        &format!("<sip:b@{BARESIP_IP}:@SIP_PORT@>;regint=0;answermode=auto"),
        true,
    )?;
    let mut started = Vec::new();
    let mut admins = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, b.sip_addr(), Transport::Udp)?;
        cfg.id = format!("bare{}x{run}", i + 1);
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

    // a, registered nowhere, sends its INVITE to the first node.
    let mut a = Baresip::start(
        &out,
        "a",
        BARESIP_IP,
        &format!(
            "<sip:a@{BARESIP_IP}:@SIP_PORT@>;regint=0;outbound=\"sip:{}\"",
            first.sip_addr()
        ),
        true,
    )?;
    b.wait_ctrl()?;
    a.wait_ctrl()?;
    let dial = a.command("dial", &format!("sip:b@{}", b.sip_addr()))?;
    ensure!(dial.contains("\"ok\":true"), "dial refused: {dial}");
    let established = wait_until(Duration::from_secs(10), || {
        a.log_text().contains("Call established") && b.log_text().contains("Call established")
    });
    ensure!(
        established,
        "the call was not established;\n{}",
        logs(&a, &b, &[(&ids[0], &first)])
    );
    let listed = live_calls(&admins[0], &ids[0])?;
    let [call] = listed.as_slice() else {
        bail!(
            "the first node lists {} calls, not 1: {listed:?}",
            listed.len()
        );
    };
    let id = call["id"]
        .as_str()
        .context("a call without an id")?
        .to_string();

    // Audio both ways through the first node: its relay latched onto both baresips (the
    // sources the adopter must see again), and each baresip receives from that relay.
    let before = wait_media(&admins[0], &id, NODE_IPS[0], Duration::from_secs(10))?;
    let (a_media, b_media) = (
        Side::of(&before, "caller").latched,
        Side::of(&before, "callee").latched,
    );
    ensure!(
        a_media != b_media,
        "both parties latched at {a_media}: the relay cannot tell them apart"
    );
    let from_first = format!("receiving from {}:", NODE_IPS[0]);
    ensure!(
        wait_until(Duration::from_secs(5), || a
            .log_text()
            .contains(&from_first)
            && b.log_text().contains(&from_first)),
        "the baresips do not both receive RTP from the first node's relay;\n{}",
        logs(&a, &b, &[])
    );
    eprintln!(
        "call {id} up on {}: a's RTP from {a_media}, b's from {b_media}",
        ids[0]
    );

    // Replicated, and held by one survivor: only then can it be adopted.
    let m = first.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(1.0)
    })?;
    ensure!(
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(1.0),
        "the first node replicated {:?} calls, not 1",
        m.get("trunkline_cluster_replicated_calls", &[])
    );
    let held = |n: &Node| {
        n.metrics()
            .ok()
            .and_then(|m| m.get("trunkline_cluster_replicas_held", &[]))
            .unwrap_or(-1.0)
    };
    ensure!(
        wait_until(Duration::from_secs(5), || held(&survivors[0])
            + held(&survivors[1])
            == 1.0),
        "the survivors hold {} and {} replicas, not 1 between them",
        held(&survivors[0]),
        held(&survivors[1])
    );

    // The first node dies without a word. What its relay had received from each party just
    // before is (within the few packets of one trunkctl run) the most it can have passed to
    // the other: whatever a baresip receives beyond it came through the adopter.
    let last_seen = get_call(&admins[0], &id)?;
    let (a_before, b_before) = (
        Side::of(&last_seen, "caller").packets,
        Side::of(&last_seen, "callee").packets,
    );
    let killed_at = (a.log_text().len(), b.log_text().len());
    kill9(&first);
    let killed = Instant::now();
    ensure!(
        wait_until(Duration::from_secs(2), || !first.is_alive()),
        "the first node outlived SIGKILL"
    );
    drop(first);

    // The survivors learn of the death when the lease expires (at most TTL after the kill),
    // check that the dead node's cluster address refuses connections and adopt: TTL + 2 s,
    // plus 500 ms for a polling round. Polling goes on past that so that a failure says
    // whether adoption was slow or never happened.
    let bound = Duration::from_secs(TTL + 2) + Duration::from_millis(500);
    let give_up = Duration::from_secs(TTL + 15);
    let (k, took) = loop {
        let mut on = Vec::new();
        for (k, admin) in admins[1..].iter().enumerate() {
            if live_calls(admin, &ids[k + 1])?
                .iter()
                .any(|c| c["id"] == id.as_str())
            {
                on.push(k);
            }
        }
        match on.as_slice() {
            [k] => break (*k, killed.elapsed()),
            [] if killed.elapsed() > give_up => bail!(
                "{id} is listed on no survivor {give_up:?} after the kill;\n{}",
                logs(
                    &a,
                    &b,
                    &[(&ids[1], &survivors[0]), (&ids[2], &survivors[1])]
                )
            ),
            [] => std::thread::sleep(Duration::from_millis(100)),
            _ => bail!("{id} is listed on both {} and {}", ids[1], ids[2]),
        }
    };
    let adopter = &survivors[k];
    let (adopter_id, adopter_admin, adopter_ip) = (&ids[k + 1], &admins[k + 1], NODE_IPS[k + 1]);
    eprintln!("{id} adopted by {adopter_id} ({adopter_ip}) {took:?} after the kill");
    ensure!(
        took <= bound,
        "the takeover took {took:?}, more than the lease ({TTL} s) + 2 s (+ 500 ms polling)"
    );

    // The re-INVITEs: both baresips now send their RTP to the adopter's relay, from the
    // sockets they used before. If baresip refused a re-INVITE or kept sending to the dead
    // node, this is where it shows, with baresip's SIP trace.
    let after =
        wait_media(adopter_admin, &id, adopter_ip, Duration::from_secs(10)).with_context(|| {
            format!(
                "after the adoption by {adopter_id};\n{}",
                logs(&a, &b, &[(adopter_id, adopter)])
            )
        })?;
    let (ca, cb) = (Side::of(&after, "caller"), Side::of(&after, "callee"));
    ensure!(
        ca.latched == a_media && cb.latched == b_media,
        "the adopter latched onto {} and {}; before the kill a sent from {a_media} and b from \
         {b_media}",
        ca.latched,
        cb.latched
    );
    ensure!(
        after["state"] == "CALL_STATE_ESTABLISHED",
        "the adopted call is {}, not established: {after}",
        after["state"]
    );
    reinvite_accepted(
        "a",
        &a.trace_since(killed_at.0),
        a.sip_addr(),
        adopter.sip_addr(),
        adopter_ip,
    )?;
    reinvite_accepted(
        "b",
        &b.trace_since(killed_at.1),
        b.sip_addr(),
        adopter.sip_addr(),
        adopter_ip,
    )?;

    // Media keeps flowing through the adopter: both ends' counters grow over WATCH, still
    // from the same sockets.
    std::thread::sleep(WATCH);
    let later = get_call(adopter_admin, &id)?;
    let (la, lb) = (Side::of(&later, "caller"), Side::of(&later, "callee"));
    eprintln!(
        "through {adopter_id}'s relay over {WATCH:?}: a {} -> {} packets, b {} -> {}",
        ca.packets, la.packets, cb.packets, lb.packets
    );
    ensure!(
        la.packets >= ca.packets + MIN_GROWTH && lb.packets >= cb.packets + MIN_GROWTH,
        "RTP through the adopter's relay did not keep flowing over {WATCH:?}: a {} -> {}, \
         b {} -> {} (want +{MIN_GROWTH} each); GetCall: {later}",
        ca.packets,
        la.packets,
        cb.packets,
        lb.packets
    );
    ensure!(
        la.latched == a_media && lb.latched == b_media,
        "the adopter re-latched: {} and {}",
        la.latched,
        lb.latched
    );

    // a hangs up by itself: its BYE goes wherever baresip now believes the dialog's other end
    // is, which must be the adopter (the Contact of its re-INVITE); the adopter ends the call
    // and sends b a BYE.
    let hangup = a.command("hangup", "")?;
    ensure!(hangup.contains("\"ok\":true"), "hangup refused: {hangup}");
    let mut last = Value::Null;
    let ended = wait_until(Duration::from_secs(10), || {
        last = get_call(adopter_admin, &id).unwrap_or(Value::Null);
        last["state"] == "CALL_STATE_ENDED" && b.rtp_packets().is_some()
    });
    ensure!(
        ended,
        "after a's hang-up the adopter shows {last}, b's end-of-call stats: {:?};\n{}",
        b.rtp_packets(),
        logs(&a, &b, &[(adopter_id, adopter)])
    );
    ensure!(
        last["end"]["cause"] == "caller_hangup",
        "the call ended on the adopter, but not by the caller's BYE: {last}"
    );
    ensure!(
        live_calls(adopter_admin, adopter_id)?.is_empty(),
        "{adopter_id} still lists live calls after the hang-up"
    );
    let byes = [
        (
            &a,
            format!("UDP {} -> {}\nBYE sip:", a.sip_addr(), adopter.sip_addr()),
        ),
        (
            &b,
            format!("UDP {} -> {}\nBYE sip:", adopter.sip_addr(), b.sip_addr()),
        ),
    ];
    for ((who, want), from) in byes.iter().zip([killed_at.0, killed_at.1]) {
        let trace = who.trace_since(from);
        ensure!(
            trace.contains(want.as_str()),
            "{}: no {:?} in its trace since the kill:\n{trace}",
            who.proc.name,
            want.lines().next().unwrap_or_default()
        );
    }

    // Two-way audio as the endpoints saw it: each received at least MIN_GROWTH packets more
    // than the dead node's relay had taken from the other end before the kill, so at least
    // that many came through the adopter.
    let a_stats = wait_until(Duration::from_secs(5), || a.rtp_packets().is_some());
    ensure!(
        a_stats,
        "a printed no end-of-call RTP stats after its hang-up"
    );
    let (a_tx, a_rx) = a.rtp_packets().unwrap_or_default();
    let (b_tx, b_rx) = b.rtp_packets().unwrap_or_default();
    eprintln!(
        "baresip a: sent {a_tx}, received {a_rx}; b: sent {b_tx}, received {b_rx}; before the \
         kill the first node's relay had {a_before} packets from a and {b_before} from b"
    );
    ensure!(
        a_rx >= b_before + MIN_GROWTH && b_rx >= a_before + MIN_GROWTH,
        "the baresips received too little after the adoption: a {a_rx} (the dead node had \
         {b_before} of b's), b {b_rx} (it had {a_before} of a's); want +{MIN_GROWTH} each"
    );
    let _ = a.command("quit", "");
    let _ = b.command("quit", "");

    let m = adopter.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
    })?;
    for (name, want) in [
        ("trunkline_calls_active", 0.0),
        ("trunkline_cluster_calls_adopted_total", 1.0),
        ("trunkline_cluster_calls_lost_total", 0.0),
    ] {
        let got = m.value(name, &[])?;
        ensure!(got == want, "{adopter_id}: {name} = {got}, want {want}");
    }
    for mut n in survivors {
        n.assert_healthy()?;
    }
    Ok(())
}

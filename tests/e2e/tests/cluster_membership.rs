//! Cluster membership against a real etcd (Debian's `etcd-server`, started here): nodes
//! register under a lease and see each other; a drain is published; a node killed with
//! SIGKILL disappears when its lease expires, one stopped with SIGTERM at once (its lease
//! is revoked); with etcd stopped every node keeps its last view and keeps answering SIP,
//! a node started meanwhile runs standalone until etcd is back, and then they converge.

use anyhow::{ensure, Result};
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{
    converge, kill9, nodes, start_clustered, start_etcd, view, wait_trunks,
};
use trunkline_e2e::*;

const TTL: u64 = 4;

/// Puts `value` under `key` in etcd directly (its JSON gateway, /v3/kv/put), as a bad
/// script or a careless operator might.
fn etcd_put(client: u16, key: &str, value: &str) -> Result<()> {
    use base64::Engine as _;
    use std::io::{Read, Write};
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = format!(
        "{{\"key\":\"{}\",\"value\":\"{}\"}}",
        b64.encode(key),
        b64.encode(value)
    );
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "POST /v3/kv/put HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    ensure!(
        reply.starts_with("HTTP/1.0 200") || reply.starts_with("HTTP/1.1 200"),
        "etcd put: {reply}"
    );
    Ok(())
}

fn start_node(out: &Path, id: &str, etcd_port: u16) -> Result<(Node, String)> {
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    start_node_with(out, id, etcd_port, trunk.local_addr()?, "")
}

/// A clustered node whose file names `trunk` as "carrier", with `extra` lines in
/// `[cluster]`.
fn start_node_with(
    out: &Path,
    id: &str,
    etcd_port: u16,
    trunk: SocketAddr,
    extra: &str,
) -> Result<(Node, String)> {
    let mut cfg = NodeConfig::new(trunk, Transport::Udp)?;
    cfg.id = id.to_string();
    start_clustered(out, &cfg, etcd_port, TTL, extra)
}

#[test]
fn nodes_see_each_other_through_etcd_and_survive_its_restart() -> Result<()> {
    let out = out_dir("cluster_membership")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let data = out.join("etcd-data");
    let mut etcd = start_etcd(&out, &data, client, peer, 1)?;
    let (a, b, c) = (format!("a{run}"), format!("b{run}"), format!("c{run}"));

    let (mut na, admin_a) = start_node(&out, &a, client)?;
    let (nb, admin_b) = start_node(&out, &b, client)?;
    let took = converge(
        &admin_a,
        &[(&a, "ACTIVE"), (&b, "ACTIVE")],
        Duration::from_secs(10),
    )?;
    eprintln!("two nodes see each other after {took:?}");
    converge(
        &admin_b,
        &[(&a, "ACTIVE"), (&b, "ACTIVE")],
        Duration::from_secs(5),
    )?;
    let v = nodes(&admin_a)?;
    ensure!(
        v["clustered"] == true && v["etcdConnected"] == true && v["registered"] == true,
        "a's view of etcd: {v}"
    );
    na.wait_metrics(Duration::from_secs(5), |m| {
        m.get("trunkline_cluster_members", &[]) == Some(2.0)
            && m.get("trunkline_cluster_etcd_connected", &[]) == Some(1.0)
            && m.get("trunkline_cluster_registered", &[]) == Some(1.0)
            && m.get("trunkline_cluster_config_revision", &[])
                .is_some_and(|r| r > 0.0)
    })?;

    // A drain is published; the others see it.
    let (code, _, err) = trunkctl_at(&admin_b, &["node", "drain"])?;
    ensure!(code == 0, "drain b: {code} {err}");
    converge(
        &admin_a,
        &[(&a, "ACTIVE"), (&b, "DRAINING")],
        Duration::from_secs(5),
    )?;

    // SIGKILL: b's entry goes when its lease expires.
    kill9(&nb);
    let took = converge(&admin_a, &[(&a, "ACTIVE")], Duration::from_secs(TTL + 4))?;
    eprintln!("a killed node left the membership after {took:?} (lease {TTL} s)");
    drop(nb);

    // etcd goes away: a keeps its view and its calls' path (SIP answers).
    etcd.stop();
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        na.options_ping(Duration::from_secs(2))? == 200,
        "a stopped answering SIP"
    );
    let v = nodes(&admin_a)?;
    ensure!(
        view(&v) == vec![(a.clone(), "NODE_STATE_ACTIVE".to_string())],
        "a's view without etcd: {v}"
    );
    na.wait_metrics(Duration::from_secs(15), |m| {
        m.get("trunkline_cluster_etcd_connected", &[]) == Some(0.0)
            && m.get("trunkline_cluster_members", &[]) == Some(1.0)
    })?;
    // A node started while etcd is down runs, alone.
    let (mut nc, admin_c) = start_node(&out, &c, client)?;
    ensure!(
        nc.options_ping(Duration::from_secs(2))? == 200,
        "c does not answer SIP"
    );
    let v = nodes(&admin_c)?;
    ensure!(
        v["etcdConnected"] == false
            && view(&v) == vec![(c.clone(), "NODE_STATE_ACTIVE".to_string())],
        "c's view without etcd: {v}"
    );
    // Longer than the lease: a's own lease expires meanwhile and must be renewed.
    std::thread::sleep(Duration::from_secs(TTL + 1));

    // etcd is back (same data): everyone registers again and the views converge.
    let _etcd2 = start_etcd(&out, &data, client, peer, 2)?;
    let both = [(a.as_str(), "ACTIVE"), (c.as_str(), "ACTIVE")];
    let took = converge(&admin_a, &both, Duration::from_secs(15))?;
    eprintln!("views converged {took:?} after etcd came back");
    converge(&admin_c, &both, Duration::from_secs(5))?;
    let v = nodes(&admin_a)?;
    ensure!(
        v["etcdConnected"] == true && v["registered"] == true,
        "a after etcd's return: {v}"
    );

    // SIGTERM: c revokes its lease and leaves at once, well before the TTL.
    let started = Instant::now();
    let status = nc.stop()?;
    ensure!(status.success(), "c exited with {status}");
    let took = converge(&admin_a, &[(&a, "ACTIVE")], Duration::from_secs(TTL))?;
    ensure!(
        started.elapsed() < Duration::from_secs(TTL),
        "c's departure took {:?}, as long as its lease: it was not revoked",
        started.elapsed()
    );
    eprintln!("a stopped node left after {took:?}");
    na.assert_healthy()?;
    Ok(())
}

#[test]
fn trunks_and_routes_are_shared_through_etcd_and_cached_on_disk() -> Result<()> {
    let out = out_dir("cluster_config")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let data = out.join("etcd-data");
    let mut etcd = start_etcd(&out, &data, client, peer, 1)?;
    let carrier_a = UdpSocket::bind((UAS_IP, 0))?;
    let carrier_b = UdpSocket::bind((UAS_IP, 0))?;
    let (a, b) = (format!("ca{run}"), format!("cb{run}"));
    let cache_b = out.join("b-config.json");

    // a seeds the empty cluster with its file; b, whose file says otherwise, takes the
    // cluster's.
    let (na, admin_a) = start_node_with(&out, &a, client, carrier_a.local_addr()?, "")?;
    let seeded = vec![("carrier".to_string(), carrier_a.local_addr()?.to_string())];
    wait_trunks(&admin_a, &seeded, Duration::from_secs(5))?;
    let (mut nb, admin_b) = start_node_with(
        &out,
        &b,
        client,
        carrier_b.local_addr()?,
        &format!("config_cache = \"{}\"\n", cache_b.display()),
    )?;
    wait_trunks(&admin_b, &seeded, Duration::from_secs(5))?;

    // A change through a's API reaches b within a second.
    let file = out.join("trunks.toml");
    std::fs::write(
        &file,
        format!(
            "[[trunks]]\nname = \"second\"\naddress = \"{}\"\ntransport = \"udp\"\n",
            carrier_b.local_addr()?
        ),
    )?;
    let (code, _, err) = trunkctl_at(
        &admin_a,
        &["trunks", "apply", "-f", &file.display().to_string()],
    )?;
    ensure!(code == 0, "trunks apply on a: {code} {err}");
    let mut both = seeded.clone();
    both.push(("second".to_string(), carrier_b.local_addr()?.to_string()));
    both.sort();
    let took = wait_trunks(&admin_b, &both, Duration::from_secs(1))?;
    eprintln!("a trunk added on a was in force on b after {took:?}");

    // b's routing table change reaches a, and a's next call follows it.
    let routes = out.join("routes.toml");
    std::fs::write(&routes, "[routing]\ndefault_trunk = \"second\"\n")?;
    let (code, _, err) = trunkctl_at(
        &admin_b,
        &["routes", "apply", "-f", &routes.display().to_string()],
    )?;
    ensure!(code == 0, "routes apply on b: {code} {err}");
    let start = Instant::now();
    loop {
        let v = trunkctl_json(&admin_a, &["routes", "list"])?;
        if v["defaultTrunk"] == "second" {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(1),
            "a never saw b's routing table: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // The next call on a goes to the new default trunk.
    let caller = UdpSocket::bind((UAC_IP, 0))?;
    let me = caller.local_addr()?;
    let node = na.sip_addr();
    caller.send_to(
        format!(
            "INVITE sip:+15550100@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKshared1;rport\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=shared1\r\nTo: <sip:+15550100@{node}>\r\n\
             Call-ID: shared-1@127.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\n\
             Content-Length: 0\r\n\r\n"
        )
        .as_bytes(),
        node,
    )?;
    let mut seen = Vec::new();
    let reached =
        trunkline_e2e::scripted::wait_for(&carrier_b, Duration::from_secs(5), &mut seen, |m| {
            m.starts_with("INVITE ")
        });
    ensure!(
        reached.is_some(),
        "a's call did not go to the trunk b made its default; carrier_b saw {seen:?}"
    );
    ensure!(
        cache_b.exists(),
        "b kept no copy of the shared configuration"
    );

    // A document that breaks the rules (its default trunk does not exist) is refused by
    // every node, which keep what they have; an operator can still replace it.
    let bad = r#"{"trunks":[],"routes":[],"routing":{"default_trunk":"nowhere"}}"#;
    etcd_put(client, "/trunkline/config/routing", bad)?;
    std::thread::sleep(Duration::from_millis(500));
    wait_trunks(&admin_a, &both, Duration::from_secs(1))?;
    wait_trunks(&admin_b, &both, Duration::from_secs(1))?;
    let refused = wait_until(Duration::from_secs(5), || {
        na.log_text().contains("shared configuration refused")
    });
    ensure!(refused, "a did not say it refused the bad document");
    std::fs::write(&routes, "[routing]\ndefault_trunk = \"carrier\"\n")?;
    let (code, _, err) = trunkctl_at(
        &admin_a,
        &["routes", "apply", "-f", &routes.display().to_string()],
    )?;
    ensure!(
        code == 0,
        "routes apply over a refused document: {code} {err}"
    );
    let start = Instant::now();
    loop {
        let v = trunkctl_json(&admin_b, &["routes", "list"])?;
        if v["defaultTrunk"] == "carrier" {
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(2),
            "b never saw the repair: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // What b restarts from below: its cache holds the last version it applied.
    std::fs::write(&routes, "[routing]\ndefault_trunk = \"second\"\n")?;
    let (code, _, err) = trunkctl_at(
        &admin_b,
        &["routes", "apply", "-f", &routes.display().to_string()],
    )?;
    ensure!(code == 0, "routes apply on b again: {code} {err}");

    // b restarts while etcd is down: it uses what it last saw, not its file.
    nb.stop()?;
    etcd.stop();
    let (_nb2, admin_b2) = start_node_with(
        &out,
        &format!("{b}r"),
        client,
        carrier_b.local_addr()?,
        &format!("config_cache = \"{}\"\n", cache_b.display()),
    )?;
    wait_trunks(&admin_b2, &both, Duration::from_secs(2))?;
    let v = trunkctl_json(&admin_b2, &["routes", "list"])?;
    ensure!(
        v["defaultTrunk"] == "second",
        "b after a restart without etcd: {v}"
    );
    Ok(())
}

fn held(node: &Node) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get("trunkline_cluster_replicas_held", &[]))
        .unwrap_or(-1.0)
}

#[test]
fn settled_calls_are_replicated_to_buddies_move_when_one_dies_and_go_when_they_end() -> Result<()> {
    const CALLS: u64 = 20;
    let out = out_dir("cluster_replication")?;
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let _etcd = start_etcd(&out, &out.join("etcd-data"), client, peer, 1)?;
    let uas_builder = Sipp::uas("uas_basic.xml")
        .calls(CALLS)
        .timeout_secs(60)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let (a, b, c) = (format!("ra{run}"), format!("rb{run}"), format!("rc{run}"));
    let (na, admin_a) = start_node_with(&out, &a, client, uas_builder.addr()?, "")?;
    let (nb, _admin_b) = start_node(&out, &b, client)?;
    let (nc, _admin_c) = start_node(&out, &c, client)?;
    converge(
        &admin_a,
        &[(&a, "ACTIVE"), (&b, "ACTIVE"), (&c, "ACTIVE")],
        Duration::from_secs(10),
    )?;

    let mut uac = Sipp::uac("uac_basic.xml", na.sip_addr())
        .calls(CALLS)
        .rate(20)
        .duration_ms(12_000)
        .timeout_secs(60)
        .spawn(&out)?;
    // Every settled call of a is held by its buddy: b or c, as the ring says.
    let want = CALLS as f64;
    na.wait_metrics(Duration::from_secs(15), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(want)
    })?;
    let spread = wait_until(Duration::from_secs(5), || held(&nb) + held(&nc) == want);
    ensure!(
        spread,
        "b and c hold {} and {} of a's {CALLS} calls",
        held(&nb),
        held(&nc)
    );
    eprintln!("a's calls held by b: {}, by c: {}", held(&nb), held(&nc));
    // b dies: the calls it held move to c, the next node on the ring.
    kill9(&nb);
    let moved = wait_until(Duration::from_secs(TTL + 4), || held(&nc) == want);
    ensure!(moved, "after b's death c holds {} of {CALLS}", held(&nc));
    drop(nb);
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    // Ended: nothing is held any more, on either side.
    nc.wait_metrics(Duration::from_secs(5), |m| {
        m.get("trunkline_cluster_replicas_held", &[]) == Some(0.0)
    })?;
    let m = na.wait_metrics(Duration::from_secs(5), |m| {
        m.get("trunkline_cluster_replicated_calls", &[]) == Some(0.0)
    })?;
    ensure!(
        m.get("trunkline_cluster_replication_dropped", &[]) == Some(0.0),
        "changes dropped on the way"
    );
    Ok(())
}

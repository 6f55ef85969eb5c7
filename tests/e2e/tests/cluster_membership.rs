//! Cluster membership against a real etcd (Debian's `etcd-server`, started here): nodes
//! register under a lease and see each other; a drain is published; a node killed with
//! SIGKILL disappears when its lease expires, one stopped with SIGTERM at once (its lease
//! is revoked); with etcd stopped every node keeps its last view and keeps answering SIP,
//! a node started meanwhile runs standalone until etcd is back, and then they converge.

use anyhow::{bail, ensure, Result};
use serde_json::Value;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use trunkline_e2e::child::Proc;
use trunkline_e2e::*;

const TTL: u64 = 4;

/// etcd on 127.0.0.1 with its data in `dir`; ready once it answers /health and its own
/// log says it serves the client port (so a stale etcd on the port cannot pass for it).
fn start_etcd(out: &Path, dir: &Path, client: u16, peer: u16, run: u32) -> Result<Proc> {
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut cmd = Command::new("etcd");
    cmd.args([
        "--name",
        "tl-test",
        "--data-dir",
        &dir.display().to_string(),
        "--listen-client-urls",
        &client_url,
        "--advertise-client-urls",
        &client_url,
        "--listen-peer-urls",
        &peer_url,
        "--initial-advertise-peer-urls",
        &peer_url,
        "--initial-cluster",
        &format!("tl-test={peer_url}"),
    ]);
    let mut etcd = Proc::spawn("etcd", &mut cmd, out.join(format!("etcd-{run}.log")))?;
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        etcd.check_alive()?;
        let healthy = http_get(addr, "/health").is_ok_and(|(s, b)| s == 200 && b.contains("true"));
        let ours = etcd.log_text().contains(&format!("127.0.0.1:{client}"));
        if healthy && ours {
            return Ok(etcd);
        }
        if Instant::now() > deadline {
            bail!(
                "etcd never became healthy on {client_url}:\n{}",
                tail(&etcd.log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn start_node(out: &Path, id: &str, etcd_port: u16) -> Result<(Node, String)> {
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = id.to_string();
    let toml = format!(
        "{}\n[cluster]\netcd_endpoints = [\"http://127.0.0.1:{etcd_port}\"]\nlease_ttl_secs = {TTL}\n",
        cfg.to_toml()
    );
    let dir = out.join(id);
    std::fs::create_dir_all(&dir)?;
    let admin = cfg.admin_addr().to_string();
    Ok((Node::start_toml(&cfg, &toml, &dir)?, admin))
}

fn nodes(admin: &str) -> Result<Value> {
    trunkctl_json(admin, &["node", "list"])
}

/// The ids and states `admin` lists.
fn view(v: &Value) -> Vec<(String, String)> {
    v["nodes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|n| {
                    (
                        n["id"].as_str().unwrap_or("").to_string(),
                        n["state"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `admin` lists exactly `want` (id, state), returning how long it took.
fn converge(admin: &str, want: &[(&str, &str)], limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut want: Vec<(String, String)> = want
        .iter()
        .map(|(i, s)| (i.to_string(), format!("NODE_STATE_{s}")))
        .collect();
    want.sort();
    let mut last = Value::Null;
    while start.elapsed() < limit {
        let v = nodes(admin)?;
        let mut got = view(&v);
        got.sort();
        if got == want {
            return Ok(start.elapsed());
        }
        last = v;
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!("{admin} never listed {want:?} within {limit:?}; last: {last}")
}

fn kill9(node: &Node) {
    if let Some(pid) = node.pid() {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
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

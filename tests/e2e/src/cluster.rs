//! Clustered nodes: a real etcd (Debian's `etcd-server`) started by the test, nodes that
//! register in it, their membership as `trunkctl node list` shows it, and a node's sudden
//! death (SIGKILL). Shared by cluster_membership.rs and cluster_adoption.rs.

use crate::child::Proc;
use crate::{http_get, sets_key, signal, tail, trunkctl_json, Node, NodeConfig};
use anyhow::{bail, Result};
use serde_json::Value;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// etcd on 127.0.0.1 with its data in `dir`; ready once it answers /health and its own
/// log says it serves the client port (so a stale etcd on the port cannot pass for it).
/// `run` numbers its log (`etcd-<run>.log`) when one test starts etcd more than once.
pub fn start_etcd(out: &Path, dir: &Path, client: u16, peer: u16, run: u32) -> Result<Proc> {
    spawn_etcd(out, dir, client, peer, run, None)
}

/// etcd serving its clients over TLS only, with `<pki>/etcd.crt`/`.key` (for 127.0.0.1),
/// and requiring a client certificate `<pki>/etcd-ca.crt` signed. Ready once a TLS
/// connection to the port completes (with the client certificate `<pki>/node1.crt`, which
/// the test makes) and its own log says it serves the client port.
pub fn start_etcd_tls(out: &Path, dir: &Path, client: u16, peer: u16, pki: &Path) -> Result<Proc> {
    spawn_etcd(out, dir, client, peer, 1, Some(pki))
}

fn spawn_etcd(
    out: &Path,
    dir: &Path,
    client: u16,
    peer: u16,
    run: u32,
    tls: Option<&Path>,
) -> Result<Proc> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let client_url = format!("{scheme}://127.0.0.1:{client}");
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
    if let Some(pki) = tls {
        cmd.arg("--cert-file")
            .arg(pki.join("etcd.crt"))
            .arg("--key-file")
            .arg(pki.join("etcd.key"))
            .arg("--trusted-ca-file")
            .arg(pki.join("etcd-ca.crt"))
            .arg("--client-cert-auth");
    }
    let mut etcd = Proc::spawn("etcd", &mut cmd, out.join(format!("etcd-{run}.log")))?;
    let addr: SocketAddr = format!("127.0.0.1:{client}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        etcd.check_alive()?;
        let healthy = match tls {
            None => http_get(addr, "/health").is_ok_and(|(s, b)| s == 200 && b.contains("true")),
            Some(pki) => tls_handshake(addr, pki),
        };
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

/// Whether a TLS handshake with `addr`, checked against `<pki>/etcd-ca.crt` and with the
/// client certificate `<pki>/node1.crt`, completes (`openssl s_client`).
fn tls_handshake(addr: SocketAddr, pki: &Path) -> bool {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-brief", "-verify_return_error", "-connect"])
        .arg(addr.to_string())
        .arg("-CAfile")
        .arg(pki.join("etcd-ca.crt"))
        .arg("-cert")
        .arg(pki.join("node1.crt"))
        .arg("-key")
        .arg(pki.join("node1.key"))
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    cmd.status().is_ok_and(|s| s.success())
}

/// `cfg`'s TOML with a `[cluster]` section: etcd on 127.0.0.1:`etcd_port` (unless `extra`
/// names `etcd_endpoints`), a lease of
/// `ttl_secs`, the node-to-node listener on the node's own address (port 0: any free one)
/// unless `extra` names one, and the `extra` lines.
pub fn cluster_toml(cfg: &NodeConfig, etcd_port: u16, ttl_secs: u64, extra: &str) -> String {
    let extra_lines: Vec<String> = extra.lines().map(str::to_string).collect();
    // On 127.0.0.1 this is the node's default; elsewhere it keeps the node's replication
    // traffic (and the liveness check of a dead node's address) on the node's address.
    let listen = if sets_key(&extra_lines, "listen") {
        String::new()
    } else {
        format!("listen = \"{}:0\"\n", cfg.ip)
    };
    let endpoints = if sets_key(&extra_lines, "etcd_endpoints") {
        String::new()
    } else {
        format!("etcd_endpoints = [\"http://127.0.0.1:{etcd_port}\"]\n")
    };
    format!(
        "{}\n[cluster]\n{endpoints}lease_ttl_secs = {ttl_secs}\n{listen}{extra}",
        cfg.to_toml()
    )
}

/// Starts a clustered node (see [`cluster_toml`]) with its files in `<out>/<cfg.id>/`;
/// returns it and its admin API's address.
pub fn start_clustered(
    out: &Path,
    cfg: &NodeConfig,
    etcd_port: u16,
    ttl_secs: u64,
    extra: &str,
) -> Result<(Node, String)> {
    let toml = cluster_toml(cfg, etcd_port, ttl_secs, extra);
    let dir = out.join(&cfg.id);
    std::fs::create_dir_all(&dir)?;
    let admin = cfg.admin_addr().to_string();
    Ok((Node::start_toml(cfg, &toml, &dir)?, admin))
}

/// `trunkctl node list` of the node whose admin API is `admin`.
pub fn nodes(admin: &str) -> Result<Value> {
    trunkctl_json(admin, &["node", "list"])
}

/// The ids and states a `node list` answer names.
pub fn view(v: &Value) -> Vec<(String, String)> {
    field_pairs(&v["nodes"], "id", "state")
}

/// Fields `a` and `b` (as strings, empty when absent) of each object of the JSON array
/// `list`.
fn field_pairs(list: &Value, a: &str, b: &str) -> Vec<(String, String)> {
    let text = |item: &Value, key: &str| item[key].as_str().unwrap_or("").to_string();
    list.as_array()
        .map(|items| items.iter().map(|i| (text(i, a), text(i, b))).collect())
        .unwrap_or_default()
}

/// Waits until `admin` lists exactly `want` (id, state without its `NODE_STATE_` prefix),
/// returning how long it took.
pub fn converge(admin: &str, want: &[(&str, &str)], limit: Duration) -> Result<Duration> {
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

/// SIGKILL to the node's process (by its PID): it dies without revoking its lease or
/// saying goodbye to anyone. The `Node` guard reaps it when dropped.
pub fn kill9(node: &Node) {
    if let Some(pid) = node.pid() {
        signal(pid, "KILL");
    }
}

/// SIGTERM to the node's process (by its PID), once, without waiting: it starts its drain
/// (and in a cluster hands its calls over at the deadline) while the test watches the
/// others. [`Node::wait_exit`] reads its exit status; a second SIGTERM would cut the drain
/// short, so this is not [`Node::stop`].
pub fn sigterm(node: &Node) {
    if let Some(pid) = node.pid() {
        signal(pid, "TERM");
    }
}

/// An unlabelled sample of `node`'s metrics, or -1 when it cannot be read (a dead or
/// stopped node), which never equals a count a test waits for.
pub fn metric(node: &Node, name: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get(name, &[]))
        .unwrap_or(-1.0)
}

/// The trunk addresses `admin` lists, by name.
pub fn trunks(admin: &str) -> Result<Vec<(String, String)>> {
    let v = trunkctl_json(admin, &["trunks", "list"])?;
    let mut out = field_pairs(&v["trunks"], "name", "address");
    out.sort();
    Ok(out)
}

/// Waits until `admin` lists exactly the trunks `want` (name, address; sorted),
/// returning how long it took.
pub fn wait_trunks(admin: &str, want: &[(String, String)], limit: Duration) -> Result<Duration> {
    let start = Instant::now();
    let mut last = Vec::new();
    while start.elapsed() < limit {
        last = trunks(admin)?;
        if last == want {
            return Ok(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("{admin} never listed trunks {want:?} within {limit:?}; last: {last:?}")
}

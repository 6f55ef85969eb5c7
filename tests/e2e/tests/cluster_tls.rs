//! Node-to-node gRPC over mutual TLS (`[cluster] tls_cert_file`, `tls_key_file`,
//! `tls_ca_file`), certificates made here with the `openssl` CLI. A generic gRPC client
//! (grpcio) reaches a node's Ping only with a certificate of the cluster's CA: plain text,
//! TLS without a client certificate, and a certificate of another CA are refused. Two
//! nodes replicate calls over it, and when the owner dies its buddy (which probes the dead
//! address over TLS) adopts them and the calls end through it.

use anyhow::{bail, ensure, Context, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use trunkline_e2e::cluster::{converge, kill9, metric, start_clustered, start_etcd};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::pki::{make_ca, make_cert};
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, rtp_caller};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CALLS: u64 = 10;
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];
const NODE_EXT: &str = "subjectAltName=DNS:trunkline-cluster\n\
                        extendedKeyUsage=serverAuth,clientAuth\n";

/// `tests/grpc/ping_node.py` against `addr` with `tls` (CA, and optionally cert and key):
/// its one line of output.
fn ping(addr: &str, tls: &[&Path]) -> Result<String> {
    let script = workspace_root()
        .join("tests")
        .join("grpc")
        .join("ping_node.py");
    let out = Command::new(grpc_python()?)
        .arg(&script)
        .arg(addr)
        .args(tls)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
    ensure!(
        line.starts_with("OK ") || line.starts_with("ERROR "),
        "ping_node.py {addr}: {} {line} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(line)
}

#[test]
fn nodes_talk_over_mutual_tls_only_and_adopt_calls_through_it() -> Result<()> {
    let out = out_dir("cluster_tls")?;
    let pki = out.join("pki");
    std::fs::create_dir_all(&pki)?;
    make_ca(&pki, "cluster")?;
    make_ca(&pki, "rogue")?;
    make_cert(&pki, "cluster", "node1", NODE_EXT)?;
    make_cert(&pki, "cluster", "node2", NODE_EXT)?;
    make_cert(&pki, "rogue", "intruder", NODE_EXT)?;
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
    let mut cluster_addrs = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, uas_builder.addr()?, Transport::Udp)?;
        cfg.id = format!("tls{}x{run}", i + 1);
        let listen = format!("{ip}:{}", free_port(ip)?);
        let name = format!("node{}", i + 1);
        let extra = format!(
            "listen = \"{listen}\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
             tls_ca_file = \"{}\"\n",
            pki.join(format!("{name}.crt")).display(),
            pki.join(format!("{name}.key")).display(),
            pki.join("cluster-ca.crt").display()
        );
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, &extra)?;
        nodes.push((node, admin));
        ids.push(cfg.id);
        cluster_addrs.push(listen);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for (_, admin) in &nodes {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let (owner, buddy) = match &nodes[..] {
        [a, b] => (&a.0, &b.0),
        _ => bail!("two nodes were started"),
    };

    // Who may talk to the buddy's node-to-node listener.
    let target = cluster_addrs[1].as_str();
    let ca = pki.join("cluster-ca.crt");
    let plain = ping(target, &[])?;
    ensure!(
        plain.starts_with("ERROR "),
        "plain text was served: {plain}"
    );
    let anonymous = ping(target, &[&ca])?;
    ensure!(
        anonymous.starts_with("ERROR "),
        "TLS without a client certificate was served: {anonymous}"
    );
    let rogue = ping(
        target,
        &[&ca, &pki.join("intruder.crt"), &pki.join("intruder.key")],
    )?;
    ensure!(
        rogue.starts_with("ERROR "),
        "a certificate of another CA was served: {rogue}"
    );
    let member = ping(
        target,
        &[&ca, &pki.join("node1.crt"), &pki.join("node1.key")],
    )?;
    ensure!(
        member == format!("OK {}", ids[1]),
        "a member's certificate was not served: {member}"
    );

    // Calls through the owner are held by the buddy, over TLS.
    let a_mp = free_udp_block(UAC_IP, 4)?;
    let mut uac = rtp_caller("uac_adopted.xml", owner.sip_addr(), a_mp)
        .calls(CALLS)
        .rate(10)
        .duration_ms(2_000)
        .timeout_secs(90)
        .arg("-s")
        .arg("15550123")
        .spawn(&out)?;
    let want = CALLS as f64;
    owner.wait_metrics(Duration::from_secs(30), |m| {
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

    // The owner dies; the buddy's probe of its address (over TLS) finds it silent.
    kill9(owner);
    let killed = Instant::now();
    let adopted = wait_until(Duration::from_secs(TTL + 6), || {
        metric(buddy, "trunkline_cluster_calls_adopted_total") == want
    });
    ensure!(
        adopted,
        "the buddy adopted {} of {CALLS} calls",
        metric(buddy, "trunkline_cluster_calls_adopted_total")
    );
    eprintln!(
        "all {CALLS} calls adopted over TLS {:?} after the kill",
        killed.elapsed()
    );
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    Ok(())
}

//! etcd over TLS (`[cluster] etcd_ca_file`, `etcd_cert_file`, `etcd_key_file`, `https://`
//! endpoints): a real etcd (Debian's `etcd-server`) serving its clients over TLS only and
//! requiring a client certificate its CA signed, certificates made here with `openssl`.
//! Two nodes with certificates of that CA join, see each other, and share a trunk change
//! made on one of them; a node with a certificate of another CA, one with no client
//! certificate and one that speaks plain text to the TLS port never become members.

use anyhow::{ensure, Result};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;
use trunkline_e2e::cluster::{converge, nodes, start_clustered, start_etcd_tls, view, wait_trunks};
use trunkline_e2e::pki::{make_ca, make_cert};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CLIENT_EXT: &str = "extendedKeyUsage=clientAuth\n";

fn tls_lines(client: u16, pki: &Path, identity: Option<&str>) -> String {
    let mut lines = format!(
        "etcd_endpoints = [\"https://127.0.0.1:{client}\"]\netcd_ca_file = \"{}\"\n",
        pki.join("etcd-ca.crt").display()
    );
    if let Some(name) = identity {
        lines.push_str(&format!(
            "etcd_cert_file = \"{}\"\netcd_key_file = \"{}\"\n",
            pki.join(format!("{name}.crt")).display(),
            pki.join(format!("{name}.key")).display()
        ));
    }
    lines
}

#[test]
fn nodes_reach_etcd_over_tls_with_a_certificate_of_its_ca_only() -> Result<()> {
    let out = out_dir("cluster_etcd_tls")?;
    let pki = out.join("pki");
    std::fs::create_dir_all(&pki)?;
    make_ca(&pki, "etcd")?;
    make_ca(&pki, "rogue")?;
    make_cert(
        &pki,
        "etcd",
        "etcd",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    for name in ["node1", "node2"] {
        make_cert(&pki, "etcd", name, CLIENT_EXT)?;
    }
    make_cert(&pki, "rogue", "intruder", CLIENT_EXT)?;
    let localhost = Ipv4Addr::LOCALHOST;
    let (client, peer) = (free_port(localhost)?, free_port(localhost)?);
    let _etcd = start_etcd_tls(&out, &out.join("etcd-data"), client, peer, &pki)?;

    let run = std::process::id() % 1_000_000;
    let trunk: std::net::SocketAddr = "127.0.0.3:5999".parse()?;
    let start = |i: u8, identity: Option<&str>, extra: &str| -> Result<(Node, String, String)> {
        let ip = Ipv4Addr::new(127, 0, 0, 10 + i);
        let mut cfg = NodeConfig::on_ip(ip, trunk, Transport::Udp)?;
        cfg.id = format!("etls{i}x{run}");
        let lines = if extra.is_empty() {
            tls_lines(client, &pki, identity)
        } else {
            extra.to_string()
        };
        let (node, admin) = start_clustered(&out, &cfg, client, TTL, &lines)?;
        Ok((node, admin, cfg.id))
    };

    let (_n1, admin1, id1) = start(1, Some("node1"), "")?;
    let (_n2, admin2, id2) = start(2, Some("node2"), "")?;
    let members = [(id1.as_str(), "ACTIVE"), (id2.as_str(), "ACTIVE")];
    for admin in [&admin1, &admin2] {
        let took = converge(admin, &members, Duration::from_secs(15))?;
        eprintln!("{admin}: both members seen after {took:?}");
    }

    // The shared configuration travels over TLS too: a trunk added on one node is in
    // force on the other.
    let file = out.join("trunks.toml");
    std::fs::write(
        &file,
        "[[trunks]]\nname = \"over-tls\"\naddress = \"127.0.0.3:5998\"\ntransport = \"udp\"\n",
    )?;
    let (code, _, err) = trunkctl_at(
        &admin1,
        &["trunks", "apply", "-f", &file.display().to_string()],
    )?;
    ensure!(code == 0, "trunks apply on node 1: {code} {err}");
    let want = vec![
        ("carrier".to_string(), trunk.to_string()),
        ("over-tls".to_string(), "127.0.0.3:5998".to_string()),
    ];
    let took = wait_trunks(&admin2, &want, Duration::from_secs(5))?;
    eprintln!("node 2 had node 1's trunk after {took:?}");

    // Three that etcd must turn away: another CA's certificate, none, plain text.
    let (n3, _, _) = start(3, Some("intruder"), "")?;
    let (n4, _, _) = start(4, None, "")?;
    let plain = format!("etcd_endpoints = [\"http://127.0.0.1:{client}\"]\n");
    let (n5, _, _) = start(5, None, &plain)?;
    // Long enough for each to have tried (and retried) its registration.
    std::thread::sleep(Duration::from_secs(TTL + 2));
    let seen = view(&nodes(&admin1)?);
    ensure!(
        seen.len() == 2,
        "etcd let in a node it should have refused: node 1 sees {seen:?}"
    );
    converge(&admin1, &members, Duration::from_secs(1))?;
    for node in [&n3, &n4, &n5] {
        let log = std::fs::read_to_string(&node.log).unwrap_or_default();
        ensure!(
            log.contains("cannot register in etcd"),
            "{} did not log that etcd refused it:\n{}",
            node.config.id,
            tail(&node.log, 20)
        );
    }
    Ok(())
}

//! The admin API over TLS with client certificates (`[admin] tls_cert_file`,
//! `tls_key_file`, `tls_client_ca_file`), certificates made here with the `openssl` CLI:
//! `trunkctl` with the CA and a client certificate from the configured CA is served (and
//! its operator action logged under the certificate's fingerprint); no client
//! certificate, one from another CA, an untrusted server, and plain text are all refused;
//! a certificate file that is not PEM stops the node at start, naming the key.

use anyhow::{ensure, Result};
use std::net::UdpSocket;
use std::time::Duration;
use trunkline_e2e::pki::{make_ca, make_cert};
use trunkline_e2e::*;

#[test]
fn the_admin_api_over_mutual_tls_serves_only_clients_of_its_ca() -> Result<()> {
    let out = out_dir("admin_tls")?;
    let pki = out.join("pki");
    std::fs::create_dir_all(&pki)?;
    make_ca(&pki, "ops")?;
    make_ca(&pki, "rogue")?;
    make_cert(
        &pki,
        "ops",
        "node",
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    make_cert(&pki, "ops", "client", "extendedKeyUsage=clientAuth\n")?;
    make_cert(&pki, "rogue", "intruder", "extendedKeyUsage=clientAuth\n")?;
    let p = |f: &str| pki.join(f).display().to_string();

    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = format!("tls{}", std::process::id() % 1_000_000);
    let admin_section = format!("[admin]\nlisten = \"{}\"", cfg.admin_addr());
    let tls_admin = format!(
        "{admin_section}\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\ntls_client_ca_file = \"{}\"",
        p("node.crt"),
        p("node.key"),
        p("ops-ca.crt")
    );
    let toml = cfg.to_toml().replace(&admin_section, &tls_admin);
    ensure!(
        toml.contains("tls_client_ca_file"),
        "the test did not set TLS"
    );
    let node = Node::start_toml(&cfg, &toml, &out)?;
    let admin = cfg.admin_addr().to_string();

    let ctl = |extra: &[&str], args: &[&str]| -> Result<(i32, String, String)> {
        let mut all = vec!["--server", admin.as_str()];
        all.extend_from_slice(extra);
        all.extend_from_slice(args);
        trunkctl(&all, &[])
    };
    let (ca, cert, key) = (p("ops-ca.crt"), p("client.crt"), p("client.key"));
    let trusted = [
        "--ca",
        ca.as_str(),
        "--cert",
        cert.as_str(),
        "--key",
        key.as_str(),
    ];

    let (code, out_text, err) = ctl(&trusted, &["node", "get", "-o", "json"])?;
    ensure!(code == 0, "a client of the CA was refused: {code} {err}");
    ensure!(out_text.contains(&cfg.id), "node get: {out_text}");
    let (code, _, err) = ctl(&trusted, &["node", "drain"])?;
    ensure!(code == 0, "drain over mTLS: {code} {err}");
    let logged = wait_until(Duration::from_secs(5), || {
        node.log_text()
            .lines()
            .any(|l| l.contains("drain") && l.contains("cert:"))
    });
    ensure!(
        logged,
        "the drain is not logged with the client certificate:\n{}",
        node.log_text()
    );
    let (code, _, err) = ctl(&trusted, &["node", "undrain"])?;
    ensure!(code == 0, "undrain over mTLS: {code} {err}");

    // Everything else is refused.
    let (rogue_cert, rogue_key) = (p("intruder.crt"), p("intruder.key"));
    let rogue_ca = p("rogue-ca.crt");
    let refused: [(&str, Vec<&str>); 4] = [
        ("no client certificate", vec!["--ca", ca.as_str()]),
        (
            "a client certificate of another CA",
            vec![
                "--ca",
                ca.as_str(),
                "--cert",
                rogue_cert.as_str(),
                "--key",
                rogue_key.as_str(),
            ],
        ),
        (
            "a node certificate the client does not trust",
            vec![
                "--ca",
                rogue_ca.as_str(),
                "--cert",
                cert.as_str(),
                "--key",
                key.as_str(),
            ],
        ),
        ("plain text", vec![]),
    ];
    for (what, extra) in refused {
        let (code, out_text, err) = ctl(&extra, &["node", "get"])?;
        ensure!(
            code == 1 && !out_text.contains(&cfg.id),
            "{what}: trunkctl exited {code}: {out_text} {err}"
        );
    }
    // And the node still serves its own clients.
    let (code, _, err) = ctl(&trusted, &["calls", "list"])?;
    ensure!(code == 0, "after the refusals: {code} {err}");
    drop(node);

    // A certificate file that is not PEM: the node does not start, and says which key.
    std::fs::write(pki.join("broken.crt"), "not a certificate\n")?;
    let broken = toml.replace(&p("node.crt"), &p("broken.crt"));
    let mut cfg2 = cfg.clone();
    cfg2.admin_port = free_port(NODE_IP)?;
    cfg2.sip_port = free_port(NODE_IP)?;
    cfg2.metrics_port = free_port(NODE_IP)?;
    let broken = broken
        .replace(
            &cfg.admin_addr().to_string(),
            &cfg2.admin_addr().to_string(),
        )
        .replace(&cfg.sip_addr().to_string(), &cfg2.sip_addr().to_string())
        .replace(
            &cfg.metrics_addr().to_string(),
            &cfg2.metrics_addr().to_string(),
        );
    std::fs::create_dir_all(out.join("broken"))?;
    let err = match Node::start_toml(&cfg2, &broken, &out.join("broken")) {
        Ok(mut n) => {
            let _ = n.stop();
            anyhow::bail!("the node started with a broken admin certificate");
        }
        Err(e) => format!("{e:#}"),
    };
    ensure!(
        err.contains("admin.tls_cert_file"),
        "start-up failed without naming admin.tls_cert_file: {err}"
    );
    Ok(())
}

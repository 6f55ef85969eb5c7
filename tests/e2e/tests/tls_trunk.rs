//! SIP over TLS with a carrier: Kamailio with its tls module (tests/tls/kamailio-tls.cfg)
//! stands between the node and SIPp, as a carrier's TLS edge would.
//!
//! - Calls come in from the carrier over TLS to the node's `sip.tls` listener (the
//!   carrier's client certificate required and checked for its name) and go out to it over
//!   TLS (its server certificate checked against the test CA and the trunk's
//!   `server_name`).
//! - Mutual TLS: a carrier that requires client certificates refuses the node until the
//!   trunk presents one. The node's Via asks the carrier to reuse the node's connection
//!   (RFC 5923 `alias`), and it does: one connection carries both directions.
//! - The carrier's address is the carrier over TLS only: an INVITE over UDP from it
//!   (forged, as UDP sources can be) gets 403 and places no call.
//! - A carrier whose certificate is not for the trunk's name is refused both ways: the
//!   node does not call over a connection to it, and a connection from it that shows that
//!   certificate as a client is closed; no call crosses.

use anyhow::{ensure, Context, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use trunkline_e2e::child::Proc;
use trunkline_e2e::pki::{make_ca, make_cert};
use trunkline_e2e::*;

/// The carrier's address (Kamailio's TLS and UDP sockets).
const CARRIER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);
/// Where the callees (SIPp) are.
const CALLEE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

fn kamailio_cfg() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("tls")
        .join("kamailio-tls.cfg")
}

/// The test PKI in `out`: CA "test", the carrier's certificate (carrier.test and its IP)
/// and the node's (node.test and 127.0.0.1).
fn pki(out: &Path) -> Result<()> {
    make_ca(out, "test")?;
    make_cert(
        out,
        "test",
        "carrier",
        &format!(
            "subjectAltName=DNS:carrier.test,IP:{CARRIER_IP}\nextendedKeyUsage=serverAuth,clientAuth\n"
        ),
    )?;
    make_cert(
        out,
        "test",
        "node",
        "subjectAltName=DNS:node.test,IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n",
    )
}

/// A running carrier: Kamailio with TLS on `tls` and UDP on `udp`.
struct Carrier {
    proc: Proc,
    tls: SocketAddr,
    udp: SocketAddr,
}

/// Starts Kamailio: new calls from the node go to `callee`, new calls from elsewhere go
/// to `node_tls`; with `require_client_cert`, TLS clients must present a certificate from
/// the test CA. It presents its own certificate as a client too.
fn carrier(
    out: &Path,
    callee: SocketAddr,
    node_tls: SocketAddr,
    require_client_cert: bool,
) -> Result<Carrier> {
    let d = out.display();
    let verify = if require_client_cert { "yes" } else { "no" };
    std::fs::write(
        out.join("kamailio-tls-module.cfg"),
        format!(
            "[server:default]\nmethod = TLSv1.2+\nverify_certificate = {verify}\n\
             require_certificate = {verify}\nprivate_key = {d}/carrier.key\n\
             certificate = {d}/carrier.crt\nca_list = {d}/test-ca.crt\n\n\
             [client:default]\nmethod = TLSv1.2+\nverify_certificate = yes\n\
             require_certificate = yes\nprivate_key = {d}/carrier.key\n\
             certificate = {d}/carrier.crt\nca_list = {d}/test-ca.crt\n"
        ),
    )?;
    let tls = SocketAddr::new(IpAddr::V4(CARRIER_IP), free_port(CARRIER_IP)?);
    let udp = SocketAddr::new(IpAddr::V4(CARRIER_IP), free_port(CARRIER_IP)?);
    let mut proc = Proc::spawn(
        "kamailio",
        Command::new("kamailio")
            .arg("-f")
            .arg(kamailio_cfg())
            .args(["-DD", "-E", "-m", "64", "-M", "8"])
            .arg("-Y")
            .arg(out)
            .arg("-A")
            .arg(format!(
                "TLS_CFG=\"{}\"",
                out.join("kamailio-tls-module.cfg").display()
            ))
            .arg("-A")
            .arg(format!("KAM_TLS=tls:{tls}"))
            .arg("-A")
            .arg(format!("KAM_UDP=udp:{udp}"))
            .arg("-A")
            .arg(format!("CALLEE=\"sip:{callee}\""))
            .arg("-A")
            .arg(format!("NODE=\"sip:{node_tls};transport=tls\""))
            .arg("-A")
            .arg(format!(
                "CTL_SOCK=\"unix:{}\"",
                out.join("kamailio_ctl").display()
            )),
        out.join("kamailio.log"),
    )?;
    // Its own process bound the TLS port: taken while it runs (it was free before).
    let bound = wait_until(Duration::from_secs(10), || {
        TcpListener::bind(tls).is_err() || !proc.alive()
    });
    proc.check_alive()?;
    ensure!(
        bound,
        "kamailio never bound {tls}; log:\n{}",
        tail(&proc.log, 30)
    );
    std::thread::sleep(Duration::from_millis(500)); // its children start after the bind
    Ok(Carrier { proc, tls, udp })
}

/// The node's TOML: a TLS listener serving the node's certificate, trunk "carrier" over
/// TLS with `trunk_tls` as its `[trunks.tls]`, and trunk "pbx" (UDP, route "+1") for
/// calls that come in from the carrier.
fn node(
    out: &Path,
    carrier: SocketAddr,
    pbx: SocketAddr,
    trunk_tls: &str,
    sip_tls: &[&str],
    tls_addr: SocketAddr,
) -> Result<Node> {
    let d = out.display();
    let mut cfg = NodeConfig::new(carrier, Transport::Udp)?;
    cfg.sip_extra.extend([
        format!("tls = [\"{tls_addr}\"]"),
        format!("tls_cert_file = \"{d}/node.crt\""),
        format!("tls_key_file = \"{d}/node.key\""),
    ]);
    cfg.sip_extra.extend(sip_tls.iter().map(|l| l.to_string()));
    let toml = cfg.to_toml();
    let toml = toml
        .replace(
            &format!("address = \"{carrier}\"\ntransport = \"udp\"\n"),
            &format!(
                "address = \"{carrier}\"\ntransport = \"tls\"\n\n[trunks.tls]\n\
                 ca_file = \"{d}/test-ca.crt\"\n{trunk_tls}\n"
            ),
        )
        .replace(
            "[routing]",
            &format!(
                "[[trunks]]\nname = \"pbx\"\naddress = \"{pbx}\"\n\n\
                 [[routes]]\nprefix = \"+1\"\ntrunk = \"pbx\"\n\n[routing]"
            ),
        );
    let node = Node::start_toml(&cfg, &toml, out)?;
    // The node's own process has the TLS port.
    ensure!(
        TcpListener::bind(tls_addr).is_err(),
        "the node does not hold its TLS port {tls_addr}"
    );
    Ok(node)
}

/// A port on the node's address for its TLS listener: chosen before the carrier starts,
/// which needs to know where to send calls.
fn node_tls_addr() -> Result<SocketAddr> {
    Ok(SocketAddr::new(IpAddr::V4(NODE_IP), free_port(NODE_IP)?))
}

/// A callee (SIPp UAS) on the callees' address taking `calls` calls.
fn start_callee(out: &Path, name: &str, calls: u64) -> Result<(SippRun, SocketAddr)> {
    let s = Sipp::uas("uas_basic.xml")
        .name(name)
        .local_ip(CALLEE_IP)
        .calls(calls)
        .timeout_secs(60)
        .resolve_port()?;
    let addr = s.addr()?;
    Ok((s.spawn(out)?, addr))
}

fn tls_connections(node: &Node, direction: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| {
            m.get(
                "trunkline_transport_connections_total",
                &[("transport", "tls"), ("direction", direction)],
            )
        })
        .unwrap_or(0.0)
}

fn tls_refusals(node: &Node) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| {
            m.get(
                "trunkline_transport_dropped_total",
                &[("reason", "tls_handshake")],
            )
        })
        .unwrap_or(0.0)
}

/// Two calls from SIPp through the node to the carrier, expected to be answered or not.
fn call_out(node: &Node, out: &Path, name: &str, ok: bool) -> Result<()> {
    let r = Sipp::uac("uac_basic.xml", node.sip_addr())
        .name(name)
        .calls(2)
        .rate(5)
        .duration_ms(300)
        .timeout_secs(20)
        .spawn(out)?
        .wait(Duration::from_secs(30))?;
    if ok {
        r.assert_all_ok(2)
    } else {
        ensure!(
            r.successful == Some(0),
            "{name}: {:?} calls got through a carrier that should be refused",
            r.successful
        );
        Ok(())
    }
}

/// Two calls from SIPp through the carrier, over TLS to the node and on to the PBX
/// (route "+1"), all answered.
fn call_in(kam: &Carrier, pbx: &mut SippRun, out: &Path) -> Result<()> {
    Sipp::uac("uac_basic.xml", kam.udp)
        .name("in")
        .calls(2)
        .rate(5)
        .duration_ms(300)
        .timeout_secs(20)
        .arg("-s")
        .arg("+15550100")
        .spawn(out)?
        .wait(Duration::from_secs(30))?
        .assert_all_ok(2)
        .with_context(|| format!("carrier log:\n{}", tail(&kam.proc.log, 20)))?;
    pbx.wait(Duration::from_secs(30))?.assert_all_ok(2)
}

#[test]
fn calls_cross_a_tls_carrier_both_ways() -> Result<()> {
    let out = out_dir("tls_trunk")?;
    pki(&out)?;
    let (mut callee, callee_addr) = start_callee(&out, "callee", 2)?;
    let (mut pbx, pbx_addr) = start_callee(&out, "pbx", 2)?;
    let node_tls = node_tls_addr()?;
    let kam = carrier(&out, callee_addr, node_tls, false)?;
    // The carrier's own connections must show its certificate (it does: the tls
    // module's client side presents it).
    let d = out.display();
    // The callers of `call_out` (SIPp on 127.0.0.2) are the access network; the carrier's
    // address is not in it, so only the trunk rule can make it trusted.
    let node = node(
        &out,
        kam.tls,
        pbx_addr,
        "server_name = \"carrier.test\"\nrequire_client_cert = true",
        &[
            &format!("tls_client_ca_file = \"{d}/test-ca.crt\""),
            "access_sources = [\"127.0.0.1\", \"127.0.0.2\"]",
        ],
        node_tls,
    )?;

    // In first: caller → carrier → TLS (the carrier connects to the node's listener)
    // → node → pbx.
    call_in(&kam, &mut pbx, &out)?;
    ensure!(
        tls_connections(&node, "inbound") >= 1.0,
        "no inbound TLS connection counted"
    );

    // An INVITE over UDP from the carrier's address is not the carrier's (a UDP source
    // costs nothing to forge): refused, and no call reaches the PBX.
    Sipp::uac("uac_forbidden.xml", node.sip_addr())
        .name("forged")
        .local_ip(CARRIER_IP)
        .calls(2)
        .rate(5)
        .timeout_secs(20)
        .arg("-s")
        .arg("+15550199")
        .spawn(&out)?
        .wait(Duration::from_secs(30))?
        .assert_all_ok(2)
        .context("a UDP INVITE from the TLS carrier's address must get 403")?;

    // Then out: node → TLS → carrier → callee.
    call_out(&node, &out, "out", true)?;
    callee.wait(Duration::from_secs(30))?.assert_all_ok(2)?;
    eprintln!(
        "TLS connections: {} inbound, {} outbound",
        tls_connections(&node, "inbound"),
        tls_connections(&node, "outbound")
    );
    Ok(())
}

#[test]
fn mutual_tls_is_required_by_the_carrier_and_checked_by_the_node() -> Result<()> {
    let out = out_dir("tls_trunk_mutual")?;
    pki(&out)?;
    let (mut callee, callee_addr) = start_callee(&out, "callee", 2)?;
    let (mut pbx, pbx_addr) = start_callee(&out, "pbx", 2)?;
    let node_tls = node_tls_addr()?;
    let kam = carrier(&out, callee_addr, node_tls, true)?;
    let d = out.display();

    // No client certificate: the carrier refuses the handshake; no call gets through.
    let plain = node(
        &out,
        kam.tls,
        pbx_addr,
        "server_name = \"carrier.test\"",
        &[],
        node_tls,
    )?;
    call_out(&plain, &out, "no_cert", false)?;
    drop(plain);

    // With the node's certificate as the trunk's client certificate, and the node in turn
    // requiring the carrier's (from the test CA, for carrier.test): both ways work.
    let node = node(
        &out,
        kam.tls,
        pbx_addr,
        &format!(
            "server_name = \"carrier.test\"\ncert_file = \"{d}/node.crt\"\n\
             key_file = \"{d}/node.key\"\nrequire_client_cert = true"
        ),
        &[&format!("tls_client_ca_file = \"{d}/test-ca.crt\"")],
        node_tls,
    )?;
    call_out(&node, &out, "with_cert", true)?;
    callee.wait(Duration::from_secs(30))?.assert_all_ok(2)?;
    call_in(&kam, &mut pbx, &out)?;
    ensure!(
        tls_refusals(&node) == 0.0,
        "the carrier's certificate was refused"
    );
    // The node's Via asks for its connection to be reused (RFC 5923 `alias`): the
    // carrier's calls came back over it instead of a connection of the carrier's.
    let (inbound, outbound) = (
        tls_connections(&node, "inbound"),
        tls_connections(&node, "outbound"),
    );
    ensure!(
        outbound == 1.0 && inbound == 0.0,
        "one TLS connection both ways expected: {outbound} outbound, {inbound} inbound"
    );
    Ok(())
}

#[test]
fn a_carrier_whose_certificate_is_for_another_name_is_refused() -> Result<()> {
    let out = out_dir("tls_trunk_mismatch")?;
    pki(&out)?;
    let (mut callee, callee_addr) = start_callee(&out, "callee", 1)?;
    let (mut pbx, pbx_addr) = start_callee(&out, "pbx", 1)?;
    let node_tls = node_tls_addr()?;
    let kam = carrier(&out, callee_addr, node_tls, false)?;
    let d = out.display();
    let node = node(
        &out,
        kam.tls,
        pbx_addr,
        "server_name = \"other-carrier.test\"\nrequire_client_cert = true",
        &[&format!("tls_client_ca_file = \"{d}/test-ca.crt\"")],
        node_tls,
    )?;
    call_out(&node, &out, "mismatch", false)?;
    ensure!(
        tls_refusals(&node) >= 1.0,
        "no refused TLS handshake counted"
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    ensure!(
        log.contains("other-carrier.test") || log.contains("NotValidForName"),
        "the node's log does not say why the carrier was refused:\n{}",
        tail(&node.log, 20)
    );
    // Nothing reached the callee behind the carrier.
    let c = callee.wait(Duration::from_secs(5));
    ensure!(
        c.map(|r| r.successful != Some(1)).unwrap_or(true),
        "a call reached the carrier's callee"
    );

    // Inbound: the carrier opens its own TLS connection (there is none of the node's to
    // reuse) and shows its certificate, chained to the CA the node trusts but for
    // carrier.test: the node closes the connection and no call reaches the PBX.
    let r = Sipp::uac("uac_basic.xml", kam.udp)
        .name("in_mismatch")
        .calls(1)
        .timeout_secs(40)
        .arg("-s")
        .arg("+15550100")
        .spawn(&out)?
        .wait(Duration::from_secs(60))?;
    ensure!(
        r.successful == Some(0),
        "a call from a carrier with another name's certificate got through"
    );
    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
    ensure!(
        log.contains("client certificate is not for other-carrier.test"),
        "the node's log does not say why the carrier's connection was closed:\n{}",
        tail(&node.log, 20)
    );
    let p = pbx.wait(Duration::from_secs(5));
    ensure!(
        p.map(|r| r.successful != Some(1)).unwrap_or(true),
        "a call from the refused carrier reached the PBX"
    );
    Ok(())
}

//! Owner routing: an in-dialog request that reaches a node of the cluster other than the
//! one that owns its call (a load balancer spreading SIP over the nodes) is forwarded to
//! the owner over the cluster service, handled there, and answered through the node the
//! request was sent to: over UDP from that node's socket, over TCP on the very
//! connection the request came on.

use anyhow::{bail, ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;
use trunkline_e2e::child::Proc;
use trunkline_e2e::cluster::{converge, metric, start_clustered, start_etcd};
use trunkline_e2e::scripted::{self, SipStream};
use trunkline_e2e::*;

const TTL: u64 = 4;
const CALLS: u64 = 10;
const NODE_IPS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)];

fn forwarded(node: &Node, direction: &str) -> f64 {
    node.metrics()
        .ok()
        .and_then(|m| m.get("trunkline_sip_forwarded_total", &[("direction", direction)]))
        .unwrap_or(0.0)
}

/// etcd and two clustered nodes routing to `trunk`, both seeing both as active.
struct Pair {
    _etcd: Proc,
    owner: Node,
    wrong: Node,
}

fn start_pair(out: &Path, name: &str, trunk: SocketAddr) -> Result<Pair> {
    let run = std::process::id() % 1_000_000;
    let (client, peer) = (free_port(NODE_IP)?, free_port(NODE_IP)?);
    let etcd = start_etcd(out, &out.join("etcd-data"), client, peer, 1)?;
    let mut nodes = Vec::new();
    let mut ids = Vec::new();
    for (i, ip) in NODE_IPS.into_iter().enumerate() {
        let mut cfg = NodeConfig::on_ip(ip, trunk, Transport::Udp)?;
        cfg.id = format!("{name}{}x{run}", i + 1);
        nodes.push(start_clustered(out, &cfg, client, TTL, "")?);
        ids.push(cfg.id);
    }
    let all: Vec<(&str, &str)> = ids.iter().map(|id| (id.as_str(), "ACTIVE")).collect();
    for (_, admin) in &nodes {
        converge(admin, &all, Duration::from_secs(10))?;
    }
    let mut nodes = nodes.into_iter().map(|(n, _)| n);
    match (nodes.next(), nodes.next()) {
        (Some(owner), Some(wrong)) => Ok(Pair {
            _etcd: etcd,
            owner,
            wrong,
        }),
        _ => bail!("two nodes were started"),
    }
}

#[test]
fn an_in_dialog_request_sent_to_the_wrong_node_reaches_the_owner_and_is_answered() -> Result<()> {
    let out = out_dir("cluster_strays")?;
    let uas_builder = Sipp::uas("uas_info.xml")
        .calls(CALLS)
        .timeout_secs(60)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let pair = start_pair(&out, "stray", uas_builder.addr()?)?;
    let (owner, wrong) = (&pair.owner, &pair.wrong);
    let stray = wrong.sip_addr();
    // Calls go to the owner; each INFO goes to the other node.
    let mut uac = Sipp::uac("uac_stray_info.xml", owner.sip_addr())
        .calls(CALLS)
        .rate(10)
        .timeout_secs(60)
        .arg("-key")
        .arg("stray_host")
        .arg(&stray.ip().to_string())
        .arg("-key")
        .arg("stray_port")
        .arg(&stray.port().to_string())
        .spawn(&out)?;
    uac.wait(Duration::from_secs(60))?.assert_all_ok(CALLS)?;
    uas.wait(Duration::from_secs(30))?.assert_all_ok(CALLS)?;
    // Every INFO went from the wrong node to the owner (retransmissions may add some).
    let (sent, got) = (forwarded(wrong, "out"), forwarded(owner, "in"));
    eprintln!("forwarded: {sent} sent by the wrong node, {got} received by the owner");
    if sent < CALLS as f64 || got < CALLS as f64 {
        bail!("{CALLS} INFOs went to the wrong node; it forwarded {sent}, the owner got {got}");
    }
    // The owner's 200s left from the node the caller sent the INFOs to.
    let through = wrong
        .metrics()
        .ok()
        .and_then(|m| m.get("trunkline_sip_sent_for_other_nodes_total", &[]))
        .unwrap_or(0.0);
    eprintln!("answers sent through the wrong node for the owner: {through}");
    if through < CALLS as f64 {
        bail!("the owner's answers to {CALLS} INFOs: {through} left through the node they were sent to");
    }
    Ok(())
}

/// A TCP caller whose call lives on one node sends its BYE over a new connection to the
/// other node: the owner gets it, the callee is hung up, and the 200 comes back on the
/// connection the BYE went out on, not on the first one.
#[test]
fn a_bye_over_tcp_to_the_wrong_node_is_answered_on_its_own_connection() -> Result<()> {
    let out = out_dir("cluster_strays_tcp")?;
    let uas_builder = Sipp::uas("uas_basic.xml")
        .calls(1)
        .timeout_secs(60)
        .resolve_port()?;
    let mut uas = uas_builder.clone().spawn(&out)?;
    let pair = start_pair(&out, "tstray", uas_builder.addr()?)?;
    let (owner, wrong) = (&pair.owner, &pair.wrong);

    let mut first = SipStream::connect(owner.sip_addr())?;
    let me = first.local()?;
    let call_id = format!("tcp-stray-{}@{}", std::process::id(), me.ip());
    let body = scripted::sdp(me.port() & !1);
    let invite = format!(
        "INVITE sip:15550123@{owner_addr} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {me};branch=z9hG4bK-ts-1;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{ip}>;tag=ts-caller\r\n\
         To: <sip:15550123@{owner_addr}>\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 INVITE\r\n\
         Contact: <sip:alice@{me};transport=tcp>\r\n\
         Content-Type: application/sdp\r\n\
         Content-Length: {len}\r\n\r\n{body}",
        owner_addr = owner.sip_addr(),
        ip = me.ip(),
        len = body.len(),
    );
    first.send(&invite)?;
    let mut seen = Vec::new();
    let ok = first
        .wait_for(Duration::from_secs(10), &mut seen, |m| {
            m.starts_with("SIP/2.0 200") && scripted::cseq_method(m) == "INVITE"
        })
        .with_context(|| format!("no 200 for the INVITE; saw {:?}", scripted::summary(&seen)))?;
    let to = header(&ok, "To", Some("t"))
        .context("200 without To")?
        .to_string();
    let target = header(&ok, "Contact", Some("m"))
        .and_then(|c| c.split('<').nth(1))
        .and_then(|c| c.split('>').next())
        .context("200 without Contact")?
        .to_string();
    first.send(&format!(
        "ACK {target} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {me};branch=z9hG4bK-ts-2;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{ip}>;tag=ts-caller\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 1 ACK\r\n\
         Content-Length: 0\r\n\r\n",
        ip = me.ip(),
    ))?;
    let forwarded_before = forwarded(wrong, "out");
    ensure!(
        forwarded_before == 0.0,
        "nothing was sent to the wrong node yet"
    );

    // The BYE goes to the other node over a connection of its own.
    let mut second = SipStream::connect(wrong.sip_addr())?;
    let me2 = second.local()?;
    second.send(&format!(
        "BYE {target} SIP/2.0\r\n\
         Via: SIP/2.0/TCP {me2};branch=z9hG4bK-ts-3;rport\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:alice@{ip}>;tag=ts-caller\r\n\
         To: {to}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: 2 BYE\r\n\
         Content-Length: 0\r\n\r\n",
        ip = me.ip(),
    ))?;
    let mut seen2 = Vec::new();
    let bye_ok = second.wait_for(Duration::from_secs(10), &mut seen2, |m| {
        scripted::cseq_method(m) == "BYE" && m.starts_with("SIP/2.0 ")
    });
    let bye_ok = bye_ok.with_context(|| {
        format!(
            "no answer to the BYE on its connection; saw {:?}",
            scripted::summary(&seen2)
        )
    })?;
    ensure!(
        bye_ok.starts_with("SIP/2.0 200"),
        "the BYE was answered {}",
        bye_ok.lines().next().unwrap_or("")
    );
    // Nothing for the BYE came on the first connection.
    let mut late = Vec::new();
    first.wait_for(Duration::from_millis(500), &mut late, |_| false);
    ensure!(
        !late.iter().any(|m| scripted::cseq_method(m) == "BYE"),
        "the BYE's answer came on the first connection: {:?}",
        scripted::summary(&late)
    );
    // The callee was hung up by the owner.
    uas.wait(Duration::from_secs(30))?.assert_all_ok(1)?;
    let (sent, got) = (forwarded(wrong, "out"), forwarded(owner, "in"));
    let through = metric(wrong, "trunkline_sip_sent_for_other_nodes_total");
    eprintln!("forwarded out {sent}, in {got}; sent through the wrong node {through}");
    ensure!(
        sent >= 1.0 && got >= 1.0 && through >= 1.0,
        "forwarded out {sent}, in {got}, sent for the owner {through}"
    );
    ensure!(
        wait_until(Duration::from_secs(5), || metric(
            owner,
            "trunkline_calls_active"
        ) == 0.0),
        "the owner still holds the call"
    );
    Ok(())
}

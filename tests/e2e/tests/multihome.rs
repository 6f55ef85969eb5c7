//! A node on two networks: callers reach it on one socket, its trunk on another, and each
//! socket has its own advertised address (as behind two NATs, or a public and a private
//! interface). Every message of a call must leave through the socket its leg belongs to,
//! with that socket's advertised address in Via and Contact — never the other network's.
//!
//! The advertised addresses (192.0.2.1 and 192.0.2.2, TEST-NET-1) are unroutable on
//! purpose: the scripted peers answer to the source address, so a message is only seen if
//! it came from the right socket, and its headers show which address it advertised.

use anyhow::{ensure, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;
use trunkline_e2e::scripted::{cseq_method, method, reply, sdp, summary, uri_host_port, wait_for};
use trunkline_e2e::*;

const ACCESS_ADVERTISE: &str = "192.0.2.1";
const TRUNK_ADVERTISE: &str = "192.0.2.2";
/// The node's second, trunk-facing address.
const TRUNK_SIDE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 4);

struct Setup {
    node: Node,
    /// The node's access-side socket (callers send here).
    access: SocketAddr,
    /// The node's trunk-side socket.
    trunk_side: SocketAddr,
    trunk: UdpSocket,
    caller: UdpSocket,
}

fn start(out: &std::path::Path) -> Result<Setup> {
    let trunk = UdpSocket::bind((UAS_IP, 0))?;
    let mut cfg = NodeConfig::new(trunk.local_addr()?, Transport::Udp)?;
    cfg.id = "multihome".into();
    let access = cfg.sip_addr();
    let trunk_side = SocketAddr::from((TRUNK_SIDE_IP, free_port(TRUNK_SIDE_IP)?));
    let toml = format!(
        "[node]\nid = \"multihome\"\n\n\
         [sip]\n\
         udp = [{{ listen = \"{access}\", advertise = \"{ACCESS_ADVERTISE}\" }}, \
                {{ listen = \"{trunk_side}\", advertise = \"{TRUNK_ADVERTISE}\" }}]\n\
         tcp = []\n\n\
         [metrics]\nlisten = \"{}\"\n\n\
         [admin]\nlisten = \"{}\"\n\n\
         [log]\nlevel = \"info\"\n\n\
         [[trunks]]\nname = \"carrier\"\naddress = \"{}\"\ntransport = \"udp\"\n\
         local_address = \"{trunk_side}\"\n\n\
         [routing]\ndefault_trunk = \"carrier\"\n",
        cfg.metrics_addr(),
        cfg.admin_addr(),
        trunk.local_addr()?,
    );
    let node = Node::start_toml(&cfg, &toml, out)?;
    Ok(Setup {
        node,
        access,
        trunk_side,
        trunk,
        caller: UdpSocket::bind((UAC_IP, 0))?,
    })
}

/// Checks that `msg` advertises `host` (with `port`) in its top Via and, if it has one,
/// its Contact.
fn advertises(msg: &str, host: &str, port: u16, what: &str) -> Result<()> {
    let want = format!("{host}:{port}");
    let via = header(msg, "Via", Some("v")).context("no Via")?;
    ensure!(
        uri_host_port(via).as_deref() == Some(want.as_str()),
        "{what}: top Via {via:?} does not advertise {want}"
    );
    if let Some(contact) = header(msg, "Contact", Some("m")) {
        ensure!(
            uri_host_port(contact).as_deref() == Some(want.as_str()),
            "{what}: Contact {contact:?} does not advertise {want}"
        );
    }
    Ok(())
}

/// The URI inside a Contact value, to address in-dialog requests as a UA does.
fn contact_uri(msg: &str) -> Result<String> {
    let c = header(msg, "Contact", Some("m")).context("no Contact")?;
    let (a, b) = (c.find('<'), c.find('>'));
    Ok(match (a, b) {
        (Some(a), Some(b)) if a < b => c[a + 1..b].to_string(),
        _ => c.split(';').next().unwrap_or(c).trim().to_string(),
    })
}

/// One established call; returns the caller's 200 and the trunk's INVITE.
fn establish(s: &Setup, n: u32) -> Result<(String, String, SocketAddr)> {
    let me = s.caller.local_addr()?;
    let access = s.access;
    let body = sdp(40200 + 2 * n as u16);
    let invite = format!(
        "INVITE sip:+15550100@{access} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmh{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=mh{n}\r\nTo: <sip:+15550100@{access}>\r\n\
         Call-ID: multihome-{n}@127.0.0.2\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@{me}>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.caller.send_to(invite.as_bytes(), access)?;
    let mut at_trunk = Vec::new();
    let (b_invite, from) = wait_for(&s.trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("INVITE")
    })
    .context("the trunk got no INVITE")?;
    ensure!(
        from == s.trunk_side,
        "INVITE toward the trunk left from {from}, not the trunk-side socket {}",
        s.trunk_side
    );
    advertises(
        &b_invite,
        TRUNK_ADVERTISE,
        s.trunk_side.port(),
        "INVITE to the trunk",
    )?;
    ensure!(
        !b_invite.contains(ACCESS_ADVERTISE),
        "the access side's address reached the trunk: {b_invite}"
    );
    let trunk_addr = s.trunk.local_addr()?.to_string();
    let answer = sdp(42200 + 2 * n as u16);
    s.trunk.send_to(
        reply(&b_invite, 200, &format!("t{n}"), &trunk_addr, Some(&answer)).as_bytes(),
        from,
    )?;
    let mut at_caller = Vec::new();
    let (ok, ok_from) = wait_for(&s.caller, Duration::from_secs(5), &mut at_caller, |m| {
        status_code(m) == Some(200) && cseq_method(m) == "INVITE"
    })
    .with_context(|| format!("the caller got no 200: {:?}", summary(&at_caller)))?;
    ensure!(
        ok_from == s.access,
        "the caller's 200 came from {ok_from}, not the access socket {}",
        s.access
    );
    for m in &at_caller {
        ensure!(
            !m.contains(TRUNK_ADVERTISE),
            "the trunk side's address reached the caller: {m}"
        );
    }
    let contact = header(&ok, "Contact", Some("m")).context("200 without Contact")?;
    ensure!(
        uri_host_port(contact).as_deref()
            == Some(format!("{ACCESS_ADVERTISE}:{}", s.access.port()).as_str()),
        "the caller's 200 has Contact {contact:?}, not the access side's advertised address"
    );
    // ACK to the Contact the node gave, through the socket the caller knows.
    let to = header(&ok, "To", Some("t")).context("200 without To")?;
    let ack = format!(
        "ACK {} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmhack{n};rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=mh{n}\r\nTo: {to}\r\n\
         Call-ID: multihome-{n}@127.0.0.2\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        contact_uri(&ok)?
    );
    s.caller.send_to(ack.as_bytes(), access)?;
    let (ack_b, ack_from) = wait_for(&s.trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("ACK")
    })
    .with_context(|| format!("the trunk's 200 was not ACKed: {:?}", summary(&at_trunk)))?;
    ensure!(ack_from == s.trunk_side, "ACK left from {ack_from}");
    advertises(
        &ack_b,
        TRUNK_ADVERTISE,
        s.trunk_side.port(),
        "ACK to the trunk",
    )?;
    Ok((ok, b_invite, from))
}

#[test]
fn each_leg_uses_its_own_socket_and_advertised_address() -> Result<()> {
    let out = out_dir("multihome_legs")?;
    let mut s = start(&out)?;
    let me = s.caller.local_addr()?;

    // Call 1: the caller hangs up.
    let (ok, _, _) = establish(&s, 1)?;
    let to = header(&ok, "To", Some("t")).context("200 without To")?;
    let bye = format!(
        "BYE {} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKmhbye1;rport\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{me}>;tag=mh1\r\nTo: {to}\r\n\
         Call-ID: multihome-1@127.0.0.2\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
        contact_uri(&ok)?
    );
    s.caller.send_to(bye.as_bytes(), s.access)?;
    let mut at_trunk = Vec::new();
    let (bye_b, bye_from) = wait_for(&s.trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        method(m) == Some("BYE")
    })
    .with_context(|| format!("the trunk got no BYE: {:?}", summary(&at_trunk)))?;
    ensure!(
        bye_from == s.trunk_side,
        "BYE to the trunk left from {bye_from}"
    );
    advertises(
        &bye_b,
        TRUNK_ADVERTISE,
        s.trunk_side.port(),
        "BYE to the trunk",
    )?;
    let trunk_addr = s.trunk.local_addr()?.to_string();
    s.trunk.send_to(
        reply(&bye_b, 200, "x", &trunk_addr, None).as_bytes(),
        bye_from,
    )?;
    let mut at_caller = Vec::new();
    let (_, from) = wait_for(&s.caller, Duration::from_secs(5), &mut at_caller, |m| {
        status_code(m) == Some(200) && cseq_method(m) == "BYE"
    })
    .context("the caller's BYE got no 200")?;
    ensure!(
        from == s.access,
        "200 for the caller's BYE came from {from}"
    );

    // Call 2: the trunk hangs up, toward the Contact the node gave it.
    let (_, b_invite, node_b) = establish(&s, 2)?;
    let b_contact = contact_uri(&b_invite)?;
    let via_me = s.trunk.local_addr()?;
    let from_hdr = header(&b_invite, "From", Some("f")).context("INVITE without From")?;
    let to_hdr = header(&b_invite, "To", Some("t")).context("INVITE without To")?;
    let bye = format!(
        "BYE {b_contact} SIP/2.0\r\nVia: SIP/2.0/UDP {via_me};branch=z9hG4bKmhtbye2;rport\r\n\
         Max-Forwards: 70\r\nFrom: {to_hdr};tag=t2\r\nTo: {from_hdr}\r\n\
         Call-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        header(&b_invite, "Call-ID", Some("i")).context("INVITE without Call-ID")?
    );
    s.trunk.send_to(bye.as_bytes(), node_b)?;
    let mut at_caller = Vec::new();
    let (bye_a, bye_from) = wait_for(&s.caller, Duration::from_secs(5), &mut at_caller, |m| {
        method(m) == Some("BYE")
    })
    .with_context(|| format!("the caller got no BYE: {:?}", summary(&at_caller)))?;
    ensure!(
        bye_from == s.access,
        "BYE to the caller left from {bye_from}"
    );
    advertises(
        &bye_a,
        ACCESS_ADVERTISE,
        s.access.port(),
        "BYE to the caller",
    )?;
    s.caller.send_to(
        reply(&bye_a, 200, "x", &me.to_string(), None).as_bytes(),
        bye_from,
    )?;
    let mut at_trunk = Vec::new();
    let (_, from) = wait_for(&s.trunk, Duration::from_secs(5), &mut at_trunk, |m| {
        status_code(m) == Some(200) && cseq_method(m) == "BYE"
    })
    .with_context(|| format!("the trunk's BYE got no 200: {:?}", summary(&at_trunk)))?;
    ensure!(
        from == s.trunk_side,
        "200 for the trunk's BYE came from {from}"
    );

    let m = s.node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
    })?;
    ensure!(
        m.value("trunkline_calls_active", &[])? == 0.0,
        "calls left up"
    );
    s.node.assert_healthy()?;
    let status = s.node.stop()?;
    ensure!(status.success(), "node exited with {status}");
    Ok(())
}

//! The node between two networks: callers' media anchored on its default interface
//! (127.0.0.1), the trunk's on a named interface `carrier` (127.0.0.2, `[[media.interfaces]]`
//! and the trunk's `media_interface`). The peers are real: a SIPp caller on 127.0.0.1 playing a
//! G.711 pcap, a SIPp callee on 127.0.0.3 echoing it (tests/media/uac_rtp.xml, uas_rtp.xml).
//!
//! Every decision comes from the SDP each side received, the relay's sockets as the kernel
//! lists them (/proc/net/udp) and the relay's counters, never from how fast something ran.

use anyhow::{anyhow, ensure, Result};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};
use trunkline_e2e::media_node::{media_node, MediaSettings};
use trunkline_e2e::pcap::make_pcap;
use trunkline_e2e::relay_metrics::{dropped, media_idle, relayed, settled};
use trunkline_e2e::relay_sdp::{ensure_names_relay_on, received_sdp};
use trunkline_e2e::sipp_media::{echo_callee, free_udp_block, media_scenario, rtp_caller_from};
use trunkline_e2e::*;

/// The node's address on the carrier network (its `carrier` media interface).
const CARRIER_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// The caller: on the access network, where the node's default interface is.
const CALLER_IP: Ipv4Addr = NODE_IP;

/// Ports in `range` of the UDP sockets bound on `ip`, from /proc/net/udp (local address
/// `0100007F:A0D2`: the address in host byte order, the port big-endian, both in hex).
fn udp_bound_on(ip: Ipv4Addr, range: (u16, u16)) -> Vec<u16> {
    let want = format!("{:08X}", u32::from_le_bytes(ip.octets()));
    std::fs::read_to_string("/proc/net/udp")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (addr, port) = l.split_whitespace().nth(1)?.split_once(':')?;
            let port = u16::from_str_radix(port, 16).ok()?;
            (addr == want && (range.0..=range.1).contains(&port)).then_some(port)
        })
        .collect()
}

/// `[media]` binds 127.0.0.1 (the default interface) and `carrier` 127.0.0.2, the trunk's
/// `media_interface`. A SIPp caller on 127.0.0.1 plays a 3 s pcap during a 6 s call, the SIPp
/// callee echoes it. The INVITE at the callee offers the relay on 127.0.0.2, the 200 at the
/// caller answers with the relay on 127.0.0.1, both with ports of [media]; during the call the
/// relay holds RTP+RTCP sockets in its range on both addresses; it relayed the caller's packets
/// and the echo (1.5x to 2x what was sent), and frees everything after the call: its ports at
/// once, the sockets it keeps for reuse once `spare_socket_secs` (1 s here) has passed.
#[test]
fn media_legs_anchored_on_their_own_interfaces() -> Result<()> {
    let out = out_dir("interfaces_two_networks")?;
    let range = (41500, 41599);
    let sent = make_pcap(&out, 3)?;
    let uas_mp = free_udp_block(UAS_IP, 4)?;
    let uac_mp = free_udp_block(CALLER_IP, 4)?;
    let uas = echo_callee(&media_scenario("uas_rtp.xml"), uas_mp)
        .timeout_secs(40)
        .resolve_port()?;
    let mut server = uas.clone().spawn(&out)?;
    let media = MediaSettings::new(range, 60)
        .trunk_interface("carrier", CARRIER_IP)
        .spare_sockets(1);
    let node = media_node(&out, uas.addr()?, &media)?;
    let mut client = rtp_caller_from(
        CALLER_IP,
        &media_scenario("uac_rtp.xml"),
        node.sip_addr(),
        uac_mp,
    )
    .duration_ms(6000)
    .timeout_secs(30)
    .spawn(&out)?;

    // During the call: the relay's sockets on each network, and packets relayed.
    let mut bound = None;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && client.is_running() {
        let access = udp_bound_on(NODE_IP, range);
        let carrier = udp_bound_on(CARRIER_IP, range);
        if access.len() >= 2 && carrier.len() >= 2 && relayed(&node.metrics()?) > 0.0 {
            bound = Some((access, carrier));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    client.wait(Duration::from_secs(40))?.assert_all_ok(1)?;
    server.wait(Duration::from_secs(20))?.assert_all_ok(1)?;

    let (access, carrier) = bound.ok_or_else(|| {
        anyhow!(
            "never saw the relay relaying with RTP+RTCP sockets in {range:?} on both \
             {NODE_IP} ({:?}) and {CARRIER_IP} ({:?}); node log tail:\n{}",
            udp_bound_on(NODE_IP, range),
            udp_bound_on(CARRIER_IP, range),
            tail(&node.log, 30)
        )
    })?;
    eprintln!("relay sockets: access {access:?}, carrier {carrier:?}");

    let to_callee = received_sdp(&server.messages_log(), "INVITE ")?;
    ensure_names_relay_on("INVITE at the callee: SDP", to_callee, CARRIER_IP, range)?;
    let to_caller = received_sdp(&client.messages_log(), "SIP/2.0 200")?;
    ensure_names_relay_on("200 at the caller: SDP", to_caller, NODE_IP, range)?;
    ensure!(
        carrier.contains(&to_callee.1) && access.contains(&to_caller.1),
        "the SDP ports ({} to the callee, {} to the caller) are not the relay's sockets on \
         {CARRIER_IP} {carrier:?} and {NODE_IP} {access:?}",
        to_callee.1,
        to_caller.1
    );

    let m = settled(&node)?;
    let (rel, drp) = (relayed(&m), dropped(&m));
    eprintln!("relay: {rel} packets relayed, {drp} dropped; the caller sent {sent}");
    ensure!(
        rel >= 1.5 * sent as f64 && rel <= 2.0 * sent as f64,
        "relayed {rel} packets for {sent} sent and echoed (want {}..={}): media did not flow \
         both ways between the two interfaces",
        1.5 * sent as f64,
        2 * sent
    );
    media_idle(&node)?;
    ensure!(
        wait_until(Duration::from_secs(5), || udp_bound_on(CARRIER_IP, range)
            .is_empty()),
        "relay sockets left on {CARRIER_IP} after the call: {:?}",
        udp_bound_on(CARRIER_IP, range)
    );
    assert_calls(&node, "200", 1.0)?;
    Ok(())
}

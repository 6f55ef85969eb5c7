//! SIPp as an RTP peer: its media ports and the command-line flags the media scenarios
//! (tests/media/*.xml, tests/scenarios/*_sipi.xml) run with. Shared by media.rs, sipi.rs and
//! interfaces.rs so that every media test gives SIPp the same port block and the same lenient
//! behaviours.

use crate::{Sipp, UAC_IP};
use anyhow::{bail, Result};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};

/// An even UDP port on `ip` such that `port..port + n` are all free now (SIPp's `-mp PORT`
/// takes PORT and the ports after it for RTP and RTCP).
pub fn free_udp_block(ip: Ipv4Addr, n: u16) -> Result<u16> {
    for _ in 0..200 {
        let probe = UdpSocket::bind((ip, 0))?;
        let base = probe.local_addr()?.port() & !1;
        drop(probe);
        if base < 1024 || base.checked_add(n).is_none() {
            continue;
        }
        let held: Vec<_> = (base..base + n).map(|p| UdpSocket::bind((ip, p))).collect();
        // Reserved too, so no other port this process hands out falls in the block.
        if held.iter().all(std::result::Result::is_ok)
            && (base..base + n).all(|p| crate::reserve_port(ip.into(), p))
        {
            return Ok(base);
        }
    }
    bail!("no block of {n} free UDP ports on {ip}")
}

impl Sipp {
    /// `-mp PORT` and SIPp's lenient default behaviours (`all,-abortunexp`) of the media
    /// scenarios.
    pub fn args_media(self, port: u16) -> Self {
        self.arg("-mp")
            .arg(&port.to_string())
            .arg("-default_behaviors")
            .arg("all,-abortunexp")
    }
}

/// The SIPp callee of the media tests: one call, its messages traced, running `scenario`
/// (under tests/scenarios) with its media on `media_port` and echoing the RTP it receives.
pub fn echo_callee(scenario: &str, media_port: u16) -> Sipp {
    Sipp::uas(scenario)
        .calls(1)
        .trace_msg()
        .args_media(media_port)
        .arg("-rtp_echo")
}

/// The SIPp caller of the media tests: one call to `remote`, its messages traced, running
/// `scenario` (under tests/scenarios) with its media on `media_port` of 127.0.0.2, the address
/// its SDP names (`-key sdp_ip`).
pub fn rtp_caller(scenario: &str, remote: SocketAddr, media_port: u16) -> Sipp {
    rtp_caller_from(UAC_IP, scenario, remote, media_port)
}

/// [`rtp_caller`] on `ip` (its SIP, its media and its SDP's address) instead of 127.0.0.2:
/// for tests where 127.0.0.2 is one of the node's own media addresses.
pub fn rtp_caller_from(ip: Ipv4Addr, scenario: &str, remote: SocketAddr, media_port: u16) -> Sipp {
    Sipp::uac(scenario, remote)
        .local_ip(ip)
        .calls(1)
        .trace_msg()
        .args_media(media_port)
        .arg("-key")
        .arg("sdp_ip")
        .arg(&ip.to_string())
}

/// A SIPp scenario of tests/media, as the harness's scenario name (relative to tests/scenarios).
pub fn media_scenario(name: &str) -> String {
    format!("../media/{name}")
}

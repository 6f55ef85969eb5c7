//! SDP as the media tests read it: the audio address an offer or answer names, and the check
//! that it is the node's relay. Shared by media.rs (plain SDP bodies) and sipi.rs (the SDP part
//! of a multipart body), which judge anchoring the same way.

use crate::NODE_IP;
use anyhow::{ensure, Result};
use std::net::IpAddr;

/// Connection address and audio port of an SDP body (the first `c=IN IP4`, the last
/// `m=audio`).
pub fn sdp_audio(text: &str) -> Option<(IpAddr, u16)> {
    let mut c = None;
    let mut port = None;
    for line in text.lines().map(str::trim) {
        if let Some(a) = line.strip_prefix("c=IN IP4 ") {
            c = c.or_else(|| a.trim().parse().ok());
        }
        if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next().and_then(|p| p.parse().ok());
        }
    }
    Some((c?, port?))
}

/// Fails unless `(ip, port)`, the media address `what` names (e.g. "200 at the caller: SDP"),
/// is the relay's: 127.0.0.1 and a port in `range` (the node's `[media]` ports).
pub fn ensure_names_relay(what: &str, (ip, port): (IpAddr, u16), range: (u16, u16)) -> Result<()> {
    ensure!(
        ip == IpAddr::V4(NODE_IP) && (range.0..=range.1).contains(&port),
        "{what} names {ip}:{port}, not the relay (127.0.0.1, ports {}..={})",
        range.0,
        range.1
    );
    Ok(())
}

//! SDP as the media tests read it: the audio address an offer or answer names, and the check
//! that it is the node's relay. Shared by media.rs (plain SDP bodies) and sipi.rs (the SDP part
//! of a multipart body), which judge anchoring the same way.

use crate::{parse_trace, tail, NODE_IP};
use anyhow::{anyhow, ensure, Result};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

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

/// The media address in the SDP of the first message received in the SIPp message log `log`
/// whose start line begins with `start` ("INVITE " or "SIP/2.0 200").
pub fn received_sdp(log: &Path, start: &str) -> Result<(IpAddr, u16)> {
    let msgs = parse_trace(log)?;
    let msg = msgs
        .iter()
        .find(|m| !m.sent && m.text.starts_with(start) && m.text.contains("m=audio"))
        .ok_or_else(|| {
            anyhow!(
                "no received '{start}' with SDP in {}:\n{}",
                log.display(),
                tail(log, 40)
            )
        })?;
    sdp_audio(&msg.text).ok_or_else(|| anyhow!("no c=/m=audio in:\n{}", msg.text))
}

/// Fails unless `(ip, port)`, the media address `what` names (e.g. "200 at the caller: SDP"),
/// is the relay's: 127.0.0.1 and a port in `range` (the node's `[media]` ports).
pub fn ensure_names_relay(what: &str, addr: (IpAddr, u16), range: (u16, u16)) -> Result<()> {
    ensure_names_relay_on(what, addr, NODE_IP, range)
}

/// As [`ensure_names_relay`], for the relay's interface on `want` (a node with several media
/// interfaces names a different one toward each network).
pub fn ensure_names_relay_on(
    what: &str,
    (ip, port): (IpAddr, u16),
    want: Ipv4Addr,
    range: (u16, u16),
) -> Result<()> {
    ensure!(
        ip == IpAddr::V4(want) && (range.0..=range.1).contains(&port),
        "{what} names {ip}:{port}, not the relay on {want} (ports {}..={})",
        range.0,
        range.1
    );
    Ok(())
}

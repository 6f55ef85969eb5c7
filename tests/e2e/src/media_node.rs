//! A node under test that anchors media: its only trunk has `anchor_media = true` and its
//! `[media]` relay binds 127.0.0.1 (and, for the trunk's leg, optionally a named interface on
//! another address). Shared by media.rs, sipi.rs and interfaces.rs so that all configure the
//! relay the same way.

use crate::{Node, NodeConfig, Transport};
use anyhow::{ensure, Result};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;

/// `[media]` of the node under test (bind 127.0.0.1, one worker per core).
pub struct MediaSettings {
    pub port_min: u16,
    pub port_max: u16,
    pub timeout_secs: u64,
    /// A `[[media.interfaces]]` entry (name, bind) that the trunk's `media_interface` names;
    /// `None`: both legs on the default interface.
    pub trunk_interface: Option<(String, Ipv4Addr)>,
    /// `spare_socket_secs`: how long an ended call's sockets stay bound for reuse;
    /// `None`: the node's default.
    pub spare_socket_secs: Option<u64>,
}

impl MediaSettings {
    /// The relay on the ports `range.0..=range.1`, hanging up after `timeout_secs` without media.
    pub fn new(range: (u16, u16), timeout_secs: u64) -> Self {
        MediaSettings {
            port_min: range.0,
            port_max: range.1,
            timeout_secs,
            trunk_interface: None,
            spare_socket_secs: None,
        }
    }

    /// Ended calls' sockets are closed `secs` after the call (not kept for reuse longer).
    pub fn spare_sockets(mut self, secs: u64) -> Self {
        self.spare_socket_secs = Some(secs);
        self
    }

    /// Anchors the trunk's leg on an interface `name` bound on `bind`, callers' staying on
    /// the default one: the node between an access and a carrier network.
    pub fn trunk_interface(mut self, name: &str, bind: Ipv4Addr) -> Self {
        self.trunk_interface = Some((name.to_owned(), bind));
        self
    }
}

/// Starts a node whose only trunk ("carrier", `anchor_media = true`, and `media_interface`
/// when `media` names one) is `trunk`, anchoring media on its relay with `media`.
pub fn media_node(out: &Path, trunk: SocketAddr, media: &MediaSettings) -> Result<Node> {
    let cfg = NodeConfig::new(trunk, Transport::Udp)?;
    let base = cfg.to_toml();
    ensure!(
        base.contains("\n[routing]"),
        "unexpected node TOML layout:\n{base}"
    );
    let trunk_keys = match &media.trunk_interface {
        Some((name, _)) => format!("anchor_media = true\nmedia_interface = \"{name}\"\n"),
        None => "anchor_media = true\n".to_owned(),
    };
    // The trunk table is the last one before [routing].
    let mut toml = base.replacen("\n[routing]", &format!("{trunk_keys}\n[routing]"), 1);
    toml.push_str(&format!(
        "\n[media]\nenabled = true\nbind = \"127.0.0.1\"\nport_min = {}\nport_max = {}\n\
         timeout_secs = {}\nworkers = 0\n",
        media.port_min, media.port_max, media.timeout_secs
    ));
    if let Some(secs) = media.spare_socket_secs {
        toml.push_str(&format!("spare_socket_secs = {secs}\n"));
    }
    if let Some((name, bind)) = &media.trunk_interface {
        toml.push_str(&format!(
            "\n[[media.interfaces]]\nname = \"{name}\"\nbind = \"{bind}\"\n"
        ));
    }
    Node::start_toml(&cfg, &toml, out)
}

//! A node under test that anchors media: its only trunk has `anchor_media = true` and its
//! `[media]` relay binds 127.0.0.1. Shared by media.rs and sipi.rs so that both configure the
//! relay the same way.

use crate::{Node, NodeConfig, Transport};
use anyhow::{ensure, Result};
use std::net::SocketAddr;
use std::path::Path;

/// `[media]` of the node under test (bind 127.0.0.1, one worker per core).
pub struct MediaSettings {
    pub port_min: u16,
    pub port_max: u16,
    pub timeout_secs: u64,
}

impl MediaSettings {
    /// The relay on the ports `range.0..=range.1`, hanging up after `timeout_secs` without media.
    pub fn new(range: (u16, u16), timeout_secs: u64) -> Self {
        MediaSettings {
            port_min: range.0,
            port_max: range.1,
            timeout_secs,
        }
    }
}

/// Starts a node whose only trunk ("carrier", `anchor_media = true`) is `trunk`, anchoring
/// media on its relay with `media`.
pub fn media_node(out: &Path, trunk: SocketAddr, media: &MediaSettings) -> Result<Node> {
    let cfg = NodeConfig::new(trunk, Transport::Udp)?;
    let base = cfg.to_toml();
    ensure!(
        base.contains("\n[routing]"),
        "unexpected node TOML layout:\n{base}"
    );
    // The trunk table is the last one before [routing].
    let mut toml = base.replacen("\n[routing]", "anchor_media = true\n\n[routing]", 1);
    toml.push_str(&format!(
        "\n[media]\nenabled = true\nbind = \"127.0.0.1\"\nport_min = {}\nport_max = {}\n\
         timeout_secs = {}\nworkers = 0\n",
        media.port_min, media.port_max, media.timeout_secs
    ));
    Node::start_toml(&cfg, &toml, out)
}

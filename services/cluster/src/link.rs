//! How this node reaches the other nodes' `trunkline.cluster.v1` listeners: plain HTTP/2,
//! or mutual TLS when `[cluster]` names a certificate, key and CA.
//!
//! The client TLS settings are process-wide and set once at start, before any cluster task
//! runs: every task that talks to other nodes (replication, takeover probes, forwarding)
//! must use the same ones, and passing them through each would only add ways to forget.

use std::sync::OnceLock;
use std::time::Duration;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

static TLS: OnceLock<ClientTlsConfig> = OnceLock::new();

/// The server name a node's certificate must carry (as a DNS SAN) unless
/// `[cluster] tls_server_name` says otherwise: nodes are reached by address, and a name
/// shared by every node keeps one certificate per node simple to issue.
pub const DEFAULT_SERVER_NAME: &str = "trunkline-cluster";

/// PEM files of mutual TLS between the nodes.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
    pub ca: Vec<u8>,
    /// The name every node's certificate is checked against.
    pub server_name: String,
}

/// From now on node-to-node requests go over TLS, presenting `files`' certificate and
/// accepting only servers whose certificate `files.ca` signed for `files.server_name`.
/// Returns false if TLS was already set.
pub fn use_tls(files: &TlsFiles) -> bool {
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&files.ca))
        .identity(Identity::from_pem(&files.cert, &files.key))
        .domain_name(files.server_name.clone());
    TLS.set(config).is_ok()
}

/// Whether node-to-node requests use TLS.
pub fn tls() -> bool {
    TLS.get().is_some()
}

/// A lazily connecting endpoint for the node at `addr` (host:port); `timeout` bounds
/// each request (`None` for a stream that lives as long as its sender wants).
pub fn endpoint(
    addr: &str,
    connect: Duration,
    timeout: Option<Duration>,
) -> Result<Endpoint, String> {
    let scheme = if TLS.get().is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("{addr}: {e}"))?
        .connect_timeout(connect);
    if let Some(timeout) = timeout {
        endpoint = endpoint.timeout(timeout);
    }
    if let Some(tls) = TLS.get() {
        endpoint = endpoint
            .tls_config(tls.clone())
            .map_err(|e| format!("{addr}: TLS: {e}"))?;
    }
    Ok(endpoint)
}

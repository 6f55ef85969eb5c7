//! The node-to-node gRPC listener (`[cluster] listen`): the replicas other nodes push
//! here, their handovers, and the SIP messages they forward to this node's dialogs. It takes the same connection bounds as the admin API.
//! With `[cluster] tls_*` set, it speaks mutual TLS only: a client must present a
//! certificate the cluster's CA signed.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use trunkline_cluster::{Change, ReplicaStore, Replicator};

use crate::admin::incoming;
use crate::admin::tls::read_pem;
use crate::config::ClusterConfig;
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use trunkline_cluster::link::TlsFiles;

/// The node-to-node TLS files of `[cluster]`, read and checked (a bad file stops the node
/// with the key that names it), or `None` for plain HTTP/2.
pub fn load_tls(c: &ClusterConfig) -> anyhow::Result<Option<TlsFiles>> {
    let (Some(cert), Some(key), Some(ca)) = (&c.tls_cert_file, &c.tls_key_file, &c.tls_ca_file)
    else {
        return Ok(None);
    };
    Ok(Some(TlsFiles {
        cert: read_pem("cluster.tls_cert_file", cert, "CERTIFICATE")?,
        key: read_pem("cluster.tls_key_file", key, "PRIVATE KEY")?,
        ca: read_pem("cluster.tls_ca_file", ca, "CERTIFICATE")?,
        server_name: c.tls_server_name.clone(),
    }))
}

/// How the node reaches etcd (`[cluster] etcd_*`), its TLS files read and checked (a bad
/// file stops the node with the key that names it).
pub fn load_etcd(c: &ClusterConfig) -> anyhow::Result<trunkline_cluster::Etcd> {
    let tls = match &c.etcd_ca_file {
        Some(ca) => {
            let identity = match (&c.etcd_cert_file, &c.etcd_key_file) {
                (Some(cert), Some(key)) => Some((
                    read_pem("cluster.etcd_cert_file", cert, "CERTIFICATE")?,
                    read_pem("cluster.etcd_key_file", key, "PRIVATE KEY")?,
                )),
                _ => None,
            };
            Some(trunkline_cluster::EtcdTls {
                ca_pem: read_pem("cluster.etcd_ca_file", ca, "CERTIFICATE")?,
                identity,
                server_name: c.etcd_server_name.clone(),
            })
        }
        None => None,
    };
    if tls.is_none() {
        let remote = c.etcd_endpoints.iter().find(|e| {
            let host = e.trim_start_matches("http://");
            let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            host != "localhost"
                && host
                    .parse::<std::net::IpAddr>()
                    .map_or(true, |ip| !ip.is_loopback())
        });
        if let Some(e) = remote {
            tracing::warn!(endpoint = %e,
                "cluster: etcd is reached in plain text off loopback; set etcd_ca_file (and https:// endpoints)");
        }
    }
    Ok(trunkline_cluster::Etcd {
        endpoints: c.etcd_endpoints.clone(),
        tls,
    })
}

/// Binds `addr` and serves the replica store until `stop`; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    store: Arc<ReplicaStore>,
    tls: Option<&TlsFiles>,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot bind cluster.listen {addr}"))?;
    let local = listener.local_addr().context("cluster.listen")?;
    let limits = incoming::Limits {
        max_connections: 256,
        first_bytes_timeout: std::time::Duration::from_secs(10),
    };
    let conns = incoming::incoming(listener, limits, stop.clone());
    let mut builder = tonic::transport::Server::builder();
    if let Some(t) = tls {
        let config = ServerTlsConfig::new()
            .identity(Identity::from_pem(&t.cert, &t.key))
            .client_ca_root(Certificate::from_pem(&t.ca));
        builder = builder
            .tls_config(config)
            .context("cluster.tls_cert_file / tls_key_file / tls_ca_file")?;
    }
    tokio::spawn(async move {
        let served = builder
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
            .add_service(store.service())
            .serve_with_incoming_shutdown(conns, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "cluster listener stopped");
        }
    });
    tracing::info!(%local, tls = tls.is_some(), "cluster: node-to-node listener");
    Ok(local)
}

/// The call layer's view of the replicator.
pub struct ToBuddies(pub Replicator);

impl trunkline_call::Replicate for ToBuddies {
    fn upsert(&self, call_id: Arc<str>, state: Vec<u8>) {
        self.0.send(Change::Upsert {
            call_id,
            state,
            adoptable: true,
        });
    }

    fn ringing(&self, call_id: Arc<str>, state: Vec<u8>) {
        self.0.send(Change::Upsert {
            call_id,
            state,
            adoptable: false,
        });
    }

    fn remove(&self, call_id: Arc<str>) {
        self.0.send(Change::Remove { call_id });
    }
}

/// The SIP transport a hop's Via token names (`Hop::parse` admits UDP, TCP and TLS only).
pub fn sip_transport(token: &str) -> trunkline_sip::Transport {
    if token.eq_ignore_ascii_case("TCP") {
        trunkline_sip::Transport::Tcp
    } else if token.eq_ignore_ascii_case("TLS") {
        trunkline_sip::Transport::Tls
    } else {
        trunkline_sip::Transport::Udp
    }
}

/// The call layer's view of owner routing.
pub struct ToOwners(pub Arc<trunkline_cluster::Forwarder>);

impl trunkline_call::Strays for ToOwners {
    fn is_live(&self, node: &str) -> bool {
        self.0.is_live(node)
    }

    fn forward(&self, owner: &str, data: bytes::Bytes, source: trunkline_sip::Peer) -> bool {
        let stream = source.transport.is_reliable();
        let hop = trunkline_cluster::forward::Hop {
            transport: source.transport.via_token(),
            local: source.local,
            // A stream's answers can only go back on its connection.
            connection: match (stream, source.connection) {
                (false, _) => 0,
                (true, Some(c)) => c,
                (true, None) => return false,
            },
        };
        self.0.forward(owner, data, source.addr, hop)
    }

    fn emit(&self, via: u32, connection: u64, peer: &trunkline_sip::Peer, data: bytes::Bytes) {
        if peer.local.is_none() {
            return;
        }
        let hop = trunkline_cluster::forward::Hop {
            transport: peer.transport.via_token(),
            local: peer.local,
            connection,
        };
        self.0.emit(via, data, peer.addr, hop);
    }
}

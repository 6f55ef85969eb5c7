//! The node-to-node gRPC listener (`[cluster] listen`): the replicas other nodes push
//! here, their handovers, and the SIP messages they forward to this node's dialogs. It takes the same connection bounds as the admin API.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio_util::sync::CancellationToken;
use trunkline_cluster::{Change, ReplicaStore, Replicator};

use crate::admin::incoming;

/// Binds `addr` and serves the replica store until `stop`; returns the bound address.
pub async fn start(
    addr: SocketAddr,
    store: Arc<ReplicaStore>,
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
    tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(std::time::Duration::from_secs(10)))
            .http2_keepalive_timeout(Some(std::time::Duration::from_secs(5)))
            .add_service(store.service())
            .serve_with_incoming_shutdown(conns, stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "cluster listener stopped");
        }
    });
    tracing::info!(%local, "cluster: node-to-node listener");
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

/// The call layer's view of owner routing.
pub struct ToOwners(pub Arc<trunkline_cluster::Forwarder>);

impl trunkline_call::Strays for ToOwners {
    fn is_live(&self, node: &str) -> bool {
        self.0.is_live(node)
    }

    fn forward(&self, owner: &str, data: bytes::Bytes, source: trunkline_sip::Peer) -> bool {
        self.0.forward(owner, data, source.addr, source.local)
    }

    fn emit(&self, via: u32, peer: &trunkline_sip::Peer, data: bytes::Bytes) {
        if let Some(local) = peer.local {
            self.0.emit(via, data, peer.addr, local);
        }
    }
}

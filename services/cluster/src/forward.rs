//! Owner routing: a SIP message that reaches this node for a dialog another live node
//! made (its id is in the tag or branch, ARCHITECTURE.md rule 3) goes to that node over
//! the cluster service (`Replication/Forward`), which handles it as if it had come
//! straight from the peer. This is what lets a load balancer spread SIP over the nodes.
//!
//! The call path only queues (`try_send`); one task sends, each message in its own
//! request so a slow owner holds up nothing else. A full queue drops the message (SIP
//! retransmits it).

use crate::membership::Membership;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use trunkline_proto::cluster::v1::replication_client::ReplicationClient;
use trunkline_proto::cluster::v1::ForwardedMessage;

/// Messages waiting to be forwarded; past it they are dropped (and counted).
const QUEUE: usize = 4096;
/// Largest message forwarded (a UDP datagram fits).
pub const MAX_FORWARD: usize = 65_535;

struct Job {
    owner: String,
    data: Bytes,
    source: SocketAddr,
}

/// Sends other nodes' messages to them.
pub struct Forwarder {
    me: String,
    membership: Arc<Membership>,
    tx: mpsc::Sender<Job>,
    /// Messages dropped: queue full, owner unreachable or refusing.
    pub dropped: Arc<AtomicU64>,
}

impl Forwarder {
    pub fn start(
        membership: Arc<Membership>,
        me: String,
        secret: Option<String>,
        stop: CancellationToken,
    ) -> Arc<Forwarder> {
        let (tx, rx) = mpsc::channel(QUEUE);
        let f = Arc::new(Forwarder {
            me: me.clone(),
            membership: membership.clone(),
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(run(rx, membership, me, secret, f.dropped.clone(), stop));
        f
    }

    /// Whether `node` is a live member other than this node.
    pub fn is_live(&self, node: &str) -> bool {
        node != self.me && self.membership.members().nodes.contains_key(node)
    }

    /// Queues `data` (from `source`) for `owner`; false when it is dropped at once.
    pub fn forward(&self, owner: &str, data: Bytes, source: SocketAddr) -> bool {
        if data.len() > MAX_FORWARD {
            return false;
        }
        let job = Job {
            owner: owner.to_string(),
            data,
            source,
        };
        if self.tx.try_send(job).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    membership: Arc<Membership>,
    me: String,
    secret: Option<String>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut clients: HashMap<String, (String, ReplicationClient<tonic::transport::Channel>)> =
        HashMap::new();
    loop {
        let job = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            () = stop.cancelled() => return,
        };
        let members = membership.members();
        let Some(addr) = members
            .nodes
            .get(&job.owner)
            .and_then(|n| n.cluster.clone())
        else {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let stale = clients.get(&job.owner).is_none_or(|(a, _)| *a != addr);
        if stale {
            let Ok(endpoint) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            else {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            let channel = endpoint
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect_lazy();
            clients.insert(job.owner.clone(), (addr, ReplicationClient::new(channel)));
        }
        let Some((_, client)) = clients.get(&job.owner) else {
            continue;
        };
        let mut client = client.clone();
        let mut req = Request::new(ForwardedMessage {
            from_node: me.clone(),
            data: job.data.to_vec(),
            source: job.source.to_string(),
        });
        if let Some(s) = &secret {
            if let Ok(v) = format!("Bearer {s}").parse() {
                req.metadata_mut().insert("authorization", v);
            }
        }
        let dropped = dropped.clone();
        tokio::spawn(async move {
            if let Err(e) = client.forward(req).await {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(owner = %job.owner, error = %e, "cluster: forward failed");
            }
        });
    }
}

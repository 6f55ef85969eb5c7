//! Owner routing: a SIP message that reaches this node for a dialog another live node
//! made (its id is in the tag or branch, ARCHITECTURE.md rule 3) goes to that node over
//! the cluster service (`Replication/Forward`), which handles it as if it had come
//! straight from the peer. What the owner sends back to that peer goes through the node
//! the peer sent to (`Replication/Emit`), so it leaves from the address the peer knows
//! (and that its NAT lets in). This is what lets a load balancer spread SIP over the
//! nodes.
//!
//! Over a stream (TCP) the peer's connection stays on the node it reached: the owner is
//! told that node's connection id with the message, and what it sends the peer goes
//! back through that node on that connection.
//!
//! The call path only queues (`try_send`); one task sends, each message in its own
//! request so a slow node holds up nothing else. A full queue drops the message (SIP
//! retransmits it over UDP; over a stream the peer's transaction times out).

use crate::membership::Membership;
use bytes::Bytes;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Request;
use trunkline_proto::cluster::v1::replication_client::ReplicationClient;
use trunkline_proto::cluster::v1::{EmitRequest, ForwardedMessage};

/// Messages waiting to be sent; past it they are dropped (and counted).
const QUEUE: usize = 4096;
/// Largest message forwarded (a UDP datagram, or the largest message a node takes over
/// a stream, fits).
pub const MAX_FORWARD: usize = 65_535;
/// Nodes a peer may be reached through, at most (the index table never grows past it).
const MAX_VIA: usize = 1024;

/// How a peer reaches the node it talks to: the transport, that node's socket, and over
/// a stream that node's connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hop {
    /// The Via transport token ("UDP", "TCP", "TLS").
    pub transport: &'static str,
    /// The node's socket the peer sent to.
    pub local: Option<SocketAddr>,
    /// The node's id of the peer's connection (0 over UDP).
    pub connection: u64,
}

impl Hop {
    /// Transports a hop may name; a message naming another is refused.
    const TRANSPORTS: [&'static str; 3] = ["UDP", "TCP", "TLS"];

    /// A hop as the wire names it: an empty transport is UDP (a node that predates
    /// streams), and a stream needs its connection.
    pub fn parse(
        transport: &str,
        local: Option<SocketAddr>,
        connection: u64,
    ) -> Result<Hop, &'static str> {
        let transport = match transport {
            "" => "UDP",
            t => Hop::TRANSPORTS
                .into_iter()
                .find(|known| known.eq_ignore_ascii_case(t))
                .ok_or("transport: UDP, TCP or TLS")?,
        };
        if transport != "UDP" && connection == 0 {
            return Err("connection: a stream needs its connection");
        }
        Ok(Hop {
            transport,
            local,
            connection,
        })
    }
}

enum Job {
    /// A message of `node`'s dialog, received here over `hop`.
    Forward {
        node: String,
        data: Bytes,
        source: SocketAddr,
        hop: Hop,
    },
    /// A message of ours for a peer that talks to `node`: sent over that node's `hop`.
    Emit {
        node: String,
        data: Bytes,
        dest: SocketAddr,
        hop: Hop,
    },
}

/// Sends other nodes' messages to them, and ours through them.
pub struct Forwarder {
    me: String,
    membership: Arc<Membership>,
    tx: mpsc::Sender<Job>,
    /// Node ids by a small index: a peer reached through another node carries that index
    /// (see `via_index`).
    via: Mutex<Vec<String>>,
    /// Messages dropped: queue full, node unknown, unreachable or refusing.
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
            via: Mutex::new(Vec::new()),
            dropped: Arc::new(AtomicU64::new(0)),
        });
        tokio::spawn(run(rx, membership, me, secret, f.dropped.clone(), stop));
        f
    }

    /// Whether `node` is a live member other than this node.
    pub fn is_live(&self, node: &str) -> bool {
        node != self.me && self.membership.members().nodes.contains_key(node)
    }

    /// Queues `data` (from `source`, received here over `hop`) for `owner`; false when it
    /// is dropped at once.
    pub fn forward(&self, owner: &str, data: Bytes, source: SocketAddr, hop: Hop) -> bool {
        if data.len() > MAX_FORWARD {
            return false;
        }
        self.queue(Job::Forward {
            node: owner.to_string(),
            data,
            source,
            hop,
        })
    }

    /// The index of `node` in the via table (added if new; `None` once it is full).
    pub fn via_index(&self, node: &str) -> Option<u32> {
        let mut via = self.via.lock().ok()?;
        if let Some(i) = via.iter().position(|n| n == node) {
            return u32::try_from(i).ok();
        }
        if via.len() >= MAX_VIA {
            return None;
        }
        via.push(node.to_string());
        u32::try_from(via.len() - 1).ok()
    }

    /// Queues `data` for `dest`, to leave over `hop` of the node at `via`.
    pub fn emit(&self, via: u32, data: Bytes, dest: SocketAddr, hop: Hop) -> bool {
        let node = self
            .via
            .lock()
            .ok()
            .and_then(|v| v.get(via as usize).cloned());
        let Some(node) = node else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        };
        self.queue(Job::Emit {
            node,
            data,
            dest,
            hop,
        })
    }

    fn queue(&self, job: Job) -> bool {
        if self.tx.try_send(job).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }
}

type Client = ReplicationClient<tonic::transport::Channel>;

async fn run(
    mut rx: mpsc::Receiver<Job>,
    membership: Arc<Membership>,
    me: String,
    secret: Option<String>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut clients: HashMap<String, (String, Client)> = HashMap::new();
    let bearer = secret.and_then(|s| format!("Bearer {s}").parse().ok());
    loop {
        let job = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            () = stop.cancelled() => return,
        };
        let node = match &job {
            Job::Forward { node, .. } | Job::Emit { node, .. } => node.clone(),
        };
        let Some(mut client) = client_for(&mut clients, &membership, &node) else {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let dropped = dropped.clone();
        let bearer = bearer.clone();
        let me = me.clone();
        tokio::spawn(async move {
            let sent = match job {
                Job::Forward {
                    data, source, hop, ..
                } => {
                    let mut req = Request::new(ForwardedMessage {
                        from_node: me,
                        data: data.to_vec(),
                        source: source.to_string(),
                        local: hop.local.map(|l| l.to_string()).unwrap_or_default(),
                        transport: hop.transport.to_string(),
                        connection: hop.connection,
                    });
                    if let Some(b) = bearer {
                        req.metadata_mut().insert("authorization", b);
                    }
                    client.forward(req).await.map(|_| ())
                }
                Job::Emit {
                    data, dest, hop, ..
                } => {
                    let mut req = Request::new(EmitRequest {
                        data: data.to_vec(),
                        dest: dest.to_string(),
                        local: hop.local.map(|l| l.to_string()).unwrap_or_default(),
                        transport: hop.transport.to_string(),
                        connection: hop.connection,
                    });
                    if let Some(b) = bearer {
                        req.metadata_mut().insert("authorization", b);
                    }
                    client.emit(req).await.map(|_| ())
                }
            };
            if let Err(e) = sent {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node, error = %e, "cluster: forward or emit failed");
            }
        });
    }
}

/// The gRPC client of live member `node` (a new one when its address changed).
fn client_for(
    clients: &mut HashMap<String, (String, Client)>,
    membership: &Membership,
    node: &str,
) -> Option<Client> {
    let members = membership.members();
    let addr = members.nodes.get(node)?.cluster.clone()?;
    let stale = clients.get(node).is_none_or(|(a, _)| *a != addr);
    if stale {
        let channel = crate::link::endpoint(&addr, Duration::from_secs(1), Duration::from_secs(2))
            .ok()?
            .connect_lazy();
        clients.insert(node.to_string(), (addr, ReplicationClient::new(channel)));
    }
    clients.get(node).map(|(_, c)| c.clone())
}

#[cfg(test)]
mod tests {
    use super::Hop;

    #[test]
    fn a_hop_names_a_known_transport_and_a_stream_its_connection() {
        let local = Some("127.0.0.12:5060".parse().unwrap());
        let udp = Hop::parse("", local, 0).unwrap();
        assert_eq!((udp.transport, udp.connection), ("UDP", 0));
        let tcp = Hop::parse("tcp", local, 9).unwrap();
        assert_eq!((tcp.transport, tcp.connection), ("TCP", 9));
        assert!(Hop::parse("TCP", local, 0).is_err());
        assert!(Hop::parse("SCTP", local, 3).is_err());
    }
}

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
//! The call path only queues (`try_send`). One task sorts the messages into a lane per
//! destination node, and each lane sends its messages in order over one long-lived
//! `Relay` stream, which the receiver handles frame after frame: a peer's messages reach
//! the owner in the order the peer sent them, and a slow node holds up only its own
//! lane. A full queue or lane drops the message (SIP retransmits it over UDP; over a
//! stream the peer's transaction times out).

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
use trunkline_proto::cluster::v1::{relay_frame, EmitRequest, ForwardedMessage, RelayFrame};

/// Messages waiting to be sent; past it they are dropped (and counted).
const QUEUE: usize = 4096;
/// Messages waiting in one destination's lane, and in its stream; past it they are
/// dropped (and counted).
const LANE: usize = 1024;
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
type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

impl Job {
    /// The node it goes to, and the frame that carries it there.
    fn into_frame(self, me: &str) -> (String, RelayFrame) {
        let local = |hop: &Hop| hop.local.map(|l| l.to_string()).unwrap_or_default();
        match self {
            Job::Forward {
                node,
                data,
                source,
                hop,
            } => {
                let m = ForwardedMessage {
                    from_node: me.to_string(),
                    data: data.to_vec(),
                    source: source.to_string(),
                    local: local(&hop),
                    transport: hop.transport.to_string(),
                    connection: hop.connection,
                };
                (node, frame(relay_frame::Frame::Forward(m)))
            }
            Job::Emit {
                node,
                data,
                dest,
                hop,
            } => {
                let m = EmitRequest {
                    data: data.to_vec(),
                    dest: dest.to_string(),
                    local: local(&hop),
                    transport: hop.transport.to_string(),
                    connection: hop.connection,
                };
                (node, frame(relay_frame::Frame::Emit(m)))
            }
        }
    }
}

fn frame(f: relay_frame::Frame) -> RelayFrame {
    RelayFrame { frame: Some(f) }
}

/// One destination's lane: its frames go out in order over one `Relay` stream.
struct Lane {
    addr: String,
    tx: mpsc::Sender<RelayFrame>,
}

async fn run(
    mut rx: mpsc::Receiver<Job>,
    membership: Arc<Membership>,
    me: String,
    secret: Option<String>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    let mut lanes: HashMap<String, Lane> = HashMap::new();
    let mut revision = 0;
    let bearer: Option<Bearer> = secret.and_then(|s| format!("Bearer {s}").parse().ok());
    loop {
        let job = tokio::select! {
            j = rx.recv() => match j { Some(j) => j, None => return },
            () = stop.cancelled() => return,
        };
        let (node, frame) = job.into_frame(&me);
        let members = membership.members();
        if members.revision != revision {
            // Lanes of nodes that left end (their streams close with their senders).
            revision = members.revision;
            lanes.retain(|n, _| members.nodes.contains_key(n));
        }
        let Some(addr) = members.nodes.get(&node).and_then(|n| n.cluster.clone()) else {
            dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let stale = lanes
            .get(&node)
            .is_none_or(|l| l.addr != addr || l.tx.is_closed());
        if stale {
            let Some(lane) = open_lane(&node, addr, &bearer, &dropped, &stop) else {
                dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            };
            lanes.insert(node.clone(), lane);
        }
        let sent = lanes
            .get(&node)
            .is_some_and(|l| l.tx.try_send(frame).is_ok());
        if !sent {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Starts the lane of the node at `addr` (connected lazily, on its first frame).
fn open_lane(
    node: &str,
    addr: String,
    bearer: &Option<Bearer>,
    dropped: &Arc<AtomicU64>,
    stop: &CancellationToken,
) -> Option<Lane> {
    // No request timeout: the stream lives as long as the lane.
    let channel = crate::link::endpoint(&addr, Duration::from_secs(1), None)
        .ok()?
        .connect_lazy();
    let (tx, rx) = mpsc::channel(LANE);
    tokio::spawn(lane(
        node.to_string(),
        ReplicationClient::new(channel),
        bearer.clone(),
        rx,
        dropped.clone(),
        stop.clone(),
    ));
    Some(Lane { addr, tx })
}

/// Sends a lane's frames over one `Relay` stream, opened on the first frame and again
/// on the first frame after it broke. Frames still in a broken stream are lost (counted
/// once per break): SIP retransmits over UDP, and over a stream the peer's transaction
/// times out, as with any message lost between nodes.
async fn lane(
    node: String,
    client: Client,
    bearer: Option<Bearer>,
    mut rx: mpsc::Receiver<RelayFrame>,
    dropped: Arc<AtomicU64>,
    stop: CancellationToken,
) {
    loop {
        let first = tokio::select! {
            f = rx.recv() => match f { Some(f) => f, None => return },
            () = stop.cancelled() => return,
        };
        let (tx, frames) = mpsc::channel(LANE);
        if tx.try_send(first).is_err() {
            dropped.fetch_add(1, Ordering::Relaxed);
        }
        let mut req = Request::new(tokio_stream::wrappers::ReceiverStream::new(frames));
        if let Some(b) = &bearer {
            req.metadata_mut().insert("authorization", b.clone());
        }
        let mut client = client.clone();
        let rpc = async move { client.relay(req).await };
        tokio::pin!(rpc);
        let ended = loop {
            tokio::select! {
                r = &mut rpc => break r,
                f = rx.recv() => match f {
                    // Waits for room in the stream (the lane's own queue fills meanwhile,
                    // and only a full lane drops), while watching the stream break.
                    Some(f) => tokio::select! {
                        sent = tx.send(f) => {
                            if sent.is_err() {
                                dropped.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        r = &mut rpc => break r,
                    },
                    None => {
                        // The lane closed: end the stream once the receiver has it all.
                        drop(tx);
                        let _ = rpc.await;
                        return;
                    }
                },
                () = stop.cancelled() => return,
            }
        };
        match ended {
            Ok(ack) => {
                let ack = ack.into_inner();
                if ack.refused > 0 {
                    tracing::debug!(node = %node, refused = ack.refused, "cluster: frames refused");
                }
            }
            Err(e) => {
                dropped.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(node = %node, error = %e, "cluster: relay stream broke");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::{Forwarded, ReplicaStore};

    /// Serves `store` on a loopback port until the token is cancelled.
    async fn serve(store: &Arc<ReplicaStore>) -> (SocketAddr, CancellationToken) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(store.service())
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        (addr, stop)
    }

    fn forward_job(data: Bytes) -> Job {
        Job::Forward {
            node: "owner".into(),
            data,
            source: "192.0.2.7:5060".parse().unwrap(),
            hop: Hop::parse("UDP", Some("127.0.0.12:5060".parse().unwrap()), 0).unwrap(),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lane_delivers_its_messages_in_the_order_they_were_queued() {
        let store = ReplicaStore::new(Some("s3cret"));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        store.set_forwarded(Arc::new(move |m: Forwarded| {
            s.lock().unwrap().push((m.from_node, m.data));
        }));
        let (addr, stop) = serve(&store).await;
        let dropped = Arc::new(AtomicU64::new(0));
        let bearer = "Bearer s3cret".parse().ok();
        let lane = open_lane("owner", addr.to_string(), &bearer, &dropped, &stop).unwrap();
        const N: usize = 5000;
        for i in 0..N {
            let job = forward_job(Bytes::from(format!("message {i}")));
            let (node, frame) = job.into_frame("me");
            assert_eq!(node, "owner");
            lane.tx.send(frame).await.unwrap();
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while seen.lock().unwrap().len() < N && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        assert_eq!(dropped.load(Ordering::Relaxed), 0);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.len(), N);
        for (i, (from, data)) in seen.iter().enumerate() {
            assert_eq!(from, "me");
            assert_eq!(
                data,
                format!("message {i}").as_bytes(),
                "message {i} out of order"
            );
        }
    }

    #[tokio::test]
    async fn a_lane_without_the_secret_delivers_nothing() {
        let store = ReplicaStore::new(Some("s3cret"));
        let seen = Arc::new(AtomicU64::new(0));
        let s = seen.clone();
        store.set_forwarded(Arc::new(move |_: Forwarded| {
            s.fetch_add(1, Ordering::Relaxed);
        }));
        let (addr, stop) = serve(&store).await;
        let dropped = Arc::new(AtomicU64::new(0));
        let bearer = "Bearer wrong".parse().ok();
        let lane = open_lane("owner", addr.to_string(), &bearer, &dropped, &stop).unwrap();
        let job = forward_job(Bytes::from_static(b"OPTIONS sip:x SIP/2.0"));
        lane.tx.send(job.into_frame("me").1).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while dropped.load(Ordering::Relaxed) == 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        stop.cancel();
        assert_eq!(seen.load(Ordering::Relaxed), 0);
        assert_eq!(
            dropped.load(Ordering::Relaxed),
            1,
            "the refused stream is counted"
        );
    }

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

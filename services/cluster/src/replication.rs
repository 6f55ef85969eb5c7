//! Call replication: each settled call's state goes to its buddies (the next nodes on
//! the ring after its owner), so that a buddy can take the call over when the owner dies.
//!
//! - **Owner side** (`Replicator`): call actors hand it changes with `try_send` and never
//!   wait (a full queue drops the change and counts it; the call's next change carries the
//!   whole state again). One task keeps the latest state of every live call, and every
//!   `BATCH_EVERY` sends each buddy one batch of what it lacks: one RPC per buddy per
//!   tick, however many calls changed. When the ring changes (a buddy left or a node
//!   joined), calls whose buddies changed are sent to their new ones, and the old ones
//!   are told to drop them. No etcd request is ever made for a call.
//! - **Buddy side** (`ReplicaStore`): the `trunkline.cluster.v1.Replication` service, the
//!   replicas held per owner.
//!
//! Node-to-node requests carry `[cluster] secret` as a bearer token when one is set.

use crate::membership::Membership;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use trunkline_proto::cluster::v1::replication_client::ReplicationClient;
use trunkline_proto::cluster::v1::replication_server::{Replication, ReplicationServer};
use trunkline_proto::cluster::v1::{
    relay_frame, AdoptedAck, AdoptedCalls, CallCensus, CensusEntry, EmitAck, EmitRequest,
    ForwardAck, ForwardedMessage, HandoverReply, HandoverRequest, PingReply, PingRequest, RelayAck,
    RelayFrame, Replica, ReplicaAck, ReplicaBatch,
};

/// What lets go of this node's calls another node adopted (call ids in, how many were
/// still here out).
pub type AdoptedHandler = Arc<dyn Fn(&[String]) -> u32 + Send + Sync>;

/// What handles a SIP message another node forwarded here.
pub type ForwardedHandler = Arc<dyn Fn(Forwarded) + Send + Sync>;

/// A SIP message another node received for one of this node's dialogs.
#[derive(Debug)]
pub struct Forwarded {
    /// The node that received it.
    pub from_node: String,
    /// Where it came from.
    pub source: std::net::SocketAddr,
    /// How it reached that node.
    pub hop: crate::forward::Hop,
    pub data: bytes::Bytes,
}

/// A message another node asks this one to send for it to `dest`, over `hop` (one of
/// this node's sockets, and over a stream its connection).
#[derive(Debug)]
pub struct Emit {
    pub dest: std::net::SocketAddr,
    pub hop: crate::forward::Hop,
    pub data: bytes::Bytes,
}

/// What sends what another node asks this one to send (the transports).
pub type EmitHandler = Arc<dyn Fn(Emit) + Send + Sync>;

/// How often changes go out.
const BATCH_EVERY: Duration = Duration::from_millis(50);
/// Changes waiting for the replication task; past it a change is dropped (and counted).
const QUEUE: usize = 65_536;
/// Upserts per RPC at most (a batch stays well under gRPC's 4 MiB default).
const MAX_BATCH: usize = 512;
/// Ticks between looks at the census (once a second): it costs one pass over the live
/// calls, and goes out only when it changed.
const CENSUS_TICKS: u32 = 20;
/// Census entries and holders per entry a node accepts from another (a census has one
/// entry per set of holders: members, or pairs of them with factor 2).
const MAX_CENSUS_ENTRIES: usize = 4096;
const MAX_HOLDERS: usize = 8;

/// A change of one call, from its actor.
#[derive(Debug)]
pub enum Change {
    /// The call's whole replicable state, as it is now; `adoptable` is false for a call
    /// still ringing (its buddy can only report it lost).
    Upsert {
        call_id: Arc<str>,
        state: Vec<u8>,
        adoptable: bool,
    },
    /// The call ended.
    Remove { call_id: Arc<str> },
    /// The node is leaving with calls up: bring every buddy up to date, then ask each
    /// to adopt what it holds (see `Replicator::handover`).
    Handover {
        reply: tokio::sync::oneshot::Sender<Handover>,
    },
}

/// What a handover achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Handover {
    /// Calls the buddies said they are adopting.
    pub adopting: u64,
    /// Live calls no buddy had when the handover was asked for (never settled, or no
    /// buddy reachable): they end with the node.
    pub unreplicated: u64,
}

/// The owner side: what call actors send their changes to.
#[derive(Debug, Clone)]
pub struct Replicator {
    tx: mpsc::Sender<Change>,
    dropped: Arc<AtomicU64>,
    owned: Arc<AtomicU64>,
    /// Batches and encoded bytes sent to buddies (the cost of replication on the wire).
    sent: Arc<SentCounters>,
}

/// What the replicator has put on the wire.
#[derive(Debug, Default)]
pub struct SentCounters {
    pub batches: AtomicU64,
    pub bytes: AtomicU64,
}

impl Replicator {
    /// Hands a change over without waiting.
    pub fn send(&self, change: Change) {
        if self.tx.try_send(change).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Hands every replicated call to its buddy (a planned leave): the queue is flushed
    /// first, so the buddies hold the latest state of every call, then each adopts
    /// what it holds. Waits for the buddies' answers (each re-INVITEs its calls at
    /// once); the node then lets its calls go without sending anything for them.
    pub async fn handover(&self) -> Handover {
        let (reply, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(Change::Handover { reply }).await.is_err() {
            return Handover::default();
        }
        rx.await.unwrap_or_default()
    }

    /// Changes dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Batches and bytes sent to buddies so far.
    pub fn sent(&self) -> (u64, u64) {
        (
            self.sent.batches.load(Ordering::Relaxed),
            self.sent.bytes.load(Ordering::Relaxed),
        )
    }

    /// Live calls of this node the replicator keeps state for.
    pub fn owned(&self) -> u64 {
        self.owned.load(Ordering::Relaxed)
    }

    /// Starts the replication task.
    pub fn start(
        membership: Arc<Membership>,
        me: String,
        factor: usize,
        secret: Option<String>,
        stop: CancellationToken,
    ) -> Replicator {
        let (tx, rx) = mpsc::channel(QUEUE);
        let r = Replicator {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
            owned: Arc::new(AtomicU64::new(0)),
            sent: Arc::new(SentCounters::default()),
        };
        let owned = r.owned.clone();
        let sent = r.sent.clone();
        tokio::spawn(async move {
            let mut task = Task {
                me,
                factor: factor.max(1),
                secret,
                membership,
                calls: HashMap::new(),
                dirty: HashSet::new(),
                removals: HashMap::new(),
                clients: HashMap::new(),
                version: 0,
                ring_revision: -1,
                full_sent: HashSet::new(),
                handover: None,
                sent,
                census: Census::default(),
            };
            task.run(rx, owned, stop).await;
        });
        r
    }
}

struct Held {
    version: u64,
    adoptable: bool,
    state: Arc<[u8]>,
    /// The buddies that have this version.
    sent_to: Vec<String>,
    /// The buddies that hold some version (sorted): what the census counts.
    holders: Vec<String>,
    /// How many buddies should have it (as of the last look).
    want: usize,
}

struct Task {
    sent: Arc<SentCounters>,
    me: String,
    factor: usize,
    secret: Option<String>,
    membership: Arc<Membership>,
    calls: HashMap<Arc<str>, Held>,
    /// Calls to look at on the next tick.
    dirty: HashSet<Arc<str>>,
    /// Removals still owed to each buddy.
    removals: HashMap<String, Vec<String>>,
    clients: HashMap<String, (String, ReplicationClient<tonic::transport::Channel>)>,
    version: u64,
    ring_revision: i64,
    /// Buddies that got a full batch since they (re)appeared.
    full_sent: HashSet<String>,
    /// A handover asked for, answered once the buddies are up to date.
    handover: Option<tokio::sync::oneshot::Sender<Handover>>,
    census: Census,
}

/// The census as last sent, and to whom.
#[derive(Default)]
struct Census {
    ticks: u32,
    last: Option<CallCensus>,
    /// Members that have `last`.
    sent_to: HashSet<String>,
    /// Set once the calls were handed over: the empty census sent then is the last.
    done: bool,
}

impl Task {
    async fn run(
        &mut self,
        mut rx: mpsc::Receiver<Change>,
        owned: Arc<AtomicU64>,
        stop: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(BATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            while let Ok(change) = rx.try_recv() {
                self.apply(change);
            }
            owned.store(self.calls.len() as u64, Ordering::Relaxed);
            self.flush().await;
            if let Some(reply) = self.handover.take() {
                let outcome = self.hand_over().await;
                let _ = reply.send(outcome);
            }
        }
    }

    /// Flushes until every call is with its buddies (a few ticks at most), then asks
    /// each buddy to adopt the calls it holds.
    async fn hand_over(&mut self) -> Handover {
        for _ in 0..20 {
            if self
                .calls
                .values()
                .all(|h| h.want > 0 && h.sent_to.len() >= h.want)
            {
                break;
            }
            tokio::time::sleep(BATCH_EVERY).await;
            self.dirty.extend(self.calls.keys().cloned());
            self.flush().await;
        }
        let unreplicated = self
            .calls
            .values()
            .filter(|h| h.adoptable && h.sent_to.is_empty())
            .count() as u64;
        // Each answered call goes to one buddy: the first on the ring that has it (with
        // two buddies, the other only drops its copy). Ringing calls go to nobody: they
        // end with this node.
        let members = self.membership.members();
        let mut by_buddy: HashMap<String, Vec<String>> = HashMap::new();
        for (call_id, h) in &self.calls {
            for b in h.sent_to.iter() {
                by_buddy.entry(b.clone()).or_default();
            }
            if !h.adoptable {
                continue;
            }
            let first = members
                .ring
                .nodes_for(call_id, self.factor, Some(&self.me))
                .into_iter()
                .find(|b| h.sent_to.iter().any(|s| s == b))
                .or_else(|| h.sent_to.first().map(String::as_str))
                .map(str::to_string);
            if let Some(b) = first {
                by_buddy.entry(b).or_default().push(call_id.to_string());
            }
        }
        let mut adopting = 0u64;
        for (buddy, call_ids) in by_buddy {
            let Some(addr) = members.nodes.get(&buddy).and_then(|n| n.cluster.clone()) else {
                continue;
            };
            match self.call_handover(&buddy, &addr, call_ids).await {
                Ok(n) => adopting += u64::from(n),
                Err(e) => tracing::warn!(buddy = %buddy, error = %e, "cluster: handover refused"),
            }
        }
        self.census_after_handover().await;
        tracing::info!(
            adopting,
            unreplicated,
            "cluster: calls handed over to buddies"
        );
        Handover {
            adopting,
            unreplicated,
        }
    }

    async fn call_handover(
        &mut self,
        buddy: &str,
        addr: &str,
        call_ids: Vec<String>,
    ) -> Result<u32, String> {
        let mut req = Request::new(HandoverRequest {
            owner: self.me.clone(),
            call_ids,
        });
        self.authorize(&mut req)?;
        let client = self.client(buddy, addr)?;
        client
            .handover(req)
            .await
            .map(|r| r.into_inner().adopting)
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    fn apply(&mut self, change: Change) {
        match change {
            Change::Handover { reply } => self.handover = Some(reply),
            Change::Upsert {
                call_id,
                state,
                adoptable,
            } => {
                self.version += 1;
                self.dirty.insert(call_id.clone());
                let holders = self
                    .calls
                    .remove(&call_id)
                    .map(|h| h.holders)
                    .unwrap_or_default();
                self.calls.insert(
                    call_id,
                    Held {
                        version: self.version,
                        adoptable,
                        state: Arc::from(state),
                        sent_to: Vec::new(),
                        holders,
                        want: 0,
                    },
                );
            }
            Change::Remove { call_id } => {
                self.dirty.remove(&call_id);
                if let Some(held) = self.calls.remove(&call_id) {
                    for b in held.sent_to {
                        self.removals
                            .entry(b)
                            .or_default()
                            .push(call_id.to_string());
                    }
                }
            }
        }
    }

    /// Sends every buddy what it lacks.
    async fn flush(&mut self) {
        let members = self.membership.members();
        let ring_changed = members.revision != self.ring_revision;
        self.ring_revision = members.revision;
        let mut batches: HashMap<String, ReplicaBatch> = HashMap::new();
        // Only calls that changed (or still lack a buddy) are looked at, unless the ring
        // moved: a tick costs what changed, not the number of live calls.
        let candidates: Vec<Arc<str>> = if ring_changed {
            self.calls.keys().cloned().collect()
        } else {
            self.dirty.drain().collect()
        };
        for call_id in &candidates {
            let Some(held) = self.calls.get_mut(call_id) else {
                continue;
            };
            let buddies: Vec<String> = members
                .ring
                .nodes_for(call_id, self.factor, Some(&self.me))
                .into_iter()
                .map(str::to_string)
                .collect();
            if ring_changed {
                // A buddy that no longer is one drops the call.
                for old in held.sent_to.iter().filter(|b| !buddies.contains(b)) {
                    self.removals
                        .entry(old.clone())
                        .or_default()
                        .push(call_id.to_string());
                }
                held.sent_to.retain(|b| buddies.contains(b));
                held.holders.retain(|b| buddies.contains(b));
            }
            held.want = buddies.len();
            for b in buddies {
                if held.sent_to.contains(&b) {
                    continue;
                }
                let batch = batch_for(&mut batches, &b, &self.me);
                if batch.upserts.len() < MAX_BATCH {
                    batch.upserts.push(Replica {
                        call_id: call_id.to_string(),
                        version: held.version,
                        state: held.state.to_vec(),
                    });
                }
            }
        }
        for (b, removed) in &self.removals {
            if removed.is_empty() {
                continue;
            }
            batch_for(&mut batches, b, &self.me)
                .removals
                .extend(removed.iter().cloned());
        }
        // A buddy seen for the first time (or back) gets a full batch, so it drops what
        // it may still hold from an earlier life of this node.
        for (id, _) in members.nodes.iter().filter(|(id, _)| **id != self.me) {
            if !self.full_sent.contains(id) {
                batch_for(&mut batches, id, &self.me).full = true;
            }
        }
        self.full_sent.retain(|id| members.nodes.contains_key(id));
        self.attach_census(&members, &mut batches);
        for (buddy, batch) in batches {
            let Some(addr) = members.nodes.get(&buddy).and_then(|n| n.cluster.clone()) else {
                continue;
            };
            let full = batch.full;
            let census = batch.census.is_some();
            let sent: Vec<(String, u64)> = batch
                .upserts
                .iter()
                .map(|r| (r.call_id.clone(), r.version))
                .collect();
            let removals = batch.removals.len();
            self.sent.batches.fetch_add(1, Ordering::Relaxed);
            self.sent.bytes.fetch_add(
                prost::Message::encoded_len(&batch) as u64,
                Ordering::Relaxed,
            );
            match self.send(&buddy, &addr, batch).await {
                Ok(()) => {
                    for (call_id, version) in sent {
                        if let Some(h) = self.calls.get_mut(call_id.as_str()) {
                            if h.version == version && !h.sent_to.contains(&buddy) {
                                h.sent_to.push(buddy.clone());
                            }
                            if let Err(at) = h.holders.binary_search(&buddy) {
                                h.holders.insert(at, buddy.clone());
                            }
                        }
                    }
                    if let Some(r) = self.removals.get_mut(&buddy) {
                        r.drain(..removals.min(r.len()));
                    }
                    if full {
                        self.full_sent.insert(buddy.clone());
                    }
                    if census {
                        self.census.sent_to.insert(buddy.clone());
                    }
                }
                Err(e) => {
                    tracing::debug!(buddy = %buddy, error = %e, "cluster: replication batch failed; retried");
                    self.clients.remove(&buddy);
                }
            }
        }
        self.removals
            .retain(|b, r| !r.is_empty() && members.nodes.contains_key(b));
        // A call some buddy still lacks (a failed send, a full batch cut short) is looked
        // at again on the next tick.
        for call_id in candidates {
            if self
                .calls
                .get(&call_id)
                .is_some_and(|h| h.sent_to.len() < h.want)
            {
                self.dirty.insert(call_id);
            }
        }
    }

    /// Once a second, the census of the live calls when it changed; and, to every member
    /// that lacks the current one (one that just joined, or a failed send), each tick.
    fn attach_census(
        &mut self,
        members: &crate::membership::Members,
        batches: &mut HashMap<String, ReplicaBatch>,
    ) {
        if self.census.done {
            return;
        }
        self.census.ticks += 1;
        if self.census.ticks >= CENSUS_TICKS || self.census.last.is_none() {
            self.census.ticks = 0;
            let now = count_census(self.calls.values().map(|h| h.holders.as_slice()));
            if self.census.last.as_ref() != Some(&now) {
                self.census.last = Some(now);
                self.census.sent_to.clear();
            }
        }
        self.census
            .sent_to
            .retain(|id| members.nodes.contains_key(id));
        let Some(census) = &self.census.last else {
            return;
        };
        for id in members
            .nodes
            .keys()
            .filter(|id| **id != self.me && !self.census.sent_to.contains(*id))
        {
            batch_for(batches, id, &self.me).census = Some(census.clone());
        }
    }

    /// After a handover every call either moved to a buddy or ends with this node: the
    /// members are told the node has no calls left, so none is counted lost when it goes.
    async fn census_after_handover(&mut self) {
        self.census.done = true;
        let members = self.membership.members();
        let others: Vec<(String, String)> = members
            .nodes
            .iter()
            .filter(|(id, _)| **id != self.me)
            .filter_map(|(id, n)| Some((id.clone(), n.cluster.clone()?)))
            .collect();
        for (id, addr) in others {
            let batch = ReplicaBatch {
                owner: self.me.clone(),
                census: Some(CallCensus::default()),
                ..ReplicaBatch::default()
            };
            if let Err(e) = self.send(&id, &addr, batch).await {
                tracing::debug!(node = %id, error = %e, "cluster: last census not sent");
            }
        }
    }

    async fn send(&mut self, buddy: &str, addr: &str, batch: ReplicaBatch) -> Result<(), String> {
        let mut req = Request::new(batch);
        self.authorize(&mut req)?;
        let client = self.client(buddy, addr)?;
        client
            .replicate(req)
            .await
            .map(|_| ())
            .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
    }

    /// The gRPC client of `buddy` at `addr` (a new one when its address changed).
    fn client(
        &mut self,
        buddy: &str,
        addr: &str,
    ) -> Result<&mut ReplicationClient<tonic::transport::Channel>, String> {
        let stale = self.clients.get(buddy).is_none_or(|(a, _)| a != addr);
        if stale {
            let endpoint =
                crate::link::endpoint(addr, Duration::from_secs(1), Some(Duration::from_secs(2)))?;
            let channel = endpoint.connect_lazy();
            self.clients.insert(
                buddy.to_string(),
                (addr.to_string(), ReplicationClient::new(channel)),
            );
        }
        self.clients
            .get_mut(buddy)
            .map(|(_, c)| c)
            .ok_or_else(|| "no client".to_string())
    }

    /// Puts `[cluster] secret` on a request as a bearer token, when one is set.
    fn authorize<T>(&self, req: &mut Request<T>) -> Result<(), String> {
        if let Some(s) = &self.secret {
            let value = format!("Bearer {s}")
                .parse()
                .map_err(|_| "the cluster secret is not a valid header value".to_string())?;
            req.metadata_mut().insert("authorization", value);
        }
        Ok(())
    }
}

/// The batch of this tick for node `to`, from `owner` (a new, empty one if none yet).
fn batch_for<'a>(
    batches: &'a mut HashMap<String, ReplicaBatch>,
    to: &str,
    owner: &str,
) -> &'a mut ReplicaBatch {
    batches
        .entry(to.to_string())
        .or_insert_with(|| ReplicaBatch {
            owner: owner.to_string(),
            ..ReplicaBatch::default()
        })
}

/// Counts calls by the set of nodes that hold them (each `holders` slice sorted).
fn count_census<'a>(holders: impl Iterator<Item = &'a [String]>) -> CallCensus {
    let mut by: HashMap<&[String], u32> = HashMap::new();
    for h in holders {
        *by.entry(h).or_default() += 1;
    }
    let mut entries: Vec<CensusEntry> = by
        .into_iter()
        .map(|(h, calls)| CensusEntry {
            holders: h.to_vec(),
            calls,
        })
        .collect();
    entries.sort_by(|a, b| a.holders.cmp(&b.holders));
    CallCensus { entries }
}

/// One owner's calls as a buddy holds them: call id to (version, state).
type OwnerReplicas = HashMap<String, (u64, Vec<u8>)>;

/// The buddy side: replicas held, per owner.
#[derive(Default)]
pub struct ReplicaStore {
    /// This node's id, for `Ping`.
    me: std::sync::OnceLock<String>,
    by_owner: Mutex<HashMap<String, OwnerReplicas>>,
    /// Each member's last census: how many of its calls which nodes hold.
    census: Mutex<HashMap<String, Vec<CensusEntry>>>,
    secret: Option<[u8; 32]>,
    /// Where calls handed over by a draining owner go (the takeover's adoption queue).
    orphans: std::sync::OnceLock<mpsc::UnboundedSender<crate::takeover::Orphan>>,
    /// Where messages forwarded by other nodes go (the dispatcher).
    forwarded: std::sync::OnceLock<ForwardedHandler>,
    /// What lets go of calls another node adopted (the dispatcher).
    adopted: std::sync::OnceLock<AdoptedHandler>,
    /// What sends messages other nodes' dialogs need sent from here (the transports).
    emit: std::sync::OnceLock<EmitHandler>,
}

impl std::fmt::Debug for ReplicaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicaStore")
            .field("held", &self.held())
            .finish_non_exhaustive()
    }
}

impl ReplicaStore {
    pub fn new(secret: Option<&str>) -> Arc<ReplicaStore> {
        Arc::new(ReplicaStore {
            by_owner: Mutex::new(HashMap::new()),
            census: Mutex::new(HashMap::new()),
            secret: secret.map(|s| Sha256::digest(s.as_bytes()).into()),
            orphans: std::sync::OnceLock::new(),
            forwarded: std::sync::OnceLock::new(),
            adopted: std::sync::OnceLock::new(),
            emit: std::sync::OnceLock::new(),
            me: std::sync::OnceLock::new(),
        })
    }

    /// Replicas held, per owner.
    pub fn held(&self) -> HashMap<String, usize> {
        self.by_owner
            .lock()
            .map(|m| m.iter().map(|(o, c)| (o.clone(), c.len())).collect())
            .unwrap_or_default()
    }

    /// The state of `call_id` held for `owner`, if any.
    pub fn get(&self, owner: &str, call_id: &str) -> Option<Vec<u8>> {
        let m = self.by_owner.lock().ok()?;
        m.get(owner)?.get(call_id).map(|(_, s)| s.clone())
    }

    /// Removes and returns everything held for `owner` (call id, state): the owner is
    /// gone and its calls are being taken over.
    pub fn take_owner(&self, owner: &str) -> Vec<(String, Vec<u8>)> {
        let Ok(mut m) = self.by_owner.lock() else {
            return Vec::new();
        };
        m.remove(owner)
            .map(|calls| calls.into_iter().map(|(id, (_, s))| (id, s)).collect())
            .unwrap_or_default()
    }

    /// Nodes whose census this node has.
    pub fn census_owners(&self) -> Vec<String> {
        self.census
            .lock()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns `owner`'s last census (empty if none came): the owner is gone.
    pub fn take_census(&self, owner: &str) -> Vec<CensusEntry> {
        self.census
            .lock()
            .ok()
            .and_then(|mut m| m.remove(owner))
            .unwrap_or_default()
    }

    /// Sends calls handed over by a draining owner to `orphans` from now on.
    pub fn set_orphans(&self, orphans: mpsc::UnboundedSender<crate::takeover::Orphan>) {
        let _ = self.orphans.set(orphans);
    }

    /// Hands SIP messages other nodes forward here to `handler` from now on.
    pub fn set_forwarded(&self, handler: ForwardedHandler) {
        let _ = self.forwarded.set(handler);
    }

    /// Sends messages other nodes ask this one to send through `handler`, from now on.
    pub fn set_emit(&self, handler: EmitHandler) {
        let _ = self.emit.set(handler);
    }

    /// Names this node in `Ping` answers.
    pub fn set_me(&self, me: &str) {
        let _ = self.me.set(me.to_string());
    }

    /// Lets `handler` release calls other nodes say they adopted, from now on.
    pub fn set_adopted(&self, handler: AdoptedHandler) {
        let _ = self.adopted.set(handler);
    }

    /// The tonic service over this store.
    pub fn service(self: &Arc<Self>) -> ReplicationServer<StoreService> {
        ReplicationServer::new(StoreService(self.clone())).max_decoding_message_size(8 << 20)
    }

    /// Hands a message another node forwarded to the dispatcher (see `Replication/Forward`).
    #[allow(clippy::result_large_err)] // tonic's Status
    fn take_forward(&self, m: ForwardedMessage) -> Result<(), Status> {
        if m.data.is_empty() || m.data.len() > crate::forward::MAX_FORWARD {
            return Err(Status::invalid_argument("data: one SIP message"));
        }
        let source: std::net::SocketAddr = m
            .source
            .parse()
            .map_err(|_| Status::invalid_argument("source: ip:port"))?;
        let local = match m.local.as_str() {
            "" => None,
            l => Some(
                l.parse()
                    .map_err(|_| Status::invalid_argument("local: ip:port"))?,
            ),
        };
        let hop = crate::forward::Hop::parse(&m.transport, local, m.connection)
            .map_err(Status::invalid_argument)?;
        let Some(handler) = self.forwarded.get() else {
            return Err(Status::unavailable("this node takes no forwarded messages"));
        };
        handler(Forwarded {
            from_node: m.from_node,
            source,
            hop,
            data: bytes::Bytes::from(m.data),
        });
        Ok(())
    }

    /// Hands what another node asks this one to send to the transports (see
    /// `Replication/Emit`).
    #[allow(clippy::result_large_err)] // tonic's Status
    fn take_emit(&self, m: EmitRequest) -> Result<(), Status> {
        if m.data.is_empty() || m.data.len() > crate::forward::MAX_FORWARD {
            return Err(Status::invalid_argument("data: one SIP message"));
        }
        let dest = m
            .dest
            .parse()
            .map_err(|_| Status::invalid_argument("dest: ip:port"))?;
        let local = m
            .local
            .parse()
            .map_err(|_| Status::invalid_argument("local: ip:port"))?;
        let hop = crate::forward::Hop::parse(&m.transport, Some(local), m.connection)
            .map_err(Status::invalid_argument)?;
        let Some(handler) = self.emit.get() else {
            return Err(Status::unavailable("this node sends nothing for others"));
        };
        handler(Emit {
            dest,
            hop,
            data: bytes::Bytes::from(m.data),
        });
        Ok(())
    }

    #[allow(clippy::result_large_err)] // tonic's Status
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(want) = &self.secret else {
            return Ok(());
        };
        let got = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| Sha256::digest(t.trim().as_bytes()));
        match got {
            Some(d) if bool::from(d.as_slice().ct_eq(want)) => Ok(()),
            _ => Err(Status::unauthenticated("cluster secret missing or wrong")),
        }
    }
}

/// The `Replication` service of a `ReplicaStore`.
#[derive(Debug, Clone)]
pub struct StoreService(Arc<ReplicaStore>);

#[tonic::async_trait]
impl Replication for StoreService {
    async fn replicate(&self, req: Request<ReplicaBatch>) -> Result<Response<ReplicaAck>, Status> {
        self.0.check(&req)?;
        let mut batch = req.into_inner();
        if batch.owner.is_empty() || batch.owner.len() > 64 {
            return Err(Status::invalid_argument("owner: a node id"));
        }
        if let Some(census) = batch.census.take() {
            let bad = census.entries.len() > MAX_CENSUS_ENTRIES
                || census.entries.iter().any(|e| {
                    e.holders.len() > MAX_HOLDERS || e.holders.iter().any(|h| h.len() > 64)
                });
            if bad {
                return Err(Status::invalid_argument(
                    "census: too many entries or holders",
                ));
            }
            self.0
                .census
                .lock()
                .map_err(|_| Status::internal("replica store poisoned"))?
                .insert(batch.owner.clone(), census.entries);
        }
        let mut m = self
            .0
            .by_owner
            .lock()
            .map_err(|_| Status::internal("replica store poisoned"))?;
        let held = m.entry(batch.owner.clone()).or_default();
        if batch.full {
            let named: HashSet<&str> = batch.upserts.iter().map(|r| r.call_id.as_str()).collect();
            held.retain(|k, _| named.contains(k.as_str()));
        }
        for r in batch.upserts {
            let newer = held.get(&r.call_id).is_none_or(|(v, _)| *v < r.version);
            if newer {
                held.insert(r.call_id, (r.version, r.state));
            }
        }
        for id in &batch.removals {
            held.remove(id);
        }
        let count = u32::try_from(held.len()).unwrap_or(u32::MAX);
        if held.is_empty() {
            m.remove(&batch.owner);
        }
        Ok(Response::new(ReplicaAck { held: count }))
    }

    async fn handover(
        &self,
        req: Request<HandoverRequest>,
    ) -> Result<Response<HandoverReply>, Status> {
        self.0.check(&req)?;
        let m = req.into_inner();
        let owner = m.owner;
        if owner.is_empty() || owner.len() > 64 {
            return Err(Status::invalid_argument("owner: a node id"));
        }
        let Some(orphans) = self.0.orphans.get() else {
            return Err(Status::unavailable("this node does not adopt calls"));
        };
        let named: HashSet<String> = m.call_ids.into_iter().collect();
        // What the owner did not name is another buddy's to adopt, or a ringing call.
        let calls: Vec<(String, Vec<u8>)> = self
            .0
            .take_owner(&owner)
            .into_iter()
            .filter(|(id, _)| named.contains(id))
            .collect();
        let adopting = u32::try_from(calls.len()).unwrap_or(u32::MAX);
        for (call_id, state) in calls {
            let _ = orphans.send(crate::takeover::Orphan {
                owner: owner.clone(),
                call_id,
                state,
            });
        }
        tracing::info!(owner = %owner, adopting, "cluster: calls handed over by a draining node");
        Ok(Response::new(HandoverReply { adopting }))
    }

    async fn forward(
        &self,
        req: Request<ForwardedMessage>,
    ) -> Result<Response<ForwardAck>, Status> {
        self.0.check(&req)?;
        self.0.take_forward(req.into_inner())?;
        Ok(Response::new(ForwardAck {}))
    }

    async fn emit(&self, req: Request<EmitRequest>) -> Result<Response<EmitAck>, Status> {
        self.0.check(&req)?;
        self.0.take_emit(req.into_inner())?;
        Ok(Response::new(EmitAck {}))
    }

    async fn relay(
        &self,
        req: Request<tonic::Streaming<RelayFrame>>,
    ) -> Result<Response<RelayAck>, Status> {
        self.0.check(&req)?;
        let mut frames = req.into_inner();
        let mut ack = RelayAck::default();
        // One frame after the other: the handlers only queue (into the dispatcher, or a
        // transport), so the order frames arrive in is the order they are handled in.
        while let Some(frame) = frames.message().await? {
            let taken = match frame.frame {
                Some(relay_frame::Frame::Forward(m)) => self.0.take_forward(m),
                Some(relay_frame::Frame::Emit(m)) => self.0.take_emit(m),
                None => Err(Status::invalid_argument("frame: forward or emit")),
            };
            match taken {
                Ok(()) => ack.handled += 1,
                // Nothing on this node takes them: say so rather than count them all.
                Err(s) if s.code() == tonic::Code::Unavailable => return Err(s),
                Err(s) => {
                    ack.refused += 1;
                    tracing::debug!(error = %s.message(), "cluster: relayed frame refused");
                }
            }
        }
        Ok(Response::new(ack))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingReply>, Status> {
        self.0.check(&req)?;
        Ok(Response::new(PingReply {
            node: self.0.me.get().cloned().unwrap_or_default(),
        }))
    }

    async fn adopted(&self, req: Request<AdoptedCalls>) -> Result<Response<AdoptedAck>, Status> {
        self.0.check(&req)?;
        let m = req.into_inner();
        let Some(handler) = self.0.adopted.get() else {
            return Err(Status::unavailable("this node has no calls to let go"));
        };
        let released = handler(&m.call_ids);
        tracing::warn!(adopter = %m.adopter, named = m.call_ids.len(), released,
            "cluster: calls of this node were adopted while it looked dead; let go");
        Ok(Response::new(AdoptedAck { released }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replica(id: &str, version: u64) -> Replica {
        Replica {
            call_id: id.into(),
            version,
            state: format!("{id}@{version}").into_bytes(),
        }
    }

    async fn push(svc: &StoreService, batch: ReplicaBatch) -> Result<u32, Status> {
        svc.replicate(Request::new(batch))
            .await
            .map(|r| r.into_inner().held)
    }

    #[tokio::test]
    async fn newer_versions_win_removals_apply_and_a_full_batch_replaces() {
        let store = ReplicaStore::new(None);
        let svc = StoreService(store.clone());
        let batch = |upserts, removals: Vec<&str>, full| ReplicaBatch {
            owner: "n1".into(),
            upserts,
            removals: removals.into_iter().map(String::from).collect(),
            full,
            census: None,
        };
        assert_eq!(
            push(
                &svc,
                batch(vec![replica("c1", 2), replica("c2", 1)], vec![], false)
            )
            .await
            .unwrap(),
            2
        );
        // An older version arriving late does not overwrite a newer one.
        push(&svc, batch(vec![replica("c1", 1)], vec![], false))
            .await
            .unwrap();
        assert_eq!(store.get("n1", "c1").unwrap(), b"c1@2");
        assert_eq!(
            push(&svc, batch(vec![], vec!["c2"], false)).await.unwrap(),
            1
        );
        // A full batch: what it does not name is dropped.
        assert_eq!(
            push(&svc, batch(vec![replica("c3", 5)], vec![], true))
                .await
                .unwrap(),
            1
        );
        assert!(store.get("n1", "c1").is_none());
        assert_eq!(store.held().get("n1"), Some(&1));
        assert_eq!(
            push(&svc, batch(vec![], vec!["c3"], false)).await.unwrap(),
            0
        );
        assert!(
            store.held().is_empty(),
            "an owner with nothing held is forgotten"
        );
    }

    #[tokio::test]
    async fn a_secret_gates_the_store() {
        let store = ReplicaStore::new(Some("0123456789abcdef-cluster"));
        let svc = StoreService(store.clone());
        let batch = ReplicaBatch {
            owner: "n1".into(),
            upserts: vec![replica("c1", 1)],
            ..ReplicaBatch::default()
        };
        let denied = svc
            .replicate(Request::new(batch.clone()))
            .await
            .unwrap_err();
        assert_eq!(denied.code(), tonic::Code::Unauthenticated);
        let mut req = Request::new(batch);
        req.metadata_mut().insert(
            "authorization",
            "Bearer 0123456789abcdef-cluster".parse().unwrap(),
        );
        assert_eq!(svc.replicate(req).await.unwrap().into_inner().held, 1);
    }

    #[test]
    fn the_census_counts_calls_by_their_set_of_holders() {
        let b = vec!["b".to_string()];
        let bc = vec!["b".to_string(), "c".to_string()];
        let none: Vec<String> = Vec::new();
        let calls = [&b, &bc, &b, &none, &bc, &b];
        let census = count_census(calls.iter().map(|h| h.as_slice()));
        let got: Vec<(Vec<String>, u32)> = census
            .entries
            .into_iter()
            .map(|e| (e.holders, e.calls))
            .collect();
        assert_eq!(got, vec![(none, 1), (b, 3), (bc, 2)]);
        assert_eq!(count_census(std::iter::empty()), CallCensus::default());
    }

    #[tokio::test]
    async fn a_census_is_kept_per_owner_until_taken_and_bounded() {
        let store = ReplicaStore::new(None);
        let svc = StoreService(store.clone());
        let census = |entries: Vec<(Vec<&str>, u32)>| CallCensus {
            entries: entries
                .into_iter()
                .map(|(h, calls)| CensusEntry {
                    holders: h.into_iter().map(String::from).collect(),
                    calls,
                })
                .collect(),
        };
        // A census alone (no replicas for this node) is kept: its owner is watched.
        let batch = ReplicaBatch {
            owner: "n1".into(),
            census: Some(census(vec![(vec!["n2"], 7), (vec![], 1)])),
            ..ReplicaBatch::default()
        };
        assert_eq!(push(&svc, batch).await.unwrap(), 0);
        assert_eq!(store.census_owners(), vec!["n1".to_string()]);
        // A batch without a census leaves the last one as it was.
        let batch = ReplicaBatch {
            owner: "n1".into(),
            upserts: vec![replica("c1", 1)],
            ..ReplicaBatch::default()
        };
        assert_eq!(push(&svc, batch).await.unwrap(), 1);
        let taken = store.take_census("n1");
        assert_eq!(taken.len(), 2);
        assert_eq!(
            (taken[0].holders.clone(), taken[0].calls),
            (vec!["n2".to_string()], 7)
        );
        assert!(store.census_owners().is_empty());
        assert!(store.take_census("n1").is_empty());
        // One message cannot make the store grow without bound.
        let huge = ReplicaBatch {
            owner: "n1".into(),
            census: Some(census(vec![(vec!["n2"], 1); MAX_CENSUS_ENTRIES + 1])),
            ..ReplicaBatch::default()
        };
        let refused = push(&svc, huge).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        let wide = ReplicaBatch {
            owner: "n1".into(),
            census: Some(census(vec![(vec!["n"; MAX_HOLDERS + 1], 1)])),
            ..ReplicaBatch::default()
        };
        assert!(push(&svc, wide).await.is_err());
        assert!(store.census_owners().is_empty());
    }
}

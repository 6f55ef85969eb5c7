//! Membership in etcd: this node's registration and everyone else's.
//!
//! Two tasks, each reconnecting on its own with back-off, so etcd being down at start or
//! going away later never stops the node:
//!
//! - **Registration.** A lease of `lease_ttl`, and `/trunkline/nodes/<id>` (JSON
//!   `NodeInfo`) put under it, kept alive at a third of the TTL. When etcd comes back and
//!   the lease is gone, a new one is granted and the key put again. A state change
//!   (draining) is put at once. On stop the lease is revoked, so the others see the node
//!   leave at once rather than after the TTL.
//! - **Watch.** The whole prefix is listed (its revision remembered) and then watched from
//!   the next revision. A broken stream resumes from the last revision seen; a compacted
//!   one (the revision is gone) lists again. Each change replaces the published
//!   `Members` (an `ArcSwap`: readers never wait, the call path never touches etcd).
//!
//! During an etcd outage the last membership stays as it was: an outage alone must never
//! make live nodes look dead.

use crate::member::{node_key, NodeInfo, NodeState, NODES_PREFIX};
use crate::ring::Ring;
use arc_swap::ArcSwap;
use etcd_client::{Client, EventType, GetOptions, PutOptions, WatchOptions, WatchResponse};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct MembershipConfig {
    /// etcd's client URLs (`http://127.0.0.1:2379`) and TLS toward them.
    pub etcd: crate::Etcd,
    pub lease_ttl: Duration,
    /// What this node publishes (its `id` is its key).
    pub me: NodeInfo,
}

/// The live nodes as last seen in etcd, and their ring.
#[derive(Debug, Clone, Default)]
pub struct Members {
    pub nodes: BTreeMap<String, NodeInfo>,
    pub ring: Ring,
    /// The etcd revision this view is at (0: never read).
    pub revision: i64,
}

impl Members {
    fn from_nodes(nodes: BTreeMap<String, NodeInfo>, revision: i64) -> Members {
        // Draining nodes take no new calls, so they own none on the ring.
        let ring = Ring::new(
            nodes
                .values()
                .filter(|n| n.state == NodeState::Active)
                .map(|n| n.id.as_str()),
        );
        Members {
            nodes,
            ring,
            revision,
        }
    }
}

/// The node's view of the cluster, shared with whoever needs it.
pub struct Membership {
    members: ArcSwap<Members>,
    connected: AtomicBool,
    registered: AtomicBool,
    state: watch::Sender<NodeState>,
    /// The registration task: `leave` waits for it to revoke the lease.
    registration: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("members", &self.members.load().nodes.len())
            .field("connected", &self.connected())
            .field("registered", &self.registered())
            .finish()
    }
}

/// Back-off between attempts to reach etcd.
const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Membership {
    /// Starts registering and watching; both run until `stop` (which revokes the lease).
    pub fn start(config: MembershipConfig, stop: CancellationToken) -> Arc<Membership> {
        let (state, _) = watch::channel(config.me.state);
        let me = Arc::new(Membership {
            members: ArcSwap::from_pointee(Members::default()),
            connected: AtomicBool::new(false),
            registered: AtomicBool::new(false),
            state,
            registration: std::sync::Mutex::new(None),
            stop: stop.clone(),
        });
        let config = Arc::new(config);
        let registration = tokio::spawn(register_loop(me.clone(), config.clone(), stop.clone()));
        if let Ok(mut slot) = me.registration.lock() {
            *slot = Some(registration);
        }
        tokio::spawn(watch_loop(me.clone(), config, stop));
        me
    }

    /// Leaves the cluster: stops both tasks and waits (at most 3 s) for the lease to be
    /// revoked, so the others drop this node at once instead of after the TTL.
    pub async fn leave(&self) {
        self.stop.cancel();
        let task = self.registration.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }

    /// The membership as last seen (cheap: an `Arc` load).
    pub fn members(&self) -> Arc<Members> {
        self.members.load_full()
    }

    /// Whether the watch is connected to etcd now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// Whether this node's key is in etcd under a live lease, as far as it knows.
    pub fn registered(&self) -> bool {
        self.registered.load(Ordering::Acquire)
    }

    /// Publishes this node's state (draining, or active again).
    pub fn set_state(&self, state: NodeState) {
        self.state.send_replace(state);
    }
}

/// Sleeps the back-off (doubling it) unless stopped; false when stopped.
async fn back_off(delay: &mut Duration, stop: &CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(*delay) => {}
        () = stop.cancelled() => return false,
    }
    *delay = (*delay * 2).min(RETRY_MAX);
    true
}

async fn register_loop(
    me: Arc<Membership>,
    config: Arc<MembershipConfig>,
    stop: CancellationToken,
) {
    let mut delay = RETRY_MIN;
    let mut warned = false;
    loop {
        match register_once(&me, &config, &stop).await {
            Ok(()) => return,
            Err(e) => {
                me.registered.store(false, Ordering::Release);
                if !warned {
                    tracing::warn!(error = %e, "cluster: cannot register in etcd; retrying");
                    warned = true;
                } else {
                    tracing::debug!(error = %e, "cluster: registration retry failed");
                }
            }
        }
        if !back_off(&mut delay, &stop).await {
            return;
        }
    }
}

/// One registration: lease, key, keep-alives and state changes until an error or stop.
async fn register_once(
    me: &Membership,
    config: &MembershipConfig,
    stop: &CancellationToken,
) -> Result<(), etcd_client::Error> {
    let mut client = config.etcd.connect().await?;
    let ttl = i64::try_from(config.lease_ttl.as_secs())
        .unwrap_or(10)
        .max(2);
    let lease = client.lease_grant(ttl, None).await?.id();
    let key = node_key(&config.me.id);
    let mut state_rx = me.state.subscribe();
    let put = |client: &mut Client, state: NodeState| {
        let mut info = config.me.clone();
        info.state = state;
        let value = serde_json::to_vec(&info).unwrap_or_default();
        let mut client = client.clone();
        let key = key.clone();
        async move {
            client
                .put(key, value, Some(PutOptions::new().with_lease(lease)))
                .await
        }
    };
    let state = *state_rx.borrow_and_update();
    put(&mut client, state).await?;
    let (mut keeper, mut responses) = client.lease_keep_alive(lease).await?;
    me.registered.store(true, Ordering::Release);
    tracing::info!(node = %config.me.id, lease, ttl, "cluster: registered in etcd");
    let mut tick = tokio::time::interval(Duration::from_secs((ttl as u64 / 3).max(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await?;
                match responses.message().await? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => {
                        // The lease expired (etcd was away longer than the TTL): start over.
                        return Err(etcd_client::Error::LeaseKeepAliveError(
                            "lease expired".to_string(),
                        ));
                    }
                }
            }
            changed = state_rx.changed() => {
                if changed.is_ok() {
                    let state = *state_rx.borrow_and_update();
                    put(&mut client, state).await?;
                    tracing::info!(?state, "cluster: state published");
                }
            }
            () = stop.cancelled() => {
                // Leave at once: the others drop this node now, not after the TTL.
                let _ = tokio::time::timeout(Duration::from_secs(2), client.lease_revoke(lease)).await;
                me.registered.store(false, Ordering::Release);
                return Ok(());
            }
        }
    }
}

async fn watch_loop(me: Arc<Membership>, config: Arc<MembershipConfig>, stop: CancellationToken) {
    let mut delay = RETRY_MIN;
    let mut warned = false;
    loop {
        let result = tokio::select! {
            r = watch_once(&me, &config, &mut delay) => r,
            () = stop.cancelled() => return,
        };
        me.connected.store(false, Ordering::Release);
        match result {
            Err(e) if !warned => {
                tracing::warn!(error = %e, endpoints = ?config.etcd.endpoints,
                    "cluster: etcd unreachable; keeping the last membership");
                warned = true;
            }
            Err(e) => tracing::debug!(error = %e, "cluster: watch retry failed"),
            Ok(()) => {}
        }
        if !back_off(&mut delay, &stop).await {
            return;
        }
    }
}

/// Lists the membership, then watches it from the next revision until the stream breaks.
/// Every (re)connection lists afresh: that covers a stream that broke, a revision that was
/// compacted away and an etcd that came back empty alike, at the cost of one small read.
async fn watch_once(
    me: &Membership,
    config: &MembershipConfig,
    delay: &mut Duration,
) -> Result<(), etcd_client::Error> {
    let mut client = config.etcd.connect().await?;
    let listed = client
        .get(NODES_PREFIX, Some(GetOptions::new().with_prefix()))
        .await?;
    let revision = listed.header().map_or(0, |h| h.revision());
    let fresh = Members::from_nodes(list(listed.kvs()), revision);
    publish(me, fresh);
    let mut stream = client
        .watch(
            NODES_PREFIX,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision + 1),
            ),
        )
        .await?;
    me.connected.store(true, Ordering::Release);
    *delay = RETRY_MIN;
    tracing::info!(revision, "cluster: watching the membership");
    while let Some(resp) = stream.message().await? {
        if resp.compact_revision() > 0 || resp.canceled() {
            // The revision we asked for is gone: list again.
            return Err(etcd_client::Error::WatchError(format!(
                "watch cancelled (compacted at {}): {}",
                resp.compact_revision(),
                resp.cancel_reason()
            )));
        }
        if resp.events().is_empty() {
            continue;
        }
        let next = apply(&me.members.load(), &resp);
        publish(me, next);
    }
    Err(etcd_client::Error::WatchError(
        "the watch stream ended".to_string(),
    ))
}

/// Makes `next` the membership, logging who joined, left or changed state.
fn publish(me: &Membership, next: Members) {
    let current = me.members.load();
    for (id, info) in &next.nodes {
        match current.nodes.get(id) {
            None => tracing::info!(node = %id, state = ?info.state, "cluster: node joined"),
            Some(old) if old.state != info.state => {
                tracing::info!(node = %id, state = ?info.state, "cluster: node changed state");
            }
            Some(_) => {}
        }
    }
    for id in current.nodes.keys() {
        if !next.nodes.contains_key(id) {
            tracing::info!(node = %id, "cluster: node left");
        }
    }
    me.members.store(Arc::new(next));
}

/// The members after `resp`'s events.
fn apply(current: &Members, resp: &WatchResponse) -> Members {
    let mut nodes = current.nodes.clone();
    let mut revision = current.revision;
    for ev in resp.events() {
        let Some(kv) = ev.kv() else { continue };
        revision = revision.max(kv.mod_revision());
        let id = String::from_utf8_lossy(kv.key())
            .trim_start_matches(NODES_PREFIX)
            .to_string();
        match ev.event_type() {
            EventType::Put => match serde_json::from_slice::<NodeInfo>(kv.value()) {
                Ok(info) => {
                    nodes.insert(id, info);
                }
                Err(e) => tracing::warn!(key = %id, error = %e, "cluster: unreadable node entry"),
            },
            EventType::Delete => {
                nodes.remove(&id);
            }
        }
    }
    if let Some(h) = resp.header() {
        revision = revision.max(h.revision());
    }
    Members::from_nodes(nodes, revision)
}

fn list(kvs: &[etcd_client::KeyValue]) -> BTreeMap<String, NodeInfo> {
    let mut nodes = BTreeMap::new();
    for kv in kvs {
        match serde_json::from_slice::<NodeInfo>(kv.value()) {
            Ok(info) => {
                nodes.insert(info.id.clone(), info);
            }
            Err(e) => tracing::warn!(key = %String::from_utf8_lossy(kv.key()), error = %e,
                "cluster: unreadable node entry"),
        }
    }
    nodes
}

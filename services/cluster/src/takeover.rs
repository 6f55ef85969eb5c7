//! Deciding when a node's calls are orphans, and which of them this node adopts.
//!
//! A node is dead when both hold: its key left the membership (its lease expired or
//! was revoked) and its cluster address does not answer a `Ping`. Either alone
//! is not enough: an etcd outage or restart must not make live nodes look dead (the
//! membership is only believed while the watch is connected), and a node cut off from
//! etcd but still serving its calls must keep them.
//!
//! Of a dead owner's calls this node holds, it adopts those for which it is the first
//! live node on the ring after the owner (the buddy the owner picked, unless that one is
//! gone too). A replica another node is first for is kept a while: that node may have
//! died with the owner without having left the ring yet (with replication factor 2,
//! both replicas of a call). Once it leaves, this node may be first and adopts the call;
//! if it is still on the ring after `lease_ttl` + `GRACE` the replica is dropped, since
//! that node adopts it. What is adopted goes out as `Orphan`s; the node above turns each
//! into a call.
//!
//! Calls no survivor holds are counted lost: every node sends every member a census of
//! its calls (how many each set of holders has, at most once a second), and when an owner
//! is found dead each survivor goes through its census. Calls whose every holder is dead
//! too (found dead here within `lease_ttl` + `GRACE` of the owner: nodes that die
//! together lose their leases within one TTL of each other) are counted in `lost` and
//! logged by one survivor, the first on the ring for the owner's id; a set with a live
//! holder is that holder's to adopt.

use crate::membership::Membership;
use crate::replication::ReplicaStore;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use trunkline_proto::cluster::v1::replication_client::ReplicationClient;
use trunkline_proto::cluster::v1::{AdoptedCalls, PingRequest};

/// How often the membership is looked at for owners that left.
const LOOK_EVERY: Duration = Duration::from_millis(200);
/// How long a dead node's cluster address gets to take a connection.
const PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// How often an owner that left etcd but still answers is probed again.
const REPROBE_EVERY: Duration = Duration::from_secs(2);

/// A call of a dead node that this node adopts: its replicated state as the owner sent
/// it.
#[derive(Debug)]
pub struct Orphan {
    pub owner: String,
    pub call_id: String,
    pub state: Vec<u8>,
}

/// Takeover counters, for the metrics.
#[derive(Debug, Default)]
pub struct TakeoverStats {
    /// Owners found dead, whose replicas this node went through.
    pub owners_dead: AtomicU64,
    /// Replicas handed over for adoption.
    pub orphans: AtomicU64,
    /// Replicas dropped because another node is first on the ring for them.
    pub left_to_others: AtomicU64,
    /// Calls of dead owners that no live node held (owner and every holder gone), as
    /// the owners' last census counted them.
    pub lost: AtomicU64,
}

/// How long after the owner's lease expiry its holders get to be found dead as well.
const GRACE: Duration = Duration::from_secs(3);

/// A dead owner's call this node holds but another live node is first for on the ring.
#[derive(Debug)]
struct Deferred {
    owner: String,
    call_id: String,
    state: Vec<u8>,
    since: Instant,
}

/// Calls of a dead owner held only by `holders`, not yet known dead or alive.
#[derive(Debug)]
struct Pending {
    owner: String,
    holders: Vec<String>,
    calls: u64,
    since: Instant,
}

/// Starts the takeover task; adopted calls come out of the returned channel.
pub fn start(
    membership: Arc<Membership>,
    store: Arc<ReplicaStore>,
    me: String,
    secret: Option<String>,
    lease_ttl: Duration,
    stop: CancellationToken,
) -> (mpsc::UnboundedReceiver<Orphan>, Arc<TakeoverStats>) {
    let (tx, rx) = mpsc::unbounded_channel();
    store.set_orphans(tx.clone());
    let stats = Arc::new(TakeoverStats::default());
    let s = stats.clone();
    tokio::spawn(async move {
        let mut task = Task {
            membership,
            store,
            me,
            addresses: HashMap::new(),
            alive_at: HashMap::new(),
            adopted_from: HashMap::new(),
            secret,
            tx,
            stats: s,
            dead: HashMap::new(),
            pending: Vec::new(),
            deferred: Vec::new(),
            wait_for_holders: lease_ttl + GRACE,
        };
        let mut tick = tokio::time::interval(LOOK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            task.look().await;
        }
    });
    (rx, stats)
}

struct Task {
    membership: Arc<Membership>,
    store: Arc<ReplicaStore>,
    me: String,
    /// The last cluster address seen for each node (kept after it leaves: it is what
    /// gets probed).
    addresses: HashMap<String, String>,
    /// Owners that left etcd but answered a probe, and when.
    alive_at: HashMap<String, Instant>,
    /// Calls adopted from each owner found dead, and when: told to the owner if it comes
    /// back (it was cut off, not dead), so it lets them go.
    adopted_from: HashMap<String, (Instant, Vec<String>)>,
    secret: Option<String>,
    tx: mpsc::UnboundedSender<Orphan>,
    stats: Arc<TakeoverStats>,
    /// Nodes found dead here, and when (forgotten when they are members again).
    dead: HashMap<String, Instant>,
    /// Census entries of dead owners this node counts, waiting on their holders.
    pending: Vec<Pending>,
    /// Replicas of dead owners another node is first for, until it is known alive.
    deferred: Vec<Deferred>,
    wait_for_holders: Duration,
}

impl Task {
    async fn look(&mut self) {
        // Only a membership read from a connected watch says who left.
        if !self.membership.connected() {
            return;
        }
        let members = self.membership.members();
        if members.revision == 0 {
            return;
        }
        for (id, node) in &members.nodes {
            if let Some(addr) = &node.cluster {
                self.addresses.insert(id.clone(), addr.clone());
            }
        }
        self.tell_the_returned(&members).await;
        self.dead
            .retain(|id, at| !members.nodes.contains_key(id) && at.elapsed() < REMEMBER_ADOPTED);
        let mut gone: Vec<String> = self
            .store
            .held()
            .into_keys()
            .chain(self.store.census_owners())
            .filter(|o| *o != self.me && !members.nodes.contains_key(o))
            .collect();
        gone.sort();
        gone.dedup();
        self.alive_at.retain(|o, _| gone.contains(o));
        for owner in gone {
            if self
                .alive_at
                .get(&owner)
                .is_some_and(|t| t.elapsed() < REPROBE_EVERY)
            {
                continue;
            }
            if let Some(addr) = self.addresses.get(&owner) {
                if answers(addr, self.secret.as_deref()).await {
                    if self
                        .alive_at
                        .insert(owner.clone(), Instant::now())
                        .is_none()
                    {
                        tracing::warn!(owner = %owner, addr = %addr,
                            "cluster: node left etcd but still answers; its calls stay with it");
                    }
                    continue;
                }
            }
            self.take_over(&owner);
        }
        self.settle_deferred();
        self.count_lost();
    }

    /// Adopts the deferred replicas this node is now first for (the node that was first
    /// died too and left the ring); drops those whose first node is still there after the
    /// wait (it is alive, and adopted them), and those whose owner is back (it was cut
    /// off, not dead, and keeps its calls).
    fn settle_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let members = self.membership.members();
        let wait = self.wait_for_holders;
        let (mut adopted, mut dropped) = (0u64, 0u64);
        for d in std::mem::take(&mut self.deferred) {
            if members.nodes.contains_key(&d.owner) {
                dropped += 1;
                continue;
            }
            let first = members.ring.nodes_for(&d.call_id, 1, Some(&d.owner));
            if first.first() == Some(&self.me.as_str()) {
                adopted += 1;
                self.adopt(d.owner, d.call_id, d.state);
            } else if d.since.elapsed() >= wait {
                dropped += 1;
            } else {
                self.deferred.push(d);
            }
        }
        self.stats.orphans.fetch_add(adopted, Ordering::Relaxed);
        self.stats
            .left_to_others
            .fetch_add(dropped, Ordering::Relaxed);
        if adopted > 0 {
            tracing::warn!(
                adopting = adopted,
                "cluster: the node first for some calls of a dead node is gone too; adopting them"
            );
        }
    }

    fn adopt(&mut self, owner: String, call_id: String, state: Vec<u8>) {
        self.adopted_from
            .entry(owner.clone())
            .or_insert_with(|| (Instant::now(), Vec::new()))
            .1
            .push(call_id.clone());
        let _ = self.tx.send(Orphan {
            owner,
            call_id,
            state,
        });
    }

    /// Counts the pending census entries whose holders are all dead now; drops those
    /// with a holder still alive once the holders had their time to die. Every survivor
    /// keeps the entries, and the one first on the ring for the owner's id when the last
    /// holder is found dead counts them: decided then, the dead are off the ring, so one
    /// survivor counts them even when the owner's first successor died with it.
    fn count_lost(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let members = self.membership.members();
        let dead = &self.dead;
        let wait = self.wait_for_holders;
        let stats = &self.stats;
        let me = self.me.as_str();
        self.pending.retain(|p| {
            if p.holders.iter().all(|h| dead.contains_key(h)) {
                let counter = members.ring.nodes_for(&p.owner, 1, Some(&p.owner));
                if counter.first() == Some(&me) {
                    stats.lost.fetch_add(p.calls, Ordering::Relaxed);
                    tracing::error!(owner = %p.owner, holders = ?p.holders, calls = p.calls,
                        "cluster: calls lost: their node and every node holding them are gone");
                }
                false
            } else {
                p.since.elapsed() < wait
            }
        });
    }

    fn take_over(&mut self, owner: &str) {
        let calls = self.store.take_owner(owner);
        let census = self.store.take_census(owner);
        self.dead.insert(owner.to_string(), Instant::now());
        if calls.is_empty() && census.iter().all(|e| e.calls == 0) {
            // No calls (a drained node after its handover, or an idle one): it only
            // matters as a holder of other dead nodes' calls.
            tracing::debug!(owner = %owner, "cluster: a node without calls is gone");
            return;
        }
        // The ring as it is now: the owner is not on it, nor any node that died with it.
        let ring = self.membership.members().ring.clone();
        for e in census {
            if e.holders.contains(&self.me) || e.calls == 0 {
                continue;
            }
            self.pending.push(Pending {
                owner: owner.to_string(),
                holders: e.holders,
                calls: u64::from(e.calls),
                since: Instant::now(),
            });
        }
        let (mut mine, mut others) = (0u64, 0u64);
        for (call_id, state) in calls {
            let first = ring.nodes_for(&call_id, 1, Some(owner));
            if first.first().is_some_and(|n| *n == self.me) {
                mine += 1;
                self.adopt(owner.to_string(), call_id, state);
            } else {
                others += 1;
                self.deferred.push(Deferred {
                    owner: owner.to_string(),
                    call_id,
                    state,
                    since: Instant::now(),
                });
            }
        }
        self.stats.owners_dead.fetch_add(1, Ordering::Relaxed);
        self.stats.orphans.fetch_add(mine, Ordering::Relaxed);
        tracing::warn!(owner = %owner, adopting = mine, left_to_others = others,
            "cluster: node is gone (lease expired, address silent); adopting its calls");
    }
}

impl Task {
    /// An owner whose calls this node adopted is a member again: it was cut off, not
    /// dead, and still holds those calls; it is told to let them go. Forgotten after
    /// `REMEMBER_ADOPTED` (the owner's calls would have ended or timed out by then).
    async fn tell_the_returned(&mut self, members: &crate::membership::Members) {
        self.adopted_from
            .retain(|_, (at, _)| at.elapsed() < REMEMBER_ADOPTED);
        let back: Vec<String> = self
            .adopted_from
            .keys()
            .filter(|o| members.nodes.contains_key(*o))
            .cloned()
            .collect();
        for owner in back {
            let Some(addr) = members.nodes.get(&owner).and_then(|n| n.cluster.clone()) else {
                continue;
            };
            let Some((_, ids)) = self.adopted_from.get(&owner) else {
                continue;
            };
            match tell(&addr, &self.me, ids.clone(), self.secret.as_deref()).await {
                Ok(released) => {
                    tracing::warn!(owner = %owner, released,
                        "cluster: a node whose calls were adopted is back; told to let them go");
                    self.adopted_from.remove(&owner);
                }
                Err(e) => {
                    tracing::debug!(owner = %owner, error = %e, "cluster: cannot tell a returned node yet")
                }
            }
        }
    }
}

/// How long a node remembers which calls it adopted from an owner found dead.
const REMEMBER_ADOPTED: Duration = Duration::from_secs(600);

async fn tell(
    addr: &str,
    me: &str,
    call_ids: Vec<String>,
    secret: Option<&str>,
) -> Result<u32, String> {
    let endpoint =
        crate::link::endpoint(addr, Duration::from_secs(1), Some(Duration::from_secs(2)))?;
    let mut client = ReplicationClient::new(endpoint.connect_lazy());
    let mut req = tonic::Request::new(AdoptedCalls {
        adopter: me.to_string(),
        call_ids,
    });
    if let Some(s) = secret {
        let v = format!("Bearer {s}")
            .parse()
            .map_err(|_| "the cluster secret is not a valid header value".to_string())?;
        req.metadata_mut().insert("authorization", v);
    }
    client
        .adopted(req)
        .await
        .map(|r| r.into_inner().released)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// Whether the node at `addr` answers a `Ping` within `PROBE_TIMEOUT`. An application
/// answer, not a TCP connect: the kernel completes connections to a frozen (stopped,
/// hung) process's listening socket, and such a node relays no media either. An answer
/// that is an error (a wrong secret, say) still shows the node alive.
async fn answers(addr: &str, secret: Option<&str>) -> bool {
    let Ok(endpoint) = crate::link::endpoint(addr, PROBE_TIMEOUT, Some(PROBE_TIMEOUT)) else {
        return false;
    };
    let mut client = ReplicationClient::new(endpoint.connect_lazy());
    let mut req = tonic::Request::new(PingRequest {});
    if let Some(v) = secret.and_then(|s| format!("Bearer {s}").parse().ok()) {
        req.metadata_mut().insert("authorization", v);
    }
    let answered = tokio::time::timeout(PROBE_TIMEOUT, client.ping(req)).await;
    match answered {
        Ok(Ok(_)) => true,
        Ok(Err(status)) => !matches!(
            status.code(),
            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
        ),
        Err(_) => false,
    }
}

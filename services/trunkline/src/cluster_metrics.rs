//! The cluster's state in the metrics: how many members this node sees, whether it is
//! connected to etcd and registered there, and which version of the shared trunks and
//! routes it has in force. Sampled once a second from memory (never from etcd).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::shared_config::SharedConfig;

#[derive(Clone, Default)]
pub struct ClusterGauges {
    members: Gauge,
    etcd_connected: Gauge,
    registered: Gauge,
    config_revision: Gauge,
    replicas_held: Gauge,
    replicated_calls: Gauge,
    replication_dropped: Gauge,
    adopted: Counter,
    lost: Counter,
    owners_dead: Counter,
    replication_batches: Counter,
    replication_bytes: Counter,
}

/// What the gauges are sampled from.
pub struct Sources {
    pub shared: Option<Arc<SharedConfig>>,
    pub replicator: Option<trunkline_cluster::Replicator>,
    pub replicas: Arc<trunkline_cluster::ReplicaStore>,
    pub takeover: Option<Arc<trunkline_cluster::TakeoverStats>>,
    pub dispatcher: trunkline_call::Dispatcher,
}

/// Moves `counter` up to `total` (the sources keep totals; counters only go up).
fn catch_up(counter: &Counter, total: u64) {
    let now = counter.get();
    if total > now {
        counter.inc_by(total - now);
    }
}

impl ClusterGauges {
    pub fn register(registry: &mut Registry) -> ClusterGauges {
        let g = ClusterGauges::default();
        registry.register(
            "trunkline_cluster_members",
            "Nodes in the cluster's membership as this node last saw it in etcd",
            g.members.clone(),
        );
        registry.register(
            "trunkline_cluster_etcd_connected",
            "1 while this node's membership watch is connected to etcd",
            g.etcd_connected.clone(),
        );
        registry.register(
            "trunkline_cluster_registered",
            "1 while this node's key is in etcd under a live lease",
            g.registered.clone(),
        );
        registry.register(
            "trunkline_cluster_config_revision",
            "etcd revision of the shared trunks and routes in force (0: none from etcd yet)",
            g.config_revision.clone(),
        );
        registry.register(
            "trunkline_cluster_replicas_held",
            "Calls of other nodes whose state this node holds as their buddy",
            g.replicas_held.clone(),
        );
        registry.register(
            "trunkline_cluster_replicated_calls",
            "Live calls of this node whose state is kept for its buddies",
            g.replicated_calls.clone(),
        );
        registry.register(
            "trunkline_cluster_replication_dropped",
            "Call state changes dropped because the replication queue was full",
            g.replication_dropped.clone(),
        );
        registry.register(
            "trunkline_cluster_calls_adopted",
            "Calls of dead nodes this node took over (both legs re-INVITEd here and accepted)",
            g.adopted.clone(),
        );
        registry.register(
            "trunkline_cluster_calls_lost",
            "Calls of dead nodes lost: ringing, state unusable, a leg refused its re-INVITE, or no live node held them (counted by one survivor)",
            g.lost.clone(),
        );
        registry.register(
            "trunkline_cluster_replication_batches",
            "Replication batches this node sent to its buddies (one RPC each)",
            g.replication_batches.clone(),
        );
        registry.register(
            "trunkline_cluster_replication_bytes",
            "Protobuf bytes of the replication batches this node sent to its buddies",
            g.replication_bytes.clone(),
        );
        registry.register(
            "trunkline_cluster_owners_dead",
            "Nodes this node found dead (left etcd, address silent) while holding their calls",
            g.owners_dead.clone(),
        );
        g
    }

    /// Samples `membership` and `sources` once a second until `stop`.
    pub fn follow(
        self,
        membership: Arc<trunkline_cluster::Membership>,
        sources: Sources,
        stop: CancellationToken,
    ) {
        let Sources {
            shared,
            replicator,
            replicas,
            takeover,
            dispatcher,
        } = sources;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = stop.cancelled() => return,
                }
                let members = i64::try_from(membership.members().nodes.len()).unwrap_or(i64::MAX);
                self.members.set(members);
                self.etcd_connected.set(i64::from(membership.connected()));
                self.registered.set(i64::from(membership.registered()));
                if let Some(s) = &shared {
                    self.config_revision.set(s.revision());
                }
                let held: usize = replicas.held().values().sum();
                self.replicas_held
                    .set(i64::try_from(held).unwrap_or(i64::MAX));
                if let Some(r) = &replicator {
                    self.replicated_calls
                        .set(i64::try_from(r.owned()).unwrap_or(i64::MAX));
                    self.replication_dropped
                        .set(i64::try_from(r.dropped()).unwrap_or(i64::MAX));
                    let (batches, bytes) = r.sent();
                    catch_up(&self.replication_batches, batches);
                    catch_up(&self.replication_bytes, bytes);
                }
                let (adopted, mut lost) = dispatcher.adoptions();
                catch_up(&self.adopted, adopted);
                if let Some(t) = &takeover {
                    lost += t.lost.load(std::sync::atomic::Ordering::Relaxed);
                }
                catch_up(&self.lost, lost);
                if let Some(t) = &takeover {
                    catch_up(
                        &self.owners_dead,
                        t.owners_dead.load(std::sync::atomic::Ordering::Relaxed),
                    );
                }
            }
        });
    }
}

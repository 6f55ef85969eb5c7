//! The cluster's state in the metrics: how many members this node sees, whether it is
//! connected to etcd and registered there, and which version of the shared trunks and
//! routes it has in force. Sampled once a second from memory (never from etcd).

use std::sync::Arc;
use std::time::Duration;

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
        g
    }

    /// Samples `membership` and `shared` once a second until `stop`.
    pub fn follow(
        self,
        membership: Arc<trunkline_cluster::Membership>,
        shared: Option<Arc<SharedConfig>>,
        replicator: Option<trunkline_cluster::Replicator>,
        replicas: Arc<trunkline_cluster::ReplicaStore>,
        stop: CancellationToken,
    ) {
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
                }
            }
        });
    }
}

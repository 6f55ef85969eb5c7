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
        g
    }

    /// Samples `membership` and `shared` once a second until `stop`.
    pub fn follow(
        self,
        membership: Arc<trunkline_cluster::Membership>,
        shared: Option<Arc<SharedConfig>>,
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
            }
        });
    }
}

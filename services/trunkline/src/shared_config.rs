//! In a cluster the trunks and routes live in etcd, one JSON document under `KEY`, and
//! every node follows it: a version is checked by the rules the configuration file is
//! checked by and, if good, swapped in for new calls (calls in progress keep theirs). The
//! file's trunks and routes seed an empty cluster. Operators' changes (the admin API's
//! `TrunkService`) are compare-and-swap writes of the whole document, so two changes at
//! once cannot lose one.
//!
//! Each version applied is also kept in `[cluster] config_cache`: a node that starts while
//! etcd is down uses the last configuration it saw there, and says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tonic::Status;
use trunkline_cluster::{Document, WriteError};

use crate::admin::trunks::RoutingState;
use crate::config::{Config, RouteConfig, RoutingConfig, TrunkConfig};

/// Where the document lives.
pub const KEY: &str = "/trunkline/config/routing";

/// The shared part of the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct RoutingDoc {
    trunks: Vec<TrunkConfig>,
    routes: Vec<RouteConfig>,
    routing: RoutingConfig,
}

impl RoutingDoc {
    fn of(config: &Config) -> RoutingDoc {
        RoutingDoc {
            trunks: config.trunks.clone(),
            routes: config.routes.clone(),
            routing: config.routing.clone(),
        }
    }

    /// `base` with this document's trunks and routes.
    fn onto(self, base: &Config) -> Config {
        let mut c = base.clone();
        c.trunks = self.trunks;
        c.routes = self.routes;
        c.routing = self.routing;
        c
    }
}

/// The node's side of the shared document.
#[derive(Debug)]
pub struct SharedConfig {
    doc: Arc<Document>,
}

/// Checks a version and puts it in force; false (and a log line) when it is refused.
fn apply(state: &RoutingState, bytes: &[u8], origin: &str) -> bool {
    let doc: RoutingDoc = match serde_json::from_slice(bytes) {
        Ok(d) => d,
        Err(e) => {
            tracing::error!(%origin, error = %e, "cluster: unreadable shared configuration; keeping the one in force");
            return false;
        }
    };
    let candidate = doc.onto(&state.current());
    let problems = candidate.problems();
    if !problems.is_empty() {
        tracing::error!(%origin, problems = %problems.join("; "),
            "cluster: shared configuration refused; keeping the one in force");
        return false;
    }
    match state.put_in_force(candidate) {
        Ok(()) => true,
        Err(e) => {
            tracing::error!(%origin, error = %format!("{e:#}"), "cluster: shared configuration refused");
            false
        }
    }
}

/// Writes `bytes` to `path` whole (a temporary file renamed over it).
fn write_cache(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    let result = std::fs::write(&tmp, bytes).and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cluster: cannot keep the configuration on disk");
    }
}

impl SharedConfig {
    /// Uses the cached configuration if there is one, then follows etcd's.
    pub fn start(
        config: &Config,
        etcd: trunkline_cluster::Etcd,
        state: Arc<RoutingState>,
        stop: CancellationToken,
    ) -> Arc<SharedConfig> {
        let cache: Option<PathBuf> = config.cluster.config_cache.clone();
        if let Some(path) = &cache {
            match std::fs::read(path) {
                Ok(bytes) => {
                    if apply(&state, &bytes, "cache") {
                        tracing::warn!(path = %path.display(),
                            "cluster: using the shared configuration last seen (kept on disk) until etcd answers");
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cluster: cannot read the cached configuration")
                }
            }
        }
        let seed = serde_json::to_vec_pretty(&RoutingDoc::of(config)).unwrap_or_default();
        let follower_state = state.clone();
        let doc = Document::follow(
            etcd,
            KEY,
            seed,
            move |bytes, revision| {
                let ok = apply(&follower_state, bytes, "etcd");
                if ok {
                    tracing::info!(revision, "cluster: shared configuration in force");
                    if let Some(path) = &cache {
                        write_cache(path, bytes);
                    }
                }
                ok
            },
            stop,
        );
        Arc::new(SharedConfig { doc })
    }

    /// The etcd revision of the version in force (0: none from etcd yet).
    pub fn revision(&self) -> i64 {
        self.doc.revision()
    }

    /// Writes `candidate`'s trunks and routes to etcd if no one changed them since this
    /// node last applied them, and waits (up to 2 s) until the node has them in force.
    pub async fn write(&self, candidate: &Config) -> Result<(), Status> {
        let bytes = serde_json::to_vec_pretty(&RoutingDoc::of(candidate))
            .map_err(|e| Status::internal(e.to_string()))?;
        // Against the latest version seen, even one this node refused: an operator must be
        // able to replace a bad document.
        let expected = self.doc.seen();
        let revision = self.doc.write(bytes, expected).await.map_err(|e| match e {
            WriteError::Conflict(_) => Status::aborted(format!(
                "the cluster's trunks and routes changed meanwhile (or this node has not read them yet): {e}"
            )),
            WriteError::Etcd(e) => Status::unavailable(format!(
                "etcd is unreachable; nothing was changed: {e}"
            )),
        })?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.doc.revision() < revision && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

//! One document in etcd that every node follows (the trunks and routes): a watch that
//! hands each new version to the node, a seed for an empty cluster, and compare-and-swap
//! writes so two operators changing it at once cannot lose one change.
//!
//! Like the membership, the follower reconnects on its own with back-off and lists the key
//! afresh after every break; while etcd is away the node keeps what it last applied.

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp, WatchOptions};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// Someone else changed the document since `expected`: read it again and retry.
    #[error("the document changed meanwhile (now at revision {0}); retry")]
    Conflict(i64),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
}

/// A document the node follows and may write.
pub struct Document {
    key: String,
    etcd: crate::Etcd,
    /// The `mod_revision` of the version last applied (0: none yet).
    revision: AtomicI64,
    /// The `mod_revision` of the latest version seen, applied or refused: what a write
    /// must replace (so an operator can replace a version the nodes refused).
    seen: AtomicI64,
    connected: AtomicBool,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("key", &self.key)
            .field("revision", &self.revision())
            .finish()
    }
}

const RETRY_MIN: Duration = Duration::from_millis(250);
const RETRY_MAX: Duration = Duration::from_secs(5);

impl Document {
    /// Follows `key`: `apply(value, mod_revision)` is called for the version in etcd and
    /// for every later one, in order; it returns false for a version it refuses (which is
    /// then not counted as applied). When the key does not exist, `seed` is written if no
    /// one else wrote it first. Runs until `stop`.
    pub fn follow(
        etcd: crate::Etcd,
        key: &str,
        seed: Vec<u8>,
        apply: impl Fn(&[u8], i64) -> bool + Send + Sync + 'static,
        stop: CancellationToken,
    ) -> Arc<Document> {
        let doc = Arc::new(Document {
            key: key.to_string(),
            etcd,
            revision: AtomicI64::new(0),
            seen: AtomicI64::new(0),
            connected: AtomicBool::new(false),
        });
        let follower = doc.clone();
        tokio::spawn(async move {
            let mut delay = RETRY_MIN;
            let mut warned = false;
            loop {
                let r = tokio::select! {
                    r = follower.follow_once(&seed, &apply, &mut delay) => r,
                    () = stop.cancelled() => return,
                };
                follower.connected.store(false, Ordering::Release);
                if let Err(e) = r {
                    if warned {
                        tracing::debug!(key = %follower.key, error = %e, "cluster: retry failed");
                    } else {
                        tracing::warn!(key = %follower.key, error = %e,
                            "cluster: etcd unreachable; keeping the configuration in force");
                        warned = true;
                    }
                }
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                delay = (delay * 2).min(RETRY_MAX);
            }
        });
        doc
    }

    /// The revision of the version last applied (0: none from etcd yet).
    pub fn revision(&self) -> i64 {
        self.revision.load(Ordering::Acquire)
    }

    /// The revision of the latest version seen, applied or not: what `write` compares
    /// against.
    pub fn seen(&self) -> i64 {
        self.seen.load(Ordering::Acquire)
    }

    /// Whether the follower is connected to etcd now.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    async fn client(&self) -> Result<Client, etcd_client::Error> {
        self.etcd.connect().await
    }

    async fn follow_once(
        &self,
        seed: &[u8],
        apply: &(impl Fn(&[u8], i64) -> bool + Send + Sync),
        delay: &mut Duration,
    ) -> Result<(), etcd_client::Error> {
        let mut client = self.client().await?;
        let got = client.get(self.key.as_str(), None).await?;
        let mut revision = got.header().map_or(0, |h| h.revision());
        match got.kvs().first() {
            Some(kv) => {
                self.seen.store(kv.mod_revision(), Ordering::Release);
                if kv.mod_revision() != self.revision() && apply(kv.value(), kv.mod_revision()) {
                    self.revision.store(kv.mod_revision(), Ordering::Release);
                }
            }
            None => {
                // An empty cluster: this node's file seeds it, unless another node did.
                let txn = Txn::new()
                    .when([Compare::version(self.key.as_str(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(self.key.as_str(), seed, None)]);
                let r = client.txn(txn).await?;
                if !r.succeeded() {
                    // Another node seeded it between our read and our write: read again.
                    return Err(etcd_client::Error::WatchError(format!(
                        "{} was created meanwhile",
                        self.key
                    )));
                }
                tracing::info!(key = %self.key, "cluster: seeded the shared configuration from this node's file");
                // The seed arrives through the watch, from its own revision.
                revision = r.header().map_or(revision, |h| h.revision()) - 1;
            }
        }
        let mut stream = client
            .watch(
                self.key.as_str(),
                Some(WatchOptions::new().with_start_revision(revision + 1)),
            )
            .await?;
        self.connected.store(true, Ordering::Release);
        *delay = RETRY_MIN;
        while let Some(resp) = stream.message().await? {
            if resp.compact_revision() > 0 || resp.canceled() {
                return Err(etcd_client::Error::WatchError(format!(
                    "watch of {} cancelled: {}",
                    self.key,
                    resp.cancel_reason()
                )));
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                if ev.event_type() == etcd_client::EventType::Delete {
                    tracing::warn!(key = %self.key, "cluster: the shared configuration was deleted; keeping the one in force");
                    continue;
                }
                self.seen.fetch_max(kv.mod_revision(), Ordering::AcqRel);
                if kv.mod_revision() > self.revision() && apply(kv.value(), kv.mod_revision()) {
                    self.revision.store(kv.mod_revision(), Ordering::Release);
                }
            }
        }
        Err(etcd_client::Error::WatchError(
            "the watch stream ended".to_string(),
        ))
    }

    /// Writes `value` if the document is still at `expected` (its `mod_revision`), and
    /// returns the new revision. The node applies the write when the watch brings it back.
    pub async fn write(&self, value: Vec<u8>, expected: i64) -> Result<i64, WriteError> {
        let mut client = self.client().await?;
        let txn = Txn::new()
            .when([Compare::mod_revision(
                self.key.as_str(),
                CompareOp::Equal,
                expected,
            )])
            .and_then([TxnOp::put(self.key.as_str(), value, None)]);
        let r = client.txn(txn).await?;
        let now = r.header().map_or(0, |h| h.revision());
        if r.succeeded() {
            Ok(now)
        } else {
            Err(WriteError::Conflict(now))
        }
    }
}

//! Graceful shutdown: one signal starts a drain, a second one (or the drain deadline) stops.
//!
//! A Kubernetes rolling update sends SIGTERM and waits `terminationGracePeriodSeconds`; the
//! node must stop taking new calls at once but let existing calls finish (ARCHITECTURE,
//! "Drain"). Tasks therefore watch two phases:
//! - **drain**: stop accepting new work (new calls, new connections), finish what is running;
//! - **terminate**: stop now; whatever is still running is abandoned (or handed to buddies).

use tokio::signal::unix::{signal, SignalKind};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Shared shutdown state; clone it into every task that must react to shutdown.
///
/// Built on `CancellationToken`s so any number of tasks can await each phase, and tasks that
/// start late see a phase that already began.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    drain: CancellationToken,
    terminate: CancellationToken,
}

impl Shutdown {
    /// A shutdown that nothing has requested yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Begins the drain phase. Idempotent.
    pub fn begin_drain(&self) {
        self.drain.cancel();
    }

    /// Begins the terminate phase (which implies drain). Idempotent.
    pub fn terminate(&self) {
        self.drain.cancel();
        self.terminate.cancel();
    }

    /// Resolves once drain (or terminate) has begun.
    pub async fn drain_requested(&self) {
        self.drain.cancelled().await;
    }

    /// Resolves once terminate has begun.
    pub async fn terminate_requested(&self) {
        self.terminate.cancelled().await;
    }

    /// Whether drain has begun; for loops that poll rather than await.
    #[allow(dead_code)] // for the lead's wiring in app.rs
    pub fn is_draining(&self) -> bool {
        self.drain.is_cancelled()
    }

    #[allow(dead_code)] // for the lead's wiring in app.rs
    /// A token cancelled when drain begins, for APIs that take a `CancellationToken`
    /// (child tokens, `run_until_cancelled`).
    pub fn drain_token(&self) -> CancellationToken {
        self.drain.clone()
    }

    #[allow(dead_code)] // for the lead's wiring in app.rs
    /// A token cancelled when terminate begins.
    pub fn terminate_token(&self) -> CancellationToken {
        self.terminate.clone()
    }
}

/// Installs SIGTERM and SIGINT handlers: the first signal begins the drain, a second one
/// terminates (an operator pressing Ctrl-C twice means "now").
///
/// Fails if the handlers cannot be installed; the node must not run unable to drain.
pub fn listen_for_signals(shutdown: Shutdown) -> anyhow::Result<JoinHandle<()>> {
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sigint = signal(SignalKind::interrupt())?;
    Ok(tokio::spawn(async move {
        let mut received = 0u32;
        loop {
            let name = tokio::select! {
                _ = sigterm.recv() => "SIGTERM",
                _ = sigint.recv() => "SIGINT",
            };
            received += 1;
            if received == 1 {
                tracing::info!(signal = name, "shutdown signal received, draining");
                shutdown.begin_drain();
            } else {
                tracing::warn!(
                    signal = name,
                    "second shutdown signal received, terminating"
                );
                shutdown.terminate();
                return;
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn phases() {
        let shutdown = Shutdown::new();
        let waiter = {
            let shutdown = shutdown.clone();
            tokio::spawn(async move { shutdown.drain_requested().await })
        };
        assert!(!shutdown.is_draining());
        shutdown.begin_drain();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(shutdown.is_draining());
        assert!(!shutdown.terminate_token().is_cancelled());

        shutdown.terminate();
        shutdown.terminate_requested().await;
        // A late subscriber sees both phases at once.
        shutdown.clone().drain_requested().await;
    }

    #[tokio::test]
    async fn terminate_implies_drain() {
        let shutdown = Shutdown::new();
        shutdown.terminate();
        assert!(shutdown.is_draining());
        shutdown.drain_requested().await;
    }
}

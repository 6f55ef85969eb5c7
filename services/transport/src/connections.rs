//! The table of open TCP connections, by id and by peer address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use crate::error::TransportError;
use crate::message::{ConnectionId, Target};

/// How many outgoing messages may wait for one connection's writer. A peer that reads slower
/// than this fills it, and further sends to it fail instead of growing memory.
pub(crate) const SEND_QUEUE: usize = 256;

/// One open (or opening) connection, as seen by senders.
#[derive(Debug)]
struct Entry {
    /// The peer, to clean the address index on removal.
    peer: SocketAddr,
    /// The connection's outgoing queue, drained by its writer task.
    tx: mpsc::Sender<Bytes>,
}

/// Both indexes under one lock so they never disagree.
#[derive(Debug, Default)]
struct Tables {
    by_id: HashMap<ConnectionId, Entry>,
    by_peer: HashMap<SocketAddr, ConnectionId>,
}

/// How a TCP send is to be carried out, decided under the table lock.
#[derive(Debug)]
pub(crate) enum Route {
    /// Queue on this open connection.
    Existing(mpsc::Sender<Bytes>),
    /// A new outbound connection was reserved; the caller must connect and run it.
    Connect {
        /// Its id, already in the table.
        id: ConnectionId,
        /// Its queue.
        tx: mpsc::Sender<Bytes>,
        /// The writer side of its queue.
        rx: mpsc::Receiver<Bytes>,
    },
}

/// Connection table shared by the accept loops, connection tasks and `send`.
///
/// A std `Mutex` suffices: every critical section is a couple of hash-map operations, never an
/// await. Entries are removed when their connection task ends, so memory returns to baseline.
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    tables: Mutex<Tables>,
    next_id: AtomicU64,
    limit: usize,
    emptied: Notify,
}

impl ConnectionTable {
    /// An empty table admitting at most `limit` connections.
    pub(crate) fn new(limit: usize) -> Self {
        ConnectionTable {
            tables: Mutex::new(Tables::default()),
            next_id: AtomicU64::new(1),
            limit,
            emptied: Notify::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn reserve(
        &self,
        tables: &mut Tables,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<ConnectionId, TransportError> {
        if tables.by_id.len() >= self.limit {
            return Err(TransportError::ConnectionLimit { limit: self.limit });
        }
        let id = ConnectionId(self.next_id.fetch_add(1, Ordering::Relaxed));
        tables.by_id.insert(id, Entry { peer, tx });
        tables.by_peer.insert(peer, id);
        Ok(id)
    }

    /// Registers an accepted connection, unless the limit is reached.
    pub(crate) fn insert(
        &self,
        peer: SocketAddr,
        tx: mpsc::Sender<Bytes>,
    ) -> Result<ConnectionId, TransportError> {
        let mut tables = self.lock();
        self.reserve(&mut tables, peer, tx)
    }

    /// Finds the connection for a send: the one named in the target if still open, else the
    /// latest one to the target address, else reserves a new outbound one.
    pub(crate) fn route(&self, target: &Target) -> Result<Route, TransportError> {
        let mut tables = self.lock();
        let named = target
            .connection
            .and_then(|id| tables.by_id.get(&id))
            .filter(|e| !e.tx.is_closed());
        if let Some(entry) = named {
            return Ok(Route::Existing(entry.tx.clone()));
        }
        let by_addr = tables
            .by_peer
            .get(&target.addr)
            .and_then(|id| tables.by_id.get(id))
            .filter(|e| !e.tx.is_closed());
        if let Some(entry) = by_addr {
            return Ok(Route::Existing(entry.tx.clone()));
        }
        let (tx, rx) = mpsc::channel(SEND_QUEUE);
        let id = self.reserve(&mut tables, target.addr, tx.clone())?;
        Ok(Route::Connect { id, tx, rx })
    }

    /// Forgets a closed connection.
    pub(crate) fn remove(&self, id: ConnectionId) {
        let mut tables = self.lock();
        if let Some(entry) = tables.by_id.remove(&id) {
            if tables.by_peer.get(&entry.peer) == Some(&id) {
                tables.by_peer.remove(&entry.peer);
            }
        }
        let empty = tables.by_id.is_empty();
        drop(tables);
        if empty {
            self.emptied.notify_waiters();
        }
    }

    /// Number of open or opening connections.
    pub(crate) fn len(&self) -> usize {
        self.lock().by_id.len()
    }

    /// Waits until every connection has been removed.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let notified = self.emptied.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap
mod tests {
    use super::*;
    use crate::Transport;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn route_prefers_named_then_peer_then_connects() {
        let table = ConnectionTable::new(2);
        let (tx, _rx) = mpsc::channel(1);
        let id = table.insert(addr(1), tx).unwrap();

        let named = Target {
            transport: Transport::Tcp,
            addr: addr(9),
            connection: Some(id),
        };
        assert!(matches!(table.route(&named), Ok(Route::Existing(_))));
        let by_peer = Target::new(Transport::Tcp, addr(1));
        assert!(matches!(table.route(&by_peer), Ok(Route::Existing(_))));
        let fresh = Target::new(Transport::Tcp, addr(2));
        let Ok(Route::Connect { id: new_id, .. }) = table.route(&fresh) else {
            panic!("expected a new connection");
        };
        assert_ne!(new_id, id);
        // The limit of two is reached.
        assert!(matches!(
            table.route(&Target::new(Transport::Tcp, addr(3))),
            Err(TransportError::ConnectionLimit { limit: 2 })
        ));
        table.remove(id);
        table.remove(new_id);
        assert_eq!(table.len(), 0);
        assert!(table.lock().by_peer.is_empty());
    }
}

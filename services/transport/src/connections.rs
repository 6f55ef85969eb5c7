//! The table of open TCP connections: by id, by (peer, listener), and counted against the
//! connection limits.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use tokio::sync::Notify;
use trunkline_sip::Peer;

use crate::activity::{Activity, ConnectionPin};
use crate::error::TransportError;
use crate::metrics::Direction;
use crate::queue::{SendQueue, SendQueueRx};

/// Who sent a queued message, to tell them if it is never written.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Origin {
    /// The peer as given to `send`.
    pub(crate) peer: Peer,
    /// The token given to `send_tracked`.
    pub(crate) token: Option<u64>,
}

/// One message waiting for a connection's writer.
#[derive(Debug)]
pub(crate) struct Outgoing {
    /// The bytes to write.
    pub(crate) data: Bytes,
    /// Whom to report a failure to; `None` for our own keep-alive pongs.
    pub(crate) origin: Option<Origin>,
}

/// The connection limits.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Accepted connections.
    pub(crate) inbound: usize,
    /// Connections we open.
    pub(crate) outbound: usize,
    /// Accepted connections from one IP.
    pub(crate) per_source: usize,
    /// Bytes queued on one connection.
    pub(crate) queue_bytes: usize,
}

/// One open (or opening) connection, as seen by senders.
#[derive(Debug)]
struct Entry {
    /// The remote address.
    peer: SocketAddr,
    /// The listener it belongs to (`Peer::local`).
    listener: Option<SocketAddr>,
    direction: Direction,
    /// Other addresses requests to which may use this connection (RFC 5923 `alias`: the
    /// peer's listening address, for a connection it opened from another port).
    alias: Option<SocketAddr>,
    /// The connection's outgoing queue, drained by its writer task.
    tx: SendQueue,
    activity: Arc<Activity>,
}

/// Every index and count under one lock so they never disagree.
#[derive(Debug, Default)]
struct Tables {
    by_id: HashMap<u64, Entry>,
    /// The latest connection to a peer address from a listener.
    by_route: HashMap<(SocketAddr, Option<SocketAddr>), u64>,
    inbound: usize,
    outbound: usize,
    /// Accepted connections per source IP; entries go when they reach zero.
    per_source: HashMap<IpAddr, usize>,
}

/// What a new connection's tasks need; its entry is already in the table.
#[derive(Debug)]
pub(crate) struct NewConnection {
    pub(crate) id: u64,
    pub(crate) tx: SendQueue,
    pub(crate) rx: SendQueueRx,
    pub(crate) activity: Arc<Activity>,
}

/// How a TCP send is to be carried out, decided under the table lock.
#[derive(Debug)]
pub(crate) enum Route {
    /// Queue on this open connection.
    Existing(SendQueue),
    /// A new outbound connection was reserved; the caller must connect and run it.
    Connect(NewConnection),
}

/// Connection table shared by the accept loops, connection tasks and `send`.
///
/// A std `Mutex` suffices: every critical section is a couple of hash-map operations, never an
/// await. Entries are removed when their connection task ends, so memory returns to baseline.
#[derive(Debug)]
pub(crate) struct ConnectionTable {
    tables: Mutex<Tables>,
    next_id: AtomicU64,
    limits: Limits,
    emptied: Notify,
    /// Bytes queued on every connection together (see `queue`).
    queued: Arc<AtomicUsize>,
}

impl ConnectionTable {
    /// An empty table enforcing `limits`.
    pub(crate) fn new(limits: Limits) -> Self {
        ConnectionTable {
            tables: Mutex::new(Tables::default()),
            next_id: AtomicU64::new(1),
            limits,
            emptied: Notify::new(),
            queued: Arc::new(AtomicUsize::new(0)),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn insert(
        &self,
        tables: &mut Tables,
        peer: SocketAddr,
        listener: Option<SocketAddr>,
        direction: Direction,
    ) -> NewConnection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = crate::queue::channel(self.queued.clone(), self.limits.queue_bytes);
        let activity = Arc::new(Activity::new());
        tables.by_id.insert(
            id,
            Entry {
                peer,
                listener,
                direction,
                alias: None,
                tx: tx.clone(),
                activity: activity.clone(),
            },
        );
        tables.by_route.insert((peer, listener), id);
        match direction {
            Direction::Inbound => {
                tables.inbound += 1;
                *tables.per_source.entry(peer.ip()).or_insert(0) += 1;
            }
            Direction::Outbound => tables.outbound += 1,
        }
        NewConnection {
            id,
            tx,
            rx,
            activity,
        }
    }

    /// Registers an accepted connection, unless the inbound or the per-source limit is
    /// reached.
    pub(crate) fn accept(
        &self,
        peer: SocketAddr,
        listener: SocketAddr,
    ) -> Result<NewConnection, TransportError> {
        let mut tables = self.lock();
        if tables.inbound >= self.limits.inbound {
            return Err(TransportError::InboundLimit {
                limit: self.limits.inbound,
            });
        }
        let from_source = tables.per_source.get(&peer.ip()).copied().unwrap_or(0);
        if from_source >= self.limits.per_source {
            return Err(TransportError::SourceLimit {
                ip: peer.ip(),
                limit: self.limits.per_source,
            });
        }
        Ok(self.insert(&mut tables, peer, Some(listener), Direction::Inbound))
    }

    /// The queue of connection `id`, if it is still open.
    pub(crate) fn named(&self, id: u64) -> Option<SendQueue> {
        let tables = self.lock();
        let entry = tables.by_id.get(&id).filter(|e| !e.tx.is_closed())?;
        Some(entry.tx.clone())
    }

    /// Finds the connection for a send: the latest open one to `addr` from `listener`, else
    /// reserves a new outbound one unless the outbound limit is reached.
    pub(crate) fn route(
        &self,
        addr: SocketAddr,
        listener: Option<SocketAddr>,
    ) -> Result<Route, TransportError> {
        let mut tables = self.lock();
        let existing = tables
            .by_route
            .get(&(addr, listener))
            .and_then(|id| tables.by_id.get(id))
            .filter(|e| !e.tx.is_closed());
        if let Some(entry) = existing {
            return Ok(Route::Existing(entry.tx.clone()));
        }
        if tables.outbound >= self.limits.outbound {
            return Err(TransportError::OutboundLimit {
                limit: self.limits.outbound,
            });
        }
        Ok(Route::Connect(self.insert(
            &mut tables,
            addr,
            listener,
            Direction::Outbound,
        )))
    }

    /// Lets sends to `addr` use accepted connection `id` (RFC 5923): the peer opened it
    /// from an ephemeral port but listens at `addr`. One alias per connection; a later
    /// one replaces it. False when the connection is gone.
    pub(crate) fn alias(&self, id: u64, addr: SocketAddr) -> bool {
        let mut tables = self.lock();
        let Some(entry) = tables.by_id.get_mut(&id) else {
            return false;
        };
        if entry.peer == addr || entry.alias == Some(addr) {
            return true;
        }
        let listener = entry.listener;
        if let Some(old) = entry.alias.replace(addr) {
            if tables.by_route.get(&(old, listener)) == Some(&id) {
                tables.by_route.remove(&(old, listener));
            }
        }
        tables.by_route.insert((addr, listener), id);
        true
    }

    /// A pin on connection `id`, if it is still open.
    pub(crate) fn pin(&self, id: u64) -> Option<ConnectionPin> {
        let tables = self.lock();
        let entry = tables.by_id.get(&id).filter(|e| !e.tx.is_closed())?;
        Some(ConnectionPin::new(id, entry.activity.clone()))
    }

    /// Forgets a closed connection.
    pub(crate) fn remove(&self, id: u64) {
        let mut tables = self.lock();
        if let Some(entry) = tables.by_id.remove(&id) {
            for addr in std::iter::once(entry.peer).chain(entry.alias) {
                let key = (addr, entry.listener);
                if tables.by_route.get(&key) == Some(&id) {
                    tables.by_route.remove(&key);
                }
            }
            match entry.direction {
                Direction::Inbound => {
                    tables.inbound = tables.inbound.saturating_sub(1);
                    let ip = entry.peer.ip();
                    if let Some(n) = tables.per_source.get_mut(&ip) {
                        *n = n.saturating_sub(1);
                        if *n == 0 {
                            tables.per_source.remove(&ip);
                        }
                    }
                }
                Direction::Outbound => tables.outbound = tables.outbound.saturating_sub(1),
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

    fn addr(ip: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::from((ip, port))
    }

    const LISTENER: [u8; 4] = [127, 0, 0, 1];

    #[test]
    fn route_reuses_per_listener_then_connects_within_the_limit() {
        let table = ConnectionTable::new(Limits {
            inbound: 10,
            outbound: 2,
            per_source: 10,
            queue_bytes: 1 << 20,
        });
        let a = addr(LISTENER, 5060);
        let b = addr([127, 0, 0, 2], 5060);
        let accepted = table.accept(addr([192, 0, 2, 1], 1), a).unwrap();
        assert!(table.named(accepted.id).is_some());
        // The accepted connection serves sends to its peer from its listener only.
        assert!(matches!(
            table.route(addr([192, 0, 2, 1], 1), Some(a)),
            Ok(Route::Existing(_))
        ));
        let Ok(Route::Connect(from_b)) = table.route(addr([192, 0, 2, 1], 1), Some(b)) else {
            panic!("expected a new connection from the other listener");
        };
        assert_ne!(from_b.id, accepted.id);
        let Ok(Route::Connect(other)) = table.route(addr([192, 0, 2, 9], 5060), None) else {
            panic!("expected a new connection");
        };
        // Two outbound connections: the limit; inbound ones do not count against it.
        assert!(matches!(
            table.route(addr([192, 0, 2, 10], 5060), None),
            Err(TransportError::OutboundLimit { limit: 2 })
        ));
        table.remove(other.id);
        assert!(matches!(
            table.route(addr([192, 0, 2, 10], 5060), None),
            Ok(Route::Connect(_))
        ));
    }

    #[test]
    fn inbound_and_per_source_limits_count_and_release() {
        let table = ConnectionTable::new(Limits {
            inbound: 3,
            outbound: 1,
            per_source: 2,
            queue_bytes: 1 << 20,
        });
        let listener = addr(LISTENER, 5060);
        let one = table.accept(addr([192, 0, 2, 1], 1), listener).unwrap();
        let _two = table.accept(addr([192, 0, 2, 1], 2), listener).unwrap();
        assert!(matches!(
            table.accept(addr([192, 0, 2, 1], 3), listener),
            Err(TransportError::SourceLimit { limit: 2, .. })
        ));
        let _three = table.accept(addr([192, 0, 2, 2], 1), listener).unwrap();
        assert!(matches!(
            table.accept(addr([192, 0, 2, 3], 1), listener),
            Err(TransportError::InboundLimit { limit: 3 })
        ));
        // The outbound budget is untouched by inbound connections.
        assert!(matches!(
            table.route(addr([192, 0, 2, 50], 5060), None),
            Ok(Route::Connect(_))
        ));
        table.remove(one.id);
        assert!(table.accept(addr([192, 0, 2, 1], 4), listener).is_ok());
        assert!(table.named(one.id).is_none());
        assert!(table.pin(one.id).is_none());
    }

    #[test]
    fn removal_empties_every_index() {
        let table = ConnectionTable::new(Limits {
            inbound: 2,
            outbound: 2,
            per_source: 2,
            queue_bytes: 1 << 20,
        });
        let a = table
            .accept(addr([192, 0, 2, 1], 1), addr(LISTENER, 5060))
            .unwrap();
        let Ok(Route::Connect(b)) = table.route(addr([192, 0, 2, 2], 5060), None) else {
            panic!("expected a new connection");
        };
        table.remove(a.id);
        table.remove(b.id);
        assert_eq!(table.len(), 0);
        let tables = table.lock();
        assert!(tables.by_route.is_empty());
        assert!(tables.per_source.is_empty());
        assert_eq!((tables.inbound, tables.outbound), (0, 0));
    }
}

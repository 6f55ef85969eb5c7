//! A TCP connection's outgoing queue, bounded in messages and in bytes, per connection
//! and over all connections together.
//!
//! A peer that stops reading while it keeps sending requests makes the node queue its
//! answers. Counted in messages only, one connection could hold 256 messages of up to
//! 64 KiB each, and every connection the limits allow as much again: gigabytes for a
//! few thousand idle readers. Counted in bytes as well, one connection holds at most
//! `tcp_send_queue_bytes` (512 KiB by default) and all of them `ALL_BYTES`; past either,
//! a send fails at once (`QueueFull`, which the call path turns into a 503), as it does
//! on a full queue. One message is always taken by an empty queue, whatever its size.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::mpsc::{self, error::TryRecvError, error::TrySendError};

/// Why a message was not queued (it is dropped; the sender reports it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unsent {
    /// A budget or the message count would be passed.
    Full,
    /// The writer has gone.
    Closed,
}

use crate::connections::Outgoing;

/// Messages one connection may have waiting for its writer.
pub(crate) const CONNECTION_MESSAGES: usize = 256;
/// Bytes all connections together may have waiting.
pub(crate) const ALL_BYTES: usize = 256 * 1024 * 1024;

/// Bytes waiting, on one connection and over all of them.
#[derive(Debug)]
struct Counters {
    mine: AtomicUsize,
    budget: usize,
    all: Arc<AtomicUsize>,
}

impl Counters {
    /// Books `len` bytes, unless that would pass either budget (an empty queue takes
    /// one message of any size).
    fn reserve(&self, len: usize) -> bool {
        let before = self.mine.fetch_add(len, Ordering::AcqRel);
        let all = self.all.fetch_add(len, Ordering::AcqRel) + len;
        if (before > 0 && before + len > self.budget) || all > ALL_BYTES {
            self.release(len);
            return false;
        }
        true
    }

    fn release(&self, len: usize) {
        self.mine.fetch_sub(len, Ordering::AcqRel);
        self.all.fetch_sub(len, Ordering::AcqRel);
    }
}

/// The sending side, cloned by everyone who sends on the connection.
#[derive(Debug, Clone)]
pub(crate) struct SendQueue {
    tx: mpsc::Sender<Outgoing>,
    counters: Arc<Counters>,
}

/// The writer's side. Dropping it gives back what was still booked.
#[derive(Debug)]
pub(crate) struct SendQueueRx {
    rx: mpsc::Receiver<Outgoing>,
    counters: Arc<Counters>,
}

/// A new queue of `budget` bytes whose bytes also count toward `all` (the table's
/// total).
pub(crate) fn channel(all: Arc<AtomicUsize>, budget: usize) -> (SendQueue, SendQueueRx) {
    let (tx, rx) = mpsc::channel(CONNECTION_MESSAGES);
    let counters = Arc::new(Counters {
        mine: AtomicUsize::new(0),
        budget,
        all,
    });
    (
        SendQueue {
            tx,
            counters: counters.clone(),
        },
        SendQueueRx { rx, counters },
    )
}

impl SendQueue {
    /// Queues `msg` without waiting, or drops it and says why.
    pub(crate) fn try_send(&self, msg: Outgoing) -> Result<(), Unsent> {
        let len = msg.data.len();
        if !self.counters.reserve(len) {
            return Err(Unsent::Full);
        }
        self.tx.try_send(msg).map_err(|e| {
            self.counters.release(len);
            match e {
                TrySendError::Full(_) => Unsent::Full,
                TrySendError::Closed(_) => Unsent::Closed,
            }
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the writer has gone.
    pub(crate) async fn closed(&self) {
        self.tx.closed().await;
    }
}

impl SendQueueRx {
    pub(crate) async fn recv(&mut self) -> Option<Outgoing> {
        let m = self.rx.recv().await?;
        self.counters.release(m.data.len());
        Some(m)
    }

    pub(crate) fn try_recv(&mut self) -> Result<Outgoing, TryRecvError> {
        let m = self.rx.try_recv()?;
        self.counters.release(m.data.len());
        Ok(m)
    }

    /// Refuses further sends; what is queued can still be taken.
    pub(crate) fn close(&mut self) {
        self.rx.close();
    }
}

impl Drop for SendQueueRx {
    fn drop(&mut self) {
        // Sends after the close fail and give their bytes back themselves.
        self.rx.close();
        while self.try_recv().is_ok() {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn msg(len: usize) -> Outgoing {
        Outgoing {
            data: Bytes::from(vec![b'x'; len]),
            origin: None,
        }
    }

    const BUDGET: usize = 512 * 1024;

    #[test]
    fn a_connection_holds_at_most_its_byte_budget() {
        let all = Arc::new(AtomicUsize::new(0));
        let (tx, mut rx) = channel(all.clone(), BUDGET);
        let big = 64 * 1024;
        let fits = BUDGET / big;
        for _ in 0..fits {
            tx.try_send(msg(big)).unwrap();
        }
        assert!(matches!(tx.try_send(msg(big)), Err(Unsent::Full)));
        assert_eq!(all.load(Ordering::Acquire), fits * big);
        // The writer taking one makes room for one.
        rx.try_recv().unwrap();
        tx.try_send(msg(big)).unwrap();
        assert!(matches!(tx.try_send(msg(1)), Err(Unsent::Full)));
    }

    #[test]
    fn an_empty_queue_takes_one_message_larger_than_its_budget() {
        let (tx, mut rx) = channel(Arc::new(AtomicUsize::new(0)), 1000);
        tx.try_send(msg(4000)).unwrap();
        assert!(matches!(tx.try_send(msg(1)), Err(Unsent::Full)));
        rx.try_recv().unwrap();
        tx.try_send(msg(600)).unwrap();
        tx.try_send(msg(400)).unwrap();
        assert!(matches!(tx.try_send(msg(1)), Err(Unsent::Full)));
    }

    #[test]
    fn small_messages_are_still_counted_in_messages() {
        let (tx, _rx) = channel(Arc::new(AtomicUsize::new(0)), BUDGET);
        for _ in 0..CONNECTION_MESSAGES {
            tx.try_send(msg(10)).unwrap();
        }
        assert!(matches!(tx.try_send(msg(10)), Err(Unsent::Full)));
    }

    #[test]
    fn all_connections_share_one_budget_and_get_it_back_when_they_close() {
        let all = Arc::new(AtomicUsize::new(ALL_BYTES - 1000));
        let (a, a_rx) = channel(all.clone(), BUDGET);
        let (b, _b_rx) = channel(all.clone(), BUDGET);
        a.try_send(msg(600)).unwrap();
        assert!(matches!(b.try_send(msg(600)), Err(Unsent::Full)));
        drop(a_rx);
        assert_eq!(all.load(Ordering::Acquire), ALL_BYTES - 1000);
        assert!(matches!(a.try_send(msg(10)), Err(Unsent::Closed)));
        b.try_send(msg(600)).unwrap();
    }
}

//! The relay's port pairs: the pure allocator ([`PortAllocator`]), plus the pairs the
//! control side freed whose sockets a worker has not put away yet, and the spare sockets
//! kept bound for the next call on their port.
//!
//! A worker owns a stream's sockets and closes them when it applies the command that removes
//! (or rebinds) the stream. Until then the ports are still bound, and handing them to the
//! next call would fail its bind. So a freed pair waits here, tagged with the sequence number
//! of that command, and returns to the allocator once the worker has applied it. With pairs
//! reused least recently freed first this only matters when the range is nearly exhausted:
//! then an allocation waits (briefly, bounded) for the workers rather than failing.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ports::PortAllocator;
use crate::worker::{MediaSocket, WorkerTotals};
use crate::MediaError;

/// The longest an allocation waits for workers to close freed sockets when nothing else is
/// free. A worker applies commands before it reads packets, so it is normally done within
/// microseconds. The wait holds the relay's lock on a signalling thread, so it stays short:
/// a worker that is behind (an overloaded node) makes the offer fail with `NoPorts` (the
/// caller gets 503) instead of stalling every call's media operations behind it.
const CLOSE_WAIT: Duration = Duration::from_millis(5);

/// A freed pair whose sockets close when `worker` applies command `seq`.
#[derive(Debug)]
struct Closing {
    worker: usize,
    seq: u64,
    port: u16,
    freed: Instant,
}

/// Port pairs of the relay: free, in use, or closing.
#[derive(Debug)]
pub(crate) struct PortPool {
    alloc: PortAllocator,
    closing: Vec<Closing>,
    /// Each worker's counters; `applied` says how far its commands have been applied.
    workers: Vec<Arc<WorkerTotals>>,
    /// Sockets of removed streams, still bound and still watched by the worker that had
    /// them, which reads and drops whatever arrives on them: the next call on the port
    /// reuses them instead of binding new ones, and if that call lands on the same worker
    /// nothing at all is done to the socket (no syscall).
    spare: HashMap<SocketAddr, Spare, foldhash::fast::RandomState>,
    /// `spare` in the order the sockets were put away, to close those idle for `spare_ttl`.
    spare_order: VecDeque<(Instant, SocketAddr)>,
    spare_ttl: Duration,
}

/// A spare socket, and the worker whose epoll set watches it (under `token`).
#[derive(Debug)]
pub(crate) struct Spare {
    pub(crate) socket: Arc<UdpSocket>,
    pub(crate) worker: usize,
    pub(crate) token: u64,
    since: Instant,
}

impl PortPool {
    pub(crate) fn new(
        alloc: PortAllocator,
        workers: Vec<Arc<WorkerTotals>>,
        spare_ttl: Duration,
    ) -> Self {
        PortPool {
            alloc,
            closing: Vec::new(),
            workers,
            spare: HashMap::default(),
            spare_order: VecDeque::new(),
            spare_ttl,
        }
    }

    /// Sockets kept bound for reuse.
    pub(crate) fn spares(&self) -> usize {
        self.spare.len()
    }

    /// Keeps `socket`, watched by `worker` under its token, for the next call on its port
    /// (unless spares are off: then it is dropped, and closes when the worker drops it
    /// too). Its port is not handed out before the worker has applied the command that
    /// put it away (see [`PortPool::free_after`]).
    pub(crate) fn keep_spare(&mut self, socket: MediaSocket, worker: usize, now: Instant) {
        if self.spare_ttl.is_zero() {
            return;
        }
        let MediaSocket {
            socket,
            addr,
            token,
            ..
        } = socket;
        self.spare.insert(
            addr,
            Spare {
                socket,
                worker,
                token,
                since: now,
            },
        );
        self.spare_order.push_back((now, addr));
    }

    /// The still-bound socket of `addr`, if one is spare. Whatever arrived on it while it
    /// was spare was read and dropped by its worker; a packet that arrives between that
    /// and its reuse is a stranger's to the new call, which latching keeps out.
    pub(crate) fn take_spare(&mut self, addr: SocketAddr) -> Option<Spare> {
        self.spare.remove(&addr)
    }

    /// The worker watching the spare RTP socket of the pair the next allocation on `ip`
    /// takes, if it is a spare: a new call given that worker reuses the socket with no
    /// syscall, so port pairs stay with one worker as long as they are in use.
    /// Closing pairs are not reaped first: they would join the back of the queue, so the
    /// front is the same.
    pub(crate) fn next_spare_worker(&self, ip: IpAddr) -> Option<usize> {
        let port = self.alloc.next()?;
        self.spare.get(&SocketAddr::new(ip, port)).map(|s| s.worker)
    }

    /// Spares idle for longer than their time to live, taken out: the caller tells their
    /// workers to let go of them (the socket closes when both sides have).
    pub(crate) fn expire_spares(&mut self, now: Instant) -> Vec<Spare> {
        let mut expired = Vec::new();
        while let Some(&(since, addr)) = self.spare_order.front() {
            if now.saturating_duration_since(since) < self.spare_ttl {
                break;
            }
            self.spare_order.pop_front();
            // Only if it is still that spare (not reused, and not put away again since).
            if self.spare.get(&addr).is_some_and(|s| s.since == since) {
                expired.extend(self.spare.remove(&addr));
            }
        }
        expired
    }

    /// Frees a pair whose sockets worker `worker` closes when it applies command `seq`;
    /// `now` is when it was freed (its rest starts then).
    pub(crate) fn free_after(&mut self, worker: usize, seq: u64, port: u16, now: Instant) {
        self.closing.push(Closing {
            worker,
            seq,
            port,
            freed: now,
        });
    }

    /// Frees a pair whose sockets are closed already (never handed to a worker).
    pub(crate) fn free(&mut self, port: u16, now: Instant) {
        self.alloc.free(port, now);
    }

    /// Moves the pairs whose sockets are now put away (closed or spare) to the allocator.
    pub(crate) fn reap(&mut self) {
        let workers = &self.workers;
        let alloc = &mut self.alloc;
        self.closing.retain(|c| {
            let closed = workers
                .get(c.worker)
                .is_none_or(|w| w.applied.load(Ordering::Acquire) >= c.seq);
            if closed {
                alloc.free(c.port, c.freed);
            }
            !closed
        });
    }

    /// Takes the pair freed longest ago (see [`PortAllocator::alloc`]). When the only pairs
    /// not in use are still being closed, calls `wake` (the workers may not have been
    /// asked to close them yet) and waits up to [`CLOSE_WAIT`] for them.
    pub(crate) fn alloc(&mut self, now: Instant, wake: impl Fn()) -> Result<u16, MediaError> {
        self.reap();
        let deadline = Instant::now() + CLOSE_WAIT;
        let mut woken = false;
        loop {
            match self.alloc.alloc(now) {
                Ok(port) => return Ok(port),
                Err(e) if self.closing.is_empty() || Instant::now() >= deadline => return Err(e),
                Err(_) => {
                    if !woken {
                        wake();
                        woken = true;
                    }
                    std::thread::sleep(Duration::from_micros(200));
                    self.reap();
                }
            }
        }
    }

    /// Total number of pairs the range holds.
    pub(crate) fn capacity(&self) -> usize {
        self.alloc.capacity()
    }

    /// Pairs allocated, or freed with their sockets still open.
    pub(crate) fn in_use(&self) -> usize {
        self.alloc.in_use()
    }

    /// See [`PortAllocator::resting_at`].
    pub(crate) fn resting_at(&self, now: Instant) -> usize {
        self.alloc.resting_at(now)
    }

    /// See [`PortAllocator::reused_early`].
    pub(crate) fn reused_early(&self) -> u64 {
        self.alloc.reused_early()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_whose_worker_never_closes_it_is_not_handed_out() {
        let now = Instant::now();
        let worker = Arc::new(WorkerTotals::default());
        let alloc = PortAllocator::new(30000, 30001, Duration::ZERO);
        let mut pool = PortPool::new(alloc, vec![worker.clone()], Duration::from_secs(1));
        let port = pool.alloc(now, || {}).expect("the one pair");
        // Freed, but its sockets close only when the worker applies command 1.
        pool.free_after(0, 1, port, now);
        let woken = std::cell::Cell::new(0);
        let wake = || woken.set(woken.get() + 1);
        assert!(matches!(pool.alloc(now, wake), Err(MediaError::NoPorts)));
        assert_eq!(
            woken.get(),
            1,
            "the workers are woken once to apply their removals"
        );
        assert_eq!(pool.in_use(), 1, "the closing pair still counts as in use");
        // Once the worker has applied it, the pair is free again, with no wake-up.
        worker.applied.store(1, Ordering::Release);
        assert_eq!(pool.alloc(now, wake).ok(), Some(port));
        assert_eq!(woken.get(), 1);
    }
}

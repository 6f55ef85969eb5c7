//! A worker's side of the kernel fast path: which of its streams' directions the kernel
//! relays (routes follow latching), and folding what the kernel forwarded into the counters
//! and sequence tracking the control side reads.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{split_pair, Counters, KernelRoute, Side, Tally, Worker, RTP};
use crate::kernel::{monotonic_now, Forwarded, KernelPath, Route, SeqPosition};
use crate::rtp::SeqTracker;
use std::net::SocketAddr;

/// How often a worker folds what the kernel fast path forwarded into its counters (as
/// rtpengine syncs its kernel table's counters).
const REFRESH: Duration = Duration::from_secs(1);

/// The kernel fast path as one worker uses it.
pub(super) struct KernelLink {
    path: Arc<KernelPath>,
    /// Sides of this worker's streams with a route in the kernel.
    routes: usize,
    next_refresh: Instant,
    /// CLOCK_MONOTONIC at the relay epoch, to turn the program's packet times into relay
    /// time.
    epoch_mono: Duration,
    error_logged: bool,
}

impl KernelLink {
    pub(super) fn new(path: Arc<KernelPath>, epoch: Instant) -> KernelLink {
        KernelLink {
            path,
            routes: 0,
            next_refresh: Instant::now(),
            epoch_mono: monotonic_now().saturating_sub(epoch.elapsed()),
            error_logged: false,
        }
    }

    /// How long until counts are due to be folded in; `None` while no route exists.
    pub(super) fn refresh_in(&self) -> Option<Duration> {
        (self.routes > 0).then(|| self.next_refresh.saturating_duration_since(Instant::now()))
    }

    /// Takes `side`'s route, if any, out of the kernel and folds in what it forwarded
    /// since the last fold (one atomic read-and-delete, so nothing is lost).
    fn retire(&mut self, side: &mut Side, tally: &mut Tally, worker: &str) {
        let Some(old) = side.kernel.take() else {
            return;
        };
        self.routes -= 1;
        match self.path.take(old.route.local) {
            Ok(Some(last)) => tally.add_kernel(fold_counts(
                &mut side.counters,
                &mut side.seq,
                &old,
                &last,
                self.epoch_mono,
            )),
            Ok(None) => {}
            Err(e) => self.failed(worker, &e),
        }
    }

    /// Hands `route` for `side`'s RTP to the kernel, its sequence tracking carrying on from
    /// the worker's.
    fn install(&mut self, side: &mut Side, route: Route, worker: &str) {
        let (max_seq, cycles) = side.seq.position();
        side.shared
            .kernel_routed
            .store(true, std::sync::atomic::Ordering::SeqCst);
        match self.path.install(&route, SeqPosition { max_seq, cycles }) {
            Ok(true) => {
                side.kernel = Some(KernelRoute {
                    route,
                    seen: Forwarded::default(),
                });
                self.routes += 1;
            }
            Ok(false) => {}
            Err(e) => self.failed(worker, &e),
        }
    }

    /// Logs a failed table update: a warning the first time, then at debug level, so a
    /// full table (or a kernel that changed its mind) cannot flood the log.
    fn failed(&mut self, worker: &str, e: &std::io::Error) {
        if std::mem::replace(&mut self.error_logged, true) {
            tracing::debug!(worker, error = %e, "kernel forwarding table update failed");
        } else {
            tracing::warn!(worker, error = %e,
                "kernel forwarding table update failed; affected streams stay in user space");
        }
    }
}

impl Worker {
    /// Makes the kernel's routes for both directions of the stream in `slot` match what
    /// latching now says; a no-op (no syscall) when nothing changed.
    pub(super) fn sync_kernel(&mut self, slot: usize) {
        let (Some(link), Some(Some(stream))) = (self.kernel.as_mut(), self.streams.get_mut(slot))
        else {
            return;
        };
        for s in 0..2 {
            let (side, other) = split_pair(&mut stream.sides, s);
            let want = wanted_route(side, other);
            if side.kernel.as_ref().map(|k| k.route) == want {
                continue;
            }
            link.retire(side, &mut self.tally, &self.name);
            if let Some(route) = want {
                link.install(side, route, &self.name);
            }
            side.publish_with_kernel();
        }
    }

    /// Takes the stream in `slot` out of the kernel, keeping what it forwarded so far.
    pub(super) fn retire_kernel(&mut self, slot: usize) {
        let (Some(link), Some(Some(stream))) = (self.kernel.as_mut(), self.streams.get_mut(slot))
        else {
            return;
        };
        for side in &mut stream.sides {
            if side.kernel.is_some() {
                link.retire(side, &mut self.tally, &self.name);
                side.publish_with_kernel();
            }
        }
    }

    /// The control side took this stream's routes: fold their final counts in and forget
    /// them. A route this worker installed again in the meantime (from a packet read just
    /// before the command) is taken out too; then the taken counts' baseline is unknown
    /// and they are left out rather than counted twice.
    pub(super) fn kernel_taken(&mut self, id: u64, counts: [Option<Forwarded>; 2]) {
        let Some(link) = self.kernel.as_mut() else {
            return;
        };
        let Some(stream) = self
            .by_id
            .get(&id)
            .and_then(|&s| self.streams.get_mut(s))
            .and_then(Option::as_mut)
        else {
            return;
        };
        for (side, taken) in stream.sides.iter_mut().zip(counts) {
            let Some(k) = side.kernel.take() else {
                continue;
            };
            link.routes -= 1;
            let last = match link.path.take(k.route.local) {
                Ok(again) => again.or(taken),
                Err(e) => {
                    link.failed(&self.name, &e);
                    taken
                }
            };
            if let Some(last) = last {
                self.tally.add_kernel(fold_counts(
                    &mut side.counters,
                    &mut side.seq,
                    &k,
                    &last,
                    link.epoch_mono,
                ));
            }
            side.publish_with_kernel();
        }
    }

    /// Folds every kernel route's new counts in and publishes them.
    pub(super) fn refresh_kernel(&mut self) {
        let Some(link) = self.kernel.as_mut() else {
            return;
        };
        link.next_refresh = Instant::now() + REFRESH;
        for stream in self.streams.iter_mut().flatten() {
            for side in &mut stream.sides {
                let Some(k) = side.kernel.as_mut() else {
                    continue;
                };
                let Ok(Some(now)) = link.path.forwarded(k.route.local) else {
                    continue;
                };
                let new = fold_counts(&mut side.counters, &mut side.seq, k, &now, link.epoch_mono);
                k.seen = now;
                self.tally.add_kernel(new);
                if new.0 > 0 {
                    side.publish_with_kernel();
                }
            }
        }
        self.publish_totals();
    }
}

/// The route `side`'s RTP should have in the kernel: only for a final latch — this party
/// confirmed and its SSRC known, toward the other party's confirmed source — so the kernel
/// never relays for a source still being learnt, nor toward one (never for `asymmetric`,
/// which accepts anyone), and for IPv4 sockets.
fn wanted_route(side: &Side, other: &Side) -> Option<Route> {
    if side.policy.asymmetric {
        return None;
    }
    let sock = &side.socks[RTP];
    let out = &other.socks[RTP];
    let v4 = |a: Option<SocketAddr>| match a {
        Some(SocketAddr::V4(a)) => Some(a),
        _ => None,
    };
    Some(Route {
        local: sock.local?,
        from: v4(sock.latch.latched)?,
        ssrc: side.seq.ssrc()?,
        out_local: out.local?,
        to: v4(out.latch.latched)?,
    })
}

/// Adds what the kernel forwarded on route `k` since its last reading (`k.seen`) to a
/// party's RTP counters and sequence tracking; returns the new packets and bytes.
fn fold_counts(
    counters: &mut Counters,
    seq: &mut SeqTracker,
    k: &KernelRoute,
    now: &Forwarded,
    epoch_mono: Duration,
) -> (u64, u64) {
    let packets = now.packets.saturating_sub(k.seen.packets);
    let bytes = now.bytes.saturating_sub(k.seen.bytes);
    seq.absorb(k.route.ssrc, now.seq.max_seq, now.seq.cycles, packets);
    let count = &mut counters.traffic[RTP];
    count.packets += packets;
    count.bytes += bytes;
    if let Some(last) = now.last.filter(|_| packets > 0) {
        let ms = last.saturating_sub(epoch_mono).as_millis();
        count.last_packet = count
            .last_packet
            .max(u64::try_from(ms).unwrap_or(u64::MAX - 1) + 1);
    }
    (packets, bytes)
}

#[cfg(test)]
mod tests {
    use super::super::{PeerSpec, SideShared, Sock, SrLog};
    use super::*;
    use crate::latch::LatchPolicy;
    use crate::rtp::SsrcHistory;

    /// One party's side: sockets on loopback, signalled at `expected`, at time 1 ms with
    /// the default (delayed) learning window.
    fn side(expected: SocketAddr) -> Side {
        let bind = || {
            let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = socket.local_addr().unwrap();
            super::super::MediaSocket {
                socket: Arc::new(socket),
                addr,
                token: super::super::token(0, addr.port()),
                watched_by: None,
            }
        };
        let mut s = Side {
            socks: [Sock::new(bind()), Sock::new(bind())],
            mux: false,
            policy: LatchPolicy::default(),
            counters: Counters::default(),
            seq: SeqTracker::new(),
            ssrcs: SsrcHistory::default(),
            srs: SrLog::default(),
            shared: Arc::new(SideShared::default()),
            kernel: None,
        };
        let peer = PeerSpec {
            rtp: Some(expected),
            rtcp: None,
            mux: false,
            policy: LatchPolicy::default(),
        };
        s.apply(&peer, 1, crate::latch::LEARNING_WINDOW_MS);
        s
    }

    /// A packet from `source` at 2 ms, as the worker decides it.
    fn packet(s: &mut Side, source: SocketAddr) {
        let policy = s.policy;
        s.socks[RTP].latch.on_packet(&policy, source, 2);
        s.seq.update(0x1234, 1);
    }

    /// The kernel gets a direction only once both its ends are confirmed: not toward the
    /// other party's signalled address while that party is still being learnt (the route
    /// would outlive a different latch), and never from a source being learnt.
    #[test]
    fn routes_only_for_a_final_latch() {
        let (o_addr, a_addr) = (
            "127.0.0.1:4000".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        );
        let (mut o, mut a) = (side(o_addr), side(a_addr));
        // A candidate source of o's during the window: nothing.
        packet(&mut o, "127.0.0.9:7000".parse().unwrap());
        assert_eq!(o.socks[RTP].latch.latched, None);
        assert_eq!(wanted_route(&o, &a), None);
        // o confirmed, a not yet: still nothing, in either direction.
        packet(&mut o, o_addr);
        assert_eq!(wanted_route(&o, &a), None);
        assert_eq!(wanted_route(&a, &o), None);
        // Both confirmed: from o's latch to a's.
        packet(&mut a, a_addr);
        let route = wanted_route(&o, &a).unwrap();
        let v4 = |s: SocketAddr| match s {
            SocketAddr::V4(v) => v,
            SocketAddr::V6(_) => unreachable!(),
        };
        assert_eq!((route.from, route.to), (v4(o_addr), v4(a_addr)));
        assert!(wanted_route(&a, &o).is_some());
    }
}

//! What a transaction owes its TU: queued transmits and events, and the three
//! deadlines every RFC 3261 §17 machine runs (a retransmission timer, a timeout
//! and a linger). Client and server transactions differ only in which timer has
//! which letter and what firing means; the queueing, the polls and the timer
//! bookkeeping are the same, so they live here once.

use super::{Transmit, TxEvent};
use bytes::Bytes;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Which of a transaction's deadlines is due, in the order they must be handled:
/// a timeout ends the transaction before a pending retransmission could be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Due {
    /// B/F (client) or H (server): no final response, or no ACK, in time.
    Timeout,
    /// D/K/M (client) or I/J/L (server): the absorbing period is over.
    Linger,
    /// A/E (client) or G and the §13.3.1.4 2xx retransmission (server).
    Retransmit,
}

/// The queues and deadlines of one transaction.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    transmits: VecDeque<Transmit>,
    events: VecDeque<TxEvent>,
    retransmit_at: Option<Instant>,
    /// The interval the retransmission timer was last armed with.
    interval: Duration,
    timeout_at: Option<Instant>,
    linger_at: Option<Instant>,
}

impl Outbox {
    /// Queues a first transmission of `data`.
    pub(super) fn send(&mut self, data: Bytes) {
        self.transmits.push_back(Transmit {
            data,
            retransmission: false,
        });
    }

    /// Queues `data` again, marked as a retransmission.
    pub(super) fn resend(&mut self, data: Bytes) {
        self.transmits.push_back(Transmit {
            data,
            retransmission: true,
        });
    }

    pub(super) fn event(&mut self, event: TxEvent) {
        self.events.push_back(event);
    }

    /// When the absorbing period ends, if it runs.
    pub(super) fn linger_at(&self) -> Option<Instant> {
        self.linger_at
    }

    /// Arms the retransmission timer `interval` after `now`.
    pub(super) fn arm_retransmit(&mut self, now: Instant, interval: Duration) {
        self.interval = interval;
        self.retransmit_at = after(now, interval);
    }

    /// The interval the retransmission timer was last armed with, from which the
    /// machine computes the next one.
    pub(super) fn interval(&self) -> Duration {
        self.interval
    }

    pub(super) fn stop_retransmit(&mut self) {
        self.retransmit_at = None;
    }

    pub(super) fn arm_timeout(&mut self, now: Instant, d: Duration) {
        self.timeout_at = after(now, d);
    }

    pub(super) fn arm_linger(&mut self, now: Instant, d: Duration) {
        self.linger_at = after(now, d);
    }

    /// Stops retransmitting and the timeout: what every move to a state that
    /// only waits (or absorbs) does.
    pub(super) fn stop_retransmit_and_timeout(&mut self) {
        self.retransmit_at = None;
        self.timeout_at = None;
    }

    /// Stops every timer and tells the TU the transaction is over. Transmits
    /// already queued (an ACK, a last response) stay for the TU to drain.
    pub(super) fn terminate(&mut self) {
        self.stop_retransmit_and_timeout();
        self.linger_at = None;
        self.event(TxEvent::Terminated);
    }

    /// The first deadline due at `now`, in handling order.
    pub(super) fn due(&self, now: Instant) -> Option<Due> {
        if due(self.timeout_at, now) {
            Some(Due::Timeout)
        } else if due(self.linger_at, now) {
            Some(Due::Linger)
        } else if due(self.retransmit_at, now) {
            Some(Due::Retransmit)
        } else {
            None
        }
    }

    pub(super) fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    pub(super) fn poll_event(&mut self) -> Option<TxEvent> {
        self.events.pop_front()
    }

    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        earliest(&[self.retransmit_at, self.timeout_at, self.linger_at])
    }
}

/// A deadline `d` after `now`; `None` (never) if it does not fit in an `Instant`,
/// which only absurd configured timer values can cause.
fn after(now: Instant, d: Duration) -> Option<Instant> {
    now.checked_add(d)
}

/// The earliest of several optional deadlines.
fn earliest(deadlines: &[Option<Instant>]) -> Option<Instant> {
    deadlines.iter().flatten().min().copied()
}

/// True when the deadline is set and not after `now`.
fn due(deadline: Option<Instant>, now: Instant) -> bool {
    deadline.is_some_and(|d| d <= now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queues_drain_oldest_first() {
        let mut out = Outbox::default();
        out.send(Bytes::from_static(b"first"));
        out.resend(Bytes::from_static(b"again"));
        out.event(TxEvent::NoAck);
        out.terminate();
        let sent: Vec<(Bytes, bool)> = std::iter::from_fn(|| out.poll_transmit())
            .map(|t| (t.data, t.retransmission))
            .collect();
        assert_eq!(
            sent,
            [
                (Bytes::from_static(b"first"), false),
                (Bytes::from_static(b"again"), true)
            ]
        );
        assert_eq!(out.poll_event(), Some(TxEvent::NoAck));
        assert_eq!(out.poll_event(), Some(TxEvent::Terminated));
        assert_eq!(out.poll_event(), None);
    }

    #[test]
    fn timeout_wins_over_linger_and_retransmit_and_terminate_clears_all() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut out = Outbox::default();
        out.arm_retransmit(t0, s);
        out.arm_linger(t0, 2 * s);
        out.arm_timeout(t0, 3 * s);
        assert_eq!(out.poll_timeout(), Some(t0 + s));
        assert_eq!(out.due(t0), None);
        assert_eq!(out.due(t0 + s), Some(Due::Retransmit));
        assert_eq!(out.due(t0 + 2 * s), Some(Due::Linger));
        assert_eq!(out.due(t0 + 3 * s), Some(Due::Timeout));
        assert_eq!(out.interval(), s);
        out.terminate();
        assert_eq!(out.poll_timeout(), None);
        assert_eq!(out.due(t0 + 3 * s), None);
    }
}

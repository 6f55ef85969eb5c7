//! When a TCP connection last carried traffic, and who needs it kept open.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// Shared by a connection's reader (which enforces the idle timeout), its writer and every
/// [`ConnectionPin`]. Lock-free: touched on every read and write.
#[derive(Debug)]
pub(crate) struct Activity {
    /// Time zero of `last`.
    base: Instant,
    /// Nanoseconds from `base` to the latest read, write or unpin.
    last: AtomicU64,
    /// Live pins; while above zero the idle timeout does not apply.
    pins: AtomicUsize,
}

impl Activity {
    /// A connection that is active now.
    pub(crate) fn new() -> Self {
        Activity {
            base: Instant::now(),
            last: AtomicU64::new(0),
            pins: AtomicUsize::new(0),
        }
    }

    /// Records traffic now.
    pub(crate) fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last.fetch_max(nanos, Ordering::Relaxed);
    }

    /// When traffic was last seen.
    pub(crate) fn last(&self) -> Instant {
        self.base + Duration::from_nanos(self.last.load(Ordering::Relaxed))
    }

    /// Whether a call holds the connection open.
    pub(crate) fn is_pinned(&self) -> bool {
        self.pins.load(Ordering::Relaxed) > 0
    }
}

/// When the idle timer should fire next, or `None` when the connection is idle now and must
/// be closed. A pinned connection is looked at again one idle period later.
pub(crate) fn idle_deadline(
    last: Instant,
    pinned: bool,
    now: Instant,
    idle: Duration,
) -> Option<Instant> {
    if pinned {
        return Some(now + idle);
    }
    let deadline = last + idle;
    (deadline > now).then_some(deadline)
}

/// Keeps a TCP connection from being closed as idle while it is alive.
///
/// A call whose dialog runs over a connection holds one: a call can be silent for hours
/// (no re-INVITEs, no keep-alives) and closing its connection would cut the peer off from
/// sending BYE. Only the idle timeout is suspended; a peer that stalls mid-message, a write
/// that does not finish, an error or the peer's close still end the connection, and the pin
/// then holds nothing. When the last pin of a connection is dropped, the connection gets a
/// full idle period from then. Cloning adds a pin.
#[derive(Debug)]
pub struct ConnectionPin {
    connection: u64,
    activity: Arc<Activity>,
}

impl ConnectionPin {
    /// Pins the connection.
    pub(crate) fn new(connection: u64, activity: Arc<Activity>) -> Self {
        activity.pins.fetch_add(1, Ordering::Relaxed);
        ConnectionPin {
            connection,
            activity,
        }
    }

    /// The connection pinned, as in `Peer::connection`.
    pub fn connection(&self) -> u64 {
        self.connection
    }
}

impl Clone for ConnectionPin {
    fn clone(&self) -> Self {
        ConnectionPin::new(self.connection, self.activity.clone())
    }
}

impl Drop for ConnectionPin {
    fn drop(&mut self) {
        if self.activity.pins.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.activity.touch();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_deadline_follows_activity_and_pins() {
        let idle = Duration::from_secs(30);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Traffic at 0: the connection may idle until 30.
        assert_eq!(idle_deadline(at(0), false, at(10), idle), Some(at(30)));
        // Traffic at 25 (a write, say) moves it to 55 when the timer fires at 30.
        assert_eq!(idle_deadline(at(25), false, at(30), idle), Some(at(55)));
        // Nothing since 0, at 30: idle.
        assert_eq!(idle_deadline(at(0), false, at(30), idle), None);
        // Pinned: never idle, looked at again a period later.
        assert_eq!(idle_deadline(at(0), true, at(3600), idle), Some(at(3630)));
    }

    #[tokio::test(start_paused = true)]
    async fn last_pin_dropped_counts_as_activity() {
        let activity = Arc::new(Activity::new());
        let pin = ConnectionPin::new(7, activity.clone());
        let second = pin.clone();
        assert!(activity.is_pinned());
        tokio::time::advance(Duration::from_secs(100)).await;
        drop(pin);
        assert!(activity.is_pinned(), "one pin is left");
        assert!(activity.last() < Instant::now());
        drop(second);
        assert!(!activity.is_pinned());
        assert_eq!(activity.last(), Instant::now());
        assert_eq!(ConnectionPin::new(7, activity).connection(), 7);
    }
}

//! Receive congestion of UDP sockets: how full the kernel's receive queue is.
//!
//! A node that falls behind its UDP input does not slow down gracefully. Once the
//! socket's queue overflows the kernel drops datagrams at random — ACKs, BYEs and
//! responses of calls already up as much as new INVITEs — the peers retransmit, the
//! retransmissions add load, and almost every call fails. The dispatcher avoids that
//! by refusing *new* calls (503 with Retry-After, which costs one parse and one send)
//! while a queue is deep, so the calls in progress finish and the queue drains.
//!
//! The depth is read with `SO_MEMINFO` (the queue's memory against its limit), not
//! counted in datagrams: the limit the kernel enforces is memory.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::log_limiter::LogLimiter;

/// Datagrams read without the queue running empty between two looks at its depth.
/// Reading it costs a system call; while the queue keeps running empty there is
/// nothing to look at. Small next to what the buffer holds even with the kernel's
/// default `rmem_max` (a few hundred datagrams), so the node reacts before the last
/// quarter of the buffer fills.
pub(crate) const CHECK_EVERY: u32 = 32;

/// Node-wide count of congested UDP sockets, shared by their receive loops.
#[derive(Debug)]
pub(crate) struct Congestion {
    congested: AtomicUsize,
    /// Refusal threshold: percentage of the receive buffer in use (0: never congested).
    percent: usize,
    /// Under a sustained overload a socket may go in and out of congestion several times a
    /// second; one line a second says so.
    log: LogLimiter,
}

impl Congestion {
    pub(crate) fn new(percent: u8) -> Self {
        Congestion {
            congested: AtomicUsize::new(0),
            percent: usize::from(percent.min(100)),
            log: LogLimiter::new(1),
        }
    }

    /// Whether any socket is congested now.
    pub(crate) fn any(&self) -> bool {
        self.congested.load(Ordering::Relaxed) > 0
    }

    /// Whether the queue described by `used` of `limit` bytes crosses the threshold.
    /// A socket that is congested stays so until its queue is below a quarter of the
    /// threshold, so the state does not flap with every read.
    fn crosses(&self, used: usize, limit: usize, congested: bool) -> bool {
        if self.percent == 0 || limit == 0 {
            return false;
        }
        let mark = limit / 100 * self.percent;
        if congested {
            used > mark / 4
        } else {
            used >= mark
        }
    }
}

/// One socket's part of [`Congestion`]: its receive loop owns it.
pub(crate) struct SocketCongestion<'a> {
    node: &'a Congestion,
    congested: bool,
    /// Datagrams read since the queue was last empty or looked at.
    reads: u32,
}

impl<'a> SocketCongestion<'a> {
    pub(crate) fn new(node: &'a Congestion) -> Self {
        SocketCongestion {
            node,
            congested: false,
            reads: 0,
        }
    }

    /// The queue ran empty: whatever backlog there was is gone.
    pub(crate) fn drained(&mut self) {
        self.reads = 0;
        self.set(false);
    }

    /// A datagram was read from `socket`; every [`CHECK_EVERY`] reads without an
    /// empty queue, the queue's depth decides.
    pub(crate) fn read(&mut self, socket: &impl AsRawFd) {
        self.reads += 1;
        if self.reads < CHECK_EVERY {
            return;
        }
        self.reads = 0;
        if let Some((used, limit)) = queue_memory(socket) {
            self.set(self.node.crosses(used, limit, self.congested));
        }
    }

    fn set(&mut self, congested: bool) {
        if congested == self.congested {
            return;
        }
        self.congested = congested;
        if congested {
            self.node.congested.fetch_add(1, Ordering::Relaxed);
            if self.node.log.allow() {
                tracing::warn!("UDP receive queue deep: new calls are refused until it drains");
            }
        } else {
            self.node.congested.fetch_sub(1, Ordering::Relaxed);
            if self.node.log.allow() {
                tracing::info!("UDP receive queue drained: new calls are accepted again");
            }
        }
    }
}

impl Drop for SocketCongestion<'_> {
    fn drop(&mut self) {
        self.set(false);
    }
}

/// The receive queue's memory and its limit, in bytes (`SO_MEMINFO`); `None` when the
/// kernel does not say.
#[allow(unsafe_code)]
fn queue_memory(socket: &impl AsRawFd) -> Option<(usize, usize)> {
    // The kernel fills as many counters as it has (nine today) and says how many.
    let mut info = [0u32; 16];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is a writable buffer of `len` bytes that outlives the call, and
    // the kernel writes at most `len` bytes to it and sets `len` to what it wrote.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    let words = len as usize / std::mem::size_of::<u32>();
    if rc != 0 || words <= libc::SK_MEMINFO_RCVBUF as usize {
        return None;
    }
    Some((
        info[libc::SK_MEMINFO_RMEM_ALLOC as usize] as usize,
        info[libc::SK_MEMINFO_RCVBUF as usize] as usize,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threshold_with_hysteresis() {
        let c = Congestion::new(50);
        assert!(!c.crosses(499_999, 1_000_000, false));
        assert!(c.crosses(500_000, 1_000_000, false));
        // Once congested, it stays so down to an eighth of the buffer.
        assert!(c.crosses(200_000, 1_000_000, true));
        assert!(!c.crosses(125_000, 1_000_000, true));
    }

    #[test]
    fn zero_percent_never_congests() {
        let c = Congestion::new(0);
        assert!(!c.crosses(1_000_000, 1_000_000, false));
    }

    #[test]
    fn node_count_follows_sockets() {
        let node = Congestion::new(50);
        let mut a = SocketCongestion::new(&node);
        let mut b = SocketCongestion::new(&node);
        a.set(true);
        b.set(true);
        assert!(node.any());
        a.drained();
        assert!(node.any());
        drop(b);
        assert!(!node.any());
        a.set(true);
        drop(a);
        assert!(
            !node.any(),
            "a socket whose loop ends is not congested any more"
        );
    }

    #[test]
    fn reads_the_queue_of_a_real_socket() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let (used, limit) = queue_memory(&rx).expect("SO_MEMINFO");
        assert_eq!(used, 0);
        assert!(limit > 0);
        let to = rx.local_addr().expect("addr");
        for _ in 0..8 {
            tx.send_to(&[0u8; 512], to).expect("send");
        }
        // Loopback delivery is synchronous with the send.
        let (used, _) = queue_memory(&rx).expect("SO_MEMINFO");
        assert!(used >= 8 * 512, "queue holds {used} bytes");
    }
}

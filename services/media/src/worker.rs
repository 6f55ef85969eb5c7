//! The forwarding plane: one thread per core, each with its own level-triggered epoll over the
//! sockets of the streams assigned to it. Both parties' sockets of a stream live on one
//! worker, so a forward never crosses threads and the per-packet path takes no lock.
//!
//! Per readiness event a worker reads up to `batch` datagrams with `recvmmsg`, decides
//! each against the latching policy, updates counters it owns, and sends the accepted
//! ones with `sendmmsg` out of the other party's socket. Counters are published to the
//! control side with relaxed atomic stores once per batch.
//!
//! RTP and RTCP are counted apart. A datagram is RTCP when it arrives on an RTCP port or,
//! on an RTP port, when its packet type says so (RFC 5761 §4, rtcp-mux); `RTP`/`RTCP`
//! index both the sockets of a side and its per-kind counters.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollEvent};
use nix::sys::eventfd::EventFd;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

use crate::kernel::{Forwarded, KernelPath, Route};

mod kernel_routes;
use crate::latch::{LatchPolicy, LatchState, Verdict};
use crate::rtcp::{ntp_middle_from, pick_block, rtt_ms, validate_compound};
use crate::rtp::{looks_like_rtcp, parse_header, SeqTracker, SsrcHistory};
use crate::{PacketStats, StreamStats};
use kernel_routes::KernelLink;

/// Token of the control waker; stream tokens are [`token`]s.
pub(crate) const WAKER: u64 = u64::MAX;

/// The epoll token of a bound media socket: its bind address's index (see
/// `Interfaces::bind_index`) and its port. It names the socket, not the stream or the
/// worker's slot, so that the control side can watch a new stream's sockets itself (see
/// `Inner::watch`) and a socket keeps its registration, untouched, while it is spare and
/// when the next call on its port reuses it on the same worker. No token is `WAKER`.
pub(crate) fn token(bind_index: usize, port: u16) -> u64 {
    ((bind_index as u64 & 0xFFFF_FFFF) << 16) | u64::from(port)
}

/// A bound media socket as the control side hands it to a worker: shared, so that the
/// control side can register it in the worker's epoll after the command carrying it is
/// queued, and keep it as a spare when its stream ends.
#[derive(Debug, Clone)]
pub(crate) struct MediaSocket {
    pub(crate) socket: Arc<std::net::UdpSocket>,
    /// Its own address, as bound (no `getsockname` on the worker).
    pub(crate) addr: SocketAddr,
    /// Its epoll token ([`token`]).
    pub(crate) token: u64,
    /// The worker whose epoll set watches it already: a spare's; `None` for a new socket.
    pub(crate) watched_by: Option<usize>,
}

/// Largest datagram relayed; longer ones are truncated by the kernel and dropped.
const BUF_SIZE: usize = 8192;
/// Batches read from one socket per wake-up before the others get a turn.
const ROUNDS_PER_WAKE: usize = 8;
/// Component index of RTP and RTCP sockets, and of the RTP and RTCP counters.
pub(crate) const RTP: usize = 0;
pub(crate) const RTCP: usize = 1;
const NONE_U32: u32 = u32::MAX;
const NONE_U64: u64 = u64::MAX;

/// One kind of traffic's counters as published.
#[derive(Debug, Default)]
struct SharedCount {
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    /// Milliseconds since the relay epoch plus one; 0 means never.
    last_packet: AtomicU64,
}

impl SharedCount {
    fn store(&self, c: &Count) {
        self.packets.store(c.packets, Ordering::Relaxed);
        self.bytes.store(c.bytes, Ordering::Relaxed);
        self.errors.store(c.errors, Ordering::Relaxed);
        self.last_packet.store(c.last_packet, Ordering::Relaxed);
    }

    fn last_packet_ms(&self) -> Option<u64> {
        match self.last_packet.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }

    fn snapshot(&self, now_ms: u64) -> PacketStats {
        PacketStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            last_packet_ms_ago: self.last_packet_ms().map(|t| now_ms.saturating_sub(t)),
        }
    }
}

/// One party's counters, written by its worker once per batch and read by the control side.
#[derive(Debug)]
pub(crate) struct SideShared {
    /// By kind: `[RTP]`, `[RTCP]`.
    traffic: [SharedCount; 2],
    rtp_lost: AtomicU64,
    fraction_lost: AtomicU32,
    jitter: AtomicU64,
    rtt_us: AtomicU64,
    ssrc: AtomicU64,
    /// Latched source per component. Written only when a source (re)latches: rare,
    /// never per packet.
    latched: Mutex<[Option<SocketAddr>; 2]>,
    /// The kernel route of this party's RTP (its key) and the counts already in
    /// `traffic`. The worker publishes under this lock and `snapshot` reads under it, so
    /// a snapshot adds exactly what the kernel forwarded since.
    kernel: Mutex<Option<(SocketAddrV4, Forwarded)>>,
    /// Set (never cleared) before the worker first hands this party's RTP to the kernel,
    /// so the control side spends no bpf syscalls taking routes that never existed: most
    /// short calls, and every call set up and torn down before its media starts.
    pub(crate) kernel_routed: AtomicBool,
}

impl Default for SideShared {
    fn default() -> Self {
        SideShared {
            traffic: Default::default(),
            rtp_lost: AtomicU64::new(0),
            fraction_lost: AtomicU32::new(NONE_U32),
            jitter: AtomicU64::new(NONE_U64),
            rtt_us: AtomicU64::new(NONE_U64),
            ssrc: AtomicU64::new(NONE_U64),
            latched: Mutex::new([None; 2]),
            kernel: Mutex::new(None),
            kernel_routed: AtomicBool::new(false),
        }
    }
}

impl SideShared {
    /// Milliseconds since the epoch of the last accepted packet of any kind, if any.
    pub(crate) fn last_packet_ms(&self) -> Option<u64> {
        self.traffic
            .iter()
            .filter_map(SharedCount::last_packet_ms)
            .max()
    }

    /// A consistent-enough copy for stats (fields are read one by one). `peer` is what
    /// the control side programmed for this party; with `kernel` (the fast path and
    /// CLOCK_MONOTONIC at the relay epoch), what it forwarded since the worker last
    /// folded it in is added.
    pub(crate) fn snapshot(
        &self,
        now_ms: u64,
        local_port: u16,
        peer: &PeerSpec,
        kernel: Option<(&KernelPath, Duration)>,
    ) -> StreamStats {
        let route = self.kernel.lock().unwrap_or_else(PoisonError::into_inner);
        let mut rtp = self.traffic[RTP].snapshot(now_ms);
        if let (Some((local, seen)), Some((path, epoch_mono))) = (*route, kernel) {
            if let Ok(Some(now)) = path.forwarded(local) {
                let packets = now.packets.saturating_sub(seen.packets);
                rtp.packets += packets;
                rtp.bytes += now.bytes.saturating_sub(seen.bytes);
                if let Some(last) = now.last.filter(|_| packets > 0) {
                    let at = u64::try_from(last.saturating_sub(epoch_mono).as_millis())
                        .unwrap_or(u64::MAX);
                    rtp.last_packet_ms_ago = Some(now_ms.saturating_sub(at));
                }
            }
        }
        let fraction = self.fraction_lost.load(Ordering::Relaxed);
        let jitter = self.jitter.load(Ordering::Relaxed);
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        let latched = *self.latched.lock().unwrap_or_else(PoisonError::into_inner);
        StreamStats {
            rtp,
            rtcp: self.traffic[RTCP].snapshot(now_ms),
            rtp_lost: self.rtp_lost.load(Ordering::Relaxed),
            rtcp_fraction_lost: u8::try_from(fraction).ok(),
            rtcp_jitter: u32::try_from(jitter).ok(),
            rtt_ms: (rtt != NONE_U64).then(|| rtt as f64 / 1000.0),
            ssrc: u32::try_from(self.ssrc.load(Ordering::Relaxed)).ok(),
            latched: latched[RTP],
            // A muxing party's RTCP comes from its RTP source, through the RTP socket.
            latched_rtcp: latched[if peer.mux { RTP } else { RTCP }],
            advertised: peer.rtp,
            advertised_rtcp: peer.rtcp,
            rtcp_mux: peer.mux,
            local_port,
            // The control side knows the interface and fills these in.
            local_address: None,
            interface: String::new(),
        }
    }

    fn set_latched(&self, comp: usize, addr: Option<SocketAddr>) {
        if let Some(slot) = self
            .latched
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get_mut(comp)
        {
            *slot = addr;
        }
    }
}

/// Relay-wide counters of one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerTotals {
    pub(crate) relayed: AtomicU64,
    /// Of `relayed`, by the kernel fast path (published once per refresh).
    pub(crate) kernel: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) dropped: AtomicU64,
    /// Commands applied so far: the control side numbers the commands it sends, so it
    /// knows when the sockets a command closes are closed.
    pub(crate) applied: AtomicU64,
    /// The worker has been woken and not yet drained its commands: a burst of commands
    /// (an offer's streams, a delete's) costs one eventfd write and one wake-up, not one
    /// each.
    pub(crate) wake_pending: std::sync::atomic::AtomicBool,
    /// Wake-ups the control side sent (eventfd writes).
    pub(crate) wakeups: AtomicU64,
}

/// What the control side knows about the party sending to one side of a stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerSpec {
    /// SDP RTP address (may be 0.0.0.0 on hold).
    pub(crate) rtp: Option<SocketAddr>,
    /// SDP RTCP address (equal to `rtp` when muxed).
    pub(crate) rtcp: Option<SocketAddr>,
    /// The party sends and receives RTCP on its RTP port.
    pub(crate) mux: bool,
    pub(crate) policy: LatchPolicy,
}

/// Sockets of one stream as the control side bound them: `[side][component]`.
pub(crate) type StreamSockets = [[MediaSocket; 2]; 2];

/// Control → worker messages; a handful per call, never per packet.
pub(crate) enum Command {
    Add {
        id: u64,
        sockets: Box<StreamSockets>,
        peers: [PeerSpec; 2],
        shared: [Arc<SideShared>; 2],
    },
    Update {
        id: u64,
        side: usize,
        peer: PeerSpec,
    },
    /// A re-offer moved one party to another interface: its RTP and RTCP sockets are
    /// replaced, its latching and counters kept (the party is the same).
    Rebind {
        id: u64,
        side: usize,
        sockets: Box<[MediaSocket; 2]>,
    },
    Remove {
        id: u64,
    },
    /// Let go of the spare socket watched under `token`: it expired, or the control side
    /// moved it to another worker's epoll set for reuse there.
    Forget {
        token: u64,
    },
    /// The control side took the stream's kernel routes out (before an `Update`,
    /// `Rebind` or `Remove`), with what each party's route had forwarded.
    KernelTaken {
        id: u64,
        counts: [Option<Forwarded>; 2],
    },
    Shutdown,
}

/// One kind of traffic's counters, owned by the worker.
#[derive(Debug, Default, Clone, Copy)]
struct Count {
    packets: u64,
    bytes: u64,
    errors: u64,
    /// As `SharedCount::last_packet`.
    last_packet: u64,
}

#[derive(Debug, Default)]
struct Counters {
    /// By kind: `[RTP]`, `[RTCP]`.
    traffic: [Count; 2],
    reading: ReportReading,
}

/// What the last usable report block a party sent said about the other party's media.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct ReportReading {
    fraction_lost: Option<u8>,
    jitter: Option<u32>,
    rtt_us: Option<u64>,
}

/// The last few SRs a party sent through the relay: (NTP middle 32, relay time middle 32).
#[derive(Debug, Default)]
struct SrLog {
    entries: [(u32, u32); 8],
    next: usize,
}

impl SrLog {
    fn record(&mut self, ntp_mid: u32, local_mid: u32) {
        self.entries[self.next] = (ntp_mid, local_mid);
        self.next = (self.next + 1) % self.entries.len();
    }

    fn seen_at(&self, ntp_mid: u32) -> Option<u32> {
        self.entries
            .iter()
            .find(|(n, l)| *n == ntp_mid && *l != 0)
            .map(|(_, l)| *l)
    }
}

struct Sock {
    socket: Arc<std::net::UdpSocket>,
    /// Its epoll token, which stays its name while it is spare.
    token: u64,
    latch: LatchState,
    /// The socket's own IPv4 address, for kernel routes (IPv6 media stays in user space).
    local: Option<SocketAddrV4>,
    /// `V4` or `V6`: which receive headers the socket is read with.
    family: usize,
}

impl Sock {
    fn new(
        MediaSocket {
            socket,
            addr,
            token,
            ..
        }: MediaSocket,
    ) -> Sock {
        let (local, family) = match addr {
            SocketAddr::V4(a) => (Some(a), V4),
            SocketAddr::V6(_) => (None, V6),
        };
        Sock {
            socket,
            token,
            latch: LatchState::default(),
            local,
            family,
        }
    }
}

/// Indices of the receive headers by address family. nix's `recvmmsg` leaves each header's
/// address length as the kernel set it on the previous call, and the kernel truncates a
/// source address to that length: after an IPv4 packet (16 bytes) an IPv6 source (28) in
/// the same header would come back cut, a wrong address latched. Each family keeps headers
/// of its own, whose length never shrinks below its addresses.
const V4: usize = 0;
const V6: usize = 1;

/// A route this side's RTP has in the kernel, and the counts last folded from it.
#[derive(Clone, Copy)]
struct KernelRoute {
    route: Route,
    seen: Forwarded,
}

/// One party's half of a stream: the sockets it sends to and what it sent.
struct Side {
    socks: [Sock; 2],
    mux: bool,
    policy: LatchPolicy,
    counters: Counters,
    seq: SeqTracker,
    /// SSRCs of this party's RTP, for picking the other party's report block about it.
    ssrcs: SsrcHistory,
    srs: SrLog,
    shared: Arc<SideShared>,
    /// Set while the kernel relays this party's RTP.
    kernel: Option<KernelRoute>,
}

impl Side {
    /// Publishes the counters together with the kernel route's folded counts (see
    /// `SideShared::kernel`).
    fn publish_with_kernel(&self) {
        let mut route = self
            .shared
            .kernel
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *route = self.kernel.map(|k| (k.route.local, k.seen));
        self.publish();
    }

    fn publish(&self) {
        let c = &self.counters;
        let s = &self.shared;
        s.traffic[RTP].store(&c.traffic[RTP]);
        s.traffic[RTCP].store(&c.traffic[RTCP]);
        s.rtp_lost.store(self.seq.lost(), Ordering::Relaxed);
        s.ssrc.store(
            self.ssrcs.latest().map_or(NONE_U64, u64::from),
            Ordering::Relaxed,
        );
        let r = &c.reading;
        s.fraction_lost.store(
            r.fraction_lost.map_or(NONE_U32, u32::from),
            Ordering::Relaxed,
        );
        s.jitter
            .store(r.jitter.map_or(NONE_U64, u64::from), Ordering::Relaxed);
        s.rtt_us
            .store(r.rtt_us.unwrap_or(NONE_U64), Ordering::Relaxed);
    }

    /// Applies a signal about this party at `now_ms` (worker clock), opening a learning
    /// window of `window_ms`.
    fn apply(&mut self, peer: &PeerSpec, now_ms: u64, window_ms: u64) {
        self.mux = peer.mux;
        self.policy = peer.policy;
        let (rtp, rtcp) = (peer.rtp, peer.rtcp);
        for (comp, expected) in [(RTP, rtp), (RTCP, rtcp)] {
            let latch = &mut self.socks[comp].latch;
            let before = latch.latched;
            latch.signal(expected, &peer.policy, now_ms, window_ms);
            if latch.latched != before {
                self.shared.set_latched(comp, latch.latched);
            }
        }
    }
}

struct Stream {
    sides: [Side; 2],
}

#[derive(Clone, Copy)]
struct Meta {
    len: usize,
    source: Option<SocketAddr>,
    truncated: bool,
    /// `RTP` or `RTCP`, decided before the packet is accounted.
    kind: usize,
}

/// A worker thread's state; `run` is its body.
pub(crate) struct Worker {
    poll: Arc<Epoll>,
    waker: Arc<EventFd>,
    rx: Receiver<Command>,
    streams: Vec<Option<Stream>>,
    free_slots: Vec<usize>,
    by_id: HashMap<u64, usize, foldhash::fast::RandomState>,
    bufs: Vec<Vec<u8>>,
    meta: Vec<Meta>,
    /// By family of the socket read: `[V4]`, `[V6]`.
    recv_hdrs: [MultiHeaders<SockaddrStorage>; 2],
    send_hdrs: MultiHeaders<SockaddrStorage>,
    out: [Vec<(usize, SocketAddr)>; 2],
    totals: Arc<WorkerTotals>,
    tally: Tally,
    epoch: Instant,
    name: String,
    /// How long after a signal an unconfirmed source stays a candidate (ms).
    learning_window_ms: u64,
    /// The kernel fast path, when the relay runs with one.
    kernel: Option<KernelLink>,
    /// What each watched socket's token stands for.
    by_token: HashMap<u64, Watched, foldhash::fast::RandomState>,
    /// Whether sockets of removed streams stay bound as spares (see `put_away`).
    keep_spares: bool,
}

/// What a token in the worker's epoll set stands for.
enum Watched {
    /// A socket of the stream in `slot`, of party `side`, component `comp`.
    Stream {
        slot: usize,
        side: usize,
        comp: usize,
    },
    /// A spare: what arrives on it is read and dropped.
    Spare {
        socket: Arc<std::net::UdpSocket>,
        family: usize,
    },
}

/// What a worker relayed and dropped so far, published as its `WorkerTotals`.
#[derive(Debug, Default)]
struct Tally {
    relayed: u64,
    bytes: u64,
    /// Of `relayed`, what the kernel fast path relayed.
    kernel: u64,
    dropped: u64,
}

impl Tally {
    /// Adds (packets, bytes) the kernel relayed.
    fn add_kernel(&mut self, (packets, bytes): (u64, u64)) {
        self.relayed += packets;
        self.bytes += bytes;
        self.kernel += packets;
    }
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    // The flow label is per packet, not part of where the party is.
    addr.as_sockaddr_in6()
        .map(|a| SocketAddr::V6(SocketAddrV6::new(a.ip(), a.port(), 0, a.scope_id())))
}

/// A packet stamp: `elapsed` since the relay epoch in milliseconds, plus one so that 0 can
/// mean "never".
fn stamp(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1) + 1
}

fn split_pair<T>(pair: &mut [T; 2], first: usize) -> (&mut T, &mut T) {
    let [a, b] = pair;
    if first == 0 {
        (a, b)
    } else {
        (b, a)
    }
}

impl Worker {
    pub(crate) fn new(
        poll: Arc<Epoll>,
        waker: Arc<EventFd>,
        rx: Receiver<Command>,
        batch: usize,
        totals: Arc<WorkerTotals>,
        epoch: Instant,
        name: String,
    ) -> Self {
        let batch = batch.max(1);
        Worker {
            poll,
            waker,
            rx,
            streams: Vec::new(),
            free_slots: Vec::new(),
            by_id: HashMap::default(),
            bufs: (0..batch).map(|_| vec![0u8; BUF_SIZE]).collect(),
            meta: Vec::with_capacity(batch),
            recv_hdrs: [
                MultiHeaders::preallocate(batch, None),
                MultiHeaders::preallocate(batch, None),
            ],
            send_hdrs: MultiHeaders::preallocate(batch, None),
            out: [Vec::with_capacity(batch), Vec::with_capacity(batch)],
            totals,
            tally: Tally::default(),
            by_token: HashMap::default(),
            keep_spares: false,
            epoch,
            name,
            learning_window_ms: crate::latch::LEARNING_WINDOW_MS,
            kernel: None,
        }
    }

    /// Sets the endpoint-learning window.
    pub(crate) fn with_learning_window(mut self, ms: u64) -> Self {
        self.learning_window_ms = ms;
        self
    }

    /// Keeps sockets of removed streams bound and watched as spares instead of closing them.
    pub(crate) fn with_spares(mut self, keep: bool) -> Self {
        self.keep_spares = keep;
        self
    }

    /// The worker's clock: milliseconds since the relay epoch, plus one so that 0 can mean
    /// "never" in the published counters.
    fn now_ms(&self) -> u64 {
        stamp(self.epoch.elapsed())
    }

    /// Hands latched RTP to the kernel fast path.
    pub(crate) fn with_kernel(mut self, kernel: Option<Arc<KernelPath>>) -> Self {
        self.kernel = kernel.map(|path| KernelLink::new(path, self.epoch));
        self
    }

    /// Runs until a `Shutdown` command arrives or the control side goes away.
    pub(crate) fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            // With kernel routes, wake at least once per refresh to fold in their counts.
            let timeout = match self.kernel.as_ref().and_then(KernelLink::refresh_in) {
                Some(wait) => {
                    PollTimeout::from(u16::try_from(wait.as_millis().min(1000)).unwrap_or(1000))
                }
                None => PollTimeout::NONE,
            };
            let n = match self.poll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(worker = %self.name, error = %e, "media worker poll failed");
                    return;
                }
            };
            // Commands first: a destination programmed before a packet was sent must
            // be in place when that packet is read.
            if events[..n].iter().any(|e| e.data() == WAKER) {
                // Level-triggered: reset the eventfd or it keeps waking us.
                let _ = self.waker.read();
            }
            // Cleared before draining: a command sent after the drain's last look finds
            // the flag down and wakes us again.
            self.totals.wake_pending.store(false, Ordering::Release);
            if !self.drain_commands() {
                return;
            }
            for e in &events[..n] {
                let token = e.data();
                if token != WAKER {
                    self.service(token);
                }
            }
            if self
                .kernel
                .as_ref()
                .and_then(KernelLink::refresh_in)
                .is_some_and(|wait| wait.is_zero())
            {
                self.refresh_kernel();
            }
        }
    }

    /// Applies queued commands; false when the worker must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(cmd) => {
                    self.apply(cmd);
                    self.publish_totals();
                    self.totals.applied.fetch_add(1, Ordering::Release);
                }
                Err(TryRecvError::Empty) => return true,
            }
        }
    }

    fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::Add {
                id,
                sockets,
                peers,
                shared,
            } => self.add(id, *sockets, peers, shared),
            Command::Update { id, side, peer } => {
                let slot = self.by_id.get(&id).copied();
                let (now_ms, window_ms) = (self.now_ms(), self.learning_window_ms);
                if let Some(stream) = slot
                    .and_then(|s| self.streams.get_mut(s))
                    .and_then(Option::as_mut)
                {
                    if let Some(side) = stream.sides.get_mut(side) {
                        side.apply(&peer, now_ms, window_ms);
                    }
                }
                if let Some(slot) = slot {
                    self.sync_kernel(slot);
                }
            }
            Command::Rebind { id, side, sockets } => self.rebind(id, side, *sockets),
            Command::KernelTaken { id, counts } => self.kernel_taken(id, counts),
            Command::Remove { id } => {
                if let Some(slot) = self.by_id.remove(&id) {
                    self.retire_kernel(slot);
                    if let Some(stream) = self.streams.get_mut(slot).and_then(Option::take) {
                        for side in stream.sides {
                            for sock in side.socks {
                                self.put_away(sock);
                            }
                        }
                        self.free_slots.push(slot);
                    }
                }
            }
            Command::Forget { token } => {
                if matches!(self.by_token.get(&token), Some(Watched::Spare { .. })) {
                    self.by_token.remove(&token);
                }
            }
            Command::Shutdown => {}
        }
    }

    fn add(
        &mut self,
        id: u64,
        sockets: StreamSockets,
        peers: [PeerSpec; 2],
        shared: [Arc<SideShared>; 2],
    ) {
        let slot = self.free_slots.pop().unwrap_or(self.streams.len());
        let (now_ms, window_ms) = (self.now_ms(), self.learning_window_ms);
        let [[o_rtp, o_rtcp], [a_rtp, a_rtcp]] = sockets;
        let [o_shared, a_shared] = shared;
        // The control side watches the sockets in this worker's epoll once the command is
        // queued (or they are this worker's spares, watched already): nothing to do here.
        let make_side = |rtp: MediaSocket, rtcp: MediaSocket, side: usize, shared| {
            let mut s = Side {
                socks: [rtp, rtcp].map(Sock::new),
                mux: false,
                policy: LatchPolicy::default(),
                counters: Counters::default(),
                seq: SeqTracker::new(),
                ssrcs: SsrcHistory::default(),
                srs: SrLog::default(),
                shared,
                kernel: None,
            };
            s.apply(&peers[side], now_ms, window_ms);
            s
        };
        let o = make_side(o_rtp, o_rtcp, 0, o_shared);
        let a = make_side(a_rtp, a_rtcp, 1, a_shared);
        let stream = Stream { sides: [o, a] };
        for (side, s) in stream.sides.iter().enumerate() {
            for (comp, sock) in s.socks.iter().enumerate() {
                // A spare of this worker reused: its entry becomes the stream's.
                self.by_token
                    .insert(sock.token, Watched::Stream { slot, side, comp });
            }
        }
        if slot == self.streams.len() {
            self.streams.push(Some(stream));
        } else {
            self.streams[slot] = Some(stream);
        }
        self.by_id.insert(id, slot);
    }

    /// A socket its stream no longer uses. With spares kept it stays bound and in this
    /// worker's epoll set under its token, and what arrives on it is read and dropped, so
    /// ports sprayed by a stranger cost the kernel no buffered memory; the control side
    /// reuses it for the next call on its port rather than closing it and binding a new
    /// one (socket, bind and close are most of what anchoring a call costs), and on this
    /// worker that reuse costs no syscall at all. Without spares it is closed here.
    fn put_away(&mut self, sock: Sock) {
        if self.keep_spares {
            self.by_token.insert(
                sock.token,
                Watched::Spare {
                    socket: sock.socket,
                    family: sock.family,
                },
            );
        } else {
            self.by_token.remove(&sock.token);
            let _ = self.poll.delete(&*sock.socket);
        }
    }

    fn rebind(&mut self, id: u64, side: usize, sockets: [MediaSocket; 2]) {
        let Some(&slot) = self.by_id.get(&id) else {
            return;
        };
        // The routes name the old sockets' addresses; new ones follow from the next sync.
        self.retire_kernel(slot);
        let Some(s) = self
            .streams
            .get_mut(slot)
            .and_then(Option::as_mut)
            .and_then(|st| st.sides.get_mut(side))
        else {
            return;
        };
        // The control side watches the new sockets (as for a new stream); the old ones
        // are put away.
        let mut old_socks = Vec::with_capacity(2);
        for (comp, (sock, new)) in s.socks.iter_mut().zip(sockets).enumerate() {
            self.by_token
                .insert(new.token, Watched::Stream { slot, side, comp });
            old_socks.push(std::mem::replace(
                sock,
                Sock {
                    latch: sock.latch,
                    ..Sock::new(new)
                },
            ));
        }
        for old in old_socks {
            self.put_away(old);
        }
        self.sync_kernel(slot);
    }

    fn publish_totals(&self) {
        let (t, n) = (&self.totals, &self.tally);
        t.relayed.store(n.relayed, Ordering::Relaxed);
        t.bytes.store(n.bytes, Ordering::Relaxed);
        t.kernel.store(n.kernel, Ordering::Relaxed);
        t.dropped.store(n.dropped, Ordering::Relaxed);
    }

    /// Reads and forwards from one socket; true if it may still have data (come back).
    fn service(&mut self, token: u64) -> bool {
        for _ in 0..ROUNDS_PER_WAKE {
            if !self.round(token) {
                return false;
            }
        }
        true
    }

    /// One recvmmsg/sendmmsg round; false when the socket is drained (EAGAIN) or gone.
    fn round(&mut self, token: u64) -> bool {
        // A token let go of since the wait returned (moved to another worker, closed)
        // is not in `by_token`: nothing to read for it.
        let (fd, family, target) = match self.by_token.get(&token) {
            Some(&Watched::Stream { slot, side, comp }) => {
                let Some(Some(stream)) = self.streams.get(slot) else {
                    return false;
                };
                let sock = &stream.sides[side].socks[comp];
                (
                    sock.socket.as_raw_fd(),
                    sock.family,
                    Some((slot, side, comp)),
                )
            }
            Some(Watched::Spare { socket, family }) => (socket.as_raw_fd(), *family, None),
            None => return false,
        };

        // Receive.
        self.meta.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = self
                .bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(&mut b[..])])
                .collect();
            let res = recvmmsg(
                fd,
                &mut self.recv_hdrs[family],
                iovs.iter_mut(),
                MsgFlags::MSG_DONTWAIT,
                None,
            );
            match res {
                Ok(msgs) => {
                    for m in msgs {
                        self.meta.push(Meta {
                            len: m.bytes,
                            source: m.address.as_ref().and_then(to_std),
                            truncated: m.flags.contains(MsgFlags::MSG_TRUNC),
                            kind: RTP,
                        });
                    }
                }
                Err(Errno::EAGAIN) => return false,
                // Interrupted before anything arrived: come back to this socket.
                Err(Errno::EINTR) => return true,
                Err(e) => {
                    // ICMP errors queued on the socket and the like: nothing to relay.
                    tracing::debug!(worker = %self.name, error = %e, "recvmmsg failed");
                    return false;
                }
            }
        }
        if self.meta.is_empty() {
            return false;
        }
        let Some((slot, side_idx, comp)) = target else {
            // A spare's: late packets of its last call, or a stranger's. Dropped.
            self.tally.dropped += self.meta.len() as u64;
            self.publish_totals();
            return true;
        };
        let Some(Some(stream)) = self.streams.get_mut(slot) else {
            return false;
        };

        // Decide, account and route.
        let elapsed = self.epoch.elapsed();
        let now_ms = stamp(elapsed);
        // +1 s so the relay's own "NTP" clock never reads 0 (0 means "no SR" in LSR).
        let now_mid = ntp_middle_from(elapsed + Duration::from_secs(1));
        let (side, other) = split_pair(&mut stream.sides, side_idx);
        self.out[0].clear();
        self.out[1].clear();
        let mut dropped = 0;
        for (i, m) in self.meta.iter_mut().enumerate() {
            let Some(source) = m.source else {
                dropped += 1;
                continue;
            };
            let buf = &self.bufs[i];
            let packet = buf.get(..m.len).unwrap_or(buf);
            let kind = if comp == RTCP || looks_like_rtcp(packet) {
                RTCP
            } else {
                RTP
            };
            m.kind = kind;
            let count = &mut side.counters.traffic[kind];
            if m.truncated {
                count.errors += 1;
                dropped += 1;
                continue;
            }
            let latch = &mut side.socks[comp].latch;
            let before = latch.latched;
            let verdict = latch.on_packet(&side.policy, source, now_ms);
            if latch.latched != before {
                tracing::debug!(worker = %self.name, from = ?before, to = ?latch.latched,
                    "media source latched");
                side.shared.set_latched(comp, latch.latched);
            }
            if let Verdict::Drop(reason) = verdict {
                tracing::trace!(worker = %self.name, %source, ?reason, "media packet dropped");
                count.errors += 1;
                dropped += 1;
                continue;
            }
            count.packets += 1;
            count.bytes += m.len as u64;
            count.last_packet = now_ms;
            if kind == RTCP {
                if let Some(reading) = read_reports(
                    packet,
                    now_mid,
                    &mut side.srs,
                    &other.srs,
                    other.ssrcs.newest_first(),
                ) {
                    side.counters.reading = reading;
                }
            } else if let Ok(h) = parse_header(packet) {
                side.seq.update(h.ssrc, h.sequence);
                side.ssrcs.note(h.ssrc);
            }
            let out_comp = if kind == RTCP && !other.mux {
                RTCP
            } else {
                RTP
            };
            match other.socks[out_comp].latch.destination() {
                Some(dest) => self.out[out_comp].push((i, dest)),
                None => {
                    side.counters.traffic[kind].errors += 1;
                    dropped += 1;
                }
            }
        }

        // A packet that (re)latched a party changes the kernel's routes of both
        // directions: update them before it is sent on, so the reply it may prompt
        // already takes the new route.
        if self.kernel.is_some() {
            self.sync_kernel(slot);
        }
        let Some(Some(stream)) = self.streams.get_mut(slot) else {
            return false;
        };
        let (side, other) = split_pair(&mut stream.sides, side_idx);

        // Send.
        for out_comp in [RTP, RTCP] {
            if self.out[out_comp].is_empty() {
                continue;
            }
            let fd = other.socks[out_comp].socket.as_raw_fd();
            let (sent, bytes, failed) = send_all(
                fd,
                &mut self.send_hdrs,
                &self.bufs,
                &self.meta,
                &self.out[out_comp],
            );
            self.tally.relayed += sent;
            self.tally.bytes += bytes;
            for kind in [RTP, RTCP] {
                side.counters.traffic[kind].errors += failed[kind];
                dropped += failed[kind];
            }
        }
        self.tally.dropped += dropped;

        side.publish();
        self.publish_totals();
        let full = self.meta.len() >= self.bufs.len();
        // Level-triggered readiness: come back at once only after a full batch; a
        // socket with anything left is reported by the next epoll_wait anyway. A typical
        // RTP socket (a packet per 20 ms) thus costs one recvmmsg per packet, not a
        // second one that only returns EAGAIN.
        full
    }
}

/// Reads an RTCP packet `side` sent: its SRs are logged (against `now`) for later RTT,
/// and the report block about the other party's media — the one naming a source the
/// other party sent (`other_sources`, newest first), else the first — gives loss, jitter
/// and, against the other party's logged SRs, the round trip to `side`. `None` when the
/// packet is malformed or carries no block. Allocation-free: it runs per RTCP packet.
fn read_reports(
    packet: &[u8],
    now_mid: u32,
    srs: &mut SrLog,
    other_srs: &SrLog,
    other_sources: &[u32],
) -> Option<ReportReading> {
    let compound = validate_compound(packet, false).ok()?;
    for report in compound.reports() {
        if let Some(sender) = report.sender {
            srs.record(sender.ntp_middle(), now_mid);
        }
    }
    let block = pick_block(compound.reports().flat_map(|r| r.blocks()), other_sources)?;
    let rtt_us = other_srs
        .seen_at(block.lsr)
        .and_then(|seen| rtt_ms(now_mid, seen, block.dlsr))
        .map(|rtt| (rtt * 1000.0) as u64);
    Some(ReportReading {
        fraction_lost: Some(block.fraction_lost),
        jitter: Some(block.jitter),
        rtt_us,
    })
}

/// Sends `group` (buffer index, destination) with as few `sendmmsg` calls as the kernel
/// allows. A datagram the kernel refuses is skipped and counted; a full send buffer
/// drops the rest of the batch (RTP is better late-never than late).
/// Returns (sent, bytes sent, failed by kind).
fn send_all(
    fd: std::os::fd::RawFd,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &[Vec<u8>],
    meta: &[Meta],
    group: &[(usize, SocketAddr)],
) -> (u64, u64, [u64; 2]) {
    let (mut sent, mut bytes, mut failed) = (0u64, 0u64, [0u64; 2]);
    let mut fail = |i: usize| {
        if let Some(f) = meta.get(i).and_then(|m| failed.get_mut(m.kind)) {
            *f += 1;
        }
    };
    let mut start = 0;
    let mut attempts = 0;
    while start < group.len() && attempts < group.len() + 4 {
        attempts += 1;
        let rest = &group[start..];
        let iovs: Vec<[IoSlice<'_>; 1]> = rest
            .iter()
            .map(|(i, _)| [IoSlice::new(&bufs[*i][..meta[*i].len])])
            .collect();
        let addrs: Vec<Option<SockaddrStorage>> = rest
            .iter()
            .map(|(_, d)| Some(SockaddrStorage::from(*d)))
            .collect();
        let cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(fd, hdrs, &iovs, &addrs, cmsgs, MsgFlags::MSG_DONTWAIT) {
            Ok(res) => {
                let n = res.count();
                if n == 0 {
                    break;
                }
                for (i, _) in &rest[..n] {
                    bytes += meta[*i].len as u64;
                }
                sent += n as u64;
                start += n;
            }
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => break,
            Err(e) => {
                tracing::debug!(error = %e, dest = %rest[0].1, "media send failed");
                fail(rest[0].0);
                start += 1;
            }
        }
    }
    // Whatever is left (send buffer full, or the kernel stopped taking) is dropped.
    for (i, _) in &group[start..] {
        fail(*i);
    }
    (sent, bytes, failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An RR from `ssrc` with one block per (source, fraction lost, jitter, lsr, dlsr).
    fn rr(ssrc: u32, blocks: &[(u32, u8, u32, u32, u32)]) -> Vec<u8> {
        let mut p = vec![0x80 | blocks.len() as u8, 201];
        p.extend_from_slice(&((1 + 6 * blocks.len()) as u16).to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for &(source, fraction, jitter, lsr, dlsr) in blocks {
            p.extend_from_slice(&source.to_be_bytes());
            p.extend_from_slice(&(u32::from(fraction) << 24).to_be_bytes());
            for v in [0, jitter, lsr, dlsr] {
                p.extend_from_slice(&v.to_be_bytes());
            }
        }
        p
    }

    #[test]
    fn reads_the_block_about_the_other_partys_current_source() {
        let mut other = SsrcHistory::default();
        for ssrc in [0xaaaa, 0xbbbb] {
            other.note(ssrc);
        }
        let (mut srs, mut other_srs) = (SrLog::default(), SrLog::default());
        // The other party's SR passed through at relay time 1.0 s with NTP middle 0x5000.
        other_srs.record(0x5000, 0x0001_0000);
        // A mixer-side block first, then the old source, then the current one.
        let p = rr(
            7,
            &[
                (0x1234, 1, 10, 0, 0),
                (0xaaaa, 2, 20, 0, 0),
                (0xbbbb, 3, 30, 0x5000, 0x0000_4000),
            ],
        );
        // Arrives at 1.5 s, held 0.25 s by the reporter: RTT 250 ms.
        let r = read_reports(&p, 0x0001_8000, &mut srs, &other_srs, other.newest_first());
        assert_eq!(
            r,
            Some(ReportReading {
                fraction_lost: Some(3),
                jitter: Some(30),
                rtt_us: Some(250_000),
            })
        );
        // Only the old source reported on: that block.
        let p = rr(7, &[(0x1234, 1, 10, 0, 0), (0xaaaa, 2, 20, 0, 0)]);
        let r = read_reports(&p, 0, &mut srs, &other_srs, other.newest_first());
        assert_eq!(r.and_then(|r| r.fraction_lost), Some(2));
    }

    #[test]
    fn falls_back_to_the_first_block_and_logs_srs() {
        let (mut srs, other_srs) = (SrLog::default(), SrLog::default());
        let p = rr(7, &[(0x1234, 1, 10, 0, 0), (0x5678, 2, 20, 0, 0)]);
        // Before any RTP from the other party: nothing to match, first block.
        let r = read_reports(&p, 0, &mut srs, &other_srs, &[]);
        assert_eq!(r.and_then(|r| r.fraction_lost), Some(1));
        assert_eq!(r.and_then(|r| r.rtt_us), None);
        // An SR with no blocks is logged for later RTT but gives no reading.
        let mut sr = vec![0x80, 200, 0, 6];
        sr.extend_from_slice(&7u32.to_be_bytes());
        sr.extend_from_slice(&0x0000_1234_5678_0000u64.to_be_bytes());
        sr.extend_from_slice(&[0; 12]);
        assert_eq!(
            read_reports(&sr, 0x0002_0000, &mut srs, &other_srs, &[]),
            None
        );
        assert_eq!(srs.seen_at(0x1234_5678), Some(0x0002_0000));
        // Malformed: nothing read, nothing logged.
        assert_eq!(read_reports(&sr[..10], 0, &mut srs, &other_srs, &[]), None);
    }
}

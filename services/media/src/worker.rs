//! The forwarding plane: one thread per core, each with its own level-triggered epoll over the
//! sockets of the streams assigned to it. Both parties' sockets of a stream live on one
//! worker, so a forward never crosses threads and the per-packet path takes no lock.
//!
//! Per readiness event a worker reads up to `batch` datagrams with `recvmmsg`, decides
//! each against the latching policy, updates counters it owns, and sends the accepted
//! ones with `sendmmsg` out of the other party's socket. Counters are published to the
//! control side with relaxed atomic stores once per batch.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::PollTimeout;
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};
use nix::sys::eventfd::EventFd;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

use crate::latch::{decide, LatchPolicy, LatchState, Verdict};
use crate::rtcp::{ntp_middle_from, parse_compound, rtt_ms};
use crate::rtp::{looks_like_rtcp, parse_header, SeqTracker};
use crate::StreamStats;

/// Token of the control waker; stream tokens are `slot * 4 + side * 2 + component`.
pub(crate) const WAKER: u64 = u64::MAX;
/// Largest datagram relayed; longer ones are truncated by the kernel and dropped.
const BUF_SIZE: usize = 8192;
/// Batches read from one socket per wake-up before the others get a turn.
const ROUNDS_PER_WAKE: usize = 8;
/// Component index of RTP and RTCP sockets.
pub(crate) const RTP: usize = 0;
pub(crate) const RTCP: usize = 1;
const NONE_U32: u32 = u32::MAX;
const NONE_U64: u64 = u64::MAX;

/// One party's counters, written by its worker once per batch and read by the control side.
#[derive(Debug)]
pub(crate) struct SideShared {
    packets: AtomicU64,
    bytes: AtomicU64,
    errors: AtomicU64,
    rtp_lost: AtomicU64,
    /// Milliseconds since the relay epoch plus one; 0 means never.
    last_packet: AtomicU64,
    fraction_lost: AtomicU32,
    jitter: AtomicU64,
    rtt_us: AtomicU64,
    /// Written only when the RTP source (re)latches: rare, never per packet.
    latched: Mutex<Option<SocketAddr>>,
}

impl Default for SideShared {
    fn default() -> Self {
        SideShared {
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            rtp_lost: AtomicU64::new(0),
            last_packet: AtomicU64::new(0),
            fraction_lost: AtomicU32::new(NONE_U32),
            jitter: AtomicU64::new(NONE_U64),
            rtt_us: AtomicU64::new(NONE_U64),
            latched: Mutex::new(None),
        }
    }
}

impl SideShared {
    /// Milliseconds since the epoch of the last accepted packet, if any.
    pub(crate) fn last_packet_ms(&self) -> Option<u64> {
        match self.last_packet.load(Ordering::Relaxed) {
            0 => None,
            v => Some(v - 1),
        }
    }

    /// A consistent-enough copy for stats (fields are read one by one).
    pub(crate) fn snapshot(&self, now_ms: u64, local_port: u16) -> StreamStats {
        let fraction = self.fraction_lost.load(Ordering::Relaxed);
        let jitter = self.jitter.load(Ordering::Relaxed);
        let rtt = self.rtt_us.load(Ordering::Relaxed);
        StreamStats {
            packets: self.packets.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            rtp_lost: self.rtp_lost.load(Ordering::Relaxed),
            rtcp_fraction_lost: u8::try_from(fraction).ok(),
            rtcp_jitter: u32::try_from(jitter).ok(),
            rtt_ms: (rtt != NONE_U64).then(|| rtt as f64 / 1000.0),
            last_packet_ms_ago: self.last_packet_ms().map(|t| now_ms.saturating_sub(t)),
            latched: *self.latched.lock().unwrap_or_else(PoisonError::into_inner),
            local_port,
        }
    }

    fn set_latched(&self, addr: Option<SocketAddr>) {
        *self.latched.lock().unwrap_or_else(PoisonError::into_inner) = addr;
    }
}

/// Relay-wide counters of one worker.
#[derive(Debug, Default)]
pub(crate) struct WorkerTotals {
    pub(crate) relayed: AtomicU64,
    pub(crate) bytes: AtomicU64,
    pub(crate) dropped: AtomicU64,
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
pub(crate) type StreamSockets = [[std::net::UdpSocket; 2]; 2];

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
    Remove {
        id: u64,
    },
    Shutdown,
}

#[derive(Debug, Default)]
struct Counters {
    packets: u64,
    bytes: u64,
    errors: u64,
    fraction_lost: Option<u8>,
    jitter: Option<u32>,
    rtt_us: Option<u64>,
    last_packet: u64,
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
    socket: std::net::UdpSocket,
    latch: LatchState,
}

/// One party's half of a stream: the sockets it sends to and what it sent.
struct Side {
    socks: [Sock; 2],
    mux: bool,
    policy: LatchPolicy,
    counters: Counters,
    seq: SeqTracker,
    srs: SrLog,
    shared: Arc<SideShared>,
}

impl Side {
    fn publish(&self) {
        let c = &self.counters;
        let s = &self.shared;
        s.packets.store(c.packets, Ordering::Relaxed);
        s.bytes.store(c.bytes, Ordering::Relaxed);
        s.errors.store(c.errors, Ordering::Relaxed);
        s.rtp_lost.store(self.seq.lost(), Ordering::Relaxed);
        s.last_packet.store(c.last_packet, Ordering::Relaxed);
        s.fraction_lost.store(
            c.fraction_lost.map_or(NONE_U32, u32::from),
            Ordering::Relaxed,
        );
        s.jitter
            .store(c.jitter.map_or(NONE_U64, u64::from), Ordering::Relaxed);
        s.rtt_us
            .store(c.rtt_us.unwrap_or(NONE_U64), Ordering::Relaxed);
    }

    fn apply(&mut self, peer: &PeerSpec) {
        self.mux = peer.mux;
        self.policy = peer.policy;
        let before = self.socks[RTP].latch.latched;
        self.socks[RTP].latch.readvertise(peer.rtp, &peer.policy);
        self.socks[RTCP].latch.readvertise(peer.rtcp, &peer.policy);
        if self.socks[RTP].latch.latched != before {
            self.shared.set_latched(self.socks[RTP].latch.latched);
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
}

/// A worker thread's state; `run` is its body.
pub(crate) struct Worker {
    poll: Epoll,
    waker: Arc<EventFd>,
    rx: Receiver<Command>,
    streams: Vec<Option<Stream>>,
    free_slots: Vec<usize>,
    by_id: HashMap<u64, usize>,
    bufs: Vec<Vec<u8>>,
    meta: Vec<Meta>,
    recv_hdrs: MultiHeaders<SockaddrStorage>,
    send_hdrs: MultiHeaders<SockaddrStorage>,
    out: [Vec<(usize, SocketAddr)>; 2],
    totals: Arc<WorkerTotals>,
    relayed: u64,
    relayed_bytes: u64,
    dropped: u64,
    epoch: Instant,
    name: String,
}

fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(a) = addr.as_sockaddr_in() {
        return Some(SocketAddr::V4(SocketAddrV4::from(*a)));
    }
    addr.as_sockaddr_in6()
        .map(|a| SocketAddr::V6(SocketAddrV6::from(*a)))
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
        poll: Epoll,
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
            by_id: HashMap::new(),
            bufs: (0..batch).map(|_| vec![0u8; BUF_SIZE]).collect(),
            meta: Vec::with_capacity(batch),
            recv_hdrs: MultiHeaders::preallocate(batch, None),
            send_hdrs: MultiHeaders::preallocate(batch, None),
            out: [Vec::with_capacity(batch), Vec::with_capacity(batch)],
            totals,
            relayed: 0,
            relayed_bytes: 0,
            dropped: 0,
            epoch,
            name,
        }
    }

    /// Runs until a `Shutdown` command arrives or the control side goes away.
    pub(crate) fn run(mut self) {
        let mut events = vec![EpollEvent::empty(); 256];
        loop {
            let n = match self.poll.wait(&mut events, PollTimeout::NONE) {
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
            if !self.drain_commands() {
                return;
            }
            for e in &events[..n] {
                let token = e.data();
                if token != WAKER {
                    self.service(token);
                }
            }
        }
    }

    /// Applies queued commands; false when the worker must stop.
    fn drain_commands(&mut self) -> bool {
        loop {
            match self.rx.try_recv() {
                Ok(Command::Shutdown) | Err(TryRecvError::Disconnected) => return false,
                Ok(cmd) => self.apply(cmd),
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
                if let Some(stream) = slot
                    .and_then(|s| self.streams.get_mut(s))
                    .and_then(Option::as_mut)
                {
                    if let Some(side) = stream.sides.get_mut(side) {
                        side.apply(&peer);
                    }
                }
            }
            Command::Remove { id } => {
                if let Some(slot) = self.by_id.remove(&id) {
                    if let Some(mut stream) = self.streams.get_mut(slot).and_then(Option::take) {
                        for side in &mut stream.sides {
                            for sock in &mut side.socks {
                                // Closing the socket removes it from epoll anyway.
                                let _ = self.poll.delete(&sock.socket);
                            }
                        }
                        self.free_slots.push(slot);
                    }
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
        let [[o_rtp, o_rtcp], [a_rtp, a_rtcp]] = sockets;
        let [o_shared, a_shared] = shared;
        let make_side = |rtp: std::net::UdpSocket,
                         rtcp: std::net::UdpSocket,
                         side: usize,
                         shared: Arc<SideShared>| {
            let socks = [rtp, rtcp].map(|s| Sock {
                socket: s,
                latch: LatchState::default(),
            });
            for (comp, sock) in socks.iter().enumerate() {
                let token = (slot * 4 + side * 2 + comp) as u64;
                // Level-triggered: a socket left with data after a full batch is simply
                // reported again, so no read is spent on EAGAIN (see `round`).
                if let Err(e) = self
                    .poll
                    .add(&sock.socket, EpollEvent::new(EpollFlags::EPOLLIN, token))
                {
                    tracing::error!(worker = %self.name, error = %e, "cannot watch a media socket");
                }
            }
            let mut s = Side {
                socks,
                mux: false,
                policy: LatchPolicy::default(),
                counters: Counters::default(),
                seq: SeqTracker::new(),
                srs: SrLog::default(),
                shared,
            };
            s.apply(&peers[side]);
            s
        };
        let o = make_side(o_rtp, o_rtcp, 0, o_shared);
        let a = make_side(a_rtp, a_rtcp, 1, a_shared);
        let stream = Stream { sides: [o, a] };
        if slot == self.streams.len() {
            self.streams.push(Some(stream));
        } else {
            self.streams[slot] = Some(stream);
        }
        self.by_id.insert(id, slot);
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
        let token = usize::try_from(token).unwrap_or(usize::MAX);
        let slot = token / 4;
        let side_idx = (token / 2) % 2;
        let comp = token % 2;
        let Some(Some(stream)) = self.streams.get_mut(slot) else {
            return false;
        };
        let fd = stream.sides[side_idx].socks[comp].socket.as_raw_fd();

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
                &mut self.recv_hdrs,
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

        // Decide, account and route.
        let elapsed = self.epoch.elapsed();
        let now_ms = u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1) + 1;
        // +1 s so the relay's own "NTP" clock never reads 0 (0 means "no SR" in LSR).
        let now_mid = ntp_middle_from(elapsed + Duration::from_secs(1));
        let (side, other) = split_pair(&mut stream.sides, side_idx);
        self.out[0].clear();
        self.out[1].clear();
        let mut dropped = 0;
        for (i, m) in self.meta.iter().enumerate() {
            let Some(source) = m.source else {
                dropped += 1;
                continue;
            };
            if m.truncated {
                side.counters.errors += 1;
                dropped += 1;
                continue;
            }
            match decide(&side.socks[comp].latch, &side.policy, source) {
                Verdict::Drop(reason) => {
                    tracing::trace!(worker = %self.name, %source, ?reason, "media packet dropped");
                    side.counters.errors += 1;
                    dropped += 1;
                    continue;
                }
                Verdict::Accept { latch: Some(addr) } => {
                    side.socks[comp].latch.latched = Some(addr);
                    if comp == RTP {
                        side.shared.set_latched(Some(addr));
                    }
                }
                Verdict::Accept { latch: None } => {}
            }
            let packet = &self.bufs[i][..m.len];
            side.counters.packets += 1;
            side.counters.bytes += m.len as u64;
            side.counters.last_packet = now_ms;
            let is_rtcp = comp == RTCP || looks_like_rtcp(packet);
            if is_rtcp {
                inspect_rtcp(side, other, packet, now_mid);
            } else if let Ok(h) = parse_header(packet) {
                side.seq.update(h.ssrc, h.sequence);
            }
            let out_comp = if is_rtcp && !other.mux { RTCP } else { RTP };
            match other.socks[out_comp].latch.destination() {
                Some(dest) => self.out[out_comp].push((i, dest)),
                None => {
                    side.counters.errors += 1;
                    dropped += 1;
                }
            }
        }

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
            self.relayed += sent;
            self.relayed_bytes += bytes;
            side.counters.errors += failed;
            dropped += failed;
        }
        self.dropped += dropped;

        side.publish();
        self.totals.relayed.store(self.relayed, Ordering::Relaxed);
        self.totals
            .bytes
            .store(self.relayed_bytes, Ordering::Relaxed);
        self.totals.dropped.store(self.dropped, Ordering::Relaxed);
        // Level-triggered readiness: come back at once only after a full batch; a
        // socket with anything left is reported by the next epoll_wait anyway. A typical
        // RTP socket (a packet per 20 ms) thus costs one recvmmsg per packet, not a
        // second one that only returns EAGAIN.
        self.meta.len() >= self.bufs.len()
    }
}

/// Reads reports for stats: SRs are logged for later RTT, report blocks give loss,
/// jitter and (against the other party's logged SRs) the round trip to this party.
fn inspect_rtcp(side: &mut Side, other: &Side, packet: &[u8], now_mid: u32) {
    let Ok(compound) = parse_compound(packet, false) else {
        return;
    };
    for report in &compound.reports {
        if let Some(sender) = report.sender {
            side.srs.record(sender.ntp_middle(), now_mid);
        }
        if let Some(block) = report.blocks.first() {
            side.counters.fraction_lost = Some(block.fraction_lost);
            side.counters.jitter = Some(block.jitter);
            if let Some(seen) = other.srs.seen_at(block.lsr) {
                if let Some(rtt) = rtt_ms(now_mid, seen, block.dlsr) {
                    side.counters.rtt_us = Some((rtt * 1000.0) as u64);
                }
            }
        }
    }
}

/// Sends `group` (buffer index, destination) with as few `sendmmsg` calls as the kernel
/// allows. A datagram the kernel refuses is skipped and counted; a full send buffer
/// drops the rest of the batch (RTP is better late-never than late).
/// Returns (sent, bytes sent, failed).
fn send_all(
    fd: std::os::fd::RawFd,
    hdrs: &mut MultiHeaders<SockaddrStorage>,
    bufs: &[Vec<u8>],
    meta: &[Meta],
    group: &[(usize, SocketAddr)],
) -> (u64, u64, u64) {
    let (mut sent, mut bytes, mut failed) = (0u64, 0u64, 0u64);
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
                failed += 1;
                start += 1;
            }
        }
    }
    // Whatever is left (send buffer full, or the kernel stopped taking) is dropped.
    failed += (group.len() - start) as u64;
    (sent, bytes, failed)
}

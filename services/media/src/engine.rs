//! The control side: sessions, port allocation, SDP glue and programming the workers.
//!
//! All control state sits behind one mutex, taken per offer/answer/delete/query —
//! signalling rate, not packet rate. The forwarding plane never takes it.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use trunkline_sdp::{AnchorOptions, MediaInfo, MediaPlan};

use crate::interfaces::Interfaces;
use crate::kernel::KernelPath;
use crate::latch::LatchPolicy;
use crate::metrics::Metrics;
use crate::ports::PortAllocator;
use crate::worker::{Command, PeerSpec, SideShared, StreamSockets, Worker, WorkerTotals, WAKER};
use crate::{
    AddressFamily, CallStats, Flags, MediaConfig, MediaError, StreamPairStats, StreamStats,
    TimedOut, Totals,
};

/// Side 0 is the pair the original offerer sends to, side 1 the answerer's.
const OFFERER: usize = 0;
const ANSWERER: usize = 1;
/// How often the metrics are refreshed from the totals.
const METRICS_PERIOD: Duration = Duration::from_secs(1);

/// Handle to the relay engine; cheap to clone (an `Arc` inside), shareable across threads.
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

struct WorkerHandle {
    tx: Sender<Command>,
    waker: Arc<nix::sys::eventfd::EventFd>,
    totals: Arc<WorkerTotals>,
    join: Mutex<Option<JoinHandle<()>>>,
}

impl WorkerHandle {
    fn send(&self, cmd: Command) {
        // A failed send means the worker is gone (shut down); nothing left to program.
        if self.tx.send(cmd).is_ok() {
            // EAGAIN means the counter is already non-zero: the worker is awake.
            match self.waker.write(1) {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => tracing::error!(error = %e, "cannot wake media worker"),
            }
        }
    }
}

struct Inner {
    config: MediaConfig,
    /// `config.interfaces`, checked; fixed for the relay's life, so indices into it stay valid.
    interfaces: Interfaces,
    epoch: Instant,
    /// The kernel fast path, when asked for and allowed by the kernel; stats read it
    /// directly so they are never a refresh behind.
    kernel: Option<Arc<KernelPath>>,
    /// CLOCK_MONOTONIC at `epoch`, to place the kernel's packet times.
    epoch_mono: Duration,
    state: Mutex<State>,
    workers: Vec<WorkerHandle>,
    metrics: Option<Arc<Metrics>>,
    housekeeping: Mutex<Option<Sender<()>>>,
    stopped: AtomicBool,
}

struct State {
    sessions: HashMap<String, Session>,
    /// One port range for every interface: a port number belongs to one socket pair at a
    /// time whatever address it is bound on, so interfaces never collide — not even two
    /// names on one address, or a wildcard next to a specific address. (rtpengine keeps a
    /// pool per address; sharing one only matters when the range itself is the limit.)
    ports: PortAllocator,
    next_worker: usize,
    next_stream: u64,
    sessions_total: u64,
    timeouts_total: u64,
}

struct Session {
    created: Instant,
    last_signal: Instant,
    offerer_tag: String,
    answerer_tag: Option<String>,
    worker: usize,
    /// Logical interface of each party (`[OFFERER]`, `[ANSWERER]`) once an offer gave it
    /// one: later offers without `direction` keep it (rtpengine remembers it per party).
    iface: [Option<usize>; 2],
    streams: BTreeMap<usize, StreamCtl>,
    /// The activity time (ms since epoch) the last timeout report was for.
    reported_idle_from: Option<u64>,
}

impl Session {
    /// Which party a request's `from-tag` names: offer and answer both identify the sender
    /// by it, whichever side sent the first offer.
    fn party(&self, tag: &str) -> Option<usize> {
        if self.offerer_tag == tag {
            Some(OFFERER)
        } else if self.answerer_tag.as_deref() == Some(tag) {
            Some(ANSWERER)
        } else {
            None
        }
    }
}

struct StreamCtl {
    id: u64,
    kind: String,
    proto: String,
    sides: [SideCtl; 2],
}

struct SideCtl {
    port: u16,
    /// The interface entry `port` is bound on.
    iface: usize,
    peer: PeerSpec,
    shared: Arc<SideShared>,
}

/// The parsed body, its media sections, the time of the request and the held state lock.
type Begun<'a> = (
    trunkline_sdp::Sdp,
    Vec<MediaInfo>,
    Instant,
    MutexGuard<'a, State>,
);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Reads one party's addresses and policy from its m-line and the request flags.
fn peer_spec(m: &MediaInfo, flags: &Flags) -> PeerSpec {
    let source_ip = if flags.trust_address || m.hold_zero_address {
        None
    } else {
        flags.received_from.map(|a| a.ip())
    };
    let ip = source_ip.or(m.connection);
    let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
    let rtcp = if m.rtcp_mux {
        rtp
    } else {
        match m.rtcp {
            Some((port, addr)) => source_ip
                .or(addr)
                .or(ip)
                .map(|ip| SocketAddr::new(ip, port)),
            None => ip.and_then(|ip| Some(SocketAddr::new(ip, m.port.checked_add(1)?))),
        }
    };
    PeerSpec {
        rtp,
        rtcp,
        mux: m.rtcp_mux,
        policy: LatchPolicy {
            asymmetric: flags.asymmetric && !flags.symmetric,
            strict_source: flags.strict_source,
            media_handover: flags.media_handover,
            port_latching: flags.port_latching,
        },
    }
}

fn anchor_options(flags: &Flags) -> AnchorOptions {
    AnchorOptions {
        keep_ice: flags.keep_ice,
        replace_origin: flags.replace_origin,
        replace_session_connection: flags.replace_session_connection,
        add_rtcp_attribute: true,
    }
}

impl Relay {
    /// Spawns the worker threads (and, with a registry, a thread refreshing metrics);
    /// binds nothing until calls need ports.
    pub fn start(
        config: MediaConfig,
        registry: Option<&mut Registry>,
    ) -> Result<Relay, MediaError> {
        if config.port_min > config.port_max {
            return Err(MediaError::Config(format!(
                "port_min {} is above port_max {}",
                config.port_min, config.port_max
            )));
        }
        let interfaces = Interfaces::new(config.interfaces.clone())?;
        let epoch = Instant::now();
        let n = if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.workers
        };
        let kernel = if config.kernel_forwarding {
            let binds: Vec<IpAddr> = config.interfaces.iter().map(|i| i.bind).collect();
            match KernelPath::open(&binds) {
                Ok(k) => {
                    tracing::info!(?k, "kernel forwarding enabled");
                    Some(Arc::new(k))
                }
                Err(e) => {
                    tracing::warn!(error = %e, "kernel forwarding unavailable, relaying in user space");
                    None
                }
            }
        } else {
            None
        };
        let epoch_mono = crate::kernel::monotonic_now().saturating_sub(epoch.elapsed());
        let mut workers = Vec::with_capacity(n);
        for i in 0..n {
            let kernel = kernel.clone();
            let poll =
                nix::sys::epoll::Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
                    .map_err(std::io::Error::from)?;
            let waker = Arc::new(
                nix::sys::eventfd::EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_NONBLOCK
                        | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
                )
                .map_err(std::io::Error::from)?,
            );
            poll.add(
                &*waker,
                nix::sys::epoll::EpollEvent::new(nix::sys::epoll::EpollFlags::EPOLLIN, WAKER),
            )
            .map_err(std::io::Error::from)?;
            let worker_waker = waker.clone();
            let (tx, rx) = mpsc::channel();
            let totals = Arc::new(WorkerTotals::default());
            let name = format!("media-worker-{i}");
            let (batch, worker_totals) = (config.batch, totals.clone());
            let policy = config.thread_policy;
            let join = std::thread::Builder::new()
                .name(name.clone())
                // The worker is built on its thread: its mmsghdr buffers are not Send.
                .spawn(move || {
                    policy.apply_or_warn(&name);
                    Worker::new(poll, worker_waker, rx, batch, worker_totals, epoch, name)
                        .with_kernel(kernel)
                        .run()
                })?;
            workers.push(WorkerHandle {
                tx,
                waker,
                totals,
                join: Mutex::new(Some(join)),
            });
        }
        let metrics = registry.map(|r| Arc::new(Metrics::register(r)));
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                sessions: HashMap::new(),
                ports: PortAllocator::new(config.port_min, config.port_max, config.port_rest),
                next_worker: 0,
                next_stream: 1,
                sessions_total: 0,
                timeouts_total: 0,
            }),
            config,
            interfaces,
            epoch,
            kernel,
            epoch_mono,
            workers,
            metrics: metrics.clone(),
            housekeeping: Mutex::new(None),
            stopped: AtomicBool::new(false),
        });
        if let Some(metrics) = metrics {
            let (tx, rx) = mpsc::channel::<()>();
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("media-metrics".into())
                .spawn(move || loop {
                    match rx.recv_timeout(METRICS_PERIOD) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    metrics.refresh(&inner.totals());
                })?;
            *lock(&inner.housekeeping) = Some(tx);
        }
        Ok(Relay { inner })
    }

    /// What offer and answer both do first: refuse once stopped, parse the body before the
    /// lock is taken (a malformed SDP never holds up other calls), and take the lock.
    fn begin(&self, sdp: &[u8]) -> Result<Begun<'_>, MediaError> {
        self.inner.check_running()?;
        let parsed = trunkline_sdp::parse(sdp)?;
        let media = parsed.media();
        Ok((parsed, media, Instant::now(), lock(&self.inner.state)))
    }

    /// Handles an offer from the party tagged `from_tag`: creates the session or
    /// updates it (re-offer from either party), and returns the SDP rewritten to
    /// point at the relay ports the other party must send to.
    pub fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        flags: &Flags,
    ) -> Result<Vec<u8>, MediaError> {
        let (mut parsed, media, now, mut guard) = self.begin(sdp)?;
        let inner = &*self.inner;
        let state = &mut *guard;
        let is_new = !state.sessions.contains_key(call_id);
        if is_new {
            let worker = state.next_worker % inner.workers.len().max(1);
            state.next_worker = state.next_worker.wrapping_add(1);
            state.sessions.insert(
                call_id.to_string(),
                Session {
                    created: now,
                    last_signal: now,
                    offerer_tag: from_tag.to_string(),
                    answerer_tag: None,
                    worker,
                    iface: [None; 2],
                    streams: BTreeMap::new(),
                    reported_idle_from: None,
                },
            );
            state.sessions_total += 1;
        }
        let result = inner.apply_offer(state, call_id, from_tag, &media, flags, now);
        match result {
            Ok(plans) => {
                parsed.anchor(&plans, &anchor_options(flags));
                Ok(parsed.to_bytes())
            }
            Err(e) => {
                if is_new {
                    if let Some(session) = state.sessions.remove(call_id) {
                        inner.release(&mut state.ports, session, now);
                    }
                }
                Err(e)
            }
        }
    }

    /// Handles the answer to the last offer: `from_tag` is that offer's `from_tag`, and
    /// `to_tag` the answering party's. Returns the SDP rewritten for the offerer.
    pub fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        flags: &Flags,
    ) -> Result<Vec<u8>, MediaError> {
        let (mut parsed, media, now, mut guard) = self.begin(sdp)?;
        let inner = &*self.inner;
        let state = &mut *guard;
        let session = state
            .sessions
            .get_mut(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.to_string()))?;
        let offering = session
            .party(from_tag)
            .ok_or_else(|| MediaError::UnknownTag(from_tag.to_string()))?;
        // Interfaces are chosen by offers (rtpengine: `direction` "doesn't make sense" in an
        // answer); a name is still checked, so a typo is an error here as in an offer.
        for name in flags.direction.iter().flatten() {
            inner.interfaces.select_name(Some(name), None)?;
        }
        if offering == OFFERER {
            session.answerer_tag = Some(to_tag.to_string());
        }
        session.last_signal = now;
        let answering = 1 - offering;
        let worker = &inner.workers[session.worker];
        let mut plans = Vec::new();
        for m in &media {
            if m.rejected {
                if let Some(stream) = session.streams.remove(&m.index) {
                    inner.free_stream(&mut state.ports, session.worker, stream, now);
                }
                continue;
            }
            let Some(stream) = session.streams.get_mut(&m.index) else {
                // The answer has an m-line the offer did not (a broken answer): leave it.
                continue;
            };
            let peer = peer_spec(m, flags);
            stream.sides[answering].peer = peer;
            inner.take_kernel_routes(worker, stream);
            worker.send(Command::Update {
                id: stream.id,
                side: answering,
                peer,
            });
            let to = &stream.sides[offering];
            let address = inner.interfaces.get(to.iface).advertise;
            plans.push(plan(m.index, address, to.port, to.peer.mux));
        }
        parsed.anchor(&plans, &anchor_options(flags));
        Ok(parsed.to_bytes())
    }

    /// Deletes the call (all its streams), freeing its ports into the resting queue,
    /// and returns its final stats. A tag, when given, must be one of the call's.
    pub fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
    ) -> Result<CallStats, MediaError> {
        let inner = &*self.inner;
        let now = Instant::now();
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let session = state
            .sessions
            .get(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.to_string()))?;
        for tag in [from_tag, to_tag].into_iter().flatten() {
            if tag != session.offerer_tag && session.answerer_tag.as_deref() != Some(tag) {
                return Err(MediaError::UnknownTag(tag.to_string()));
            }
        }
        let stats = inner.stats(call_id, session, now);
        if let Some(session) = state.sessions.remove(call_id) {
            inner.release(&mut state.ports, session, now);
        }
        drop(guard);
        if let Some(m) = &inner.metrics {
            m.refresh(&self.totals());
        }
        Ok(stats)
    }

    /// Current stats of a call, `None` if unknown.
    pub fn query(&self, call_id: &str) -> Option<CallStats> {
        let inner = &*self.inner;
        let state = lock(&inner.state);
        state
            .sessions
            .get(call_id)
            .map(|s| inner.stats(call_id, s, Instant::now()))
    }

    /// Up to `limit` Call-IDs, oldest session first.
    pub fn list(&self, limit: usize) -> Vec<String> {
        let state = lock(&self.inner.state);
        let mut calls: Vec<(&Instant, &String)> = state
            .sessions
            .iter()
            .map(|(id, s)| (&s.created, id))
            .collect();
        calls.sort();
        calls
            .into_iter()
            .take(limit)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// Relay-wide counters.
    pub fn totals(&self) -> Totals {
        self.inner.totals()
    }

    /// Whether latched RTP is relayed by the kernel fast path: asked for in the config
    /// and loaded (false when the kernel refused; the reason was logged at start).
    pub fn kernel_forwarding(&self) -> bool {
        self.inner.kernel.is_some()
    }

    /// The configured interfaces; the first is the default.
    pub fn interfaces(&self) -> &[crate::MediaInterface] {
        self.inner.interfaces.all()
    }

    /// Whether `name` is a configured logical interface, so a caller can decide what to do
    /// about an unknown one before asking for it (the ng layer falls back as rtpengine does).
    pub fn has_interface(&self, name: &str) -> bool {
        self.inner.interfaces.contains(name)
    }

    /// Sessions idle (no packet on any stream since creation or the last packet) for
    /// longer than `config.timeout`, each reported once per idle period. Sessions are
    /// not deleted: the owner decides (BYE the call, or keep it).
    pub fn take_timeouts(&self) -> Vec<TimedOut> {
        let inner = &*self.inner;
        let now_ms = ms(inner.epoch.elapsed());
        let timeout = ms(inner.config.timeout);
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let mut out = Vec::new();
        for (call_id, s) in state.sessions.iter_mut() {
            let created = ms(s.created.saturating_duration_since(inner.epoch));
            let last = s
                .streams
                .values()
                .flat_map(|st| st.sides.iter())
                .filter_map(|side| side.shared.last_packet_ms())
                .fold(created, u64::max);
            let idle = now_ms.saturating_sub(last);
            if idle >= timeout && s.reported_idle_from != Some(last) {
                s.reported_idle_from = Some(last);
                out.push(TimedOut {
                    call_id: call_id.clone(),
                    idle: Duration::from_millis(idle),
                });
            }
        }
        state.timeouts_total += out.len() as u64;
        out
    }

    /// Stops the workers (closing every socket) and forgets all sessions. Later
    /// requests fail with [`MediaError::ShutDown`].
    pub fn shutdown(&self) {
        self.inner.stop(true);
        let inner = &*self.inner;
        let now = Instant::now();
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        for (_, session) in state.sessions.drain() {
            for (_, stream) in session.streams {
                for side in &stream.sides {
                    state.ports.free(side.port, now);
                }
            }
        }
    }
}

fn plan(index: usize, address: std::net::IpAddr, port: u16, mux: bool) -> MediaPlan {
    MediaPlan {
        index,
        address,
        rtp_port: port,
        rtcp_port: if mux { port } else { port + 1 },
        rtcp_mux: mux,
    }
}

impl Inner {
    fn check_running(&self) -> Result<(), MediaError> {
        if self.stopped.load(Ordering::Acquire) {
            Err(MediaError::ShutDown)
        } else {
            Ok(())
        }
    }

    /// Programs the session from an offer; returns the plans for the rewritten SDP.
    ///
    /// Each party's sockets sit on its own interface (rtpengine's `__init_interface` per
    /// side in `daemon/call.c`): the sending party's side on `direction[0]`, in the family
    /// of its SDP address; the receiving party's side on `direction[1]`, in the family of
    /// `address_family`, else the family it already has, else the sender's. A party without
    /// a name in this offer keeps the interface it has, else gets the default. A side
    /// already bound elsewhere is moved (new port), as rtpengine re-allocates; the peers
    /// learn the new address from this offer and its answer.
    fn apply_offer(
        &self,
        state: &mut State,
        call_id: &str,
        from_tag: &str,
        media: &[MediaInfo],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<MediaPlan>, MediaError> {
        let State {
            sessions,
            ports,
            next_stream,
            ..
        } = state;
        let session = sessions
            .get_mut(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.to_string()))?;
        let offering = session
            .party(from_tag)
            .ok_or_else(|| MediaError::UnknownTag(from_tag.to_string()))?;
        let other = 1 - offering;
        // Names first: an unknown one fails the offer before anything changed.
        let mut logical = [None; 2];
        for (party, name) in [
            (offering, &flags.direction[0]),
            (other, &flags.direction[1]),
        ] {
            logical[party] = match name {
                Some(n) => Some(
                    self.interfaces
                        .logical_id(n)
                        .ok_or_else(|| MediaError::UnknownInterface(n.clone()))?,
                ),
                None => session.iface[party],
            };
        }
        session.last_signal = now;
        let worker = &self.workers[session.worker];
        let mut plans = Vec::new();
        for m in media {
            if m.rejected {
                if let Some(stream) = session.streams.remove(&m.index) {
                    self.free_stream(ports, session.worker, stream, now);
                }
                continue;
            }
            let peer = peer_spec(m, flags);
            let mux_out = m.rtcp_mux && (flags.rtcp_mux_offer || !flags.rtcp_mux_demux);
            let existing = session.streams.get(&m.index);
            let bound_family =
                |party: usize| existing.map(|s| self.interfaces.get(s.sides[party].iface).family());
            let sender_family = peer
                .rtp
                .map(|a| AddressFamily::of(a.ip()))
                .or_else(|| bound_family(offering));
            let receiver_family = flags
                .address_family
                .or_else(|| bound_family(other))
                .or(sender_family);
            let mut ifaces = [0; 2];
            ifaces[offering] = self.interfaces.select(logical[offering], sender_family);
            ifaces[other] = self.interfaces.select(logical[other], receiver_family);
            for party in [offering, other] {
                session.iface[party] = Some(self.interfaces.logical_of(ifaces[party]));
            }
            let advertise = self.interfaces.get(ifaces[other]).advertise;
            if let Some(stream) = session.streams.get_mut(&m.index) {
                for party in [offering, other] {
                    if stream.sides[party].iface != ifaces[party] {
                        self.rebind_side(ports, worker, stream, party, ifaces[party], now)?;
                    }
                }
                stream.sides[offering].peer = peer;
                stream.kind.clone_from(&m.kind);
                stream.proto.clone_from(&m.proto);
                self.take_kernel_routes(worker, stream);
                worker.send(Command::Update {
                    id: stream.id,
                    side: offering,
                    peer,
                });
                plans.push(plan(m.index, advertise, stream.sides[other].port, mux_out));
                continue;
            }
            let (ports_pair, sockets) = self.bind_stream(ports, ifaces, now)?;
            let id = *next_stream;
            *next_stream += 1;
            let mut peers = [PeerSpec::default(); 2];
            peers[offering] = peer;
            let shared = [
                Arc::new(SideShared::default()),
                Arc::new(SideShared::default()),
            ];
            worker.send(Command::Add {
                id,
                sockets: Box::new(sockets),
                peers,
                shared: shared.clone(),
            });
            let [s0, s1] = shared;
            let stream = StreamCtl {
                id,
                kind: m.kind.clone(),
                proto: m.proto.clone(),
                sides: [
                    SideCtl {
                        port: ports_pair[0],
                        iface: ifaces[0],
                        peer: peers[0],
                        shared: s0,
                    },
                    SideCtl {
                        port: ports_pair[1],
                        iface: ifaces[1],
                        peer: peers[1],
                        shared: s1,
                    },
                ],
            };
            plans.push(plan(m.index, advertise, stream.sides[other].port, mux_out));
            session.streams.insert(m.index, stream);
        }
        for party in [offering, other] {
            if session.iface[party].is_none() {
                // No m-line chose one (none, or all rejected): the name given, if any.
                session.iface[party] = logical[party];
            }
        }
        Ok(plans)
    }

    /// Moves one party's side of a stream to another interface: a new port pair bound
    /// there replaces the old sockets on the worker (latching and counters stay), and the
    /// old port goes to rest.
    fn rebind_side(
        &self,
        ports: &mut PortAllocator,
        worker: &WorkerHandle,
        stream: &mut StreamCtl,
        party: usize,
        iface: usize,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (port, sockets) = self.bind_pair(ports, iface, now)?;
        self.take_kernel_routes(worker, stream);
        worker.send(Command::Rebind {
            id: stream.id,
            side: party,
            sockets: Box::new(sockets),
        });
        let side = &mut stream.sides[party];
        tracing::debug!(
            stream = stream.id,
            party,
            from = %self.interfaces.get(side.iface),
            to = %self.interfaces.get(iface),
            "media side moved to another interface"
        );
        ports.free(side.port, now);
        side.port = port;
        side.iface = iface;
        Ok(())
    }

    /// Allocates and binds two port pairs (one per party, each on its interface) for a new
    /// stream.
    fn bind_stream(
        &self,
        ports: &mut PortAllocator,
        ifaces: [usize; 2],
        now: Instant,
    ) -> Result<([u16; 2], StreamSockets), MediaError> {
        let first = self.bind_pair(ports, ifaces[0], now)?;
        let second = match self.bind_pair(ports, ifaces[1], now) {
            Ok(p) => p,
            Err(e) => {
                ports.free(first.0, now);
                return Err(e);
            }
        };
        Ok(([first.0, second.0], [first.1, second.1]))
    }

    /// Takes the next free pair whose two ports can both be bound on `iface`; a port someone
    /// else holds is put to rest and the next one tried.
    fn bind_pair(
        &self,
        ports: &mut PortAllocator,
        iface: usize,
        now: Instant,
    ) -> Result<(u16, [UdpSocket; 2]), MediaError> {
        let ip = self.interfaces.get(iface).bind;
        for _ in 0..ports.capacity() {
            let port = ports.alloc(now)?;
            match (
                self.bind_one(SocketAddr::new(ip, port)),
                self.bind_one(SocketAddr::new(ip, port + 1)),
            ) {
                (Ok(rtp), Ok(rtcp)) => return Ok((port, [rtp, rtcp])),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::debug!(%ip, port, error = %e, "media port taken, trying the next");
                    ports.free(port, now);
                }
            }
        }
        Err(MediaError::NoPorts)
    }

    fn bind_one(&self, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        if let Err(e) = socket.set_recv_buffer_size(self.config.recv_buffer) {
            tracing::warn!(error = %e, "cannot set SO_RCVBUF on a media socket");
        }
        socket.set_nonblocking(true)?;
        socket.bind(&SockAddr::from(addr))?;
        Ok(socket.into())
    }

    /// Takes a stream's kernel routes out before a command that changes it is sent. The
    /// worker applies commands before it reads packets, so user-space forwarding never
    /// uses a destination older than the last command; the kernel path does not wait for
    /// the worker, so its routes go now, under the state lock, and the worker is handed
    /// what they forwarded. It installs them again as latching dictates.
    fn take_kernel_routes(&self, worker: &WorkerHandle, stream: &StreamCtl) {
        let Some(kernel) = &self.kernel else {
            return;
        };
        let counts = stream.sides.each_ref().map(|side| {
            let IpAddr::V4(ip) = self.interfaces.get(side.iface).bind else {
                return None;
            };
            match kernel.take(std::net::SocketAddrV4::new(ip, side.port)) {
                Ok(taken) => taken,
                Err(e) => {
                    tracing::debug!(error = %e, "cannot take a kernel route");
                    None
                }
            }
        });
        if counts.iter().any(Option::is_some) {
            worker.send(Command::KernelTaken {
                id: stream.id,
                counts,
            });
        }
    }

    fn free_stream(
        &self,
        ports: &mut PortAllocator,
        worker: usize,
        stream: StreamCtl,
        now: Instant,
    ) {
        if let Some(w) = self.workers.get(worker) {
            self.take_kernel_routes(w, &stream);
            w.send(Command::Remove { id: stream.id });
        }
        for side in &stream.sides {
            ports.free(side.port, now);
        }
    }

    fn release(&self, ports: &mut PortAllocator, session: Session, now: Instant) {
        for (_, stream) in session.streams {
            self.free_stream(ports, session.worker, stream, now);
        }
    }

    fn stats(&self, call_id: &str, s: &Session, now: Instant) -> CallStats {
        let now_ms = ms(now.saturating_duration_since(self.epoch));
        let mut tags = vec![s.offerer_tag.clone()];
        tags.extend(s.answerer_tag.iter().cloned());
        CallStats {
            call_id: call_id.to_string(),
            created_ms_ago: ms(now.saturating_duration_since(s.created)),
            last_signal_ms_ago: ms(now.saturating_duration_since(s.last_signal)),
            tags,
            streams: s
                .streams
                .iter()
                .map(|(index, st)| {
                    let side = |s: &SideCtl| {
                        let iface = self.interfaces.get(s.iface);
                        StreamStats {
                            local_address: Some(iface.bind),
                            interface: iface.name.clone(),
                            ..s.shared.snapshot(
                                now_ms,
                                s.port,
                                &s.peer,
                                self.kernel.as_deref().map(|k| (k, self.epoch_mono)),
                            )
                        }
                    };
                    StreamPairStats {
                        index: *index,
                        media: st.kind.clone(),
                        protocol: st.proto.clone(),
                        offerer: side(&st.sides[OFFERER]),
                        answerer: side(&st.sides[ANSWERER]),
                    }
                })
                .collect(),
        }
    }

    fn totals(&self) -> Totals {
        let mut t = {
            let mut state = lock(&self.state);
            let now = Instant::now();
            let resting = state.ports.resting_at(now) as u64;
            Totals {
                sessions: state.sessions_total,
                current_sessions: state.sessions.len() as u64,
                ports_in_use: 2 * state.ports.in_use() as u64,
                ports_resting: 2 * resting,
                timeouts: state.timeouts_total,
                ..Totals::default()
            }
        };
        for w in &self.workers {
            t.packets_relayed += w.totals.relayed.load(Ordering::Relaxed);
            t.packets_kernel += w.totals.kernel.load(Ordering::Relaxed);
            t.bytes_relayed += w.totals.bytes.load(Ordering::Relaxed);
            t.packets_dropped += w.totals.dropped.load(Ordering::Relaxed);
        }
        t
    }

    /// Stops the workers; with `join`, waits for them (not from `Drop`, which may run
    /// on the metrics thread).
    fn stop(&self, join: bool) {
        self.stopped.store(true, Ordering::Release);
        lock(&self.housekeeping).take();
        for w in &self.workers {
            w.send(Command::Shutdown);
        }
        if join {
            for w in &self.workers {
                if let Some(handle) = lock(&w.join).take() {
                    if handle.join().is_err() {
                        tracing::error!("a media worker panicked");
                    }
                }
            }
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop(false);
    }
}

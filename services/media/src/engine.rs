//! The control side: sessions, port allocation, SDP glue, timeouts and programming the
//! workers.
//!
//! All control state sits behind one mutex, taken per offer/answer/delete/query —
//! signalling rate, not packet rate. The forwarding plane never takes it. Every request
//! carries the caller's `now` (see the crate documentation for how it relates to the
//! workers' packet stamps).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use trunkline_sdp::{AnchorOptions, Direction, MediaInfo, MediaPlan};

use crate::interfaces::Interfaces;
use crate::kernel::KernelPath;
use crate::latch::{EndpointLearning, LatchPolicy};
use crate::metrics::Metrics;
use crate::pool::PortPool;
use crate::ports::PortAllocator;
use crate::worker::{
    token, Command, MediaSocket, PeerSpec, SideShared, StreamSockets, Worker, WorkerTotals, WAKER,
};
use crate::{
    AddressFamily, CallStats, Flags, MediaConfig, MediaError, StreamPairStats, StreamStats,
    TimedOut, TimeoutCounts, TimeoutReason, Totals,
};
use nix::sys::epoll::{Epoll, EpollEvent, EpollFlags};

/// Side 0 is the pair the original offerer sends to, side 1 the answerer's.
const OFFERER: usize = 0;
const ANSWERER: usize = 1;
/// Ports one anchored m-line holds: an RTP/RTCP pair on each side.
const PORTS_PER_STREAM: usize = 4;
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
    /// Its position in `Inner::workers`.
    index: usize,
    tx: Sender<Command>,
    /// The sequence number of the last command sent (the worker counts those it applied).
    sent: AtomicU64,
    waker: Arc<nix::sys::eventfd::EventFd>,
    /// The worker's epoll set: the control side adds a new stream's sockets to it itself.
    poll: Arc<Epoll>,
    totals: Arc<WorkerTotals>,
    join: Mutex<Option<JoinHandle<()>>>,
}

/// Commands a worker may have queued and unapplied before the next one wakes it. Commands
/// are queued without a wake-up (see [`WorkerHandle::queue`]), and a worker with no
/// packets to read would otherwise apply them only at housekeeping, once a second: this
/// bounds the queue, and how long a removed stream's sockets stay out of reach, at high
/// call rates, while still batching a few dozen calls' commands into one wake-up.
const QUEUE_BEFORE_WAKE: u64 = 64;

impl WorkerHandle {
    /// Sends a command and wakes the worker; returns the command's sequence number, which
    /// the worker's `applied` count reaches once it has applied it. For what the worker
    /// must do at once: move a stream to new sockets, stop.
    fn send(&self, cmd: Command) -> u64 {
        let seq = self.queue(cmd);
        self.wake();
        seq
    }

    /// Queues a command without waking the worker, for what only matters once a packet
    /// arrives (a worker applies every queued command before it reads a packet) or can
    /// wait a moment (closing a removed stream's sockets: housekeeping wakes a worker
    /// that is behind, and an allocation that needs the ports wakes it at once). A new
    /// stream is queued too: its sockets are then watched by [`WorkerHandle::watch`],
    /// so its first packet wakes the worker, which applies the command before reading
    /// it. Waking an idle worker for each offer, answer and hang-up cost three thread
    /// wake-ups per call (an eventfd write and a context switch on each side), at low
    /// call rates a good share of what anchoring costs.
    fn queue(&self, cmd: Command) -> u64 {
        let seq = self.sent.fetch_add(1, Ordering::Relaxed) + 1;
        // A failed send means the worker is gone (shut down); nothing left to program.
        let _ = self.tx.send(cmd);
        if seq.saturating_sub(self.totals.applied.load(Ordering::Acquire)) > QUEUE_BEFORE_WAKE {
            self.wake();
        }
        seq
    }

    /// Wakes the worker unless a wake-up is pending already.
    fn wake(&self) {
        if !self.totals.wake_pending.swap(true, Ordering::AcqRel) {
            self.totals.wakeups.fetch_add(1, Ordering::Relaxed);
            // EAGAIN means the counter is already non-zero: the worker is awake.
            match self.waker.write(1) {
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => {}
                Err(e) => tracing::error!(error = %e, "cannot wake media worker"),
            }
        }
    }

    /// Whether commands are queued that the worker has not applied yet.
    fn behind(&self) -> bool {
        self.totals.applied.load(Ordering::Acquire) < self.sent.load(Ordering::Relaxed)
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

/// The control side's clock for what has no caller (the metrics thread's totals): the
/// latest `now` a request brought, or the real clock if that is later.
fn later(a: Instant, b: Instant) -> Instant {
    a.max(b)
}

struct State {
    /// Keyed by Call-ID, which comes from the network: the per-process keyed hasher, as
    /// the call registry's maps use.
    sessions: HashMap<String, Session, foldhash::quality::RandomState>,
    /// One port range for every interface: a port number belongs to one socket pair at a
    /// time whatever address it is bound on, so interfaces never collide — not even two
    /// names on one address, or a wildcard next to a specific address. (rtpengine keeps a
    /// pool per address; sharing one only matters when the range itself is the limit.)
    ports: PortPool,
    next_worker: usize,
    next_stream: u64,
    sessions_total: u64,
    timeouts: TimeoutCounts,
    /// The latest `now` a request brought.
    clock: Instant,
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
    /// An answer was applied: the offer timeout no longer applies.
    answered: bool,
    /// When the call was established ([`Relay::established`]): from then on, and only
    /// then, its streams are subject to the inactivity and silent timeouts.
    established: Option<Instant>,
    /// The last timeout reported: its reason and since when the condition held, so each
    /// is reported once (and again only after activity moved that moment).
    reported: Option<(TimeoutReason, Instant)>,
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
    /// Its RTP and RTCP sockets (the worker has them too), kept as spares when it ends.
    sockets: [MediaSocket; 2],
    /// The interface entry `port` is bound on.
    iface: usize,
    peer: PeerSpec,
    /// What the party sending to this side said in its latest SDP for the m-line.
    direction: Flow,
    shared: Arc<SideShared>,
}

/// Whether a party sends and receives on an m-line, from its SDP (RFC 3264 §5.1, §8.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Flow {
    /// `sendrecv` or `sendonly`.
    sends: bool,
    /// `sendrecv` or `recvonly`, and not `c=0.0.0.0` (the RFC 2543 hold: do not send to me).
    receives: bool,
}

impl Flow {
    /// Before a party's SDP is known it may do both.
    const BOTH: Flow = Flow {
        sends: true,
        receives: true,
    };

    fn of(m: &MediaInfo) -> Flow {
        Flow {
            sends: matches!(m.direction, Direction::SendRecv | Direction::SendOnly),
            receives: matches!(m.direction, Direction::SendRecv | Direction::RecvOnly)
                && !m.hold_zero_address,
        }
    }
}

impl StreamCtl {
    /// Whether the traffic into side `party` is on hold or muted, so the silent timeout
    /// applies to it rather than the inactivity one: its sender said it does not send, or
    /// the other party said it does not receive (rtpengine looks at the sender's
    /// direction; the receiver's catches `c=0.0.0.0` holds and one-sided answers too).
    fn silent(&self, party: usize) -> bool {
        !self.sides[party].direction.sends || !self.sides[1 - party].direction.receives
    }
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

/// Reads one party's expected addresses and policy from its m-line and the request flags:
/// the flags' address policy picks between the SDP address and the signalling source (a
/// hold, `c=0.0.0.0`, stays a hold); `learning` is the relay's default mode.
fn peer_spec(m: &MediaInfo, flags: &Flags, learning: EndpointLearning) -> PeerSpec {
    let source = flags.received_from.map(|a| a.ip());
    let resolve = |sdp: Option<IpAddr>| {
        if m.hold_zero_address {
            sdp
        } else {
            flags.address.resolve(sdp, source)
        }
    };
    let ip = resolve(m.connection);
    let rtp = ip.map(|ip| SocketAddr::new(ip, m.port));
    let rtcp = if m.rtcp_mux {
        rtp
    } else {
        match m.rtcp {
            Some((port, addr)) => {
                resolve(addr.or(m.connection)).map(|ip| SocketAddr::new(ip, port))
            }
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
            learning: flags.endpoint_learning.unwrap_or(learning),
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
        if config.timeout.is_zero() {
            return Err(MediaError::Config("timeout must be above zero".into()));
        }
        if config.max_streams == 0 || config.max_ports_per_call < PORTS_PER_STREAM {
            return Err(MediaError::Config(format!(
                "max_streams ({}) must be at least 1 and max_ports_per_call ({}) at least {PORTS_PER_STREAM}",
                config.max_streams, config.max_ports_per_call
            )));
        }
        let interfaces = Interfaces::new(config.interfaces.clone())?;
        let epoch = Instant::now();
        let window_ms = ms(config.learning_window);
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
        let keep_spares = !config.spare_ttl.is_zero();
        for i in 0..n {
            let kernel = kernel.clone();
            let poll = Arc::new(
                Epoll::new(nix::sys::epoll::EpollCreateFlags::EPOLL_CLOEXEC)
                    .map_err(std::io::Error::from)?,
            );
            let waker = Arc::new(
                nix::sys::eventfd::EventFd::from_flags(
                    nix::sys::eventfd::EfdFlags::EFD_NONBLOCK
                        | nix::sys::eventfd::EfdFlags::EFD_CLOEXEC,
                )
                .map_err(std::io::Error::from)?,
            );
            poll.add(&*waker, EpollEvent::new(EpollFlags::EPOLLIN, WAKER))
                .map_err(std::io::Error::from)?;
            let (worker_waker, worker_poll) = (waker.clone(), poll.clone());
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
                    Worker::new(
                        worker_poll,
                        worker_waker,
                        rx,
                        batch,
                        worker_totals,
                        epoch,
                        name,
                    )
                    .with_learning_window(window_ms)
                    .with_spares(keep_spares)
                    .with_kernel(kernel)
                    .run()
                })?;
            workers.push(WorkerHandle {
                index: i,
                tx,
                sent: AtomicU64::new(0),
                waker,
                poll,
                totals,
                join: Mutex::new(Some(join)),
            });
        }
        let metrics = registry.map(|r| Arc::new(Metrics::register(r)));
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                sessions: HashMap::default(),
                ports: PortPool::new(
                    PortAllocator::new(config.port_min, config.port_max, config.port_rest),
                    workers.iter().map(|w| w.totals.clone()).collect(),
                    config.spare_ttl,
                ),
                next_worker: 0,
                next_stream: 1,
                sessions_total: 0,
                timeouts: TimeoutCounts::default(),
                clock: epoch,
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
        {
            // Once a second: wake workers with queued commands, refresh the metrics.
            let (tx, rx) = mpsc::channel::<()>();
            let weak: Weak<Inner> = Arc::downgrade(&inner);
            std::thread::Builder::new()
                .name("media-housekeeping".into())
                .spawn(move || loop {
                    match rx.recv_timeout(METRICS_PERIOD) {
                        Err(RecvTimeoutError::Timeout) => {}
                        _ => return,
                    }
                    let Some(inner) = weak.upgrade() else { return };
                    // Commands queued without a wake-up (see `WorkerHandle::queue`) are
                    // applied within a period even when no packet or new stream comes.
                    inner.wake_workers_behind();
                    let totals = inner.totals();
                    if let Some(metrics) = &metrics {
                        metrics.refresh(&totals);
                    }
                })?;
            *lock(&inner.housekeeping) = Some(tx);
        }
        Ok(Relay { inner })
    }

    /// What offer and answer both do first: refuse once stopped, parse the body and check
    /// its m-line count before the lock is taken (a malformed or oversized SDP never holds
    /// up other calls), and take the lock.
    fn begin(&self, sdp: &[u8], now: Instant) -> Result<Begun<'_>, MediaError> {
        self.inner.check_running()?;
        let parsed = trunkline_sdp::parse(sdp)?;
        let media = parsed.media();
        let max = self.inner.config.max_streams;
        if media.len() > max {
            return Err(MediaError::TooManyStreams {
                count: media.len(),
                max,
            });
        }
        let mut guard = lock(&self.inner.state);
        guard.clock = later(guard.clock, now);
        Ok((parsed, media, now, guard))
    }

    /// Handles an offer from the party tagged `from_tag` at `now`: creates the session
    /// or updates it (re-offer from either party), and returns the SDP rewritten to
    /// point at the relay ports the other party must send to. An offer over the limits
    /// ([`MediaError::TooManyStreams`], [`MediaError::TooManyPorts`]) changes nothing.
    pub fn offer(
        &self,
        call_id: &str,
        from_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        let (mut parsed, media, now, mut guard) = self.begin(sdp, now)?;
        let inner = &*self.inner;
        let state = &mut *guard;
        let is_new = !state.sessions.contains_key(call_id);
        if is_new {
            // The worker of the spare sockets the call's first ports come with, so that
            // they are reused as they are; else the next in turn.
            let workers = inner.workers.len().max(1);
            let default_ip = inner.interfaces.get(0).bind;
            let worker = match state.ports.next_spare_worker(default_ip) {
                Some(w) if w < workers => w,
                _ => {
                    let next = state.next_worker % workers;
                    state.next_worker = state.next_worker.wrapping_add(1);
                    next
                }
            };
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
                    answered: false,
                    established: None,
                    reported: None,
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

    /// Handles the answer to the last offer at `now`: `from_tag` is that offer's
    /// `from_tag`, and `to_tag` the answering party's. Returns the SDP rewritten for the
    /// offerer. An answer (early media included) does not establish the call: see
    /// [`Relay::established`].
    pub fn answer(
        &self,
        call_id: &str,
        from_tag: &str,
        to_tag: &str,
        sdp: &[u8],
        flags: &Flags,
        now: Instant,
    ) -> Result<Vec<u8>, MediaError> {
        let (mut parsed, media, now, mut guard) = self.begin(sdp, now)?;
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
        session.answered = true;
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
            let peer = peer_spec(m, flags, inner.config.endpoint_learning);
            stream.sides[answering].peer = peer;
            stream.sides[answering].direction = Flow::of(m);
            inner.take_kernel_routes(worker, stream);
            worker.queue(Command::Update {
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

    /// Deletes the call (all its streams) at `now`, freeing its ports to the back of the
    /// reuse queue, and returns its final stats. A tag, when given, must be one of the
    /// call's.
    pub fn delete(
        &self,
        call_id: &str,
        from_tag: Option<&str>,
        to_tag: Option<&str>,
        now: Instant,
    ) -> Result<CallStats, MediaError> {
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        state.clock = later(state.clock, now);
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

    /// The call is established (answered, in SIP terms) at `now`: from then on — and only
    /// from then on — its streams are subject to the inactivity and silent timeouts,
    /// measured from this moment at the earliest. Before it a session only ends by the
    /// offer or final timeout, so a callee that rings long without early media never
    /// times the call out. Idempotent: the first call fixes the moment. The ng `answer`
    /// command calls it (rtpengine's timeouts start with the answer); the node's call
    /// actor when its call is answered.
    pub fn established(&self, call_id: &str, now: Instant) -> Result<(), MediaError> {
        let mut guard = lock(&self.inner.state);
        guard.clock = later(guard.clock, now);
        let session = guard
            .sessions
            .get_mut(call_id)
            .ok_or_else(|| MediaError::UnknownCall(call_id.to_string()))?;
        session.established.get_or_insert(now);
        Ok(())
    }

    /// Stats of a call as of `now`, `None` if unknown.
    pub fn query(&self, call_id: &str, now: Instant) -> Option<CallStats> {
        let inner = &*self.inner;
        let state = lock(&inner.state);
        state
            .sessions
            .get(call_id)
            .map(|s| inner.stats(call_id, s, now))
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

    /// Sessions one of rtpengine's timeouts caught as of `now` (see [`TimeoutReason`]):
    /// the final timeout for any session; the offer timeout before an answer; once
    /// [`Relay::established`], the inactivity timeout while any stream is active, else the
    /// silent one. A session is idle from its last accepted packet on any stream, or from
    /// its establishment or last signal if later. Each condition is reported once (again
    /// only after new activity). Sessions are not deleted: the owner decides.
    pub fn take_timeouts(&self, now: Instant) -> Vec<TimedOut> {
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        state.clock = later(state.clock, now);
        let mut out = Vec::new();
        for (call_id, s) in state.sessions.iter_mut() {
            let Some((reason, since)) = inner.timeout_of(s, now) else {
                continue;
            };
            if s.reported == Some((reason, since)) {
                continue;
            }
            s.reported = Some((reason, since));
            state.timeouts.add(reason);
            out.push(TimedOut {
                call_id: call_id.clone(),
                reason,
                elapsed: now.saturating_duration_since(since),
            });
        }
        out
    }

    /// Stops the workers (closing every socket) and forgets all sessions. Later
    /// requests fail with [`MediaError::ShutDown`].
    pub fn shutdown(&self) {
        self.inner.stop(true);
        let inner = &*self.inner;
        let mut guard = lock(&inner.state);
        let state = &mut *guard;
        let now = later(state.clock, Instant::now());
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
        // Limits first: an offer over them fails before anything changed. The call keeps
        // its streams this offer does not reject and gains the new ones it anchors.
        let mut kept: BTreeSet<usize> = session.streams.keys().copied().collect();
        for m in media {
            if m.rejected {
                kept.remove(&m.index);
            } else {
                kept.insert(m.index);
            }
        }
        let needed = kept.len() * PORTS_PER_STREAM;
        if needed > self.config.max_ports_per_call {
            return Err(MediaError::TooManyPorts {
                needed,
                max: self.config.max_ports_per_call,
            });
        }
        // Names next: an unknown one fails the offer before anything changed.
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
            let peer = peer_spec(m, flags, self.config.endpoint_learning);
            let flow = Flow::of(m);
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
                stream.sides[offering].direction = flow;
                stream.kind.clone_from(&m.kind);
                stream.proto.clone_from(&m.proto);
                self.take_kernel_routes(worker, stream);
                worker.queue(Command::Update {
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
            let mut flows = [Flow::BOTH; 2];
            flows[offering] = flow;
            let shared = [
                Arc::new(SideShared::default()),
                Arc::new(SideShared::default()),
            ];
            let kept = sockets.clone();
            worker.queue(Command::Add {
                id,
                sockets: Box::new(sockets),
                peers,
                shared: shared.clone(),
            });
            self.watch(worker.index, kept.iter().flatten());
            let [s0, s1] = shared;
            let [o_socks, a_socks] = kept;
            let stream = StreamCtl {
                id,
                kind: m.kind.clone(),
                proto: m.proto.clone(),
                sides: [
                    SideCtl {
                        port: ports_pair[0],
                        sockets: o_socks,
                        iface: ifaces[0],
                        peer: peers[0],
                        direction: flows[0],
                        shared: s0,
                    },
                    SideCtl {
                        port: ports_pair[1],
                        sockets: a_socks,
                        iface: ifaces[1],
                        peer: peers[1],
                        direction: flows[1],
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
        ports: &mut PortPool,
        worker: &WorkerHandle,
        stream: &mut StreamCtl,
        party: usize,
        iface: usize,
        now: Instant,
    ) -> Result<(), MediaError> {
        let (port, sockets) = self.bind_pair(ports, iface, now)?;
        self.take_kernel_routes(worker, stream);
        let closed = worker.send(Command::Rebind {
            id: stream.id,
            side: party,
            sockets: Box::new(sockets.clone()),
        });
        self.watch(worker.index, sockets.iter());
        let side = &mut stream.sides[party];
        tracing::debug!(
            stream = stream.id,
            party,
            from = %self.interfaces.get(side.iface),
            to = %self.interfaces.get(iface),
            "media side moved to another interface"
        );
        ports.free_after(worker.index, closed, side.port, now);
        for old in std::mem::replace(&mut side.sockets, sockets) {
            ports.keep_spare(old, worker.index, now);
        }
        side.port = port;
        side.iface = iface;
        Ok(())
    }

    /// Allocates and binds two port pairs (one per party, each on its interface) for a new
    /// stream.
    fn bind_stream(
        &self,
        ports: &mut PortPool,
        ifaces: [usize; 2],
        now: Instant,
    ) -> Result<([u16; 2], StreamSockets), MediaError> {
        let first = self.bind_pair(ports, ifaces[0], now)?;
        let second = match self.bind_pair(ports, ifaces[1], now) {
            Ok(p) => p,
            Err(e) => {
                self.unbind(ports, first.1, now);
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
        ports: &mut PortPool,
        iface: usize,
        now: Instant,
    ) -> Result<(u16, [MediaSocket; 2]), MediaError> {
        let ip = self.interfaces.get(iface).bind;
        for _ in 0..ports.capacity() {
            let port = ports.alloc(now, || {
                // Only freed pairs whose sockets are not closed yet are left: have their
                // workers apply the removals now.
                self.wake_workers_behind();
            })?;
            match (
                self.bind_one(ports, SocketAddr::new(ip, port)),
                self.bind_one(ports, SocketAddr::new(ip, port + 1)),
            ) {
                (Ok(rtp), Ok(rtcp)) => return Ok((port, [rtp, rtcp])),
                (rtp, rtcp) => {
                    for r in [rtp, rtcp] {
                        match r {
                            Ok(bound) => self.unbind(ports, [bound], now),
                            Err(e) => tracing::debug!(%ip, port, error = %e,
                                "media port taken, trying the next"),
                        }
                    }
                    ports.free(port, now);
                }
            }
        }
        Err(MediaError::NoPorts)
    }

    /// A socket bound at `addr`: the spare a worker still watches, or a new one.
    fn bind_one(&self, ports: &mut PortPool, addr: SocketAddr) -> std::io::Result<MediaSocket> {
        if let Some(spare) = ports.take_spare(addr) {
            return Ok(MediaSocket {
                socket: spare.socket,
                addr,
                token: spare.token,
                watched_by: Some(spare.worker),
            });
        }
        Ok(MediaSocket {
            socket: Arc::new(self.bind_socket(addr)?),
            addr,
            token: token(self.interfaces.bind_index(addr.ip()), addr.port()),
            watched_by: None,
        })
    }

    /// A new socket bound at `addr`. The first calls after a start bind a socket for every
    /// port they get until the range has gone round once (later calls reuse spares), so
    /// this runs thousands of times a second then: the socket is created non-blocking
    /// (and close-on-exec) by `socket(2)` itself rather than by two `fcntl` calls after.
    fn bind_socket(&self, addr: SocketAddr) -> std::io::Result<UdpSocket> {
        let socket = Socket::new(
            Domain::for_address(addr),
            Type::DGRAM.nonblocking(),
            Some(Protocol::UDP),
        )?;
        if let Err(e) = socket.set_recv_buffer_size(self.config.recv_buffer) {
            tracing::warn!(error = %e, "cannot set SO_RCVBUF on a media socket");
        }
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
            // A worker sets this before it installs a route; one that installs after this
            // check retires the route itself when it applies the command that follows.
            if !side.shared.kernel_routed.load(Ordering::SeqCst) {
                return None;
            }
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
            worker.queue(Command::KernelTaken {
                id: stream.id,
                counts,
            });
        }
    }

    /// Wakes every worker with commands queued and not applied yet.
    fn wake_workers_behind(&self) {
        for w in self.workers.iter().filter(|w| w.behind()) {
            w.wake();
        }
    }

    fn free_stream(&self, ports: &mut PortPool, worker: usize, stream: StreamCtl, now: Instant) {
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        self.take_kernel_routes(w, &stream);
        let closed = w.queue(Command::Remove { id: stream.id });
        for side in stream.sides {
            ports.free_after(worker, closed, side.port, now);
            for s in side.sockets {
                ports.keep_spare(s, worker, now);
            }
        }
    }

    /// Has `worker`'s epoll set watch `sockets`, after the command that hands them to it is
    /// queued (so an event the worker sees for them finds the command, which it applies
    /// before it services events). A new socket is added; a spare of this worker is
    /// watched already, and its next call costs nothing here; a spare of another worker
    /// moves: out of that worker's set, which is told to let go of it, into this one's.
    fn watch<'a>(&self, worker: usize, sockets: impl Iterator<Item = &'a MediaSocket>) {
        let Some(w) = self.workers.get(worker) else {
            return;
        };
        for s in sockets {
            if s.watched_by == Some(worker) {
                continue;
            }
            if let Some(other) = s.watched_by.and_then(|o| self.workers.get(o)) {
                let _ = other.poll.delete(&*s.socket);
                other.queue(Command::Forget { token: s.token });
            }
            // Level-triggered: a socket left with data after a full batch is simply
            // reported again, so no read is spent on EAGAIN (see `Worker::round`).
            let event = EpollEvent::new(EpollFlags::EPOLLIN, s.token);
            if let Err(e) = w.poll.add(&*s.socket, event) {
                tracing::error!(worker, error = %e, "cannot watch a media socket");
            }
        }
    }

    /// Gives back sockets bound for a stream that was never handed to a worker: a spare
    /// goes back to the pool (its worker still watches it), a new socket is closed.
    fn unbind(
        &self,
        ports: &mut PortPool,
        sockets: impl IntoIterator<Item = MediaSocket>,
        now: Instant,
    ) {
        for s in sockets {
            if let Some(worker) = s.watched_by {
                ports.keep_spare(s, worker, now);
            }
        }
    }

    fn release(&self, ports: &mut PortPool, session: Session, now: Instant) {
        for (_, stream) in session.streams {
            self.free_stream(ports, session.worker, stream, now);
        }
    }

    /// The last accepted packet into `side`, as an instant on the workers' clock.
    fn last_packet(&self, side: &SideCtl) -> Option<Instant> {
        side.shared
            .last_packet_ms()
            .map(|ms| self.epoch + Duration::from_millis(ms))
    }

    /// Which timeout, if any, has caught session `s` at `now`, and since when its
    /// condition holds.
    fn timeout_of(&self, s: &Session, now: Instant) -> Option<(TimeoutReason, Instant)> {
        let expired = |since: Instant, limit: Option<Duration>| {
            limit.is_some_and(|l| now.saturating_duration_since(since) >= l)
        };
        let c = &self.config;
        if expired(s.created, c.final_timeout) {
            return Some((TimeoutReason::Final, s.created));
        }
        let Some(established) = s.established else {
            // Ringing: only an offer never answered times out.
            return (!s.answered && expired(s.last_signal, c.offer_timeout))
                .then_some((TimeoutReason::Offer, s.last_signal));
        };
        let mut idle_since = established.max(s.last_signal);
        let mut active = s.streams.is_empty();
        for stream in s.streams.values() {
            for (party, side) in stream.sides.iter().enumerate() {
                active |= !stream.silent(party);
                if let Some(t) = self.last_packet(side) {
                    idle_since = idle_since.max(t);
                }
            }
        }
        let (reason, limit) = if active {
            (TimeoutReason::NoMedia, Some(c.timeout))
        } else {
            (TimeoutReason::Silent, c.silent_timeout)
        };
        expired(idle_since, limit).then_some((reason, idle_since))
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
            let now = later(state.clock, Instant::now());
            state.ports.reap();
            // Spares idle past their time to live: their workers let go of them now, and
            // each closes when the last reference goes (which takes it out of the epoll set).
            for spare in state.ports.expire_spares(now) {
                if let Some(w) = self.workers.get(spare.worker) {
                    w.send(Command::Forget { token: spare.token });
                }
            }
            let resting = state.ports.resting_at(now) as u64;
            Totals {
                sessions: state.sessions_total,
                current_sessions: state.sessions.len() as u64,
                ports_in_use: 2 * state.ports.in_use() as u64,
                ports_resting: 2 * resting,
                ports_reused_early: 2 * state.ports.reused_early(),
                spare_sockets: state.ports.spares() as u64,
                timeouts: state.timeouts,
                ..Totals::default()
            }
        };
        for w in &self.workers {
            t.packets_relayed += w.totals.relayed.load(Ordering::Relaxed);
            t.packets_kernel += w.totals.kernel.load(Ordering::Relaxed);
            t.bytes_relayed += w.totals.bytes.load(Ordering::Relaxed);
            t.packets_dropped += w.totals.dropped.load(Ordering::Relaxed);
            t.worker_wakeups += w.totals.wakeups.load(Ordering::Relaxed);
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

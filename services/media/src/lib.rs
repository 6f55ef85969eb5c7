//! Media relay engine: anchors RTP/RTCP for every call (rtpengine-style).
//!
//! The control side ([`Relay`]) takes offers and answers, allocates port pairs, rewrites
//! SDP through `trunkline-sdp` and programs the forwarding table. The forwarding plane is
//! one worker thread per core; each owns the sockets of the streams assigned to it, reads
//! them with `recvmmsg`, applies the latching policy, updates counters it owns and writes
//! the batch out with `sendmmsg`. Control changes reach a worker as commands over a
//! channel plus an eventfd wake-up — never per packet (ARCHITECTURE rule 5). Counters are
//! published to the control side through atomics once per batch.
//!
//! The packet logic (RTP/RTCP parsing, loss, RTT, endpoint learning and latching, port
//! allocation) lives in pure modules ([`rtp`], [`rtcp`], [`latch`], [`ports`]) that take bytes
//! and `now`.
//!
//! Two clocks, kept apart on purpose. The control side takes `now` from its caller with every
//! request (offer, answer, established, delete, query, take_timeouts), so timeouts and port
//! reuse run on whatever clock the caller runs on — a virtual one in tests. The workers, being
//! I/O threads, stamp packets with their own monotonic clock (`Instant::now()`), as
//! milliseconds since the relay's start, and time endpoint learning with it. Where the two
//! meet — how long a stream has been idle — a packet stamp is read as that `Instant` and
//! compared with the caller's `now`: in production both are the one monotonic clock; a caller
//! whose clock runs ahead of it (paused tokio time advanced by a test) sees packets as older,
//! so its timeouts fire on its own time, never later; a `now` before a packet's stamp counts
//! as no idle time at all.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

mod address;
mod interfaces;
mod kernel;
pub mod latch;
pub mod ng;
pub mod ports;
pub mod rtcp;
pub mod rtp;

mod engine;
mod metrics;
mod pool;
mod sched;
mod worker;

pub use address::{unroutable, AddressPolicy};
pub use engine::Relay;
pub use interfaces::Interfaces;
pub use latch::EndpointLearning;
pub use sched::{Scheduling, ThreadPolicy, ThreadPolicyError};

/// The logical name rtpengine gives an `--interface` written without `NAME/`, and the name
/// of the interface [`MediaConfig::single`] makes.
pub const DEFAULT_INTERFACE: &str = "default";

/// Address family of a relay address: ng's `address family` (`IP4`/`IP6`) and the family
/// an interface is picked by when its logical name has an address of each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddressFamily {
    /// IPv4 (`IP4`).
    Ip4,
    /// IPv6 (`IP6`).
    Ip6,
}

impl AddressFamily {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => AddressFamily::Ip4,
            IpAddr::V6(_) => AddressFamily::Ip6,
        }
    }

    /// SDP's and ng's spelling, `IP4`/`IP6` (ASCII case ignored).
    pub fn parse(s: &str) -> Option<Self> {
        if s.eq_ignore_ascii_case("IP4") {
            Some(AddressFamily::Ip4)
        } else if s.eq_ignore_ascii_case("IP6") {
            Some(AddressFamily::Ip6)
        } else {
            None
        }
    }
}

impl std::fmt::Display for AddressFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AddressFamily::Ip4 => "IPv4",
            AddressFamily::Ip6 => "IPv6",
        })
    }
}

/// One local address media can be anchored on: rtpengine's `--interface NAME/IP!ADVERTISED`.
///
/// Several entries may share a logical `name`, one per address family (an IPv4 and an IPv6
/// address both called `external`): ng `direction` names the logical interface and the
/// family of the SDP (or ng `address family`) picks the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MediaInterface {
    /// Logical name, as ng `direction` refers to it.
    pub name: String,
    /// Local address the media sockets bind to.
    pub bind: IpAddr,
    /// Address written into SDP for endpoints to send to (differs from `bind` behind 1:1 NAT).
    pub advertise: IpAddr,
}

impl MediaInterface {
    /// An interface called `name`, bound on `bind`, advertised as `advertise`.
    pub fn new(name: impl Into<String>, bind: IpAddr, advertise: IpAddr) -> Self {
        MediaInterface {
            name: name.into(),
            bind,
            advertise,
        }
    }

    /// The family of its addresses (both are of one family; [`Relay::start`] checks).
    pub fn family(&self) -> AddressFamily {
        AddressFamily::of(self.bind)
    }
}

impl std::fmt::Display for MediaInterface {
    /// rtpengine's `NAME/IP[!ADVERTISED]`, for logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.name, self.bind)?;
        if self.advertise != self.bind {
            write!(f, "!{}", self.advertise)?;
        }
        Ok(())
    }
}

/// Settings of the relay engine; [`Default`] suits a single host and tests.
#[derive(Debug, Clone)]
pub struct MediaConfig {
    /// Where media is anchored. The first entry is the default interface: the one a party
    /// gets when no `direction` names one (rtpengine: "the first interface given on the
    /// command line"). Must not be empty, and a logical name may have at most one address
    /// per family.
    pub interfaces: Vec<MediaInterface>,
    /// Lowest port of the media range (RTP ports are the even ones).
    pub port_min: u16,
    /// Highest port of the media range (an RTP port needs its RTCP port + 1 inside it).
    pub port_max: u16,
    /// Number of forwarding threads; one per core is the design.
    pub workers: usize,
    /// rtpengine's `--timeout`: an established session whose active streams all went this
    /// long without a packet is reported by `take_timeouts` ([`TimeoutReason::NoMedia`]).
    pub timeout: Duration,
    /// rtpengine's `--silent-timeout`: the same for a session whose every stream is on
    /// hold or muted (see [`TimeoutReason::Silent`]); `None`: such a session never times
    /// out for want of media.
    pub silent_timeout: Option<Duration>,
    /// rtpengine's `--offer-timeout`: a session whose offer was never answered, this long
    /// after the last offer ([`TimeoutReason::Offer`]); `None`: never.
    pub offer_timeout: Option<Duration>,
    /// rtpengine's `--final-timeout`: any session this long after it was created,
    /// whatever happens in it ([`TimeoutReason::Final`]); `None` (rtpengine's default):
    /// never.
    pub final_timeout: Option<Duration>,
    /// How long a freed port pair should rest before another call gets it. Pairs are
    /// reused least recently freed first, so they rest as long as the range allows; this
    /// only decides what counts as reused early ([`Totals::ports_reused_early`]) and as
    /// resting. It never blocks an allocation.
    pub port_rest: Duration,
    /// How long a removed stream's sockets are kept bound for reuse by the next call on
    /// their ports (binding new ones is most of what anchoring a call costs); idle longer,
    /// they are closed. `Duration::ZERO`: closed at once.
    pub spare_ttl: Duration,
    /// How a party's real source is learnt when it differs from its signalled address
    /// (rtpengine's `--endpoint-learning`); a request may choose otherwise
    /// ([`Flags::endpoint_learning`]).
    pub endpoint_learning: EndpointLearning,
    /// How long after each signal a source other than the signalled one is only a
    /// candidate (`delayed`, `heuristic`); rtpengine's is 3 s.
    pub learning_window: Duration,
    /// Most m-lines one SDP may carry; a bigger one is refused whole
    /// ([`MediaError::TooManyStreams`]) before anything is allocated.
    pub max_streams: usize,
    /// Most media ports (RTP and RTCP, both sides: 4 per anchored m-line) one call may
    /// hold; an offer that would need more is refused ([`MediaError::TooManyPorts`]).
    pub max_ports_per_call: usize,
    /// Datagrams per `recvmmsg`/`sendmmsg` call.
    pub batch: usize,
    /// `SO_RCVBUF` for each media socket, to absorb bursts while a worker is busy.
    pub recv_buffer: usize,
    /// Scheduling each forwarding thread gives itself at start, so media can be kept ahead
    /// of (or behind) other work on the host; a refusal by the kernel is logged, not fatal.
    pub thread_policy: ThreadPolicy,
    /// Relay the RTP of latched streams inside the kernel (an eBPF program on the
    /// interfaces' ingress) instead of through the workers, as rtpengine's kernel module
    /// does. Needs Linux 6.6+ and `CAP_BPF` + `CAP_NET_ADMIN`; when the kernel refuses,
    /// the relay logs why and forwards in user space.
    pub kernel_forwarding: bool,
}

impl Default for MediaConfig {
    fn default() -> Self {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        MediaConfig {
            interfaces: vec![MediaInterface::new(DEFAULT_INTERFACE, lo, lo)],
            port_min: 30000,
            port_max: 39999,
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            timeout: Duration::from_secs(60),
            silent_timeout: Some(Duration::from_secs(3600)),
            offer_timeout: Some(Duration::from_secs(3600)),
            final_timeout: None,
            port_rest: Duration::from_secs(30),
            spare_ttl: Duration::from_secs(60),
            endpoint_learning: EndpointLearning::Delayed,
            learning_window: Duration::from_millis(latch::LEARNING_WINDOW_MS),
            max_streams: 16,
            max_ports_per_call: 64,
            batch: 32,
            recv_buffer: 1 << 20,
            thread_policy: ThreadPolicy::Inherit,
            kernel_forwarding: false,
        }
    }
}

impl MediaConfig {
    /// The common case — one interface, no names to choose between — with every other
    /// setting at its default: what the node and most tests need.
    pub fn single(bind: IpAddr, advertise: IpAddr) -> Self {
        MediaConfig {
            interfaces: vec![MediaInterface::new(DEFAULT_INTERFACE, bind, advertise)],
            ..MediaConfig::default()
        }
    }
}

/// Per-request switches. They are rtpengine's ng flags one for one (the ng name is given
/// with each), so the ng server fills them in directly and a call actor speaks the same
/// vocabulary as Kamailio's `rtpengine` module.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Flags {
    /// Where the sending party's media goes before it is latched, and which source is
    /// expected from it: its SDP address (ng `trust address`), the IP its signalling came
    /// from (ng `SIP source address`), or the SDP address unless unreachable
    /// ([`AddressPolicy::Auto`], the SBC's rule for callers).
    pub address: AddressPolicy,
    /// ng `received from` (port 0: ng gives none): where the SIP message carrying this SDP
    /// came from, for [`AddressPolicy::Source`] and [`AddressPolicy::Auto`].
    pub received_from: Option<SocketAddr>,
    /// ng `symmetric`: latch onto the real source of packets (also the default when
    /// neither this nor `asymmetric` is given).
    pub symmetric: bool,
    /// ng `asymmetric`: never latch; send to the SDP address, accept from anyone.
    pub asymmetric: bool,
    /// ng `strict source`: accept packets only from the expected source (SDP address
    /// before latching).
    pub strict_source: bool,
    /// ng `media handover`: re-latch when packets start arriving from a new source
    /// (roaming endpoints).
    pub media_handover: bool,
    /// ng `port latching`: once latched, never re-latch, even after a re-offer with a new
    /// address.
    pub port_latching: bool,
    /// ng `ICE` = `pass`: keep ICE attributes in the rewritten SDP.
    pub keep_ice: bool,
    /// ng `rtcp-mux` = `offer`: keep `a=rtcp-mux` toward the other party when this party
    /// offered it (also the default unless `rtcp_mux_demux`).
    pub rtcp_mux_offer: bool,
    /// ng `rtcp-mux` = `demux`: offer the other party separate RTP and RTCP ports even if
    /// this party muxes.
    pub rtcp_mux_demux: bool,
    /// ng `replace` = `origin`: write the relay address into `o=`.
    pub replace_origin: bool,
    /// ng `replace` = `session-connection`: write the relay address into a session-level
    /// `c=`.
    pub replace_session_connection: bool,
    /// ng `direction` (or `from-interface` / `to-interface`): the logical interface facing
    /// the party that sent this SDP (`[0]`: where it sends its media) and the one facing
    /// the party the SDP goes to (`[1]`: whose address the rewritten SDP carries). `None`:
    /// the interface that party already has in this call, else the default (the first
    /// configured). Honoured by offers; an answer keeps what the offer chose. A name not
    /// configured is [`MediaError::UnknownInterface`].
    pub direction: [Option<String>; 2],
    /// ng `address family`: the family of the relay address written into the rewritten
    /// offer, when the interface facing the receiving party has one of each. `None`: that
    /// side's family so far, else the family of the sender's SDP address.
    pub address_family: Option<AddressFamily>,
    /// ng `endpoint-learning`: how the sending party's source is learnt; `None`: the
    /// relay's [`MediaConfig::endpoint_learning`].
    pub endpoint_learning: Option<EndpointLearning>,
}

/// Traffic of one kind — RTP or RTCP — that one party sent to the relay on one stream.
/// The kinds are kept apart because they answer different questions: RTP is the media
/// (did audio flow, how much was lost), RTCP the reports about it; rtpengine reports them
/// apart too (`totals` → `RTP`/`RTCP`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PacketStats {
    /// Packets accepted from this party.
    pub packets: u64,
    /// Bytes accepted from this party.
    pub bytes: u64,
    /// Packets dropped: wrong source, no destination, truncated, send errors.
    pub errors: u64,
    /// Milliseconds since the last accepted packet of this kind.
    pub last_packet_ms_ago: Option<u64>,
}

/// What one party sent to the relay on one stream, and what the relay knows of it.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StreamStats {
    /// RTP from this party.
    pub rtp: PacketStats,
    /// RTCP from this party, on the RTCP port or multiplexed on the RTP port (the relay
    /// tells them apart by packet type, RFC 5761 §4).
    pub rtcp: PacketStats,
    /// RTP packets missing in this party's sequence numbers.
    pub rtp_lost: u64,
    /// Fraction lost (1/256) from the last RTCP report block this party sent about the
    /// other party's media.
    pub rtcp_fraction_lost: Option<u8>,
    /// Interarrival jitter (timestamp units) from that same report block.
    pub rtcp_jitter: Option<u32>,
    /// Round trip relay → this party → relay, from LSR/DLSR of its reports on SRs the
    /// relay forwarded to it.
    pub rtt_ms: Option<f64>,
    /// SSRC of this party's latest RTP packet.
    pub ssrc: Option<u32>,
    /// The latched RTP source of this party.
    pub latched: Option<SocketAddr>,
    /// The latched RTCP source of this party (its RTP source when it muxes).
    pub latched_rtcp: Option<SocketAddr>,
    /// Where this party said, in SDP, it receives RTP (the SIP source's IP replaces the
    /// SDP's unless the address is trusted); the destination until it latches.
    pub advertised: Option<SocketAddr>,
    /// Where this party receives RTCP, by the same rules (equal to `advertised` when muxed).
    pub advertised_rtcp: Option<SocketAddr>,
    /// This party sends and receives RTCP on its RTP port (`a=rtcp-mux`).
    pub rtcp_mux: bool,
    /// The relay RTP port this party sends to (its RTCP port is one above).
    pub local_port: u16,
    /// The local address that port is bound on (its interface's bind address).
    pub local_address: Option<IpAddr>,
    /// The logical name of the interface facing this party.
    pub interface: String,
}

impl StreamStats {
    /// Milliseconds since the last accepted packet of either kind from this party.
    pub fn last_packet_ms_ago(&self) -> Option<u64> {
        match (self.rtp.last_packet_ms_ago, self.rtcp.last_packet_ms_ago) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One m-line of a call: both parties' counters.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct StreamPairStats {
    /// m-line position (0-based).
    pub index: usize,
    /// Media kind from the m-line (`audio`, `video`, ...).
    pub media: String,
    /// Transport protocol from the last offer's m-line (`RTP/AVP`, ...).
    pub protocol: String,
    /// What the original offerer sent.
    pub offerer: StreamStats,
    /// What the original answerer sent.
    pub answerer: StreamStats,
}

/// A call's relay state, for `query`, `delete` and the ng protocol.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct CallStats {
    /// The call's Call-ID.
    pub call_id: String,
    /// Milliseconds since the first offer.
    pub created_ms_ago: u64,
    /// Milliseconds since the last offer/answer.
    pub last_signal_ms_ago: u64,
    /// Offerer's tag, then the answerer's if known.
    pub tags: Vec<String>,
    /// One entry per active m-line, by index.
    pub streams: Vec<StreamPairStats>,
}

/// Relay-wide counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    /// Sessions created since start.
    pub sessions: u64,
    /// Sessions existing now.
    pub current_sessions: u64,
    /// Packets sent out by the relay.
    pub packets_relayed: u64,
    /// Bytes sent out by the relay.
    pub bytes_relayed: u64,
    /// Of `packets_relayed`, those the kernel fast path relayed (counted once a second).
    pub packets_kernel: u64,
    /// Packets received and not relayed.
    pub packets_dropped: u64,
    /// Ports (RTP and RTCP) bound for calls.
    pub ports_in_use: u64,
    /// Free ports freed less than [`MediaConfig::port_rest`] ago.
    pub ports_resting: u64,
    /// Ports (RTP and RTCP) handed to a call before they had rested
    /// [`MediaConfig::port_rest`]: the range is small for the call rate.
    pub ports_reused_early: u64,
    /// Sockets of ended calls kept bound for the next call on their ports
    /// ([`MediaConfig::spare_ttl`]).
    pub spare_sockets: u64,
    /// Times the control side woke a forwarding thread to apply its commands. Commands
    /// are batched (a new stream's first packet wakes its thread anyway), so this grows by
    /// a few per hundred calls; one per call or more means the batching is lost.
    pub worker_wakeups: u64,
    /// Timeouts reported, by reason.
    pub timeouts: TimeoutCounts,
}

/// Timeouts reported since start, by reason (rtpengine's `timeoutsessions`,
/// `silenttimeoutsessions`, `offertimeoutsessions`, `finaltimeoutsessions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TimeoutCounts {
    /// [`TimeoutReason::NoMedia`].
    pub no_media: u64,
    /// [`TimeoutReason::Silent`].
    pub silent: u64,
    /// [`TimeoutReason::Offer`].
    pub offer: u64,
    /// [`TimeoutReason::Final`].
    pub final_timeout: u64,
}

impl TimeoutCounts {
    /// All reasons together.
    pub fn total(&self) -> u64 {
        self.no_media + self.silent + self.offer + self.final_timeout
    }

    /// The count of `reason`.
    pub fn of(&self, reason: TimeoutReason) -> u64 {
        match reason {
            TimeoutReason::NoMedia => self.no_media,
            TimeoutReason::Silent => self.silent,
            TimeoutReason::Offer => self.offer,
            TimeoutReason::Final => self.final_timeout,
        }
    }

    pub(crate) fn add(&mut self, reason: TimeoutReason) {
        let slot = match reason {
            TimeoutReason::NoMedia => &mut self.no_media,
            TimeoutReason::Silent => &mut self.silent,
            TimeoutReason::Offer => &mut self.offer,
            TimeoutReason::Final => &mut self.final_timeout,
        };
        *slot += 1;
    }
}

/// Which of rtpengine's timeouts ended a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum TimeoutReason {
    /// `--timeout`: the session is established and none of its active streams (those
    /// whose sender may send, toward a party that accepts media) carried a packet for
    /// [`MediaConfig::timeout`].
    NoMedia,
    /// `--silent-timeout`: every stream of the established session is on hold or muted —
    /// its sender said it does not send (`recvonly`, `inactive`) or the other party said it
    /// does not receive (`sendonly`, `inactive`, `c=0.0.0.0`) — and none carried a packet for
    /// [`MediaConfig::silent_timeout`].
    Silent,
    /// `--offer-timeout`: the offer was never answered, for
    /// [`MediaConfig::offer_timeout`].
    Offer,
    /// `--final-timeout`: the session is older than [`MediaConfig::final_timeout`].
    Final,
}

impl TimeoutReason {
    /// rtpengine's name for it (its Prometheus `reason` label).
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutReason::NoMedia => "timeout",
            TimeoutReason::Silent => "silent_timeout",
            TimeoutReason::Offer => "offer_timeout",
            TimeoutReason::Final => "final_timeout",
        }
    }
}

impl std::fmt::Display for TimeoutReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A session one of the timeouts caught; [`Relay::take_timeouts`] reports each once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut {
    /// The call.
    pub call_id: String,
    /// Which timeout fired.
    pub reason: TimeoutReason,
    /// How long the condition had held: idle time for `NoMedia`/`Silent`, time since the
    /// offer for `Offer`, age for `Final`.
    pub elapsed: Duration,
}

/// Why a relay request failed. Says which input was wrong; the ng server turns it into
/// rtpengine's wording for an `error-reason`.
#[derive(Debug, thiserror::Error)]
pub enum MediaError {
    /// The SDP body could not be parsed.
    #[error("invalid SDP: {0}")]
    Sdp(#[from] trunkline_sdp::SdpError),
    /// Every port pair in the range is in use.
    #[error("no free media ports in the configured range")]
    NoPorts,
    /// The SDP has more m-lines than [`MediaConfig::max_streams`]; nothing was allocated.
    #[error("SDP has {count} m-lines, more than the {max} allowed")]
    TooManyStreams {
        /// m-lines in the SDP.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// The call would hold more ports than [`MediaConfig::max_ports_per_call`]; nothing
    /// was allocated.
    #[error("the call would hold {needed} media ports, more than the {max} allowed per call")]
    TooManyPorts {
        /// Ports the call would hold with this offer.
        needed: usize,
        /// The limit.
        max: usize,
    },
    /// No session with this Call-ID.
    #[error("unknown call-id: {0}")]
    UnknownCall(String),
    /// The tag matches neither party of the session.
    #[error("unknown tag: {0}")]
    UnknownTag(String),
    /// A socket could not be created or bound.
    #[error("media socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The configuration cannot work.
    #[error("invalid media configuration: {0}")]
    Config(String),
    /// A request named a logical interface that is not configured (ng `direction`).
    #[error("unknown media interface: {0}")]
    UnknownInterface(String),
    /// The relay was shut down.
    #[error("media relay is shut down")]
    ShutDown,
}

impl MediaError {
    /// Whether the fault is in the SDP the party sent (unparseable, or asking for more
    /// than a call may have): SIP answers it with 488, where other errors are the
    /// relay's (503).
    pub fn is_offer_fault(&self) -> bool {
        matches!(
            self,
            MediaError::Sdp(_)
                | MediaError::TooManyStreams { .. }
                | MediaError::TooManyPorts { .. }
        )
    }
}

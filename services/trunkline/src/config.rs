//! The node's one typed configuration (ARCHITECTURE rule 8).
//!
//! Layers, later ones winning: embedded defaults ([`Config::default`]), the TOML file given with
//! `--config` (optional), then `TRUNKLINE_*` environment variables where `__` separates nesting
//! levels (`TRUNKLINE_SIP__TIMERS__T1_MS=250`). Every struct rejects unknown keys so that a typo
//! fails loudly at start-up instead of silently running on a default. After loading,
//! `Config::problems` checks what types alone cannot, and names the offending key.
//!
//! This is the only module that reads the process environment.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context as _};
use figment::error::Kind;
use figment::providers::{Env, Format as _, Serialized, Toml};
use figment::{Figment, Source};
use serde::{Deserialize, Serialize};
use trunkline_media::{
    EndpointLearning, MediaConfig, MediaInterface, Scheduling, ThreadPolicy, ThreadPolicyError,
    DEFAULT_INTERFACE,
};
use trunkline_sip::Host;
use trunkline_transport::{ListenerConfig, TransportConfig};

/// Prefix of the environment variables that override the file.
const ENV_PREFIX: &str = "TRUNKLINE_";

/// Whether `TRUNKLINE_<key>` names a configuration key. Every key lives in a section
/// (`TRUNKLINE_NODE__ID`), except the `trunks` list; other `TRUNKLINE_*` variables
/// (`TRUNKLINE_CONFIG`, read by the CLI, or a test harness's `TRUNKLINE_BIN`) are not
/// configuration and must not be rejected as unknown keys.
fn is_config_env_key(key: &str) -> bool {
    key.contains("__") || key.eq_ignore_ascii_case("trunks")
}

/// The whole node configuration. Every key is optional; see [`Config::default`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Identity of this node.
    pub node: NodeConfig,
    /// SIP listeners, limits and timers.
    pub sip: SipConfig,
    /// The Prometheus scrape endpoint.
    pub metrics: MetricsConfig,
    /// The gRPC admin API.
    pub admin: AdminConfig,
    /// Membership of a cluster (etcd); absent: standalone.
    pub cluster: ClusterConfig,
    /// Log filter and format.
    pub log: LogConfig,
    /// Graceful shutdown.
    pub shutdown: ShutdownConfig,
    /// Static SIP trunks (next hops). In a cluster these come from etcd instead.
    pub trunks: Vec<TrunkConfig>,
    /// Static routing: the default trunk.
    pub routing: RoutingConfig,
    /// `[[routes]]`: prefix routes on the dialled number, longest prefix first.
    pub routes: Vec<RouteConfig>,
    /// The media relay that anchors RTP of every call.
    pub media: MediaSection,
    /// How trunks named by DNS are resolved.
    pub dns: DnsSection,
}

/// `[dns]`: the name servers asked for trunks named by DNS (RFC 3263), and how long a
/// target that failed a call is avoided.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsSection {
    /// `ip:port` of name servers (UDP); empty: the system's (`/etc/resolv.conf`).
    pub servers: Vec<SocketAddr>,
    /// A target that failed a call (503, no answer, connection refused) is passed over
    /// by every call for this long, while its trunk has others.
    pub avoid_secs: u64,
    /// A lookup that failed is tried again after this long; the last answer stays in use.
    pub retry_secs: u64,
}

impl Default for DnsSection {
    fn default() -> Self {
        Self {
            servers: Vec::new(),
            avoid_secs: 30,
            retry_secs: 5,
        }
    }
}

impl DnsSection {
    pub fn call_config(&self) -> trunkline_call::dns::DnsConfig {
        trunkline_call::dns::DnsConfig {
            servers: self.servers.clone(),
            avoid: Duration::from_secs(self.avoid_secs),
            retry: Duration::from_secs(self.retry_secs.max(1)),
        }
    }
}

/// `[media]`: the node's RTP relay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaSection {
    /// Anchor media at all; a trunk can also opt out with `anchor_media = false`.
    pub enabled: bool,
    /// Address the relay's RTP sockets bind to.
    pub bind: IpAddr,
    /// Address written into rewritten SDP; defaults to `bind`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<IpAddr>,
    /// RTP port range (even ports carry RTP, the next odd one RTCP). An audio call holds
    /// four ports (an RTP/RTCP pair toward each leg); ports are reused least recently freed
    /// first, so the range bounds concurrent calls, not the call rate.
    pub port_min: u16,
    pub port_max: u16,
    /// An answered call whose active streams carry no packet for this long is hung up with
    /// BYE on both legs (rtpengine's `--timeout`). Never while the callee rings.
    pub timeout_secs: u64,
    /// The same for an answered call whose every stream is on hold or muted (rtpengine's
    /// `--silent-timeout`); 0: never.
    pub silent_timeout_secs: u64,
    /// Any call this long after it started is hung up, whatever happens in it (rtpengine's
    /// `--final-timeout`); 0: never.
    pub final_timeout_secs: u64,
    /// How a party's real source is learnt when it is not where signalling said (behind
    /// NAT): rtpengine's `--endpoint-learning`, `delayed`, `heuristic`, `immediate` or `off`.
    /// In every mode a stranger never takes a call's media from a party that sends from its
    /// signalled address (RTP Bleed).
    pub endpoint_learning: EndpointLearning,
    /// Most m-lines one SDP may carry; more is answered 488.
    pub max_streams: usize,
    /// Most media ports one call may hold (4 per anchored m-line); an offer needing more is
    /// answered 488.
    pub max_ports_per_call: usize,
    /// Seconds an ended call's sockets stay bound for the next call on their ports (0:
    /// closed at once). Binding fresh sockets is most of what anchoring a call costs; idle
    /// spares hold a file descriptor each and no packets.
    pub spare_socket_secs: u64,
    /// Forwarding threads; 0 means one per core.
    pub workers: usize,
    /// Scheduling policy the forwarding threads give themselves, named as rtpengine's
    /// `--scheduling` so a tuned rtpengine setup carries over.
    pub scheduling: Scheduling,
    /// rtpengine's `--priority`: the real-time priority (1-99) for `fifo`/`rr`, else the
    /// threads' nice value (-20..19); unset leaves the nice value alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// Relay latched RTP inside the kernel (an eBPF program, as rtpengine's kernel module
    /// but with no module to build): the workers set each stream up and keep RTCP, the
    /// kernel moves the packets. Needs Linux 6.6+ and CAP_BPF + CAP_NET_ADMIN; refused by
    /// the kernel, it is a warning at start and the workers forward everything.
    pub kernel_forwarding: bool,
    /// The interface callers' media (the A leg) is anchored on; unset: the default one
    /// (`bind`/`advertise`). An SBC usually faces callers on an access network and trunks on
    /// a carrier network, each reachable only on its own address.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string::deserialize_option"
    )]
    pub access_interface: Option<String>,
    /// `[[media.interfaces]]`: named interfaces beside the default one, which `bind` and
    /// `advertise` define and which is called `default` (as rtpengine's unnamed
    /// `--interface`). `access_interface` and a trunk's `media_interface` pick among them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<MediaInterfaceConfig>,
}

/// One `[[media.interfaces]]` entry: a named address the relay can anchor a leg's media on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaInterfaceConfig {
    /// Unique name, referred to by `media.access_interface` and `trunks[].media_interface`.
    #[serde(deserialize_with = "lenient_string::deserialize")]
    pub name: String,
    /// Address the relay's sockets for legs on this interface bind to.
    pub bind: IpAddr,
    /// Address written into SDP sent to that leg (behind 1:1 NAT); defaults to `bind`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<IpAddr>,
}

impl MediaSection {
    /// The policy the relay applies; [`Config::load`] has already rejected pairs for which
    /// this fails, so after loading it is only an error for a hand-built section.
    pub fn thread_policy(&self) -> Result<ThreadPolicy, ThreadPolicyError> {
        ThreadPolicy::new(self.scheduling, self.priority)
    }

    /// The relay's settings from this section (workers: `0` is one per core); `thread_policy`
    /// is [`MediaSection::thread_policy`], checked by the caller.
    pub fn relay_config(&self, thread_policy: ThreadPolicy) -> MediaConfig {
        let off_if_zero = |secs: u64| (secs > 0).then(|| Duration::from_secs(secs));
        MediaConfig {
            port_min: self.port_min,
            port_max: self.port_max,
            workers: self.workers,
            timeout: Duration::from_secs(self.timeout_secs),
            silent_timeout: off_if_zero(self.silent_timeout_secs),
            final_timeout: off_if_zero(self.final_timeout_secs),
            endpoint_learning: self.endpoint_learning,
            max_streams: self.max_streams,
            max_ports_per_call: self.max_ports_per_call,
            spare_ttl: Duration::from_secs(self.spare_socket_secs),
            kernel_forwarding: self.kernel_forwarding,
            thread_policy,
            // The default interface first: legs the configuration names no interface for
            // get it.
            interfaces: self.relay_interfaces(),
            ..MediaConfig::default()
        }
    }

    /// The relay's interfaces: the default one (`bind`/`advertise`, named
    /// [`DEFAULT_INTERFACE`]) first, because the relay gives the first to every leg no
    /// name was chosen for; then `[[media.interfaces]]` in order.
    pub fn relay_interfaces(&self) -> Vec<MediaInterface> {
        let default = MediaInterface::new(
            DEFAULT_INTERFACE,
            self.bind,
            self.advertise.unwrap_or(self.bind),
        );
        std::iter::once(default)
            .chain(self.interfaces.iter().map(|i| {
                MediaInterface::new(i.name.clone(), i.bind, i.advertise.unwrap_or(i.bind))
            }))
            .collect()
    }

    /// Whether `name` is an interface of the relay (`default` included).
    fn has_interface(&self, name: &str) -> bool {
        name == DEFAULT_INTERFACE || self.interfaces.iter().any(|i| i.name == name)
    }

    /// Every interface name once, for problem messages that list what could have been meant.
    fn interface_names(&self) -> String {
        let mut names = vec![DEFAULT_INTERFACE];
        for i in &self.interfaces {
            if !i.name.trim().is_empty() && !names.contains(&i.name.as_str()) {
                names.push(&i.name);
            }
        }
        names.join(", ")
    }
}

impl Default for MediaSection {
    fn default() -> Self {
        Self {
            enabled: true,
            bind: IpAddr::from([127, 0, 0, 1]),
            advertise: None,
            port_min: 30000,
            port_max: 39999,
            timeout_secs: 60,
            silent_timeout_secs: 3600,
            final_timeout_secs: 0,
            endpoint_learning: EndpointLearning::Delayed,
            max_streams: 16,
            max_ports_per_call: 64,
            spare_socket_secs: 60,
            workers: 0,
            scheduling: Scheduling::Default,
            priority: None,
            kernel_forwarding: true,
            access_interface: None,
            interfaces: Vec::new(),
        }
    }
}

/// More runtime threads than any machine a node runs on has cores: a typo, not a setting.
const MAX_WORKER_THREADS: usize = 1024;

/// `[node]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Short id (1-16 of `[a-z0-9]`) embedded in every Call-ID, tag and branch this node
    /// generates, so any node can route a stray in-dialog message to its owner (rule 3).
    #[serde(deserialize_with = "lenient_string::deserialize")]
    pub id: String,
    /// Threads of the async runtime that carries signalling, the admin API and the
    /// cluster (the media relay's forwarding threads are `media.workers`); 0: tokio's
    /// default, `TOKIO_WORKER_THREADS` or else one per CPU the process may use. Fewer threads cost less CPU per call at low and middling rates
    /// (a second thread is woken to share each burst of work and mostly finds none), more
    /// carry more calls per second at the top: see the README's figures.
    pub worker_threads: usize,
    /// Scheduling policy of those threads, named as rtpengine's `--scheduling` (and as
    /// `media.scheduling`). `batch` by default: the runtime wakes a second thread to share
    /// a burst of work, and a woken thread of a normal policy preempts the one that woke
    /// it on the same core (or the SIP peer it just sent to), which costs context switches
    /// and no throughput. `SCHED_BATCH` threads do not preempt on wake-up; they are still
    /// time-shared fairly. SIP's timers are hundreds of milliseconds, so the few
    /// milliseconds a woken thread may wait under contention do not matter, while media
    /// forwarding (its own threads, `media.scheduling`) keeps the default policy.
    pub scheduling: Scheduling,
    /// As `media.priority`, for these threads: a nice value (-20..19), or the real-time
    /// priority (1-99) `fifo`/`rr` need; unset leaves the nice value alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            id: "n1".to_owned(),
            worker_threads: 0,
            scheduling: Scheduling::Batch,
            priority: None,
        }
    }
}

/// `[sip]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SipConfig {
    /// UDP sockets: `"IP:PORT"` or `{ listen = "IP:PORT", advertise = "HOST" }`.
    pub udp: Vec<ListenEntry>,
    /// TCP listeners, in the same two forms.
    pub tcp: Vec<ListenEntry>,
    /// TLS listeners (SIP over TLS), in the same two forms; they serve `tls_cert_file`.
    /// TLS connections share the `tcp_*` limits and timeouts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tls: Vec<ListenEntry>,
    /// The node's certificate chain (PEM, leaf first) for the TLS listeners; reloaded
    /// when the file changes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM); reloaded with the certificate.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<std::path::PathBuf>,
    /// CAs that sign the client certificates TLS peers may present; set, the node asks
    /// for one (a trunk with `tls.require_client_cert` must present one for its name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<std::path::PathBuf>,
    /// Refuse every TLS client without a certificate from `tls_client_ca_file`.
    pub tls_require_client_cert: bool,
    /// CAs the node trusts for servers it connects to, where the trunk names none;
    /// unset: the system's bundle.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<std::path::PathBuf>,
    /// A TLS handshake not done within this many seconds closes the connection.
    pub tls_handshake_timeout_secs: u64,
    /// How often the certificate files are checked for a change.
    pub tls_reload_secs: u64,
    /// Address written into our Via, Contact and From/To URIs for every listener that names
    /// no `advertise` of its own; when absent, each listener's own IP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<IpAddr>,
    /// Largest SIP message accepted or sent, in bytes; bounds every buffer before parsing
    /// (rule 6). Also the UDP datagram limit, hence at most 65535.
    pub max_message_bytes: usize,
    /// Close a TCP connection after this many seconds without traffic.
    pub tcp_idle_timeout_secs: u64,
    /// Send a CRLFCRLF keep-alive (RFC 5626) this often on TCP and TLS connections the
    /// node opened (to trunks); a peer that has answered one and stops answering for
    /// 10 s has its connection closed. 0: no keep-alives.
    pub tcp_keepalive_secs: u64,
    /// Drop a TCP connection whose partial message has not completed within this many seconds
    /// (slow-loris protection).
    pub tcp_partial_timeout_secs: u64,
    /// Cap on accepted TCP connections; beyond it new ones are closed at accept.
    pub tcp_max_inbound: usize,
    /// Cap on TCP connections we open toward trunks and peers; beyond it the send fails
    /// (and the call fails over as for a 503).
    pub tcp_max_outbound: usize,
    /// Cap on accepted TCP connections from one source IP.
    pub tcp_max_per_source: usize,
    /// Bytes one TCP/TLS connection may have waiting to be written: a peer that stops
    /// reading cannot make the node hold more for it (sends past it fail at once, and a
    /// call gets 503). At least `max_message_bytes`.
    pub tcp_send_queue_bytes: usize,
    /// Max-Forwards we set on requests we originate.
    pub max_forwards: u8,
    /// Calls the node carries at once; new INVITEs beyond get 503 with Retry-After.
    pub max_calls: usize,
    /// Percentage of a UDP socket's receive buffer in use past which the node counts as
    /// behind its input and answers new INVITEs 503 with Retry-After until the queue
    /// drains, so the calls in progress finish rather than the kernel dropping their
    /// messages (0: never refuse for this).
    pub udp_congestion_percent: u8,
    /// Answer UDP requests at their source port even without `rport` (RFC 3581 for
    /// everyone), so callers behind NAT hear us.
    pub force_rport: bool,
    /// RFC 3261 timers.
    pub timers: TimersConfig,
    /// Networks of the callers the node serves (CIDRs, addresses, or `ip:port`). An
    /// INVITE is taken only from here or from a trunk's `sources`; anything else gets 403
    /// (or nothing, see `reply_to_unknown`) and costs no call state. Loopback by default,
    /// so a first run on one machine works; list your access networks to open it up.
    pub access_sources: Vec<String>,
    /// Answer requests from unknown sources with 403; `false`: drop them unanswered, so
    /// scanners cannot even tell a SIP service is there.
    pub reply_to_unknown: bool,
    /// What the caller hears when a trunk answers 503: relayed as it is, with the
    /// trunk's Retry-After, it would make the caller's side take this whole node out of
    /// service.
    pub trunk_503_status: u16,
    /// Hang up answered calls after this many seconds (0: no limit).
    pub max_call_duration_secs: u64,
    /// The per-source request limit and block (as Kamailio's pike).
    pub source_limit: SourceLimitSection,
    /// Digest authentication (trunks with `[trunks.auth]`).
    pub auth: AuthSection,
    /// A trunk's final answers (408 also for a timeout, 503 for a transport error)
    /// after which an unanswered call goes on to the next trunk of its route: codes
    /// ("408") or classes ("5xx"). Never a 2xx; 486, 603, 404 end the call unless
    /// listed here.
    pub failover_statuses: Vec<String>,
}

/// `[sip.source_limit]`: a source address that sends more than `max_requests` messages
/// within `window_secs` is blocked for `block_secs`: everything it sends is dropped
/// unread. Trunks are never counted (their `limits` bound them); sources no rule trusts
/// always are, the access networks only with `include_access`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SourceLimitSection {
    /// Messages per window from one source; 0 switches the limit off.
    pub max_requests: u32,
    pub window_secs: u64,
    pub block_secs: u64,
    /// Count the access networks' sources too.
    pub include_access: bool,
    /// Source addresses tracked at most (memory stays bounded under a spoofed flood).
    pub max_sources: usize,
    /// Failed digest authentications that block a source for `block_secs` (0: never).
    pub max_auth_failures: u32,
}

impl Default for SourceLimitSection {
    fn default() -> Self {
        Self {
            // A stranger gets nothing but 403s (or silence): a few dozen is plenty to
            // see them, more is a scanner or a flood.
            max_requests: 32,
            window_secs: 2,
            block_secs: 60,
            include_access: false,
            max_sources: 65_536,
            max_auth_failures: 5,
        }
    }
}

impl SourceLimitSection {
    pub fn call_config(&self) -> trunkline_call::SourceLimitConfig {
        trunkline_call::SourceLimitConfig {
            max_requests: self.max_requests,
            window: std::time::Duration::from_secs(self.window_secs),
            block: std::time::Duration::from_secs(self.block_secs),
            max_sources: self.max_sources,
            include_access: self.include_access,
            max_auth_failures: self.max_auth_failures,
        }
    }
}

impl Default for SipConfig {
    fn default() -> Self {
        let loopback = SocketAddr::from(([127, 0, 0, 1], 5060));
        Self {
            udp: vec![loopback.into()],
            tcp: vec![loopback.into()],
            tls: Vec::new(),
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_require_client_cert: false,
            tls_ca_file: None,
            tls_handshake_timeout_secs: 5,
            tls_reload_secs: 10,
            advertise: None,
            max_message_bytes: 16384,
            tcp_idle_timeout_secs: 300,
            tcp_keepalive_secs: 30,
            tcp_partial_timeout_secs: 10,
            tcp_max_inbound: 4096,
            tcp_max_outbound: 1024,
            tcp_max_per_source: 64,
            tcp_send_queue_bytes: 512 * 1024,
            max_forwards: 70,
            max_calls: 50_000,
            udp_congestion_percent: 75,
            force_rport: true,
            timers: TimersConfig::default(),
            access_sources: vec!["127.0.0.0/8".into(), "::1".into()],
            reply_to_unknown: true,
            trunk_503_status: 500,
            max_call_duration_secs: 0,
            source_limit: SourceLimitSection::default(),
            auth: AuthSection::default(),
            failover_statuses: vec!["408".into(), "5xx".into()],
        }
    }
}

// Accessors for the wiring in app.rs (transport and call configuration).
#[allow(dead_code)]
impl SipConfig {
    /// `failover_statuses` as the status codes they cover.
    pub fn failover_codes(&self) -> Vec<u16> {
        status_codes(&self.failover_statuses)
    }

    /// The transport layer's settings. `tcp_connect_timeout` and `udp_recv_buffer` have no
    /// key yet and keep the transport crate's defaults (add keys here when operators need them).
    /// Each listener advertises its own `advertise`, else `sip.advertise`, else its IP.
    pub fn transport_config(&self) -> TransportConfig {
        let listeners = |entries: &[ListenEntry]| {
            entries
                .iter()
                .map(|e| ListenerConfig {
                    addr: e.listen,
                    advertise: e.advertise_host().or(self.advertise.map(Host::from)),
                })
                .collect()
        };
        TransportConfig {
            udp: listeners(&self.udp),
            tcp: listeners(&self.tcp),
            tls: listeners(&self.tls),
            max_message_bytes: self.max_message_bytes,
            tcp_idle_timeout: self.tcp_idle_timeout(),
            tcp_partial_timeout: self.tcp_partial_timeout(),
            tcp_keepalive: (self.tcp_keepalive_secs > 0)
                .then(|| Duration::from_secs(self.tcp_keepalive_secs)),
            tcp_max_inbound: self.tcp_max_inbound,
            tcp_max_outbound: self.tcp_max_outbound,
            tcp_max_per_source: self.tcp_max_per_source,
            tcp_send_queue_bytes: self.tcp_send_queue_bytes,
            udp_congestion_percent: self.udp_congestion_percent,
            ..TransportConfig::default()
        }
    }

    /// One IP for headers where the listener is not known: `advertise`, else the first
    /// listener (UDP, then TCP) with an IP to offer (its advertised IP, else its listen IP
    /// unless that is unspecified). `None` when every listener is advertised by name only.
    pub fn advertise_ip(&self) -> Option<IpAddr> {
        self.advertise.or_else(|| {
            self.udp
                .iter()
                .chain(&self.tcp)
                .chain(&self.tls)
                .find_map(|e| {
                    match e.advertise_host() {
                        Some(host) => host.ip(),
                        None => Some(e.listen.ip()),
                    }
                    .filter(|ip| !ip.is_unspecified())
                })
        })
    }

    /// `tcp_idle_timeout_secs` as a `Duration`.
    pub fn tcp_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.tcp_idle_timeout_secs)
    }

    /// `tcp_partial_timeout_secs` as a `Duration`.
    pub fn tcp_partial_timeout(&self) -> Duration {
        Duration::from_secs(self.tcp_partial_timeout_secs)
    }
}

/// One `sip.udp` / `sip.tcp` entry: a socket to bind and, optionally, the host peers reach
/// it at (1:1 NAT, a DNS name, a wildcard bind). Written as `"IP:PORT"` or as
/// `{ listen = "IP:PORT", advertise = "HOST" }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenEntry {
    /// Address to bind.
    pub listen: SocketAddr,
    /// Host or IP written into Via and Contact for messages through this socket; validated
    /// at load (see [`ListenEntry::advertise_host`]).
    pub advertise: Option<String>,
}

impl ListenEntry {
    /// `advertise` as a host; `None` when absent or (only in a configuration that did not
    /// pass [`Config::load`]) invalid.
    pub fn advertise_host(&self) -> Option<Host> {
        self.advertise.as_deref().and_then(Host::parse)
    }
}

/// The short form, `"IP:PORT"`.
impl std::str::FromStr for ListenEntry {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        s.trim()
            .parse::<SocketAddr>()
            .map(ListenEntry::from)
            .map_err(|_| format!("{s:?} is not an IP:PORT"))
    }
}

impl From<SocketAddr> for ListenEntry {
    fn from(listen: SocketAddr) -> Self {
        ListenEntry {
            listen,
            advertise: None,
        }
    }
}

/// The table form of a [`ListenEntry`], with unknown keys rejected like everywhere else.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListenTable {
    #[serde(deserialize_with = "listen_addr")]
    listen: SocketAddr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    advertise: Option<String>,
}

/// `listen` of the table form, with the same message as the short form.
fn listen_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    text.parse::<ListenEntry>()
        .map(|e| e.listen)
        .map_err(serde::de::Error::custom)
}

impl Serialize for ListenEntry {
    /// The short string form when there is nothing to advertise, so the effective
    /// configuration reads like the file it came from.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match &self.advertise {
            None => s.collect_str(&self.listen),
            Some(advertise) => ListenTable {
                listen: self.listen,
                advertise: Some(advertise.clone()),
            }
            .serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for ListenEntry {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::{Error, MapAccess, Visitor};

        struct EntryVisitor;

        impl<'de> Visitor<'de> for EntryVisitor {
            type Value = ListenEntry;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("\"IP:PORT\" or { listen = \"IP:PORT\", advertise = \"HOST\" }")
            }

            fn visit_str<E: Error>(self, v: &str) -> Result<ListenEntry, E> {
                v.parse().map_err(E::custom)
            }

            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<ListenEntry, A::Error> {
                let table =
                    ListenTable::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(ListenEntry {
                    listen: table.listen,
                    advertise: table.advertise,
                })
            }
        }

        d.deserialize_any(EntryVisitor)
    }
}

/// `[sip.timers]`: RFC 3261 §17 base timers, from which B, F, H, J… are derived.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimersConfig {
    /// T1, the RTT estimate (RFC default 500 ms).
    pub t1_ms: u64,
    /// T2, the cap on non-INVITE and INVITE-response retransmit intervals (RFC default 4 s).
    pub t2_ms: u64,
    /// T4, how long the network may hold a message (RFC default 5 s).
    pub t4_ms: u64,
    /// Cancel a ringing B-leg after this many seconds without an answer.
    pub no_answer_secs: u64,
}

impl Default for TimersConfig {
    fn default() -> Self {
        Self {
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            no_answer_secs: 180,
        }
    }
}

// Accessors for the wiring in app.rs (transport and call configuration).
#[allow(dead_code)]
impl TimersConfig {
    /// T1 as a `Duration`.
    pub fn t1(&self) -> Duration {
        Duration::from_millis(self.t1_ms)
    }
    /// T2 as a `Duration`.
    pub fn t2(&self) -> Duration {
        Duration::from_millis(self.t2_ms)
    }
    /// T4 as a `Duration`.
    pub fn t4(&self) -> Duration {
        Duration::from_millis(self.t4_ms)
    }
    /// The no-answer timeout as a `Duration`.
    pub fn no_answer(&self) -> Duration {
        Duration::from_secs(self.no_answer_secs)
    }
}

/// `[metrics]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `/metrics` and `/health` are served; the empty string disables the endpoint.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Where the gRPC admin API (node, calls, trunks, health, reflection) listens; the
    /// empty string disables it. Beyond loopback only with authentication (tokens or
    /// client certificates): whoever reaches an open API can drain the node.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// `WatchCalls` streams open at once; one more gets RESOURCE_EXHAUSTED. Each costs a
    /// task and a bounded queue, so this bounds what watchers can make the node hold.
    pub max_watchers: usize,
    /// Bearer tokens, one `role:name:token` per line (role `viewer` or `operator`); the
    /// `TRUNKLINE_ADMIN_TOKENS` environment variable adds comma-separated entries. With
    /// any token configured every API call needs one; without, the API listens on
    /// loopback only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_file: Option<PathBuf>,
    /// PEM certificate chain of the API's TLS listener (with `tls_key_file`): the API then
    /// speaks only TLS. Read at start.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// Connections open at once; past it new ones wait in the kernel's backlog. Bounds
    /// the descriptors and tasks API clients (or a flood) can take from the node.
    pub max_connections: usize,
    /// A new connection must send its first bytes (HTTP/2 preface, TLS ClientHello)
    /// within this many seconds, else it is closed: silent connections free their slot.
    pub first_bytes_timeout_secs: u64,
    /// PEM CA certificates that sign the API's clients: with it every connection must
    /// present a client certificate that chains to one of them (mutual TLS). Without
    /// tokens, such a client is an operator, named in the logs by its certificate's
    /// SHA-256 fingerprint; with tokens, it still needs one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_client_ca_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 50051))),
            max_watchers: 64,
            tokens_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            max_connections: 256,
            first_bytes_timeout_secs: 10,
        }
    }
}

/// `[cluster]`: empty `etcd_endpoints` (the default) runs the node standalone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// etcd's client URLs (`["http://127.0.0.1:2379"]`, or `https://` ones with
    /// `etcd_ca_file`); the node registers itself there and watches the other nodes.
    pub etcd_endpoints: Vec<String>,
    /// PEM CA certificate(s) that signed etcd's server certificate: etcd is then reached
    /// over TLS (every endpoint `https://`). etcd holds the shared trunks, credentials
    /// included, so off a network the cluster owns alone it should be.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_ca_file: Option<PathBuf>,
    /// PEM client certificate chain the node presents to etcd (with `etcd_key_file`),
    /// for an etcd started with `--client-cert-auth`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_cert_file: Option<PathBuf>,
    /// PEM private key of `etcd_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_key_file: Option<PathBuf>,
    /// The name etcd's certificate is checked against (unset: each endpoint's host).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub etcd_server_name: Option<String>,
    /// The lease of the node's registration: how long after the node dies (or loses
    /// etcd) its entry disappears.
    pub lease_ttl_secs: u64,
    /// Where other nodes reach this one (node-to-node gRPC, `trunkline.cluster.v1`: call
    /// replication). Port 0 takes a free port; the address actually bound is what the
    /// node registers, unless `advertise` says otherwise. Put it on a network only the
    /// cluster's nodes reach.
    #[serde(with = "optional_addr")]
    pub listen: Option<SocketAddr>,
    /// host:port other nodes use to reach `listen` (behind NAT, or a DNS name).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// How many buddies hold each settled call's state (1 or 2).
    pub replication_factor: usize,
    /// A shared secret node-to-node requests carry (at least 16 characters); without it
    /// anyone who reaches `listen` can push call state.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// Where the node keeps the last trunks and routes it applied from etcd, to use when
    /// it starts while etcd is down (none: it starts from the file's then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub config_cache: Option<PathBuf>,
    /// PEM certificate chain this node presents (with `tls_key_file` and `tls_ca_file`):
    /// node-to-node gRPC then runs over mutual TLS, and each side accepts only
    /// certificates `tls_ca_file` signed. Call state and forwarded SIP cross this link,
    /// so on any network the cluster does not own alone it should be encrypted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of `tls_cert_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificate(s) that sign the nodes' certificates.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_ca_file: Option<PathBuf>,
    /// The name (a DNS SAN) every node's certificate carries and is checked against:
    /// nodes reach each other by address, so one shared name stands for "a node of this
    /// cluster".
    pub tls_server_name: String,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            etcd_endpoints: Vec::new(),
            etcd_ca_file: None,
            etcd_cert_file: None,
            etcd_key_file: None,
            etcd_server_name: None,
            lease_ttl_secs: 10,
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            advertise: None,
            replication_factor: 1,
            secret: None,
            config_cache: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_ca_file: None,
            tls_server_name: trunkline_cluster::link::DEFAULT_SERVER_NAME.to_string(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing_subscriber::EnvFilter` directive such as `info` or
    /// `info,trunkline_transport=debug`; `RUST_LOG`, when set, wins (for ad-hoc debugging).
    pub level: String,
    /// Human-readable text or one JSON object per line (for log shippers).
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// `log.format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// Newline-delimited JSON.
    Json,
}

/// `[shutdown]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// After SIGTERM, how long calls may continue before the node exits anyway; should stay
    /// below the pod's `terminationGracePeriodSeconds`.
    pub drain_secs: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self { drain_secs: 30 }
    }
}

impl ShutdownConfig {
    /// `drain_secs` as a `Duration`.
    pub fn drain(&self) -> Duration {
        Duration::from_secs(self.drain_secs)
    }
}

/// One `[[trunks]]` entry: a SIP peer we send calls to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkConfig {
    /// Unique name, used by routing and in logs.
    pub name: String,
    /// `host:port`. Must be an `ip:port` for now; DNS (RFC 3263) comes later, which is why it
    /// stays a string.
    pub address: String,
    /// Transport used toward the trunk.
    #[serde(default)]
    pub transport: TrunkTransport,
    /// Anchor the RTP of calls to this trunk on the node's relay (when `[media]` is enabled).
    #[serde(default = "default_true")]
    pub anchor_media: bool,
    /// The `[media]` interface this trunk's media (the B leg) is anchored on, so a carrier
    /// reached on another network gets the relay's address on that network; unset: the
    /// default interface.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string::deserialize_option"
    )]
    pub media_interface: Option<String>,
    /// Addresses the trunk's own requests come from (CIDRs, addresses or `ip:port`):
    /// calls from these are the trunk's, and are never routed back to it. Empty: exactly
    /// `address` (its IP and port); for a TLS trunk, any port of its IP over TLS only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// The trunk is a PBX behind NAT: where its Contact names a private address but its
    /// messages come from elsewhere, in-dialog requests go to where they come from (as
    /// Kamailio's nathelper `fix_nated_contact`).
    #[serde(default)]
    pub fix_nated_contact: bool,
    /// How the trunk's SDP addresses are read: `sdp` (as written, the default),
    /// `source` (the IP its signalling comes from) or `auto` (the SDP address unless the
    /// node cannot reach it, e.g. a PBX behind NAT writing a private one).
    #[serde(default)]
    pub media_address: trunkline_media::AddressPolicy,
    /// Which of the node's listeners (`sip.udp` / `sip.tcp` address of the trunk's
    /// transport) the trunk is reached from; unset: the first. On a multi-homed node,
    /// the one on the carrier's network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local_address: Option<SocketAddr>,
    /// Calls up at once and started per second, from the trunk and to it.
    #[serde(default, skip_serializing_if = "TrunkLimitsConfig::is_unlimited")]
    pub limits: TrunkLimitsConfig,
    /// Digest credentials: an INVITE from a source no rule names that proves them is
    /// this trunk's call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<TrunkAuthConfig>,
    /// Digest credentials the node answers the trunk's 401/407 with (a carrier that
    /// authenticates its customer's INVITEs, BYEs and REGISTERs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_auth: Option<TrunkAuthConfig>,
    /// How a TLS trunk is verified and what the node shows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TrunkTlsConfig>,
    /// Number rewriting for calls from the trunk (`inbound`, before routing) and to it
    /// (`outbound`); per field, the first matching rule applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rewrites: Vec<RewriteConfig>,
    /// The trunk is in the node's trust domain (RFC 3325): its `P-Asserted-Identity` is
    /// relayed (from any other source it is dropped), and a caller's identity kept
    /// private (`Privacy: id`) may still be asserted to it.
    #[serde(default)]
    pub trusted_identity: bool,
    /// The trunk wants the node to REGISTER to it (with `outbound_auth` when it
    /// challenges).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<TrunkRegisterConfig>,
    /// OPTIONS pings that mark the trunk down (skipped by routing) and up again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<TrunkHealthConfig>,
}

/// `[trunks.health]`: an OPTIONS every `interval_secs`; `down_after` pings in a row
/// without an answer in `up_statuses` before the next one is due mark the trunk down,
/// `up_after` such answers in a row bring it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkHealthConfig {
    pub interval_secs: u64,
    pub down_after: u32,
    pub up_after: u32,
    /// Codes ("200", "404") or classes ("2xx").
    pub up_statuses: Vec<String>,
}

impl Default for TrunkHealthConfig {
    fn default() -> Self {
        Self {
            interval_secs: 10,
            down_after: 3,
            up_after: 2,
            up_statuses: vec!["2xx".into()],
        }
    }
}

impl TrunkHealthConfig {
    fn status_match(s: &str) -> Option<trunkline_call::health::StatusMatch> {
        use trunkline_call::health::StatusMatch;
        let s = s.trim();
        match s.strip_suffix("xx") {
            Some(class) => match class.parse::<u16>() {
                Ok(c) if (1..=6).contains(&c) => Some(StatusMatch::Class(c)),
                _ => None,
            },
            None => match s.parse::<u16>() {
                Ok(c) if (100..=699).contains(&c) => Some(StatusMatch::Code(c)),
                _ => None,
            },
        }
    }

    pub fn call_config(&self) -> trunkline_call::health::HealthConfig {
        trunkline_call::health::HealthConfig {
            interval: std::time::Duration::from_secs(self.interval_secs),
            down_after: self.down_after,
            up_after: self.up_after,
            up_statuses: self
                .up_statuses
                .iter()
                .filter_map(|s| Self::status_match(s))
                .collect(),
        }
    }
}

/// `[[trunks.rewrites]]`: `pattern` (a regular expression) matched against the user
/// part of `field` (`ruri`, `from` or `to`) and replaced by `replace` (`$1`, `${name}`
/// for captures), on calls `direction` (`inbound`: from the trunk, `outbound`: to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewriteConfig {
    pub direction: RewriteDirection,
    pub field: RewriteField,
    pub pattern: String,
    pub replace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteDirection {
    Inbound,
    Outbound,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RewriteField {
    Ruri,
    From,
    To,
}

impl TrunkConfig {
    /// The trunk's rewrite rules, compiled; the first bad pattern names its key.
    pub fn rewrites(&self, key: &str) -> Result<trunkline_call::rewrite::Rewrites, String> {
        use trunkline_call::rewrite::{Field, Rule};
        let mut out = trunkline_call::rewrite::Rewrites::default();
        for (j, r) in self.rewrites.iter().enumerate() {
            let field = match r.field {
                RewriteField::Ruri => Field::RequestUri,
                RewriteField::From => Field::From,
                RewriteField::To => Field::To,
            };
            let rule = Rule::new(field, &r.pattern, &r.replace)
                .map_err(|e| format!("{key}.rewrites[{j}].pattern: {e}"))?;
            match r.direction {
                RewriteDirection::Inbound => out.inbound.push(rule),
                RewriteDirection::Outbound => out.outbound.push(rule),
            }
        }
        Ok(out)
    }
}

/// `[trunks.tls]`: a TLS trunk's certificate must chain to `ca_file` (else
/// `sip.tls_ca_file`, else the system's CAs) and carry `server_name` (else the IP of
/// `address`); with `cert_file` and `key_file` the node presents that client
/// certificate; with `require_client_cert`, TLS connections from the trunk's sources must
/// present a certificate (from `sip.tls_client_ca_file`) for `server_name`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkTlsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<std::path::PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_file: Option<std::path::PathBuf>,
    pub require_client_cert: bool,
}

impl TrunkTlsConfig {
    /// The name the trunk's certificate must carry.
    pub fn server_name(
        &self,
        addr: SocketAddr,
    ) -> Result<rustls_pki_types::ServerName<'static>, String> {
        match &self.server_name {
            Some(n) => {
                rustls_pki_types::ServerName::try_from(n.clone()).map_err(|e| format!("{n:?}: {e}"))
            }
            None => Ok(rustls_pki_types::ServerName::IpAddress(addr.ip().into())),
        }
    }

    /// The client settings of the trunk (files read now).
    pub fn client_config(
        &self,
        default_ca: Option<&std::path::Path>,
    ) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
        let identity = match (&self.cert_file, &self.key_file) {
            (Some(c), Some(k)) => Some((c.as_path(), k.as_path())),
            (None, None) => None,
            _ => return Err("give cert_file and key_file together".into()),
        };
        trunkline_transport::tls::client_config(self.ca_file.as_deref().or(default_ca), identity)
            .map_err(|e| e.to_string())
    }
}

/// `[trunks.register]`: the node registers `user@domain` at the trunk, for
/// `expires_secs`, refreshed before the end; a failure is retried after
/// `retry_min_secs`, doubling up to `retry_max_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkRegisterConfig {
    /// The address-of-record's user; empty: `outbound_auth.username`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub user: String,
    /// The address-of-record's domain and the Request-URI; empty: the trunk's address.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub domain: String,
    pub expires_secs: u64,
    pub retry_min_secs: u64,
    pub retry_max_secs: u64,
}

impl Default for TrunkRegisterConfig {
    fn default() -> Self {
        Self {
            user: String::new(),
            domain: String::new(),
            expires_secs: 3600,
            retry_min_secs: 30,
            retry_max_secs: 600,
        }
    }
}

impl TrunkRegisterConfig {
    /// What the node registers for `trunk`.
    pub fn call_config(&self, trunk: &TrunkConfig) -> trunkline_call::registration::RegisterConfig {
        let user = if self.user.is_empty() {
            trunk
                .outbound_auth
                .as_ref()
                .map(|a| a.username.clone())
                .unwrap_or_default()
        } else {
            self.user.clone()
        };
        let domain = if self.domain.is_empty() {
            trunk.address.clone()
        } else {
            self.domain.clone()
        };
        trunkline_call::registration::RegisterConfig {
            user,
            domain,
            expires: std::time::Duration::from_secs(self.expires_secs),
            retry_min: std::time::Duration::from_secs(self.retry_min_secs),
            retry_max: std::time::Duration::from_secs(self.retry_max_secs.max(self.retry_min_secs)),
        }
    }
}

/// `[trunks.auth]`: the trunk's digest user and its password, given here or in a file
/// (its first line), so the configuration can be shown without the secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrunkAuthConfig {
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<std::path::PathBuf>,
}

impl TrunkAuthConfig {
    /// The password, from the configuration or its file.
    pub fn password(&self) -> Result<String, String> {
        match (&self.password, &self.password_file) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|t| t.lines().next().unwrap_or_default().to_string())
                .map_err(|e| format!("cannot read {}: {e}", f.display())),
            (Some(_), Some(_)) => Err("give password or password_file, not both".into()),
            (None, None) => Err("needs password or password_file".into()),
        }
    }
}

/// `[sip.auth]`: digest authentication of callers identified by credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    pub realm: String,
    /// Offered in this order: "SHA-256", "MD5".
    pub algorithms: Vec<String>,
    /// A nonce older than this is answered stale=true.
    pub nonce_ttl_secs: u64,
    /// Key of the nonces; nodes behind one load balancer need the same. Unset: a
    /// random key per start (a nonce then holds on the node that made it only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce_secret: Option<String>,
    /// Nonces whose nonce-count is remembered (replay protection) at most.
    pub max_nonces: usize,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            realm: "trunkline".into(),
            algorithms: vec!["SHA-256".into(), "MD5".into()],
            nonce_ttl_secs: 300,
            nonce_secret: None,
            max_nonces: 65_536,
        }
    }
}

impl AuthSection {
    pub fn digest_config(&self) -> trunkline_call::digest::DigestConfig {
        use sha2::Digest as _;
        let secret: [u8; 32] = match &self.nonce_secret {
            Some(s) => sha2::Sha256::digest(s.as_bytes()).into(),
            None => rand::random(),
        };
        trunkline_call::digest::DigestConfig {
            realm: self.realm.clone(),
            algorithms: self
                .algorithms
                .iter()
                .filter_map(|a| trunkline_call::digest::Algorithm::from_token(a))
                .collect(),
            nonce_ttl: std::time::Duration::from_secs(self.nonce_ttl_secs),
            secret,
            max_nonces: self.max_nonces,
        }
    }
}

/// `[trunks.limits]`: 0 (the default) means no limit. Past an inbound limit the
/// trunk's INVITE gets 503 with Retry-After before any call state exists; past an
/// outbound one the call is not placed and the caller gets 503.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrunkLimitsConfig {
    /// Calls from the trunk up at once (ringing or answered).
    pub calls_in: u32,
    /// Calls from the trunk started per second (bursts of at most this many).
    pub cps_in: u32,
    /// Calls to the trunk up at once.
    pub calls_out: u32,
    /// Calls to the trunk started per second.
    pub cps_out: u32,
}

impl TrunkLimitsConfig {
    fn is_unlimited(&self) -> bool {
        *self == TrunkLimitsConfig::default()
    }

    pub fn call_limits(&self) -> trunkline_call::TrunkLimits {
        trunkline_call::TrunkLimits {
            inbound: trunkline_call::Limits {
                calls: self.calls_in,
                cps: self.cps_in,
            },
            outbound: trunkline_call::Limits {
                calls: self.calls_out,
                cps: self.cps_out,
            },
        }
    }
}

/// One `[[routes]]` entry: a prefix (optionally for calls from one trunk only) and the
/// trunks its calls try, in priority order, shared by weight within a priority.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Leading part of the dialled number (the Request-URI's user part), e.g. `+44`.
    #[serde(deserialize_with = "lenient_string::deserialize")]
    pub prefix: String,
    /// The one trunk such calls go to (the short form of `trunks`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trunk: Option<String>,
    /// The trunks such calls try: names (tried in the order written) or tables with
    /// `name`, `priority` (lower first; default: the position in the list) and
    /// `weight` (the share among the usable trunks of one priority; default 1; 0 is a
    /// standby that takes calls only when the others of its priority cannot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<RouteTrunkConfig>,
    /// Only calls that came from this trunk take the route; other calls skip it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_trunk: Option<String>,
    /// A trunk that sends no response at all (not even 100) within this many
    /// milliseconds is given up for the next trunk; unset: wait for Timer B (64·T1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provisional_timeout_ms: Option<u64>,
    /// This route's own `sip.failover_statuses` (codes or classes like "5xx").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub failover_statuses: Vec<String>,
}

/// One trunk of a route's `trunks`: a name, or a table with priority and weight.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RouteTrunkConfig {
    Name(String),
    Weighted(WeightedTrunkConfig),
}

/// `{ name = "...", priority = 1, weight = 60 }` in a route's `trunks`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightedTrunkConfig {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl RouteConfig {
    /// The route's trunks with their priority and weight, `trunk` first.
    pub fn listed(&self) -> Vec<trunkline_call::RouteTrunk> {
        let named = self.trunk.iter().map(|n| (n.clone(), None, None));
        let listed = self.trunks.iter().map(|t| match t {
            RouteTrunkConfig::Name(n) => (n.clone(), None, None),
            RouteTrunkConfig::Weighted(w) => (w.name.clone(), w.priority, w.weight),
        });
        named
            .chain(listed)
            .enumerate()
            .map(|(i, (name, priority, weight))| trunkline_call::RouteTrunk {
                name,
                priority: priority.unwrap_or(u32::try_from(i).unwrap_or(u32::MAX)),
                weight: weight.unwrap_or(1),
            })
            .collect()
    }

    /// The names of every trunk the route uses (its list and `from_trunk`).
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.listed().into_iter().map(|t| t.name).collect();
        names.extend(self.from_trunk.clone());
        names
    }

    /// `failover_statuses` as the status codes they cover (`None`: not set).
    pub fn failover_codes(&self) -> Option<Vec<u16>> {
        (!self.failover_statuses.is_empty()).then(|| status_codes(&self.failover_statuses))
    }

    /// The router's form of the route.
    pub fn route(&self) -> trunkline_call::Route {
        trunkline_call::Route {
            prefix: self.prefix.clone(),
            from_trunk: self.from_trunk.clone(),
            trunks: self.listed(),
            provisional_timeout: self.provisional_timeout_ms.map(Duration::from_millis),
            failover_statuses: self.failover_codes().map(Into::into),
        }
    }
}

/// Status codes and classes ("408", "5xx") as the final error codes they cover.
fn status_codes(list: &[String]) -> Vec<u16> {
    use trunkline_call::health::StatusMatch;
    let mut codes: Vec<u16> = list
        .iter()
        .filter_map(|s| TrunkHealthConfig::status_match(s))
        .flat_map(|m| match m {
            StatusMatch::Code(c) => c..=c,
            StatusMatch::Class(c) => c * 100..=c * 100 + 99,
        })
        .filter(|c| !(200..300).contains(c))
        .collect();
    codes.sort_unstable();
    codes.dedup();
    codes
}

/// Problems with a list of failover statuses at `key`.
fn check_failover_statuses(key: &str, list: &[String], problems: &mut Problems) {
    for (j, s) in list.iter().enumerate() {
        match TrunkHealthConfig::status_match(s) {
            None => problems.push(
                format!("{key}[{j}]"),
                format!("{s:?} is neither a status code nor a class like \"5xx\""),
            ),
            Some(trunkline_call::health::StatusMatch::Class(c)) if c < 3 => problems.push(
                format!("{key}[{j}]"),
                "a call fails over on a final error, never on 1xx or 2xx",
            ),
            Some(trunkline_call::health::StatusMatch::Code(c)) if c < 300 => problems.push(
                format!("{key}[{j}]"),
                "a call fails over on a final error, never on 1xx or 2xx",
            ),
            Some(_) => {}
        }
    }
}

fn default_true() -> bool {
    true
}

impl TrunkConfig {
    /// The trunk address as a socket address (`None` for a trunk named by DNS).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        self.address.parse().ok()
    }

    /// The host name (and port, if given) of a trunk named by DNS; `None` for an
    /// `ip:port` or an address that is neither.
    pub fn dns_name(&self) -> Option<(String, Option<u16>)> {
        if self.socket_addr().is_some() {
            return None;
        }
        let (host, port) = match self.address.rsplit_once(':') {
            Some((h, p)) => (h, Some(p.parse::<u16>().ok()?)),
            None => (self.address.as_str(), None),
        };
        let host = host.trim_end_matches('.');
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                && !l.starts_with('-')
        };
        let valid = !host.is_empty()
            && host.len() <= 253
            && host.parse::<IpAddr>().is_err()
            && host.split('.').all(label_ok)
            && host.chars().any(|c| c.is_ascii_alphabetic());
        valid.then(|| (host.to_ascii_lowercase(), port))
    }
}

/// `trunks[].transport`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    /// SIP over UDP.
    #[default]
    Udp,
    /// SIP over TCP.
    Tcp,
    /// SIP over TLS (settings in `[trunks.tls]`).
    Tls,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingConfig {
    /// Trunk that receives every call no other route matches; no default means such calls get
    /// a 404.
    #[serde(
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_string::deserialize_option"
    )]
    pub default_trunk: Option<String>,
}

impl Config {
    /// Loads defaults, then `path` (if given), then `TRUNKLINE_*` variables, and validates.
    ///
    /// Errors name the offending key and where its value came from (file path or environment).
    pub fn load(path: Option<&Path>) -> anyhow::Result<Self> {
        if let Some(path) = path {
            // figment treats a missing file as empty; a mistyped --config must not do that.
            std::fs::metadata(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
        }
        let figment = Self::figment(path);
        let origin = match path {
            Some(path) => format!("file {} with {ENV_PREFIX}* overrides", path.display()),
            None => format!("defaults with {ENV_PREFIX}* overrides"),
        };
        let config: Config = figment.extract().map_err(|err| {
            anyhow::anyhow!(
                "invalid configuration ({origin}):\n  {}",
                describe_errors(&figment, err).join("\n  ")
            )
        })?;
        let problems = config.problems();
        if !problems.is_empty() {
            bail!(
                "invalid configuration ({origin}):\n  {}",
                problems.join("\n  ")
            );
        }
        Ok(config)
    }

    /// The layered sources, in order of precedence (last wins).
    fn figment(path: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        if let Some(path) = path {
            // `file_exact`: never search parent directories for a file of that name.
            figment = figment.merge(Toml::file_exact(path));
        }
        figment.merge(
            Env::prefixed(ENV_PREFIX)
                .filter(|k| is_config_env_key(k.as_str()))
                .split("__"),
        )
    }

    /// Checks what the types cannot: formats, ranges and cross references. Returns every
    /// problem at once, each as `key: what is wrong`, so one edit fixes them all.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut problems = Problems::default();
        self.validate_node(&mut problems);
        self.validate_sip(&mut problems);
        self.validate_metrics(&mut problems);
        self.validate_admin(&mut problems);
        self.validate_cluster(&mut problems);
        self.validate_log(&mut problems);
        self.validate_trunks_and_routing(&mut problems);
        self.validate_media(&mut problems);
        problems.0
    }

    fn validate_node(&self, problems: &mut Problems) {
        let id = &self.node.id;
        let id_ok = (1..=16).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        if !id_ok {
            problems.push(
                "node.id",
                format!("{id:?} must be 1-16 characters of [a-z0-9]"),
            );
        }
        if self.node.worker_threads > MAX_WORKER_THREADS {
            problems.push(
                "node.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (0: the default)"),
            );
        }
        if let Err(e) = self.runtime_thread_policy() {
            problems.push("node.priority", e.to_string());
        }
    }

    /// The policy each runtime thread gives itself as it starts; [`Config::load`] has
    /// already rejected pairs for which this fails.
    pub fn runtime_thread_policy(&self) -> Result<ThreadPolicy, ThreadPolicyError> {
        ThreadPolicy::new(self.node.scheduling, self.node.priority)
    }

    /// The runtime's thread count, if `node.worker_threads` sets one.
    pub fn worker_threads(&self) -> Option<usize> {
        (self.node.worker_threads > 0).then_some(self.node.worker_threads)
    }

    fn validate_sip(&self, problems: &mut Problems) {
        let sip = &self.sip;
        check_failover_statuses("sip.failover_statuses", &sip.failover_statuses, problems);
        let sl = &sip.source_limit;
        if sl.max_requests > 0 {
            if sl.window_secs == 0 {
                problems.push("sip.source_limit.window_secs", "must be at least 1");
            }
            if sl.block_secs == 0 {
                problems.push("sip.source_limit.block_secs", "must be at least 1");
            }
            if sl.max_sources == 0 {
                problems.push("sip.source_limit.max_sources", "must be at least 1");
            }
        }
        if sip.udp.is_empty() && sip.tcp.is_empty() {
            problems.push(
                "sip.udp",
                "no SIP listener: sip.udp and sip.tcp are both empty",
            );
        }
        for (key, entries) in [
            ("sip.udp", &sip.udp),
            ("sip.tcp", &sip.tcp),
            ("sip.tls", &sip.tls),
        ] {
            let mut seen = HashSet::new();
            for (i, entry) in entries.iter().enumerate() {
                let addr = entry.listen;
                if !seen.insert(addr) {
                    problems.push(key, format!("{addr} is listed twice"));
                }
                check_listen_entry(problems, &format!("{key}[{i}]"), entry, sip.advertise);
            }
        }
        for entry in &sip.tls {
            if sip.tcp.iter().any(|t| t.listen == entry.listen) {
                problems.push(
                    "sip.tls",
                    format!("{} is a sip.tcp listener too", entry.listen),
                );
            }
        }
        if !sip.tls.is_empty() {
            match (&sip.tls_cert_file, &sip.tls_key_file) {
                (Some(cert), Some(key)) => {
                    if let Err(e) = trunkline_transport::tls::ReloadingCert::load(cert, key) {
                        problems.push("sip.tls_cert_file", e);
                    }
                }
                _ => problems.push(
                    "sip.tls",
                    "TLS listeners need sip.tls_cert_file and sip.tls_key_file",
                ),
            }
        }
        if let Some(ca) = &sip.tls_client_ca_file {
            if let Err(e) = trunkline_transport::tls::load_roots(ca) {
                problems.push("sip.tls_client_ca_file", e);
            }
        } else if sip.tls_require_client_cert {
            problems.push(
                "sip.tls_require_client_cert",
                "needs sip.tls_client_ca_file",
            );
        }
        if let Some(ca) = &sip.tls_ca_file {
            if let Err(e) = trunkline_transport::tls::load_roots(ca) {
                problems.push("sip.tls_ca_file", e);
            }
        }
        for (key, value) in [
            (
                "sip.tls_handshake_timeout_secs",
                sip.tls_handshake_timeout_secs,
            ),
            ("sip.tls_reload_secs", sip.tls_reload_secs),
        ] {
            if value == 0 {
                problems.push(key, "must be greater than 0");
            }
        }
        if let Some(ip) = sip.advertise.filter(IpAddr::is_unspecified) {
            problems.push(
                "sip.advertise",
                format!("{ip} is not an address peers can reach"),
            );
        }
        if !(1024..=65535).contains(&sip.max_message_bytes) {
            problems.push(
                "sip.max_message_bytes",
                format!("{} is outside 1024..=65535", sip.max_message_bytes),
            );
        }
        if sip.tcp_send_queue_bytes < sip.max_message_bytes {
            problems.push(
                "sip.tcp_send_queue_bytes",
                format!(
                    "{} is less than sip.max_message_bytes ({})",
                    sip.tcp_send_queue_bytes, sip.max_message_bytes
                ),
            );
        }
        for (key, value) in [
            ("sip.tcp_idle_timeout_secs", sip.tcp_idle_timeout_secs),
            ("sip.tcp_partial_timeout_secs", sip.tcp_partial_timeout_secs),
            ("sip.tcp_max_inbound", sip.tcp_max_inbound as u64),
            ("sip.tcp_max_outbound", sip.tcp_max_outbound as u64),
            ("sip.tcp_max_per_source", sip.tcp_max_per_source as u64),
            ("sip.max_forwards", u64::from(sip.max_forwards)),
        ] {
            if value == 0 {
                problems.push(key, "must be greater than 0");
            }
        }
        let timers = &sip.timers;
        // Upper bounds catch unit mistakes (seconds typed into a _ms key times 1000) and keep
        // derived timers such as 64*T1 far from overflow.
        for (key, value, max) in [
            ("sip.timers.t1_ms", timers.t1_ms, 60_000),
            ("sip.timers.t2_ms", timers.t2_ms, 600_000),
            ("sip.timers.t4_ms", timers.t4_ms, 600_000),
            ("sip.timers.no_answer_secs", timers.no_answer_secs, 86_400),
        ] {
            if !(1..=max).contains(&value) {
                problems.push(key, format!("{value} is outside 1..={max}"));
            }
        }
        for (j, s) in sip.access_sources.iter().enumerate() {
            if let Err(e) = s.parse::<trunkline_call::Source>() {
                problems.push(format!("sip.access_sources[{j}]"), e);
            }
        }
        if sip.udp_congestion_percent > 100 {
            problems.push(
                "sip.udp_congestion_percent",
                format!("{} is not a percentage (0-100)", sip.udp_congestion_percent),
            );
        }
        if !(400..=699).contains(&sip.trunk_503_status) {
            problems.push(
                "sip.trunk_503_status",
                format!(
                    "{} is not a final error status (400-699)",
                    sip.trunk_503_status
                ),
            );
        }
        if timers.t1_ms > timers.t2_ms {
            problems.push(
                "sip.timers.t1_ms",
                format!(
                    "{} must not exceed sip.timers.t2_ms ({})",
                    timers.t1_ms, timers.t2_ms
                ),
            );
        }
    }

    fn validate_media(&self, problems: &mut Problems) {
        let m = &self.media;
        if m.port_min >= m.port_max || m.port_max - m.port_min < 3 {
            problems.push(
                "media.port_min",
                format!(
                    "range {}-{} must hold at least two port pairs",
                    m.port_min, m.port_max
                ),
            );
        }
        if m.port_min < 1024 {
            problems.push(
                "media.port_min",
                format!("{} is a privileged port", m.port_min),
            );
        }
        if m.timeout_secs == 0 {
            problems.push("media.timeout_secs", "must be at least 1");
        }
        if m.max_streams == 0 {
            problems.push("media.max_streams", "must be at least 1");
        }
        if m.max_ports_per_call < 4 {
            problems.push(
                "media.max_ports_per_call",
                "must be at least 4 (one audio stream: an RTP/RTCP pair toward each leg)",
            );
        }
        if let Err(e) = m.thread_policy() {
            problems.push("media.priority", e.to_string());
        }
        check_interface_addresses(problems, "media", m.bind, m.advertise);
        self.validate_media_interfaces(problems);
    }

    /// Interface names are unique (`default` is taken by `bind`/`advertise`), and every name
    /// a leg is anchored by exists: the relay would refuse the first call's offer otherwise.
    fn validate_media_interfaces(&self, problems: &mut Problems) {
        let m = &self.media;
        let mut names = HashSet::from([DEFAULT_INTERFACE]);
        for (i, iface) in m.interfaces.iter().enumerate() {
            let key = format!("media.interfaces[{i}]");
            if iface.name.trim().is_empty() {
                problems.push(format!("{key}.name"), "must not be empty");
            } else if iface.name == DEFAULT_INTERFACE {
                problems.push(
                    format!("{key}.name"),
                    format!(
                        "{DEFAULT_INTERFACE:?} is the interface media.bind/media.advertise define"
                    ),
                );
            } else if !names.insert(iface.name.as_str()) {
                problems.push(
                    format!("{key}.name"),
                    format!("{:?} is used by another interface", iface.name),
                );
            }
            check_interface_addresses(problems, &key, iface.bind, iface.advertise);
        }
        let known = m.interface_names();
        if let Some(name) = &m.access_interface {
            if !m.has_interface(name) {
                problems.push(
                    "media.access_interface",
                    format!("{name:?} is not a media interface (configured: {known})"),
                );
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            if let Some(name) = &trunk.media_interface {
                if !m.has_interface(name) {
                    problems.push(
                        format!("trunks[{i}].media_interface"),
                        format!("{name:?} is not a media interface (configured: {known})"),
                    );
                }
            }
        }
    }

    fn validate_metrics(&self, problems: &mut Problems) {
        if let Some(listen) = self.metrics.listen {
            if self.sip.tcp.iter().any(|e| e.listen == listen) {
                problems.push(
                    "metrics.listen",
                    format!("{listen} is also a sip.tcp listener"),
                );
            }
        }
    }

    fn validate_admin(&self, problems: &mut Problems) {
        if !(1..=10_000).contains(&self.admin.max_watchers) {
            problems.push(
                "admin.max_watchers",
                format!("{} is not within 1..=10000", self.admin.max_watchers),
            );
        }
        let a = &self.admin;
        if !(1..=65_536).contains(&a.max_connections) {
            problems.push(
                "admin.max_connections",
                format!("{} is not within 1..=65536", a.max_connections),
            );
        }
        if !(1..=300).contains(&a.first_bytes_timeout_secs) {
            problems.push(
                "admin.first_bytes_timeout_secs",
                format!("{} is not within 1..=300", a.first_bytes_timeout_secs),
            );
        }
        match (&a.tls_cert_file, &a.tls_key_file) {
            (Some(_), None) => problems.push(
                "admin.tls_key_file",
                "admin.tls_cert_file is set without its key".to_string(),
            ),
            (None, Some(_)) => problems.push(
                "admin.tls_cert_file",
                "admin.tls_key_file is set without a certificate".to_string(),
            ),
            _ => {}
        }
        if a.tls_client_ca_file.is_some() && a.tls_cert_file.is_none() {
            problems.push(
                "admin.tls_client_ca_file",
                "client certificates need TLS: set admin.tls_cert_file and admin.tls_key_file"
                    .to_string(),
            );
        }
        let Some(listen) = self.admin.listen else {
            return;
        };
        let authenticated = self.admin.tokens_file.is_some()
            || self.admin.tls_client_ca_file.is_some()
            || std::env::var_os(crate::admin::auth::TOKENS_ENV).is_some_and(|v| !v.is_empty());
        if !listen.ip().is_loopback() && !authenticated {
            problems.push(
                "admin.listen",
                format!(
                    "{listen} is not a loopback address and the admin API has no authentication \
                     configured: set admin.tokens_file or {} (role:name:token entries), or \
                     admin.tls_client_ca_file (client certificates), or listen on loopback \
                     only (127.0.0.1, ::1)",
                    crate::admin::auth::TOKENS_ENV
                ),
            );
        }
        if self.metrics.listen == Some(listen) || self.sip.tcp.iter().any(|e| e.listen == listen) {
            problems.push(
                "admin.listen",
                format!("{listen} is also metrics.listen or a sip.tcp listener"),
            );
        }
    }

    fn validate_cluster(&self, problems: &mut Problems) {
        let c = &self.cluster;
        if !(2..=300).contains(&c.lease_ttl_secs) {
            problems.push(
                "cluster.lease_ttl_secs",
                format!("{} is not within 2..=300", c.lease_ttl_secs),
            );
        }
        if !(1..=2).contains(&c.replication_factor) {
            problems.push(
                "cluster.replication_factor",
                format!("{} is not 1 or 2", c.replication_factor),
            );
        }
        if c.secret
            .as_ref()
            .is_some_and(|s| s.len() < 16 || !s.bytes().all(|b| b.is_ascii_graphic()))
        {
            problems.push(
                "cluster.secret",
                "must be at least 16 printable characters without spaces".to_string(),
            );
        }
        let tls = [&c.tls_cert_file, &c.tls_key_file, &c.tls_ca_file];
        if tls.iter().any(|f| f.is_some()) && !tls.iter().all(|f| f.is_some()) {
            problems.push(
                "cluster.tls_cert_file",
                "node-to-node TLS needs all of tls_cert_file, tls_key_file and tls_ca_file"
                    .to_string(),
            );
        }
        if c.tls_server_name.is_empty()
            || c.tls_server_name.len() > 253
            || !c
                .tls_server_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            problems.push(
                "cluster.tls_server_name",
                format!("{:?} is not a DNS name", c.tls_server_name),
            );
        }
        let exposed = c.listen.is_some_and(|l| !l.ip().is_loopback());
        if !c.etcd_endpoints.is_empty() && exposed && c.secret.is_none() && c.tls_ca_file.is_none()
        {
            problems.push(
                "cluster.listen",
                "off loopback the node-to-node listener needs cluster.secret or mutual TLS \
                 (tls_cert_file, tls_key_file, tls_ca_file): anyone who reaches it could \
                 push call state"
                    .to_string(),
            );
        }
        if !c.etcd_endpoints.is_empty() && c.listen.is_none() {
            problems.push(
                "cluster.listen",
                "a clustered node needs its node-to-node listener".to_string(),
            );
        }
        for e in &c.etcd_endpoints {
            let rest = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .unwrap_or(e);
            let ok = !rest.is_empty()
                && rest.len() <= 255
                && rest.contains(':')
                && !rest.contains('/')
                && rest.bytes().all(|b| b.is_ascii_graphic());
            if !ok {
                problems.push(
                    "cluster.etcd_endpoints",
                    format!("{e:?} is not an etcd client URL (http://host:port)"),
                );
            }
        }
        let https = c
            .etcd_endpoints
            .iter()
            .filter(|e| e.starts_with("https://"))
            .count();
        match (&c.etcd_ca_file, https) {
            (None, n) if n > 0 => problems.push(
                "cluster.etcd_ca_file",
                "https:// etcd endpoints need etcd_ca_file (the CA that signed etcd's \
                 certificate)"
                    .to_string(),
            ),
            (Some(_), n) if n < c.etcd_endpoints.len() => problems.push(
                "cluster.etcd_endpoints",
                "with etcd_ca_file every endpoint must be https:// (the node never falls \
                 back to plain text)"
                    .to_string(),
            ),
            _ => {}
        }
        if c.etcd_cert_file.is_some() != c.etcd_key_file.is_some() {
            problems.push(
                "cluster.etcd_cert_file",
                "a client certificate for etcd needs both etcd_cert_file and etcd_key_file"
                    .to_string(),
            );
        }
        if c.etcd_cert_file.is_some() && c.etcd_ca_file.is_none() {
            problems.push(
                "cluster.etcd_cert_file",
                "a client certificate for etcd is presented over TLS only: set etcd_ca_file \
                 and https:// endpoints"
                    .to_string(),
            );
        }
    }

    fn validate_log(&self, problems: &mut Problems) {
        if let Err(err) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            problems.push("log.level", format!("{:?}: {err}", self.log.level));
        }
    }

    fn validate_trunks_and_routing(&self, problems: &mut Problems) {
        let mut names = HashSet::new();
        for (i, trunk) in self.trunks.iter().enumerate() {
            if trunk.name.trim().is_empty() {
                problems.push(format!("trunks[{i}].name"), "must not be empty");
            } else if !names.insert(trunk.name.as_str()) {
                problems.push(
                    format!("trunks[{i}].name"),
                    format!("{:?} is used by another trunk", trunk.name),
                );
            }
            if trunk.dns_name().is_some() && trunk.sources.is_empty() {
                problems.push(
                    format!("trunks[{i}].sources"),
                    "a trunk named by DNS needs the addresses its own requests come from",
                );
            }
            if trunk.socket_addr().is_none() && trunk.dns_name().is_none() {
                problems.push(
                    format!("trunks[{i}].address"),
                    format!(
                        "{:?} is neither an ip:port nor a host name (with or without a port)",
                        trunk.address
                    ),
                );
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            for (j, s) in trunk.sources.iter().enumerate() {
                if let Err(e) = s.parse::<trunkline_call::Source>() {
                    problems.push(format!("trunks[{i}].sources[{j}]"), e);
                }
            }
            if let Some(local) = trunk.local_address {
                let listeners = match trunk.transport {
                    TrunkTransport::Udp => (&self.sip.udp, "sip.udp"),
                    TrunkTransport::Tcp => (&self.sip.tcp, "sip.tcp"),
                    TrunkTransport::Tls => (&self.sip.tls, "sip.tls"),
                };
                if !listeners.0.iter().any(|l| l.listen == local) {
                    problems.push(
                        format!("trunks[{i}].local_address"),
                        format!("{local} is not one of the {} listeners", listeners.1),
                    );
                }
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            let Some(h) = &trunk.health else { continue };
            if h.interval_secs == 0 {
                problems.push(
                    format!("trunks[{i}].health.interval_secs"),
                    "must be at least 1",
                );
            }
            if h.down_after == 0 || h.up_after == 0 {
                problems.push(
                    format!("trunks[{i}].health"),
                    "down_after and up_after must be at least 1",
                );
            }
            if h.up_statuses.is_empty() {
                problems.push(
                    format!("trunks[{i}].health.up_statuses"),
                    "list at least one",
                );
            }
            for (j, s) in h.up_statuses.iter().enumerate() {
                if TrunkHealthConfig::status_match(s).is_none() {
                    problems.push(
                        format!("trunks[{i}].health.up_statuses[{j}]"),
                        format!("{s:?} is neither a status code nor a class like \"2xx\""),
                    );
                }
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            let Some(auth) = &trunk.outbound_auth else {
                continue;
            };
            if auth.username.trim().is_empty() {
                problems.push(
                    format!("trunks[{i}].outbound_auth.username"),
                    "must not be empty",
                );
            }
            match auth.password() {
                Ok(p) if p.is_empty() => {
                    problems.push(format!("trunks[{i}].outbound_auth.password"), "is empty")
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("trunks[{i}].outbound_auth"), e),
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            let tls = trunk.tls.clone().unwrap_or_default();
            if trunk.transport != TrunkTransport::Tls {
                if trunk.tls.is_some() {
                    problems.push(format!("trunks[{i}].tls"), "only for transport = \"tls\"");
                }
                continue;
            }
            if self.sip.tls.is_empty() {
                problems.push(
                    format!("trunks[{i}].transport"),
                    "\"tls\" needs a sip.tls listener (its address goes in Via and Contact)",
                );
            }
            if let Some(addr) = trunk.socket_addr() {
                if let Err(e) = tls.server_name(addr) {
                    problems.push(format!("trunks[{i}].tls.server_name"), e);
                }
            }
            if let Err(e) = tls.client_config(self.sip.tls_ca_file.as_deref()) {
                problems.push(format!("trunks[{i}].tls"), e);
            }
            if tls.require_client_cert && self.sip.tls_client_ca_file.is_none() {
                problems.push(
                    format!("trunks[{i}].tls.require_client_cert"),
                    "needs sip.tls_client_ca_file (the CAs that sign the trunk's certificate)",
                );
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            if let Err(e) = trunk.rewrites(&format!("trunks[{i}]")) {
                let (key, why) = e.split_once(": ").unwrap_or((&e, "invalid"));
                problems.push(key.to_string(), why.to_string());
            }
        }
        for (i, trunk) in self.trunks.iter().enumerate() {
            let Some(reg) = &trunk.register else { continue };
            let c = reg.call_config(trunk);
            if c.user.trim().is_empty() {
                problems.push(
                    format!("trunks[{i}].register.user"),
                    "needed (or an outbound_auth.username)",
                );
            }
            let bad = |v: &str| {
                v.is_empty() || v.contains(|ch: char| ch.is_whitespace() || "<>\"@;".contains(ch))
            };
            if bad(&c.user) || bad(&c.domain) {
                problems.push(
                    format!("trunks[{i}].register"),
                    "user and domain must be SIP URI parts (no spaces, <, >, \", @ or ;)",
                );
            }
            if reg.expires_secs < 10 {
                problems.push(
                    format!("trunks[{i}].register.expires_secs"),
                    "must be at least 10",
                );
            }
            if reg.retry_min_secs == 0 {
                problems.push(
                    format!("trunks[{i}].register.retry_min_secs"),
                    "must be at least 1",
                );
            }
        }
        let mut users = HashSet::new();
        for (i, trunk) in self.trunks.iter().enumerate() {
            let Some(auth) = &trunk.auth else { continue };
            if auth.username.trim().is_empty() {
                problems.push(format!("trunks[{i}].auth.username"), "must not be empty");
            } else if !users.insert(auth.username.as_str()) {
                problems.push(
                    format!("trunks[{i}].auth.username"),
                    format!("{:?} is another trunk's user", auth.username),
                );
            }
            match auth.password() {
                Ok(p) if p.is_empty() => {
                    problems.push(format!("trunks[{i}].auth.password"), "is empty")
                }
                Ok(_) => {}
                Err(e) => problems.push(format!("trunks[{i}].auth"), e),
            }
        }
        let auth = &self.sip.auth;
        if auth.algorithms.is_empty() {
            problems.push("sip.auth.algorithms", "offer at least one (SHA-256, MD5)");
        }
        for (j, a) in auth.algorithms.iter().enumerate() {
            if trunkline_call::digest::Algorithm::from_token(a).is_none() {
                problems.push(
                    format!("sip.auth.algorithms[{j}]"),
                    format!("{a:?} is neither SHA-256 nor MD5"),
                );
            }
        }
        if auth.realm.is_empty() || auth.realm.contains(['"', '\\', '\r', '\n']) {
            problems.push(
                "sip.auth.realm",
                "must be non-empty, without quotes or line breaks",
            );
        }
        if auth.nonce_ttl_secs == 0 {
            problems.push("sip.auth.nonce_ttl_secs", "must be at least 1");
        }
        let mut prefixes = HashSet::new();
        for (i, route) in self.routes.iter().enumerate() {
            if route.prefix.is_empty() {
                problems.push(
                    format!("routes[{i}].prefix"),
                    "must not be empty (use routing.default_trunk for everything else)",
                );
            } else if !prefixes.insert((route.prefix.as_str(), route.from_trunk.as_deref())) {
                problems.push(
                    format!("routes[{i}].prefix"),
                    format!("{:?} is routed twice", route.prefix),
                );
            }
            let unknown = |name: &str| format!("{name:?} is not the name of a trunk in [[trunks]]");
            match (&route.trunk, route.trunks.is_empty()) {
                (Some(_), false) => problems.push(
                    format!("routes[{i}].trunk"),
                    "give either trunk or trunks, not both",
                ),
                (None, true) => problems.push(
                    format!("routes[{i}].trunks"),
                    "must name at least one trunk",
                ),
                (Some(t), true) if !names.contains(t.as_str()) => {
                    problems.push(format!("routes[{i}].trunk"), unknown(t))
                }
                _ => {}
            }
            let listed = route.listed();
            for (j, t) in route.trunks.iter().enumerate() {
                let name = match t {
                    RouteTrunkConfig::Name(n) => n,
                    RouteTrunkConfig::Weighted(w) => &w.name,
                };
                if !names.contains(name.as_str()) {
                    problems.push(format!("routes[{i}].trunks[{j}]"), unknown(name));
                } else if listed.iter().filter(|t| &t.name == name).count() > 1 {
                    problems.push(
                        format!("routes[{i}].trunks[{j}]"),
                        format!("{name:?} is listed twice"),
                    );
                }
            }
            if let Some(from) = &route.from_trunk {
                if !names.contains(from.as_str()) {
                    problems.push(format!("routes[{i}].from_trunk"), unknown(from));
                }
            }
            if route.provisional_timeout_ms == Some(0) {
                problems.push(
                    format!("routes[{i}].provisional_timeout_ms"),
                    "must be at least 1 (leave it out to wait for Timer B)",
                );
            }
            check_failover_statuses(
                &format!("routes[{i}].failover_statuses"),
                &route.failover_statuses,
                problems,
            );
        }
        if let Some(default) = &self.routing.default_trunk {
            if !names.contains(default.as_str()) {
                problems.push(
                    "routing.default_trunk",
                    format!("{default:?} is not the name of a trunk in [[trunks]]"),
                );
            }
        }
    }

    /// The effective configuration as TOML, for `--check-config`.
    pub fn to_toml(&self) -> anyhow::Result<String> {
        toml::to_string(self).context("cannot render the configuration as TOML")
    }
}

/// One `sip.udp`/`sip.tcp` entry (`key` is e.g. `sip.udp[0]`): its `advertise` must be a
/// host peers can use, of the listen address's family when it is an IP, and a wildcard
/// listen address needs one (here or `sip.advertise`): Via and Contact cannot say `0.0.0.0`.
fn check_listen_entry(
    problems: &mut Problems,
    key: &str,
    entry: &ListenEntry,
    default: Option<IpAddr>,
) {
    let listen = entry.listen;
    match &entry.advertise {
        Some(text) => match Host::parse(text) {
            None => problems.push(
                format!("{key}.advertise"),
                format!("{text:?} is not a host name or IP address"),
            ),
            Some(host) => match host.ip() {
                Some(ip) if ip.is_unspecified() => problems.push(
                    format!("{key}.advertise"),
                    format!("{ip} is not an address peers can reach"),
                ),
                Some(ip) if ip.is_ipv4() != listen.is_ipv4() => problems.push(
                    format!("{key}.advertise"),
                    format!("{ip} and listen address {listen} are of different address families"),
                ),
                _ => {}
            },
        },
        None if listen.ip().is_unspecified() && default.is_none() => problems.push(
            format!("{key}.advertise"),
            format!("must be set (here or as sip.advertise) when listening on {listen}"),
        ),
        None => {}
    }
}

/// The addresses of one media interface (`key` is `media` or `media.interfaces[i]`): SDP
/// must name an address peers can reach, and a socket bound on one family cannot be
/// reached at an address of the other.
fn check_interface_addresses(
    problems: &mut Problems,
    key: &str,
    bind: IpAddr,
    advertise: Option<IpAddr>,
) {
    match advertise {
        None if bind.is_unspecified() => problems.push(
            format!("{key}.advertise"),
            format!("must be set when {key}.bind is {bind}"),
        ),
        Some(advertise) if advertise.is_ipv4() != bind.is_ipv4() => problems.push(
            format!("{key}.advertise"),
            format!("{advertise} and {key}.bind {bind} are of different address families"),
        ),
        _ => {}
    }
}

/// `RUST_LOG`, when set and not blank: a developer's ad-hoc log filter that wins over
/// `log.level`. Read here because this module is the only one that reads the environment.
pub fn rust_log_override() -> Option<String> {
    std::env::var("RUST_LOG")
        .ok()
        .filter(|value| !value.trim().is_empty())
}

/// Validation problems, each `key: what is wrong`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn push(&mut self, key: impl fmt::Display, problem: impl fmt::Display) {
        self.0.push(format!("{key}: {problem}"));
    }
}

/// Turns figment's errors into lines that name the key and the source of its value.
///
/// figment attributes an error to the value *containing* the bad key; for an unknown key inside
/// a table that also has defaults, that is the embedded defaults, not the file. So we look up
/// the source of the unknown key itself.
fn describe_errors(figment: &Figment, err: figment::Error) -> Vec<String> {
    err.into_iter()
        .map(|err| {
            let mut key = err.path.join(".");
            let message = match &err.kind {
                Kind::UnknownField(field, expected) => {
                    // figment usually puts the unknown field in `path` already; not always.
                    if err.path.last() != Some(field) {
                        key = if key.is_empty() {
                            field.clone()
                        } else {
                            format!("{key}.{field}")
                        };
                    }
                    let expected = figment::error::OneOf(expected);
                    format!("unknown field `{field}`, expected {expected}")
                }
                kind => kind.to_string(),
            };
            let source = figment
                .find_metadata(&key)
                .or(err.metadata.as_ref())
                .map(|md| match &md.source {
                    // figment's own Display shortens file paths relative to the working
                    // directory; operators need the path exactly as given.
                    Some(Source::File(file)) => format!(" in {} ({})", file.display(), md.name),
                    Some(source) => format!(" in {source} ({})", md.name),
                    None => format!(" in {}", md.name),
                })
                .unwrap_or_default();
            if key.is_empty() {
                format!("{message}{source}")
            } else {
                format!("{key}: {message}{source}")
            }
        })
        .collect()
}

/// Strings that may look like numbers: figment's environment provider parses
/// `TRUNKLINE_NODE__ID=42` as an integer, yet `42` is a valid node id.
mod lenient_string {
    use std::fmt;

    use serde::de::{Deserializer, Error, Visitor};

    struct StringOrNumber;

    impl Visitor<'_> for StringOrNumber {
        type Value = String;

        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a string")
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        d.deserialize_any(StringOrNumber)
    }

    pub fn deserialize_option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        deserialize(d).map(Some)
    }
}

/// `metrics.listen`: a socket address, or the empty string for "disabled".
mod optional_addr {
    use std::net::SocketAddr;

    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(addr: &Option<SocketAddr>, s: S) -> Result<S::Ok, S::Error> {
        match addr {
            Some(addr) => s.collect_str(addr),
            None => s.serialize_str(""),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
        let text = String::deserialize(d)?;
        if text.trim().is_empty() {
            return Ok(None);
        }
        text.trim().parse().map(Some).map_err(|_| {
            D::Error::custom(format!("{text:?} is not an ip:port (or \"\" to disable)"))
        })
    }
}

/// Path of the example configuration shipped in the repository, for tests.
#[cfg(test)]
fn example_path() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/single-node.toml")
}

#[cfg(test)]
#[allow(clippy::result_large_err)] // figment's Jail closures return figment::Error
mod tests {
    use super::*;
    use figment::Jail;

    /// Loads inside a figment `Jail`, which serialises environment access across tests and
    /// restores the environment afterwards.
    fn load_in_jail(
        env: &[(&str, &str)],
        file: Option<&str>,
        check: impl FnOnce(anyhow::Result<Config>, &Path),
    ) {
        Jail::expect_with(|jail| {
            jail.clear_env();
            for (k, v) in env {
                jail.set_env(k, v);
            }
            let path = jail.directory().join("trunkline.toml");
            if let Some(text) = file {
                jail.create_file(&path, text)?;
            }
            let result = Config::load(file.map(|_| path.as_path()));
            check(result, &path);
            Ok(())
        });
    }

    #[test]
    fn no_file_loads_valid_defaults() {
        load_in_jail(&[], None, |result, _| {
            let config = result.unwrap();
            assert_eq!(config, Config::default());
            assert_eq!(config.node.id, "n1");
            assert_eq!(config.sip.udp, vec![entry("127.0.0.1:5060")]);
            assert_eq!(
                config.metrics.listen,
                Some("127.0.0.1:9464".parse().unwrap())
            );
            assert_eq!(
                config.sip.advertise_ip(),
                Some("127.0.0.1".parse().unwrap())
            );
        });
    }

    #[test]
    fn example_file_loads() {
        let example = std::fs::read_to_string(example_path()).unwrap();
        load_in_jail(&[], Some(&example), |result, _| {
            let config = result.unwrap();
            assert_eq!(config.node.id, "n1");
            assert_eq!(config.trunks.len(), 1);
            assert_eq!(config.trunks[0].name, "carrier");
            assert_eq!(config.trunks[0].transport, TrunkTransport::Udp);
            assert_eq!(config.routing.default_trunk.as_deref(), Some("carrier"));
        });
        // And straight from the repository path, as the README command line does.
        Jail::expect_with(|jail| {
            jail.clear_env();
            Config::load(Some(&example_path())).unwrap();
            Ok(())
        });
    }

    #[test]
    fn cluster_example_file_loads() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/examples/cluster-node.toml");
        let example = std::fs::read_to_string(path).unwrap();
        load_in_jail(&[], Some(&example), |result, _| {
            let config = result.unwrap();
            assert_eq!(
                config.cluster.etcd_endpoints,
                vec!["http://127.0.0.1:2379".to_string()]
            );
            assert_eq!(config.cluster.lease_ttl_secs, 10);
            assert_eq!(config.routing.default_trunk.as_deref(), Some("carrier"));
        });
    }

    #[test]
    fn worker_threads_size_the_runtime_and_absurd_counts_are_refused() {
        load_in_jail(&[], Some("[node]\nworker_threads = 1\n"), |result, _| {
            assert_eq!(result.unwrap().worker_threads(), Some(1));
        });
        load_in_jail(&[], None, |result, _| {
            assert_eq!(result.unwrap().worker_threads(), None, "tokio's default");
        });
        load_in_jail(
            &[],
            Some("[node]\nworker_threads = 100000\n"),
            |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(message.contains("node.worker_threads"), "{message}");
            },
        );
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let file = "[metrics]\nlistne = \"127.0.0.1:1\"\n";
        load_in_jail(&[], Some(file), |result, path| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("unknown field `listne`"), "{message}");
            assert!(message.contains("metrics.listne"), "{message}");
            let expected = format!(
                "metrics.listne: unknown field `listne`, expected `listen` in {}",
                path.display()
            );
            assert!(message.contains(&expected), "{message}");
        });
    }

    #[test]
    fn a_non_loopback_admin_api_needs_tokens() {
        let open = "[admin]\nlisten = \"192.0.2.7:50051\"\n";
        load_in_jail(&[], Some(open), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("admin.tokens_file"), "{message}");
        });
        let with_file = format!("{open}tokens_file = \"/etc/trunkline/admin-tokens\"\n");
        load_in_jail(&[], Some(&with_file), |result, _| {
            assert!(result.is_ok(), "{:#}", result.unwrap_err());
        });
        load_in_jail(
            &[("TRUNKLINE_ADMIN_TOKENS", "operator:ops:0123456789abcdef")],
            Some(open),
            |result, _| {
                assert!(result.is_ok(), "{:#}", result.unwrap_err());
            },
        );
    }

    #[test]
    fn client_certificates_authenticate_a_non_loopback_admin_api() {
        let tls = "[admin]\nlisten = \"192.0.2.7:50051\"\n\
                   tls_cert_file = \"/etc/trunkline/admin.crt\"\n\
                   tls_key_file = \"/etc/trunkline/admin.key\"\n";
        load_in_jail(&[], Some(tls), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(
                message.contains("admin.listen"),
                "TLS alone is not authentication: {message}"
            );
        });
        let mtls = format!("{tls}tls_client_ca_file = \"/etc/trunkline/admin-clients.crt\"\n");
        load_in_jail(&[], Some(&mtls), |result, _| {
            assert!(result.is_ok(), "{:#}", result.unwrap_err());
        });
        let no_key = "[admin]\ntls_cert_file = \"/etc/trunkline/admin.crt\"\n";
        load_in_jail(&[], Some(no_key), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("admin.tls_key_file"), "{message}");
        });
        let ca_only = "[admin]\ntls_client_ca_file = \"/etc/trunkline/ca.crt\"\n";
        load_in_jail(&[], Some(ca_only), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("admin.tls_client_ca_file"), "{message}");
        });
    }

    #[test]
    fn cluster_settings_are_checked() {
        load_in_jail(&[], None, |result, _| {
            assert!(
                result.unwrap().cluster.etcd_endpoints.is_empty(),
                "standalone by default"
            );
        });
        let good = "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\nlease_ttl_secs = 3\n";
        load_in_jail(&[], Some(good), |result, _| {
            assert!(result.is_ok(), "{:#}", result.unwrap_err());
        });
        let bad = "[cluster]\netcd_endpoints = [\"http://etcd/path\"]\nlease_ttl_secs = 1\n";
        load_in_jail(&[], Some(bad), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.etcd_endpoints"), "{message}");
            assert!(message.contains("cluster.lease_ttl_secs"), "{message}");
        });
    }

    #[test]
    fn an_exposed_cluster_listener_needs_a_secret_or_mutual_tls() {
        let open = "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n\
                    listen = \"0.0.0.0:7000\"\n";
        load_in_jail(&[], Some(open), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.listen"), "{message}");
        });
        let secret = format!("{open}secret = \"0123456789abcdef-x\"\n");
        load_in_jail(&[], Some(&secret), |result, _| {
            assert!(result.is_ok(), "{:#}", result.unwrap_err());
        });
        let tls = format!(
            "{open}tls_cert_file = \"/etc/trunkline/node.crt\"\n\
             tls_key_file = \"/etc/trunkline/node.key\"\n\
             tls_ca_file = \"/etc/trunkline/cluster-ca.crt\"\n"
        );
        load_in_jail(&[], Some(&tls), |result, _| {
            let c = result.unwrap().cluster;
            assert_eq!(c.tls_server_name, "trunkline-cluster");
        });
        let half = format!("{open}tls_cert_file = \"/etc/trunkline/node.crt\"\n");
        load_in_jail(&[], Some(&half), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.tls_cert_file"), "{message}");
        });
        let bad_name = format!("{tls}tls_server_name = \"not a name\"\n");
        load_in_jail(&[], Some(&bad_name), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.tls_server_name"), "{message}");
        });
    }

    #[test]
    fn etcd_over_tls_is_all_or_nothing() {
        let https = "[cluster]\netcd_endpoints = [\"https://etcd.example:2379\"]\n";
        load_in_jail(&[], Some(https), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.etcd_ca_file"), "{message}");
        });
        let ca = "etcd_ca_file = \"/etc/trunkline/etcd-ca.crt\"\n";
        let tls = format!(
            "{https}{ca}etcd_cert_file = \"/etc/trunkline/node.crt\"\n\
             etcd_key_file = \"/etc/trunkline/node.key\"\n"
        );
        load_in_jail(&[], Some(&tls), |result, _| {
            let c = result.unwrap().cluster;
            assert!(c.etcd_ca_file.is_some() && c.etcd_key_file.is_some());
        });
        let mixed =
            format!("[cluster]\netcd_endpoints = [\"https://a:2379\", \"http://b:2379\"]\n{ca}");
        load_in_jail(&[], Some(&mixed), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.etcd_endpoints"), "{message}");
        });
        let half = format!("{https}{ca}etcd_cert_file = \"/etc/trunkline/node.crt\"\n");
        load_in_jail(&[], Some(&half), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.etcd_cert_file"), "{message}");
        });
        let plain_cert = "[cluster]\netcd_endpoints = [\"http://127.0.0.1:2379\"]\n\
                          etcd_cert_file = \"/c.crt\"\netcd_key_file = \"/c.key\"\n";
        load_in_jail(&[], Some(plain_cert), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("cluster.etcd_cert_file"), "{message}");
        });
    }

    #[test]
    fn an_unreadable_etcd_ca_stops_the_node_naming_the_key() {
        let c = ClusterConfig {
            etcd_endpoints: vec!["https://127.0.0.1:2379".into()],
            etcd_ca_file: Some("/nonexistent/etcd-ca.crt".into()),
            ..ClusterConfig::default()
        };
        let message = format!("{:#}", crate::cluster_server::load_etcd(&c).unwrap_err());
        assert!(message.contains("cluster.etcd_ca_file"), "{message}");
    }

    #[test]
    fn watchers_are_bounded() {
        load_in_jail(&[], None, |result, _| {
            assert_eq!(result.unwrap().admin.max_watchers, 64);
        });
        load_in_jail(&[], Some("[admin]\nmax_watchers = 0\n"), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("admin.max_watchers"), "{message}");
        });
    }

    #[test]
    fn admin_api_listens_on_loopback_by_default_and_nowhere_else() {
        load_in_jail(&[], None, |result, _| {
            assert_eq!(
                result.unwrap().admin.listen,
                Some("127.0.0.1:50051".parse().unwrap())
            );
        });
        load_in_jail(
            &[],
            Some("[admin]\nlisten = \"[::1]:50051\"\n"),
            |result, _| {
                assert!(result.is_ok(), "{:#}", result.unwrap_err());
            },
        );
        load_in_jail(&[], Some("[admin]\nlisten = \"\"\n"), |result, _| {
            assert_eq!(result.unwrap().admin.listen, None);
        });
        for open in ["0.0.0.0:50051", "192.0.2.7:50051"] {
            let file = format!("[admin]\nlisten = \"{open}\"\n");
            load_in_jail(&[], Some(&file), |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(message.contains("admin.listen"), "{message}");
                assert!(message.contains("loopback"), "{message}");
            });
        }
        let clash =
            "[metrics]\nlisten = \"127.0.0.1:9000\"\n[admin]\nlisten = \"127.0.0.1:9000\"\n";
        load_in_jail(&[], Some(clash), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("also metrics.listen"), "{message}");
        });
    }

    #[test]
    fn unknown_top_level_table_is_rejected() {
        load_in_jail(&[], Some("[sipp]\nudp = []\n"), |result, path| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("unknown field `sipp`"), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
        });
    }

    #[test]
    fn unknown_env_key_is_rejected_and_attributed() {
        load_in_jail(&[("TRUNKLINE_NODE__IDD", "x")], None, |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("unknown field `idd`"), "{message}");
            assert!(message.contains("TRUNKLINE_"), "{message}");
        });
    }

    #[test]
    fn env_overrides_file_and_nests() {
        let example = std::fs::read_to_string(example_path()).unwrap();
        let env = [
            ("TRUNKLINE_NODE__ID", "n7"),
            ("TRUNKLINE_SIP__UDP", "[\"127.0.0.1:5070\"]"),
            ("TRUNKLINE_SIP__TIMERS__T1_MS", "250"),
            ("TRUNKLINE_METRICS__LISTEN", ""),
            ("TRUNKLINE_LOG__FORMAT", "json"),
            ("TRUNKLINE_ROUTING__DEFAULT_TRUNK", "carrier"),
            ("TRUNKLINE_CONFIG", "/not/a/key"),
            // A harness's own variable must not be taken for a configuration key.
            ("TRUNKLINE_BIN", "/usr/local/bin/trunkline"),
        ];
        load_in_jail(&env, Some(&example), |result, _| {
            let config = result.unwrap();
            assert_eq!(config.node.id, "n7");
            assert_eq!(config.sip.udp, vec![entry("127.0.0.1:5070")]);
            assert_eq!(config.sip.tcp, vec![entry("127.0.0.1:5060")]);
            assert_eq!(config.sip.timers.t1_ms, 250);
            assert_eq!(config.sip.timers.t2_ms, 4000);
            assert_eq!(config.metrics.listen, None);
            assert_eq!(config.log.format, LogFormat::Json);
            assert_eq!(config.routing.default_trunk.as_deref(), Some("carrier"));
        });
    }

    /// A `sip.udp`/`sip.tcp` entry in its short form.
    fn entry(addr: &str) -> ListenEntry {
        addr.parse().unwrap()
    }

    #[test]
    fn maps_to_transport_config() {
        let mut sip = SipConfig {
            udp: vec![entry("127.0.0.1:5070")],
            tcp: vec![],
            max_message_bytes: 4096,
            tcp_idle_timeout_secs: 7,
            tcp_keepalive_secs: 0,
            tcp_partial_timeout_secs: 3,
            tcp_max_inbound: 9,
            tcp_max_outbound: 8,
            tcp_max_per_source: 7,
            tcp_send_queue_bytes: 65536,
            ..SipConfig::default()
        };
        let transport = sip.transport_config();
        assert_eq!(transport.tcp_send_queue_bytes, 65536);
        assert_eq!(
            transport.udp,
            vec![ListenerConfig::new("127.0.0.1:5070".parse().unwrap())]
        );
        assert!(transport.tcp.is_empty());
        assert_eq!(transport.max_message_bytes, 4096);
        assert_eq!(transport.tcp_idle_timeout, Duration::from_secs(7));
        assert_eq!(transport.tcp_keepalive, None, "0 turns keep-alives off");
        assert_eq!(transport.tcp_partial_timeout, Duration::from_secs(3));
        assert_eq!(
            (
                transport.tcp_max_inbound,
                transport.tcp_max_outbound,
                transport.tcp_max_per_source
            ),
            (9, 8, 7)
        );
        let defaults = TransportConfig::default();
        assert_eq!(transport.tcp_connect_timeout, defaults.tcp_connect_timeout);
        assert_eq!(transport.udp_recv_buffer, defaults.udp_recv_buffer);
        // Our defaults and the transport's agree, so no config means the same thing in both.
        sip = SipConfig::default();
        let ours = sip.transport_config();
        assert_eq!(ours.max_message_bytes, defaults.max_message_bytes);
        assert_eq!(ours.tcp_idle_timeout, defaults.tcp_idle_timeout);
        assert_eq!(ours.tcp_max_inbound, defaults.tcp_max_inbound);
        assert_eq!(ours.tcp_max_outbound, defaults.tcp_max_outbound);
        assert_eq!(ours.tcp_max_per_source, defaults.tcp_max_per_source);
        assert_eq!(ours.tcp_send_queue_bytes, defaults.tcp_send_queue_bytes);
        assert_eq!(ours.udp_congestion_percent, defaults.udp_congestion_percent);
    }

    #[test]
    fn numeric_node_id_from_env() {
        load_in_jail(&[("TRUNKLINE_NODE__ID", "42")], None, |result, _| {
            assert_eq!(result.unwrap().node.id, "42");
        });
        let file = "[[trunks]]\nname = \"7\"\naddress = \"127.0.0.1:5090\"\n";
        load_in_jail(
            &[("TRUNKLINE_ROUTING__DEFAULT_TRUNK", "7")],
            Some(file),
            |result, _| {
                assert_eq!(result.unwrap().routing.default_trunk.as_deref(), Some("7"));
            },
        );
    }

    #[test]
    fn missing_file_is_an_error() {
        Jail::expect_with(|jail| {
            jail.clear_env();
            let message = format!(
                "{:#}",
                Config::load(Some(Path::new("/nonexistent/t.toml"))).unwrap_err()
            );
            assert!(message.contains("/nonexistent/t.toml"), "{message}");
            Ok(())
        });
    }

    #[test]
    fn trunk_limits_and_the_source_limit_are_read_and_checked() {
        let file = r#"
[sip.source_limit]
max_requests = 50
window_secs = 0
include_access = true
[[trunks]]
name = "carrier"
address = "192.0.2.10:5060"
[trunks.limits]
calls_in = 30
cps_out = 5
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(
                message.contains("sip.source_limit.window_secs"),
                "{message}"
            );
        });
        let file = file.replace("window_secs = 0", "window_secs = 4");
        load_in_jail(&[], Some(&file), |result, _| {
            let c = result.unwrap();
            let sl = c.sip.source_limit.call_config();
            assert_eq!((sl.max_requests, sl.window.as_secs()), (50, 4));
            assert!(sl.include_access);
            let l = c.trunks[0].limits.call_limits();
            assert_eq!((l.inbound.calls, l.inbound.cps), (30, 0));
            assert_eq!((l.outbound.calls, l.outbound.cps), (0, 5));
        });
        // Unset: no trunk limit, and strangers are limited.
        load_in_jail(&[], None, |result, _| {
            let c = result.unwrap();
            assert!(c.sip.source_limit.max_requests > 0);
            assert!(c
                .trunks
                .iter()
                .all(|t| t.limits == TrunkLimitsConfig::default()));
        });
    }

    #[test]
    fn trunk_credentials_are_checked_at_start() {
        let file = r#"
[sip.auth]
algorithms = ["SHA-256", "SHA-1"]
[[trunks]]
name = "a"
address = "192.0.2.10:5060"
[trunks.auth]
username = "pbx"
[trunks.register]
expires_secs = 5
[[trunks]]
name = "b"
address = "192.0.2.11:5060"
[trunks.auth]
username = "pbx"
password_file = "/nonexistent/pbx.secret"
[trunks.outbound_auth]
username = ""
password = "x"
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for needle in [
                "sip.auth.algorithms[1]: \"SHA-1\" is neither SHA-256 nor MD5",
                "trunks[0].auth: needs password or password_file",
                "trunks[1].auth.username: \"pbx\" is another trunk's user",
                "trunks[1].auth: cannot read /nonexistent/pbx.secret",
                "trunks[1].outbound_auth.username: must not be empty",
                "trunks[0].register.user: needed (or an outbound_auth.username)",
                "trunks[0].register.expires_secs: must be at least 10",
            ] {
                assert!(message.contains(needle), "{needle} not in {message}");
            }
        });
    }

    #[test]
    fn a_trunk_may_be_named_by_dns_with_its_sources() {
        let t = |address: &str| TrunkConfig {
            address: address.into(),
            ..toml::from_str::<TrunkConfig>("name = \"x\"\naddress = \"192.0.2.1:5060\"").unwrap()
        };
        assert_eq!(
            t("carrier.example").dns_name(),
            Some(("carrier.example".into(), None))
        );
        assert_eq!(
            t("SBC1.Carrier.example.:5080").dns_name(),
            Some(("sbc1.carrier.example".into(), Some(5080)))
        );
        assert_eq!(t("192.0.2.1:5060").dns_name(), None);
        for bad in [
            "carrier..example",
            "-x.example",
            "carrier.example:99999",
            "a b",
            "192.0.2.1",
        ] {
            assert_eq!(t(bad).dns_name(), None, "{bad}");
        }
        let file = r#"
[[trunks]]
name = "a"
address = "carrier.example"
[[trunks]]
name = "b"
address = "not a host"
[[trunks.rewrites]]
direction = "inbound"
field = "ruri"
pattern = "^(0"
replace = "+44$1"
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for needle in [
                "trunks[0].sources: a trunk named by DNS needs the addresses",
                "trunks[1].address: \"not a host\" is neither an ip:port nor a host name",
                "trunks[1].rewrites[0].pattern: regex parse error",
            ] {
                assert!(message.contains(needle), "{needle} not in {message}");
            }
        });
    }

    #[test]
    fn tls_settings_are_checked_at_start() {
        let file = r#"
[sip]
tls = ["127.0.0.1:5061"]
tls_require_client_cert = true
[[trunks]]
name = "a"
address = "192.0.2.10:5061"
transport = "tls"
[trunks.tls]
server_name = "bad name!"
ca_file = "/nonexistent/ca.crt"
require_client_cert = true
[[trunks]]
name = "b"
address = "192.0.2.11:5060"
[trunks.tls]
server_name = "b.example"
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for needle in [
                "sip.tls: TLS listeners need sip.tls_cert_file and sip.tls_key_file",
                "sip.tls_require_client_cert: needs sip.tls_client_ca_file",
                "trunks[0].tls.server_name",
                "trunks[0].tls: /nonexistent/ca.crt",
                "trunks[0].tls.require_client_cert: needs sip.tls_client_ca_file",
                "trunks[1].tls: only for transport = \"tls\"",
            ] {
                assert!(message.contains(needle), "{needle} not in {message}");
            }
        });
    }

    #[test]
    fn toml_syntax_error_names_file() {
        load_in_jail(&[], Some("[node\nid = 1"), |result, path| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains(&path.display().to_string()), "{message}");
        });
    }

    #[test]
    fn validation_names_keys() {
        let file = r#"
[node]
id = "Node_1"
[sip]
max_message_bytes = 100
tcp_send_queue_bytes = 50
[sip.timers]
t1_ms = 5000
t2_ms = 4000
[log]
level = "info,=="
[[trunks]]
name = "a"
address = "carrier example:5060"
[[trunks]]
name = "a"
address = "127.0.0.1:5090"
transport = "tcp"
[[trunks]]
name = ""
address = "127.0.0.1:5091"
[routing]
default_trunk = "b"
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for key in [
                "node.id:",
                "sip.max_message_bytes:",
                "sip.tcp_send_queue_bytes:",
                "sip.timers.t1_ms:",
                "log.level:",
                "trunks[0].address:",
                "trunks[1].name:",
                "trunks[2].name:",
                "routing.default_trunk:",
            ] {
                assert!(message.contains(key), "missing {key} in {message}");
            }
            assert!(!message.contains("trunks[1].address"), "{message}");
        });
    }

    #[test]
    fn route_lists_load_and_are_checked() {
        let trunks = "[[trunks]]\nname = \"a\"\naddress = \"127.0.0.1:5090\"\n\
                      [[trunks]]\nname = \"b\"\naddress = \"127.0.0.1:5091\"\n\
                      [[trunks]]\nname = \"c\"\naddress = \"127.0.0.1:5092\"\n";
        let good = format!(
            "{trunks}[[routes]]\nprefix = \"+44\"\nprovisional_timeout_ms = 1500\n\
             failover_statuses = [\"503\", \"408\"]\n\
             trunks = [{{ name = \"a\", priority = 1, weight = 60 }}, \
             {{ name = \"b\", priority = 1, weight = 40 }}, \"c\"]\n\
             [[routes]]\nprefix = \"+44\"\nfrom_trunk = \"c\"\ntrunk = \"b\"\n"
        );
        load_in_jail(&[], Some(&good), |result, _| {
            let c = result.unwrap();
            let r = c.routes[0].route();
            let listed: Vec<(String, u32, u32)> = r
                .trunks
                .iter()
                .map(|t| (t.name.clone(), t.priority, t.weight))
                .collect();
            assert_eq!(
                listed,
                vec![("a".into(), 1, 60), ("b".into(), 1, 40), ("c".into(), 2, 1)]
            );
            assert_eq!(r.provisional_timeout, Some(Duration::from_millis(1500)));
            assert_eq!(r.failover_statuses.as_deref(), Some(&[408, 503][..]));
            assert_eq!(c.routes[1].route().from_trunk.as_deref(), Some("c"));
            crate::app::router_and_trust(&c).unwrap();
        });
        let bad = format!(
            "{trunks}[[routes]]\nprefix = \"1\"\ntrunk = \"a\"\ntrunks = [\"b\"]\n\
             [[routes]]\nprefix = \"2\"\n\
             [[routes]]\nprefix = \"3\"\ntrunks = [\"a\", \"x\", {{ name = \"a\", weight = 2 }}]\n\
             [[routes]]\nprefix = \"4\"\ntrunk = \"a\"\nfrom_trunk = \"y\"\n\
             provisional_timeout_ms = 0\nfailover_statuses = [\"200\"]\n\
             [[routes]]\nprefix = \"5\"\ntrunk = \"a\"\nfrom_trunk = \"b\"\n\
             [[routes]]\nprefix = \"5\"\ntrunk = \"c\"\nfrom_trunk = \"b\"\n"
        );
        load_in_jail(&[], Some(&bad), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for key in [
                "routes[0].trunk:",
                "routes[1].trunks:",
                "routes[2].trunks[1]:",
                "routes[2].trunks[2]:",
                "routes[3].from_trunk:",
                "routes[3].provisional_timeout_ms:",
                "routes[3].failover_statuses[0]:",
                "routes[5].prefix:",
            ] {
                assert!(message.contains(key), "missing {key} in {message}");
            }
        });
    }

    #[test]
    fn trust_routes_and_trunk_options_load_and_are_checked() {
        let good = r#"
[sip]
access_sources = ["10.0.0.0/8", "192.0.2.7", "2001:db8::/32"]
reply_to_unknown = false
trunk_503_status = 480
max_call_duration_secs = 7200
udp_congestion_percent = 80
[[trunks]]
name = "uk"
address = "127.0.0.1:5090"
sources = ["203.0.113.0/24", "198.51.100.7:5060"]
fix_nated_contact = true
media_address = "auto"
local_address = "127.0.0.1:5060"
[[routes]]
prefix = "+44"
trunk = "uk"
[routing]
default_trunk = "uk"
"#;
        load_in_jail(&[], Some(good), |result, _| {
            let c = result.unwrap();
            assert_eq!(c.sip.access_sources.len(), 3);
            assert!(!c.sip.reply_to_unknown);
            assert_eq!(c.sip.trunk_503_status, 480);
            assert_eq!(c.sip.max_call_duration_secs, 7200);
            assert_eq!(c.sip.transport_config().udp_congestion_percent, 80);
            let t = &c.trunks[0];
            assert_eq!(t.sources, vec!["203.0.113.0/24", "198.51.100.7:5060"]);
            assert!(t.fix_nated_contact);
            assert_eq!(t.media_address, trunkline_media::AddressPolicy::Auto);
            assert_eq!(c.routes[0].prefix, "+44");
        });
        let bad = r#"
[sip]
access_sources = ["10.0.0.0/33", "callers.example"]
trunk_503_status = 200
udp_congestion_percent = 101
[[trunks]]
name = "uk"
address = "127.0.0.1:5090"
sources = ["not an address"]
local_address = "127.0.0.9:5060"
[[routes]]
prefix = ""
trunk = "uk"
[[routes]]
prefix = "+1"
trunk = "us"
"#;
        load_in_jail(&[], Some(bad), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for key in [
                "sip.access_sources[0]:",
                "sip.access_sources[1]:",
                "sip.trunk_503_status:",
                "sip.udp_congestion_percent:",
                "trunks[0].sources[0]:",
                "trunks[0].local_address:",
                "routes[0].prefix:",
                "routes[1].trunk:",
            ] {
                assert!(message.contains(key), "missing {key} in {message}");
            }
        });
        let bad_policy =
            "[[trunks]]\nname = \"uk\"\naddress = \"127.0.0.1:5090\"\nmedia_address = \"nat\"\n";
        load_in_jail(&[], Some(bad_policy), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("media_address"), "{message}");
        });
    }

    #[test]
    fn wrong_type_names_key() {
        load_in_jail(
            &[],
            Some("[sip]\nudp = [\"not an address\"]\n"),
            |result, path| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(message.contains("sip.udp"), "{message}");
                assert!(message.contains(&path.display().to_string()), "{message}");
            },
        );
        load_in_jail(
            &[],
            Some("[[trunks]]\nname = \"x\"\naddress = \"127.0.0.1:1\"\ntransport = \"sctp\"\n"),
            |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(
                    message.contains("trunks.0.transport") || message.contains("sctp"),
                    "{message}"
                );
            },
        );
    }

    #[test]
    fn unspecified_listen_needs_advertise() {
        load_in_jail(
            &[],
            Some("[sip]\nudp = [\"0.0.0.0:5060\"]\ntcp = []\n"),
            |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(
                    message.contains("sip.udp[0].advertise: must be set (here or as sip.advertise) when listening on 0.0.0.0:5060"),
                    "{message}"
                );
            },
        );
        let file = "[sip]\nudp = [\"0.0.0.0:5060\"]\ntcp = []\nadvertise = \"192.0.2.10\"\n";
        load_in_jail(&[], Some(file), |result, _| {
            let config = result.unwrap();
            assert_eq!(
                config.sip.advertise_ip(),
                Some("192.0.2.10".parse().unwrap())
            );
        });
    }

    #[test]
    fn media_learning_timeouts_and_limits() {
        // Defaults: rtpengine's, and the relay gets them.
        load_in_jail(&[], None, |result, _| {
            let media = result.unwrap().media;
            assert_eq!(media.endpoint_learning, EndpointLearning::Delayed);
            let c = media.relay_config(ThreadPolicy::Inherit);
            assert_eq!(c.timeout, Duration::from_secs(60));
            assert_eq!(c.silent_timeout, Some(Duration::from_secs(3600)));
            assert_eq!(c.final_timeout, None);
            assert_eq!((c.max_streams, c.max_ports_per_call), (16, 64));
        });
        let file = "[media]\nendpoint_learning = \"heuristic\"\nsilent_timeout_secs = 0\n\
                    final_timeout_secs = 7200\nmax_streams = 4\nmax_ports_per_call = 16\n";
        load_in_jail(
            &[("TRUNKLINE_MEDIA__TIMEOUT_SECS", "20")],
            Some(file),
            |result, _| {
                let c = result.unwrap().media.relay_config(ThreadPolicy::Inherit);
                assert_eq!(c.endpoint_learning, EndpointLearning::Heuristic);
                assert_eq!(c.timeout, Duration::from_secs(20));
                assert_eq!(c.silent_timeout, None, "0 is off");
                assert_eq!(c.final_timeout, Some(Duration::from_secs(7200)));
                assert_eq!((c.max_streams, c.max_ports_per_call), (4, 16));
            },
        );
        let file = "[media]\nendpoint_learning = \"sometimes\"\n";
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("endpoint_learning"), "{message}");
        });
        let file = "[media]\nmax_streams = 0\nmax_ports_per_call = 3\n";
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(
                message.contains("media.max_streams: must be at least 1"),
                "{message}"
            );
            assert!(
                message.contains("media.max_ports_per_call: must be at least 4"),
                "{message}"
            );
        });
    }

    #[test]
    fn media_scheduling_and_priority() {
        let file = "[media]\nscheduling = \"fifo\"\npriority = 10\n";
        load_in_jail(&[], Some(file), |result, _| {
            let media = result.unwrap().media;
            assert_eq!(media.scheduling, Scheduling::Fifo);
            assert_eq!(media.thread_policy(), Ok(ThreadPolicy::Fifo(10)));
        });
        // rtpengine's names, "none" included, and a negative nice value from the environment.
        let env = [
            ("TRUNKLINE_MEDIA__SCHEDULING", "none"),
            ("TRUNKLINE_MEDIA__PRIORITY", "-5"),
        ];
        load_in_jail(&env, None, |result, _| {
            assert_eq!(
                result.unwrap().media.thread_policy(),
                Ok(ThreadPolicy::Nice(-5))
            );
        });
        load_in_jail(&[], None, |result, _| {
            assert_eq!(
                result.unwrap().media.thread_policy(),
                Ok(ThreadPolicy::Inherit)
            );
        });
        for (file, needle) in [
            (
                "[media]\nscheduling = \"rr\"\n",
                "media.priority: scheduling rr needs",
            ),
            (
                "[media]\nscheduling = \"fifo\"\npriority = 100\n",
                "media.priority: priority 100 is outside 1..=99",
            ),
            (
                "[media]\nscheduling = \"batch\"\npriority = 20\n",
                "media.priority: priority 20 is outside -20..=19",
            ),
            ("[media]\nscheduling = \"deadline\"\n", "media.scheduling"),
        ] {
            load_in_jail(&[], Some(file), |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(message.contains(needle), "{file}: {message}");
            });
        }
    }

    #[test]
    fn runtime_threads_default_to_batch_and_take_rtpengine_names() {
        load_in_jail(&[], None, |result, _| {
            let config = result.unwrap();
            assert_eq!(config.node.scheduling, Scheduling::Batch);
            assert_eq!(
                config.runtime_thread_policy(),
                Ok(ThreadPolicy::Batch(None))
            );
        });
        let env = [
            ("TRUNKLINE_NODE__SCHEDULING", "none"),
            ("TRUNKLINE_NODE__PRIORITY", "3"),
        ];
        load_in_jail(&env, None, |result, _| {
            assert_eq!(
                result.unwrap().runtime_thread_policy(),
                Ok(ThreadPolicy::Nice(3))
            );
        });
        load_in_jail(&[], Some("[node]\nscheduling = \"rr\"\n"), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(
                message.contains("node.priority: scheduling rr needs"),
                "{message}"
            );
        });
    }

    /// An access network on the default interface, a carrier network on `carrier`.
    const TWO_NETWORKS: &str = r#"
[media]
bind = "127.0.0.1"
[[media.interfaces]]
name = "carrier"
bind = "127.0.0.2"
advertise = "192.0.2.20"
[[media.interfaces]]
name = "lab"
bind = "::1"
[[trunks]]
name = "pstn"
address = "127.0.0.1:5090"
media_interface = "carrier"
[[trunks]]
name = "local"
address = "127.0.0.1:5091"
[routing]
default_trunk = "pstn"
"#;

    #[test]
    fn media_interfaces_for_access_and_trunks() {
        load_in_jail(&[], Some(TWO_NETWORKS), |result, _| {
            let config = result.unwrap();
            let ip = |s: &str| s.parse::<IpAddr>().unwrap();
            assert_eq!(
                config.media.relay_interfaces(),
                vec![
                    MediaInterface::new("default", ip("127.0.0.1"), ip("127.0.0.1")),
                    MediaInterface::new("carrier", ip("127.0.0.2"), ip("192.0.2.20")),
                    MediaInterface::new("lab", ip("::1"), ip("::1")),
                ]
            );
            assert_eq!(config.media.access_interface, None);
            assert_eq!(config.trunks[0].media_interface.as_deref(), Some("carrier"));
            assert_eq!(config.trunks[1].media_interface, None);
        });
        // The access side from the environment; `default` names the bind/advertise one.
        for name in ["carrier", "default"] {
            let env = [("TRUNKLINE_MEDIA__ACCESS_INTERFACE", name)];
            load_in_jail(&env, Some(TWO_NETWORKS), |result, _| {
                assert_eq!(
                    result.unwrap().media.access_interface.as_deref(),
                    Some(name)
                );
            });
        }
        // Interfaces from the environment alone, a numeric-looking name included.
        let env = [
            (
                "TRUNKLINE_MEDIA__INTERFACES",
                "[{name=\"7\", bind=\"127.0.0.3\"}]",
            ),
            ("TRUNKLINE_MEDIA__ACCESS_INTERFACE", "7"),
        ];
        load_in_jail(&env, None, |result, _| {
            let media = result.unwrap().media;
            assert_eq!(media.access_interface.as_deref(), Some("7"));
            assert_eq!(media.relay_interfaces()[1].name, "7");
        });
        // No interfaces: one, the default, as before.
        assert_eq!(
            MediaSection::default().relay_interfaces(),
            vec![MediaInterface::new(
                DEFAULT_INTERFACE,
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 1])
            )]
        );
    }

    #[test]
    fn media_interface_validation_names_keys() {
        let file = r#"
[media]
access_interface = "acess"
[[media.interfaces]]
name = "carrier"
bind = "127.0.0.2"
[[media.interfaces]]
name = "carrier"
bind = "127.0.0.3"
[[media.interfaces]]
name = "default"
bind = "127.0.0.4"
[[media.interfaces]]
name = ""
bind = "127.0.0.5"
[[media.interfaces]]
name = "public"
bind = "0.0.0.0"
[[media.interfaces]]
name = "v6"
bind = "::1"
advertise = "192.0.2.1"
[[trunks]]
name = "pstn"
address = "127.0.0.1:5090"
media_interface = "carrier"
[[trunks]]
name = "other"
address = "127.0.0.1:5091"
media_interface = "carier"
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for needle in [
                "media.interfaces[1].name: \"carrier\" is used by another interface",
                "media.interfaces[2].name: \"default\" is the interface media.bind",
                "media.interfaces[3].name: must not be empty",
                "media.interfaces[4].advertise: must be set when media.interfaces[4].bind is 0.0.0.0",
                "media.interfaces[5].advertise: 192.0.2.1 and media.interfaces[5].bind ::1 are of different address families",
                "media.access_interface: \"acess\" is not a media interface (configured: default, carrier, public, v6)",
                "trunks[1].media_interface: \"carier\" is not a media interface",
            ] {
                assert!(message.contains(needle), "missing {needle:?} in {message}");
            }
            assert!(!message.contains("media.interfaces[0]"), "{message}");
            assert!(!message.contains("trunks[0]"), "{message}");
        });
        // Unknown keys inside an entry are rejected like everywhere else.
        let file = "[[media.interfaces]]\nname = \"carrier\"\nbind = \"127.0.0.2\"\nadvertize = \"192.0.2.1\"\n";
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            assert!(message.contains("unknown field `advertize`"), "{message}");
            assert!(
                message.contains("media.interfaces.0.advertize:"),
                "{message}"
            );
        });
    }

    #[test]
    fn effective_config_round_trips_through_toml() {
        let example = std::fs::read_to_string(example_path()).unwrap();
        load_in_jail(&[], Some(&example), |result, _| {
            let config = result.unwrap();
            let text = config.to_toml().unwrap();
            let again: Config = toml::from_str(&text).unwrap();
            assert_eq!(again, config);
        });
        let disabled = Config {
            metrics: MetricsConfig { listen: None },
            ..Config::default()
        };
        let text = disabled.to_toml().unwrap();
        assert!(text.contains("listen = \"\""), "{text}");
        assert_eq!(toml::from_str::<Config>(&text).unwrap(), disabled);
        let env = [("TRUNKLINE_MEDIA__ACCESS_INTERFACE", "carrier")];
        load_in_jail(&env, Some(TWO_NETWORKS), |result, _| {
            let config = result.unwrap();
            let text = config.to_toml().unwrap();
            assert!(text.contains("[[media.interfaces]]"), "{text}");
            assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        });
    }

    #[test]
    fn listeners_in_string_and_table_form_with_their_own_advertise() {
        let file = r#"
[sip]
advertise = "192.0.2.10"
udp = ["127.0.0.1:5060", { listen = "127.0.0.2:5060", advertise = "carrier.example.net" }]
tcp = [{ listen = "0.0.0.0:5061", advertise = "203.0.113.7" }, { listen = "127.0.0.1:5061" }]
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let config = result.unwrap();
            let sip = &config.sip;
            assert_eq!(sip.udp[0], entry("127.0.0.1:5060"));
            assert_eq!(
                sip.udp[1],
                ListenEntry {
                    listen: "127.0.0.2:5060".parse().unwrap(),
                    advertise: Some("carrier.example.net".into()),
                }
            );
            assert_eq!(sip.tcp[1], entry("127.0.0.1:5061"));
            // Entries without their own advertise take sip.advertise.
            let transport = sip.transport_config();
            let host = |s: &str| Some(Host::parse(s).unwrap());
            let advertised: Vec<_> = transport
                .udp
                .iter()
                .chain(&transport.tcp)
                .map(|l| l.advertise.clone())
                .collect();
            assert_eq!(
                advertised,
                vec![
                    host("192.0.2.10"),
                    host("carrier.example.net"),
                    host("203.0.113.7"),
                    host("192.0.2.10"),
                ]
            );
            // The effective configuration keeps both forms.
            let text = config.to_toml().unwrap();
            assert_eq!(toml::from_str::<Config>(&text).unwrap(), config);
        });
        // No sip.advertise: each listener its own IP; a table with only `listen` is fine.
        let file = "[sip]\nudp = [{ listen = \"127.0.0.2:5062\" }]\ntcp = []\n";
        load_in_jail(&[], Some(file), |result, _| {
            let config = result.unwrap();
            assert_eq!(config.sip.transport_config().udp[0].advertise, None);
            assert_eq!(
                config.sip.advertise_ip(),
                Some(IpAddr::from([127, 0, 0, 2]))
            );
        });
        // From the environment, in the table form too.
        let env = [(
            "TRUNKLINE_SIP__UDP",
            "[{listen=\"0.0.0.0:5070\", advertise=\"198.51.100.1\"}]",
        )];
        load_in_jail(&env, None, |result, _| {
            let config = result.unwrap();
            assert_eq!(
                config.sip.udp[0].advertise_host(),
                Host::parse("198.51.100.1")
            );
            // What the dispatcher writes until it asks the transport per listener.
            assert_eq!(
                config.sip.advertise_ip(),
                Some(IpAddr::from([198, 51, 100, 1]))
            );
        });
    }

    #[test]
    fn listener_problems_name_the_entry() {
        let file = r#"
[sip]
udp = [
  "127.0.0.1:5060",
  { listen = "127.0.0.1:5062", advertise = "bad host!" },
  { listen = "[::1]:5062", advertise = "192.0.2.1" },
  { listen = "127.0.0.1:5063", advertise = "0.0.0.0" },
]
tcp = ["0.0.0.0:5060"]
tcp_max_inbound = 0
tcp_max_outbound = 0
tcp_max_per_source = 0
"#;
        load_in_jail(&[], Some(file), |result, _| {
            let message = format!("{:#}", result.unwrap_err());
            for needle in [
                "sip.udp[1].advertise: \"bad host!\" is not a host name or IP address",
                "sip.udp[2].advertise: 192.0.2.1 and listen address [::1]:5062 are of different address families",
                "sip.udp[3].advertise: 0.0.0.0 is not an address peers can reach",
                "sip.tcp[0].advertise: must be set (here or as sip.advertise) when listening on 0.0.0.0:5060",
                "sip.tcp_max_inbound: must be greater than 0",
                "sip.tcp_max_outbound: must be greater than 0",
                "sip.tcp_max_per_source: must be greater than 0",
            ] {
                assert!(message.contains(needle), "missing {needle:?} in {message}");
            }
            assert!(!message.contains("sip.udp[0]"), "{message}");
        });
        // Type errors name the key: a bad address in either form, an unknown key in a table.
        for (file, needles) in [
            (
                "[sip]\nudp = [\"127.0.0.1\"]\n",
                ["sip.udp", "\"127.0.0.1\" is not an IP:PORT"],
            ),
            (
                "[sip]\ntcp = [{ listen = \"nowhere\" }]\n",
                ["sip.tcp", "nowhere"],
            ),
            (
                "[sip]\ntcp = [{ listen = \"127.0.0.1:5060\", advertize = \"x\" }]\n",
                ["sip.tcp", "unknown field `advertize`"],
            ),
            ("[sip]\ntcp = [5060]\n", ["sip.tcp", "IP:PORT"]),
        ] {
            load_in_jail(&[], Some(file), |result, path| {
                let message = format!("{:#}", result.unwrap_err());
                for needle in needles {
                    assert!(
                        message.contains(needle),
                        "{file}: missing {needle:?} in {message}"
                    );
                }
                assert!(message.contains(&path.display().to_string()), "{message}");
            });
        }
        // The old single limit is gone, and says so.
        load_in_jail(
            &[],
            Some("[sip]\ntcp_max_connections = 10\n"),
            |result, _| {
                let message = format!("{:#}", result.unwrap_err());
                assert!(
                    message.contains("sip.tcp_max_connections: unknown field"),
                    "{message}"
                );
            },
        );
    }
}

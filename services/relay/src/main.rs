//! `trunkline-relay`: the media relay alone, driven over rtpengine's ng protocol.
//!
//! It takes rtpengine's command line (and `--config-file` with an `[rtpengine]` section), so an
//! existing Kamailio/OpenSIPS deployment can swap the binary without touching its config.
//! rtpengine options with no meaning here (redis, recording, CLI port…) are accepted and
//! ignored with a warning rather than refused; `--help` lists them apart from the options
//! that work. `--table` keeps its meaning: ≥ 0 (the default) relays latched RTP in the
//! kernel, here with an eBPF program instead of rtpengine's module, and -1 keeps all
//! forwarding in user space. The four timeouts and `--endpoint-learning` are rtpengine's,
//! with rtpengine's defaults.

use anyhow::{bail, Context, Result};
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use trunkline_media::ng::{Dispatcher, NgServer, ServerLimits};
use trunkline_media::{
    EndpointLearning, Interfaces, MediaConfig, MediaInterface, Relay, Scheduling, ThreadPolicy,
    DEFAULT_INTERFACE,
};

/// rtpengine-compatible options. Short forms are rtpengine's.
#[derive(Parser, Debug)]
#[command(name = "trunkline-relay", version, about, args_override_self = true)]
struct Cli {
    /// Media interface: `IP`, `NAME/IP`, `IP!ADVERTISED`, `NAME/IP!ADVERTISED` (no name:
    /// `default`); repeatable, one address per family and name. The ng `direction` key picks
    /// one per side of a call; without it the first is used.
    #[arg(short = 'i', long = "interface")]
    interface: Vec<String>,
    /// ng over UDP: `IP:PORT` or `PORT` (127.0.0.1); repeatable.
    #[arg(short = 'n', long = "listen-ng")]
    listen_ng: Vec<String>,
    /// ng over TCP: `IP:PORT` or `PORT` (127.0.0.1); repeatable.
    #[arg(short = 'N', long = "listen-tcp-ng")]
    listen_tcp_ng: Vec<String>,
    /// Lowest media port.
    #[arg(short = 'm', long = "port-min", default_value_t = 30000)]
    port_min: u16,
    /// Highest media port.
    #[arg(short = 'M', long = "port-max", default_value_t = 40000)]
    port_max: u16,
    /// Seconds without a packet on any active stream of an answered call before it is
    /// deleted.
    #[arg(short = 'o', long = "timeout", default_value_t = 60)]
    timeout: u64,
    /// The same for an answered call whose every stream is on hold or muted (sendonly,
    /// recvonly, inactive, c=0.0.0.0); 0: never.
    #[arg(short = 's', long = "silent-timeout", default_value_t = 3600)]
    silent_timeout: u64,
    /// Seconds after its last offer before a call never answered is deleted; 0: never.
    #[arg(long = "offer-timeout", default_value_t = 3600)]
    offer_timeout: u64,
    /// Seconds after its creation before any call is deleted, whatever happens in it; 0
    /// (the default): never.
    #[arg(short = 'a', long = "final-timeout", default_value_t = 0)]
    final_timeout: u64,
    /// How parties' real sources are learnt when they differ from the SDP: delayed (wait
    /// 3 s after each signal for the SDP address, then take the first source), heuristic
    /// (after 3 s, the source most like the SDP address), immediate (no wait for the SDP
    /// address's IP with another port), off (the SDP address only). Strangers are never
    /// latched ahead of a party sending from its SDP address, in any mode.
    #[arg(long = "endpoint-learning", default_value = "delayed")]
    endpoint_learning: EndpointLearning,
    /// Seconds freed ports should rest before another call gets them. Ports are reused
    /// least recently freed first, so they rest as long as the range allows; this only
    /// decides what counts as reused early. (rtpengine's delete delay keeps a deleted call
    /// alive this long; here a delete is immediate.)
    #[arg(short = 'd', long = "delete-delay", default_value_t = 30)]
    delete_delay: u64,
    /// Most m-lines per SDP; an offer or answer with more is refused (not in rtpengine).
    #[arg(long = "max-streams", default_value_t = 16)]
    max_streams: usize,
    /// Most media ports one call may hold, 4 per anchored m-line; an offer needing more
    /// is refused (not in rtpengine).
    #[arg(long = "max-ports-per-call", default_value_t = 64)]
    max_ports_per_call: usize,
    /// Forwarding threads (0: one per core).
    #[arg(long = "num-threads", default_value_t = 0)]
    num_threads: usize,
    /// Scheduling policy of the forwarding threads: default (or none), fifo, rr, other,
    /// batch, idle.
    #[arg(long = "scheduling")]
    scheduling: Option<Scheduling>,
    /// Forwarding threads' priority: 1-99 (real-time) with fifo/rr, else a nice value
    /// -20..19.
    #[arg(long = "priority", allow_negative_numbers = true)]
    priority: Option<i32>,
    /// Syslog level 0–7 (3 err, 4 warning, 5 notice, 6 info, 7 debug).
    #[arg(short = 'L', long = "log-level", default_value_t = 5)]
    log_level: u8,
    /// Accepted: we always run in the foreground.
    #[arg(short = 'f', long = "foreground")]
    foreground: bool,
    /// Accepted: we always log to stderr.
    #[arg(short = 'E', long = "log-stderr")]
    log_stderr: bool,
    /// Write our PID here (removed on exit).
    #[arg(short = 'p', long = "pidfile")]
    pidfile: Option<PathBuf>,
    /// Kernel forwarding: ≥ 0 (default 0) relays latched RTP with an eBPF program when the
    /// kernel allows it (Linux 6.6+, CAP_BPF + CAP_NET_ADMIN), else in user space; -1 never.
    /// The table number itself has no meaning here.
    #[arg(short = 't', long = "table", allow_hyphen_values = true)]
    table: Option<i64>,
    /// Without an explicit `trust address` flag, use the SIP source address.
    #[arg(long = "sip-source")]
    sip_source: bool,
    /// rtpengine CLI port: accepted, ignored (no CLI).
    #[arg(short = 'c', long = "listen-cli")]
    listen_cli: Vec<String>,
    /// INI file whose section (default `rtpengine`) supplies options not given here.
    #[arg(long = "config-file")]
    config_file: Option<PathBuf>,
    /// Section of `--config-file` to read.
    #[arg(long = "config-section", default_value = "rtpengine")]
    config_section: String,
}

/// rtpengine options that change nothing here: (long name, short, takes a value).
const IGNORED: &[(&str, Option<char>, bool)] = &[
    ("no-fallback", Some('F'), false),
    ("tos", Some('T'), true),
    ("control-tos", None, true),
    ("redis", Some('r'), true),
    ("redis-write", Some('w'), true),
    ("no-redis-required", Some('q'), false),
    ("subscribe-keyspace", Some('k'), true),
    ("listen-tcp", Some('l'), true),
    ("listen-udp", Some('u'), true),
    ("listen-http", None, true),
    ("listen-https", None, true),
    ("graphite", Some('g'), true),
    ("graphite-interval", Some('G'), true),
    ("graphite-prefix", None, true),
    ("log-facility", None, true),
    ("log-facility-cdr", None, true),
    ("log-facility-rtcp", None, true),
    ("log-format", None, true),
    ("log-name", None, true),
    ("no-log-timestamps", None, false),
    ("split-logs", None, false),
    ("xmlrpc-format", Some('x'), true),
    ("b2b-url", Some('b'), true),
    ("max-sessions", None, true),
    ("max-load", None, true),
    ("max-cpu", None, true),
    ("max-bandwidth", None, true),
    ("media-num-threads", None, true),
    ("codec-num-threads", None, true),
    ("homer", None, true),
    ("homer-protocol", None, true),
    ("homer-id", None, true),
    ("recording-dir", None, true),
    ("recording-method", None, true),
    ("recording-format", None, true),
    ("dtls-passive", None, false),
    ("save-interface-ports", Some('S'), false),
    ("thread-stack", None, true),
    ("poller-size", None, true),
    ("poller-per-thread", None, false),
    ("idle-scheduling", None, true),
    ("idle-priority", None, true),
    ("nftables-chain", None, true),
    ("nftables-base-chain", None, true),
];

/// [`Cli`]'s command, with the rtpengine options it accepts and ignores listed after the
/// options it honours, so `--help` says which is which.
fn command() -> clap::Command {
    let ignored = IGNORED
        .iter()
        .map(|(long, short, _)| match short {
            Some(s) => format!("--{long} (-{s})"),
            None => format!("--{long}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Cli::command().after_help(format!(
        "Accepted for rtpengine compatibility and ignored (a warning is logged): {ignored}."
    ))
}

/// Long names (as in the config file) of the options [`Cli`] understands.
fn known_keys() -> Vec<String> {
    Cli::command()
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_owned))
        .collect()
}

/// Drops ignored rtpengine options from argv, warning about each.
fn strip_ignored(args: Vec<String>, warnings: &mut Vec<String>) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut it = args.into_iter();
    // Bounded by the argument count.
    while let Some(a) = it.next() {
        let hit = IGNORED.iter().find(|(long, short, _)| {
            a == format!("--{long}")
                || a.starts_with(&format!("--{long}="))
                || short.is_some_and(|s| a == format!("-{s}"))
        });
        match hit {
            Some((long, _, takes_value)) => {
                if *takes_value && !a.contains('=') {
                    it.next();
                }
                warnings.push(format!("option --{long} ignored"));
            }
            None => out.push(a),
        }
    }
    out
}

/// `[section]` of a glib-style key file: `key = value`, `#`/`;` comments.
fn read_ini(path: &PathBuf, section: &str) -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let mut current = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            current = name.trim().to_owned();
            continue;
        }
        if current != section {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            bail!("{}: malformed line {line:?}", path.display());
        };
        out.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(out)
}

/// Config-file entries as `--key=value` arguments, for options not given on the command line.
/// glib key files separate list items with `;`; booleans are `true`/`false`.
fn config_args(
    entries: Vec<(String, String)>,
    cli: &ArgMatches,
    warnings: &mut Vec<String>,
) -> Vec<String> {
    let known = known_keys();
    let mut out = Vec::new();
    for (key, value) in entries {
        if key == "config-file" || key == "config-section" {
            continue;
        }
        if IGNORED.iter().any(|(long, _, _)| *long == key) {
            warnings.push(format!("config {key} ignored"));
            continue;
        }
        if !known.contains(&key) {
            warnings.push(format!("config key {key} not supported; ignored"));
            continue;
        }
        let id = key.replace('-', "_");
        if cli.value_source(&id) == Some(clap::parser::ValueSource::CommandLine) {
            continue; // the command line wins, as with rtpengine
        }
        let flag = Cli::command()
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .is_some_and(|a| !a.get_action().takes_values());
        if flag {
            if value.eq_ignore_ascii_case("true") || value == "1" {
                out.push(format!("--{key}"));
            }
            continue;
        }
        for item in value.split(';').map(str::trim).filter(|s| !s.is_empty()) {
            out.push(format!("--{key}={item}"));
        }
    }
    out
}

impl Cli {
    /// `--scheduling` and `--priority` only make sense together (the priority is a nice
    /// value or a real-time priority depending on the policy), so they are checked as a
    /// pair once both the command line and the config file are in.
    /// Every `--interface`, checked as a set once the command line and the config file are
    /// merged: a bad form, a missing `--interface` or a name given two addresses of one
    /// family is a usage error, as a bad value of any other option is.
    fn interfaces(&self) -> Result<Vec<MediaInterface>, clap::Error> {
        let usage =
            |msg: String| Cli::command().error(clap::error::ErrorKind::ValueValidation, msg);
        if self.interface.is_empty() {
            return Err(Cli::command().error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "--interface is required",
            ));
        }
        let list = self
            .interface
            .iter()
            .map(|s| parse_interface(s).map_err(|e| usage(format!("{e:#}"))))
            .collect::<Result<Vec<_>, _>>()?;
        Interfaces::new(list.clone()).map_err(|e| usage(format!("--interface: {e}")))?;
        Ok(list)
    }

    /// The engine's settings from the options, on `interfaces`.
    fn media_config(&self, interfaces: Vec<MediaInterface>) -> Result<MediaConfig, clap::Error> {
        Ok(MediaConfig {
            interfaces,
            port_min: self.port_min,
            port_max: self.port_max,
            workers: self.num_threads,
            timeout: Duration::from_secs(self.timeout.max(1)),
            silent_timeout: secs_or_off(self.silent_timeout),
            offer_timeout: secs_or_off(self.offer_timeout),
            final_timeout: secs_or_off(self.final_timeout),
            endpoint_learning: self.endpoint_learning,
            max_streams: self.max_streams.max(1),
            max_ports_per_call: self.max_ports_per_call.max(4),
            port_rest: Duration::from_secs(self.delete_delay),
            thread_policy: self.thread_policy()?,
            kernel_forwarding: self.table.unwrap_or(0) >= 0,
            ..MediaConfig::default()
        })
    }

    fn thread_policy(&self) -> Result<ThreadPolicy, clap::Error> {
        ThreadPolicy::new(self.scheduling.unwrap_or_default(), self.priority).map_err(|e| {
            Cli::command().error(
                clap::error::ErrorKind::ValueValidation,
                format!("--scheduling/--priority: {e}"),
            )
        })
    }
}

/// Parses argv plus the optional config file; exits like clap on a bad value.
fn parse_cli(warnings: &mut Vec<String>) -> Result<Cli> {
    let cli = parse_cli_unchecked(warnings)?;
    if let Err(e) = cli.thread_policy() {
        e.exit();
    }
    if let Err(e) = cli.interfaces() {
        e.exit();
    }
    Ok(cli)
}

fn parse_cli_unchecked(warnings: &mut Vec<String>) -> Result<Cli> {
    let argv = strip_ignored(std::env::args().collect(), warnings);
    let first = command().get_matches_from(argv.clone());
    let Some(path) = first.get_one::<PathBuf>("config_file").cloned() else {
        return Ok(Cli::from_arg_matches(&first)?);
    };
    let section = first
        .get_one::<String>("config_section")
        .cloned()
        .unwrap_or_else(|| "rtpengine".into());
    let entries = read_ini(&path, &section)?;
    let extra = config_args(entries, &first, warnings);
    let mut merged = Vec::with_capacity(argv.len() + extra.len());
    merged.extend(argv.first().cloned());
    merged.extend(extra);
    merged.extend(argv.into_iter().skip(1));
    Ok(Cli::from_arg_matches(&command().get_matches_from(merged))?)
}

/// rtpengine's legacy interface syntax: `IP`, `NAME/IP`, `IP!ADVERTISED`, `NAME/IP!ADVERTISED`
/// (no name: `default`, as in rtpengine). Addresses only: rtpengine's system interface names
/// (`eth0`), host names, `any` and `ALIAS=NAME` are refused with a message saying so.
fn parse_interface(s: &str) -> Result<MediaInterface> {
    let (name, addrs) = s
        .split_once('/')
        .map_or((DEFAULT_INTERFACE, s), |(n, rest)| (n.trim(), rest));
    if name.is_empty() {
        bail!("--interface {s}: empty name before '/'");
    }
    if name.contains('=') {
        bail!("--interface {s}: interface aliases (ALIAS=NAME) are not supported");
    }
    let (bind, adv) = addrs.split_once('!').unwrap_or((addrs, addrs));
    let bind: IpAddr = bind
        .trim()
        .parse()
        .with_context(|| format!("--interface {s}: {bind:?} is not an IP"))?;
    let adv: IpAddr = adv
        .trim()
        .parse()
        .with_context(|| format!("--interface {s}: {adv:?} is not an IP"))?;
    Ok(MediaInterface::new(name, bind, adv))
}

/// `IP:PORT`, `[V6]:PORT`, `HOST:PORT` or a bare `PORT` (127.0.0.1).
fn parse_listen(s: &str) -> Result<SocketAddr> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.to_socket_addrs()
        .with_context(|| format!("listen address {s}"))?
        .next()
        .with_context(|| format!("listen address {s} resolves to nothing"))
}

/// syslog level → tracing filter.
fn log_filter(level: u8) -> &'static str {
    match level {
        0..=3 => "error",
        4 => "warn",
        5 | 6 => "info",
        _ => "debug",
    }
}

fn main() -> Result<()> {
    let mut warnings = Vec::new();
    let cli = parse_cli(&mut warnings)?;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(log_filter(cli.log_level)));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    for w in &warnings {
        tracing::warn!("{w}");
    }
    if !cli.listen_cli.is_empty() {
        tracing::warn!("--listen-cli ignored: no rtpengine CLI");
    }
    let _ = (cli.foreground, cli.log_stderr);
    // Control work is light and the packet workers are threads of their own: one runtime
    // thread leaves the cores to forwarding.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    let interfaces = cli.interfaces()?;
    let shown = interfaces
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    let udp: Vec<SocketAddr> = cli
        .listen_ng
        .iter()
        .map(|s| parse_listen(s))
        .collect::<Result<_>>()?;
    let tcp: Vec<SocketAddr> = cli
        .listen_tcp_ng
        .iter()
        .map(|s| parse_listen(s))
        .collect::<Result<_>>()?;
    if udp.is_empty() && tcp.is_empty() {
        bail!("nothing to listen on: give --listen-ng and/or --listen-tcp-ng");
    }
    let config = cli.media_config(interfaces)?;
    let relay = Arc::new(Relay::start(config, None).context("starting the media relay")?);
    if relay.kernel_forwarding() {
        tracing::info!("latched RTP is relayed in the kernel (eBPF); --table -1 turns it off");
    }
    let dispatcher = Arc::new(Dispatcher::new(Arc::clone(&relay)).sip_source(cli.sip_source));

    let mut servers = Vec::new();
    let n = udp.len().max(tcp.len());
    for i in 0..n {
        let s = NgServer::start(
            Arc::clone(&dispatcher),
            udp.get(i).copied(),
            tcp.get(i).copied(),
            ServerLimits::default(),
        )
        .await
        .with_context(|| format!("binding ng listeners {:?} / {:?}", udp.get(i), tcp.get(i)))?;
        tracing::info!(udp = ?s.udp_addr(), tcp = ?s.tcp_addr(), "ng control listening");
        servers.push(s);
    }
    if let Some(p) = &cli.pidfile {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pidfile {}", p.display()))?;
    }
    tracing::info!(interfaces = %shown, port_min = cli.port_min, port_max = cli.port_max, "trunkline-relay running");

    let timeouts = tokio::spawn(timeout_loop(Arc::clone(&relay)));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
    }
    timeouts.abort();
    for s in servers {
        s.shutdown();
    }
    relay.shutdown();
    if let Some(p) = &cli.pidfile {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

/// rtpengine's `0` for a timeout it can switch off.
fn secs_or_off(secs: u64) -> Option<Duration> {
    (secs > 0).then(|| Duration::from_secs(secs))
}

/// rtpengine deletes calls its timeouts catch; so do we, once a second.
async fn timeout_loop(relay: Arc<Relay>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = std::time::Instant::now();
        for t in relay.take_timeouts(now) {
            tracing::info!(call_id = %t.call_id, reason = %t.reason,
                after_s = t.elapsed.as_secs(), "call timed out; deleting it");
            if let Err(e) = relay.delete(&t.call_id, None, None, now) {
                tracing::debug!(call_id = %t.call_id, error = %e, "timed-out call already gone");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, bind: &str, adv: &str) -> MediaInterface {
        MediaInterface::new(name, bind.parse().expect("ip"), adv.parse().expect("ip"))
    }

    #[test]
    fn interface_forms() {
        let lo = "127.0.0.1";
        let pub_ = "203.0.113.5";
        assert_eq!(
            parse_interface("127.0.0.1").expect("ok"),
            iface("default", lo, lo)
        );
        assert_eq!(
            parse_interface("int/127.0.0.1").expect("ok"),
            iface("int", lo, lo)
        );
        assert_eq!(
            parse_interface("127.0.0.1!203.0.113.5").expect("ok"),
            iface("default", lo, pub_)
        );
        assert_eq!(
            parse_interface("ext/127.0.0.1!203.0.113.5").expect("ok"),
            iface("ext", lo, pub_)
        );
        assert_eq!(
            parse_interface("ext/2001:db8::5!2001:db8::6").expect("ok"),
            iface("ext", "2001:db8::5", "2001:db8::6")
        );
        assert!(parse_interface("eth0").is_err());
        assert!(parse_interface("ext/eth0").is_err());
        assert!(parse_interface("/127.0.0.1").is_err());
        assert!(parse_interface("ext/127.0.0.1!").is_err());
        assert!(parse_interface("pub=pub1").is_err());
    }

    fn interfaces_of(args: &[&str]) -> Result<Vec<MediaInterface>, clap::Error> {
        Cli::try_parse_from(args)?.interfaces()
    }

    #[test]
    fn every_interface_is_used_in_order() {
        let list = interfaces_of(&[
            "x",
            "--interface",
            "internal/10.0.0.5",
            "-i",
            "external/192.0.2.5!203.0.113.5",
            "--interface=external/2001:db8::5",
        ])
        .expect("valid");
        assert_eq!(
            list,
            vec![
                iface("internal", "10.0.0.5", "10.0.0.5"),
                iface("external", "192.0.2.5", "203.0.113.5"),
                iface("external", "2001:db8::5", "2001:db8::5"),
            ]
        );
        // Unnamed ones all share `default`: one address per family is fine.
        let list = interfaces_of(&["x", "-i", "127.0.0.1", "-i", "::1"]).expect("valid");
        assert_eq!(list.len(), 2);
    }

    #[test]
    fn bad_interface_sets_are_usage_errors() {
        for (args, needle) in [
            (&["x"][..], "--interface is required"),
            (&["x", "-i", "eth0"][..], "not an IP"),
            (
                &["x", "-i", "ext/192.0.2.5", "-i", "ext/192.0.2.6"][..],
                "one IPv4 address",
            ),
            (
                &["x", "-i", "127.0.0.1", "-i", "127.0.0.2"][..],
                "default/127.0.0.2",
            ),
            (
                &["x", "-i", "ext/192.0.2.5!2001:db8::1"][..],
                "different address families",
            ),
        ] {
            let e = interfaces_of(args).expect_err("must be refused");
            let text = e.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }

    #[test]
    fn config_file_lists_interfaces_with_semicolons() {
        let dir = std::env::temp_dir().join(format!("tl-relay-ifaces-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("rtpengine.conf");
        // rtpengine's documented form, with and without spaces and a trailing separator.
        std::fs::write(
            &path,
            "[rtpengine]\ninterface = internal/10.0.0.5; external/192.0.2.5!203.0.113.5;\
             external/2001:db8::5;\n",
        )
        .expect("write");
        let parse = |argv: &[&str]| {
            let entries = read_ini(&path, "rtpengine").expect("ini");
            let first = Cli::command().get_matches_from(argv);
            let mut merged: Vec<String> = vec!["x".into()];
            merged.extend(config_args(entries, &first, &mut Vec::new()));
            merged.extend(argv.iter().skip(1).map(|s| s.to_string()));
            Cli::from_arg_matches(&Cli::command().get_matches_from(merged)).expect("cli")
        };
        let cli = parse(&["x"]);
        assert_eq!(
            cli.interfaces().expect("valid"),
            vec![
                iface("internal", "10.0.0.5", "10.0.0.5"),
                iface("external", "192.0.2.5", "203.0.113.5"),
                iface("external", "2001:db8::5", "2001:db8::5"),
            ]
        );
        // The command line replaces the file's list, as with rtpengine.
        let cli = parse(&["x", "--interface", "lo/127.0.0.1"]);
        assert_eq!(
            cli.interfaces().expect("valid"),
            vec![iface("lo", "127.0.0.1", "127.0.0.1")]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn media_config_of(args: &[&str]) -> MediaConfig {
        let cli = Cli::try_parse_from(args).expect("cli");
        cli.media_config(Vec::new()).expect("config")
    }

    #[test]
    fn timeouts_are_rtpengines_with_its_defaults() {
        let c = media_config_of(&["x"]);
        assert_eq!(c.timeout, Duration::from_secs(60));
        assert_eq!(c.silent_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.offer_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(c.final_timeout, None);
        let c = media_config_of(&[
            "x",
            "-o",
            "20",
            "--silent-timeout=0",
            "--offer-timeout",
            "90",
            "-a",
            "7200",
        ]);
        assert_eq!(c.timeout, Duration::from_secs(20));
        assert_eq!(c.silent_timeout, None, "0 switches it off");
        assert_eq!(c.offer_timeout, Some(Duration::from_secs(90)));
        assert_eq!(c.final_timeout, Some(Duration::from_secs(7200)));
        // No longer stripped as ignored: honoured.
        let mut w = Vec::new();
        let args: Vec<String> = ["x", "--final-timeout", "5", "--offer-timeout=6"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(strip_ignored(args.clone(), &mut w), args);
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn endpoint_learning_and_limits_are_honoured() {
        let c = media_config_of(&["x"]);
        assert_eq!(c.endpoint_learning, EndpointLearning::Delayed);
        assert_eq!((c.max_streams, c.max_ports_per_call), (16, 64));
        for mode in ["delayed", "immediate", "off", "heuristic"] {
            let c = media_config_of(&["x", "--endpoint-learning", mode]);
            assert_eq!(c.endpoint_learning.as_str(), mode);
        }
        let c = media_config_of(&["x", "--max-streams=4", "--max-ports-per-call", "16"]);
        assert_eq!((c.max_streams, c.max_ports_per_call), (4, 16));
        let e =
            Cli::try_parse_from(["x", "--endpoint-learning", "sometimes"]).expect_err("refused");
        assert_eq!(e.exit_code(), 2);
    }

    #[test]
    fn help_lists_what_is_ignored_apart() {
        let help = command().render_help().to_string();
        assert!(help.contains("--endpoint-learning"), "{help}");
        assert!(help.contains("--final-timeout"), "{help}");
        let (honoured, ignored) = help
            .split_once("Accepted for rtpengine compatibility and ignored")
            .expect("the ignored list");
        assert!(ignored.contains("--redis (-r)") && ignored.contains("--tos (-T)"));
        assert!(!ignored.contains("timeout"), "{ignored}");
        assert!(!honoured.contains("--redis"));
    }

    #[test]
    fn listen_forms() {
        assert_eq!(
            parse_listen("2223").expect("ok"),
            "127.0.0.1:2223".parse().expect("addr")
        );
        assert_eq!(
            parse_listen("127.0.0.1:2223").expect("ok"),
            "127.0.0.1:2223".parse().expect("addr")
        );
        assert_eq!(
            parse_listen("[::1]:2223").expect("ok"),
            "[::1]:2223".parse().expect("addr")
        );
    }

    #[test]
    fn log_levels() {
        assert_eq!(log_filter(3), "error");
        assert_eq!(log_filter(4), "warn");
        assert_eq!(log_filter(5), "info");
        assert_eq!(log_filter(7), "debug");
    }

    #[test]
    fn ignored_options_are_stripped() {
        let mut w = Vec::new();
        let args: Vec<String> = [
            "x",
            "--tos",
            "184",
            "-F",
            "--redis=1.2.3.4:6379/1",
            "--port-min",
            "1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(strip_ignored(args, &mut w), vec!["x", "--port-min", "1"]);
        assert_eq!(w.len(), 3);
    }

    #[test]
    fn config_file_fills_what_the_command_line_does_not_give() {
        let dir = std::env::temp_dir().join(format!("tl-relay-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("rtpengine.conf");
        std::fs::write(
            &path,
            "[other]\nport-min = 1\n[rtpengine]\ntable = -1\ninterface = 127.0.0.1\n\
             listen-ng = 127.0.0.1:2223\nlisten-cli = 127.0.0.1:2224\nforeground = true\n\
             log-stderr = true\nlog-level = 5\nport-min = 20000\nport-max = 59999\n\
             timeout = 60\nsilent-timeout = 3600\nnum-threads = 2\ndelete-delay = 0\n\
             pidfile = /tmp/rtpengine.pid\nredis = 127.0.0.1:6379\n",
        )
        .expect("write");
        let entries = read_ini(&path, "rtpengine").expect("ini");
        let argv = ["x", "--port-min", "30000"];
        let first = Cli::command().get_matches_from(argv);
        let mut w = Vec::new();
        let extra = config_args(entries, &first, &mut w);
        let mut merged: Vec<String> = vec!["x".into()];
        merged.extend(extra);
        merged.extend(argv.iter().skip(1).map(|s| s.to_string()));
        let cli = Cli::from_arg_matches(&Cli::command().get_matches_from(merged)).expect("cli");
        assert_eq!(cli.port_min, 30000, "command line wins");
        assert_eq!(cli.port_max, 59999);
        assert_eq!(cli.interface, vec!["127.0.0.1"]);
        assert_eq!(cli.listen_ng, vec!["127.0.0.1:2223"]);
        assert_eq!(cli.table, Some(-1));
        assert_eq!(cli.num_threads, 2);
        assert_eq!(cli.delete_delay, 0);
        assert!(cli.foreground && cli.log_stderr);
        assert_eq!(w, vec!["config redis ignored".to_string()]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn policy_of(args: &[&str]) -> Result<ThreadPolicy, clap::Error> {
        Cli::try_parse_from(args)?.thread_policy()
    }

    #[test]
    fn scheduling_and_priority_from_the_command_line() {
        assert_eq!(policy_of(&["x"]).expect("ok"), ThreadPolicy::Inherit);
        assert_eq!(
            policy_of(&["x", "--scheduling", "fifo", "--priority", "10"]).expect("ok"),
            ThreadPolicy::Fifo(10)
        );
        assert_eq!(
            policy_of(&["x", "--scheduling=rr", "--priority=99"]).expect("ok"),
            ThreadPolicy::RoundRobin(99)
        );
        assert_eq!(
            policy_of(&["x", "--scheduling", "other", "--priority", "-5"]).expect("ok"),
            ThreadPolicy::Other(Some(-5))
        );
        assert_eq!(
            policy_of(&["x", "--scheduling=batch"]).expect("ok"),
            ThreadPolicy::Batch(None)
        );
        assert_eq!(
            policy_of(&["x", "--scheduling=idle"]).expect("ok"),
            ThreadPolicy::Idle
        );
        // rtpengine: without a policy (or with default/none) the priority is a nice value.
        assert_eq!(
            policy_of(&["x", "--priority=5"]).expect("ok"),
            ThreadPolicy::Nice(5)
        );
        assert_eq!(
            policy_of(&["x", "--scheduling=none", "--priority=3"]).expect("ok"),
            ThreadPolicy::Nice(3)
        );
    }

    #[test]
    fn bad_scheduling_or_priority_is_a_usage_error() {
        for (args, needle) in [
            (&["x", "--scheduling", "fifo"][..], "1..=99"),
            (&["x", "--scheduling=fifo", "--priority=0"][..], "1..=99"),
            (&["x", "--scheduling=rr", "--priority=100"][..], "1..=99"),
            (
                &["x", "--scheduling=other", "--priority=20"][..],
                "-20..=19",
            ),
            (&["x", "--priority=-21"][..], "-20..=19"),
            (&["x", "--scheduling=idle", "--priority=5"][..], "idle"),
            (&["x", "--scheduling=deadline"][..], "deadline"),
            (&["x", "--priority=high"][..], "high"),
        ] {
            let e = policy_of(args).expect_err("must be refused");
            let text = e.to_string();
            assert!(text.contains(needle), "{args:?}: {text}");
            assert_ne!(e.exit_code(), 0, "{args:?}");
        }
    }

    #[test]
    fn idle_thread_options_and_poller_per_thread_are_ignored() {
        let mut w = Vec::new();
        let args: Vec<String> = [
            "x",
            "--idle-scheduling",
            "idle",
            "--idle-priority=10",
            "--idle-priority",
            "-5",
            "--poller-per-thread",
            "--scheduling",
            "batch",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let args = strip_ignored(args, &mut w);
        assert_eq!(args, vec!["x", "--scheduling", "batch"]);
        assert_eq!(w.len(), 4);
        assert_eq!(
            Cli::try_parse_from(args)
                .expect("cli")
                .thread_policy()
                .expect("ok"),
            ThreadPolicy::Batch(None)
        );
    }

    #[test]
    fn config_file_sets_scheduling_and_priority() {
        let dir = std::env::temp_dir().join(format!("tl-relay-sched-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("rtpengine.conf");
        std::fs::write(
            &path,
            "[rtpengine]\ninterface = 127.0.0.1\nscheduling = fifo\npriority = 10\n\
             idle-scheduling = idle\nidle-priority = 10\npoller-per-thread = true\n",
        )
        .expect("write");
        let merged = |argv: &[&str], w: &mut Vec<String>| {
            let entries = read_ini(&path, "rtpengine").expect("ini");
            let first = Cli::command().get_matches_from(argv);
            let mut merged: Vec<String> = vec!["x".into()];
            merged.extend(config_args(entries, &first, w));
            merged.extend(argv.iter().skip(1).map(|s| s.to_string()));
            Cli::from_arg_matches(&Cli::command().get_matches_from(merged)).expect("cli")
        };
        let mut w = Vec::new();
        let cli = merged(&["x"], &mut w);
        assert_eq!(cli.thread_policy().expect("ok"), ThreadPolicy::Fifo(10));
        assert_eq!(
            w,
            vec![
                "config idle-scheduling ignored".to_string(),
                "config idle-priority ignored".to_string(),
                "config poller-per-thread ignored".to_string(),
            ]
        );
        // The command line wins per option; the pair is interpreted after merging.
        let cli = merged(&["x", "--priority", "50"], &mut Vec::new());
        assert_eq!(cli.thread_policy().expect("ok"), ThreadPolicy::Fifo(50));
        let cli = merged(&["x", "--scheduling", "other"], &mut Vec::new());
        assert_eq!(
            cli.thread_policy().expect("ok"),
            ThreadPolicy::Other(Some(10))
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

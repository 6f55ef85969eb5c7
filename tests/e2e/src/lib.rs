//! End-to-end harness: starts the `trunkline` node binary and SIPp peers on loopback, scrapes
//! the node's Prometheus metrics, and reads SIPp's statistics and message traces.
//!
//! Every child process (node or SIPp) is owned by a guard that kills it on drop, so a failing
//! test never leaves processes behind. Per-test output (node config and log, SIPp traces and
//! statistics) goes to `<workspace>/tests/out/<test>/` for diagnosis.
//!
//! Addresses: the caller (SIPp uac) runs on 127.0.0.2, the callee (SIPp uas, the node's trunk) on
//! 127.0.0.3 and the node on 127.0.0.1, so topology hiding can be checked by address. Tests with
//! several nodes may give each an address of its own ([`NodeConfig::on_ip`]).

use anyhow::{anyhow, bail, Context, Result};
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

// Helpers of the media tests (media.rs, sipi.rs) and of the cluster tests (cluster_*.rs); each
// test file is its own crate, so what two of them need lives here.
pub mod baresip;
pub mod child;
pub mod cluster;
pub mod linphone;
pub mod media_node;
pub mod ng;
pub mod pcap;
pub mod pki;
pub mod relay_metrics;
pub mod relay_sdp;
pub mod scripted;
pub mod sipp_media;

/// Address of the node under test.
pub const NODE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 1);
/// Address of the caller (SIPp uac).
pub const UAC_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 2);
/// Address of the callee (SIPp uas behind the node's trunk).
pub const UAS_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 3);

/// SIPp socket buffer size: with SIPp's default buffers the load generator itself caps early
/// (about a third of its rate with 4 MiB on loopback; see load/README.md).
pub const SIPP_BUFF_SIZE: &str = "4194304";

// ---------------------------------------------------------------------------------------------
// Paths
// ---------------------------------------------------------------------------------------------

/// The cargo workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or(here)
}

/// `tests/conformance/`: test data the repository carries (RFC 4475 torture messages), so a
/// clone with nothing beside it runs every test.
pub fn conformance_dir() -> PathBuf {
    workspace_root().join("tests").join("conformance")
}

/// The node binary: `TRUNKLINE_BIN`, else `<workspace>/target/release/trunkline`.
pub fn node_binary() -> PathBuf {
    match std::env::var_os("TRUNKLINE_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root()
            .join("target")
            .join("release")
            .join("trunkline"),
    }
}

/// The operator CLI: `TRUNKCTL_BIN`, else `<workspace>/target/release/trunkctl`.
pub fn trunkctl_binary() -> PathBuf {
    match std::env::var_os("TRUNKCTL_BIN") {
        Some(p) => PathBuf::from(p),
        None => workspace_root()
            .join("target")
            .join("release")
            .join("trunkctl"),
    }
}

/// Runs `trunkctl` with `args` (and `env`); returns its exit code, stdout and stderr.
pub fn trunkctl(args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let bin = trunkctl_binary();
    if !bin.exists() {
        bail!(
            "{} does not exist: run `cargo build --release --bin trunkctl` or set TRUNKCTL_BIN",
            bin.display()
        );
    }
    let mut cmd = Command::new(&bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .env_remove("TRUNKCTL_SERVER")
        .env_remove("TRUNKCTL_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    Ok((
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

/// `trunkctl --server <admin> <args>`: its exit code, stdout and stderr.
pub fn trunkctl_at(admin: &str, args: &[&str]) -> Result<(i32, String, String)> {
    let mut all = vec!["--server", admin];
    all.extend_from_slice(args);
    trunkctl(&all, &[])
}

/// `trunkctl --server <admin> <args> -o json`, parsed; an error on a non-zero exit.
pub fn trunkctl_json(admin: &str, args: &[&str]) -> Result<serde_json::Value> {
    let mut all = args.to_vec();
    all.extend_from_slice(&["-o", "json"]);
    let (code, out, err) = trunkctl_at(admin, &all)?;
    if code != 0 {
        bail!("trunkctl {args:?} exited {code}: {err}");
    }
    serde_json::from_str(&out).with_context(|| format!("trunkctl {args:?}: not JSON: {out}"))
}

/// The Python with grpcio, grpcio-reflection and grpcio-health-checking that
/// `tests/run.sh` installs in a virtualenv: `TRUNKLINE_GRPC_PYTHON`, else
/// `<workspace>/target/grpc-venv/bin/python3`.
pub fn grpc_python() -> Result<PathBuf> {
    let python = match std::env::var_os("TRUNKLINE_GRPC_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => workspace_root()
            .join("target")
            .join("grpc-venv")
            .join("bin")
            .join("python3"),
    };
    if !python.exists() {
        bail!(
            "{} does not exist: run tests/run.sh (it makes the gRPC client virtualenv) or set \
             TRUNKLINE_GRPC_PYTHON",
            python.display()
        );
    }
    Ok(python)
}

/// Runs `tests/grpc/admin_client.py` (a generic, reflection-driven gRPC client) against
/// `addr`; returns its stdout, trimmed, and whether it succeeded. A gRPC error is a result
/// (`ERROR <code> <details>`), not a failure of the tool.
pub fn grpc_client(addr: SocketAddr, args: &[&str]) -> Result<(bool, String)> {
    let script = workspace_root()
        .join("tests")
        .join("grpc")
        .join("admin_client.py");
    let out = Command::new(grpc_python()?)
        .arg(&script)
        .arg(addr.to_string())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout).trim().to_string();
    match out.status.code() {
        Some(0) => Ok((true, stdout)),
        Some(1)
            if stdout
                .lines()
                .last()
                .is_some_and(|l| l.starts_with("ERROR ")) =>
        {
            Ok((false, stdout))
        }
        _ => bail!(
            "{} {args:?} failed ({}): {}{}",
            script.display(),
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// A scenario file under `tests/scenarios/`.
pub fn scenario(name: &str) -> PathBuf {
    workspace_root().join("tests").join("scenarios").join(name)
}

/// A fresh, empty output directory `tests/out/<name>/`.
pub fn out_dir(name: &str) -> Result<PathBuf> {
    let dir = workspace_root().join("tests").join("out").join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

// ---------------------------------------------------------------------------------------------
// Ports and small helpers
// ---------------------------------------------------------------------------------------------

/// A port on `ip` that is currently free for both UDP and TCP, and not handed out before
/// by this process.
pub fn free_port(ip: impl Into<IpAddr>) -> Result<u16> {
    let ip = ip.into();
    for _ in 0..200 {
        let tcp = TcpListener::bind((ip, 0)).context("binding a probe TCP socket")?;
        let port = tcp.local_addr()?.port();
        if UdpSocket::bind((ip, port)).is_ok() && reserve_port(ip, port) {
            return Ok(port);
        }
    }
    bail!("no port free for both UDP and TCP on {ip}")
}

/// Records `port` on `ip` as handed out; false when it was already. The probe sockets
/// are closed before a test binds the port, so the kernel may offer the same port to the
/// next probe: a node once got the same port for its admin API and its metrics.
pub fn reserve_port(ip: IpAddr, port: u16) -> bool {
    static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<(IpAddr, u16)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    HANDED_OUT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .insert((ip, port))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The last `n` lines of a text file (for failure messages).
pub fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Deterministic pseudo-random generator (xorshift64*), for bounded, reproducible garbage input.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.max(1))
    }
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform-ish in `lo..hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo).max(1) as u64) as usize
    }
    pub fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next_u64() as u8).collect()
    }
}

fn unique_token() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{:x}{:x}{n}", std::process::id(), t & 0xffff_ffff)
}

// ---------------------------------------------------------------------------------------------
// Node configuration
// ---------------------------------------------------------------------------------------------

/// SIP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn sipp_mode(self) -> &'static str {
        match self {
            Transport::Udp => "u1",
            Transport::Tcp => "t1",
        }
    }
    fn config_name(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// The node's configuration, rendered to the TOML of the node contract.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub id: String,
    /// The node's address: its SIP listeners, metrics, admin API and, when it is not
    /// 127.0.0.1, its media relay (`[media] bind`) are on it. 127.0.0.1 ([`NODE_IP`]) unless
    /// built with [`NodeConfig::on_ip`]; the ports below were found free on it.
    pub ip: Ipv4Addr,
    /// SIP port on `ip`, both UDP and TCP.
    pub sip_port: u16,
    pub metrics_port: u16,
    /// The gRPC admin API's port on `ip`.
    pub admin_port: u16,
    pub max_message_bytes: u32,
    pub tcp_idle_timeout_secs: u64,
    pub tcp_partial_timeout_secs: u64,
    pub tcp_max_inbound: u32,
    pub tcp_max_outbound: u32,
    pub tcp_max_per_source: u32,
    pub t1_ms: u64,
    pub t2_ms: u64,
    pub t4_ms: u64,
    pub no_answer_secs: u64,
    pub log_level: String,
    pub trunk: SocketAddr,
    pub trunk_transport: Transport,
    /// More `key = value` lines for `[sip]` (e.g. `access_sources`, `reply_to_unknown`).
    pub sip_extra: Vec<String>,
    /// More `key = value` lines for `[media]` (e.g. `timeout_secs`, `port_max`).
    pub media_extra: Vec<String>,
}

impl NodeConfig {
    /// Defaults of the contract, fresh ports, one trunk "carrier" at `trunk`.
    pub fn new(trunk: SocketAddr, trunk_transport: Transport) -> Result<Self> {
        Self::on_ip(NODE_IP, trunk, trunk_transport)
    }

    /// Like [`NodeConfig::new`] for a node on `ip` (another loopback address, such as
    /// 127.0.0.11): several nodes that each have an address of their own, so a peer can
    /// tell by address which node it talks to.
    pub fn on_ip(ip: Ipv4Addr, trunk: SocketAddr, trunk_transport: Transport) -> Result<Self> {
        Ok(NodeConfig {
            id: "n1".into(),
            ip,
            sip_port: free_port(ip)?,
            metrics_port: free_port(ip)?,
            admin_port: free_port(ip)?,
            max_message_bytes: 16384,
            tcp_idle_timeout_secs: 300,
            tcp_partial_timeout_secs: 10,
            tcp_max_inbound: 4096,
            tcp_max_outbound: 1024,
            tcp_max_per_source: 64,
            t1_ms: 500,
            t2_ms: 4000,
            t4_ms: 5000,
            no_answer_secs: 180,
            log_level: "info".into(),
            trunk,
            trunk_transport,
            sip_extra: Vec::new(),
            media_extra: Vec::new(),
        })
    }

    pub fn sip_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.sip_port)
    }

    pub fn metrics_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.metrics_port)
    }

    pub fn admin_addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.ip), self.admin_port)
    }

    /// The `[media]` lines: `media_extra`, preceded by `bind = "<ip>"` for a node off
    /// 127.0.0.1 (whose relay would otherwise anchor media on the default, 127.0.0.1) unless
    /// `media_extra` names a `bind` of its own.
    fn media_lines(&self) -> Vec<String> {
        let mut lines = self.media_extra.clone();
        if self.ip != NODE_IP && !sets_key(&lines, "bind") {
            lines.insert(0, format!("bind = \"{}\"", self.ip));
        }
        lines
    }

    pub fn to_toml(&self) -> String {
        let sip = self.sip_addr();
        let mut s = String::new();
        let _ = writeln!(s, "[node]\nid = \"{}\"\n", self.id);
        let _ = writeln!(
            s,
            "[sip]\nudp = [\"{sip}\"]\ntcp = [\"{sip}\"]\nmax_message_bytes = {}\n\
             tcp_idle_timeout_secs = {}\ntcp_partial_timeout_secs = {}\n\
             tcp_max_inbound = {}\ntcp_max_outbound = {}\ntcp_max_per_source = {}\n",
            self.max_message_bytes,
            self.tcp_idle_timeout_secs,
            self.tcp_partial_timeout_secs,
            self.tcp_max_inbound,
            self.tcp_max_outbound,
            self.tcp_max_per_source
        );
        for line in &self.sip_extra {
            let _ = writeln!(s, "{line}");
        }
        let media = self.media_lines();
        if !media.is_empty() {
            let _ = writeln!(s, "[media]\n{}\n", media.join("\n"));
        }
        let _ = writeln!(
            s,
            "[sip.timers]\nt1_ms = {}\nt2_ms = {}\nt4_ms = {}\nno_answer_secs = {}\n",
            self.t1_ms, self.t2_ms, self.t4_ms, self.no_answer_secs
        );
        let _ = writeln!(s, "[metrics]\nlisten = \"{}\"\n", self.metrics_addr());
        let _ = writeln!(s, "[admin]\nlisten = \"{}\"\n", self.admin_addr());
        let _ = writeln!(s, "[log]\nlevel = \"{}\"\n", self.log_level);
        let _ = writeln!(
            s,
            "[[trunks]]\nname = \"carrier\"\naddress = \"{}\"\ntransport = \"{}\"\n",
            self.trunk,
            self.trunk_transport.config_name()
        );
        let _ = writeln!(s, "[routing]\ndefault_trunk = \"carrier\"");
        s
    }
}

/// Whether one of the TOML `lines` (`key = value`) sets `key`.
pub fn sets_key(lines: &[String], key: &str) -> bool {
    lines
        .iter()
        .any(|l| l.split_once('=').is_some_and(|(k, _)| k.trim() == key))
}

// ---------------------------------------------------------------------------------------------
// The node process
// ---------------------------------------------------------------------------------------------

/// A running `trunkline` node. Dropping it sends SIGTERM, then SIGKILL after 5 s.
pub struct Node {
    child: Option<Child>,
    pub config: NodeConfig,
    pub log: PathBuf,
}

impl Node {
    /// Writes `config` to `<out>/node.toml`, starts the binary with stderr to `<out>/node.log`,
    /// and waits (up to 20 s) until `GET /health` answers 200 and the SIP port answers OPTIONS.
    pub fn start(config: &NodeConfig, out: &Path) -> Result<Node> {
        Self::start_toml(config, &config.to_toml(), out)
    }

    /// Like [`Node::start`] with an explicit TOML text (which must agree with `config`'s ports).
    pub fn start_toml(config: &NodeConfig, toml: &str, out: &Path) -> Result<Node> {
        let bin = node_binary();
        if !bin.exists() {
            bail!(
                "node binary {} does not exist: run `cargo build --release --bin trunkline` \
                 or set TRUNKLINE_BIN",
                bin.display()
            );
        }
        let cfg_path = out.join("node.toml");
        std::fs::write(&cfg_path, toml)?;
        let log = out.join("node.log");
        let stderr = std::fs::File::create(&log)?;
        let stdout = std::fs::File::create(out.join("node.stdout"))?;
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut node = Node {
            child: Some(child),
            config: config.clone(),
            log,
        };
        node.wait_ready(Duration::from_secs(20))?;
        Ok(node)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last_err = String::from("not polled yet");
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node exited during start-up with {status}; log tail:\n{}",
                        tail(&self.log, 40)
                    );
                }
            }
            match http_get(self.config.metrics_addr(), "/health") {
                Ok((200, _)) => match self.options_ping(Duration::from_millis(500)) {
                    Ok(_) => return Ok(()),
                    Err(e) => last_err = format!("health ok, OPTIONS: {e:#}"),
                },
                Ok((code, _)) => last_err = format!("/health answered {code}"),
                Err(e) => last_err = format!("/health: {e:#}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "node not ready within {timeout:?} ({last_err}); log tail:\n{}",
            tail(&self.log, 40)
        )
    }

    pub fn sip_addr(&self) -> SocketAddr {
        self.config.sip_addr()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether the process is still running.
    pub fn is_alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Fails (with the log tail) unless the process is running and answers an OPTIONS.
    pub fn assert_healthy(&mut self) -> Result<()> {
        if !self.is_alive() {
            bail!("node process died; log tail:\n{}", tail(&self.log, 60));
        }
        let code = self
            .options_ping(Duration::from_secs(3))
            .with_context(|| format!("node log tail:\n{}", tail(&self.log, 40)))?;
        if code != 200 {
            bail!("OPTIONS answered {code}, expected 200");
        }
        Ok(())
    }

    /// Scrapes `GET /metrics`.
    pub fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(self.config.metrics_addr(), "/metrics")?;
        if code != 200 {
            bail!("/metrics answered {code}");
        }
        Ok(Metrics::parse(&body))
    }

    /// Polls the metrics until `cond` holds (up to `timeout`); returns the last scrape.
    pub fn wait_metrics(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics()?;
            if cond(&m) || Instant::now() >= deadline {
                return Ok(m);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Resident set size in KiB, from /proc/<pid>/status.
    pub fn rss_kib(&self) -> Result<u64> {
        let pid = self.pid().ok_or_else(|| anyhow!("node not running"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
    }

    /// The node's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Sends an OPTIONS outside a dialog over UDP and returns the status code of the answer.
    pub fn options_ping(&self, timeout: Duration) -> Result<u16> {
        let sock = UdpSocket::bind((NODE_IP, 0))?;
        let me = sock.local_addr()?;
        let call_id = format!("ping-{}", unique_token());
        let msg = format!(
            "OPTIONS sip:{node} SIP/2.0\r\n\
             Via: SIP/2.0/UDP {me};branch=z9hG4bK{call_id};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:probe@{me}>;tag={call_id}\r\n\
             To: <sip:{node}>\r\n\
             Call-ID: {call_id}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Contact: <sip:probe@{me}>\r\n\
             Accept: application/sdp\r\n\
             Content-Length: 0\r\n\r\n",
            node = self.sip_addr()
        );
        sock.send_to(msg.as_bytes(), self.sip_addr())?;
        let responses = collect_udp(&sock, timeout, true)?;
        responses
            .iter()
            .filter(|r| r.contains(&call_id))
            .filter_map(|r| status_code(r))
            .find(|c| *c >= 200)
            .ok_or_else(|| anyhow!("no final answer to OPTIONS within {timeout:?}"))
    }

    /// SIGTERM, then waits up to 10 s for the exit status.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("node already stopped"))?;
        signal(child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = child.try_wait()? {
                return Ok(st);
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "node did not exit within 10 s of SIGTERM; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Node {
    /// Waits up to `timeout` for the process to exit on its own (after a signal the test
    /// sent, e.g. [`cluster::sigterm`]) and returns its exit status; sends nothing. Still
    /// running at `timeout` is an error (with the log tail) and the process is left to the
    /// guard, which stops it when dropped.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self
            .child
            .as_mut()
            .ok_or_else(|| anyhow!("node already stopped"))?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            if Instant::now() >= deadline {
                bail!(
                    "node still running {timeout:?} later; log tail:\n{}",
                    tail(&self.log, 30)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if matches!(child.try_wait(), Ok(None)) {
                signal(child.id(), "TERM");
                let exited = wait_until(Duration::from_secs(5), || {
                    matches!(child.try_wait(), Ok(Some(_)))
                });
                if !exited {
                    let _ = child.kill();
                }
            }
            let _ = child.wait();
        }
    }
}

/// Sends a signal to one process by PID (through kill(1), to stay free of unsafe code).
pub(crate) fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

// ---------------------------------------------------------------------------------------------
// HTTP and metrics
// ---------------------------------------------------------------------------------------------

/// A plain HTTP/1.0 GET; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("malformed HTTP response from {addr}{path}"))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no status in HTTP response from {addr}{path}"))?;
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok((code, body))
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// One sample of a Prometheus text exposition.
#[derive(Clone, Debug)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed `/metrics` scrape.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    pub text: String,
}

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .filter_map(parse_sample)
            .collect();
        Metrics {
            samples,
            text: text.to_string(),
        }
    }

    /// Sum of the samples named `name` whose labels include all of `labels`; `None` if none.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let mut found = false;
        let mut sum = 0.0;
        for s in self.samples.iter().filter(|s| s.name == name) {
            if labels
                .iter()
                .all(|(k, v)| s.labels.iter().any(|(sk, sv)| sk == k && sv == v))
            {
                found = true;
                sum += s.value;
            }
        }
        found.then_some(sum)
    }

    /// Like [`Metrics::get`], but a missing sample is an error that shows what is exposed.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        self.get(name, labels).ok_or_else(|| {
            let related: Vec<&str> = self
                .text
                .lines()
                .filter(|l| l.starts_with(name))
                .take(20)
                .collect();
            anyhow!(
                "metric {name}{labels:?} not exposed; samples of that name:\n{}",
                related.join("\n")
            )
        })
    }

    /// Sum over all label sets of `name` (0 when absent).
    pub fn sum(&self, name: &str) -> f64 {
        self.get(name, &[]).unwrap_or(0.0)
    }
}

fn parse_sample(line: &str) -> Option<Sample> {
    let (name, labels, rest) = match line.find('{') {
        Some(open) => {
            let close = line.rfind('}')?;
            (
                &line[..open],
                parse_labels(&line[open + 1..close]),
                &line[close + 1..],
            )
        }
        None => {
            let (n, r) = line.split_once(char::is_whitespace)?;
            (n, Vec::new(), r)
        }
    };
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample {
        name: name.trim().to_string(),
        labels,
        value,
    })
}

fn parse_labels(s: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        let mut key = String::new();
        for c in chars.by_ref() {
            if c == '=' {
                break;
            }
            if c != ',' && !c.is_whitespace() {
                key.push(c);
            }
        }
        if key.is_empty() {
            break;
        }
        if chars.next() != Some('"') {
            break;
        }
        let mut val = String::new();
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some('n') => val.push('\n'),
                    Some(o) => val.push(o),
                    None => {}
                },
                '"' => break,
                o => val.push(o),
            }
        }
        out.push((key, val));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Raw SIP over UDP/TCP
// ---------------------------------------------------------------------------------------------

/// Collects datagrams on `sock` for `window`; with `stop_on_final`, returns as soon as a final
/// (>= 200) response arrived.
pub fn collect_udp(sock: &UdpSocket, window: Duration, stop_on_final: bool) -> Result<Vec<String>> {
    let deadline = Instant::now() + window;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(out);
        }
        sock.set_read_timeout(Some((deadline - now).max(Duration::from_millis(1))))?;
        match sock.recv_from(&mut buf) {
            Ok((n, _)) => {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                let is_final = status_code(&msg).is_some_and(|c| c >= 200);
                out.push(msg);
                if stop_on_final && is_final {
                    return Ok(out);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::ConnectionRefused
                ) => {}
            Err(e) => return Err(e.into()),
        }
    }
}

/// The status code of a SIP response's status line, if `msg` is a response.
pub fn status_code(msg: &str) -> Option<u16> {
    let line = msg.lines().next()?;
    let rest = line.strip_prefix("SIP/2.0 ")?;
    rest.get(..3)?.parse().ok()
}

/// Value of the first header `name` (or its compact form) in a SIP message.
pub fn header<'a>(msg: &'a str, name: &str, compact: Option<&str>) -> Option<&'a str> {
    for line in msg.split("\r\n").flat_map(|l| l.split('\n')).skip(1) {
        if line.is_empty() {
            break;
        }
        if let Some((n, v)) = line.split_once(':') {
            let n = n.trim();
            if n.eq_ignore_ascii_case(name) || compact.is_some_and(|c| n.eq_ignore_ascii_case(c)) {
                return Some(v.trim());
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------------------------
// SIPp
// ---------------------------------------------------------------------------------------------

/// Builder for one SIPp instance.
#[derive(Clone, Debug)]
pub struct Sipp {
    name: String,
    scenario: PathBuf,
    local_ip: IpAddr,
    local_port: Option<u16>,
    remote: Option<SocketAddr>,
    transport: Transport,
    calls: Option<u64>,
    rate: Option<u32>,
    lost: Option<u32>,
    duration_ms: Option<u64>,
    timeout_secs: u64,
    trace_msg: bool,
    extra: Vec<String>,
}

impl Sipp {
    /// A caller running `scenario_file` (under tests/scenarios) against `remote`, from 127.0.0.2.
    pub fn uac(scenario_file: &str, remote: SocketAddr) -> Self {
        Sipp::new("uac", scenario_file, UAC_IP, Some(remote))
    }

    /// A callee running `scenario_file` on 127.0.0.3.
    pub fn uas(scenario_file: &str) -> Self {
        Sipp::new("uas", scenario_file, UAS_IP, None)
    }

    fn new(name: &str, scenario_file: &str, ip: Ipv4Addr, remote: Option<SocketAddr>) -> Self {
        Sipp {
            name: name.into(),
            scenario: scenario(scenario_file),
            local_ip: IpAddr::V4(ip),
            local_port: None,
            remote,
            transport: Transport::Udp,
            calls: None,
            rate: None,
            lost: None,
            duration_ms: None,
            timeout_secs: 120,
            trace_msg: false,
            extra: Vec::new(),
        }
    }

    /// Name used for the output files (default "uac"/"uas").
    pub fn name(mut self, n: &str) -> Self {
        self.name = n.into();
        self
    }
    /// The address SIPp binds (IPv6 too: SIPp brackets it in its messages).
    pub fn local_ip(mut self, ip: impl Into<IpAddr>) -> Self {
        self.local_ip = ip.into();
        self
    }
    pub fn port(mut self, p: u16) -> Self {
        self.local_port = Some(p);
        self
    }
    pub fn transport(mut self, t: Transport) -> Self {
        self.transport = t;
        self
    }
    /// `-m`: stop after this many calls.
    pub fn calls(mut self, n: u64) -> Self {
        self.calls = Some(n);
        self
    }
    /// `-r`: calls per second.
    pub fn rate(mut self, cps: u32) -> Self {
        self.rate = Some(cps);
        self
    }
    /// `-lost`: percentage of messages SIPp drops.
    pub fn lost(mut self, pct: u32) -> Self {
        self.lost = Some(pct);
        self
    }
    /// `-d`: length of `<pause/>` in ms (the call duration in the basic scenario).
    pub fn duration_ms(mut self, ms: u64) -> Self {
        self.duration_ms = Some(ms);
        self
    }
    /// `-timeout N -timeout_error`: SIPp gives up (and fails) after this many seconds.
    pub fn timeout_secs(mut self, s: u64) -> Self {
        self.timeout_secs = s;
        self
    }
    /// `-trace_msg`: log every message to `<out>/<name>_messages.log`.
    pub fn trace_msg(mut self) -> Self {
        self.trace_msg = true;
        self
    }
    pub fn arg(mut self, a: &str) -> Self {
        self.extra.push(a.into());
        self
    }

    /// The local (port-resolved) address this instance will use.
    pub fn resolve_port(mut self) -> Result<Self> {
        if self.local_port.is_none() {
            self.local_port = Some(free_port(self.local_ip)?);
        }
        Ok(self)
    }

    /// The local address (after [`Sipp::resolve_port`]).
    pub fn addr(&self) -> Result<SocketAddr> {
        self.local_addr()
            .ok_or_else(|| anyhow!("sipp {}: port not resolved yet", self.name))
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_port.map(|p| SocketAddr::new(self.local_ip, p))
    }

    /// Starts SIPp with output files in `out`.
    ///
    /// A port this builder picked itself was free when probed, but another process may
    /// take it before SIPp binds it (any wildcard UDP socket with an ephemeral port
    /// does); SIPp then exits at once with "Unable to bind main socket". Such a start is
    /// retried on a fresh port, up to three times.
    pub fn spawn(self, out: &Path) -> Result<SippRun> {
        let picked = self.local_port.is_none();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.clone().spawn_once(out) {
                Err(e) if picked && attempt < 3 && e.to_string().contains("Unable to bind") => {
                    eprintln!(
                        "sipp {}: port taken before SIPp bound it; retrying",
                        self.name
                    );
                }
                r => return r,
            }
        }
    }

    fn spawn_once(self, out: &Path) -> Result<SippRun> {
        let me = self.resolve_port()?;
        let port = me.local_port.unwrap_or_default();
        let file = |suffix: &str| out.join(format!("{}_{suffix}", me.name));
        let mut cmd = Command::new("sipp");
        if let Some(r) = me.remote {
            cmd.arg(r.to_string());
        }
        cmd.arg("-sf")
            .arg(&me.scenario)
            .args(["-i", &me.local_ip.to_string(), "-p", &port.to_string()])
            .arg("-bind_local")
            .args(["-t", me.transport.sipp_mode()])
            .args(["-buff_size", SIPP_BUFF_SIZE])
            .arg("-nostdin")
            .args([
                "-timeout",
                &format!("{}s", me.timeout_secs),
                "-timeout_error",
            ])
            .arg("-trace_err")
            .arg("-error_file")
            .arg(file("errors.log"))
            .arg("-trace_stat")
            .arg("-stf")
            .arg(file("stats.csv"))
            .args(["-fd", "1"])
            .arg("-trace_screen")
            .arg("-screen_file")
            .arg(file("screen.log"));
        if me.trace_msg {
            cmd.arg("-trace_msg")
                .arg("-message_file")
                .arg(file("messages.log"));
        }
        if let Some(m) = me.calls {
            cmd.args(["-m", &m.to_string()]);
        }
        if let Some(r) = me.rate {
            cmd.args(["-r", &r.to_string()]);
        }
        if let Some(l) = me.lost {
            cmd.args(["-lost", &l.to_string()]);
        }
        if let Some(d) = me.duration_ms {
            cmd.args(["-d", &d.to_string()]);
        }
        cmd.args(&me.extra);
        let cmdline = format!("{cmd:?}");
        std::fs::write(file("cmdline.txt"), &cmdline)?;
        let child = cmd
            .current_dir(out)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(file("stdout.log"))?)
            .stderr(std::fs::File::create(file("stderr.log"))?)
            .spawn()
            .context("starting sipp (is sip-tester installed?)")?;
        let addr = SocketAddr::new(me.local_ip, port);
        let run = SippRun {
            child: Some(child),
            name: me.name.clone(),
            out: out.to_path_buf(),
            addr,
            cmdline,
        };
        // A server must be listening before anyone sends to it.
        if me.remote.is_none() {
            run.wait_listening(me.transport)?;
        }
        Ok(run)
    }
}

/// A running SIPp; killed on drop.
pub struct SippRun {
    child: Option<Child>,
    pub name: String,
    pub out: PathBuf,
    pub addr: SocketAddr,
    pub cmdline: String,
}

/// Outcome of a finished SIPp run.
#[derive(Debug)]
pub struct SippResult {
    pub name: String,
    pub status: ExitStatus,
    pub successful: Option<u64>,
    pub failed: Option<u64>,
    pub out: PathBuf,
    pub cmdline: String,
}

impl SippRun {
    fn wait_listening(&self, transport: Transport) -> Result<()> {
        let addr = self.addr;
        let stderr = self.out.join(format!("{}_stderr.log", self.name));
        let mut refused = false;
        let bound = wait_until(Duration::from_secs(5), || {
            // SIPp that could not bind says so and exits.
            refused = std::fs::read_to_string(&stderr).is_ok_and(|t| t.contains("Unable to bind"));
            refused
                || match transport {
                    // While SIPp holds the port, binding it fails.
                    Transport::Udp => UdpSocket::bind(addr).is_err(),
                    Transport::Tcp => TcpListener::bind(addr).is_err(),
                }
        });
        if !bound || refused {
            bail!(
                "sipp {} never bound {addr}; stderr:\n{}",
                self.name,
                tail(&stderr, 20)
            );
        }
        Ok(())
    }

    pub fn messages_log(&self) -> PathBuf {
        self.out.join(format!("{}_messages.log", self.name))
    }

    /// The calls this SIPp (run with `trace_msg`) has been offered so far: the
    /// INVITEs it received, each Call-ID once (retransmissions are not new calls).
    pub fn calls_offered(&self) -> usize {
        let mut ids: Vec<String> = parse_trace(&self.messages_log())
            .unwrap_or_default()
            .iter()
            .filter(|m| !m.sent && m.method() == Some("INVITE"))
            .filter_map(|m| m.header("Call-ID").map(str::to_string))
            .collect();
        ids.sort();
        ids.dedup();
        ids.len()
    }

    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Waits for SIPp to exit (killing it after `timeout`) and reads its final statistics.
    pub fn wait(&mut self, timeout: Duration) -> Result<SippResult> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("sipp {} already waited for", self.name))?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(st) = child.try_wait()? {
                break st;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "sipp {} still running after {timeout:?}, killed; screen:\n{}",
                    self.name,
                    tail(&self.out.join(format!("{}_screen.log", self.name)), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let (successful, failed) = read_stats(&self.out.join(format!("{}_stats.csv", self.name)));
        Ok(SippResult {
            name: self.name.clone(),
            status,
            successful,
            failed,
            out: self.out.clone(),
            cmdline: self.cmdline.clone(),
        })
    }

    /// Kills SIPp now (used for servers that run without a call limit).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for SippRun {
    fn drop(&mut self) {
        self.kill();
    }
}

impl SippResult {
    /// Fails unless SIPp exited 0 and its statistics show `calls` successful and 0 failed calls.
    pub fn assert_all_ok(&self, calls: u64) -> Result<()> {
        let ok = self.status.success() && self.successful == Some(calls) && self.failed == Some(0);
        if !ok {
            bail!(
                "sipp {}: exit {}, successful calls {:?} (want {calls}), failed {:?}\n\
                 command: {}\nerrors:\n{}\nscreen:\n{}",
                self.name,
                self.status,
                self.successful,
                self.failed,
                self.cmdline,
                tail(&self.out.join(format!("{}_errors.log", self.name)), 30),
                tail(&self.out.join(format!("{}_screen.log", self.name)), 40)
            );
        }
        Ok(())
    }
}

/// Cumulative SuccessfulCall(C) and FailedCall(C) from the last line of a `-trace_stat` CSV.
pub fn read_stats(path: &Path) -> (Option<u64>, Option<u64>) {
    let Ok(text) = std::fs::read_to_string(path) else {
        return (None, None);
    };
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let Some(head) = lines.next() else {
        return (None, None);
    };
    let Some(last) = lines.next_back() else {
        return (None, None);
    };
    let cols: Vec<&str> = head.split(';').collect();
    let vals: Vec<&str> = last.split(';').collect();
    let get = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .and_then(|i| vals.get(i))
            .and_then(|v| v.trim().parse().ok())
    };
    (get("SuccessfulCall(C)"), get("FailedCall(C)"))
}

/// Runs a uas (started first) and a uac to completion and checks both saw `calls` good calls.
/// The uas must have been built with `.calls(calls)`.
pub fn run_pair(
    uac: Sipp,
    uas: &mut SippRun,
    out: &Path,
    calls: u64,
    timeout: Duration,
) -> Result<()> {
    let mut client = uac.spawn(out)?;
    let r = client.wait(timeout)?;
    r.assert_all_ok(calls)?;
    let s = uas.wait(Duration::from_secs(30))?;
    s.assert_all_ok(calls)
}

// ---------------------------------------------------------------------------------------------
// SIPp message traces
// ---------------------------------------------------------------------------------------------

/// One message from a SIPp `-trace_msg` log.
#[derive(Clone, Debug)]
pub struct TracedMessage {
    pub sent: bool,
    pub text: String,
}

impl TracedMessage {
    pub fn status(&self) -> Option<u16> {
        status_code(&self.text)
    }
    pub fn method(&self) -> Option<&str> {
        let first = self.text.lines().next()?;
        if first.starts_with("SIP/2.0") {
            None
        } else {
            first.split_whitespace().next()
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.text, name, None)
    }
}

/// Status codes of the final (>= 200) responses to INVITE that the trace shows as received.
pub fn final_invite_statuses(log: &Path) -> Result<Vec<u16>> {
    Ok(parse_trace(log)?
        .iter()
        .filter(|m| !m.sent)
        .filter(|m| m.header("CSeq").is_some_and(|c| c.ends_with("INVITE")))
        .filter_map(TracedMessage::status)
        .filter(|c| *c >= 200)
        .collect())
}

/// Starts a callee (SIPp uas running `uas_scenario` on 127.0.0.3) and a node whose trunk
/// points at it; returns (node, uas).
pub fn node_with_callee(
    out: &Path,
    uas: Sipp,
    trunk_transport: Transport,
    tweak: impl FnOnce(&mut NodeConfig),
) -> Result<(Node, SippRun)> {
    let uas = uas.resolve_port()?;
    let mut cfg = NodeConfig::new(uas.addr()?, trunk_transport)?;
    tweak(&mut cfg);
    let server = uas.spawn(out)?;
    let node = Node::start(&cfg, out)?;
    Ok((node, server))
}

/// Fails unless `trunkline_calls_active` is (or within 10 s returns to) 0 and
/// `trunkline_calls_total{status}` equals `total`.
pub fn assert_calls(node: &Node, status: &str, total: f64) -> Result<Metrics> {
    let m = node.wait_metrics(Duration::from_secs(10), |m| {
        m.get("trunkline_calls_active", &[]) == Some(0.0)
            && m.get("trunkline_calls_total", &[("status", status)]) == Some(total)
    })?;
    let active = m.value("trunkline_calls_active", &[])?;
    let done = m.value("trunkline_calls_total", &[("status", status)])?;
    if active != 0.0 || done != total {
        bail!("metrics: calls_active {active} (want 0), calls_total{{status=\"{status}\"}} {done} (want {total})");
    }
    Ok(m)
}

/// Parses a SIPp `-trace_msg` log into messages.
pub fn parse_trace(path: &Path) -> Result<Vec<TracedMessage>> {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for block in text.split("-----------------------------------------------") {
        let mut lines = block.lines().skip(1); // the timestamp
        let Some(kind) = lines.next() else { continue };
        let sent = kind.contains("message sent");
        if !sent && !kind.contains("message received") {
            continue;
        }
        let body: String = lines
            .skip_while(|l| l.trim().is_empty())
            .collect::<Vec<_>>()
            .join("\n");
        if !body.is_empty() {
            out.push(TracedMessage { sent, text: body });
        }
    }
    Ok(out)
}

/// Identifiers that identify one side of a call (from the messages it sent) and are found in
/// the other side's trace. Caller side: its Call-IDs, From tags, Via branches and address
/// 127.0.0.2; callee side: its To tags (responses), From tags and branches (its requests) and
/// address 127.0.0.3. An empty result means the B2BUA hid each side from the other.
pub fn topology_leaks(uac_log: &Path, uas_log: &Path) -> Result<Vec<String>> {
    let uac = parse_trace(uac_log)?;
    let uas = parse_trace(uas_log)?;
    // Each side's trace split into signalling (start line + headers) and bodies (SDP).
    let split = |msgs: &[TracedMessage]| -> (String, String) {
        let mut heads = String::new();
        let mut bodies = String::new();
        for m in msgs {
            let (h, b) = m.text.split_once("\n\n").unwrap_or((m.text.as_str(), ""));
            heads.push_str(h);
            heads.push('\n');
            bodies.push_str(b);
            bodies.push('\n');
        }
        (heads, bodies)
    };
    let (uac_heads, uac_bodies) = split(&uac);
    let (uas_heads, uas_bodies) = split(&uas);
    let ids = |msgs: &[TracedMessage], ip: Ipv4Addr| -> Vec<String> {
        let mut v = vec![ip.to_string()];
        for m in msgs.iter().filter(|m| m.sent) {
            if m.method().is_some() {
                v.extend(m.header("Call-ID").map(str::to_string));
                v.extend(m.header("From").and_then(|f| header_param(f, "tag")));
                v.extend(m.header("Via").and_then(|f| header_param(f, "branch")));
            } else {
                v.extend(m.header("To").and_then(|f| header_param(f, "tag")));
            }
        }
        v.sort();
        v.dedup();
        v
    };
    let a_ids = ids(&uac, UAC_IP);
    let b_ids = ids(&uas, UAS_IP);
    if a_ids.len() < 4
        || b_ids.len() < 2
        || uas_heads.trim().is_empty()
        || uac_heads.trim().is_empty()
    {
        bail!(
            "traces too thin to judge topology hiding: caller ids {a_ids:?}, callee ids {b_ids:?}"
        );
    }
    let mut leaks = Vec::new();
    for (ids, who, heads, bodies, seen_by) in [
        (&a_ids, "caller", &uas_heads, &uas_bodies, "callee"),
        (&b_ids, "callee", &uac_heads, &uac_bodies, "caller"),
    ] {
        for id in ids.iter() {
            if heads.contains(id.as_str()) {
                leaks.push(format!("{who}'s {id} in the {seen_by}'s headers"));
            }
            if bodies.contains(id.as_str()) {
                leaks.push(format!("{who}'s {id} in the {seen_by}'s SDP"));
            }
        }
    }
    Ok(leaks)
}

/// The parameter `param` (e.g. "tag", "branch") of a header value.
pub fn header_param(value: &str, param: &str) -> Option<String> {
    value.split(';').skip(1).find_map(|p| {
        let (k, v) = p.split_once('=')?;
        k.trim()
            .eq_ignore_ascii_case(param)
            .then(|| v.trim().trim_end_matches('>').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prometheus_text() {
        let m = Metrics::parse(
            "# HELP x y\n# TYPE trunkline_calls_total counter\n\
             trunkline_calls_total{status=\"200\"} 1000\n\
             trunkline_calls_total{status=\"486\"} 2\n\
             trunkline_calls_active 0\n\
             trunkline_sip_requests_total{direction=\"in\",method=\"INVITE\"} 3.0\n# EOF\n",
        );
        assert_eq!(
            m.get("trunkline_calls_total", &[("status", "200")]),
            Some(1000.0)
        );
        assert_eq!(m.sum("trunkline_calls_total"), 1002.0);
        assert_eq!(m.get("trunkline_calls_active", &[]), Some(0.0));
        assert_eq!(
            m.get("trunkline_sip_requests_total", &[("method", "INVITE")]),
            Some(3.0)
        );
        assert_eq!(m.get("trunkline_calls_total", &[("status", "500")]), None);
    }

    #[test]
    fn reads_status_and_headers() {
        let r = "SIP/2.0 486 Busy Here\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKx\r\nf: <sip:a>;tag=t1\r\n\r\n";
        assert_eq!(status_code(r), Some(486));
        assert_eq!(status_code("INVITE sip:x SIP/2.0\r\n"), None);
        let from = header(r, "From", Some("f")).unwrap_or_default();
        assert_eq!(header_param(from, "tag").as_deref(), Some("t1"));
    }

    #[test]
    fn dechunks() {
        assert_eq!(dechunk("3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"), "abcde");
    }
}

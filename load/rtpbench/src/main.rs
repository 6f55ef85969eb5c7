//! trunkline-rtpbench: sets up N sessions on an rtpengine-compatible relay over the ng protocol,
//! sends paced 172-byte PCMU RTP through them and measures loss and added latency.
//!
//! Per session i: socket A_i (caller) and B_i (callee) on --local-ip. The offer names A_i, the
//! answer names B_i; the relay's rewritten SDPs give R_b (the port B_i sends to, from the offer
//! reply) and R_a (the port A_i sends to, from the answer reply). Packets go A_i -> R_a ->
//! relay -> B_i (and, with --both-directions, B_i -> R_b -> relay -> A_i). Both sides send two
//! priming packets first so a latching relay learns both endpoints before measuring.
//!
//! Every payload carries magic, stream id, sequence, direction and the send time twice: ns on
//! this process's monotonic clock (`Instant`) and on CLOCK_REALTIME. Sender and receiver are
//! threads of this one process, so two latencies come out of every packet:
//! - *end to end*: the receiving thread's monotonic clock once it holds the packet, minus the
//!   send time. It includes the receiving thread's own wake-up, which in a real deployment
//!   happens on another host.
//! - *arrival*: the kernel's receive timestamp (SO_TIMESTAMPNS, CLOCK_REALTIME, taken when the
//!   packet is queued towards the receiving socket) minus the send time: what the path in
//!   between (the relay's wake-up, processing and send) added, and nothing of the receiver.
//!
//! Run with `--direct` (no relay: A_i sends straight to B_i) to see the generator's own floor.

mod floor;
mod ng;
mod stats;

use std::net::{IpAddr, SocketAddr, UdpSocket as StdUdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use serde_json::json;

use crate::ng::{make_sdp, sdp_audio_addr, NgClient};
use crate::stats::Stats;

const RTP_HDR: usize = 12;
const PAYLOAD: usize = 160;
const PKT: usize = RTP_HDR + PAYLOAD;
const MAGIC: &[u8; 4] = b"TLRB";
const FLAG_PRIME: u8 = 1;
/// Bound on the packets of one `--floor` run, whatever the duration.
const FLOOR_MAX_PACKETS: u64 = 50_000_000;
/// Direction byte: 0 = A -> B (caller to callee), 1 = B -> A.
const DIR_AB: u8 = 0;
const DIR_BA: u8 = 1;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "trunkline-rtpbench",
    about = "RTP load generator + receiver for an ng-controlled media relay"
)]
struct Args {
    /// ng control address of the relay (rtpengine or trunkline-relay)
    #[arg(long, default_value = "127.0.0.1:2223")]
    ng: SocketAddr,
    /// number of sessions (each: one A->B stream, plus B->A with --both-directions)
    #[arg(long, default_value_t = 100)]
    streams: usize,
    /// seconds of measured traffic
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// packets per second per stream (20 ms ptime = 50)
    #[arg(long, default_value_t = 50)]
    pps_per_stream: u32,
    /// also send B -> A in every session
    #[arg(long)]
    both_directions: bool,
    /// address for the generator/receiver sockets
    #[arg(long, default_value = "127.0.0.1")]
    local_ip: IpAddr,
    /// sender threads (streams are spread over them and over the packet interval)
    #[arg(long, default_value_t = 1)]
    send_threads: usize,
    /// receiver threads (epoll over the sockets)
    #[arg(long, default_value_t = 1)]
    recv_threads: usize,
    /// wait this long after the last send before counting losses
    #[arg(long, default_value_t = 500)]
    drain_ms: u64,
    /// no relay: A_i sends straight to B_i (the generator's own ceiling and latency floor)
    #[arg(long)]
    direct: bool,
    /// no relay, no traffic pattern: measure the kernel's cost of one loopback send plus one
    /// receive per packet over --streams socket pairs on one thread for --duration (the
    /// floor any userspace relay pays per forwarded packet)
    #[arg(long, conflicts_with_all = ["direct", "both_directions"])]
    floor: bool,
    /// sample this PID's CPU (utime+stime of /proc/PID/stat, all threads) over the measurement
    #[arg(long)]
    relay_pid: Option<u32>,
    /// ng request timeout (ms) and retransmissions
    #[arg(long, default_value_t = 1000)]
    ng_timeout_ms: u64,
    #[arg(long, default_value_t = 2)]
    ng_retries: u32,
    /// print one JSON object on stdout (the human summary goes to stderr)
    #[arg(long)]
    json: bool,
    /// a label copied into the JSON summary
    #[arg(long, default_value = "")]
    label: String,
}

static BASE: OnceLock<Instant> = OnceLock::new();

fn base() -> Instant {
    *BASE.get_or_init(Instant::now)
}

fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// CLOCK_REALTIME in ns: the clock of the kernel's SO_TIMESTAMPNS receive stamps.
fn realtime_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

struct Stream {
    id: u32,
    a: UdpSocket,
    b: UdpSocket,
    /// where A sends (relay port facing A, or B itself with --direct)
    a_dst: SocketAddr,
    /// where B sends
    b_dst: SocketAddr,
    ssrc_ab: u32,
    ssrc_ba: u32,
}

struct Session {
    call_id: String,
    from_tag: String,
}

fn bind_udp(ip: IpAddr) -> Result<UdpSocket> {
    let s = StdUdpSocket::bind(SocketAddr::new(ip, 0))
        .context("bind stream socket (raise `ulimit -n`?)")?;
    s.set_nonblocking(true)?;
    nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::ReceiveTimestampns, &true)
        .context("SO_TIMESTAMPNS on a stream socket")?;
    Ok(UdpSocket::from_std(s))
}

fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

fn self_cpu_secs() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    match getrusage(UsageWho::RUSAGE_SELF) {
        Ok(u) => {
            let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
            t(u.user_time()) + t(u.system_time())
        }
        Err(_) => f64::NAN,
    }
}

/// utime + stime of a process (all its threads), in seconds. /proc reports USER_HZ ticks,
/// which is 100 on Linux for every architecture's /proc ABI.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // fields after "pid (comm) ": state=0 ... utime=11 stime=12
    let ut: f64 = f.get(11)?.parse().ok()?;
    let st: f64 = f.get(12)?.parse().ok()?;
    Some((ut + st) / 100.0)
}

/// Busy CPU time of the whole machine (user, nice, system, irq, softirq of every CPU), in
/// seconds. A relay that forwards in the kernel does its work in softirq context, charged
/// to whichever task was running (often the generator), so its cost shows only here.
fn machine_busy_secs() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/stat").ok()?;
    let line = s.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0.0))
        .sum::<f64>();
    Some(busy / 100.0)
}

fn fill_packet(buf: &mut [u8; PKT], ssrc: u32, seq: u32, stream: u32, dir: u8, flags: u8) {
    buf[0] = 0x80;
    buf[1] = if seq == 0 { 0x80 } else { 0x00 }; // marker on the first packet, PT 0 (PCMU)
    buf[2..4].copy_from_slice(&(seq as u16).to_be_bytes());
    buf[4..8].copy_from_slice(&seq.wrapping_mul(160).to_be_bytes());
    buf[8..12].copy_from_slice(&ssrc.to_be_bytes());
    let p = &mut buf[RTP_HDR..];
    p[0..4].copy_from_slice(MAGIC);
    p[4..8].copy_from_slice(&stream.to_be_bytes());
    p[8..12].copy_from_slice(&seq.to_be_bytes());
    p[20] = dir;
    p[21] = flags;
    // Last: as close to the send as possible.
    p[22..30].copy_from_slice(&realtime_ns().to_be_bytes());
    p[12..20].copy_from_slice(&now_ns().to_be_bytes());
}

fn new_packet() -> [u8; PKT] {
    [0xFFu8; PKT] // PCMU silence as filler
}

#[derive(Default)]
struct SendResult {
    sent: u64,
    errors: u64,
    max_lag_ns: u64,
    late_1ms: u64,
}

/// Sends `count` packets per stream (per direction), the streams' send instants spread evenly
/// over the packet interval. Sleeps to the next due instant; if behind, sends immediately
/// (the timestamp is taken at the send, so lateness never shows as relay latency, only as lag).
fn sender(
    streams: Vec<(Arc<Stream>, u64)>,
    start: Instant,
    period_ns: u64,
    count: u32,
    both: bool,
    seq0: u32,
) -> SendResult {
    let mut r = SendResult::default();
    let mut pkt = new_packet();
    for k in 0..count as u64 {
        for (s, phase) in &streams {
            let due = start + Duration::from_nanos(k * period_ns + phase);
            let now = Instant::now();
            if due > now {
                let d = due - now;
                if d > Duration::from_micros(20) {
                    std::thread::sleep(d);
                }
            } else {
                let lag = (now - due).as_nanos() as u64;
                r.max_lag_ns = r.max_lag_ns.max(lag);
                if lag > 1_000_000 {
                    r.late_1ms += 1;
                }
            }
            let seq = seq0 + k as u32;
            fill_packet(&mut pkt, s.ssrc_ab, seq, s.id, DIR_AB, 0);
            match s.a.send_to(&pkt, s.a_dst) {
                Ok(_) => r.sent += 1,
                Err(_) => r.errors += 1,
            }
            if both {
                fill_packet(&mut pkt, s.ssrc_ba, seq, s.id, DIR_BA, 0);
                match s.b.send_to(&pkt, s.b_dst) {
                    Ok(_) => r.sent += 1,
                    Err(_) => r.errors += 1,
                }
            }
        }
    }
    r
}

/// One receiver: epoll over its streams' A and B sockets until `stop` and a last empty poll.
fn receiver(
    streams: Vec<Arc<Stream>>,
    stop: Arc<AtomicBool>,
    ready: Arc<AtomicU64>,
) -> Result<Stats> {
    let mut poll = Poll::new()?;
    for (i, s) in streams.iter().enumerate() {
        poll.registry()
            .register(&mut SourceRef(&s.a), Token(i * 2), Interest::READABLE)?;
        poll.registry()
            .register(&mut SourceRef(&s.b), Token(i * 2 + 1), Interest::READABLE)?;
    }
    ready.fetch_add(1, Ordering::SeqCst);
    let mut stats = Stats::new();
    let mut last_seq: Vec<[Option<u32>; 2]> = vec![[None, None]; streams.len()];
    let mut events = Events::with_capacity(1024);
    let mut buf = [0u8; 2048];
    let mut cmsg = nix::cmsg_space!(nix::sys::time::TimeSpec);
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        match poll.poll(&mut events, Some(Duration::from_millis(50))) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        if events.is_empty() && stopping {
            break;
        }
        for ev in events.iter() {
            let idx = ev.token().0 / 2;
            let side_b = ev.token().0 % 2 == 1;
            let Some(s) = streams.get(idx) else { continue };
            let sock = if side_b { &s.b } else { &s.a };
            // A symmetric relay sends to B from the port B sends to (and to A from the one A
            // sends to); with --direct, b_dst/a_dst are A's/B's own sockets, so the same holds.
            let expect_src = if side_b { s.b_dst } else { s.a_dst };
            loop {
                match recv_stamped(sock, &mut buf, &mut cmsg) {
                    Ok((n, from, stamp)) => {
                        let t = now_ns();
                        let d = &buf[..n];
                        if n < RTP_HDR + 30 || &d[RTP_HDR..RTP_HDR + 4] != MAGIC {
                            stats.corrupt += 1;
                            continue;
                        }
                        let p = &d[RTP_HDR..];
                        let sid = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
                        let seq = u32::from_be_bytes([p[8], p[9], p[10], p[11]]);
                        let sent = u64::from_be_bytes([
                            p[12], p[13], p[14], p[15], p[16], p[17], p[18], p[19],
                        ]);
                        let sent_real = u64::from_be_bytes([
                            p[22], p[23], p[24], p[25], p[26], p[27], p[28], p[29],
                        ]);
                        let dir = p[20];
                        let flags = p[21];
                        let want_dir = if side_b { DIR_AB } else { DIR_BA };
                        if sid != s.id || dir != want_dir {
                            stats.misrouted += 1;
                            continue;
                        }
                        if from != expect_src {
                            stats.asymmetric += 1;
                        }
                        if flags & FLAG_PRIME != 0 {
                            stats.primed += 1;
                            continue;
                        }
                        let slot = &mut last_seq[idx][side_b as usize];
                        if let Some(prev) = *slot {
                            if seq <= prev {
                                stats.reordered += 1;
                            }
                        }
                        *slot = Some(slot.map_or(seq, |p| p.max(seq)));
                        stats.record_latency(
                            t.saturating_sub(sent),
                            stamp.map(|k| k.saturating_sub(sent_real)),
                        );
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        // e.g. ECONNREFUSED from an earlier ICMP; count and keep draining
                        stats.corrupt += 1;
                        break;
                    }
                }
            }
        }
    }
    Ok(stats)
}

/// One datagram with its source and the kernel's receive stamp (CLOCK_REALTIME ns), if any.
// nix's recvmsg takes the control buffer as `&mut Vec<u8>`, so a slice will not do.
#[allow(clippy::ptr_arg)]
fn recv_stamped(
    sock: &UdpSocket,
    buf: &mut [u8],
    cmsg: &mut Vec<u8>,
) -> std::io::Result<(usize, SocketAddr, Option<u64>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
    let mut iov = [std::io::IoSliceMut::new(buf)];
    let msg = recvmsg::<SockaddrStorage>(fd, &mut iov, Some(cmsg), MsgFlags::MSG_DONTWAIT)
        .map_err(std::io::Error::from)?;
    let from = msg
        .address
        .and_then(|a| {
            a.as_sockaddr_in()
                .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                .or_else(|| {
                    a.as_sockaddr_in6()
                        .map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6)))
                })
        })
        .ok_or_else(|| std::io::Error::other("datagram without an IP source"))?;
    let mut stamp = None;
    if let Ok(cmsgs) = msg.cmsgs() {
        for c in cmsgs {
            if let ControlMessageOwned::ScmTimestampns(ts) = c {
                stamp = Some(ts.tv_sec() as u64 * 1_000_000_000 + ts.tv_nsec() as u64);
            }
        }
    }
    Ok((msg.bytes, from, stamp))
}

/// Lets a shared (`Arc`) mio socket be registered: mio's `Source` wants `&mut`.
struct SourceRef<'a>(&'a UdpSocket);

impl mio::event::Source for SourceRef<'_> {
    fn register(&mut self, r: &mio::Registry, t: Token, i: Interest) -> std::io::Result<()> {
        mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(self.0)).register(r, t, i)
    }
    fn reregister(&mut self, r: &mio::Registry, t: Token, i: Interest) -> std::io::Result<()> {
        mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(self.0)).reregister(r, t, i)
    }
    fn deregister(&mut self, r: &mio::Registry) -> std::io::Result<()> {
        mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(self.0)).deregister(r)
    }
}

fn log(json: bool, msg: &str) {
    if json {
        eprintln!("{msg}");
    } else {
        println!("{msg}");
    }
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("trunkline-rtpbench: error: {e:#}");
            if args.json {
                println!(
                    "{}",
                    json!({"label": args.label, "error": format!("{e:#}")})
                );
            }
            std::process::exit(1);
        }
    }
}

fn run(a: &Args) -> Result<()> {
    base();
    raise_nofile();
    if a.streams == 0 || a.pps_per_stream == 0 || a.duration <= 0.0 {
        bail!("--streams, --pps-per-stream and --duration must be positive");
    }
    if a.floor {
        let mut summary = floor::run(
            a.local_ip,
            a.streams,
            Duration::from_secs_f64(a.duration),
            FLOOR_MAX_PACKETS,
        )?;
        summary["label"] = json!(a.label);
        if a.json {
            println!("{summary}");
        }
        return Ok(());
    }
    let period_ns = 1_000_000_000u64 / a.pps_per_stream as u64;
    let count = (a.duration * a.pps_per_stream as f64).round().max(1.0) as u32;
    let nonce = std::process::id() as u64
        ^ (std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0));

    // ---- sockets and sessions
    let mut ng = if a.direct {
        None
    } else {
        let mut c = NgClient::new(
            a.ng,
            a.local_ip,
            Duration::from_millis(a.ng_timeout_ms),
            a.ng_retries,
        )?;
        c.ping().with_context(|| format!("ng ping to {}", a.ng))?;
        Some(c)
    };
    let setup_start = Instant::now();
    let mut streams: Vec<Arc<Stream>> = Vec::with_capacity(a.streams);
    let mut sessions: Vec<Session> = Vec::new();
    let mut setup_err: Option<anyhow::Error> = None;
    for i in 0..a.streams {
        let res = (|| -> Result<Arc<Stream>> {
            let sa = bind_udp(a.local_ip)?;
            let sb = bind_udp(a.local_ip)?;
            let (pa, pb) = (sa.local_addr()?, sb.local_addr()?);
            let (a_dst, b_dst) = match ng.as_mut() {
                None => (pb, pa),
                Some(c) => {
                    let call_id = format!("rtpbench-{nonce:x}-{i}");
                    let from_tag = format!("a{i}");
                    let to_tag = format!("b{i}");
                    let off =
                        c.offer(&call_id, &from_tag, &make_sdp(a.local_ip, pa.port(), nonce))?;
                    sessions.push(Session {
                        call_id: call_id.clone(),
                        from_tag: from_tag.clone(),
                    });
                    let b_dst = sdp_audio_addr(&off).context("offer reply SDP")?;
                    let ans = c.answer(
                        &call_id,
                        &from_tag,
                        &to_tag,
                        &make_sdp(a.local_ip, pb.port(), nonce + 1),
                    )?;
                    let a_dst = sdp_audio_addr(&ans).context("answer reply SDP")?;
                    (a_dst, b_dst)
                }
            };
            let h = (nonce as u32) ^ (i as u32).wrapping_mul(0x9E37_79B9);
            Ok(Arc::new(Stream {
                id: i as u32,
                a: sa,
                b: sb,
                a_dst,
                b_dst,
                ssrc_ab: h,
                ssrc_ba: h ^ 0x5555_5555,
            }))
        })();
        match res {
            Ok(s) => streams.push(s),
            Err(e) => {
                setup_err = Some(e.context(format!("setting up session {i}")));
                break;
            }
        }
    }
    let setup_secs = setup_start.elapsed().as_secs_f64();
    let result = match setup_err {
        Some(e) => Err(e),
        None => measure(a, &streams, period_ns, count, setup_secs),
    };
    // ---- delete sessions whatever happened
    let mut delete_errors = 0u64;
    if let Some(c) = ng.as_mut() {
        for s in &sessions {
            if c.delete(&s.call_id, &s.from_tag).is_err() {
                delete_errors += 1;
            }
        }
    }
    if delete_errors > 0 {
        eprintln!("trunkline-rtpbench: {delete_errors} ng delete(s) failed");
    }
    let summary = result?;
    let mut summary = summary;
    summary["sessions_deleted"] = json!(sessions.len() as u64 - delete_errors);
    summary["delete_errors"] = json!(delete_errors);
    if a.json {
        println!("{summary}");
    }
    Ok(())
}

fn measure(
    a: &Args,
    streams: &[Arc<Stream>],
    period_ns: u64,
    count: u32,
    setup_secs: f64,
) -> Result<serde_json::Value> {
    let n = streams.len();
    // ---- receivers
    let stop = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicU64::new(0));
    let rthreads = a.recv_threads.clamp(1, n);
    let mut rhandles = Vec::new();
    for t in 0..rthreads {
        let mine: Vec<Arc<Stream>> = streams.iter().skip(t).step_by(rthreads).cloned().collect();
        let (stop, ready) = (stop.clone(), ready.clone());
        rhandles.push(
            std::thread::Builder::new()
                .name(format!("recv{t}"))
                .spawn(move || receiver(mine, stop, ready))?,
        );
    }
    while ready.load(Ordering::SeqCst) < rthreads as u64 {
        std::thread::sleep(Duration::from_millis(1));
    }

    // ---- priming: both sides send 2 packets (seq 0, 1), 20 ms apart, so the relay latches
    let mut pkt = new_packet();
    let mut prime_errors = 0u64;
    for seq in 0..2u32 {
        for s in streams {
            fill_packet(&mut pkt, s.ssrc_ba, seq, s.id, DIR_BA, FLAG_PRIME);
            prime_errors += s.b.send_to(&pkt, s.b_dst).is_err() as u64;
            fill_packet(&mut pkt, s.ssrc_ab, seq, s.id, DIR_AB, FLAG_PRIME);
            prime_errors += s.a.send_to(&pkt, s.a_dst).is_err() as u64;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    // ---- measured traffic
    let sthreads = a.send_threads.clamp(1, n);
    let start = Instant::now() + Duration::from_millis(10);
    let cpu0 = self_cpu_secs();
    let relay0 = a.relay_pid.and_then(proc_cpu_secs);
    let machine0 = machine_busy_secs();
    let mut shandles = Vec::new();
    for t in 0..sthreads {
        let mine: Vec<(Arc<Stream>, u64)> = streams
            .iter()
            .enumerate()
            .skip(t)
            .step_by(sthreads)
            .map(|(i, s)| (s.clone(), i as u64 * period_ns / n as u64))
            .collect();
        let both = a.both_directions;
        shandles.push(
            std::thread::Builder::new()
                .name(format!("send{t}"))
                .spawn(move || sender(mine, start, period_ns, count, both, 2))?,
        );
    }
    let mut sr = SendResult::default();
    for h in shandles {
        let r = h
            .join()
            .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
        sr.sent += r.sent;
        sr.errors += r.errors;
        sr.max_lag_ns = sr.max_lag_ns.max(r.max_lag_ns);
        sr.late_1ms += r.late_1ms;
    }
    let send_end = Instant::now();
    std::thread::sleep(Duration::from_millis(a.drain_ms));
    let wall = (send_end - start).as_secs_f64();
    let wall_drain = start.elapsed().as_secs_f64();
    let cpu1 = self_cpu_secs();
    let relay1 = a.relay_pid.and_then(proc_cpu_secs);
    let machine1 = machine_busy_secs();
    stop.store(true, Ordering::SeqCst);
    let mut st = Stats::new();
    for h in rhandles {
        let s = h
            .join()
            .map_err(|_| anyhow::anyhow!("receiver thread panicked"))??;
        st.merge(&s);
    }

    let flows = n as u64 * if a.both_directions { 2 } else { 1 };
    let expected = flows * count as u64;
    let lost = sr.sent.saturating_sub(st.received);
    let loss_pct = if sr.sent > 0 {
        lost as f64 * 100.0 / sr.sent as f64
    } else {
        0.0
    };
    let offered_pps = flows as f64 * a.pps_per_stream as f64;
    // If the sender fell behind, the traffic took longer than --duration: rate over what it took.
    let fwd_pps = st.received as f64 / a.duration.max(wall);
    let send_pps = sr.sent as f64 / a.duration.max(wall);
    // On schedule, the last packet leaves just before `duration`; allow 1 % + 20 ms of slack.
    let kept_pace = wall <= a.duration * 1.01 + 0.02;
    let gen_cpu = cpu1 - cpu0;
    let relay_cpu = match (relay0, relay1) {
        (Some(x), Some(y)) => Some(y - x),
        _ => None,
    };
    let relay_cores = relay_cpu.map(|c| c / wall_drain);
    let machine_cores = match (machine0, machine1) {
        (Some(x), Some(y)) => Some((y - x) / wall_drain),
        _ => None,
    };
    let p = |q| st.user.percentile_us(q);
    let k = |q| st.arrival.percentile_us(q);
    let summary = json!({
        "label": a.label,
        "target": if a.direct { "direct".to_string() } else { a.ng.to_string() },
        "sessions": n,
        "flows": flows,
        "pps_per_stream": a.pps_per_stream,
        "duration_s": a.duration,
        "both_directions": a.both_directions,
        "setup_s": setup_secs,
        "offered_pps": offered_pps,
        "expected": expected,
        "sent": sr.sent,
        "send_errors": sr.errors + prime_errors,
        "received": st.received,
        "lost": lost,
        "loss_pct": loss_pct,
        "forwarded_pps": fwd_pps,
        "achieved_send_pps": send_pps,
        "sender_kept_pace": kept_pace,
        "primed_received": st.primed,
        "misrouted": st.misrouted,
        "asymmetric_source": st.asymmetric,
        "reordered": st.reordered,
        "corrupt": st.corrupt,
        "latency_us": st.user.summary(),
        "arrival_latency_us": st.arrival.summary(),
        "send_wall_s": wall,
        "sender_max_lag_us": sr.max_lag_ns / 1000,
        "sender_late_1ms": sr.late_1ms,
        "generator_cpu_s": gen_cpu,
        "generator_cores": gen_cpu / wall_drain,
        "relay_pid": a.relay_pid,
        "relay_cpu_s": relay_cpu,
        "relay_cores": relay_cores,
        "relay_pps_per_core": relay_cores.filter(|c| *c > 0.0).map(|c| fwd_pps / c),
        "machine_cores": machine_cores,
    });
    let opt = |v: Option<u64>| v.map_or("-".to_string(), |x| x.to_string());
    log(a.json, &(format!(
        "rtpbench {}: {} sessions, {} flows x {} pps = {:.0} pps offered, {:.1} s (setup {:.2} s)\n  \
         sent {} (errors {}), received {}, lost {} ({:.4} %), forwarded {:.0} pps\n  \
         latency us, end to end: p50 {} p90 {} p99 {} p99.9 {} max {}\n  \
         latency us, to arrival on the socket: p50 {} p90 {} p99 {} p99.9 {} ({} stamped)\n  \
         misrouted {} asymmetric-source {} reordered {} corrupt {} primed {}\n  \
         generator: {:.2} CPU s = {:.2} cores, sent {:.0} pps over {:.2} s ({}), max send lag {} us, {} sends >1 ms late{}",
        if a.direct { "direct".to_string() } else { a.ng.to_string() },
        n, flows, a.pps_per_stream, offered_pps, a.duration, setup_secs,
        sr.sent, sr.errors + prime_errors, st.received, lost, loss_pct, fwd_pps,
        opt(p(50.0)), opt(p(90.0)), opt(p(99.0)), opt(p(99.9)), st.user.max_ns.div_ceil(1000),
        opt(k(50.0)), opt(k(90.0)), opt(k(99.0)), opt(k(99.9)), st.arrival.samples,
        st.misrouted, st.asymmetric, st.reordered, st.corrupt, st.primed,
        gen_cpu, gen_cpu / wall_drain, send_pps, wall, if kept_pace { "kept pace" } else { "FELL BEHIND" }, sr.max_lag_ns / 1000, sr.late_1ms,
        match (relay_cpu, relay_cores) {
            (Some(c), Some(k)) => format!("\n  relay pid {}: {:.2} CPU s = {:.2} cores, {:.0} pps per core", a.relay_pid.unwrap_or(0), c, k, if k > 0.0 { fwd_pps / k } else { f64::NAN }),
            _ => String::new(),
        }
    ) + &machine_cores.map_or(String::new(), |m| format!("\n  machine: {m:.2} cores busy (all processes, softirq included)"))));
    Ok(summary)
}

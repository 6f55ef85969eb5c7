//! `--floor`: what the kernel alone charges a userspace relay per forwarded packet here.
//!
//! A relay cannot forward a datagram with less than one receive from a socket and one send
//! over loopback into another socket (the loopback send also runs the receiving side's
//! network stack, in the sender's context). This mode does exactly that and nothing else:
//! one thread, `pairs` socket pairs visited in turn (so socket state is as cold as with that
//! many streams), a 172-byte send on one socket and the matching receive on the other, no
//! epoll, no sleeping, no wake-ups (nobody waits on the receiving sockets). The thread's
//! CPU time per packet is therefore a lower bound for any userspace relay on this machine,
//! and its inverse an upper bound on packets per second per core: a benchmark figure is
//! read against it.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Packets between clock reads: the loop checks its time bound this often.
const CHECK_EVERY: u64 = 256;

/// CPU seconds (user + system) of the calling thread.
fn thread_cpu_secs() -> Result<f64> {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_THREAD).context("getrusage(RUSAGE_THREAD)")?;
    let t = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    Ok(t(u.user_time()) + t(u.system_time()))
}

/// Runs the loop for `duration` (bounded also by `max_packets`) and returns the summary.
pub fn run(ip: IpAddr, pairs: usize, duration: Duration, max_packets: u64) -> Result<Value> {
    if pairs == 0 {
        bail!("--floor needs at least one socket pair (--streams)");
    }
    let bind = || -> Result<UdpSocket> {
        let s = UdpSocket::bind(SocketAddr::new(ip, 0)).context("bind floor socket")?;
        s.set_nonblocking(true)?;
        Ok(s)
    };
    let mut socks = Vec::with_capacity(pairs);
    for _ in 0..pairs {
        let (tx, rx) = (bind()?, bind()?);
        let dst = rx.local_addr()?;
        socks.push((tx, rx, dst));
    }
    let pkt = [0x80u8; super::PKT];
    let mut buf = [0u8; 2048];
    let mut packets = 0u64;
    let mut missing = 0u64;
    let mut rounds = 0u64;
    let cpu0 = thread_cpu_secs()?;
    let start = Instant::now();
    'outer: loop {
        for (tx, rx, dst) in &socks {
            tx.send_to(&pkt, *dst).context("floor send")?;
            // Loopback delivers inside send_to, so the datagram is already queued.
            match rx.recv_from(&mut buf) {
                Ok(_) => packets += 1,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => missing += 1,
                Err(e) => return Err(e).context("floor receive"),
            }
            rounds += 1;
            if rounds.is_multiple_of(CHECK_EVERY)
                && (start.elapsed() >= duration || rounds >= max_packets)
            {
                break 'outer;
            }
        }
    }
    let wall = start.elapsed().as_secs_f64();
    let cpu = thread_cpu_secs()? - cpu0;
    let us_per_packet = if packets > 0 {
        cpu * 1e6 / packets as f64
    } else {
        f64::NAN
    };
    eprintln!(
        "rtpbench floor: {pairs} socket pairs, {packets} packets in {wall:.2} s, {cpu:.2} CPU s: \
         {us_per_packet:.2} µs per packet = {:.0} packets/s per core (upper bound for a userspace relay)",
        1e6 / us_per_packet
    );
    Ok(json!({
        "mode": "floor",
        "pairs": pairs,
        "packets": packets,
        "missing": missing,
        "wall_s": wall,
        "cpu_s": cpu,
        "us_per_packet": us_per_packet,
        "pps_per_core": 1e6 / us_per_packet,
    }))
}

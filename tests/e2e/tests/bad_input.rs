//! Hostile and broken input: garbage, truncated and oversized messages over UDP and TCP, a TCP
//! peer that stalls mid-message, and 1000 idle TCP connections. The node must stay up, shed what
//! it should, give back its memory, and still carry calls.

use anyhow::{ensure, Result};
use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use trunkline_e2e::*;

const CALLS_AFTER: u64 = 50;

fn sample_invite(node: std::net::SocketAddr, n: usize) -> String {
    let body = "v=0\r\no=x 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
    format!(
        "INVITE sip:bob@{node} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKbad{n}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:eve@127.0.0.1>;tag=bad{n}\r\nTo: <sip:bob@{node}>\r\n\
         Call-ID: bad-input-{n}\r\nCSeq: 1 INVITE\r\nContact: <sip:eve@127.0.0.1:9>\r\n\
         Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// A syntactically plausible request padded with one huge header to `size` bytes.
fn oversized(node: std::net::SocketAddr, size: usize) -> Vec<u8> {
    let head = format!(
        "OPTIONS sip:{node} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKhuge\r\n\
         Max-Forwards: 70\r\nFrom: <sip:eve@127.0.0.1>;tag=huge\r\nTo: <sip:{node}>\r\n\
         Call-ID: huge\r\nCSeq: 1 OPTIONS\r\nX-Padding: "
    );
    let tail = "\r\nContent-Length: 0\r\n\r\n";
    let mut v = head.into_bytes();
    v.resize(size - tail.len(), b'a');
    v.extend_from_slice(tail.as_bytes());
    v
}

fn tcp_send_and_close(addr: std::net::SocketAddr, data: &[u8]) {
    if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
        let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
        // The node may close on us mid-write; that is allowed.
        let _ = s.write_all(data);
    }
}

fn calls_still_work(node: &mut Node, out: &std::path::Path, server: &mut SippRun) -> Result<()> {
    node.assert_healthy()?;
    let uac = Sipp::uac("uac_basic.xml", node.sip_addr())
        .calls(CALLS_AFTER)
        .rate(50)
        .duration_ms(200)
        .timeout_secs(60);
    run_pair(uac, server, out, CALLS_AFTER, Duration::from_secs(90))?;
    assert_calls(node, "200", CALLS_AFTER as f64)?;
    ensure!(
        node.is_alive(),
        "node died; log tail:\n{}",
        tail(&node.log, 40)
    );
    Ok(())
}

#[test]
fn garbage_truncated_and_oversized_messages() -> Result<()> {
    let out = out_dir("bad_input_garbage")?;
    let uas = Sipp::uas("uas_basic.xml")
        .calls(CALLS_AFTER)
        .timeout_secs(300);
    let (mut node, mut server) = node_with_callee(&out, uas, Transport::Udp, |_| {})?;
    let addr = node.sip_addr();
    let udp = UdpSocket::bind((NODE_IP, 0))?;
    let mut rng = Rng::new(0x5eed_7e57);

    // Random datagrams (bounded: 300 of at most 1400 bytes).
    for _ in 0..300 {
        let n = rng.range(1, 1400);
        udp.send_to(&rng.bytes(n), addr)?;
    }
    // Random bytes that start like SIP, so they get past any first-byte check.
    for _ in 0..100 {
        let mut m = b"INVITE sip:x@127.0.0.1 SIP/2.0\r\n".to_vec();
        let n = rng.range(1, 600);
        m.extend(rng.bytes(n));
        udp.send_to(&m, addr)?;
    }
    // Truncations of a valid INVITE at every 7th byte.
    let invite = sample_invite(addr, 0);
    for cut in (1..invite.len()).step_by(7) {
        udp.send_to(&invite.as_bytes()[..cut], addr)?;
    }
    // 64 KiB over UDP (the largest datagram is 65507 bytes).
    udp.send_to(&oversized(addr, 65_000), addr)?;
    node.assert_healthy()?;

    // The same over TCP: each connection gets garbage, a truncation, or 64 KiB, then closes.
    for _ in 0..20 {
        let n = rng.range(1, 4000);
        tcp_send_and_close(addr, &rng.bytes(n));
    }
    for cut in (1..invite.len()).step_by(61) {
        tcp_send_and_close(addr, &invite.as_bytes()[..cut]);
    }
    tcp_send_and_close(addr, &oversized(addr, 64 * 1024));
    node.assert_healthy()?;

    let m = node.metrics()?;
    let rejected =
        m.sum("trunkline_sip_parse_errors_total") + m.sum("trunkline_transport_dropped_total");
    ensure!(
        rejected > 0.0,
        "hundreds of malformed messages, but no parse error or drop was counted"
    );
    calls_still_work(&mut node, &out, &mut server)
}

/// A TCP peer that sends half a message and stalls is disconnected after
/// tcp_partial_timeout_secs, and the log says which peer it was.
#[test]
fn stalled_partial_tcp_message_is_closed() -> Result<()> {
    let out = out_dir("bad_input_partial")?;
    let uas = Sipp::uas("uas_basic.xml")
        .calls(CALLS_AFTER)
        .timeout_secs(300);
    let (mut node, mut server) = node_with_callee(&out, uas, Transport::Udp, |c| {
        c.tcp_partial_timeout_secs = 2;
        c.tcp_idle_timeout_secs = 300;
    })?;
    let addr = node.sip_addr();
    let mut s = TcpStream::connect(addr)?;
    let peer = s.local_addr()?;
    let invite = sample_invite(addr, 1);
    s.write_all(&invite.as_bytes()[..invite.len() / 2])?;
    let started = Instant::now();
    // Generous bound: the configured 2 s plus scheduling slack; far below the 300 s idle timeout.
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut buf = [0u8; 4096];
    let closed = loop {
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(_) => continue, // e.g. a 400 before closing
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                break false
            }
            Err(_) => break true, // reset
        }
    };
    ensure!(
        closed,
        "the node kept a stalled half message open for {:?}",
        started.elapsed()
    );
    let named = wait_until(Duration::from_secs(3), || {
        node.log_text().contains(&peer.to_string())
    });
    ensure!(
        named,
        "the node's log does not name the stalled peer {peer}; tail:\n{}",
        tail(&node.log, 20)
    );
    calls_still_work(&mut node, &out, &mut server)
}

/// The node's TCP connection gauge, whichever way it spells the label value ("TCP" in the
/// contract, "tcp" allowed).
fn tcp_gauge(m: &Metrics) -> Option<f64> {
    m.get(
        "trunkline_transport_connections_active",
        &[("transport", "TCP")],
    )
    .or_else(|| {
        m.get(
            "trunkline_transport_connections_active",
            &[("transport", "tcp")],
        )
    })
}

/// What one round of idle connections cost the node: VmRSS with them all open, and once
/// they were all closed and the memory had up to `SETTLE` to come back.
struct Round {
    peak_kib: u64,
    after_kib: u64,
}

/// How long the node has to give a round's memory back once its connections are gone.
const SETTLE: Duration = Duration::from_secs(10);

/// Opens `conns` idle TCP connections, checks that the node counts them all and closes
/// every one of them itself within 30 s, then waits (up to `SETTLE`) for VmRSS to come
/// back under `ceiling_kib`.
fn idle_round(node: &mut Node, conns: usize, ceiling_kib: u64) -> Result<Round> {
    let addr = node.sip_addr();
    let mut open_conns = Vec::with_capacity(conns);
    for _ in 0..conns {
        open_conns.push(TcpStream::connect_timeout(&addr, Duration::from_secs(5))?);
    }
    let m = node.wait_metrics(Duration::from_secs(10), |m| {
        tcp_gauge(m) == Some(conns as f64)
    })?;
    let peak_gauge = tcp_gauge(&m).unwrap_or(-1.0);
    ensure!(
        peak_gauge == conns as f64,
        "connections_active{{TCP}} = {peak_gauge} with {conns} open"
    );
    let peak_kib = node.rss_kib()?;

    for c in &open_conns {
        c.set_nonblocking(true)?;
    }
    let mut open: Vec<bool> = vec![true; conns];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut buf = [0u8; 512];
    while open.iter().any(|o| *o) && Instant::now() < deadline {
        for (i, c) in open_conns.iter_mut().enumerate() {
            if !open[i] {
                continue;
            }
            match c.read(&mut buf) {
                Ok(0) => open[i] = false,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => open[i] = false,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let still_open = open.iter().filter(|o| **o).count();
    ensure!(
        still_open == 0,
        "{still_open} of {conns} idle connections still open 30 s later (idle timeout 3 s)"
    );
    drop(open_conns);
    let m = node.wait_metrics(Duration::from_secs(10), |m| tcp_gauge(m) == Some(0.0))?;
    let gauge = tcp_gauge(&m).unwrap_or(-1.0);
    ensure!(
        gauge == 0.0,
        "connections_active{{TCP}} = {gauge} after all were closed"
    );
    // Nothing but this test's sampling reaches the node now: the memory must come back
    // with the node idle, as it would at night.
    wait_until(SETTLE, || node.rss_kib().is_ok_and(|r| r <= ceiling_kib));
    let after_kib = node.rss_kib()?;
    Ok(Round {
        peak_kib,
        after_kib,
    })
}

/// 1000 idle TCP connections are closed by the node after tcp_idle_timeout_secs, the
/// connection gauge returns to 0 and the memory they took is given back, twice over: a
/// node that kept what a flood of connections took, or kept more after each, would be
/// eaten by repeated floods.
#[test]
fn idle_tcp_connections_are_reaped() -> Result<()> {
    const CONNS: usize = 1000;
    const ROUNDS: usize = 2;
    let out = out_dir("bad_input_idle")?;
    let uas = Sipp::uas("uas_basic.xml")
        .calls(CALLS_AFTER)
        .timeout_secs(300);
    let (mut node, mut server) = node_with_callee(&out, uas, Transport::Udp, |c| {
        c.tcp_idle_timeout_secs = 3;
        // Every connection comes from 127.0.0.1.
        c.tcp_max_per_source = CONNS as u32;
    })?;
    let addr = node.sip_addr();
    // Warm up (one TCP connection opened and reaped) so the baseline includes lazily built state.
    drop(TcpStream::connect(addr)?);
    node.wait_metrics(Duration::from_secs(15), |m| tcp_gauge(m) == Some(0.0))?;
    let baseline = node.rss_kib()?;
    // 1000 connections take about 13 MiB; a quarter of that may stay (allocator
    // bookkeeping, tables that keep their capacity), not more.
    let margin = 3 * 1024;

    let mut report = format!("baseline {baseline} KiB\n");
    let mut rounds = Vec::with_capacity(ROUNDS);
    for n in 1..=ROUNDS {
        let round = idle_round(&mut node, CONNS, baseline + margin)?;
        report += &format!(
            "round {n}: peak {} KiB, after {} KiB\n",
            round.peak_kib, round.after_kib
        );
        std::fs::write(out.join("rss.txt"), &report)?;
        rounds.push(round);
    }
    for (n, round) in rounds.iter().enumerate() {
        ensure!(
            round.after_kib <= baseline + margin,
            "round {}: VmRSS {} KiB {} s after the connections closed, baseline {baseline} KiB \
             (peak {} KiB); the node kept the memory they took",
            n + 1,
            round.after_kib,
            SETTLE.as_secs(),
            round.peak_kib
        );
    }
    calls_still_work(&mut node, &out, &mut server)
}

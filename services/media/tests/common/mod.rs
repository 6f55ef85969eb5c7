//! Set-up shared by the relay's integration tests (`mod common;` in each test file): a relay
//! on a port window of its own, parties' media sockets on loopback, SDP naming them, the
//! offer/answer exchange, RTP to send through, and bounded waits for what the relay
//! publishes. Each step is written once here, so a test shows only what it is about, and a
//! change to a step (a timeout, the SDP a party sends) reaches every test at once.
// Each test binary uses its own part of this module.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use trunkline_media::{CallStats, Flags, MediaConfig, Relay};

// ---- time ----

/// The `now` the tests on real sockets give the relay: the real clock, which the workers
/// stamp packets with too. Tests of timeouts pass virtual instants instead.
pub fn now() -> Instant {
    Instant::now()
}

// ---- ports ----

/// One test binary's share of the port space, cut into a window per test.
///
/// The tests of one binary run in parallel, in one process, so each starts its relay on a
/// window of its own: two relays never compete for a port. `cargo test` runs the binaries one
/// after another, so the bases below need to be apart only for tests of the same binary.
/// Everything stays under 32768, where Linux's ephemeral range starts: the parties' sockets
/// (bound to port 0) are given ports from there, never one of a relay's.
#[derive(Debug, Clone, Copy)]
pub struct PortWindows {
    base: u16,
    size: u16,
}

/// `tests/relay.rs`: window `n` starts at 21000 + 200·n.
pub const RELAY_RS: PortWindows = PortWindows {
    base: 21000,
    size: 200,
};

/// `tests/interfaces.rs`: window `n` starts at 26000 + 100·n, past `relay.rs`'s windows.
pub const INTERFACES_RS: PortWindows = PortWindows {
    base: 26000,
    size: 100,
};

/// `tests/kernel.rs`: window `n` starts at 28000 + 100·n.
pub const KERNEL_RS: PortWindows = PortWindows {
    base: 28000,
    size: 100,
};

/// `tests/learning.rs`: window `n` starts at 22000 + 100·n.
pub const LEARNING_RS: PortWindows = PortWindows {
    base: 22000,
    size: 100,
};

/// `tests/timeouts.rs`: window `n` starts at 24000 + 40·n.
pub const TIMEOUTS_RS: PortWindows = PortWindows {
    base: 24000,
    size: 40,
};

/// `tests/thread_policy.rs`, a binary with one relay: 25000–25099.
pub const THREAD_POLICY_RS: PortWindows = PortWindows {
    base: 25000,
    size: 100,
};

impl PortWindows {
    /// The default config with its port range set to `pairs` RTP/RTCP port pairs at the
    /// start of window `n`; a range that would spill into the next window is a test bug.
    pub fn config(self, n: u16, pairs: u16) -> MediaConfig {
        assert!(
            pairs > 0 && pairs * 2 <= self.size,
            "{pairs} port pairs do not fit a window of {} ports",
            self.size
        );
        let port_min = self.base + n * self.size;
        MediaConfig {
            port_min,
            port_max: port_min + pairs * 2 - 1,
            ..MediaConfig::default()
        }
    }
}

/// How long a freed port rests in the tests: longer than any test runs, so a port comes back
/// within a test only where the test shortens this itself, and counts of ports in use and
/// resting do not move behind its back.
pub const PORT_REST: Duration = Duration::from_secs(60);

/// Starts a relay on window `n` of `windows` with `pairs` port pairs, `workers` forwarding
/// threads and freed ports resting [`PORT_REST`]; `tweak` then sets what the test is about.
pub fn start_relay(
    windows: PortWindows,
    n: u16,
    pairs: u16,
    workers: usize,
    tweak: impl FnOnce(&mut MediaConfig),
) -> Relay {
    let mut config = MediaConfig {
        workers,
        port_rest: PORT_REST,
        ..windows.config(n, pairs)
    };
    tweak(&mut config);
    Relay::start(config, None).unwrap()
}

// ---- parties' sockets ----

/// The address parties and relay use where a test names no other.
pub const LOCALHOST: &str = "127.0.0.1";

pub fn ip(addr: &str) -> IpAddr {
    addr.parse().unwrap()
}

pub fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

/// Relay port `port` on [`LOCALHOST`], as a destination.
pub fn to(port: u16) -> SocketAddr {
    sa(LOCALHOST, port)
}

/// How long a party waits for a relayed packet: ample on a loaded machine, and bounded, so a
/// packet the relay never forwards fails the test instead of hanging it.
pub const RECV_TIMEOUT: Duration = Duration::from_millis(2000);

/// How long a party listens to show that nothing comes: a forwarded packet on loopback would
/// long have arrived.
pub const QUIET_FOR: Duration = Duration::from_millis(200);

/// A party's media socket on `addr`, its port chosen by the kernel; reads give up after
/// [`RECV_TIMEOUT`].
pub fn endpoint_on(addr: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip(addr), 0)).unwrap();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    s
}

/// A party's media socket on [`LOCALHOST`].
pub fn endpoint() -> UdpSocket {
    endpoint_on(LOCALHOST)
}

pub fn port(s: &UdpSocket) -> u16 {
    s.local_addr().unwrap().port()
}

/// The next datagram `s` receives and its source, or `None` once its read timeout passes.
pub fn recv(s: &UdpSocket) -> Option<(Vec<u8>, SocketAddr)> {
    let mut buf = [0u8; 2048];
    match s.recv_from(&mut buf) {
        Ok((n, from)) => Some((buf[..n].to_vec(), from)),
        Err(_) => None,
    }
}

/// Whether `s` receives nothing for [`QUIET_FOR`]; its read timeout is [`RECV_TIMEOUT`]
/// again afterwards.
pub fn stays_quiet(s: &UdpSocket) -> bool {
    s.set_read_timeout(Some(QUIET_FOR)).unwrap();
    let quiet = recv(s).is_none();
    s.set_read_timeout(Some(RECV_TIMEOUT)).unwrap();
    quiet
}

// ---- media ----

/// An RTP packet, PCMU, SSRC 0x12345678, timestamp 160 per sequence number.
pub fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 160).to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// `from` sends `packet` to the relay at `dest`, and `at` must receive that very packet
/// (`what` names it in the failure); returns where it came from. A party's first packet
/// through the relay is also the one the relay latches onto the party's real source with.
#[track_caller]
pub fn send_through(
    what: &str,
    from: &UdpSocket,
    dest: SocketAddr,
    at: &UdpSocket,
    packet: &[u8],
) -> SocketAddr {
    from.send_to(packet, dest).unwrap();
    let Some((got, src)) = recv(at) else {
        panic!("{what}: nothing relayed within {RECV_TIMEOUT:?}");
    };
    assert_eq!(got, packet, "{what}: relayed unchanged");
    src
}

// ---- SDP ----

/// One m-line: media kind (`audio` gets PCMU, anything else payload type 96), port, and
/// attribute lines to add, each ending in CRLF.
pub struct M<'a> {
    pub kind: &'a str,
    pub port: u16,
    pub extra: &'a str,
}

/// `a=rtcp-mux`: RTCP on the RTP port.
pub const RTCP_MUX: &str = "a=rtcp-mux\r\n";

/// `a=rtcp:PORT`: RTCP on a port of its own.
pub fn rtcp_attr(port: u16) -> String {
    format!("a=rtcp:{port}\r\n")
}

/// A party's SDP: session and connection on `addr` (IPv4 or IPv6, as `addr` is), then
/// `media`.
pub fn sdp(addr: &str, media: &[M<'_>]) -> Vec<u8> {
    let ty = if ip(addr).is_ipv4() { "IP4" } else { "IP6" };
    let mut s = format!("v=0\r\no=- 1 1 IN {ty} {addr}\r\ns=-\r\nc=IN {ty} {addr}\r\nt=0 0\r\n");
    for m in media {
        let fmt = if m.kind == "audio" { "0" } else { "96" };
        s.push_str(&format!(
            "m={} {} RTP/AVP {fmt}\r\n{}",
            m.kind, m.port, m.extra
        ));
    }
    s.into_bytes()
}

/// SDP with one audio m-line on `addr`:`port`, plus the attribute lines `extra`.
pub fn audio_with(addr: &str, port: u16, extra: &str) -> Vec<u8> {
    sdp(
        addr,
        &[M {
            kind: "audio",
            port,
            extra,
        }],
    )
}

/// SDP with one plain audio m-line on `addr`:`port`.
pub fn audio(addr: &str, port: u16) -> Vec<u8> {
    audio_with(addr, port, "")
}

/// Where the relay anchored one m-line, as the rewritten SDP tells a party: the address and
/// the ports to send to, and whether RTCP stays on the RTP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub addr: IpAddr,
    pub port: u16,
    pub rtcp_port: u16,
    pub rtcp_mux: bool,
}

/// The [`Anchor`] of each m-line of an SDP the relay rewrote.
pub fn anchors(sdp: &[u8]) -> Vec<Anchor> {
    let s = trunkline_sdp::parse(sdp).unwrap();
    s.media()
        .into_iter()
        .map(|m| Anchor {
            addr: m.connection.unwrap(),
            port: m.port,
            rtcp_port: m.rtcp.map_or(m.port.wrapping_add(1), |(p, _)| p),
            rtcp_mux: m.rtcp_mux,
        })
        .collect()
}

// ---- offer/answer ----

/// The offerer's tag in [`offered`] and [`answered`].
pub const FROM_TAG: &str = "ftag";
/// The answerer's tag in [`answered`].
pub const TO_TAG: &str = "ttag";

/// The offerer ([`FROM_TAG`]) offers `sdp`, which must succeed; returns the rewritten SDP,
/// which tells the answerer where to send.
pub fn offered(relay: &Relay, call: &str, sdp: &[u8], flags: &Flags) -> Vec<u8> {
    relay.offer(call, FROM_TAG, sdp, flags, now()).unwrap()
}

/// The answerer ([`TO_TAG`]) answers the offer with `sdp`, which must succeed; returns the
/// rewritten SDP, which tells the offerer where to send.
pub fn answered(relay: &Relay, call: &str, sdp: &[u8], flags: &Flags) -> Vec<u8> {
    relay
        .answer(call, FROM_TAG, TO_TAG, sdp, flags, now())
        .unwrap()
}

/// What an offer and its answer anchored, per m-line and per side of the relay.
pub struct Anchored {
    /// From the rewritten answer: where the offerer sends.
    pub offerer_side: Vec<Anchor>,
    /// From the rewritten offer: where the answerer sends.
    pub answerer_side: Vec<Anchor>,
}

impl Anchored {
    /// The first m-line's (offerer's side, answerer's side).
    pub fn first(&self) -> (Anchor, Anchor) {
        (self.offerer_side[0], self.answerer_side[0])
    }

    /// The first m-line's (port the offerer sends to, port the answerer sends to).
    pub fn ports(&self) -> (u16, u16) {
        let (o, a) = self.first();
        (o.port, a.port)
    }
}

/// [`offered`] `offer_sdp`, then [`answered`] `answer_sdp`, both with `flags`: the exchange
/// the SIP side makes on INVITE and 200 OK.
pub fn offer_answer(
    relay: &Relay,
    call: &str,
    offer_sdp: &[u8],
    answer_sdp: &[u8],
    flags: &Flags,
) -> Anchored {
    let answerer_side = anchors(&offered(relay, call, offer_sdp, flags));
    let offerer_side = anchors(&answered(relay, call, answer_sdp, flags));
    Anchored {
        offerer_side,
        answerer_side,
    }
}

/// The plain call: `o` offers and `a` answers audio at their own addresses on
/// [`LOCALHOST`], both with `flags`; the relay must anchor both sides there. Returns (port
/// `o` sends to, port `a` sends to).
pub fn audio_call(
    relay: &Relay,
    call: &str,
    o: &UdpSocket,
    a: &UdpSocket,
    flags: &Flags,
) -> (u16, u16) {
    let (ro, ra) = offer_answer(
        relay,
        call,
        &audio(LOCALHOST, port(o)),
        &audio(LOCALHOST, port(a)),
        flags,
    )
    .first();
    assert_eq!(ra.addr, ip(LOCALHOST));
    assert_eq!(ro.addr, ip(LOCALHOST));
    (ro.port, ra.port)
}

// ---- waiting ----

/// The longest any test waits for the relay to reach a state.
pub const WAIT: Duration = Duration::from_secs(5);

/// Calls `f` every 10 ms until it gives `Some`, for at most [`WAIT`]; `None` if it never
/// did.
pub fn poll<T>(mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// [`poll`], failing the test (naming `what`) if `f` never gives `Some`.
#[track_caller]
pub fn wait_for<T>(what: &str, f: impl FnMut() -> Option<T>) -> T {
    match poll(f) {
        Some(v) => v,
        None => panic!("timed out waiting for {what}"),
    }
}

/// The stats of `call` once `done` holds for them. The workers publish their counters once
/// per batch, a little after the packets went through, so a test waits for the values it
/// expects instead of reading them at once.
#[track_caller]
pub fn stats_when(
    relay: &Relay,
    call: &str,
    what: &str,
    done: impl Fn(&CallStats) -> bool,
) -> CallStats {
    wait_for(what, || relay.query(call, now()).filter(|s| done(s)))
}

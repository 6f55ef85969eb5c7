//! Loads the real program on loopback. Where the kernel refuses eBPF (no tcx, no
//! CAP_BPF/CAP_NET_ADMIN) the tests say so on stderr and check nothing else: the relay
//! then runs in user space, which the other tests cover.

use std::net::UdpSocket;
use std::time::Duration;

use super::*;

fn open() -> Option<KernelPath> {
    match KernelPath::open(&[IpAddr::V4(Ipv4Addr::LOCALHOST)]) {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("kernel fast path unavailable here, test skipped: {e}");
            None
        }
    }
}

fn sock() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    s
}

fn v4(s: &UdpSocket) -> SocketAddrV4 {
    match s.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("not IPv4: {other}"),
    }
}

const SSRC: u32 = 0xdead_beef;

fn rtp_from(ssrc: u32, seq: u16, pt: u8) -> Vec<u8> {
    let mut p = vec![0x80, pt];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 1]);
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(&[0x55; 160]);
    p
}

fn rtp(seq: u16, pt: u8) -> Vec<u8> {
    rtp_from(SSRC, seq, pt)
}

/// A route for `local`, accepting `from` with [`SSRC`], out of `out_local` to `to`.
fn route(local: &UdpSocket, from: &UdpSocket, out_local: &UdpSocket, to: &UdpSocket) -> Route {
    Route {
        local: v4(local),
        from: v4(from),
        out_local: v4(out_local),
        to: v4(to),
        ssrc: SSRC,
    }
}

/// Sequence tracking as the worker starts it: the last number it saw, no wrap yet.
fn at(max_seq: u16) -> SeqPosition {
    SeqPosition { max_seq, cycles: 0 }
}

fn recv(s: &UdpSocket) -> Option<(Vec<u8>, std::net::SocketAddr)> {
    let mut buf = [0u8; 2048];
    s.recv_from(&mut buf)
        .ok()
        .map(|(n, a)| (buf[..n].to_vec(), a))
}

#[test]
fn relays_latched_rtp_in_the_kernel_and_leaves_the_rest_to_the_socket() {
    let Some(k) = open() else { return };
    let (a, relay_a, relay_b, b, stranger) = (sock(), sock(), sock(), sock(), sock());
    let route = route(&relay_a, &a, &relay_b, &b);
    assert!(k.install(&route, at(0)).expect("install"));

    // A's RTP reaches B from the relay's B-side socket, byte for byte (so the UDP
    // checksum was right, or B's socket would have dropped it).
    let p = rtp(1, 0);
    a.send_to(&p, relay_a.local_addr().expect("addr"))
        .expect("send");
    let (got, from) = recv(&b).expect("B receives A's packet through the kernel path");
    assert_eq!(got, p);
    assert_eq!(from, relay_b.local_addr().expect("addr"));
    assert!(recv(&relay_a).is_none(), "the relay socket must not see it");

    // A stranger's RTP and A's RTCP go to the relay socket, not to B.
    stranger
        .send_to(&rtp(2, 0), relay_a.local_addr().expect("addr"))
        .expect("send");
    assert_eq!(
        recv(&relay_a).map(|(_, f)| f),
        Some(stranger.local_addr().expect("addr"))
    );
    a.send_to(&rtp(3, 200), relay_a.local_addr().expect("addr"))
        .expect("send");
    assert_eq!(recv(&relay_a).map(|(p, _)| p[1]), Some(200));
    assert!(recv(&b).is_none());

    let f = k.forwarded(route.local).expect("lookup").expect("entry");
    assert_eq!((f.packets, f.bytes), (1, p.len() as u64));
    let last = f.last.expect("time of the last packet");
    assert!(last <= monotonic_now() && monotonic_now() - last < Duration::from_secs(5));

    // Removed: A's RTP goes to the relay socket again.
    assert_eq!(k.take(route.local).expect("take"), Some(f));
    assert_eq!(k.forwarded(route.local).expect("lookup"), None);
    a.send_to(&rtp(4, 0), relay_a.local_addr().expect("addr"))
        .expect("send");
    assert!(recv(&relay_a).is_some());
    assert!(recv(&b).is_none());
}

#[test]
fn two_relays_on_one_host_each_see_their_own_routes() {
    let (Some(k1), Some(k2)) = (open(), open()) else {
        return;
    };
    let (a, ra, rb, b) = (sock(), sock(), sock(), sock());
    let (c, rc, rd, d) = (sock(), sock(), sock(), sock());
    let r1 = route(&ra, &a, &rb, &b);
    let r2 = route(&rc, &c, &rd, &d);
    assert!(k1.install(&r1, at(0)).expect("install"));
    assert!(k2.install(&r2, at(0)).expect("install"));
    a.send_to(&rtp(1, 8), ra.local_addr().expect("addr"))
        .expect("send");
    c.send_to(&rtp(1, 8), rc.local_addr().expect("addr"))
        .expect("send");
    assert_eq!(
        recv(&b).map(|(_, f)| f),
        Some(rb.local_addr().expect("addr"))
    );
    assert_eq!(
        recv(&d).map(|(_, f)| f),
        Some(rd.local_addr().expect("addr"))
    );
    drop(k1);
    // k1's program is gone with its descriptor: its route no longer applies.
    a.send_to(&rtp(2, 8), ra.local_addr().expect("addr"))
        .expect("send");
    assert!(recv(&ra).is_some());
}

#[test]
fn tracks_sequence_numbers_and_leaves_new_ssrcs_and_restarts_to_the_worker() {
    let Some(k) = open() else { return };
    let (a, relay_a, relay_b, b) = (sock(), sock(), sock(), sock());
    let route = route(&relay_a, &a, &relay_b, &b);
    // The worker saw up to 65534; the kernel carries on across the wrap.
    assert!(k.install(&route, at(65534)).expect("install"));
    let dest = relay_a.local_addr().expect("addr");
    for seq in [65535, 1, 0, 2, 2] {
        // 0 arrives after 1 (late), and 2 twice (a duplicate): all relayed.
        a.send_to(&rtp(seq, 0), dest).expect("send");
        assert!(recv(&b).is_some(), "seq {seq} relayed");
    }
    let f = k.forwarded(route.local).expect("lookup").expect("entry");
    assert_eq!(f.packets, 5);
    assert_eq!(
        f.seq,
        SeqPosition {
            max_seq: 2,
            cycles: 1
        }
    );

    // Another SSRC, and a jump the worker treats as a restart: up to the socket.
    a.send_to(&rtp_from(0x0bad_cafe, 3, 0), dest).expect("send");
    assert!(recv(&relay_a).is_some(), "a new SSRC goes to the worker");
    a.send_to(&rtp(20_000, 0), dest).expect("send");
    assert!(recv(&relay_a).is_some(), "a restart goes to the worker");
    assert!(recv(&b).is_none());
    let f = k.forwarded(route.local).expect("lookup").expect("entry");
    assert_eq!((f.packets, f.seq.max_seq), (5, 2));
}

#[test]
fn a_refused_program_names_the_verifiers_reason() {
    if open().is_none() {
        return;
    }
    // Returns without setting R0: every verifier refuses it.
    let mut a = insn::Asm::default();
    a.exit();
    let code = a.finish().expect("assembles");
    match sys::load_classifier("tl_bad", &code) {
        Ok(_) => panic!("the verifier accepted a program that returns nothing"),
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("verifier: ") && text.contains("R0"), "{text}");
        }
    }
}

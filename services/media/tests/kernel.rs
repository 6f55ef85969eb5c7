//! The kernel fast path under the relay engine: latched RTP is relayed by the eBPF program,
//! and everything a user sees — delivery, latching policy, statistics, timeouts, deleted
//! calls — is what the worker-only relay gives. Where the kernel refuses eBPF (no tcx, no
//! CAP_BPF/CAP_NET_ADMIN) each test says so and stops: the relay then forwards in user
//! space, which `tests/relay.rs` covers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::*;
use trunkline_media::{Flags, MediaConfig, Relay};

fn relay_with(window: u16, f: impl FnOnce(&mut MediaConfig)) -> Option<Relay> {
    let relay = start_relay(KERNEL_RS, window, 20, 2, |c| {
        c.kernel_forwarding = true;
        f(c);
    });
    if relay.kernel_forwarding() {
        Some(relay)
    } else {
        eprintln!("kernel forwarding refused by this kernel (see the relay's warning): skipped");
        None
    }
}

fn relay(window: u16) -> Option<Relay> {
    relay_with(window, |_| {})
}

/// Sends `n` RTP packets each way (after the first pair, which latches both parties).
fn talk(o: &std::net::UdpSocket, ro: u16, a: &std::net::UdpSocket, ra: u16, seq: u16, n: u16) {
    for i in 0..n {
        let s = seq + i;
        send_through("o to a", o, to(ro), a, &rtp(s, b"from o"));
        send_through("a to o", a, to(ra), o, &rtp(s, b"from a"));
    }
}

#[test]
fn latched_rtp_is_relayed_by_the_kernel_and_counted() {
    let Some(relay) = relay(0) else { return };
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k1", &o, &a, &Flags::default());
    // The first packets latch both parties in the worker; the rest take the kernel path,
    // from the same relay ports as before.
    assert_eq!(
        send_through("o to a", &o, to(ro), &a, &rtp(1, b"first")),
        to(ra)
    );
    assert_eq!(
        send_through("a to o", &a, to(ra), &o, &rtp(1, b"first")),
        to(ro)
    );
    for seq in 2..=50 {
        assert_eq!(
            send_through("o to a", &o, to(ro), &a, &rtp(seq, b"x")),
            to(ra)
        );
        assert_eq!(
            send_through("a to o", &a, to(ra), &o, &rtp(seq, b"y")),
            to(ro)
        );
    }
    // Stats add what the kernel relayed (read at query time); no packet is counted twice
    // or lost. (The worker publishes its own counts just after it sends, hence the wait.)
    let s = stats_when(&relay, "k1", "all 100 packets counted", |s| {
        let st = &s.streams[0];
        st.offerer.rtp.packets + st.answerer.rtp.packets >= 100
    });
    let st = &s.streams[0];
    assert_eq!((st.offerer.rtp.packets, st.answerer.rtp.packets), (50, 50));
    assert_eq!(st.offerer.rtp.bytes, (12 + 5) + 49 * (12 + 1));
    assert!(st
        .offerer
        .rtp
        .last_packet_ms_ago
        .is_some_and(|ms| ms < 2000));
    assert_eq!(st.offerer.latched, Some(o.local_addr().unwrap()));
    // The totals say who relayed: at most the latching packets went through the worker.
    let t = wait_for("kernel totals", || {
        let t = relay.totals();
        (t.packets_relayed == 100).then_some(t)
    });
    assert!(
        t.packets_kernel >= 96,
        "kernel relayed {} of 100",
        t.packets_kernel
    );
    relay.shutdown();
}

#[test]
fn strangers_still_meet_the_latching_policy() {
    let Some(relay) = relay(1) else { return };
    let (o, a, stranger) = (endpoint(), endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k2", &o, &a, &Flags::default());
    talk(&o, ro, &a, ra, 1, 5);
    // With a kernel route in place, another source's RTP still goes to the worker, which
    // drops and counts it.
    stranger.send_to(&rtp(9, b"spoof"), to(ro)).unwrap();
    assert!(
        stays_quiet(&a),
        "a stranger's RTP must not reach the answerer"
    );
    stats_when(&relay, "k2", "the drop counted", |s| {
        s.streams[0].offerer.rtp.errors == 1
    });
    talk(&o, ro, &a, ra, 6, 3);
}

#[test]
fn media_handover_moves_the_kernel_route_to_the_new_source() {
    let flags = Flags {
        media_handover: true,
        ..Flags::default()
    };
    let Some(relay) = relay(2) else { return };
    let (o, a, moved) = (endpoint(), endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k3", &o, &a, &flags);
    talk(&o, ro, &a, ra, 1, 5);
    // The offerer roams: its next packet re-latches, and the answerer's RTP (kernel path
    // in the other direction) must follow to the new address, not the old one.
    send_through("new source", &moved, to(ro), &a, &rtp(6, b"moved"));
    for seq in 6..10 {
        send_through(
            "return path follows",
            &a,
            to(ra),
            &moved,
            &rtp(seq, b"back"),
        );
        send_through("new source again", &moved, to(ro), &a, &rtp(seq + 1, b"m"));
    }
    assert!(stays_quiet(&o), "nothing may go to the old address");
    let s = relay.query("k3", now()).unwrap();
    assert_eq!(
        s.streams[0].offerer.latched,
        Some(moved.local_addr().unwrap())
    );
}

#[test]
fn a_re_offer_with_a_new_address_re_latches() {
    let Some(relay) = relay(3) else { return };
    let (o, a, a2) = (endpoint(), endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k4", &o, &a, &Flags::default());
    talk(&o, ro, &a, ra, 1, 5);
    // The answerer re-INVITEs from a new port: the offerer's RTP must go there.
    let again = relay
        .offer(
            "k4",
            TO_TAG,
            &audio(LOCALHOST, port(&a2)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    assert_eq!(anchors(&again)[0].port, ro);
    relay
        .answer(
            "k4",
            TO_TAG,
            FROM_TAG,
            &audio(LOCALHOST, port(&o)),
            &Flags::default(),
            now(),
        )
        .unwrap();
    send_through("to the new address", &o, to(ro), &a2, &rtp(6, b"new"));
    assert!(stays_quiet(&a), "nothing may go to the old address");
    send_through("from the new address", &a2, to(ra), &o, &rtp(6, b"back"));
    send_through("kernel path again", &o, to(ro), &a2, &rtp(7, b"again"));
}

#[test]
fn a_deleted_call_leaves_no_route_behind() {
    let Some(relay) = relay(4) else { return };
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k5", &o, &a, &Flags::default());
    talk(&o, ro, &a, ra, 1, 5);
    let stats = relay.delete("k5", None, None, now()).unwrap();
    assert_eq!(
        stats.streams[0].offerer.rtp.packets, 5,
        "final stats include the kernel's"
    );
    o.send_to(&rtp(6, b"late"), to(ro)).unwrap();
    assert!(stays_quiet(&a), "a deleted call's port must not forward");
}

#[test]
fn kernel_traffic_keeps_the_call_alive_and_silence_times_it_out() {
    let Some(relay) = relay_with(5, |c| c.timeout = Duration::from_millis(1500)) else {
        return;
    };
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k6", &o, &a, &Flags::default());
    relay.established("k6", now()).unwrap();
    // 3 s of kernel-relayed RTP, twice the timeout: no timeout may be reported.
    for seq in 1..=60 {
        send_through("o to a", &o, to(ro), &a, &rtp(seq, b"o"));
        send_through("a to o", &a, to(ra), &o, &rtp(seq, b"a"));
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        relay.take_timeouts(now()).is_empty(),
        "media flowed all along"
    );
    // Then silence: reported once the timeout passes.
    let t = wait_for("the timeout", || {
        let t = relay.take_timeouts(now());
        (!t.is_empty()).then_some(t)
    });
    assert_eq!(t[0].call_id, "k6");
}

/// A veth pair between this namespace (`relay`, holding the relay's address) and a network
/// namespace of its own (`parties`), removed on drop. `None` (with the reason on stderr)
/// where namespaces cannot be made (not root, no iproute2).
struct Veth {
    ns: String,
}

impl Veth {
    const RELAY: &'static str = "10.201.0.1";
    const PARTIES: &'static str = "10.201.0.2";

    fn new() -> Option<Veth> {
        let id = std::process::id() % 100_000;
        let ns = format!("tlk{id}");
        let (near, far) = (format!("tlk{id}a"), format!("tlk{id}b"));
        let steps: [&[&str]; 6] = [
            &["netns", "add", &ns],
            &[
                "link", "add", &near, "type", "veth", "peer", "name", &far, "netns", &ns,
            ],
            &["addr", "add", "10.201.0.1/30", "dev", &near],
            &["link", "set", &near, "up"],
            &["-n", &ns, "addr", "add", "10.201.0.2/30", "dev", &far],
            &["-n", &ns, "link", "set", &far, "up"],
        ];
        let veth = Veth { ns: ns.clone() };
        for args in steps {
            let ok = std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                eprintln!("cannot set up a network namespace (ip {args:?}): skipped");
                return None;
            }
        }
        Some(veth)
    }

    /// Media sockets of two parties inside the namespace, on `PARTIES`.
    fn parties(&self) -> (std::net::UdpSocket, std::net::UdpSocket) {
        let path = format!("/run/netns/{}", self.ns);
        std::thread::scope(|s| {
            s.spawn(|| {
                // The network namespace is per thread: only this one moves, and the
                // sockets it opens stay in the namespace wherever they are used.
                let ns = std::fs::File::open(&path).unwrap();
                nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                (endpoint_on(Veth::PARTIES), endpoint_on(Veth::PARTIES))
            })
            .join()
            .unwrap()
        })
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Deleting the namespace deletes the veth pair with it.
        let _ = std::process::Command::new("ip")
            .args(["netns", "delete", &self.ns])
            .status();
    }
}

#[test]
fn parties_behind_a_real_interface_are_served_by_redirect() {
    let Some(veth) = Veth::new() else { return };
    // Let the addresses settle (DAD does not apply to IPv4; the link needs to be up).
    std::thread::sleep(Duration::from_millis(200));
    let relay = start_relay(KERNEL_RS, 9, 20, 2, |c| {
        c.kernel_forwarding = true;
        c.interfaces = vec![trunkline_media::MediaInterface::new(
            "default",
            ip(Veth::RELAY),
            ip(Veth::RELAY),
        )];
    });
    if !relay.kernel_forwarding() {
        eprintln!("kernel forwarding refused by this kernel: skipped");
        return;
    }
    let (o, a) = veth.parties();
    let anchored = offer_answer(
        &relay,
        "veth",
        &audio(Veth::PARTIES, port(&o)),
        &audio(Veth::PARTIES, port(&a)),
        &Flags::default(),
    );
    let (ro, ra) = anchored.first();
    let (ro, ra) = (sa(Veth::RELAY, ro.port), sa(Veth::RELAY, ra.port));
    // Both parties latch through the worker; then the program takes their RTP in on the
    // veth's ingress and sends it back out of it to the other party's MAC.
    for seq in 1..=20 {
        assert_eq!(send_through("o to a", &o, ro, &a, &rtp(seq, b"o")), ra);
        assert_eq!(send_through("a to o", &a, ra, &o, &rtp(seq, b"a")), ro);
    }
    let t = wait_for("kernel totals", || {
        let t = relay.totals();
        (t.packets_relayed == 40).then_some(t)
    });
    assert!(
        t.packets_kernel >= 36,
        "kernel relayed {} of 40",
        t.packets_kernel
    );
    relay.shutdown();
}

#[test]
fn loss_is_counted_from_sequence_numbers_on_the_kernel_path_too() {
    let Some(relay) = relay(6) else { return };
    let (o, a) = (endpoint(), endpoint());
    let (ro, ra) = audio_call(&relay, "k7", &o, &a, &Flags::default());
    talk(&o, ro, &a, ra, 1, 3);
    // From here the kernel relays o's RTP: 4..=20 with 7, 8 and 15 missing.
    for seq in (4..=20).filter(|s| ![7, 8, 15].contains(s)) {
        send_through("o to a", &o, to(ro), &a, &rtp(seq, b"o"));
    }
    stats_when(&relay, "k7", "3 packets lost", |s| {
        let st = &s.streams[0].offerer;
        st.rtp_lost == 3 && st.rtp.packets == 17
    });
    let t = relay.totals();
    assert!(
        t.packets_kernel >= 14,
        "the kernel relayed {} packets",
        t.packets_kernel
    );
}

//! rtpengine's four timeouts on virtual time: every request and `take_timeouts` gets a `now`
//! the test makes up (an instant plus minutes or hours), so an hour passes in no time and no
//! assertion depends on how fast the machine is. The relay's workers are real; where a test
//! needs packets it sends real ones, and shows how their stamps (the workers' own clock)
//! meet the virtual `now`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use trunkline_media::{Flags, MediaConfig, Relay, TimedOut, TimeoutReason};

const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// A relay on window `window` of [`TIMEOUTS_RS`] with rtpengine's defaults: 60 s inactivity,
/// an hour silent and offer timeouts, no final timeout.
fn relay(window: u16) -> Relay {
    relay_with(window, |_| {})
}

fn relay_with(window: u16, f: impl FnOnce(&mut MediaConfig)) -> Relay {
    start_relay(TIMEOUTS_RS, window, 10, 1, f)
}

/// Offer and answer of one audio stream at `t` (SDP `extra` lines for the offerer and the
/// answerer), the parties on sockets nobody reads.
fn call_at(relay: &Relay, call: &str, t: Instant, offer_extra: &str, answer_extra: &str) {
    relay
        .offer(
            call,
            FROM_TAG,
            &audio_with(LOCALHOST, 4000, offer_extra),
            &Flags::default(),
            t,
        )
        .unwrap();
    relay
        .answer(
            call,
            FROM_TAG,
            TO_TAG,
            &audio_with(LOCALHOST, 4002, answer_extra),
            &Flags::default(),
            t,
        )
        .unwrap();
}

/// `(call, reason)` of each timeout.
fn caught(t: Vec<TimedOut>) -> Vec<(String, TimeoutReason)> {
    t.into_iter().map(|t| (t.call_id, t.reason)).collect()
}

/// A callee that rings for an hour without early media: the session has an answer (the
/// 183's SDP) but the call is not established, so no inactivity timeout may end it — today's
/// caller got 480 after `timeout`. Established, the timeout runs from that moment.
#[test]
fn a_ringing_call_never_times_out_for_want_of_media() {
    let relay = relay(0);
    let t0 = Instant::now();
    call_at(&relay, "ringing", t0, "", "");
    assert!(relay.take_timeouts(t0 + 2 * HOUR).is_empty());
    // Answered after two hours: the inactivity timeout counts from now, not from the offer.
    let answered = t0 + 2 * HOUR;
    relay.established("ringing", answered).unwrap();
    assert!(relay
        .take_timeouts(answered + MIN - Duration::from_secs(1))
        .is_empty());
    let t = relay.take_timeouts(answered + MIN);
    assert_eq!(
        caught(t.clone()),
        [("ringing".into(), TimeoutReason::NoMedia)]
    );
    assert_eq!(t[0].elapsed, MIN);
    // Reported once; the session is still there for its owner to delete.
    assert!(relay.take_timeouts(answered + 10 * MIN).is_empty());
    assert!(relay.query("ringing", answered).is_some());
    assert_eq!(relay.totals().timeouts.of(TimeoutReason::NoMedia), 1);
    // `established` is idempotent: the first moment stands.
    relay.established("ringing", answered + HOUR).unwrap();
    assert!(relay.established("nope", answered).is_err());
}

#[test]
fn an_offer_never_answered_meets_the_offer_timeout() {
    let relay = relay_with(1, |c| c.offer_timeout = Some(10 * MIN));
    let t0 = Instant::now();
    relay
        .offer(
            "unanswered",
            FROM_TAG,
            &audio(LOCALHOST, 4000),
            &Flags::default(),
            t0,
        )
        .unwrap();
    assert!(relay
        .take_timeouts(t0 + 10 * MIN - Duration::from_secs(1))
        .is_empty());
    // A re-offer (a retried INVITE) counts from itself.
    let again = t0 + 5 * MIN;
    relay
        .offer(
            "unanswered",
            FROM_TAG,
            &audio(LOCALHOST, 4000),
            &Flags::default(),
            again,
        )
        .unwrap();
    assert!(relay.take_timeouts(t0 + 10 * MIN).is_empty());
    assert_eq!(
        caught(relay.take_timeouts(again + 10 * MIN)),
        [("unanswered".into(), TimeoutReason::Offer)]
    );
    // Answered (early media), the offer timeout no longer applies; not established, nothing
    // else does either.
    call_at(&relay, "early", t0, "", "");
    assert!(relay.take_timeouts(t0 + 100 * HOUR).is_empty());
}

#[test]
fn the_final_timeout_ends_any_call_at_its_age() {
    let relay = relay_with(2, |c| {
        c.timeout = HOUR;
        c.final_timeout = Some(10 * MIN);
    });
    let t0 = Instant::now();
    call_at(&relay, "old", t0, "", "");
    relay.established("old", t0 + MIN).unwrap();
    call_at(&relay, "ringing", t0 + MIN, "", "");
    assert!(relay
        .take_timeouts(t0 + 10 * MIN - Duration::from_secs(1))
        .is_empty());
    let t = relay.take_timeouts(t0 + 10 * MIN);
    assert_eq!(caught(t.clone()), [("old".into(), TimeoutReason::Final)]);
    assert_eq!(t[0].elapsed, 10 * MIN, "its age");
    // Ringing or not, established or not.
    assert_eq!(
        caught(relay.take_timeouts(t0 + 11 * MIN)),
        [("ringing".into(), TimeoutReason::Final)]
    );
    assert_eq!(relay.totals().timeouts.of(TimeoutReason::Final), 2);
}

/// Both parties `inactive` (or every stream on hold): the silent timeout applies, not the
/// inactivity one.
#[test]
fn a_call_on_hold_both_ways_meets_the_silent_timeout() {
    let relay = relay(3);
    let t0 = Instant::now();
    call_at(&relay, "held", t0, "a=inactive\r\n", "a=inactive\r\n");
    relay.established("held", t0).unwrap();
    assert!(relay.take_timeouts(t0 + 59 * MIN).is_empty());
    assert_eq!(
        caught(relay.take_timeouts(t0 + HOUR)),
        [("held".into(), TimeoutReason::Silent)]
    );

    // Silent timeout off: a held call never times out for want of media.
    let relay = relay_with(4, |c| c.silent_timeout = None);
    call_at(&relay, "held", t0, "a=inactive\r\n", "a=inactive\r\n");
    relay.established("held", t0).unwrap();
    assert!(relay.take_timeouts(t0 + 100 * HOUR).is_empty());
}

/// One party holds the other: the holder may still send (music on hold), so the call is
/// active and the inactivity timeout applies — whether the hold is `sendonly`/`recvonly` or
/// the old `c=0.0.0.0`. Only the held direction is silent, as in rtpengine.
#[test]
fn a_one_way_hold_keeps_the_inactivity_timeout() {
    let relay = relay(5);
    let t0 = Instant::now();
    call_at(&relay, "sendonly", t0, "a=sendonly\r\n", "a=recvonly\r\n");
    relay.established("sendonly", t0).unwrap();
    relay
        .offer(
            "zero",
            FROM_TAG,
            &audio("0.0.0.0", 4000),
            &Flags::default(),
            t0,
        )
        .unwrap();
    relay
        .answer(
            "zero",
            FROM_TAG,
            TO_TAG,
            &audio(LOCALHOST, 4002),
            &Flags::default(),
            t0,
        )
        .unwrap();
    relay.established("zero", t0).unwrap();
    let mut t = caught(relay.take_timeouts(t0 + MIN));
    t.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(
        t,
        [
            ("sendonly".into(), TimeoutReason::NoMedia),
            ("zero".into(), TimeoutReason::NoMedia)
        ]
    );
}

/// A signal (a re-INVITE) proves the parties alive: the inactivity timeout counts from it,
/// and a session reported once is reported again after it.
#[test]
fn a_signal_restarts_the_inactivity_timeout() {
    let relay = relay(6);
    let t0 = Instant::now();
    call_at(&relay, "reinvite", t0, "", "");
    relay.established("reinvite", t0).unwrap();
    assert_eq!(relay.take_timeouts(t0 + MIN).len(), 1);
    let re = t0 + 90 * Duration::from_secs(1);
    relay
        .offer(
            "reinvite",
            FROM_TAG,
            &audio(LOCALHOST, 4000),
            &Flags::default(),
            re,
        )
        .unwrap();
    assert!(relay
        .take_timeouts(re + MIN - Duration::from_secs(1))
        .is_empty());
    assert_eq!(relay.take_timeouts(re + MIN).len(), 1);
}

/// Packets keep a call alive, and the two clocks meet as documented: the workers stamp
/// packets on the real monotonic clock, `now` is compared with those stamps. A `now` from a
/// clock running ahead (paused tokio time advanced by a test) sees them as older; a `now`
/// before a packet sees no idle time at all.
#[test]
fn packet_stamps_and_the_callers_now() {
    let relay = relay_with(7, |c| c.learning_window = Duration::ZERO);
    let (o, a) = (endpoint(), endpoint());
    let (ro, _) = audio_call(&relay, "talking", &o, &a, &Flags::default());
    let before = Instant::now();
    // Established half a minute before the packet.
    let established = before.checked_sub(MIN / 2).unwrap();
    relay.established("talking", established).unwrap();
    send_through("a packet", &o, to(ro), &a, &rtp(1, b"x"));
    stats_when(&relay, "talking", "the packet counted", |s| {
        s.streams[0].offerer.rtp.packets == 1
    });
    let after = Instant::now();
    // Without the packet the call would be a minute idle here; stamped after `before`, the
    // packet keeps it alive.
    assert!(relay.take_timeouts(established + MIN).is_empty());
    // A `now` before the packet: no idle time.
    assert!(relay.take_timeouts(before).is_empty());
    // A minute after the packet, whichever clock says so.
    let t = relay.take_timeouts(after + MIN);
    assert_eq!(
        caught(t.clone()),
        [("talking".into(), TimeoutReason::NoMedia)]
    );
    assert!(t[0].elapsed >= MIN);
    assert!(t[0].elapsed <= after + MIN - before + Duration::from_millis(1));
}

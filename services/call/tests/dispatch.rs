//! The dispatcher and the call actors together, on tokio's paused clock: who may call,
//! where calls go, how a message finds its call (dialog and transaction, not Call-ID
//! alone), admission limits, and transport failures reaching the caller. A recorder
//! stands in for the transports; time moves only when every task waits.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use prometheus_client::registry::Registry;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use trunkline_b2bua::CallConfig;
use trunkline_call::metrics::CallMetrics;
use trunkline_call::{
    Dispatcher, DispatcherConfig, Limits, Listener, Outbound, Route, Router, Source,
    SourceLimitConfig, Trunk, TrunkLimits, Trust,
};
use trunkline_sip::{parse_message, HeaderName, Host, Message, Method, Peer, Transport};

const NODE: &str = "127.0.0.1:5062";
const CALLER: &str = "127.0.0.1:5070";
const CARRIER: &str = "127.0.0.1:5090";
const UK: &str = "127.0.0.2:5090";
const STRANGER: &str = "192.0.2.66:5060";
/// The node's second socket, on the carrier's network, and what it is reached at there.
const NODE2: &str = "127.0.0.2:5062";
const CARRIER_SIDE: &str = "203.0.113.5";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Records every send; one UDP listener.
#[derive(Default)]
struct Recorder {
    sent: Mutex<Vec<(Peer, Message, Option<u64>)>>,
    /// What `receive_congested` answers.
    congested: AtomicBool,
}

impl Outbound for Recorder {
    fn send(&self, peer: &Peer, data: Bytes, token: Option<u64>) {
        let msg = parse_message(data).expect("the node sends parsable SIP");
        self.sent.lock().unwrap().push((*peer, msg, token));
    }

    /// Two sockets: NODE (the first, advertised as itself) and NODE2 on a carrier network,
    /// advertised as CARRIER_SIDE.
    fn listener(
        &self,
        transport: Transport,
        local: Option<SocketAddr>,
        _to: Option<SocketAddr>,
    ) -> Option<Listener> {
        let (at, advertise) = match local {
            Some(l) if l == addr(NODE2) => (NODE2, CARRIER_SIDE),
            Some(l) if l != addr(NODE) => return None,
            _ => (NODE, "127.0.0.1"),
        };
        Some(Listener {
            transport,
            local: addr(at),
            advertise: Host::parse(advertise).unwrap(),
        })
    }

    fn pin(&self, _connection: u64) -> Option<trunkline_transport::ConnectionPin> {
        None
    }

    fn alias(&self, _connection: u64, _addr: SocketAddr) -> bool {
        false
    }

    fn receive_congested(&self) -> bool {
        self.congested.load(Ordering::Relaxed)
    }
}

fn trunk(name: &str, at: &str) -> Trunk {
    Trunk {
        anchor_media: false,
        ..Trunk::plain(name, addr(at))
    }
}

struct Node {
    d: Dispatcher,
    out: Arc<Recorder>,
    registry: Registry,
}

struct Opts {
    max_calls: usize,
    reply_to_unknown: bool,
    /// The socket the carrier trunk is reached from.
    carrier_local: Option<SocketAddr>,
    carrier_limits: TrunkLimits,
    uk_limits: TrunkLimits,
    source_limit: SourceLimitConfig,
}

impl Default for Opts {
    fn default() -> Self {
        Opts {
            max_calls: 100,
            reply_to_unknown: true,
            carrier_local: None,
            carrier_limits: TrunkLimits::default(),
            uk_limits: TrunkLimits::default(),
            source_limit: SourceLimitConfig::default(),
        }
    }
}

fn node(opts: Opts) -> Node {
    let carrier = Trunk {
        local: opts.carrier_local,
        limits: opts.carrier_limits,
        ..trunk("carrier", CARRIER)
    };
    let uk = Trunk {
        limits: opts.uk_limits,
        ..trunk("uk", UK)
    };
    let trunks = vec![carrier, uk];
    let trust = Trust::new(
        trunks.iter().map(|t| t.sources.clone()).collect(),
        vec!["127.0.0.0/8".parse().unwrap()],
    );
    let router = Router::new(trunks, vec![Route::to("+44", "uk")], Some("carrier")).unwrap();
    let mut registry = Registry::default();
    let metrics = CallMetrics::register(&mut registry);
    let d = Dispatcher::new(
        DispatcherConfig {
            call: Arc::new(CallConfig::default()),
            max_calls: opts.max_calls,
            force_rport: true,
            reply_to_unknown: opts.reply_to_unknown,
            access_interface: None,
            source_limit: opts.source_limit,
            digest: None,
            dns: Default::default(),
        },
        router,
        trust,
        metrics,
        None,
    );
    let out = Arc::new(Recorder::default());
    d.attach(out.clone());
    Node { d, out, registry }
}

impl Node {
    fn recv(&self, from: &str, text: &str) {
        let peer = Peer {
            local: Some(addr(NODE)),
            ..Peer::new(Transport::Udp, addr(from))
        };
        self.d.on_received(peer, Bytes::from(text.to_string()));
    }

    /// Lets the actors run (the paused clock moves only when all wait).
    async fn settle(&self) {
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Everything sent to `to` so far, taken.
    fn take(&self, to: &str) -> Vec<(Message, Option<u64>)> {
        let mut sent = self.out.sent.lock().unwrap();
        let (mine, rest): (Vec<_>, Vec<_>) =
            sent.drain(..).partition(|(p, _, _)| p.addr == addr(to));
        *sent = rest;
        mine.into_iter().map(|(_, m, t)| (m, t)).collect()
    }

    fn metrics(&self) -> String {
        let mut s = String::new();
        prometheus_client::encoding::text::encode(&mut s, &self.registry).unwrap();
        s
    }
}

fn summary(m: &Message) -> String {
    let c = m.headers().cseq().unwrap();
    match m {
        Message::Request(r) => format!("{} {}", r.method, c.seq),
        Message::Response(r) => format!("{} ({} {})", r.status, c.seq, c.method),
    }
}

fn names(v: &[(Message, Option<u64>)]) -> Vec<String> {
    v.iter().map(|(m, _)| summary(m)).collect()
}

fn invite(from: &str, to_user: &str, call_id: &str, tag: &str, cseq: u32, branch: &str) -> String {
    format!(
        "INVITE sip:{to_user}@{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {from};branch=z9hG4bK{branch}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{from}>;tag={tag}\r\nTo: <sip:{to_user}@{NODE}>\r\n\
         Call-ID: {call_id}\r\nCSeq: {cseq} INVITE\r\nContact: <sip:alice@{from}>\r\n\
         Content-Length: 0\r\n\r\n"
    )
}

/// A response to `req` as its recipient would send it (Via, From, To, Call-ID, CSeq
/// copied; a To-tag added).
fn respond(req: &Message, status: u16, to_tag: &str, contact: &str) -> String {
    let h = req.headers();
    let get = |k| String::from_utf8_lossy(h.get(k).unwrap()).into_owned();
    use trunkline_sip::HeaderName as H;
    let mut to = get(H::To);
    if !to.contains("tag=") {
        to.push_str(&format!(";tag={to_tag}"));
    }
    format!(
        "SIP/2.0 {status} X\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n\
         Contact: <sip:{contact}>\r\nContent-Length: 0\r\n\r\n",
        get(H::Via),
        get(H::From),
        get(H::CallId),
        get(H::CSeq)
    )
}

fn ack_for(resp: &Message, via_host: &str) -> String {
    let h = resp.headers();
    use trunkline_sip::HeaderName as H;
    let get = |k| String::from_utf8_lossy(h.get(k).unwrap()).into_owned();
    let seq = h.cseq().unwrap().seq;
    format!(
        "ACK sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {via_host};branch=z9hG4bKack{seq}\r\n\
         Max-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {seq} ACK\r\n\
         Content-Length: 0\r\n\r\n",
        get(H::From),
        get(H::To),
        get(H::CallId)
    )
}

#[tokio::test(start_paused = true)]
async fn a_stranger_gets_403_and_costs_nothing() {
    let n = node(Opts::default());
    n.recv(
        STRANGER,
        &invite(STRANGER, "+15550100", "c1@x", "t1", 1, "s1"),
    );
    n.settle().await;
    assert_eq!(names(&n.take(STRANGER)), vec!["403 (1 INVITE)"]);
    assert!(n.take(CARRIER).is_empty(), "no call toward any trunk");
    assert_eq!(n.d.call_actors(), 0);
    assert_eq!(n.d.index_entries(), 0);
    assert!(n
        .metrics()
        .contains("trunkline_sip_rejected_total{reason=\"untrusted_source\"} 1"));

    let quiet = node(Opts {
        reply_to_unknown: false,
        ..Opts::default()
    });
    quiet.recv(
        STRANGER,
        &invite(STRANGER, "+15550100", "c1@x", "t1", 1, "s1"),
    );
    let options = format!(
        "OPTIONS sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {STRANGER};branch=z9hG4bKo\r\n\
         Max-Forwards: 70\r\nFrom: <sip:s@x>;tag=1\r\nTo: <sip:{NODE}>\r\nCall-ID: o@x\r\n\
         CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    quiet.recv(STRANGER, &options);
    quiet.recv(STRANGER, "garbage\r\n\r\n");
    quiet.settle().await;
    assert!(quiet.take(STRANGER).is_empty(), "not a word to a scanner");
    assert_eq!(quiet.d.call_actors(), 0);
}

#[tokio::test(start_paused = true)]
async fn calls_are_routed_by_prefix_and_retransmissions_make_no_second_call() {
    let n = node(Opts::default());
    let inv = invite(CALLER, "+442071234567", "c2@x", "t2", 1, "a2");
    n.recv(CALLER, &inv);
    n.recv(CALLER, &inv);
    n.settle().await;
    let to_uk = n.take(UK);
    assert_eq!(
        names(&to_uk),
        vec!["INVITE 1"],
        "one call, to the +44 trunk"
    );
    assert!(n.take(CARRIER).is_empty());
    assert!(names(&n.take(CALLER)).iter().all(|s| s == "100 (1 INVITE)"));
    assert_eq!(n.d.active_calls(), 1);

    // The trunk refuses: the call ends, its slot is free, and nothing is left behind.
    let busy = respond(&to_uk[0].0, 486, "uk1", UK);
    n.recv(UK, &busy);
    n.settle().await;
    let got = n.take(CALLER);
    assert_eq!(names(&got), vec!["486 (1 INVITE)"]);
    n.recv(CALLER, &ack_for(&got[0].0, CALLER));
    assert_eq!(n.d.active_calls(), 0);
    tokio::time::sleep(Duration::from_secs(40)).await;
    assert_eq!(n.d.call_actors(), 0);
    assert_eq!(n.d.index_entries(), 0, "every index entry is gone");
}

#[tokio::test(start_paused = true)]
async fn a_call_from_a_trunk_never_goes_back_to_it() {
    let n = node(Opts::default());
    // The uk trunk sends a +44 call: the +44 route would send it back to uk, so it goes to
    // the default trunk.
    n.recv(UK, &invite(UK, "+441611234567", "c3@x", "t3", 1, "u3"));
    n.settle().await;
    assert!(n
        .take(UK)
        .iter()
        .all(|(m, _)| summary(m) == "100 (1 INVITE)"));
    assert_eq!(names(&n.take(CARRIER)), vec!["INVITE 1"]);
    // The default trunk sends a call only the default serves: 404, not a loop.
    n.recv(
        CARRIER,
        &invite(CARRIER, "+15550100", "c4@x", "t4", 1, "c4"),
    );
    n.settle().await;
    let got = n.take(CARRIER);
    assert!(
        names(&got).contains(&"404 (1 INVITE)".to_string()),
        "carrier got {:?}",
        names(&got)
    );
    assert!(!names(&got).contains(&"INVITE 1".to_string()));
}

#[tokio::test(start_paused = true)]
async fn merged_requests_get_482_and_a_retry_under_the_same_call_id_is_a_new_call() {
    let n = node(Opts::default());
    n.recv(CALLER, &invite(CALLER, "+15550100", "c5@x", "t5", 1, "m1"));
    n.settle().await;
    let first = n.take(CARRIER);
    assert_eq!(names(&first), vec!["INVITE 1"]);
    // The same INVITE by another path (same Call-ID, From-tag and CSeq, new branch).
    n.recv(CALLER, &invite(CALLER, "+15550100", "c5@x", "t5", 1, "m2"));
    n.settle().await;
    assert!(names(&n.take(CALLER)).contains(&"482 (1 INVITE)".to_string()));
    assert!(n.take(CARRIER).is_empty());
    // The trunk answers 503; the caller retries under the same Call-ID with CSeq 2.
    n.recv(CARRIER, &respond(&first[0].0, 503, "ca5", CARRIER));
    n.settle().await;
    let got = n.take(CALLER);
    assert_eq!(
        names(&got),
        vec!["500 (1 INVITE)"],
        "a trunk's 503 is mapped"
    );
    assert_eq!(names(&n.take(CARRIER)), vec!["ACK 1"]);
    n.recv(CALLER, &ack_for(&got[0].0, CALLER));
    n.recv(CALLER, &invite(CALLER, "+15550100", "c5@x", "t5", 2, "m3"));
    n.settle().await;
    let retry = n.take(CARRIER);
    assert_eq!(names(&retry), vec!["INVITE 1"], "a new call, not a 482");
    assert_ne!(
        retry[0].0.headers().call_id(),
        first[0].0.headers().call_id(),
        "with a B-leg of its own"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hairpin_back_into_the_node_is_a_second_call_that_connects() {
    let n = node(Opts::default());
    n.recv(CALLER, &invite(CALLER, "+15550100", "c6@x", "t6", 1, "h1"));
    n.settle().await;
    // The carrier trunk is the node itself: its B-leg INVITE arrives back at the node,
    // from the node's own address (an access source on loopback).
    let b_inv = n.take(CARRIER).remove(0).0;
    let looped = String::from_utf8(b_inv.encode().to_vec()).unwrap();
    n.recv(NODE, &looped);
    n.settle().await;
    let second = n.take(CARRIER);
    assert_eq!(names(&second), vec!["INVITE 1"], "the loop is a new call");
    assert_ne!(second[0].0.headers().call_id(), b_inv.headers().call_id());
    assert_eq!(n.d.active_calls(), 2);
    // The far end answers the second call; its 200 reaches the first call through the
    // node's own A-leg response, and the caller gets its 200.
    n.recv(CARRIER, &respond(&second[0].0, 200, "far6", CARRIER));
    n.settle().await;
    assert!(names(&n.take(CARRIER)).contains(&"ACK 1".to_string()));
    let to_self = n.take(NODE);
    let ok = to_self
        .iter()
        .find(|(m, _)| summary(m) == "200 (1 INVITE)")
        .expect("the second call answers the first");
    let ok_text = String::from_utf8(ok.0.encode().to_vec()).unwrap();
    n.recv(NODE, &ok_text);
    n.settle().await;
    let to_caller = n.take(CALLER);
    assert!(
        names(&to_caller).contains(&"200 (1 INVITE)".to_string()),
        "caller got {:?}",
        names(&to_caller)
    );
    // The first call ACKs the second over the loop.
    assert!(n.take(NODE).iter().any(|(m, _)| summary(m) == "ACK 1"));
}

#[tokio::test(start_paused = true)]
async fn max_calls_counts_live_calls_exactly() {
    let n = node(Opts {
        max_calls: 2,
        ..Opts::default()
    });
    for i in 0..3 {
        n.recv(
            CALLER,
            &invite(
                CALLER,
                "+15550100",
                &format!("c7-{i}@x"),
                "t7",
                1,
                &format!("x{i}"),
            ),
        );
    }
    n.settle().await;
    let b = n.take(CARRIER);
    assert_eq!(b.len(), 2, "two calls admitted");
    let got = names(&n.take(CALLER));
    assert_eq!(got.iter().filter(|s| *s == "503 (1 INVITE)").count(), 1);
    // One call ends: its slot is free at once, while its actor still lingers.
    n.recv(CARRIER, &respond(&b[0].0, 486, "b7", CARRIER));
    n.settle().await;
    assert_eq!(n.d.active_calls(), 1);
    n.recv(
        CALLER,
        &invite(CALLER, "+15550100", "c7-3@x", "t7", 1, "x3"),
    );
    n.settle().await;
    assert_eq!(
        n.take(CARRIER).len(),
        2,
        "the ACK of the 486 and the new call's INVITE"
    );
    assert!(n
        .metrics()
        .contains("trunkline_sip_rejected_total{reason=\"overload\"} 1"));
}

#[tokio::test(start_paused = true)]
async fn a_node_behind_its_input_refuses_new_calls_and_finishes_the_others() {
    let n = node(Opts::default());
    let first = invite(CALLER, "+15550100", "c20@x", "t20", 1, "k1");
    n.recv(CALLER, &first);
    n.settle().await;
    let b = n.take(CARRIER);
    assert_eq!(names(&b), vec!["INVITE 1"]);
    n.take(CALLER);

    // The receive queue is deep: a new call gets 503 with Retry-After and no state.
    n.out.congested.store(true, Ordering::Relaxed);
    n.recv(
        CALLER,
        &invite(CALLER, "+15550100", "c21@x", "t21", 1, "k2"),
    );
    n.settle().await;
    let refused = n.take(CALLER);
    assert_eq!(names(&refused), vec!["503 (1 INVITE)"]);
    assert!(refused[0].0.headers().get(HeaderName::RetryAfter).is_some());
    assert!(n.take(CARRIER).is_empty(), "no new call toward the trunk");
    assert_eq!(n.d.active_calls(), 1);

    // The call in progress is not refused: a retransmission of its INVITE is absorbed
    // and its answer reaches the caller.
    n.recv(CALLER, &first);
    n.recv(CARRIER, &respond(&b[0].0, 200, "b20", CARRIER));
    n.settle().await;
    let got = names(&n.take(CALLER));
    assert!(got.contains(&"200 (1 INVITE)".to_string()), "{got:?}");
    assert!(!got.iter().any(|s| s.starts_with("503")), "{got:?}");
    assert!(n
        .metrics()
        .contains("trunkline_sip_rejected_total{reason=\"congestion\"} 1"));

    // Drained: new calls are taken again.
    n.out.congested.store(false, Ordering::Relaxed);
    n.recv(
        CALLER,
        &invite(CALLER, "+15550100", "c22@x", "t22", 1, "k3"),
    );
    n.settle().await;
    assert!(names(&n.take(CARRIER)).contains(&"INVITE 1".to_string()));
    assert_eq!(n.d.active_calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn a_send_failure_toward_the_trunk_gives_the_caller_503_at_once() {
    let n = node(Opts::default());
    n.recv(CALLER, &invite(CALLER, "+15550100", "c8@x", "t8", 1, "f1"));
    n.settle().await;
    let (_, token) = n.take(CARRIER).remove(0);
    let token = token.expect("the B-leg INVITE is tracked");
    n.take(CALLER);
    n.d.on_send_error(
        &Peer::new(Transport::Tcp, addr(CARRIER)),
        Some(token),
        &"connection refused",
    );
    n.settle().await;
    let got = n.take(CALLER);
    assert_eq!(
        names(&got),
        vec!["503 (1 INVITE)"],
        "not a 408 after Timer B"
    );
}

#[tokio::test(start_paused = true)]
async fn strays_are_answered_statelessly() {
    let n = node(Opts::default());
    let bye = format!(
        "BYE sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKs\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>;tag=n1-000000000001\r\n\
         Call-ID: nope@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    n.recv(CALLER, &bye);
    let cancel = format!(
        "CANCEL sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKq\r\n\
         Max-Forwards: 70\r\nFrom: <sip:a@x>;tag=1\r\nTo: <sip:b@x>\r\n\
         Call-ID: nope@x\r\nCSeq: 1 CANCEL\r\nContent-Length: 0\r\n\r\n"
    );
    n.recv(CALLER, &cancel);
    n.recv(CARRIER, "SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bKz\r\nFrom: <sip:a@x>;tag=n1-0\r\nTo: <sip:b@x>;tag=2\r\nCall-ID: gone@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n");
    n.settle().await;
    assert_eq!(
        names(&n.take(CALLER)),
        vec!["481 (2 BYE)", "481 (1 CANCEL)"]
    );
    assert!(n.take(CARRIER).is_empty(), "a stray response is dropped");
    assert_eq!(n.d.call_actors(), 0);
    assert_eq!(n.d.index_entries(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hung_up_call_is_gone_at_once_and_still_answers_a_retransmitted_bye() {
    // (and a late copy of its INVITE makes no second call)
    let n = node(Opts::default());
    n.recv(CALLER, &invite(CALLER, "+15550100", "c9@x", "t9", 1, "g1"));
    n.settle().await;
    let b_inv = n.take(CARRIER).remove(0).0;
    n.recv(CARRIER, &respond(&b_inv, 200, "far9", CARRIER));
    n.settle().await;
    let ok = n
        .take(CALLER)
        .into_iter()
        .find(|(m, _)| summary(m) == "200 (1 INVITE)")
        .expect("answered")
        .0;
    n.recv(CALLER, &ack_for(&ok, CALLER));
    let to_tag = ok
        .headers()
        .to_tag()
        .map(|t| String::from_utf8_lossy(t).into_owned())
        .unwrap();
    let bye = format!(
        "BYE sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKbye9\r\n\
         Max-Forwards: 70\r\nFrom: <sip:alice@{CALLER}>;tag=t9\r\nTo: <sip:+15550100@{NODE}>;tag={to_tag}\r\n\
         Call-ID: c9@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    n.recv(CALLER, &bye);
    n.settle().await;
    let ok_bye = n.take(CALLER);
    assert_eq!(names(&ok_bye), vec!["200 (2 BYE)"]);
    let b_bye = n
        .take(CARRIER)
        .into_iter()
        .find(|(m, _)| summary(m) == "BYE 2")
        .expect("BYE to the callee")
        .0;
    n.recv(CARRIER, &respond(&b_bye, 200, "far9", CARRIER));
    n.settle().await;
    assert_eq!(
        n.d.call_actors(),
        0,
        "the call is gone, not lingering for Timer J"
    );
    // The caller missed our 200 and retransmits its BYE: the same 200 again, not 481.
    n.recv(CALLER, &bye);
    n.settle().await;
    let again = n.take(CALLER);
    assert_eq!(names(&again), vec!["200 (2 BYE)"]);
    assert_eq!(again[0].0.encode(), ok_bye[0].0.encode(), "byte for byte");
    // A copy of its INVITE that arrives this late (reordered, long delayed) is absorbed:
    // no second call toward the carrier, nothing to the caller.
    n.recv(CALLER, &invite(CALLER, "+15550100", "c9@x", "t9", 1, "g1"));
    n.settle().await;
    assert!(
        n.take(CARRIER).is_empty(),
        "a late INVITE made a second call"
    );
    assert!(n.take(CALLER).is_empty());
    assert_eq!(n.d.call_actors(), 0);
    // Once Timer J would have ended the transaction, nothing is left.
    tokio::time::sleep(Duration::from_secs(34)).await;
    assert_eq!(n.d.index_entries(), 0);
    n.recv(CALLER, &bye);
    n.settle().await;
    assert_eq!(names(&n.take(CALLER)), vec!["481 (2 BYE)"]);
}

#[tokio::test(start_paused = true)]
async fn each_leg_stays_on_its_socket_and_advertises_that_sockets_address() {
    let n = node(Opts {
        carrier_local: Some(addr(NODE2)),
        ..Opts::default()
    });
    n.recv(
        CALLER,
        &invite(CALLER, "+15550100", "c10@x", "t10", 1, "m10"),
    );
    n.settle().await;
    let sent = n.out.sent.lock().unwrap().clone();
    let (b_peer, b_inv, _) = sent
        .iter()
        .find(|(p, _, _)| p.addr == addr(CARRIER))
        .expect("the B-leg INVITE");
    assert_eq!(
        b_peer.local,
        Some(addr(NODE2)),
        "leaves from the carrier-side socket"
    );
    let h = b_inv.headers();
    let via = String::from_utf8_lossy(h.get(trunkline_sip::HeaderName::Via).unwrap()).into_owned();
    assert!(via.contains(&format!("{CARRIER_SIDE}:5062")), "Via {via}");
    let contact = h.contact().unwrap().uri.to_string();
    assert!(contact.contains(CARRIER_SIDE), "Contact {contact}");
    let (a_peer, trying, _) = sent
        .iter()
        .find(|(p, _, _)| p.addr == addr(CALLER))
        .expect("100 to the caller");
    assert_eq!(summary(trying), "100 (1 INVITE)");
    assert_eq!(
        a_peer.local,
        Some(addr(NODE)),
        "answers leave from the socket the INVITE came to"
    );
    // The answer's Contact toward the caller names the access socket.
    let b_inv = b_inv.clone();
    n.take(CARRIER);
    n.take(CALLER);
    n.recv(CARRIER, &respond(&b_inv, 200, "far10", CARRIER));
    n.settle().await;
    let ok = n
        .take(CALLER)
        .into_iter()
        .find(|(m, _)| summary(m) == "200 (1 INVITE)")
        .expect("answered")
        .0;
    let contact = ok.headers().contact().unwrap().uri.to_string();
    assert!(contact.contains("127.0.0.1:5062"), "Contact {contact}");
}

#[tokio::test(start_paused = true)]
async fn a_flooded_call_refuses_what_its_mailbox_cannot_hold() {
    use trunkline_call::registry::MAILBOX_LIMIT;
    let n = node(Opts::default());
    n.recv(
        CALLER,
        &invite(CALLER, "+15550100", "c11@x", "t11", 1, "f11"),
    );
    n.settle().await;
    let b_inv = n.take(CARRIER).remove(0).0;
    // The callee rings; the caller learns our tag and floods the call with INFOs faster
    // than it is given time to handle them (nothing runs between these sends).
    n.recv(CARRIER, &respond(&b_inv, 180, "far11", CARRIER));
    n.settle().await;
    let ringing = n
        .take(CALLER)
        .into_iter()
        .find(|(m, _)| summary(m) == "180 (1 INVITE)")
        .unwrap()
        .0;
    let tag = String::from_utf8_lossy(ringing.headers().to_tag().unwrap()).into_owned();
    for i in 0..(MAILBOX_LIMIT + 50) {
        let info = format!(
            "INFO sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {CALLER};branch=z9hG4bKinfo{i}\r\n\
             Max-Forwards: 70\r\nFrom: <sip:alice@{CALLER}>;tag=t11\r\nTo: <sip:+15550100@{NODE}>;tag={tag}\r\n\
             Call-ID: c11@x\r\nCSeq: {} INFO\r\nContent-Length: 0\r\n\r\n",
            i + 2
        );
        n.recv(CALLER, &info);
    }
    let refused = names(&n.take(CALLER))
        .iter()
        .filter(|s| s.starts_with("503"))
        .count();
    assert_eq!(
        refused, 50,
        "the INFOs past the mailbox bound get 503 at once"
    );
    assert!(n
        .metrics()
        .contains("trunkline_sip_rejected_total{reason=\"mailbox_full\"} 50"));
    n.settle().await;
    // The call itself is fine and takes messages again once it has caught up.
    n.recv(CARRIER, &respond(&b_inv, 200, "far11", CARRIER));
    n.settle().await;
    assert!(names(&n.take(CALLER)).contains(&"200 (1 INVITE)".to_string()));
}

#[tokio::test(start_paused = true)]
async fn a_routing_change_applies_to_new_calls_and_leaves_calls_in_progress_alone() {
    use trunkline_sip::HeaderName as H;
    let n = node(Opts::default());
    // Call 1 to +44 goes to uk and is answered.
    n.recv(
        CALLER,
        &invite(CALLER, "+442071234567", "r1@x", "r1", 1, "r1"),
    );
    n.settle().await;
    let b_inv = n.take(UK).remove(0).0;
    n.recv(UK, &respond(&b_inv, 200, "uk1", UK));
    n.settle().await;
    let ok = n
        .take(CALLER)
        .into_iter()
        .find(|(m, _)| summary(m) == "200 (1 INVITE)")
        .expect("answered")
        .0;
    n.recv(CALLER, &ack_for(&ok, CALLER));

    // A new table: no uk trunk, callers only from the caller's address, all to carrier.
    let router = Router::new(vec![trunk("carrier", CARRIER)], vec![], Some("carrier")).unwrap();
    let trust = Trust::new(
        vec![vec![Source::Exact(addr(CARRIER))]],
        vec!["127.0.0.1/32".parse().unwrap()],
    );
    n.d.set_routing(router, trust);

    // The next +44 call follows it.
    n.recv(
        CALLER,
        &invite(CALLER, "+442079999999", "r2@x", "r2", 1, "r2"),
    );
    n.settle().await;
    assert_eq!(names(&n.take(CARRIER)), vec!["INVITE 1"]);
    assert!(
        !names(&n.take(UK)).iter().any(|s| s.starts_with("INVITE")),
        "uk is no longer a trunk"
    );

    // uk, now a stranger, hangs call 1 up: its BYE names a live dialog and is served.
    let h = b_inv.headers();
    let get = |k| String::from_utf8_lossy(h.get(k).unwrap()).into_owned();
    let call_id = get(H::CallId);
    let bye = format!(
        "BYE sip:{NODE} SIP/2.0\r\nVia: SIP/2.0/UDP {UK};branch=z9hG4bKukbye\r\n\
         Max-Forwards: 70\r\nFrom: {};tag=uk1\r\nTo: {}\r\nCall-ID: {call_id}\r\n\
         CSeq: 5 BYE\r\nContent-Length: 0\r\n\r\n",
        get(H::To),
        get(H::From),
    );
    n.recv(UK, &bye);
    n.settle().await;
    assert_eq!(names(&n.take(UK)), vec!["200 (5 BYE)"]);
    assert!(
        names(&n.take(CALLER)).iter().any(|s| s.starts_with("BYE")),
        "the caller is told"
    );
    // A stranger's request naming no live dialog is still refused.
    n.recv(UK, &bye.replace(&call_id, "other@x"));
    n.settle().await;
    assert_eq!(names(&n.take(UK)), vec!["403 (5 BYE)"]);
}

#[tokio::test(start_paused = true)]
async fn a_trunk_past_its_inbound_call_limit_gets_503_with_retry_after() {
    let n = node(Opts {
        carrier_limits: TrunkLimits {
            inbound: Limits { calls: 2, cps: 0 },
            ..TrunkLimits::default()
        },
        ..Opts::default()
    });
    for i in 0..3 {
        n.recv(
            CARRIER,
            &invite(
                CARRIER,
                "+442071234567",
                &format!("l1-{i}@x"),
                "t1",
                1,
                &format!("l{i}"),
            ),
        );
    }
    n.settle().await;
    let b = n.take(UK);
    assert_eq!(b.len(), 2, "two calls from the carrier admitted");
    let refused: Vec<_> = n
        .take(CARRIER)
        .into_iter()
        .filter(|(m, _)| matches!(m, Message::Response(r) if r.status == 503))
        .collect();
    assert_eq!(refused.len(), 1);
    match &refused[0].0 {
        Message::Response(r) => assert!(r.headers.get(HeaderName::RetryAfter).is_some()),
        Message::Request(_) => unreachable!(),
    }
    assert_eq!(n.d.call_actors(), 2, "the refused call cost no call state");
    assert!(n.metrics().contains(
        "trunkline_trunk_limited_total{trunk=\"carrier\",direction=\"in\",limit=\"calls\"} 1"
    ));
    // One call ends: its place comes back.
    n.recv(UK, &respond(&b[0].0, 486, "u1", UK));
    n.settle().await;
    n.recv(
        CARRIER,
        &invite(CARRIER, "+442071234567", "l1-3@x", "t1", 1, "l3"),
    );
    n.settle().await;
    let invites = n
        .take(UK)
        .into_iter()
        .filter(|(m, _)| matches!(m, Message::Request(r) if r.method == Method::Invite))
        .count();
    assert_eq!(invites, 1, "a new call once a place is free");
}

#[tokio::test(start_paused = true)]
async fn a_trunk_past_its_outbound_limits_is_not_called() {
    let n = node(Opts {
        uk_limits: TrunkLimits {
            outbound: Limits { calls: 0, cps: 4 },
            ..TrunkLimits::default()
        },
        ..Opts::default()
    });
    let call = |i: u32| {
        invite(
            CALLER,
            "+442071234567",
            &format!("l2-{i}@x"),
            "t2",
            1,
            &format!("m{i}"),
        )
    };
    for i in 0..5 {
        n.recv(CALLER, &call(i));
    }
    n.settle().await;
    assert_eq!(n.take(UK).len(), 4, "a burst of four calls");
    // The fifth takes the route's next trunk (the default) instead.
    assert_eq!(n.take(CARRIER).len(), 1, "past the limit: the next route");
    let got = names(&n.take(CALLER));
    assert!(!got.contains(&"503 (1 INVITE)".to_string()), "{got:?}");
    // 300 ms later (before any retransmission) one more token has come back.
    tokio::time::advance(Duration::from_millis(300)).await;
    n.recv(CALLER, &call(5));
    n.recv(CALLER, &call(6));
    n.settle().await;
    assert_eq!(n.take(UK).len(), 1);
    assert_eq!(n.take(CARRIER).len(), 1);
    assert!(n
        .metrics()
        .contains("trunkline_trunk_limited_total{trunk=\"uk\",direction=\"out\",limit=\"cps\"} 2"));
}

#[tokio::test(start_paused = true)]
async fn a_stranger_past_the_source_limit_is_blocked_and_answered_no_more() {
    let n = node(Opts {
        source_limit: SourceLimitConfig {
            max_requests: 3,
            ..SourceLimitConfig::default()
        },
        ..Opts::default()
    });
    for i in 0..6 {
        n.recv(
            STRANGER,
            &invite(
                STRANGER,
                "+15550100",
                &format!("p{i}@x"),
                "t",
                1,
                &format!("p{i}"),
            ),
        );
    }
    n.settle().await;
    assert_eq!(
        names(&n.take(STRANGER)),
        vec!["403 (1 INVITE)", "403 (1 INVITE)", "403 (1 INVITE)"]
    );
    let m = n.metrics();
    assert!(m.contains("trunkline_sip_sources_blocked_total 1"), "{m}");
    assert!(m.contains("trunkline_sip_source_dropped_total 2"), "{m}");
    // The access network and the trunks are not counted.
    for i in 0..6 {
        n.recv(
            CALLER,
            &invite(
                CALLER,
                "+15550100",
                &format!("q{i}@x"),
                "t",
                1,
                &format!("q{i}"),
            ),
        );
    }
    n.settle().await;
    assert_eq!(n.take(CARRIER).len(), 6);
}

#[tokio::test(start_paused = true)]
async fn a_call_fails_over_on_503_to_the_next_trunk_but_not_on_486() {
    let n = node(Opts::default());
    // +44 goes to the UK trunk, then the default.
    n.recv(
        CALLER,
        &invite(CALLER, "+442071234567", "f1@x", "tf", 1, "f1"),
    );
    n.settle().await;
    let uk = n.take(UK);
    assert_eq!(uk.len(), 1);
    n.recv(UK, &respond(&uk[0].0, 503, "u503", UK));
    n.settle().await;
    let carrier = n.take(CARRIER);
    assert_eq!(names(&carrier), vec!["INVITE 1"], "the next trunk is tried");
    assert!(
        !names(&n.take(CALLER))
            .iter()
            .any(|s| s.starts_with("503") || s.starts_with("500")),
        "the caller hears nothing of the failed trunk"
    );
    n.recv(CARRIER, &respond(&carrier[0].0, 200, "c200", CARRIER));
    n.settle().await;
    assert!(names(&n.take(CALLER)).contains(&"200 (1 INVITE)".to_string()));
    assert!(n
        .metrics()
        .contains("trunkline_route_failovers_total{trunk=\"uk\"} 1"));

    // A busy callee is the callee's answer: no other trunk is tried.
    n.recv(
        CALLER,
        &invite(CALLER, "+442071234567", "f2@x", "tg", 1, "f2"),
    );
    n.settle().await;
    let uk = n.take(UK);
    let invite_to_uk: Vec<_> = uk
        .iter()
        .filter(|(m, _)| matches!(m, Message::Request(r) if r.method == Method::Invite))
        .collect();
    assert_eq!(invite_to_uk.len(), 1);
    n.recv(UK, &respond(&invite_to_uk[0].0, 486, "u486", UK));
    n.settle().await;
    assert!(n
        .take(CARRIER)
        .iter()
        .all(|(m, _)| !matches!(m, Message::Request(r) if r.method == Method::Invite)));
    assert!(names(&n.take(CALLER)).contains(&"486 (1 INVITE)".to_string()));
}

#[test]
fn a_tls_trunk_that_must_show_a_certificate_is_refused_without_one() {
    use trunkline_transport::tls::{TlsPeerCheck, TlsTarget, TlsTargets};
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from("carrier.test").unwrap();
    let n = node(Opts::default());
    let carrier_tls: SocketAddr = "203.0.113.7:5061".parse().unwrap();
    let tls_trunk = Trunk {
        transport: Transport::Tls,
        sources: vec!["203.0.113.7/32".parse().unwrap()],
        tls: Some(trunkline_call::tls::TrunkTls {
            target: TlsTarget {
                name: name.clone(),
                config: Arc::new(config),
            },
            require_client_cert: true,
        }),
        ..trunk("tls-carrier", "203.0.113.7:5061")
    };
    let trunks = vec![tls_trunk];
    let trust = Trust::new(trunks.iter().map(|t| t.sources.clone()).collect(), vec![]);
    n.d.set_routing(Router::new(trunks, vec![], None).unwrap(), trust);
    // Connecting to it: its name and settings.
    assert_eq!(n.d.target(carrier_tls).map(|t| t.name), Some(name));
    assert!(n.d.target("203.0.113.8:5061".parse().unwrap()).is_none());
    // A connection from its addresses without a certificate is refused; from elsewhere
    // no certificate is asked of it.
    let from_trunk: SocketAddr = "203.0.113.7:40000".parse().unwrap();
    let err = n.d.check(from_trunk, None).unwrap_err();
    assert!(err.contains("tls-carrier"), "{err}");
    assert!(n
        .d
        .check("198.51.100.1:40000".parse().unwrap(), None)
        .is_ok());
}

//! A small simulated world for `trunkline_b2bua::Call`: the call, a virtual clock,
//! what the call sent toward each leg, and two scripted user agents — A (the caller)
//! and B (the callee, a trunk) — that parse what they receive and build correct
//! replies as real SIP text, parsed back with `trunkline_sip::parse_message`.
//!
//! Time never passes on its own: tests move `now` by jumping to `call.poll_timeout()`
//! (`advance`, `run_timers`), so RFC 3261 timers run in virtual time. An optional
//! lossy pipe drops chosen datagrams; the call recovers through its transactions'
//! retransmissions and the UAs re-send what the pipe dropped after T1.

#![allow(dead_code)]

use bytes::Bytes;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trunkline_b2bua::{
    Call, CallConfig, EndCause, Event, Leg, Local, MediaFailure, MediaOp, PeerCredentials,
    Presentation, RouteDecision,
};
use trunkline_sip::{
    parse_message, HeaderName, Host, Message, Method, Peer, Request, Response, Transport, Uri,
};

pub const A_ADDR: &str = "192.0.2.10:5070";
pub const A_IP: &str = "192.0.2.10";
pub const B_ADDR: &str = "203.0.113.5:5060";
pub const B_IP: &str = "203.0.113.5";
pub const OUR_IP: &str = "198.51.100.1";
pub const A_LOCAL_PORT: u16 = 5060;
pub const B_LOCAL_PORT: u16 = 5062;
pub const T1: Duration = Duration::from_millis(500);

/// An SDP body. Media addresses are the node's (as the media layer anchors them):
/// signalling addresses of either side never appear in a body.
pub fn sdp(port: u16, direction: &str) -> String {
    format!(
        "v=0\r\no=- 1 {port} IN IP4 {OUR_IP}\r\ns=-\r\nc=IN IP4 {OUR_IP}\r\nt=0 0\r\n\
         m=audio {port} RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\na={direction}\r\n"
    )
}

pub fn parse(text: &str) -> Message {
    parse_message(Bytes::from(text.to_string()))
        .unwrap_or_else(|e| panic!("harness built bad SIP ({e:?}):\n{text}"))
}

/// Parses a message whose body may be binary (not UTF-8): `head` ends with the empty line.
pub fn parse_with_body(head: &str, body: &[u8]) -> Message {
    let mut raw = head.as_bytes().to_vec();
    raw.extend_from_slice(body);
    parse_message(Bytes::from(raw))
        .unwrap_or_else(|e| panic!("harness built bad SIP ({e:?}):\n{head}"))
}

// ----- reading messages -------------------------------------------------------------

pub fn hdr(m: &Message, kind: HeaderName) -> String {
    m.headers()
        .get(kind)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .unwrap_or_default()
}

pub fn hdr_named(m: &Message, name: &str) -> Option<String> {
    m.headers()
        .get_named(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

pub fn all_hdrs(m: &Message, kind: HeaderName) -> Vec<String> {
    m.headers()
        .get_all(kind)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .collect()
}

pub fn status(m: &Message) -> Option<u16> {
    match m {
        Message::Response(r) => Some(r.status),
        Message::Request(_) => None,
    }
}

pub fn method(m: &Message) -> Option<Method> {
    match m {
        Message::Request(r) => Some(r.method.clone()),
        Message::Response(_) => None,
    }
}

pub fn is_request(m: &Message, meth: Method) -> bool {
    method(m) == Some(meth)
}

pub fn is_response(m: &Message, code: u16, cseq_method: Method) -> bool {
    status(m) == Some(code) && cseq(m).1 == cseq_method
}

pub fn cseq(m: &Message) -> (u32, Method) {
    let c = m.headers().cseq().expect("CSeq");
    (c.seq, c.method)
}

pub fn body(m: &Message) -> String {
    let b = match m {
        Message::Request(r) => &r.body,
        Message::Response(r) => &r.body,
    };
    String::from_utf8_lossy(b).into_owned()
}

/// The body as bytes (binary parts kept).
pub fn body_bytes(m: &Message) -> Bytes {
    match m {
        Message::Request(r) => r.body.clone(),
        Message::Response(r) => r.body.clone(),
    }
}

pub fn branch(m: &Message) -> String {
    m.headers()
        .top_via()
        .and_then(|v| v.branch().map(str::to_string))
        .unwrap_or_default()
}

pub fn from_tag(m: &Message) -> String {
    m.headers()
        .from_addr()
        .and_then(|f| f.tag().map(str::to_string))
        .unwrap_or_default()
}

pub fn to_tag(m: &Message) -> Option<String> {
    m.headers()
        .to_addr()
        .and_then(|f| f.tag().map(str::to_string))
}

pub fn call_id(m: &Message) -> String {
    hdr(m, HeaderName::CallId)
}

pub fn request_uri(m: &Message) -> String {
    match m {
        Message::Request(r) => r.uri.to_string(),
        Message::Response(_) => String::new(),
    }
}

pub fn summary(m: &Message) -> String {
    match m {
        Message::Request(r) => format!("{} {}", r.method, cseq(m).0),
        Message::Response(r) => format!("{} ({} {})", r.status, cseq(m).0, cseq(m).1),
    }
}

// ----- user agents ------------------------------------------------------------------

/// A scripted endpoint: it remembers the dialog it is in and builds requests and
/// responses the way a correct UA would.
#[derive(Debug, Clone)]
pub struct Ua {
    pub user: &'static str,
    pub addr: SocketAddr,
    pub transport: Transport,
    pub contact: String,
    pub tag: String,
    pub call_id: String,
    /// Our URI in From of our requests (no tag).
    pub local_uri: String,
    /// The peer's URI in To of our requests (no tag).
    pub remote_uri: String,
    pub remote_tag: Option<String>,
    /// Request-URI of our in-dialog requests: the other side's Contact.
    pub remote_target: String,
    /// Route set for our in-dialog requests.
    pub route: Vec<String>,
    pub cseq: u32,
    branches: u32,
    /// A Record-Route this side's edge adds to dialog-forming messages.
    pub record_route: Option<String>,
}

impl Ua {
    pub fn caller(transport: Transport) -> Ua {
        let tp = tp_param(transport);
        Ua {
            user: "alice",
            addr: A_ADDR.parse().expect("addr"),
            transport,
            contact: format!("<sip:alice@{A_ADDR}{tp}>"),
            tag: "atag-7f3e91".into(),
            call_id: format!("acid-91c2d5@{A_IP}"),
            local_uri: "\"Alice\" <sip:alice@a.example>".into(),
            remote_uri: format!("<sip:+15550100@{OUR_IP}>"),
            remote_tag: None,
            remote_target: format!("sip:+15550100@{OUR_IP}:{A_LOCAL_PORT}"),
            route: Vec::new(),
            cseq: 0,
            branches: 0,
            record_route: None,
        }
    }

    pub fn callee(transport: Transport) -> Ua {
        let tp = tp_param(transport);
        Ua {
            user: "bob",
            addr: B_ADDR.parse().expect("addr"),
            transport,
            contact: format!("<sip:bob@{B_ADDR}{tp}>"),
            tag: "btag-4d21aa".into(),
            call_id: String::new(),
            local_uri: String::new(),
            remote_uri: String::new(),
            remote_tag: None,
            remote_target: String::new(),
            route: Vec::new(),
            cseq: 100,
            branches: 0,
            record_route: None,
        }
    }

    pub fn peer(&self) -> Peer {
        Peer::new(self.transport, self.addr)
    }

    fn via(&mut self) -> String {
        self.branches += 1;
        format!(
            "SIP/2.0/{} {};branch=z9hG4bK{}{}x;rport",
            self.transport.via_token(),
            self.addr,
            self.user,
            self.branches
        )
    }

    /// The caller's initial INVITE.
    pub fn invite(&mut self, body: Option<&str>, max_forwards: u32) -> Message {
        let typed = body.map(|b| ("application/sdp", b.as_bytes()));
        self.invite_typed(typed, max_forwards)
    }

    /// The caller's initial INVITE with a body of any type (e.g. a SIP-I multipart
    /// body with binary ISUP).
    pub fn invite_typed(&mut self, body: Option<(&str, &[u8])>, max_forwards: u32) -> Message {
        self.cseq = 1;
        let via = self.via();
        let rr = self
            .record_route
            .as_ref()
            .map(|r| format!("Record-Route: {r}\r\n"))
            .unwrap_or_default();
        let (ct, body) = match body {
            Some((t, b)) => (format!("Content-Type: {t}\r\n"), b),
            None => (String::new(), &b""[..]),
        };
        parse_with_body(
            &format!(
                "INVITE {ruri} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: {max_forwards}\r\n\
                 From: {from};tag={tag}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 1 INVITE\r\n\
                 Contact: {contact}\r\n{rr}User-Agent: AlicePhone/1.0 ({A_IP})\r\n\
                 Supported: replaces, timer\r\n{ct}Content-Length: {len}\r\n\r\n",
                ruri = self.remote_target,
                from = self.local_uri,
                tag = self.tag,
                to = self.remote_uri,
                cid = self.call_id,
                contact = self.contact,
                len = body.len(),
            ),
            body,
        )
    }

    /// Learns the dialog from a received dialog-forming request (the callee's view).
    pub fn accept_invite(&mut self, inv: &Message) {
        let h = inv.headers();
        self.call_id = call_id(inv);
        self.remote_tag = Some(from_tag(inv));
        let mut from = h.from_addr().expect("From");
        from.params.retain(|p| !p.name.eq_ignore_ascii_case("tag"));
        self.remote_uri = from.to_string();
        self.local_uri = hdr(inv, HeaderName::To);
        self.remote_target = h.contact().expect("Contact").uri.to_string();
        self.route = all_hdrs(inv, HeaderName::RecordRoute);
    }

    /// Learns the dialog from a 1xx/2xx with a To-tag (the caller's view).
    pub fn learn_answer(&mut self, resp: &Message) {
        self.remote_tag = to_tag(resp);
        if let Some(c) = resp.headers().contact() {
            self.remote_target = c.uri.to_string();
        }
        let mut rr = all_hdrs(resp, HeaderName::RecordRoute);
        rr.reverse();
        self.route = rr;
    }

    /// A response to `req`: Via, From, To, Call-ID and CSeq copied, our To-tag
    /// added, Contact (and our edge's Record-Route) on dialog-forming responses.
    pub fn respond(&self, req: &Message, code: u16, body: Option<&str>) -> Message {
        self.respond_with(req, code, &[], body)
    }

    pub fn respond_with(
        &self,
        req: &Message,
        code: u16,
        extra: &[(&str, &str)],
        body: Option<&str>,
    ) -> Message {
        let typed = body
            .filter(|b| !b.is_empty())
            .map(|b| ("application/sdp", b.as_bytes()));
        self.respond_typed(req, code, extra, typed)
    }

    /// A response with a body of any type (e.g. a SIP-I multipart answer).
    pub fn respond_typed(
        &self,
        req: &Message,
        code: u16,
        extra: &[(&str, &str)],
        body: Option<(&str, &[u8])>,
    ) -> Message {
        let m = method(req).expect("a request");
        let mut out = format!("SIP/2.0 {code} {}\r\n", trunkline_sip::reason_phrase(code));
        for v in all_hdrs(req, HeaderName::Via) {
            out.push_str(&format!("Via: {v}\r\n"));
        }
        out.push_str(&format!("From: {}\r\n", hdr(req, HeaderName::From)));
        let to = hdr(req, HeaderName::To);
        if to_tag(req).is_none() && code > 100 {
            out.push_str(&format!("To: {to};tag={}\r\n", self.tag));
        } else {
            out.push_str(&format!("To: {to}\r\n"));
        }
        out.push_str(&format!("Call-ID: {}\r\n", call_id(req)));
        out.push_str(&format!("CSeq: {}\r\n", hdr(req, HeaderName::CSeq)));
        let dialog_forming =
            matches!(m, Method::Invite | Method::Update) && (101..300).contains(&code);
        if dialog_forming {
            if let Some(rr) = &self.record_route {
                if to_tag(req).is_none() {
                    out.push_str(&format!("Record-Route: {rr}\r\n"));
                }
            }
            out.push_str(&format!("Contact: {}\r\n", self.contact));
        }
        out.push_str(&format!("Server: {}-box/2.1\r\n", self.user));
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let body = match body {
            Some((t, b)) => {
                out.push_str(&format!("Content-Type: {t}\r\n"));
                b
            }
            None => &b""[..],
        };
        out.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        parse_with_body(&out, body)
    }

    /// A new in-dialog request (CSeq incremented).
    pub fn request(
        &mut self,
        meth: &str,
        extra: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Message {
        self.cseq += 1;
        let seq = self.cseq;
        self.request_seq(meth, seq, extra, body)
    }

    /// An in-dialog request with an explicit CSeq number (ACK, out-of-order tests).
    pub fn request_seq(
        &mut self,
        meth: &str,
        seq: u32,
        extra: &[(&str, &str)],
        body: Option<(&str, &str)>,
    ) -> Message {
        let via = self.via();
        let mut out = format!(
            "{meth} {} SIP/2.0\r\nVia: {via}\r\nMax-Forwards: 70\r\n",
            self.remote_target
        );
        for r in &self.route {
            out.push_str(&format!("Route: {r}\r\n"));
        }
        out.push_str(&format!("From: {};tag={}\r\n", self.local_uri, self.tag));
        match &self.remote_tag {
            Some(t) => out.push_str(&format!("To: {};tag={t}\r\n", self.remote_uri)),
            None => out.push_str(&format!("To: {}\r\n", self.remote_uri)),
        }
        out.push_str(&format!(
            "Call-ID: {}\r\nCSeq: {seq} {meth}\r\n",
            self.call_id
        ));
        if matches!(meth, "INVITE" | "UPDATE") {
            out.push_str(&format!("Contact: {}\r\n", self.contact));
        }
        for (k, v) in extra {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        let (ct, b) = body.unwrap_or(("", ""));
        if !b.is_empty() {
            out.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        out.push_str(&format!("Content-Length: {}\r\n\r\n{b}", b.len()));
        parse(&out)
    }

    /// The ACK for a 2xx to our INVITE: a new transaction, same CSeq number.
    pub fn ack(&mut self, resp: &Message, body: Option<&str>) -> Message {
        let seq = cseq(resp).0;
        self.request_seq("ACK", seq, &[], body.map(|b| ("application/sdp", b)))
    }

    /// The ACK for a non-2xx final: same branch as the INVITE (§17.1.1.3).
    pub fn ack_non2xx(&self, invite: &Message, resp: &Message) -> Message {
        parse(&format!(
            "ACK {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} ACK\r\nContent-Length: 0\r\n\r\n",
            request_uri(invite),
            hdr(invite, HeaderName::Via),
            hdr(invite, HeaderName::From),
            hdr(resp, HeaderName::To),
            call_id(invite),
            cseq(invite).0,
        ))
    }

    /// CANCEL for our INVITE (§9.1).
    pub fn cancel(&self, invite: &Message) -> Message {
        parse(&format!(
            "CANCEL {} SIP/2.0\r\nVia: {}\r\nMax-Forwards: 70\r\nFrom: {}\r\nTo: {}\r\n\
             Call-ID: {}\r\nCSeq: {} CANCEL\r\nContent-Length: 0\r\n\r\n",
            request_uri(invite),
            hdr(invite, HeaderName::Via),
            hdr(invite, HeaderName::From),
            hdr(invite, HeaderName::To),
            call_id(invite),
            cseq(invite).0,
        ))
    }
}

fn tp_param(t: Transport) -> &'static str {
    match t {
        Transport::Udp => "",
        Transport::Tcp => ";transport=tcp",
        Transport::Tls => ";transport=tls",
    }
}

// ----- the lossy pipe ----------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    ToA,
    ToB,
    FromA,
    FromB,
}

/// Drops datagrams by index per direction, or with a seeded pattern.
#[derive(Debug, Clone, Default)]
pub struct Pipe {
    pub drop: Vec<(Dir, usize)>,
    /// (xorshift state, drop one in `n`)
    pub random: Option<(u64, u64)>,
    pub counts: [usize; 4],
    pub dropped: usize,
}

impl Pipe {
    pub fn seeded(seed: u64, one_in: u64) -> Pipe {
        Pipe {
            random: Some((seed | 1, one_in)),
            ..Pipe::default()
        }
    }

    fn lose(&mut self, dir: Dir) -> bool {
        let i = dir as usize;
        let idx = self.counts[i];
        self.counts[i] += 1;
        let mut lost = self.drop.contains(&(dir, idx));
        if let Some((state, n)) = self.random.as_mut() {
            *state ^= *state << 13;
            *state ^= *state >> 7;
            *state ^= *state << 17;
            lost |= *state % *n == 0;
        }
        if lost {
            self.dropped += 1;
        }
        lost
    }
}

// ----- the world --------------------------------------------------------------------

/// One message the call transmitted toward a leg.
#[derive(Debug, Clone)]
pub struct Sent {
    pub msg: Message,
    /// Where the call sent it.
    pub peer: Peer,
    pub raw: Bytes,
    pub retransmission: bool,
    /// Virtual time since the call started.
    pub at: Duration,
    pub dropped: bool,
}

pub struct Setup {
    pub a_transport: Transport,
    pub b_transport: Transport,
    /// SDP in the caller's INVITE; `None` for a late offer.
    pub offer: Option<String>,
    /// A body of another type for the caller's INVITE (Content-Type, bytes); replaces
    /// `offer` when set.
    pub typed_offer: Option<(String, Vec<u8>)>,
    pub max_forwards: u32,
    pub pipe: Pipe,
    /// Record-Route the caller's edge adds; Record-Route and Contact host of the callee.
    pub topology: bool,
    /// Route with media anchoring on: SDP goes through a simulated relay.
    pub anchor: bool,
    /// The simulated relay refuses every body with this status.
    pub media_fails: Option<u16>,
    /// The simulated relay holds its answers until `World::release_media` (a relay that
    /// has not answered yet: what a race with the rewrite looks like).
    pub defer_media: bool,
    /// The routing decision asks for nathelper-style Contact fixing toward B.
    pub fix_nated_contact: bool,
    /// What the node answers B's digest challenges with.
    pub credentials: Option<PeerCredentials>,
    /// The caller as B is shown it.
    pub presentation: Presentation,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            a_transport: Transport::Udp,
            b_transport: Transport::Udp,
            offer: Some(sdp(40000, "sendrecv")),
            typed_offer: None,
            max_forwards: 70,
            pipe: Pipe::default(),
            topology: false,
            anchor: false,
            media_fails: None,
            defer_media: false,
            fix_nated_contact: false,
            credentials: None,
            presentation: Presentation::default(),
        }
    }
}

pub struct World {
    pub call: Call,
    pub cfg: Arc<CallConfig>,
    pub t0: Instant,
    pub now: Instant,
    pub a: Ua,
    pub b: Ua,
    pub a_local: Local,
    pub b_local: Local,
    /// The caller's initial INVITE, as sent.
    pub invite: Message,
    inbox_a: VecDeque<Sent>,
    inbox_b: VecDeque<Sent>,
    /// Everything the call transmitted toward each leg, dropped or not.
    pub log_a: Vec<Sent>,
    pub log_b: Vec<Sent>,
    pub events: Vec<Event>,
    pub pipe: Pipe,
    pub anchor: bool,
    pub media_fails: Option<u16>,
    /// Every media request the call made, in order.
    pub media_ops: Vec<MediaOp>,
    pub defer_media: bool,
    pub fix_nated_contact: bool,
    pub credentials: Option<PeerCredentials>,
    pub presentation: Presentation,
    /// Every message must go to its leg's UA address (off for tests where the far
    /// side moves: their `Sent::peer` says where messages went).
    pub strict_peers: bool,
    /// Media requests the simulated relay has not answered yet (`defer_media`).
    pub pending_media: VecDeque<(u64, Bytes)>,
}

/// The relay address the simulated media relay writes into every body it anchors.
pub const RELAY_IP: &str = "198.51.100.77";

/// What the simulated relay does to a body: every connection address becomes the relay's.
pub fn relay_rewrite(sdp: &Bytes) -> Bytes {
    let text = String::from_utf8_lossy(sdp);
    let out: String = text
        .split_inclusive('\n')
        .map(|line| {
            if line.starts_with("c=IN IP4 ") {
                format!("c=IN IP4 {RELAY_IP}\r\n")
            } else {
                line.to_string()
            }
        })
        .collect();
    Bytes::from(out)
}

pub fn local(transport: Transport, port: u16) -> Local {
    Local {
        transport,
        host: Host::parse(OUR_IP).expect("ip"),
        port,
    }
}

impl World {
    pub fn new(setup: Setup) -> World {
        Self::with_config(setup, CallConfig::default())
    }

    pub fn with_config(setup: Setup, cfg: CallConfig) -> World {
        let cfg = Arc::new(cfg);
        let mut a = Ua::caller(setup.a_transport);
        let mut b = Ua::callee(setup.b_transport);
        if setup.topology {
            a.record_route = Some("<sip:edge-a.example;lr>".into());
            b.record_route = Some("<sip:edge-b.example;lr>".into());
            b.contact = format!("<sip:bob@203.0.113.77:5060{}>", tp_param(setup.b_transport));
        }
        let invite = match &setup.typed_offer {
            Some((ct, b)) => a.invite_typed(Some((ct.as_str(), b.as_slice())), setup.max_forwards),
            None => a.invite(setup.offer.as_deref(), setup.max_forwards),
        };
        let t0 = Instant::now();
        let req = match invite.clone() {
            Message::Request(r) => r,
            Message::Response(_) => unreachable!(),
        };
        let a_local = local(setup.a_transport, A_LOCAL_PORT);
        let b_local = local(setup.b_transport, B_LOCAL_PORT);
        let call = Call::new(t0, cfg.clone(), 0x5eed_1234, req, a.peer(), a_local.clone());
        let mut w = World {
            call,
            cfg,
            t0,
            now: t0,
            a,
            b,
            a_local,
            b_local,
            invite,
            inbox_a: VecDeque::new(),
            inbox_b: VecDeque::new(),
            log_a: Vec::new(),
            log_b: Vec::new(),
            events: Vec::new(),
            pipe: setup.pipe,
            anchor: setup.anchor,
            media_fails: setup.media_fails,
            media_ops: Vec::new(),
            defer_media: setup.defer_media,
            fix_nated_contact: setup.fix_nated_contact,
            credentials: setup.credentials.clone(),
            presentation: setup.presentation.clone(),
            strict_peers: true,
            pending_media: VecDeque::new(),
        };
        w.pump();
        w
    }

    /// Virtual time elapsed since the call started.
    pub fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    /// Moves everything the call wants done into the per-leg inboxes and the event list.
    pub fn pump(&mut self) {
        while let Some(t) = self.call.poll_transmit() {
            let msg = parse_message(t.data.clone()).unwrap_or_else(|e| {
                panic!(
                    "call sent unparsable bytes ({e:?}):\n{}",
                    String::from_utf8_lossy(&t.data)
                )
            });
            let (expected, dir) = match t.leg {
                Leg::A => (self.a.peer(), Dir::ToA),
                Leg::B => (self.b.peer(), Dir::ToB),
            };
            if self.strict_peers {
                assert_eq!(
                    (t.peer.transport, t.peer.addr),
                    (expected.transport, expected.addr),
                    "{:?}-leg message sent to the wrong peer: {}",
                    t.leg,
                    summary(&msg)
                );
            }
            let dropped = self.pipe.lose(dir);
            let sent = Sent {
                msg,
                peer: t.peer,
                raw: t.data,
                retransmission: t.retransmission,
                at: self.now - self.t0,
                dropped,
            };
            let (inbox, log) = match t.leg {
                Leg::A => (&mut self.inbox_a, &mut self.log_a),
                Leg::B => (&mut self.inbox_b, &mut self.log_b),
            };
            log.push(sent.clone());
            if !dropped {
                inbox.push_back(sent);
            }
        }
        let mut media = Vec::new();
        while let Some(e) = self.call.poll_event() {
            if let Event::Media { id, op, sdp } = &e {
                media.push((*id, *op, sdp.clone()));
            }
            self.events.push(e);
        }
        if media.is_empty() {
            return;
        }
        for (id, op, sdp) in media {
            self.media_ops.push(op);
            if self.defer_media {
                self.pending_media.push_back((id, sdp));
                continue;
            }
            let result = match self.media_fails {
                Some(status) => Err(MediaFailure { status }),
                None => Ok(relay_rewrite(&sdp)),
            };
            self.call.handle_media(self.now, id, result);
        }
        self.pump();
    }

    /// Answers every media request the simulated relay has held back, oldest first.
    pub fn release_media(&mut self) {
        while let Some((id, sdp)) = self.pending_media.pop_front() {
            let result = match self.media_fails {
                Some(status) => Err(MediaFailure { status }),
                None => Ok(relay_rewrite(&sdp)),
            };
            self.call.handle_media(self.now, id, result);
            self.pump();
        }
    }

    /// Runs every call timer due up to `until`, then sets the clock to `until`.
    pub fn run_until(&mut self, until: Instant) {
        let mut guard = 0;
        while let Some(t) = self.call.poll_timeout() {
            if t > until {
                break;
            }
            self.now = self.now.max(t);
            self.call.handle_timeout(self.now);
            self.pump();
            guard += 1;
            assert!(guard < 10_000, "timer loop does not make progress");
        }
        self.now = self.now.max(until);
    }

    pub fn advance(&mut self, d: Duration) {
        let until = self.now + d;
        self.run_until(until);
    }

    /// Jumps to the call's next timer and runs it; false when no timer is pending.
    pub fn next_timer(&mut self) -> bool {
        match self.call.poll_timeout() {
            Some(t) => {
                self.now = self.now.max(t);
                self.call.handle_timeout(self.now);
                self.pump();
                true
            }
            None => false,
        }
    }

    /// Runs timers until none is left (the call has nothing more to do).
    pub fn run_out(&mut self) {
        let mut guard = 0;
        while self.next_timer() {
            guard += 1;
            assert!(guard < 10_000, "timers never run out");
        }
    }

    // ----- sending to the call --------------------------------------------------------

    /// One attempt to deliver `msg` from `leg`'s UA; false when the pipe dropped it.
    pub fn send_once(&mut self, leg: Leg, msg: Message) -> bool {
        let dir = match leg {
            Leg::A => Dir::FromA,
            Leg::B => Dir::FromB,
        };
        if self.pipe.lose(dir) {
            return false;
        }
        let source = match leg {
            Leg::A => self.a.peer(),
            Leg::B => self.b.peer(),
        };
        self.call.handle_message(self.now, leg, msg, source);
        self.pump();
        true
    }

    /// Delivers `msg`; when the pipe drops it, the UA re-sends it after T1 (its
    /// retransmission), while the call's own timers keep running.
    pub fn send(&mut self, leg: Leg, msg: Message) {
        for _ in 0..20 {
            if self.send_once(leg, msg.clone()) {
                return;
            }
            self.advance(T1);
        }
        panic!("pipe dropped {} twenty times", summary(&msg));
    }

    pub fn a_sends(&mut self, msg: Message) {
        self.send(Leg::A, msg);
    }

    pub fn b_sends(&mut self, msg: Message) {
        self.send(Leg::B, msg);
    }

    // ----- receiving from the call ----------------------------------------------------

    fn inbox(&mut self, leg: Leg) -> &mut VecDeque<Sent> {
        match leg {
            Leg::A => &mut self.inbox_a,
            Leg::B => &mut self.inbox_b,
        }
    }

    /// The next message delivered toward `leg`, with where it was sent (a leg whose
    /// party changes, as in a transfer, has two peers for a while).
    pub fn recv_sent(&mut self, leg: Leg) -> Option<Sent> {
        self.inbox(leg).pop_front()
    }

    pub fn try_recv(&mut self, leg: Leg) -> Option<Message> {
        self.inbox(leg).pop_front().map(|s| s.msg)
    }

    /// Everything delivered to `leg`'s UA and not read yet.
    pub fn drain(&mut self, leg: Leg) -> Vec<Message> {
        self.inbox(leg).drain(..).map(|s| s.msg).collect()
    }

    /// The next message delivered to A; panics when there is none.
    pub fn recv_a(&mut self) -> Message {
        self.try_recv(Leg::A)
            .expect("A expected a message, got none")
    }

    pub fn recv_b(&mut self) -> Message {
        self.try_recv(Leg::B)
            .expect("B expected a message, got none")
    }

    /// Asserts that nothing is waiting for either UA.
    pub fn assert_quiet(&mut self) {
        let a: Vec<_> = self.drain(Leg::A).iter().map(summary).collect();
        let b: Vec<_> = self.drain(Leg::B).iter().map(summary).collect();
        assert!(
            a.is_empty() && b.is_empty(),
            "unexpected messages: to A {a:?}, to B {b:?}"
        );
    }

    /// Waits (in virtual time) for a message to `leg` matching `pred`, skipping others.
    /// Meanwhile that UA re-sends `resend` every T1, as a UA retransmits while it
    /// waits for an answer. Panics after `limit`.
    pub fn wait_for(
        &mut self,
        leg: Leg,
        resend: Option<(Leg, &Message)>,
        limit: Duration,
        pred: impl Fn(&Message) -> bool,
    ) -> Message {
        let deadline = self.now + limit;
        let mut next_resend = self.now + T1;
        loop {
            while let Some(m) = self.try_recv(leg) {
                if pred(&m) {
                    return m;
                }
            }
            assert!(self.now < deadline, "{leg:?} waited {limit:?} in vain");
            let mut next = deadline;
            if let Some(t) = self.call.poll_timeout() {
                next = next.min(t.max(self.now));
            }
            if resend.is_some() {
                next = next.min(next_resend);
            }
            self.run_until(next);
            if let Some((from, m)) = resend {
                if self.now >= next_resend {
                    self.send_once(from, m.clone());
                    next_resend = self.now + T1;
                }
            }
        }
    }

    // ----- call control -------------------------------------------------------------

    /// Takes the events the call emitted so far.
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    pub fn ended(&self) -> Vec<(u16, EndCause)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::Ended { status, cause } => Some((*status, *cause)),
                _ => None,
            })
            .collect()
    }

    pub fn answered(&self) -> bool {
        self.events.iter().any(|e| matches!(e, Event::Answered))
    }

    pub fn timeouts(&self) -> Vec<(Leg, char)> {
        self.events
            .iter()
            .filter_map(|e| match e {
                Event::TransactionTimeout { leg, timer } => Some((*leg, *timer)),
                _ => None,
            })
            .collect()
    }

    /// Answers `Event::RouteRequired` with the trunk B.
    pub fn route(&mut self) {
        self.route_with(false, None, None);
    }

    /// `route`, with the route's failover settings: whether another trunk remains, the
    /// provisional timeout and the route's own failover statuses.
    pub fn route_with(
        &mut self,
        failover: bool,
        provisional_timeout: Option<Duration>,
        failover_statuses: Option<&[u16]>,
    ) {
        assert!(
            self.events
                .iter()
                .any(|e| matches!(e, Event::RouteRequired { .. })),
            "no RouteRequired event: {:?}",
            self.events
        );
        let peer = self.b.peer();
        let decision = RouteDecision::Trunk {
            peer,
            local: self.b_local.clone(),
            request_uri: Uri::parse(&format!("sip:+15550100@{B_ADDR}")).expect("uri"),
            anchor_media: self.anchor,
            fix_nated_contact: self.fix_nated_contact,
            failover,
            credentials: self.credentials.clone(),
            presentation: self.presentation.clone(),
            provisional_timeout,
            failover_statuses: failover_statuses.map(Into::into),
        };
        self.call.handle_route(self.now, decision);
        self.pump();
    }

    pub fn reject(&mut self, status: u16, cause: EndCause) {
        self.call
            .handle_route(self.now, RouteDecision::Reject { status, cause });
        self.pump();
    }

    /// Routes the call and returns the INVITE B received (B learns the dialog).
    pub fn route_to_b(&mut self) -> Message {
        assert_eq!(status(&self.recv_a()), Some(100), "A gets 100 Trying first");
        self.route();
        let inv = self.recv_b();
        assert!(is_request(&inv, Method::Invite), "B got {}", summary(&inv));
        self.b.accept_invite(&inv);
        inv
    }

    /// B rings and answers with `answer`; A receives the 180 and the 200 (and learns
    /// the dialog), B receives the call's ACK. Returns (B's INVITE, A's 200).
    pub fn answer(&mut self, answer: Option<&str>) -> (Message, Message) {
        let inv = self.route_to_b();
        let ringing = self.b.respond(&inv, 180, None);
        self.b_sends(ringing);
        let r = self.recv_a();
        assert_eq!(status(&r), Some(180));
        let ok = self.b.respond(&inv, 200, answer);
        self.b_sends(ok);
        let ack = self.recv_b();
        assert!(is_request(&ack, Method::Ack), "B got {}", summary(&ack));
        let ok_a = self.recv_a();
        assert!(
            is_response(&ok_a, 200, Method::Invite),
            "A got {}",
            summary(&ok_a)
        );
        self.a.learn_answer(&ok_a);
        (inv, ok_a)
    }

    /// A complete set-up: routed, answered, ACKed by A. Returns A's 200.
    pub fn establish(&mut self) -> Message {
        let (_, ok) = self.answer(Some(&sdp(50000, "sendrecv")));
        let ack = self.a.ack(&ok, None);
        self.a_sends(ack);
        self.assert_quiet();
        ok
    }

    pub fn established(setup: Setup) -> World {
        let mut w = World::new(setup);
        w.establish();
        w
    }
}

/// Requests as `Request` (for tests that need the parsed struct).
pub fn as_request(m: Message) -> Request {
    match m {
        Message::Request(r) => r,
        Message::Response(_) => panic!("not a request"),
    }
}

pub fn as_response(m: Message) -> Response {
    match m {
        Message::Response(r) => r,
        Message::Request(_) => panic!("not a response"),
    }
}

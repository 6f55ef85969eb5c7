//! The hot path from a received datagram to a call actor's mailbox.
//!
//! Parse once, bound and validate, answer what needs no call (OPTIONS, REGISTER,
//! stray requests, validation failures) statelessly, and hand everything else to
//! the call actor found by Call-ID in a sharded map (ARCHITECTURE.md rule 3). A new
//! INVITE creates its actor here; the map entry is inserted before the actor runs so
//! retransmissions arriving meanwhile queue in its mailbox instead of making a
//! second call.

use crate::actor::{self, CallArgs, CallMsg};
use crate::media::MediaMsg;
use crate::metrics::{CallMetrics, Direction};
use crate::router::Router;
use crate::stateless;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ractor::ActorRef;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use trunkline_b2bua::{CallConfig, Leg, Local};
use trunkline_sip::validate::{validate_request, validate_response, Policy};
use trunkline_sip::{
    parse_message, salvage, HeaderName, Headers, Host, Message, Method, Peer, Request, Response,
    Transport,
};
use trunkline_transport::{Inbound, Received, Transports};

/// Node-wide settings of the dispatcher.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    pub call: Arc<CallConfig>,
    /// IP written in our Via and Contact headers.
    pub advertise: IpAddr,
    /// Calls beyond this get 503 (admission control before any per-call allocation).
    pub max_calls: usize,
    /// Answer over UDP to the packet's source port even without `rport`
    /// (RFC 3581 behaviour for every client): what keeps NATed callers reachable.
    pub force_rport: bool,
    /// The relay interface callers' media (the A leg) is anchored on, by name; `None`: the
    /// relay's default.
    pub access_interface: Option<Arc<str>>,
}

/// State shared by the dispatcher and every call actor.
pub struct Shared {
    pub(crate) call_config: Arc<CallConfig>,
    pub(crate) metrics: CallMetrics,
    pub(crate) router: Router,
    /// The node's media-relay actor; `None` when media anchoring is off.
    pub(crate) media: Option<ActorRef<MediaMsg>>,
    /// See [`DispatcherConfig::access_interface`].
    pub(crate) access_interface: Option<Arc<str>>,
    calls: DashMap<Bytes, (ActorRef<CallMsg>, Leg)>,
    transports: OnceLock<Transports>,
    advertise: IpAddr,
    max_calls: usize,
    force_rport: bool,
    draining: AtomicBool,
    policy: Policy,
    seed: AtomicU64,
    log_budget: LogBudget,
    /// Calls started and not yet ended (ended calls may linger to absorb retransmissions).
    pub(crate) live_calls: AtomicU64,
}

/// Limits warn-level logs about bad input so a flood cannot flood the log.
struct LogBudget {
    second: AtomicU64,
    count: AtomicU64,
}

impl LogBudget {
    const PER_SECOND: u64 = 20;

    fn allow(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if self.second.swap(now, Ordering::Relaxed) != now {
            self.count.store(0, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed) < Self::PER_SECOND
    }
}

impl Shared {
    pub(crate) fn register(&self, key: Bytes, actor: ActorRef<CallMsg>, leg: Leg) {
        self.calls.insert(key, (actor, leg));
    }

    pub(crate) fn unregister(&self, key: &Bytes) {
        self.calls.remove(key);
    }

    /// Our address for requests sent over `transport`.
    pub(crate) fn local_for(&self, transport: Transport) -> Option<Local> {
        let t = self.transports.get()?;
        let addr = t.local_addr(transport)?;
        Some(Local {
            transport,
            host: Host::from(self.advertise),
            port: addr.port(),
        })
    }

    /// Hands bytes to the transports; never blocks.
    pub(crate) fn send(&self, peer: Peer, data: Bytes) {
        if let Some(t) = self.transports.get() {
            t.send(&peer, data);
        }
    }

    fn next_seed(&self) -> u64 {
        let base = self
            .seed
            .fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed);
        base ^ rand::random::<u64>()
    }
}

/// Receives every framed message from the transports.
#[derive(Clone)]
pub struct Dispatcher {
    shared: Arc<Shared>,
}

impl Dispatcher {
    pub fn new(
        cfg: DispatcherConfig,
        router: Router,
        metrics: CallMetrics,
        media: Option<ActorRef<MediaMsg>>,
    ) -> Dispatcher {
        Dispatcher {
            shared: Arc::new(Shared {
                call_config: cfg.call,
                metrics,
                router,
                media,
                access_interface: cfg.access_interface,
                calls: DashMap::new(),
                transports: OnceLock::new(),
                advertise: cfg.advertise,
                max_calls: cfg.max_calls,
                force_rport: cfg.force_rport,
                draining: AtomicBool::new(false),
                policy: Policy::default(),
                seed: AtomicU64::new(rand::random()),
                log_budget: LogBudget {
                    second: AtomicU64::new(0),
                    count: AtomicU64::new(0),
                },
                live_calls: AtomicU64::new(0),
            }),
        }
    }

    /// Completes the wiring once the transports are bound (they need the dispatcher
    /// as their inbound handler first).
    pub fn attach(&self, transports: Transports) {
        let _ = self.shared.transports.set(transports);
    }

    /// Stop taking new calls: new INVITEs get 503 so callers try another node.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Calls on this node that have not ended yet.
    pub fn active_calls(&self) -> u64 {
        self.shared.live_calls.load(Ordering::Relaxed)
    }

    fn reply(&self, rx: &Received, resp: &Response, method: &Method) {
        self.shared
            .metrics
            .response(Direction::Out, method, resp.status);
        if let Some(t) = self.shared.transports.get() {
            t.send(&rx.peer, resp.encode());
        }
    }

    fn bad_input(&self, rx: &Received, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.shared.metrics.parse_error(reason);
        if self.shared.log_budget.allow() {
            tracing::warn!(peer = %rx.peer.addr, transport = %rx.peer.transport, reason, error = %detail, "bad SIP message");
        }
    }

    fn on_parse_error(&self, rx: &Received, err: trunkline_sip::ParseError) {
        self.bad_input(rx, err.reason(), &err);
        // Answer 400 when enough headers survive to address it (never to a response).
        let Some(s) = salvage(&rx.data) else { return };
        if !s.is_request {
            return;
        }
        let h = &s.headers;
        let addressable = h.get(HeaderName::Via).is_some()
            && h.get(HeaderName::From).is_some()
            && h.get(HeaderName::To).is_some()
            && h.get(HeaderName::CallId).is_some()
            && h.get(HeaderName::CSeq).is_some();
        if !addressable || h.cseq().is_some_and(|c| c.method == Method::Ack) {
            return;
        }
        let mut resp = Response {
            status: 400,
            reason: Bytes::from(format!("Bad Request - {}", err.reason().replace('_', " "))),
            version: Bytes::from_static(b"SIP/2.0"),
            headers: Headers::with_capacity(6),
            body: Bytes::new(),
        };
        for hdr in h.iter() {
            if matches!(
                hdr.kind,
                HeaderName::Via
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
            ) {
                resp.headers.push(hdr.clone());
            }
        }
        let method = h
            .cseq()
            .map(|c| c.method)
            .unwrap_or(Method::Extension("?".into()));
        self.reply(rx, &resp, &method);
    }

    fn on_response(&self, rx: &Received, resp: Response) {
        let method = resp.headers.cseq().map(|c| c.method);
        if let Err(reason) = validate_response(&resp) {
            self.bad_input(rx, "invalid_response", &reason);
            return;
        }
        if let Some(m) = &method {
            self.shared.metrics.response(Direction::In, m, resp.status);
        }
        let Some(call_id) = resp.headers.call_id() else {
            return;
        };
        let Some(entry) = self.shared.calls.get(call_id.as_ref()) else {
            // A response to nothing we have: drop silently (RFC 3261 §18.1.2).
            tracing::debug!(peer = %rx.peer.addr, "stray response dropped");
            return;
        };
        let (actor, leg) = (entry.0.clone(), entry.1);
        drop(entry);
        let _ = actor.send_message(CallMsg::Sip {
            leg,
            msg: Message::Response(resp),
            source: peer_of(rx),
        });
    }

    fn on_request(&self, rx: &Received, mut req: Request) {
        self.shared.metrics.request(Direction::In, &req.method);
        let node = self.shared.call_config.node_id.as_str();
        if let Err(rejection) = validate_request(&req, &self.shared.policy) {
            if self.shared.log_budget.allow() {
                tracing::info!(peer = %rx.peer.addr, status = rejection.status, reason = rejection.reason, "request rejected");
            }
            if req.method != Method::Ack {
                let resp = stateless::reject(&req, &rejection, node);
                self.reply(rx, &resp, &req.method);
            }
            return;
        }
        stamp_top_via(&mut req.headers, rx, self.shared.force_rport);
        let Some(call_id) = req.headers.call_id().cloned() else {
            return;
        };
        if let Some(entry) = self.shared.calls.get(call_id.as_ref()) {
            let (actor, leg) = (entry.0.clone(), entry.1);
            drop(entry);
            let _ = actor.send_message(CallMsg::Sip {
                leg,
                msg: Message::Request(req),
                source: peer_of(rx),
            });
            return;
        }
        let has_to_tag = req.headers.to_addr().is_some_and(|t| t.tag().is_some());
        match req.method {
            Method::Invite if !has_to_tag => self.new_call(rx, req, call_id),
            Method::Ack => {}
            Method::Options if !has_to_tag => {
                let draining = self.shared.draining.load(Ordering::Relaxed);
                let resp = stateless::options(&req, node, draining);
                self.reply(rx, &resp, &req.method);
            }
            Method::Register => {
                let resp = stateless::register(&req, node, rand::random());
                self.reply(rx, &resp, &req.method);
            }
            _ => {
                let resp = stateless::no_dialog(&req, node);
                self.reply(rx, &resp, &req.method);
            }
        }
    }

    fn new_call(&self, rx: &Received, req: Request, call_id: Bytes) {
        let node = self.shared.call_config.node_id.as_str();
        let draining = self.shared.draining.load(Ordering::Relaxed);
        if draining || self.shared.calls.len() >= self.shared.max_calls.saturating_mul(2) {
            let resp = stateless::unavailable(&req, node);
            self.reply(rx, &resp, &req.method);
            return;
        }
        let Some(local) = self.shared.local_for(rx.peer.transport) else {
            return;
        };
        let key = Bytes::copy_from_slice(&call_id);
        let source = peer_of(rx);
        match self.shared.calls.entry(key.clone()) {
            Entry::Occupied(e) => {
                // Raced with a retransmission on another receive task: hand it over.
                let _ = e.get().0.send_message(CallMsg::Sip {
                    leg: e.get().1,
                    msg: Message::Request(req),
                    source,
                });
            }
            Entry::Vacant(v) => {
                let args = CallArgs {
                    shared: self.shared.clone(),
                    invite: req,
                    source,
                    local: Local {
                        host: local.host,
                        ..local
                    },
                    seed: self.shared.next_seed(),
                    a_key: key,
                };
                match actor::spawn(args) {
                    Ok(actor) => {
                        v.insert((actor, Leg::A));
                    }
                    Err(e) => tracing::error!(error = %e, "cannot start call actor"),
                }
            }
        }
    }
}

impl Inbound for Dispatcher {
    fn on_message(&self, rx: Received) {
        match parse_message(rx.data.clone()) {
            Ok(Message::Request(req)) => self.on_request(&rx, req),
            Ok(Message::Response(resp)) => self.on_response(&rx, resp),
            Err(e) => self.on_parse_error(&rx, e),
        }
    }

    fn on_send_error(
        &self,
        peer: &Peer,
        _token: Option<u64>,
        error: &trunkline_transport::TransportError,
    ) {
        tracing::debug!(peer = %peer.addr, error = %error, "send failed");
    }
}

fn peer_of(rx: &Received) -> Peer {
    rx.peer
}

/// RFC 3261 §18.2.1 / RFC 3581: records where the request really came from in its
/// top Via, so every response we build from it carries `received`/`rport`.
fn stamp_top_via(headers: &mut Headers, rx: &Received, force_rport: bool) {
    let Some(h) = headers.first_mut(HeaderName::Via) else {
        return;
    };
    let Some(values) = trunkline_sip::scan::split_commas(&h.value) else {
        return;
    };
    let Some(first) = values.first() else { return };
    let Some(mut via) = trunkline_sip::Via::parse(first) else {
        return;
    };
    let reliable = rx.peer.transport.is_reliable();
    via.stamp_received(rx.peer.addr, force_rport && !reliable);
    let mut out = via.to_string();
    for v in &values[1..] {
        out.push_str(", ");
        out.push_str(&String::from_utf8_lossy(v));
    }
    h.value = Bytes::from(out);
}

//! The hot path from a received message to a call actor's mailbox.
//!
//! A message crosses the dispatcher once: it is parsed, then classified — validated,
//! checked against the source rules, matched to a call by dialog or transaction — into
//! one [`Action`], which is then carried out: a stateless answer, a hand-over to a call
//! actor, or a new call (ARCHITECTURE.md rule 3). Strangers, floods and strays cost no
//! call state: they are answered (or ignored) here.

use crate::actor;
use crate::directory::{CallDirectory, CallRecord};
use crate::limits::{TrunkSlot, Way};
use crate::media::MediaControl;
use crate::messages::{CallArgs, CallMsg};
use crate::metrics::{CallMetrics, Direction};
use crate::outbound::Outbound;
use crate::registry::{CallHandle, DialogKey, InitialInvite, Undelivered};
use crate::router::{Router, Routing};
use crate::shared::{token_target, DispatcherConfig, Shared};
use crate::stateless;
use crate::trust::{Origin, Trust};
use bytes::Bytes;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use trunkline_b2bua::Leg;
use trunkline_sip::validate::{validate_request, validate_response};
use trunkline_sip::{
    parse_message, salvage, HeaderName, Headers, Message, Method, Params, Peer, Request, Response,
};

/// What one received message comes to.
// Built and consumed at once for every message; boxing the big variants would add an
// allocation per message.
#[allow(clippy::large_enum_variant)]
enum Action {
    /// Nothing to send (already counted and, within budget, logged).
    Drop,
    /// A stateless answer; `method` is the request's, for metrics.
    Reply { resp: Response, method: Method },
    /// Send `data` to `to` again: a call that is gone answering a retransmission.
    Replay { data: Bytes, to: Peer },
    /// Hand the message to a call.
    Deliver {
        handle: CallHandle,
        leg: Leg,
        msg: Message,
    },
    /// An INVITE without To-tag from a trusted source: a retransmission, a merged
    /// request, or a new call, decided against the registry under its lock.
    Invite {
        req: Request,
        origin: Origin,
        routing: Arc<Routing>,
    },
    /// A message of a dialog another node of the cluster made (its id is in the tag or
    /// branch): sent to that node as it came.
    Forward { owner: String },
}

/// Why a call of a node that is gone was not taken over.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AdoptFailure {
    #[error("the replica does not decode: {0}")]
    Undecodable(String),
    #[error("the call did not start: {0}")]
    NotStarted(String),
    /// The call was still ringing on its node: nothing of it can be taken over.
    #[error("call {0} was still ringing on the dead node")]
    Ringing(String),
}

/// Why a call the node was asked to place did not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OriginateFailure {
    #[error("the node is draining: it places no new calls")]
    Draining,
    #[error("the node is at its call limit")]
    Overloaded,
    /// `field` names the party ("a" or "b").
    #[error("{field}: {error}")]
    Target {
        field: &'static str,
        error: crate::router::TargetError,
    },
    #[error("{field}: no listener for the trunk's transport")]
    NoTransport { field: &'static str },
    #[error("the call could not be started")]
    Internal,
}

/// Why an operator's hang-up was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HangupError {
    #[error("no such call on this node")]
    NotFound,
    #[error("the call has already ended")]
    Ended,
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
        trust: Trust,
        metrics: CallMetrics,
        media: Option<Arc<MediaControl>>,
    ) -> Dispatcher {
        Dispatcher {
            shared: Arc::new(Shared::new(cfg, router, trust, metrics, media)),
        }
    }

    /// Removes the node's registrations at every trunk (REGISTER with Expires 0) and
    /// waits up to `limit` for the registrars to answer (challenges are answered as
    /// usual): called once the node has stopped taking calls and is about to exit.
    pub async fn unregister(&self, limit: std::time::Duration) {
        let shared = &self.shared;
        let sends = {
            let routing = shared.routing.load();
            let trunks = routing.router.trunks();
            let sends = shared
                .registrations
                .unregister_all(trunks, now(), |t| me_on(shared, t));
            for s in &sends {
                tracing::info!(trunk = %s.trunk, "removing the registration at the trunk");
            }
            sends
        };
        if sends.is_empty() {
            return;
        }
        {
            let routing = shared.routing.load();
            for s in sends {
                send_register(shared, routing.router.trunks(), s);
            }
        }
        let deadline = tokio::time::Instant::now() + limit;
        while shared.registrations.unregistering() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        register_to_trunks(shared);
    }

    /// What `trunk`'s OPTIONS pings have shown (`None`: it is not pinged).
    pub fn trunk_health(&self, trunk: &str) -> Option<crate::health::TrunkStatus> {
        self.shared.health.status(trunk)
    }

    /// The node's registration to `trunk` (`None`: it does not register there, or has
    /// not started to).
    pub fn trunk_registration(&self, trunk: &str) -> Option<crate::registration::RegStatus> {
        self.shared.registrations.status(trunk)
    }

    /// The trunks, routes and trust rules new calls get from now on (an operator's
    /// change through the admin API). Calls in progress keep theirs.
    pub fn set_routing(&self, router: Router, trust: Trust) {
        // Named trunks keep the targets already resolved for them.
        let router = router.with_dns(&self.shared.dns);
        self.shared
            .routing
            .store(Arc::new(Routing { router, trust }));
    }

    /// The trunks, routes and trust rules in force.
    pub fn routing(&self) -> Arc<Routing> {
        self.shared.routing.load_full()
    }

    /// Every call of the node, as the admin API reads them.
    pub fn calls(&self) -> &Arc<CallDirectory> {
        &self.shared.directory
    }

    /// Ends call `serial` from the node's side (an operator's hang-up): BYE on both legs
    /// of an answered call, CANCEL toward the callee and a final answer to the caller of
    /// one still ringing, each with `reason` as its RFC 3326 `Reason` header.
    pub fn hangup(&self, serial: u64, reason: Option<Bytes>) -> Result<(), HangupError> {
        let record = self
            .shared
            .directory
            .find(serial)
            .ok_or(HangupError::NotFound)?;
        if record.ended_ms().is_some() {
            return Err(HangupError::Ended);
        }
        let handle = self
            .shared
            .registry
            .by_serial(serial)
            .ok_or(HangupError::Ended)?;
        handle
            .actor
            .send_message(CallMsg::Hangup { reason })
            .map_err(|_| HangupError::Ended)
    }

    /// Sends settled calls' state to `r` from now on (cluster mode).
    pub fn set_replicator(&self, r: Arc<dyn crate::replicate::Replicate>) {
        let _ = self.shared.replicator.set(r);
    }

    /// Moves `leg` of answered call `serial` to `number` (through `trunk`, or where the
    /// routing table sends the number) and waits for the outcome: the target answered and
    /// the other leg took its session, or why not.
    pub async fn transfer(
        &self,
        serial: u64,
        leg: trunkline_b2bua::Leg,
        number: String,
        trunk: Option<String>,
    ) -> Result<(), crate::messages::TransferFailure> {
        use crate::messages::TransferFailure;
        let record = self
            .shared
            .directory
            .find(serial)
            .ok_or(TransferFailure::NotFound)?;
        if record.ended_ms().is_some() {
            return Err(TransferFailure::Ended);
        }
        let handle = self
            .shared
            .registry
            .by_serial(serial)
            .ok_or(TransferFailure::Ended)?;
        let (reply, outcome) = tokio::sync::oneshot::channel();
        handle
            .actor
            .send_message(CallMsg::Transfer {
                leg,
                number,
                trunk,
                reply,
            })
            .map_err(|_| TransferFailure::Ended)?;
        // A call that stops without answering has ended.
        outcome.await.unwrap_or(Err(TransferFailure::Ended))
    }

    /// Places a call between `a` and `b` (each a number, and the trunk to reach it
    /// through, or `None` for the routing table's choice): A is called at once, B once A
    /// has answered. Returns the new call's record; its progress shows in the directory.
    pub async fn originate(
        &self,
        a: (String, Option<String>),
        b: (String, Option<String>),
    ) -> Result<Arc<CallRecord>, OriginateFailure> {
        let shared = &self.shared;
        if shared.draining.load(Ordering::Relaxed) {
            return Err(OriginateFailure::Draining);
        }
        let routing = shared.routing.load_full();
        let side = |field: &'static str, (number, trunk): &(String, Option<String>)| {
            let t = routing
                .router
                .target(number, trunk.as_deref())
                .map_err(|e| OriginateFailure::Target { field, error: e })?
                .clone();
            let local = shared
                .local_for(t.transport, t.local, Some(t.addr))
                .ok_or(OriginateFailure::NoTransport { field })?;
            let party = trunkline_b2bua::Party {
                peer: t.peer(),
                local,
                request_uri: t.request_uri(Some(number)),
            };
            Ok::<_, OriginateFailure>((t, party))
        };
        let (a_trunk, a_party) = side("a", &a)?;
        let (b_trunk, b_party) = side("b", &b)?;
        if !shared.admit() {
            shared.metrics.rejected("overload");
            return Err(OriginateFailure::Overloaded);
        }
        let serial = shared.next_serial();
        let queued = Arc::new(AtomicUsize::new(0));
        let args = crate::messages::OriginateArgs {
            a: a_party,
            b: b_party,
            a_number: a.0,
            b_number: b.0,
            anchor_media: b_trunk.anchor_media && shared.media.is_some(),
            a_trunk,
            b_trunk,
            seed: shared.next_seed(),
            serial,
            queued: queued.clone(),
            routing,
        };
        match actor::spawn_originated(shared.clone(), args).await {
            Ok(_) => shared
                .directory
                .find(serial)
                .ok_or(OriginateFailure::Internal),
            Err(e) => {
                shared.release();
                tracing::error!(error = %e, "cannot start call actor");
                Err(OriginateFailure::Internal)
            }
        }
    }

    /// Takes over a call of a node that is gone, from the state its buddy holds (a
    /// record `replicate::encode_settled` wrote): the call is restored here and both legs are re-INVITEd
    /// toward this node. Not refused while draining or at the call limit: the call is
    /// already up, and refusing it would drop it.
    pub async fn adopt(&self, state: &[u8]) -> Result<(), AdoptFailure> {
        let shared = &self.shared;
        let replica = match crate::replicate::decode(state) {
            Ok(crate::replicate::Record::Settled(r)) => *r,
            Ok(crate::replicate::Record::Ringing { id }) => {
                shared.adoptions.failed.fetch_add(1, Ordering::Relaxed);
                return Err(AdoptFailure::Ringing(id));
            }
            Err(e) => {
                shared.adoptions.failed.fetch_add(1, Ordering::Relaxed);
                return Err(AdoptFailure::Undecodable(e.to_string()));
            }
        };
        shared.take_slot();
        let args = crate::messages::AdoptArgs {
            replica,
            seed: shared.next_seed(),
            serial: shared.next_serial(),
            queued: Arc::new(AtomicUsize::new(0)),
            routing: shared.routing.load_full(),
        };
        // A failed start has already given its slot back and counted itself.
        actor::spawn_adopted(shared.clone(), args)
            .await
            .map(|_| ())
            .map_err(|e| AdoptFailure::NotStarted(e.to_string()))
    }

    /// Stops every call actor without sending anything for its call: the calls were
    /// handed over to buddies, which re-INVITE both legs toward themselves. The node's
    /// own records of them close as it leaves.
    /// Calls that were not answered yet (never replicated, so nobody took them) are hung
    /// up instead: their callers get a final answer rather than silence.
    pub fn let_go_all(&self) -> usize {
        let handles = self.shared.registry.handles();
        let mut released = 0;
        for h in &handles {
            let answered = self
                .shared
                .directory
                .get(h.serial)
                .is_some_and(|r| r.answered_ms().is_some());
            if answered {
                h.actor.stop(Some("handed over".into()));
                released += 1;
            } else {
                let _ = h.actor.send_message(CallMsg::Hangup { reason: None });
            }
        }
        released
    }

    /// Lets go of the calls among `ids` that this node still has (another node adopted
    /// them while this one was cut off): their actors stop without sending anything.
    /// Returns how many were here.
    pub fn let_go(&self, ids: &[String]) -> u32 {
        let node = self.shared.node();
        let mut released = 0;
        for id in ids {
            let Some((n, serial)) = id.rsplit_once('-') else {
                continue;
            };
            let Ok(serial) = u64::from_str_radix(serial, 16) else {
                continue;
            };
            let record = if n == node {
                self.shared.directory.get(serial)
            } else {
                self.shared.directory.find_adopted(n, serial)
            };
            let Some(handle) = record.and_then(|r| self.shared.registry.by_serial(r.serial)) else {
                continue;
            };
            if handle.actor.send_message(CallMsg::LetGo).is_ok() {
                released += 1;
            }
        }
        released
    }

    /// Calls adopted so far, and adoptions that failed.
    pub fn adoptions(&self) -> (u64, u64) {
        let c = &self.shared.adoptions;
        (
            c.adopted.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
        )
    }

    /// The relay's counters of a call's media, when it is anchored and still has ports.
    pub fn media_stats(&self, record: &CallRecord) -> Option<trunkline_media::CallStats> {
        self.shared
            .media
            .as_ref()?
            .relay()
            .query(&record.media_key, now())
    }

    /// Completes the wiring once the transports are bound (they need the dispatcher
    /// as their inbound handler first).
    pub fn attach(&self, outbound: Arc<dyn Outbound>) {
        self.shared.attach(outbound);
        // Forget what gone calls left behind once it has expired (see `Grave`).
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let shared = Arc::downgrade(&self.shared);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    shared.registry.sweep(now());
                }
            });
            // Resolve the trunks named by DNS (see `dns`), off every call's path.
            let shared = Arc::downgrade(&self.shared);
            let dns_cfg = self.shared.cfg.dns.clone();
            rt.spawn(async move {
                let resolver = match crate::dns::resolver(&dns_cfg) {
                    Ok(r) => Arc::new(r),
                    Err(e) => {
                        tracing::error!(error = %e, "no DNS resolver: trunks named by DNS stay unreachable");
                        return;
                    }
                };
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    resolve_trunks(&shared, &resolver, &dns_cfg);
                }
            });
            // Ping the trunks that ask for it (see `health`).
            let shared = Arc::downgrade(&self.shared);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(std::time::Duration::from_millis(250));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(shared) = shared.upgrade() else {
                        break;
                    };
                    ping_trunks(&shared);
                    register_to_trunks(&shared);
                }
            });
        }
    }

    /// Stop taking new calls: new INVITEs get 503 so callers try another node.
    pub fn begin_drain(&self) {
        self.shared.draining.store(true, Ordering::Relaxed);
    }

    /// Take new calls again after `begin_drain` (an operator's undrain).
    pub fn end_drain(&self) {
        self.shared.draining.store(false, Ordering::Relaxed);
    }

    /// Whether new INVITEs are refused with 503.
    pub fn is_draining(&self) -> bool {
        self.shared.draining.load(Ordering::Relaxed)
    }

    /// Calls on this node that have not ended yet.
    pub fn active_calls(&self) -> u64 {
        self.shared.live_calls()
    }

    /// Calls with an actor, ended ones still absorbing retransmissions included.
    pub fn call_actors(&self) -> usize {
        self.shared.registry.calls()
    }

    /// Entries of the dispatch index; returns to zero when every call is gone.
    pub fn index_entries(&self) -> usize {
        self.shared.registry.entries()
    }

    /// One framed message from the network: `source` is where it came from (and the
    /// socket it arrived at, `source.local`).
    pub fn on_received(&self, source: Peer, data: Bytes) {
        if self.source_blocked(&source) {
            return;
        }
        self.receive(source, data, true);
    }

    /// Counts a message against its source's limit (see `pike`); true when the source is
    /// blocked and the message is to be dropped unread. Trunks are never counted here,
    /// the access networks only when the node says so.
    fn source_blocked(&self, source: &Peer) -> bool {
        let shared = &self.shared;
        let limit = &shared.source_limit;
        if limit.config().max_requests == 0 && limit.config().max_auth_failures == 0 {
            return false;
        }
        let counted = match shared.routing.load().trust.classify(source) {
            Origin::Trunk(_) => false,
            Origin::Access => limit.config().include_access,
            Origin::Unknown => true,
        };
        if !counted {
            return false;
        }
        match limit.check(source.addr.ip(), now()) {
            crate::pike::Verdict::Pass => false,
            crate::pike::Verdict::Blocked => {
                shared.metrics.source_blocked();
                tracing::warn!(source = %source.addr.ip(), "source past the request limit: blocked");
                true
            }
            crate::pike::Verdict::Dropped => {
                shared.metrics.source_dropped();
                true
            }
        }
    }

    /// A message another node of the cluster received for a dialog of this node and
    /// forwarded here, with where it came from. It is handled as if it had arrived here
    /// (answers leave from this node's socket), and never forwarded again.
    pub fn on_forwarded(&self, source: Peer, data: Bytes) {
        self.shared.metrics.forwarded(Direction::In);
        self.receive(source, data, false);
    }

    fn receive(&self, source: Peer, data: Bytes, may_forward: bool) {
        let action = match parse_message(data.clone()) {
            Ok(Message::Request(req)) => self.classify_request(&source, req, may_forward),
            Ok(Message::Response(resp)) => self.classify_response(&source, resp, may_forward),
            Err(e) => self.classify_garbage(&source, &data, e),
        };
        if let Action::Forward { owner } = &action {
            let sent = self
                .shared
                .strays
                .get()
                .is_some_and(|s| s.forward(owner, data, source));
            if sent {
                self.shared.metrics.forwarded(Direction::Out);
            }
            return;
        }
        self.act(&source, action);
    }

    /// Sends `data` for another node whose dialog's peer talks to us
    /// (`Replication/Emit`): to `peer`, from our socket `peer.local`, and over a stream
    /// on our connection `peer.connection` while it is open (else on a new one to
    /// `peer.addr`, RFC 3261 §18.2.2). Never to a peer reached through a third node.
    pub fn send_for_other(&self, peer: Peer, data: Bytes) {
        if peer
            .connection
            .and_then(crate::replicate::via_parts)
            .is_some()
        {
            return;
        }
        self.shared.metrics.sent_for_others();
        self.shared.send(&peer, data, None);
    }

    /// Sends what names another node's dialogs to that node from now on (cluster mode).
    pub fn set_strays(&self, s: Arc<dyn crate::replicate::Strays>) {
        let _ = self.shared.strays.set(s);
    }

    /// The live node that made identifier `id` (a tag or branch), when it is not this
    /// one and a stray may go there (over a stream, the owner's answers come back here
    /// for the peer's connection).
    fn owner_elsewhere(&self, id: &[u8], may_forward: bool) -> Option<String> {
        if !may_forward {
            return None;
        }
        let strays = self.shared.strays.get()?;
        let id = std::str::from_utf8(id).ok()?;
        let owner = trunkline_b2bua::owner_of(id)?;
        (owner != self.shared.node() && strays.is_live(owner)).then(|| owner.to_string())
    }

    /// A send with `token` failed at the transport: the call hears of it at once, so a
    /// trunk that refuses connections gives the caller a 503 now (RFC 3261 §8.1.3.1),
    /// not a 408 after Timer B.
    pub fn on_send_error(&self, peer: &Peer, token: Option<u64>, error: &dyn std::fmt::Display) {
        tracing::debug!(peer = %peer.addr, error = %error, "send failed");
        let Some((serial, leg)) = token.map(token_target) else {
            return;
        };
        if let Some(h) = self.shared.registry.by_serial(serial) {
            let _ = h.actor.send_message(CallMsg::SendFailed { leg });
        }
    }

    // ----- classification ----------------------------------------------------------

    fn classify_garbage(
        &self,
        source: &Peer,
        data: &Bytes,
        err: trunkline_sip::ParseError,
    ) -> Action {
        self.bad_input(source, err.reason(), &err);
        // Answer 400 when enough headers survive to address it (never to a response,
        // never to a stranger).
        if !self
            .shared
            .routing
            .load()
            .trust
            .classify(source)
            .is_trusted()
        {
            return Action::Drop;
        }
        let Some(s) = salvage(data) else {
            return Action::Drop;
        };
        if !s.is_request {
            return Action::Drop;
        }
        let h = &s.headers;
        let addressable = [
            HeaderName::Via,
            HeaderName::From,
            HeaderName::To,
            HeaderName::CallId,
            HeaderName::CSeq,
        ]
        .iter()
        .all(|k| h.get(*k).is_some());
        if !addressable || h.cseq().is_some_and(|c| c.method == Method::Ack) {
            return Action::Drop;
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
        Action::Reply { resp, method }
    }

    fn classify_response(&self, source: &Peer, resp: Response, may_forward: bool) -> Action {
        if let Err(reason) = validate_response(&resp) {
            self.bad_input(source, "invalid_response", &reason);
            return Action::Drop;
        }
        if let Some(c) = resp.headers.cseq() {
            self.shared
                .metrics
                .response(Direction::In, &c.method, resp.status);
        }
        // An answer to one of the node's trunk pings.
        if let Some(branch) = resp
            .headers
            .top_branch()
            .and_then(|b| std::str::from_utf8(b).ok())
            .filter(|b| b.starts_with(crate::health::BRANCH))
        {
            let routing = self.shared.routing.load();
            let change = self.shared.health.on_response(
                branch,
                resp.status,
                source.addr,
                routing.router.trunks(),
            );
            if let Some(c) = change {
                health_changed(&self.shared, &c);
            }
            return Action::Drop;
        }
        // An answer to one of the node's REGISTERs.
        if resp
            .headers
            .top_branch()
            .is_some_and(|b| b.starts_with(crate::registration::BRANCH.as_bytes()))
        {
            let routing = self.shared.routing.load();
            let trunks = routing.router.trunks();
            let (send, change) =
                self.shared
                    .registrations
                    .on_response(&resp, source.addr, trunks, now(), |t| {
                        me_on(&self.shared, t)
                    });
            if let Some(c) = change {
                registration_changed(&self.shared, &c);
            }
            if let Some(s) = send {
                send_register(&self.shared, trunks, s);
            }
            return Action::Drop;
        }
        // A response to a request the node sent carries the node's tag in From.
        let (Some(call_id), Some(tag)) = (resp.headers.call_id(), resp.headers.from_tag()) else {
            return Action::Drop;
        };
        match self.shared.registry.dialog(call_id, tag) {
            Some((handle, leg)) => Action::Deliver {
                handle,
                leg,
                msg: Message::Response(resp),
            },
            None => {
                // A call that is gone re-ACKs a retransmitted final; anything else is a
                // response to nothing we have: drop it silently (RFC 3261 §18.1.2).
                let replay = resp.headers.top_branch().and_then(|branch| {
                    self.shared
                        .registry
                        .replay(call_id, tag, branch, false, now())
                });
                match replay {
                    Some(r) => Action::Replay {
                        data: r.data,
                        to: r.peer,
                    },
                    None => match self.owner_elsewhere(tag, may_forward) {
                        Some(owner) => Action::Forward { owner },
                        None => {
                            tracing::debug!(peer = %source.addr, "stray response dropped");
                            Action::Drop
                        }
                    },
                }
            }
        }
    }

    fn classify_request(&self, source: &Peer, mut req: Request, may_forward: bool) -> Action {
        let shared = &self.shared;
        shared.metrics.request(Direction::In, &req.method);
        // In a cluster, a dialog another node made is that node's business: its owner
        // decides (trust included), and answers.
        // (An adopted call's tags name the node it came from, so a dialog found here
        // stays here whatever its tag says.)
        if let Some(to_tag) = req.headers.to_tag() {
            if let Some(owner) = self.owner_elsewhere(to_tag, may_forward) {
                let here = req
                    .headers
                    .call_id()
                    .is_some_and(|c| shared.registry.dialog(c, to_tag).is_some());
                if !here {
                    return Action::Forward { owner };
                }
            }
        }
        let routing = shared.routing.load();
        let mut origin = routing.trust.classify(source);
        if !origin.is_trusted() && !self.names_live_dialog(&req) {
            match self.authenticate(source, &req, &routing) {
                Some(Ok(trunk)) => origin = Origin::Trunk(trunk),
                Some(Err(action)) => return *action,
                None => return self.untrusted(source, &req),
            }
        }
        if let Err(rejection) = validate_request(&req, &shared.policy) {
            if shared.log_budget.allow() {
                tracing::info!(peer = %source.addr, status = rejection.status, reason = rejection.reason, "request rejected");
            }
            if req.method == Method::Ack {
                return Action::Drop;
            }
            let resp = stateless::reject(&req, &rejection, shared.node());
            return Action::Reply {
                resp,
                method: req.method,
            };
        }
        let alias = stamp_top_via(&mut req.headers, source, shared.cfg.force_rport);
        if let (Some(addr), Some(connection)) = (alias, source.connection) {
            shared.alias(connection, addr);
        }
        let Some(call_id) = req.headers.call_id().cloned() else {
            return Action::Drop;
        };
        let node = shared.node();
        if let Some(to_tag) = req.headers.to_tag() {
            // In a dialog: one of ours, or nothing at all.
            return match shared.registry.dialog(&call_id, to_tag) {
                Some((handle, leg)) => Action::Deliver {
                    handle,
                    leg,
                    msg: Message::Request(req),
                },
                None if req.method == Method::Ack => Action::Drop,
                None => match self.replay_to(source, &call_id, to_tag, &req) {
                    Some(action) => action,
                    None => self.reply(stateless::no_dialog(&req, node), req.method),
                },
            };
        }
        match req.method {
            Method::Invite if origin.is_trusted() => Action::Invite {
                req,
                origin,
                routing: arc_swap::Guard::into_inner(routing),
            },
            // Only a request inside a live dialog gets this far from a stranger.
            _ if !origin.is_trusted() => self.untrusted(source, &req),
            Method::Cancel => self.classify_cancel(source, &call_id, req),
            Method::Ack => Action::Drop,
            Method::Options => {
                let draining = shared.draining.load(Ordering::Relaxed);
                self.reply(stateless::options(&req, node, draining), req.method)
            }
            Method::Register => {
                self.reply(stateless::register(&req, node, rand::random()), req.method)
            }
            _ => self.reply(stateless::no_dialog(&req, node), req.method),
        }
    }

    /// A CANCEL goes to the call whose pending INVITE it names (same Call-ID, From-tag
    /// and branch, RFC 3261 §9.2); anything else gets 481 here.
    fn classify_cancel(&self, source: &Peer, call_id: &Bytes, req: Request) -> Action {
        let pending = req
            .headers
            .from_tag()
            .and_then(|tag| self.shared.registry.invite(call_id, tag));
        match pending {
            Some(e) if req.headers.top_branch() == Some(&e.branch[..]) => Action::Deliver {
                handle: e.handle,
                leg: Leg::A,
                msg: Message::Request(req),
            },
            Some(_) => self.reply(stateless::no_dialog(&req, self.shared.node()), req.method),
            None => {
                let replay = req
                    .headers
                    .from_tag()
                    .and_then(|tag| self.replay_to(source, call_id, tag, &req));
                match replay {
                    Some(action) => action,
                    None => self.reply(stateless::no_dialog(&req, self.shared.node()), req.method),
                }
            }
        }
    }

    /// The answer a gone call left for a retransmission of `req`, sent where the
    /// retransmission came from.
    fn replay_to(
        &self,
        source: &Peer,
        call_id: &[u8],
        tag: &[u8],
        req: &Request,
    ) -> Option<Action> {
        let branch = req.headers.top_branch()?;
        let r = self
            .shared
            .registry
            .replay(call_id, tag, branch, true, now())?;
        self.shared.metrics.retransmission(Direction::In);
        Some(Action::Replay {
            data: r.data,
            to: *source,
        })
    }

    /// A request from a source no rule names: 403, or silence when the node is told not
    /// to answer strangers. Nothing is kept.
    /// Whether `req` names a dialog the node has (a To-tag of its own): such a request
    /// reaches its call from any source, so a call outlives a change of the trust rules
    /// (a trunk deleted or its sources narrowed) and a caller whose address moved. A
    /// stranger would have to know the Call-ID and the node's random tag.
    fn names_live_dialog(&self, req: &Request) -> bool {
        match (req.headers.call_id(), req.headers.to_tag()) {
            (Some(call_id), Some(tag)) => self.shared.registry.dialog(call_id, tag).is_some(),
            // A retransmitted INVITE, or a CANCEL, of a call an authenticated peer
            // started: its transaction is known (its credentials were checked once, and
            // a retransmission's would look replayed).
            (Some(call_id), None) if matches!(req.method, Method::Invite | Method::Cancel) => {
                let (Some(tag), Some(branch)) = (req.headers.from_tag(), req.headers.top_branch())
                else {
                    return false;
                };
                let registry = &self.shared.registry;
                let pending = registry.invite(call_id, tag);
                if pending.is_some_and(|e| branch == &e.branch[..]) {
                    return true;
                }
                // A late copy of the INVITE of a call that has ended: absorbed below.
                req.method == Method::Invite
                    && req
                        .headers
                        .cseq()
                        .is_some_and(|c| registry.ended_invite(call_id, tag, c.seq, branch, now()))
            }
            _ => false,
        }
    }

    /// Digest authentication of an INVITE from a source no rule names, when some trunk
    /// has credentials: `None` when it does not apply (the source is untrusted),
    /// `Some(Ok(trunk))` when the credentials prove that trunk, `Some(Err(action))` for
    /// the challenge or refusal to send. Nothing is kept for the caller either way.
    fn authenticate(
        &self,
        source: &Peer,
        req: &Request,
        routing: &Routing,
    ) -> Option<Result<usize, Box<Action>>> {
        let shared = &self.shared;
        let digest = shared.digest.as_ref()?;
        if req.method != Method::Invite || !routing.router.has_credentials() {
            return None;
        }
        let node = shared.node();
        let verdict = digest.verify(
            "INVITE",
            req.headers
                .get_all(HeaderName::ProxyAuthorization)
                .map(|v| &v[..]),
            |user| routing.router.by_username(user).map(|(_, c)| c),
            crate::digest::epoch_secs(),
        );
        let challenge = |stale: bool| {
            let mut resp = stateless::respond(req, 407, node);
            for value in digest.challenge(crate::digest::epoch_secs(), stale) {
                resp.headers.add(HeaderName::ProxyAuthenticate, value);
            }
            Err(Box::new(self.reply(resp, req.method.clone())))
        };
        Some(match verdict {
            crate::digest::Verdict::Missing => {
                shared.metrics.auth("challenged");
                challenge(false)
            }
            crate::digest::Verdict::Stale => {
                shared.metrics.auth("stale");
                challenge(true)
            }
            crate::digest::Verdict::Valid { username } => {
                shared.metrics.auth("valid");
                let trunk = routing.router.by_username(&username).map(|(i, _)| i)?;
                shared.source_limit.vouch(
                    source.addr.ip(),
                    now(),
                    std::time::Duration::from_secs(300),
                );
                Ok(trunk)
            }
            crate::digest::Verdict::Invalid(why) => {
                shared.metrics.auth("invalid");
                if shared.log_budget.allow() {
                    tracing::info!(peer = %source.addr, reason = why, "digest authentication failed");
                }
                if shared.source_limit.auth_failed(source.addr.ip(), now()) {
                    shared.metrics.source_blocked();
                    tracing::warn!(source = %source.addr.ip(), "source blocked after failed authentications");
                }
                Err(Box::new(
                    self.reply(stateless::forbidden(req, node), req.method.clone()),
                ))
            }
        })
    }

    fn untrusted(&self, source: &Peer, req: &Request) -> Action {
        self.shared.metrics.rejected("untrusted_source");
        if self.shared.log_budget.allow() {
            tracing::info!(peer = %source.addr, method = %req.method, "request from an untrusted source refused");
        }
        if !self.shared.cfg.reply_to_unknown || req.method == Method::Ack {
            return Action::Drop;
        }
        self.reply(
            stateless::forbidden(req, self.shared.node()),
            req.method.clone(),
        )
    }

    fn reply(&self, resp: Response, method: Method) -> Action {
        Action::Reply { resp, method }
    }

    // ----- acting -------------------------------------------------------------------

    fn act(&self, source: &Peer, action: Action) {
        match action {
            Action::Drop | Action::Forward { .. } => {}
            Action::Reply { resp, method } => self.send_reply(source, &resp, &method),
            Action::Replay { data, to } => {
                self.shared.metrics.retransmission(Direction::Out);
                self.shared.send(&to, data, None);
            }
            Action::Deliver { handle, leg, msg } => {
                let sip = CallMsg::Sip {
                    leg,
                    msg,
                    source: *source,
                };
                if let Err(Undelivered(back)) = handle.deliver(sip) {
                    self.shared.metrics.rejected("mailbox_full");
                    if let Some(CallMsg::Sip {
                        msg: Message::Request(req),
                        ..
                    }) = back.map(|m| *m)
                    {
                        if req.method != Method::Ack {
                            let resp = stateless::unavailable(&req, self.shared.node());
                            self.send_reply(source, &resp, &req.method);
                        }
                    }
                }
            }
            Action::Invite {
                req,
                origin,
                routing,
            } => self.initial_invite(source, req, origin, routing),
        }
    }

    fn send_reply(&self, source: &Peer, resp: &Response, method: &Method) {
        self.shared
            .metrics
            .response(Direction::Out, method, resp.status);
        self.shared.send(source, resp.encode(), None);
    }

    fn initial_invite(&self, source: &Peer, req: Request, origin: Origin, routing: Arc<Routing>) {
        let shared = &self.shared;
        let node = shared.node();
        let (Some(call_id), Some(tag), Some(cseq), Some(branch)) = (
            req.headers.call_id(),
            req.headers.from_tag(),
            req.headers.cseq().map(|c| c.seq),
            req.headers.top_branch(),
        ) else {
            return;
        };
        let key = DialogKey::new(call_id, tag);
        let branch = Bytes::copy_from_slice(branch);
        let draining = shared.draining.load(Ordering::Relaxed);
        let congested = shared.receive_congested();
        let mut refusal = None;
        let mut invite = Some(req);
        let outcome = shared
            .registry
            .initial_invite(key.clone(), cseq, &branch, now(), || {
                if draining {
                    refusal = Some("draining");
                    return None;
                }
                // Behind its input, the node takes no new call: the ones in progress
                // finish instead of all failing once the kernel drops datagrams.
                if congested {
                    refusal = Some("congestion");
                    return None;
                }
                if !shared.admit() {
                    refusal = Some("overload");
                    return None;
                }
                let slot = match origin.trunk().and_then(|i| routing.router.trunks().get(i)) {
                    Some(trunk) => match shared.trunk_counters.admit(
                        &trunk.name,
                        Way::Inbound,
                        trunk.limits.inbound,
                        now(),
                    ) {
                        Ok(slot) => Some(slot),
                        Err(hit) => {
                            shared.release();
                            shared.metrics.trunk_limited(
                                &trunk.name,
                                Way::Inbound.as_str(),
                                hit.as_str(),
                            );
                            refusal = Some("trunk_limit");
                            return None;
                        }
                    },
                    None => None,
                };
                let started = invite
                    .take()
                    .and_then(|req| self.start_call(source, req, origin, key, routing, slot));
                if started.is_none() {
                    shared.release();
                    refusal = Some("internal");
                }
                started
            });
        let Some(req) = invite else {
            return;
        };
        match outcome {
            InitialInvite::Retransmission(handle) => {
                let sip = CallMsg::Sip {
                    leg: Leg::A,
                    msg: Message::Request(req),
                    source: *source,
                };
                let _ = handle.deliver(sip);
            }
            InitialInvite::Merged => {
                shared.metrics.rejected("merged");
                let resp = stateless::respond(&req, 482, node);
                self.send_reply(source, &resp, &req.method);
            }
            InitialInvite::Started(_) => {}
            InitialInvite::Ended => shared.metrics.retransmission(Direction::In),
            InitialInvite::Refused => {
                shared.metrics.rejected(refusal.unwrap_or("internal"));
                let resp = stateless::unavailable(&req, node);
                self.send_reply(source, &resp, &req.method);
            }
        }
    }

    /// Spawns the call actor for a new INVITE; its first message (the INVITE) is in
    /// `CallArgs`, and later ones queue in its mailbox until it runs.
    fn start_call(
        &self,
        source: &Peer,
        invite: Request,
        origin: Origin,
        invite_key: DialogKey,
        routing: Arc<Routing>,
        trunk_slot: Option<TrunkSlot>,
    ) -> Option<CallHandle> {
        let shared = &self.shared;
        let local = shared.local_for(source.transport, source.local, Some(source.addr))?;
        let serial = shared.next_serial();
        let queued = Arc::new(AtomicUsize::new(0));
        let args = CallArgs {
            invite,
            source: *source,
            origin,
            local,
            seed: shared.next_seed(),
            serial,
            invite_key,
            queued: queued.clone(),
            routing,
            trunk_slot,
        };
        match actor::spawn(shared.clone(), args) {
            Ok(actor) => Some(CallHandle {
                actor,
                queued,
                serial,
            }),
            Err(e) => {
                tracing::error!(error = %e, "cannot start call actor");
                None
            }
        }
    }

    fn bad_input(&self, source: &Peer, reason: &'static str, detail: &dyn std::fmt::Display) {
        self.shared.metrics.parse_error(reason);
        if self.shared.log_budget.allow() {
            tracing::warn!(peer = %source.addr, transport = %source.transport, reason, error = %detail, "bad SIP message");
        }
    }
}

/// RFC 3261 §18.2.1 / RFC 3581: records where the request really came from in its
/// top Via, so every response we build from it carries `received`/`rport`. Returns the
/// address a stream peer asks us to reach it at over this connection (RFC 5923
/// `alias`), taken only when its IP is the connection's own.
fn stamp_top_via(
    headers: &mut Headers,
    source: &Peer,
    force_rport: bool,
) -> Option<std::net::SocketAddr> {
    let h = headers.first_mut(HeaderName::Via)?;
    let (start, end) = trunkline_sip::scan::first_comma_range(&h.value)?;
    let via = trunkline_sip::ViaRef::parse(&h.value[start..end])?;
    let reliable = source.transport.is_reliable();
    let alias = (reliable && Params::find_header(via.params, "alias").is_some())
        .then(|| via.host.ip().zip(via.port))
        .flatten()
        .filter(|(ip, _)| *ip == source.addr.ip())
        .map(|(ip, port)| std::net::SocketAddr::new(ip, port));
    let mut value = via
        .stamped(source.addr, force_rport && !reliable)?
        .into_bytes();
    // The Vias below the top one stay as received (from the comma on).
    value.extend_from_slice(&h.value[end..]);
    h.value = Bytes::from(value);
    alias
}

impl trunkline_transport::Inbound for Dispatcher {
    fn on_message(&self, rx: trunkline_transport::Received) {
        self.on_received(rx.peer, rx.data);
    }

    fn on_send_error(
        &self,
        peer: &Peer,
        token: Option<u64>,
        error: &trunkline_transport::TransportError,
    ) {
        Dispatcher::on_send_error(self, peer, token, error);
    }
}

/// Sends the OPTIONS pings that are due and records what unanswered ones changed.
fn ping_trunks(shared: &Shared) {
    let routing = shared.routing.load();
    let trunks = routing.router.trunks();
    let (pings, changes) = shared.health.due(trunks, now());
    for c in changes {
        health_changed(shared, &c);
    }
    for p in pings {
        let Some(t) = trunks.iter().find(|t| t.name == p.trunk) else {
            continue;
        };
        let Some(local) = shared.local_for(t.transport, t.local, Some(t.addr)) else {
            continue;
        };
        let me = format!("{}:{}", local.host, local.port);
        let options = format!(
            "OPTIONS sip:{to} SIP/2.0\r\n\
             Via: SIP/2.0/{tr} {me};branch={branch};rport\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:trunkline@{me}>;tag=hc{seq}\r\n\
             To: <sip:{to}>\r\n\
             Call-ID: {branch}@{host}\r\n\
             CSeq: 1 OPTIONS\r\n\
             Content-Length: 0\r\n\r\n",
            to = t.addr,
            tr = t.transport.via_token(),
            branch = p.branch,
            seq = p.seq,
            host = local.host,
        );
        shared.metrics.request(Direction::Out, &Method::Options);
        shared.send(&t.peer(), Bytes::from(options), None);
    }
    for t in trunks.iter().filter(|t| t.health.is_some()) {
        if let Some(s) = shared.health.status(&t.name) {
            shared.metrics.trunk_health(&t.name, s.up, s.changed_ms);
        }
    }
}

/// Starts the lookups of the named trunks that are due; each answer that changes a
/// trunk's targets swaps in a routing table with them.
fn resolve_trunks(
    shared: &Arc<Shared>,
    resolver: &Arc<hickory_resolver::TokioResolver>,
    cfg: &crate::dns::DnsConfig,
) {
    let names = shared.routing.load().router.dns_names();
    if names.is_empty() {
        shared.dns.due(&[], now());
        return;
    }
    for name in shared.dns.due(&names, now()) {
        let shared = Arc::downgrade(shared);
        let resolver = resolver.clone();
        let retry = cfg.retry;
        tokio::spawn(async move {
            let result = crate::dns::resolve(&resolver, &name).await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            match &result {
                Ok((targets, _)) => {
                    tracing::debug!(host = %name.host, targets = ?targets, "trunk resolved")
                }
                Err(e) => {
                    tracing::warn!(host = %name.host, error = %e, "trunk not resolved; the last answer stays in use")
                }
            }
            let retry_at = (tokio::time::Instant::now() + retry).into_std();
            if shared.dns.answered(&name, result, retry_at) {
                shared.routing.rcu(|r| Routing {
                    router: r.router.with_dns(&shared.dns),
                    trust: r.trust.clone(),
                });
            }
            let n = shared.dns.targets(&name).len();
            for t in shared.routing.load().router.trunks() {
                if t.dns.as_ref() == Some(&name) {
                    shared.metrics.trunk_dns_targets(&t.name, n);
                }
            }
        });
    }
}

/// How the node is reached on trunk `t`: its listener of the trunk's transport.
fn me_on(shared: &Shared, t: &crate::router::Trunk) -> Option<crate::registration::Me> {
    let local = shared.local_for(t.transport, t.local, Some(t.addr))?;
    Some(crate::registration::Me {
        hostport: format!("{}:{}", local.host, local.port),
        transport: t.transport,
    })
}

/// Sends the REGISTERs that are due (see `registration`) and reports their state.
fn register_to_trunks(shared: &Shared) {
    let routing = shared.routing.load();
    let trunks = routing.router.trunks();
    let (sends, changes) = shared
        .registrations
        .due(trunks, now(), |t| me_on(shared, t));
    for c in changes {
        registration_changed(shared, &c);
    }
    for s in sends {
        send_register(shared, trunks, s);
    }
    for t in trunks.iter().filter(|t| t.register.is_some()) {
        if let Some(s) = shared.registrations.status(&t.name) {
            shared.metrics.trunk_registration(&t.name, &s);
        }
    }
}

fn send_register(shared: &Shared, trunks: &[crate::router::Trunk], s: crate::registration::Send) {
    let Some(t) = trunks.iter().find(|t| t.name == s.trunk) else {
        return;
    };
    shared.metrics.request(Direction::Out, &Method::Register);
    shared.send(&t.peer(), s.bytes, None);
}

fn registration_changed(shared: &Shared, c: &crate::registration::Change) {
    let state = c.state.as_str();
    match c.state {
        crate::registration::RegState::Failed => {
            tracing::warn!(trunk = %c.trunk, state, status = c.last_status, "trunk registration changed")
        }
        _ => {
            tracing::info!(trunk = %c.trunk, state, status = c.last_status, "trunk registration changed")
        }
    }
    shared.metrics.registration_change(&c.trunk, state);
}

fn health_changed(shared: &Shared, c: &crate::health::Change) {
    let state = if c.up { "up" } else { "down" };
    tracing::warn!(trunk = %c.trunk, state, "trunk health changed (OPTIONS pings)");
    shared.metrics.trunk_state_change(&c.trunk, state);
}

/// The one clock (ARCHITECTURE.md rule 7): tokio's, as the call actors read it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

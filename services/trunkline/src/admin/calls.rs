//! `trunkline.admin.v1.CallService`: the node's calls, read from the call directory the
//! call actors keep current (`trunkline_call::directory`), and hang-ups sent to the
//! calls' actors.
//!
//! Nothing here makes a call wait: reads load atomics and clone `Arc`s, and a watcher's
//! events come off a bounded broadcast ring, so a slow or stuck client costs the node at
//! most that ring and one bounded queue (see `watch`).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use trunkline_b2bua::{EndCause, Leg as CallLeg};
use trunkline_call::{
    CallEvent as DirEvent, CallEventKind, CallPhase, CallRecord, Dispatcher, EndedBy, HangupError,
    OriginateFailure, TargetError, TransferFailure,
};
use trunkline_proto::admin::v1::call_service_server::CallService;
use trunkline_proto::admin::v1::{
    Call, CallEnd, CallEvent, CallEventType, CallState, GetCallRequest, HangupCallRequest,
    HangupCallResponse, Leg, ListCallsRequest, ListCallsResponse, MediaStream,
    OriginateCallRequest, OriginateCallResponse, Party, TransferCallRequest, TransferCallResponse,
    WatchCallsRequest,
};

use super::auth::{require, Role};
use super::peer;

/// Calls per page when the request does not say, and the most it may ask for.
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// Batches queued toward one watcher's HTTP/2 stream; past it the watcher falls behind
/// on the shared ring instead, and loses events there. With `BATCH_MAX` this bounds what
/// a stuck watcher holds to a few hundred KiB.
const WATCH_QUEUE: usize = 4;

/// The call service of one node.
#[derive(Clone)]
pub struct Calls {
    node_id: Arc<str>,
    dispatcher: Dispatcher,
    max_watchers: usize,
    watching: Arc<AtomicUsize>,
}

impl Calls {
    pub fn new(node_id: &str, dispatcher: Dispatcher, max_watchers: usize) -> Calls {
        Calls {
            node_id: Arc::from(node_id),
            dispatcher,
            max_watchers,
            watching: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// `node_id` of a request: empty or this node is fine; another well-formed id names
    /// a node this one does not answer for (a cluster will forward it).
    fn for_this_node(&self, field: &str, node_id: &str) -> Result<bool, Status> {
        super::is_local_node(&self.node_id, field, node_id)
    }

    /// The serial of call `id` on this node. A malformed id is INVALID_ARGUMENT; a
    /// well-formed one of another node, or unknown here, NOT_FOUND.
    fn serial_of(&self, field: &str, id: &str) -> Result<u64, Status> {
        let bad = || Status::invalid_argument(format!("{field}: {id:?} is not a call id"));
        let (node, serial) = id.rsplit_once('-').ok_or_else(bad)?;
        if node.is_empty() || serial.is_empty() || serial.len() > 16 || id.len() > 96 {
            return Err(bad());
        }
        let serial = u64::from_str_radix(serial, 16).map_err(|_| bad())?;
        if !self.for_this_node(field, node).map_err(|_| bad())? {
            return Err(Status::not_found(format!("{field}: no call {id}")));
        }
        Ok(serial)
    }

    fn record(&self, field: &str, id: &str) -> Result<Arc<CallRecord>, Status> {
        // A call adopted from a node that is gone keeps that node's id.
        if let Some((node, serial)) = id.rsplit_once('-') {
            if node != &*self.node_id && !node.is_empty() && serial.len() <= 16 {
                if let Ok(serial) = u64::from_str_radix(serial, 16) {
                    if let Some(r) = self.dispatcher.calls().find_adopted(node, serial) {
                        return Ok(r);
                    }
                }
            }
        }
        let serial = self.serial_of(field, id)?;
        self.dispatcher
            .calls()
            .find(serial)
            .ok_or_else(|| Status::not_found(format!("{field}: no call {id}")))
    }
}

/// A number filter: what may follow `sip:` before `@` in a user part (RFC 3261 §25.1
/// unreserved, escaped and user-unreserved characters), bounded.
fn number_filter(field: &str, value: &str) -> Result<(), Status> {
    let ok = value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.!~*'()%&=+$,;?/#".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "{field}: {value:?} is not a number (at most 64 characters of a SIP user part)"
        )))
    }
}

fn trunk_filter(value: &str) -> Result<(), Status> {
    if value.is_empty() || super::trunks::trunk_name_ok(value) {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!(
            "trunk: {value:?} is not a trunk name"
        )))
    }
}

fn state_of(phase: CallPhase) -> CallState {
    match phase {
        CallPhase::Setup => CallState::Setup,
        CallPhase::Ringing => CallState::Ringing,
        CallPhase::EarlyMedia => CallState::EarlyMedia,
        CallPhase::Established => CallState::Established,
        CallPhase::Held => CallState::Held,
        CallPhase::Ended => CallState::Ended,
    }
}

fn party_of_leg(leg: CallLeg) -> Party {
    match leg {
        CallLeg::A => Party::Caller,
        CallLeg::B => Party::Callee,
    }
}

fn party_of_end(by: EndedBy) -> Party {
    match by {
        EndedBy::Caller => Party::Caller,
        EndedBy::Callee => Party::Callee,
        EndedBy::Node => Party::Node,
    }
}

/// The cause as the API spells it: snake case of `EndCause`.
pub fn cause_name(cause: EndCause) -> &'static str {
    match cause {
        EndCause::CallerHangup => "caller_hangup",
        EndCause::CalleeHangup => "callee_hangup",
        EndCause::CallerCancel => "caller_cancel",
        EndCause::Rejected => "rejected",
        EndCause::NoRoute => "no_route",
        EndCause::NoAnswer => "no_answer",
        EndCause::TooManyHops => "too_many_hops",
        EndCause::TransportError => "transport_error",
        EndCause::NoAck => "no_ack",
        EndCause::Timeout => "timeout",
        EndCause::MediaTimeout => "media_timeout",
        EndCause::MediaUnavailable => "media_unavailable",
        EndCause::Local => "local",
        EndCause::MaxDuration => "max_duration",
        EndCause::TrunkLimit => "trunk_limit",
    }
}

fn timestamp(ms: u64) -> prost_types::Timestamp {
    prost_types::Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

fn duration(ms: u64) -> Option<prost_types::Duration> {
    prost_types::Duration::try_from(Duration::from_millis(ms)).ok()
}

fn transport_name(t: trunkline_sip::Transport) -> String {
    t.to_string().to_ascii_lowercase()
}

/// A call as the API shows it; `media`: the relay's counters, for `GetCall`.
pub fn call_view(r: &CallRecord, media: Option<&trunkline_media::CallStats>) -> Call {
    let mut caller = match r.caller_moved() {
        Some(a) => Leg {
            sip_call_id: a.call_id.clone(),
            peer: a.peer.to_string(),
            transport: transport_name(a.transport),
            trunk: a.trunk.to_string(),
            media: Vec::new(),
        },
        None => Leg {
            sip_call_id: r.a_call_id().to_string(),
            peer: r.a_peer.to_string(),
            transport: transport_name(r.a_transport),
            trunk: r.from_trunk.as_deref().unwrap_or_default().to_string(),
            media: Vec::new(),
        },
    };
    let mut callee = r.callee_leg().map(|b| Leg {
        sip_call_id: b.call_id.clone(),
        peer: b.peer.to_string(),
        transport: transport_name(b.transport),
        trunk: b.trunk.to_string(),
        media: Vec::new(),
    });
    if let Some(stats) = media {
        // The relay names the parties by tag: "a" is the caller's, "b" the callee's;
        // the first tag is the one that made the first offer.
        let offerer_is_a = stats.tags.first().is_none_or(|t| t == "a");
        for s in &stats.streams {
            let (a, b) = if offerer_is_a {
                (&s.offerer, &s.answerer)
            } else {
                (&s.answerer, &s.offerer)
            };
            caller.media.push(stream_view(s.index, &s.media, a));
            if let Some(callee) = callee.as_mut() {
                callee.media.push(stream_view(s.index, &s.media, b));
            }
        }
    }
    let end = r.end().map(|(status, cause, by)| {
        let ended = r.ended_ms().unwrap_or(r.created_ms);
        CallEnd {
            status: u32::from(status),
            cause: cause_name(cause).to_string(),
            ended_by: party_of_end(by) as i32,
            total: duration(ended.saturating_sub(r.created_ms)),
            talk: r
                .answered_ms()
                .and_then(|a| duration(ended.saturating_sub(a))),
        }
    });
    Call {
        id: r.id(),
        node_id: r.node.to_string(),
        state: state_of(r.phase()) as i32,
        caller_number: r.caller.clone(),
        callee_number: r.callee.clone(),
        caller: Some(caller),
        callee,
        created_at: Some(timestamp(r.created_ms)),
        ringing_at: r.ringing_ms().map(timestamp),
        answered_at: r.answered_ms().map(timestamp),
        ended_at: r.ended_ms().map(timestamp),
        media_anchored: r.media_anchored(),
        held_by: r.held_by().map_or(Party::Unspecified, party_of_leg) as i32,
        end,
    }
}

fn stream_view(index: usize, media: &str, s: &trunkline_media::StreamStats) -> MediaStream {
    let relay = match s.local_address {
        Some(ip) => std::net::SocketAddr::new(ip, s.local_port).to_string(),
        None => String::new(),
    };
    MediaStream {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        media: media.to_string(),
        relay_address: relay,
        advertised_address: s.advertised.map(|a| a.to_string()).unwrap_or_default(),
        latched_address: s.latched.map(|a| a.to_string()).unwrap_or_default(),
        rtp_packets: s.rtp.packets,
        rtp_bytes: s.rtp.bytes,
        rtp_packets_lost: s.rtp_lost,
        rtp_errors: s.rtp.errors,
        rtcp_packets: s.rtcp.packets,
        last_packet_ms_ago: s.last_packet_ms_ago(),
        rtt_ms: s.rtt_ms,
    }
}

/// Whether a record passes a `ListCalls` filter (the node and state are checked apart).
struct Filter {
    trunk: String,
    caller: String,
    callee: String,
}

impl Filter {
    fn matches(&self, r: &CallRecord) -> bool {
        if !self.trunk.is_empty() {
            let from = r.from_trunk.as_deref() == Some(self.trunk.as_str());
            let to = r.callee_trunk_is(&self.trunk);
            if !from && !to {
                return false;
            }
        }
        r.caller.starts_with(&self.caller) && r.callee.starts_with(&self.callee)
    }
}

/// Page tokens are opaque to clients: `v1.` and the last serial returned, in hex.
fn page_token(serial: u64) -> String {
    format!("v1.{serial:x}")
}

fn parse_page_token(token: &str) -> Result<Option<u64>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    token
        .strip_prefix("v1.")
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .map(Some)
        .ok_or_else(|| Status::invalid_argument("page_token: not a token this node issued"))
}

/// The Reason header value of an operator's hang-up (RFC 3326).
fn reason_header(cause: u32, text: &str) -> Result<Bytes, Status> {
    let cause = if cause == 0 { 16 } else { cause };
    if !(1..=127).contains(&cause) {
        return Err(Status::invalid_argument(format!(
            "reason_cause: {cause} is not a Q.850 cause (1-127)"
        )));
    }
    let text = if text.is_empty() {
        "Terminated by operator"
    } else {
        text
    };
    let printable = text
        .chars()
        .all(|c| (c == ' ' || c.is_ascii_graphic()) && c != '"' && c != '\\');
    if text.chars().count() > 128 || !printable {
        return Err(Status::invalid_argument(
            "reason_text: at most 128 printable ASCII characters, without quotes or backslashes",
        ));
    }
    Ok(Bytes::from(format!("Q.850;cause={cause};text=\"{text}\"")))
}

type EventStream = Pin<Box<dyn Stream<Item = Result<CallEvent, Status>> + Send + 'static>>;

/// The API form of a directory event.
fn event_view(ev: &DirEvent) -> CallEvent {
    let (ty, status, by) = match &ev.kind {
        CallEventKind::Created => (CallEventType::Created, 0, Party::Unspecified),
        CallEventKind::Ringing { status } => (CallEventType::Ringing, *status, Party::Unspecified),
        CallEventKind::EarlyMedia { status } => {
            (CallEventType::EarlyMedia, *status, Party::Unspecified)
        }
        CallEventKind::Answered => (CallEventType::Answered, 0, Party::Unspecified),
        CallEventKind::Held { by } => (CallEventType::Held, 0, party_of_leg(*by)),
        CallEventKind::Resumed { by } => (CallEventType::Resumed, 0, party_of_leg(*by)),
        CallEventKind::Ended { status, by, .. } => {
            (CallEventType::Ended, *status, party_of_end(*by))
        }
        CallEventKind::Transferred { leg } => (CallEventType::Transferred, 0, party_of_leg(*leg)),
    };
    // The whole call rides only on its first and last events; the others say what
    // changed, which keeps a busy node's event stream cheap to build and to send.
    let call = matches!(
        ev.kind,
        CallEventKind::Created | CallEventKind::Ended { .. }
    )
    .then(|| call_view(&ev.call, None));
    CallEvent {
        r#type: ty as i32,
        call_id: ev.call.id(),
        sequence: ev.seq,
        at: Some(timestamp(ev.at_ms)),
        call,
        status: u32::from(status),
        by: by as i32,
        events_lost: 0,
    }
}

/// Counts a watch stream for as long as it lives.
struct WatchSlot(Arc<AtomicUsize>);

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Gathers a watcher's events for this long after the first one, so that it gets one
/// HTTP/2 write per batch rather than one per event: at thousands of calls a second, per
/// event writes would cost each watcher a system call per event, and at a few hundred
/// the wake-ups per batch are most of what a watcher costs the node.
const BATCH_WINDOW: Duration = Duration::from_millis(50);
/// The most events in one batch.
const BATCH_MAX: usize = 512;

type Batch = Vec<Result<CallEvent, Status>>;

/// A stream of batches, flattened into the stream of events tonic sends (it encodes what
/// is ready back to back into one buffer, so a batch leaves in one write).
struct Batches {
    rx: mpsc::Receiver<Batch>,
    current: std::vec::IntoIter<Result<CallEvent, Status>>,
}

impl Stream for Batches {
    type Item = Result<CallEvent, Status>;

    fn poll_next(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            if let Some(item) = self.current.next() {
                return std::task::Poll::Ready(Some(item));
            }
            match self.rx.poll_recv(cx) {
                std::task::Poll::Ready(Some(batch)) => self.current = batch.into_iter(),
                std::task::Poll::Ready(None) => return std::task::Poll::Ready(None),
                std::task::Poll::Pending => return std::task::Poll::Pending,
            }
        }
    }
}

fn batches(rx: mpsc::Receiver<Batch>) -> Batches {
    Batches {
        rx,
        current: Vec::new().into_iter(),
    }
}

/// What one watcher has shown so far: the sequence number of each call the initial
/// snapshot showed, so later events the snapshot already reflected are skipped.
struct Seen {
    only: Option<u64>,
    shown: HashMap<u64, u32>,
}

impl Seen {
    /// The API form of `ev` if this watcher is to get it.
    fn admit(&mut self, ev: &DirEvent) -> Option<CallEvent> {
        if self.only.is_some_and(|s| s != ev.call.serial) {
            return None;
        }
        if let Some(seen) = self.shown.get(&ev.call.serial) {
            if ev.seq <= *seen {
                return None;
            }
        }
        if matches!(ev.kind, CallEventKind::Ended { .. }) {
            self.shown.remove(&ev.call.serial);
        }
        Some(event_view(ev))
    }
}

/// The end of a stream whose watcher fell `lost` events behind the ring.
fn lost_batch(lost: u64) -> Batch {
    tracing::info!(lost, "admin: a call watcher fell behind; its stream ends");
    vec![
        Ok(CallEvent {
            r#type: CallEventType::EventsLost as i32,
            at: Some(prost_types::Timestamp::from(SystemTime::now())),
            events_lost: lost,
            ..CallEvent::default()
        }),
        Err(Status::data_loss(format!(
            "{lost} call events lost: the watcher read too slowly; \
             resynchronise with ListCalls or watch again"
        ))),
    ]
}

/// Feeds one watcher: the calls that exist, SYNCED, then live events in batches, until
/// the client goes away, falls behind or the node stops.
async fn watch(
    dispatcher: Dispatcher,
    only: Option<u64>,
    tx: mpsc::Sender<Batch>,
    slot: WatchSlot,
) {
    let _slot = slot;
    let directory = dispatcher.calls().clone();
    // Subscribe before reading what exists, so nothing falls between the two; what the
    // snapshot already shows is skipped by sequence number.
    let mut watch = directory.watch();
    let mut existing = directory.live();
    existing.sort_unstable_by_key(|r| r.serial);
    let mut seen = Seen {
        only,
        shown: HashMap::with_capacity(existing.len()),
    };
    let now = Some(prost_types::Timestamp::from(SystemTime::now()));
    let mut batch: Batch = Vec::new();
    for r in existing {
        if only.is_some_and(|s| s != r.serial) {
            continue;
        }
        seen.shown.insert(r.serial, r.seq());
        batch.push(Ok(CallEvent {
            r#type: CallEventType::Existing as i32,
            call_id: r.id(),
            sequence: r.seq(),
            at: now,
            call: Some(call_view(&r, None)),
            ..CallEvent::default()
        }));
        if batch.len() >= BATCH_MAX && tx.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
    batch.push(Ok(CallEvent {
        r#type: CallEventType::Synced as i32,
        at: now,
        ..CallEvent::default()
    }));
    if tx.send(std::mem::take(&mut batch)).await.is_err() {
        return;
    }
    loop {
        let first = tokio::select! {
            () = tx.closed() => return,
            ev = watch.rx.recv() => ev,
        };
        let mut lost = None;
        match first {
            Ok(ev) => batch.extend(seen.admit(&ev).map(Ok)),
            Err(broadcast::error::RecvError::Lagged(n)) => lost = Some(n),
            Err(broadcast::error::RecvError::Closed) => return,
        }
        if lost.is_none() {
            tokio::time::sleep(BATCH_WINDOW).await;
            while batch.len() < BATCH_MAX {
                match watch.rx.try_recv() {
                    Ok(ev) => batch.extend(seen.admit(&ev).map(Ok)),
                    Err(broadcast::error::TryRecvError::Lagged(n)) => {
                        lost = Some(n);
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        if let Some(n) = lost {
            // Unsubscribe first: the last messages wait for the client, and nothing more
            // is kept for it meanwhile.
            drop(watch);
            batch.extend(lost_batch(n));
            let _ = tx.send(batch).await;
            return;
        }
        if !batch.is_empty() && tx.send(std::mem::take(&mut batch)).await.is_err() {
            return;
        }
    }
}

#[tonic::async_trait]
impl CallService for Calls {
    async fn list_calls(
        &self,
        req: Request<ListCallsRequest>,
    ) -> Result<Response<ListCallsResponse>, Status> {
        require(&req, Role::Viewer, "ListCalls")?;
        let q = req.into_inner();
        let state = CallState::try_from(q.state)
            .map_err(|_| Status::invalid_argument(format!("state: {} is not a state", q.state)))?;
        trunk_filter(&q.trunk)?;
        number_filter("caller_number", &q.caller_number)?;
        number_filter("callee_number", &q.callee_number)?;
        let after = parse_page_token(&q.page_token)?;
        let page = match q.page_size {
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        if !self.for_this_node("node_id", &q.node_id)? {
            return Ok(Response::new(ListCallsResponse::default()));
        }
        let directory = self.dispatcher.calls();
        let records = if state == CallState::Ended {
            directory.recent()
        } else {
            directory.live()
        };
        let filter = Filter {
            trunk: q.trunk,
            caller: q.caller_number,
            callee: q.callee_number,
        };
        let mut matching: Vec<Arc<CallRecord>> = records
            .into_iter()
            .filter(|r| {
                (state == CallState::Unspecified || state_of(r.phase()) == state)
                    && filter.matches(r)
            })
            .collect();
        matching.sort_unstable_by_key(|r| r.serial);
        let total_size = u32::try_from(matching.len()).unwrap_or(u32::MAX);
        let start = after.map_or(0, |after| matching.partition_point(|r| r.serial <= after));
        let rest = &matching[start..];
        let shown = &rest[..rest.len().min(page)];
        let next_page_token = match shown.last() {
            Some(last) if rest.len() > shown.len() => page_token(last.serial),
            _ => String::new(),
        };
        Ok(Response::new(ListCallsResponse {
            calls: shown.iter().map(|r| call_view(r, None)).collect(),
            next_page_token,
            total_size,
        }))
    }

    async fn get_call(&self, req: Request<GetCallRequest>) -> Result<Response<Call>, Status> {
        require(&req, Role::Viewer, "GetCall")?;
        let record = self.record("id", &req.get_ref().id)?;
        let media = if record.media_anchored() && record.ended_ms().is_none() {
            self.dispatcher.media_stats(&record)
        } else {
            None
        };
        Ok(Response::new(call_view(&record, media.as_ref())))
    }

    type WatchCallsStream = EventStream;

    async fn watch_calls(
        &self,
        req: Request<WatchCallsRequest>,
    ) -> Result<Response<Self::WatchCallsStream>, Status> {
        require(&req, Role::Viewer, "WatchCalls")?;
        let q = req.into_inner();
        let ours = self.for_this_node("node_id", &q.node_id)?;
        let only = if q.call_id.is_empty() {
            None
        } else {
            match self.serial_of("call_id", &q.call_id) {
                Ok(serial) => Some(serial),
                // A call of another node is never seen here: an empty stream that waits.
                Err(e) if e.code() == tonic::Code::NotFound => Some(u64::MAX),
                Err(e) => return Err(e),
            }
        };
        let taken = self
            .watching
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max_watchers).then_some(n + 1)
            });
        if taken.is_err() {
            return Err(Status::resource_exhausted(format!(
                "{} call watchers are open, the most this node allows (admin.max_watchers)",
                self.max_watchers
            )));
        }
        let slot = WatchSlot(self.watching.clone());
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        if ours {
            tokio::spawn(watch(self.dispatcher.clone(), only, tx, slot));
        } else {
            // Another node's calls: nothing to send; hold the stream open until the
            // client leaves, as a watch of an idle node would.
            tokio::spawn(async move {
                let _slot = slot;
                let synced = CallEvent {
                    r#type: CallEventType::Synced as i32,
                    ..CallEvent::default()
                };
                if tx.send(vec![Ok(synced)]).await.is_ok() {
                    tx.closed().await;
                }
            });
        }
        Ok(Response::new(Box::pin(batches(rx))))
    }

    async fn hangup_call(
        &self,
        req: Request<HangupCallRequest>,
    ) -> Result<Response<HangupCallResponse>, Status> {
        let who = require(&req, Role::Operator, "HangupCall")?;
        let from = peer(&req);
        let q = req.into_inner();
        let reason = reason_header(q.reason_cause, &q.reason_text)?;
        let record = self.record("id", &q.id)?;
        match self.dispatcher.hangup(record.serial, Some(reason.clone())) {
            Ok(()) => {
                tracing::warn!(caller = %who.name, peer = %from, action = "hangup", call = %record.id(),
                    reason = %String::from_utf8_lossy(&reason), "admin: call hung up");
                Ok(Response::new(HangupCallResponse {
                    call: Some(call_view(&record, None)),
                }))
            }
            Err(HangupError::Ended) => Err(Status::failed_precondition(format!(
                "id: call {} has already ended",
                record.id()
            ))),
            Err(HangupError::NotFound) => Err(Status::not_found(format!("id: no call {}", q.id))),
        }
    }

    async fn transfer_call(
        &self,
        req: Request<TransferCallRequest>,
    ) -> Result<Response<TransferCallResponse>, Status> {
        let who = require(&req, Role::Operator, "TransferCall")?;
        let from = peer(&req);
        let q = req.into_inner();
        let leg = match Party::try_from(q.party) {
            Ok(Party::Unspecified | Party::Callee) => CallLeg::B,
            Ok(Party::Caller) => CallLeg::A,
            _ => {
                return Err(Status::invalid_argument(
                    "party: PARTY_CALLER or PARTY_CALLEE (the default)",
                ))
            }
        };
        if q.number.is_empty() {
            return Err(Status::invalid_argument("number: required"));
        }
        number_filter("number", &q.number)?;
        let trunk = (!q.trunk.is_empty()).then(|| q.trunk.clone());
        if trunk
            .as_deref()
            .is_some_and(|t| !super::trunks::trunk_name_ok(t))
        {
            return Err(Status::invalid_argument(format!(
                "trunk: {:?} is not a trunk name",
                q.trunk
            )));
        }
        let record = self.record("id", &q.id)?;
        tracing::warn!(caller = %who.name, peer = %from, action = "transfer", call = %record.id(),
            party = ?leg, number = %q.number, trunk = %q.trunk, "admin: transfer requested");
        let outcome = self
            .dispatcher
            .transfer(record.serial, leg, q.number.clone(), trunk)
            .await;
        match outcome {
            Ok(()) => Ok(Response::new(TransferCallResponse {
                call: Some(call_view(&record, None)),
            })),
            Err(e) => Err(transfer_status(&record, &e)),
        }
    }

    async fn originate_call(
        &self,
        req: Request<OriginateCallRequest>,
    ) -> Result<Response<OriginateCallResponse>, Status> {
        let who = require(&req, Role::Operator, "OriginateCall")?;
        let from = peer(&req);
        let q = req.into_inner();
        let a = originate_party("a_number", &q.a_number, "a_trunk", &q.a_trunk)?;
        let b = originate_party("b_number", &q.b_number, "b_trunk", &q.b_trunk)?;
        match self.dispatcher.originate(a, b).await {
            Ok(record) => {
                tracing::warn!(caller = %who.name, peer = %from, action = "originate", call = %record.id(),
                    a = %q.a_number, b = %q.b_number, "admin: call placed");
                Ok(Response::new(OriginateCallResponse {
                    call: Some(call_view(&record, None)),
                }))
            }
            Err(e) => Err(originate_status(&e)),
        }
    }
}

/// A party of `OriginateCall`: its number and optional trunk, checked.
fn originate_party(
    number_field: &str,
    number: &str,
    trunk_field: &str,
    trunk: &str,
) -> Result<(String, Option<String>), Status> {
    if number.is_empty() {
        return Err(Status::invalid_argument(format!(
            "{number_field}: required"
        )));
    }
    number_filter(number_field, number)?;
    if !trunk.is_empty() && !super::trunks::trunk_name_ok(trunk) {
        return Err(Status::invalid_argument(format!(
            "{trunk_field}: {trunk:?} is not a trunk name"
        )));
    }
    Ok((
        number.to_string(),
        (!trunk.is_empty()).then(|| trunk.to_string()),
    ))
}

/// The gRPC status of a call the node could not place.
fn originate_status(e: &OriginateFailure) -> Status {
    match e {
        OriginateFailure::Draining | OriginateFailure::Overloaded => {
            Status::unavailable(e.to_string())
        }
        OriginateFailure::Target {
            field,
            error: TargetError::UnknownTrunk(_),
        } => Status::invalid_argument(format!("{field}_trunk: {}", e_target(e))),
        OriginateFailure::Target { field, .. } => {
            Status::failed_precondition(format!("{field}_number: {}", e_target(e)))
        }
        OriginateFailure::NoTransport { .. } => Status::failed_precondition(e.to_string()),
        OriginateFailure::Internal => Status::internal(e.to_string()),
    }
}

fn e_target(e: &OriginateFailure) -> String {
    match e {
        OriginateFailure::Target { error, .. } => error.to_string(),
        other => other.to_string(),
    }
}

/// The gRPC status of a transfer that did not happen.
fn transfer_status(record: &CallRecord, e: &TransferFailure) -> Status {
    let id = record.id();
    match e {
        TransferFailure::NotFound => Status::not_found(format!("id: no call {id}")),
        TransferFailure::Ended => {
            Status::failed_precondition(format!("id: call {id} has already ended"))
        }
        TransferFailure::NotEstablished => {
            Status::failed_precondition(format!("id: call {id} is not answered yet"))
        }
        TransferFailure::Busy => Status::aborted(format!("id: call {id}: {e}")),
        TransferFailure::UnknownTrunk(_) => Status::invalid_argument(format!("trunk: {e}")),
        TransferFailure::NoRoute(_) => Status::failed_precondition(format!("number: {e}")),
        TransferFailure::NoTransport => Status::failed_precondition(format!("trunk: {e}")),
        TransferFailure::Failed(status) => Status::aborted(format!(
            "transfer of call {id} failed with SIP status {status}{}",
            if record.ended_ms().is_some() {
                "; the call has ended"
            } else {
                "; the call goes on with its old parties"
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_header_defaults_and_refuses_injection() {
        assert_eq!(
            reason_header(0, "").unwrap(),
            Bytes::from_static(b"Q.850;cause=16;text=\"Terminated by operator\"")
        );
        assert_eq!(
            reason_header(17, "busy here").unwrap(),
            Bytes::from_static(b"Q.850;cause=17;text=\"busy here\"")
        );
        for (cause, text) in [
            (128, ""),
            (0, "a\"b"),
            (0, "line\r\nX-Evil: 1"),
            (0, "a\\b"),
        ] {
            let err = reason_header(cause, text).unwrap_err();
            assert_eq!(err.code(), tonic::Code::InvalidArgument);
        }
        assert!(reason_header(0, &"x".repeat(129)).is_err());
    }

    #[test]
    fn filters_name_the_field_they_refuse() {
        let e = number_filter("caller_number", "12 34").unwrap_err();
        assert!(e.message().starts_with("caller_number:"), "{}", e.message());
        assert!(number_filter("callee_number", "+4930123").is_ok());
        assert!(number_filter("callee_number", "").is_ok());
        assert!(trunk_filter("carrier-1").is_ok());
        assert!(trunk_filter("carrier 1").is_err());
    }

    #[test]
    fn page_tokens_round_trip_and_refuse_foreign_ones() {
        assert_eq!(parse_page_token(&page_token(0xabc)).unwrap(), Some(0xabc));
        assert_eq!(parse_page_token("").unwrap(), None);
        assert!(parse_page_token("zz").is_err());
    }
}

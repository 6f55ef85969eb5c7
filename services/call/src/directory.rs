//! What the admin API sees of the node's calls: one record per call, kept current by
//! the call's own actor, and a stream of call events for watchers.
//!
//! The call path must not wait for, or pay for, API clients (a node carries thousands of
//! call set-ups a second and the API is read a few times a second). So:
//! - a record's changing parts are atomics the actor stores into; readers load them, and
//!   nothing is ever locked on the actor's side except the map insert and remove at the
//!   call's start and end;
//! - events go out on a bounded broadcast ring only while someone watches (one atomic load
//!   otherwise); a watcher that falls behind the ring loses events and is told so, and the
//!   node's memory stays bounded however slowly it reads;
//! - ended calls stay readable for a while in a bounded ring of recent ends, so a client
//!   that asks about a call that just ended hears how it ended rather than "not found".

use arc_swap::ArcSwapOption;
use dashmap::DashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;
use trunkline_b2bua::{EndCause, Leg};
use trunkline_sip::Transport;

/// Events a watcher may fall behind by before it loses some (see the module doc).
pub const EVENT_BACKLOG: usize = 8192;

/// Ended calls kept readable after they end.
pub const RECENT_ENDED: usize = 1024;

/// Where a call stands, as the API reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CallPhase {
    /// The INVITE is being routed or is on its way to the callee.
    Setup = 1,
    /// The callee rings (a provisional answer arrived).
    Ringing = 2,
    /// The callee sends media before answering.
    EarlyMedia = 3,
    /// Answered.
    Established = 4,
    /// Answered and put on hold by one of the parties.
    Held = 5,
    /// Over.
    Ended = 6,
}

impl CallPhase {
    fn from_u8(v: u8) -> CallPhase {
        match v {
            2 => CallPhase::Ringing,
            3 => CallPhase::EarlyMedia,
            4 => CallPhase::Established,
            5 => CallPhase::Held,
            6 => CallPhase::Ended,
            _ => CallPhase::Setup,
        }
    }
}

/// Who ended a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    Caller,
    Callee,
    /// The node: an operator, a timeout, a limit, a failure.
    Node,
}

impl EndedBy {
    /// Who the cause names.
    pub fn of(cause: EndCause) -> EndedBy {
        match cause {
            EndCause::CallerHangup | EndCause::CallerCancel | EndCause::NoAck => EndedBy::Caller,
            EndCause::CalleeHangup | EndCause::Rejected => EndedBy::Callee,
            _ => EndedBy::Node,
        }
    }
}

/// What happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEventKind {
    Created,
    /// A provisional answer (`status`, 180-189) without SDP.
    Ringing {
        status: u16,
    },
    /// A provisional answer with SDP: media before the answer.
    EarlyMedia {
        status: u16,
    },
    Answered,
    Held {
        by: Leg,
    },
    Resumed {
        by: Leg,
    },
    /// A transfer replaced the party on `leg`.
    Transferred {
        leg: Leg,
    },
    /// The call is over: the caller's final status (200 for an answered call),
    /// why, and who ended it.
    Ended {
        status: u16,
        cause: EndCause,
        by: EndedBy,
    },
}

/// One event of one call, in the order the call produced it (`seq` counts from 1).
#[derive(Debug, Clone)]
pub struct CallEvent {
    pub call: Arc<CallRecord>,
    pub seq: u32,
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub kind: CallEventKind,
}

/// One side of the call as the API shows it: the callee side once routed, and either
/// side after a transfer put another party there.
#[derive(Debug, Clone)]
pub struct CalleeLeg {
    pub trunk: Arc<str>,
    pub call_id: String,
    pub peer: SocketAddr,
    pub transport: Transport,
}

/// One call as the API reports it. Fixed parts are plain fields; the rest is written
/// by the call's actor alone and read by anyone.
#[derive(Debug)]
pub struct CallRecord {
    /// The call's number on this node (the registry's serial).
    pub serial: u64,
    /// The node that took the call first, and its serial there: the call's id, which
    /// an adopted call keeps.
    pub node: Arc<str>,
    pub id_serial: u64,
    /// Milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// The caller's number: the user part of the caller's From.
    pub caller: String,
    /// The number called: the user part of the caller's Request-URI.
    pub callee: String,
    pub a_peer: SocketAddr,
    pub a_transport: Transport,
    /// The trunk the call came from; `None` for a caller on the access side.
    pub from_trunk: Option<Arc<str>>,
    /// The caller's Call-ID, which is also the call's relay session key.
    pub media_key: Arc<str>,
    b: ArcSwapOption<CalleeLeg>,
    /// The caller side after a transfer moved it to another party (`None`: the
    /// original caller, described by the plain fields).
    a_moved: ArcSwapOption<CalleeLeg>,
    phase: AtomicU8,
    ringing_ms: AtomicU64,
    answered_ms: AtomicU64,
    ended_ms: AtomicU64,
    end_status: AtomicU16,
    /// `EndCause` as `cause_code`; 0 while the call runs.
    end_cause: AtomicU8,
    held_by: AtomicU8,
    anchored: AtomicBool,
    seq: AtomicU32,
}

/// What a new record is made of.
pub struct NewCall {
    pub serial: u64,
    pub caller: String,
    pub callee: String,
    pub a_peer: SocketAddr,
    pub a_transport: Transport,
    pub from_trunk: Option<Arc<str>>,
    /// The caller's Call-ID (the relay's session key).
    pub media_key: Arc<str>,
    /// A call taken over from another node keeps its id and creation time.
    pub adopted: Option<AdoptedFrom>,
}

/// Where an adopted call came from.
#[derive(Debug, Clone)]
pub struct AdoptedFrom {
    pub node: Arc<str>,
    pub serial: u64,
    pub created_ms: u64,
}

impl CallRecord {
    /// The call's id in the API: `<node id>-<serial in hex>`, unique across the cluster.
    /// Built when asked, not stored: most calls are never looked at.
    pub fn id(&self) -> String {
        format!("{}-{:x}", self.node, self.id_serial)
    }

    /// The caller's SIP Call-ID: the original caller's, which also keys the relay
    /// session (see `caller_moved` for a caller side transferred elsewhere).
    pub fn a_call_id(&self) -> &str {
        &self.media_key
    }

    /// The party now on the caller side, when a transfer replaced the original caller.
    pub fn caller_moved(&self) -> Option<Arc<CalleeLeg>> {
        self.a_moved.load_full()
    }

    pub fn phase(&self) -> CallPhase {
        CallPhase::from_u8(self.phase.load(Ordering::Acquire))
    }

    pub fn callee_leg(&self) -> Option<Arc<CalleeLeg>> {
        self.b.load_full()
    }

    /// Whether the callee side is reached through `trunk` (cheap: no clone).
    pub fn callee_trunk_is(&self, trunk: &str) -> bool {
        self.b.load().as_ref().is_some_and(|b| &*b.trunk == trunk)
    }

    /// When the callee first rang, answered and the call ended (ms since the epoch).
    pub fn ringing_ms(&self) -> Option<u64> {
        nonzero(self.ringing_ms.load(Ordering::Acquire))
    }

    pub fn answered_ms(&self) -> Option<u64> {
        nonzero(self.answered_ms.load(Ordering::Acquire))
    }

    pub fn ended_ms(&self) -> Option<u64> {
        nonzero(self.ended_ms.load(Ordering::Acquire))
    }

    /// The caller's final status, why the call ended and who ended it, once it has.
    pub fn end(&self) -> Option<(u16, EndCause, EndedBy)> {
        let cause = cause_from_code(self.end_cause.load(Ordering::Acquire))?;
        Some((
            self.end_status.load(Ordering::Acquire),
            cause,
            EndedBy::of(cause),
        ))
    }

    /// The party that put the call on hold, while it is held.
    pub fn held_by(&self) -> Option<Leg> {
        match self.held_by.load(Ordering::Acquire) {
            1 => Some(Leg::A),
            2 => Some(Leg::B),
            _ => None,
        }
    }

    /// Whether the call's media goes through the node's relay.
    pub fn media_anchored(&self) -> bool {
        self.anchored.load(Ordering::Acquire)
    }

    /// Events the call has produced so far.
    pub fn seq(&self) -> u32 {
        self.seq.load(Ordering::Acquire)
    }
}

fn nonzero(v: u64) -> Option<u64> {
    (v != 0).then_some(v)
}

const CAUSES: [EndCause; 15] = [
    EndCause::CallerHangup,
    EndCause::CalleeHangup,
    EndCause::CallerCancel,
    EndCause::Rejected,
    EndCause::NoRoute,
    EndCause::NoAnswer,
    EndCause::TooManyHops,
    EndCause::TransportError,
    EndCause::NoAck,
    EndCause::Timeout,
    EndCause::MediaTimeout,
    EndCause::MediaUnavailable,
    EndCause::Local,
    EndCause::MaxDuration,
    EndCause::TrunkLimit,
];

fn cause_code(cause: EndCause) -> u8 {
    CAUSES
        .iter()
        .position(|c| *c == cause)
        .map_or(0, |i| i as u8 + 1)
}

fn cause_from_code(code: u8) -> Option<EndCause> {
    CAUSES.get(usize::from(code).checked_sub(1)?).copied()
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Every call of the node and the event stream (see the module doc).
pub struct CallDirectory {
    node: Arc<str>,
    calls: DashMap<u64, Arc<CallRecord>, foldhash::fast::RandomState>,
    recent: Mutex<VecDeque<Arc<CallRecord>>>,
    events: broadcast::Sender<CallEvent>,
    watchers: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for CallDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallDirectory")
            .field("calls", &self.calls.len())
            .finish_non_exhaustive()
    }
}

impl CallDirectory {
    pub fn new(node: &str) -> CallDirectory {
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        CallDirectory {
            node: Arc::from(node),
            calls: DashMap::with_hasher(foldhash::fast::RandomState::default()),
            recent: Mutex::new(VecDeque::new()),
            events,
            watchers: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A new call: its record, listed from now on, and its `Created` event.
    pub fn open(&self, new: NewCall) -> Arc<CallRecord> {
        let (node, id_serial, created_ms) = match new.adopted {
            Some(a) => (a.node, a.serial, a.created_ms),
            None => (self.node.clone(), new.serial, now_ms()),
        };
        let record = Arc::new(CallRecord {
            serial: new.serial,
            node,
            id_serial,
            created_ms,
            caller: new.caller,
            callee: new.callee,
            a_peer: new.a_peer,
            a_transport: new.a_transport,
            from_trunk: new.from_trunk,
            media_key: new.media_key,
            b: ArcSwapOption::empty(),
            a_moved: ArcSwapOption::empty(),
            phase: AtomicU8::new(CallPhase::Setup as u8),
            ringing_ms: AtomicU64::new(0),
            answered_ms: AtomicU64::new(0),
            ended_ms: AtomicU64::new(0),
            end_status: AtomicU16::new(0),
            end_cause: AtomicU8::new(0),
            held_by: AtomicU8::new(0),
            anchored: AtomicBool::new(false),
            seq: AtomicU32::new(0),
        });
        self.calls.insert(new.serial, record.clone());
        self.publish(&record, CallEventKind::Created);
        record
    }

    /// The call is routed: its callee side.
    pub fn routed(&self, record: &CallRecord, b: CalleeLeg) {
        record.b.store(Some(Arc::new(b)));
    }

    /// A transfer put another party on `leg`.
    pub fn transferred(&self, record: &Arc<CallRecord>, leg: Leg, party: CalleeLeg) {
        let slot = match leg {
            Leg::A => &record.a_moved,
            Leg::B => &record.b,
        };
        slot.store(Some(Arc::new(party)));
        self.publish(record, CallEventKind::Transferred { leg });
    }

    /// The call's media is anchored on the relay.
    pub fn anchored(&self, record: &CallRecord) {
        record.anchored.store(true, Ordering::Release);
    }

    /// A provisional answer reached the caller.
    pub fn progress(&self, record: &Arc<CallRecord>, status: u16, early_media: bool) {
        let now = now_ms();
        let _ = record
            .ringing_ms
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
        let (phase, kind) = if early_media {
            (CallPhase::EarlyMedia, CallEventKind::EarlyMedia { status })
        } else {
            (CallPhase::Ringing, CallEventKind::Ringing { status })
        };
        // Ringing after early media does not take the call back to plain ringing.
        let before = record.phase();
        if before == CallPhase::EarlyMedia && phase == CallPhase::Ringing {
            return;
        }
        if before == phase {
            return;
        }
        record.phase.store(phase as u8, Ordering::Release);
        self.publish_at(record, kind, now);
    }

    pub fn answered(&self, record: &Arc<CallRecord>) {
        self.answered_at(record, now_ms());
    }

    /// An adopted call: answered when its first node saw it answered.
    pub fn answered_at(&self, record: &Arc<CallRecord>, now: u64) {
        record.answered_ms.store(now, Ordering::Release);
        record
            .phase
            .store(CallPhase::Established as u8, Ordering::Release);
        self.publish_at(record, CallEventKind::Answered, now);
    }

    /// An offer/answer exchange on the established call: held or not any more.
    pub fn hold(&self, record: &Arc<CallRecord>, by: Leg, held: bool) {
        let was = record.held_by();
        match (was, held) {
            (None, true) => {
                record
                    .held_by
                    .store(if by == Leg::A { 1 } else { 2 }, Ordering::Release);
                record.phase.store(CallPhase::Held as u8, Ordering::Release);
                self.publish(record, CallEventKind::Held { by });
            }
            (Some(_), false) => {
                record.held_by.store(0, Ordering::Release);
                record
                    .phase
                    .store(CallPhase::Established as u8, Ordering::Release);
                self.publish(record, CallEventKind::Resumed { by });
            }
            _ => {}
        }
    }

    /// The call ended: it leaves the list of calls and stays readable among the recent
    /// ends.
    pub fn ended(&self, record: &Arc<CallRecord>, status: u16, cause: EndCause) {
        if record.ended_ms().is_some() {
            return;
        }
        let now = now_ms();
        record.end_status.store(status, Ordering::Release);
        record.end_cause.store(cause_code(cause), Ordering::Release);
        record.ended_ms.store(now, Ordering::Release);
        record
            .phase
            .store(CallPhase::Ended as u8, Ordering::Release);
        self.calls.remove(&record.serial);
        {
            let mut recent = self
                .recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if recent.len() >= RECENT_ENDED {
                recent.pop_front();
            }
            recent.push_back(record.clone());
        }
        self.publish_at(
            record,
            CallEventKind::Ended {
                status,
                cause,
                by: EndedBy::of(cause),
            },
            now,
        );
    }

    /// The actor stopped: a call that never reported its end (node shutdown) still leaves.
    pub fn closed(&self, record: &Arc<CallRecord>) {
        if record.ended_ms().is_none() {
            self.ended(record, 500, EndCause::Local);
        }
    }

    fn publish(&self, record: &Arc<CallRecord>, kind: CallEventKind) {
        self.publish_at(record, kind, now_ms());
    }

    /// Counts the event, and sends it only while someone watches.
    fn publish_at(&self, record: &Arc<CallRecord>, kind: CallEventKind, at_ms: u64) {
        let seq = record.seq.fetch_add(1, Ordering::AcqRel) + 1;
        if self.watchers.load(Ordering::Acquire) == 0 {
            return;
        }
        let _ = self.events.send(CallEvent {
            call: record.clone(),
            seq,
            at_ms,
            kind,
        });
    }

    /// A call that has not ended, by serial.
    pub fn get(&self, serial: u64) -> Option<Arc<CallRecord>> {
        self.calls.get(&serial).map(|e| e.value().clone())
    }

    /// A call by serial, ended ones still in the recent ring included.
    pub fn find(&self, serial: u64) -> Option<Arc<CallRecord>> {
        self.get(serial).or_else(|| {
            self.recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .rev()
                .find(|r| r.serial == serial)
                .cloned()
        })
    }

    /// A call by its id's parts where the node is another one's (an adopted call).
    pub fn find_adopted(&self, node: &str, id_serial: u64) -> Option<Arc<CallRecord>> {
        let live = self
            .calls
            .iter()
            .find(|e| e.value().id_serial == id_serial && &*e.value().node == node)
            .map(|e| e.value().clone());
        live.or_else(|| {
            self.recent
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .rev()
                .find(|r| r.id_serial == id_serial && &*r.node == node)
                .cloned()
        })
    }

    /// Every call that has not ended, in no particular order.
    pub fn live(&self) -> Vec<Arc<CallRecord>> {
        self.calls.iter().map(|e| e.value().clone()).collect()
    }

    /// Recently ended calls, oldest first.
    pub fn recent(&self) -> Vec<Arc<CallRecord>> {
        self.recent
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .cloned()
            .collect()
    }

    /// Calls that have not ended.
    pub fn len(&self) -> usize {
        self.calls.len()
    }

    pub fn is_empty(&self) -> bool {
        self.calls.is_empty()
    }

    /// Starts watching: events from now on (subscribe before reading the calls that
    /// exist, and skip events a call's record already reflected by `seq`).
    pub fn watch(self: &Arc<Self>) -> Watch {
        let rx = self.events.subscribe();
        self.watchers.fetch_add(1, Ordering::AcqRel);
        Watch {
            rx,
            directory: self.clone(),
        }
    }

    /// Watch streams open now.
    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Acquire)
    }
}

/// One watcher's subscription; dropping it stops the events when it was the last.
pub struct Watch {
    pub rx: broadcast::Receiver<CallEvent>,
    directory: Arc<CallDirectory>,
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.directory.watchers.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_call(serial: u64) -> NewCall {
        NewCall {
            serial,
            caller: "100".into(),
            callee: "200".into(),
            a_peer: "127.0.0.1:5070".parse().unwrap(),
            a_transport: Transport::Udp,
            from_trunk: None,
            media_key: Arc::from(format!("a-{serial}").as_str()),
            adopted: None,
        }
    }

    #[test]
    fn causes_round_trip() {
        for c in CAUSES {
            assert_eq!(cause_from_code(cause_code(c)), Some(c));
        }
        assert_eq!(cause_from_code(0), None);
    }

    #[tokio::test]
    async fn a_call_life_reaches_a_watcher_in_order_and_leaves_the_list() {
        let dir = Arc::new(CallDirectory::new("n1"));
        let quiet = dir.open(new_call(1));
        assert_eq!(quiet.seq(), 1, "counted even with nobody watching");
        let mut w = dir.watch();
        let r = dir.open(new_call(0x2a));
        assert_eq!(r.id(), "n1-2a");
        assert_eq!(r.a_call_id(), "a-42");
        dir.progress(&r, 180, false);
        dir.progress(&r, 183, true);
        dir.progress(&r, 180, false);
        dir.answered(&r);
        dir.hold(&r, Leg::B, true);
        assert_eq!(r.phase(), CallPhase::Held);
        dir.hold(&r, Leg::B, false);
        dir.ended(&r, 200, EndCause::CallerHangup);
        dir.ended(&r, 200, EndCause::CallerHangup);
        let mut kinds = Vec::new();
        while let Ok(ev) = w.rx.try_recv() {
            assert_eq!(ev.call.id(), "n1-2a");
            assert_eq!(ev.seq as usize, kinds.len() + 1);
            kinds.push(ev.kind);
        }
        assert_eq!(
            kinds,
            vec![
                CallEventKind::Created,
                CallEventKind::Ringing { status: 180 },
                CallEventKind::EarlyMedia { status: 183 },
                CallEventKind::Answered,
                CallEventKind::Held { by: Leg::B },
                CallEventKind::Resumed { by: Leg::B },
                CallEventKind::Ended {
                    status: 200,
                    cause: EndCause::CallerHangup,
                    by: EndedBy::Caller
                },
            ]
        );
        assert!(dir.get(0x2a).is_none(), "an ended call is not listed");
        let ended = dir.find(0x2a).expect("recently ended calls stay readable");
        assert_eq!(
            ended.end(),
            Some((200, EndCause::CallerHangup, EndedBy::Caller))
        );
        assert_eq!(dir.len(), 1);
        drop(w);
        assert_eq!(dir.watchers(), 0);
    }

    #[tokio::test]
    async fn a_watcher_that_falls_behind_is_told_and_memory_stays_bounded() {
        let dir = Arc::new(CallDirectory::new("n1"));
        let mut w = dir.watch();
        for serial in 1..=(EVENT_BACKLOG as u64 + 10) {
            let r = dir.open(new_call(serial));
            dir.ended(&r, 487, EndCause::CallerCancel);
        }
        assert!(matches!(
            w.rx.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(_))
        ));
        assert!(dir.recent().len() <= RECENT_ENDED);
    }
}

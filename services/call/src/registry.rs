//! The dispatcher's index from what a message says to the call actor it belongs to.
//!
//! Dispatch is by dialog and transaction, not by Call-ID alone (RFC 3261 §12, §17.2.3):
//! a Call-ID can carry several calls at once — a UA retrying after 422/488/503 under the
//! same Call-ID, or a hairpin where the node's own B-leg INVITE comes back to it.
//! - In-dialog requests and responses name one of the node's own tags (the To-tag of a
//!   request, the From-tag of a response to a request the node sent), so
//!   `(Call-ID, our tag)` finds the call and the leg.
//! - A caller's INVITE, its retransmissions and its CANCEL carry no To-tag yet: they are
//!   found by `(Call-ID, the caller's From-tag)` and checked against the INVITE's CSeq
//!   and branch, which tells a retransmission from a merged request (482) and from a
//!   new attempt (a new call).
//! - Each call also has a serial number, the token the transport hands back when a send
//!   of that call fails.

use crate::messages::CallMsg;
use bytes::Bytes;
use dashmap::mapref::entry::Entry;
use dashmap::DashMap;
use ractor::ActorRef;
use std::borrow::Borrow;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;
use trunkline_b2bua::{Leg, Replay};

/// Messages a call may have waiting in its mailbox before more are refused. A call
/// handles a message in microseconds; a backlog this deep means it is flooded, and a
/// ractor mailbox would otherwise grow without bound.
pub const MAILBOX_LIMIT: usize = 256;

/// A call actor as the dispatcher reaches it.
#[derive(Clone)]
pub struct CallHandle {
    pub actor: ActorRef<CallMsg>,
    /// Network messages queued and not yet handled (the actor counts them down).
    pub queued: Arc<AtomicUsize>,
    pub serial: u64,
}

/// The call's mailbox is full (or the actor is gone): the message was not delivered.
/// It comes back, so that the dispatcher can refuse a request without having kept a
/// copy of every request it delivers (boxed: this is the rare path, and the message is
/// large).
#[derive(Debug)]
pub struct Undelivered(pub Option<Box<CallMsg>>);

impl CallHandle {
    /// Queues a network message for the call, unless `MAILBOX_LIMIT` are already waiting.
    pub fn deliver(&self, msg: CallMsg) -> Result<(), Undelivered> {
        if self.queued.fetch_add(1, Ordering::AcqRel) >= MAILBOX_LIMIT {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            return Err(Undelivered(Some(Box::new(msg))));
        }
        self.actor.send_message(msg).map_err(|e| {
            self.queued.fetch_sub(1, Ordering::AcqRel);
            Undelivered(match e {
                ractor::MessagingErr::SendErr(msg) => Some(Box::new(msg)),
                _ => None,
            })
        })
    }
}

/// `(Call-ID, tag)`: a dialog side the node is one end of, or a caller's pending INVITE.
/// Registered keys own their bytes (a key must not keep a whole received message alive
/// for the length of a call); lookups borrow them from the message (`KeyParts`), so
/// finding a call allocates nothing.
#[derive(Debug, Clone)]
pub struct DialogKey {
    pub call_id: Bytes,
    pub tag: Bytes,
}

impl DialogKey {
    pub fn new(call_id: &[u8], tag: &[u8]) -> DialogKey {
        DialogKey {
            call_id: Bytes::copy_from_slice(call_id),
            tag: Bytes::copy_from_slice(tag),
        }
    }
}

/// The two parts of a dialog key, owned or borrowed.
pub trait KeyParts {
    fn call_id(&self) -> &[u8];
    fn tag(&self) -> &[u8];
}

impl KeyParts for DialogKey {
    fn call_id(&self) -> &[u8] {
        &self.call_id
    }
    fn tag(&self) -> &[u8] {
        &self.tag
    }
}

/// A key made of slices of a received message, for lookups.
struct Lookup<'a>(&'a [u8], &'a [u8]);

impl KeyParts for Lookup<'_> {
    fn call_id(&self) -> &[u8] {
        self.0
    }
    fn tag(&self) -> &[u8] {
        self.1
    }
}

impl Hash for dyn KeyParts + '_ {
    fn hash<H: Hasher>(&self, h: &mut H) {
        self.call_id().hash(h);
        self.tag().hash(h);
    }
}

impl PartialEq for dyn KeyParts + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.call_id() == other.call_id() && self.tag() == other.tag()
    }
}

impl Eq for dyn KeyParts + '_ {}

impl Hash for DialogKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        (self as &dyn KeyParts).hash(h);
    }
}

impl PartialEq for DialogKey {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyParts) == (other as &dyn KeyParts)
    }
}

impl Eq for DialogKey {}

impl<'a> Borrow<dyn KeyParts + 'a> for DialogKey {
    fn borrow(&self) -> &(dyn KeyParts + 'a) {
        self
    }
}

/// The maps' hasher: keyed per process (Call-IDs and tags come from the network, so a
/// fixed hash could be aimed at), and several times cheaper than SipHash per lookup.
type Hasher_ = foldhash::quality::RandomState;

/// A caller's INVITE the node is serving.
#[derive(Clone)]
pub struct InviteEntry {
    pub handle: CallHandle,
    pub cseq: u32,
    pub branch: Bytes,
}

/// What to do with an INVITE without To-tag, decided against what is registered.
pub enum InitialInvite {
    /// The same INVITE again: hand it to its call.
    Retransmission(CallHandle),
    /// Same Call-ID, From-tag and CSeq as an ongoing INVITE, but another transaction:
    /// it reached the node twice by different paths (RFC 3261 §8.2.2.2: 482).
    Merged,
    /// A new call; the entry is registered for it.
    Started(CallHandle),
    /// A new call could not be started.
    Refused,
    /// The INVITE of a call that has ended, arriving late (reordered or long delayed):
    /// absorbed, as RFC 6026's Accepted state would, not a second call.
    Ended,
}

/// What a call that is gone still answers (`trunkline_b2bua::Leftovers`), kept under
/// each of its keys until it expires: a few hundred bytes instead of a live call.
pub struct Grave {
    pub replays: Vec<Replay>,
    pub until: Instant,
    /// The call's initial INVITE (CSeq, top branch), to know a late copy of it.
    pub invite: Option<(u32, Bytes)>,
}

#[derive(Default)]
pub struct CallRegistry {
    dialogs: DashMap<DialogKey, (CallHandle, Leg), Hasher_>,
    invites: DashMap<DialogKey, InviteEntry, Hasher_>,
    serials: DashMap<u64, CallHandle, Hasher_>,
    graves: DashMap<DialogKey, Arc<Grave>, Hasher_>,
}

impl CallRegistry {
    /// The call and leg whose dialog has our tag `tag` under `call_id`.
    pub fn dialog(&self, call_id: &[u8], tag: &[u8]) -> Option<(CallHandle, Leg)> {
        let key = Lookup(call_id, tag);
        self.dialogs
            .get(&key as &dyn KeyParts)
            .map(|e| e.value().clone())
    }

    pub fn register_dialog(&self, key: DialogKey, handle: CallHandle, leg: Leg) {
        self.dialogs.insert(key, (handle, leg));
    }

    /// Removes `key` if it still belongs to call `serial`.
    pub fn unregister_dialog(&self, key: &DialogKey, serial: u64) {
        self.dialogs.remove_if(key, |_, (h, _)| h.serial == serial);
    }

    /// The caller's INVITE registered under `key` (Call-ID and the caller's From-tag).
    pub fn invite(&self, call_id: &[u8], from_tag: &[u8]) -> Option<InviteEntry> {
        let key = Lookup(call_id, from_tag);
        self.invites
            .get(&key as &dyn KeyParts)
            .map(|e| e.value().clone())
    }

    /// Decides, atomically against concurrent receive tasks, what an INVITE without
    /// To-tag is; for a new call runs `start` and registers what it returns.
    pub fn initial_invite(
        &self,
        key: DialogKey,
        cseq: u32,
        branch: &[u8],
        now: Instant,
        start: impl FnOnce() -> Option<CallHandle>,
    ) -> InitialInvite {
        if self.ended_invite(&key.call_id, &key.tag, cseq, branch, now) {
            return InitialInvite::Ended;
        }
        let entry = self.invites.entry(key);
        if let Entry::Occupied(e) = &entry {
            let known = e.get();
            if known.branch == branch && known.cseq == cseq {
                return InitialInvite::Retransmission(known.handle.clone());
            }
            if known.cseq == cseq {
                return InitialInvite::Merged;
            }
            // A new CSeq: the caller tries again under the same Call-ID (after a 422,
            // 488 or 503). The old call keeps its dialog keys for its last ACKs.
        }
        let Some(handle) = start() else {
            return InitialInvite::Refused;
        };
        self.serials.insert(handle.serial, handle.clone());
        let registered = InviteEntry {
            handle: handle.clone(),
            cseq,
            branch: Bytes::copy_from_slice(branch),
        };
        match entry {
            Entry::Occupied(mut e) => {
                e.insert(registered);
            }
            Entry::Vacant(v) => {
                v.insert(registered);
            }
        }
        InitialInvite::Started(handle)
    }

    /// Whether an INVITE without To-tag is a copy of the initial INVITE of a call that has
    /// ended and whose grave is still kept.
    pub fn ended_invite(
        &self,
        call_id: &[u8],
        from_tag: &[u8],
        cseq: u32,
        branch: &[u8],
        now: Instant,
    ) -> bool {
        let key = Lookup(call_id, from_tag);
        self.graves.get(&key as &dyn KeyParts).is_some_and(|g| {
            g.until > now
                && g.invite
                    .as_ref()
                    .is_some_and(|(c, b)| *c == cseq && b[..] == *branch)
        })
    }

    /// The CSeq and branch of the initial INVITE under `key`, if it is call `serial`'s.
    pub fn invite_of(&self, key: &DialogKey, serial: u64) -> Option<(u32, Bytes)> {
        self.invites
            .get(key)
            .filter(|e| e.handle.serial == serial)
            .map(|e| (e.cseq, e.branch.clone()))
    }

    /// Removes the INVITE entry under `key` if it still belongs to call `serial`.
    pub fn unregister_invite(&self, key: &DialogKey, serial: u64) {
        self.invites
            .remove_if(key, |_, e| e.handle.serial == serial);
    }

    /// Registers a call by serial alone: one the node places itself, which no INVITE of a
    /// caller names.
    pub fn register_serial(&self, handle: CallHandle) {
        self.serials.insert(handle.serial, handle);
    }

    /// The call a send-error token names.
    pub fn by_serial(&self, serial: u64) -> Option<CallHandle> {
        self.serials.get(&serial).map(|e| e.value().clone())
    }

    /// Every call with an actor.
    pub fn handles(&self) -> Vec<CallHandle> {
        self.serials.iter().map(|e| e.value().clone()).collect()
    }

    pub fn unregister_serial(&self, serial: u64) {
        self.serials.remove(&serial);
    }

    /// Calls with an actor.
    pub fn calls(&self) -> usize {
        self.serials.len()
    }

    /// Index entries of every kind, graves included: what a leak would grow.
    pub fn entries(&self) -> usize {
        self.dialogs.len() + self.invites.len() + self.serials.len() + self.graves.len()
    }

    /// Keeps what a finished call still answers under each of its keys.
    pub fn bury(&self, keys: &[&DialogKey], grave: Grave) {
        let grave = Arc::new(grave);
        for key in keys {
            self.graves.insert((*key).clone(), grave.clone());
        }
    }

    /// The answer a gone call owes a retransmission with top Via `branch` of a request
    /// (`to_request`) or of a response, found by `(Call-ID, tag)` as a live call would be.
    pub fn replay(
        &self,
        call_id: &[u8],
        tag: &[u8],
        branch: &[u8],
        to_request: bool,
        now: Instant,
    ) -> Option<Replay> {
        let key = Lookup(call_id, tag);
        let grave = self.graves.get(&key as &dyn KeyParts)?;
        if grave.until <= now {
            return None;
        }
        grave
            .replays
            .iter()
            .find(|r| r.to_request == to_request && r.branch == branch)
            .cloned()
    }

    /// Forgets graves whose time is up; returns how many are left.
    pub fn sweep(&self, now: Instant) -> usize {
        self.graves.retain(|_, g| g.until > now);
        self.graves.len()
    }
}

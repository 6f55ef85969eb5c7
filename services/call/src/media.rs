//! The node's media relay as the call actors drive it, and the actor that collects its
//! timeouts.
//!
//! A call actor anchors an SDP body by calling [`MediaControl::rewrite`] itself: the relay's
//! control is a short, non-blocking call under its lock (it never waits on the network), so
//! a round trip through another actor's mailbox bought nothing and cost two task wake-ups
//! per offer or answer, four to six per call, many of them waking a second worker thread
//! of the runtime. Packets never come near a mailbox — the relay's worker threads forward
//! them (ARCHITECTURE.md rule 5). A call actor says when its call is answered
//! ([`MediaControl::established`]): only then do the relay's inactivity timeouts apply to
//! it, so a callee may ring as long as the call's own timers allow. Once a second the
//! media actor collects the sessions a timeout caught and tells their call actors why
//! (`CallMsg::MediaTimeout`), which hang up.
//!
//! Time is the node's one clock (tokio's, as the call actors read it), passed to the relay
//! with every request.

use crate::messages::CallMsg;
use bytes::Bytes;
use dashmap::DashMap;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use trunkline_b2bua::{Leg, MediaFailure, MediaOp};
use trunkline_media::{AddressPolicy, Flags, MediaError, Relay};

/// What the media actor does.
#[derive(Debug)]
pub enum MediaMsg {
    /// Collect media timeouts.
    Poll,
}

/// One SDP body of a call to anchor, with what the call actor knows of its legs.
#[derive(Debug, Clone, Copy)]
pub struct Rewrite<'a> {
    pub op: MediaOp,
    pub sdp: &'a [u8],
    /// Where the caller's signalling comes from (NAT handling of the A side).
    pub caller_source: SocketAddr,
    /// Where the callee's signalling comes from, if known: used only when the B leg's
    /// address policy is not [`AddressPolicy::Sdp`].
    pub callee_source: Option<SocketAddr>,
    /// The interface each leg is anchored on.
    pub interfaces: &'a LegInterfaces,
    /// How each leg's SDP address is read.
    pub addressing: LegAddressing,
}

/// The relay and which call actor owns each of its sessions (for the timeouts).
pub struct MediaControl {
    relay: Relay,
    owners: DashMap<Arc<str>, ActorRef<CallMsg>>,
}

impl std::fmt::Debug for MediaControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaControl")
            .field("relay", &self.relay)
            .field("sessions", &self.owners.len())
            .finish()
    }
}

impl MediaControl {
    /// Wraps a running relay.
    pub fn new(relay: Relay) -> Arc<MediaControl> {
        Arc::new(MediaControl {
            relay,
            owners: DashMap::new(),
        })
    }

    /// The relay engine, for reading a call's media counters.
    pub fn relay(&self) -> &Relay {
        &self.relay
    }

    /// Anchors `req.sdp` for call `key`, whose actor is `owner` (told of the session's
    /// timeout); returns the body to forward, or the status to refuse it with.
    pub fn rewrite(
        &self,
        key: &Arc<str>,
        req: &Rewrite<'_>,
        owner: &ActorRef<CallMsg>,
    ) -> Result<Bytes, MediaFailure> {
        let sources = Sources {
            caller: req.caller_source,
            callee: req.callee_source,
        };
        let flags = flags(req.op, sources, req.interfaces, req.addressing);
        let t = now();
        let result = match req.op {
            MediaOp::Offer { from } => self.relay.offer(key, tag(from), req.sdp, &flags, t),
            MediaOp::Answer { offerer } => {
                self.relay
                    .answer(key, tag(offerer), tag(offerer.other()), req.sdp, &flags, t)
            }
        };
        self.owners
            .entry(key.clone())
            .or_insert_with(|| owner.clone());
        match result {
            Ok(body) => Ok(Bytes::from(body)),
            Err(e) => {
                tracing::warn!(call = %key, error = %e, op = ?req.op, "media relay refused SDP");
                Err(failure(&e))
            }
        }
    }

    /// The call is answered: from now on its media is subject to the relay's inactivity
    /// timeouts (before, only to the final one). Idempotent.
    pub fn established(&self, key: &str) {
        if let Err(e) = self.relay.established(key, now()) {
            tracing::debug!(call = %key, error = %e, "media established");
        }
    }

    /// The call is over: free its ports.
    pub fn delete(&self, key: &str) {
        if self.owners.remove(key).is_some() {
            match self.relay.delete(key, None, None, now()) {
                Ok(stats) => tracing::debug!(call = %key, ?stats, "media session closed"),
                Err(e) => tracing::debug!(call = %key, error = %e, "media delete"),
            }
        }
    }

    /// Tells the owner of each session a timeout caught why; a session nobody owns
    /// any more is deleted.
    fn collect_timeouts(&self) {
        let t = now();
        for out in self.relay.take_timeouts(t) {
            let owner = self
                .owners
                .get(out.call_id.as_str())
                .map(|o| o.value().clone());
            match owner {
                Some(owner) => {
                    tracing::info!(call = %out.call_id, reason = %out.reason,
                        after_secs = out.elapsed.as_secs(), "media timeout");
                    let _ = owner.send_message(CallMsg::MediaTimeout { reason: out.reason });
                }
                None => {
                    let _ = self.relay.delete(&out.call_id, None, None, t);
                }
            }
        }
    }
}

/// How each leg's SDP connection address is read (see [`AddressPolicy`]): where the relay
/// sends the leg's media until it is latched, and the source it expects from the leg.
/// The default is an SBC's: callers (A) behind NAT write private addresses into SDP, so
/// theirs is `Auto` (the signalling source replaces an address the node cannot reach);
/// trunks (B) mean what they write, so theirs is `Sdp`. A trunk can be given another.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LegAddressing {
    /// Toward the caller.
    pub a: AddressPolicy,
    /// Toward the trunk.
    pub b: AddressPolicy,
}

impl Default for LegAddressing {
    fn default() -> Self {
        LegAddressing {
            a: AddressPolicy::Auto,
            b: AddressPolicy::Sdp,
        }
    }
}

impl LegAddressing {
    /// The policy of `leg`.
    pub fn of(&self, leg: Leg) -> AddressPolicy {
        match leg {
            Leg::A => self.a,
            Leg::B => self.b,
        }
    }
}

/// The relay interface each leg's media is anchored on, by name; `None` is the relay's
/// default interface. The call actor fixes them (A from the node's access interface, B from
/// the trunk the call is routed to) and sends them with every rewrite: each offer, the first
/// and every re-offer from either side, names both legs' interfaces, so neither leg is ever
/// moved off its network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LegInterfaces {
    /// Toward the caller.
    pub a: Option<Arc<str>>,
    /// Toward the trunk.
    pub b: Option<Arc<str>>,
}

impl LegInterfaces {
    /// The interface of `leg`.
    pub fn of(&self, leg: Leg) -> Option<&Arc<str>> {
        match leg {
            Leg::A => self.a.as_ref(),
            Leg::B => self.b.as_ref(),
        }
    }

    /// ng `direction` of an offer from `from`: the offering leg's interface, then the
    /// other leg's (whose relay address the rewritten offer carries).
    fn direction(&self, from: Leg) -> [Option<String>; 2] {
        let name = |leg| self.of(leg).map(|n| n.to_string());
        [name(from), name(from.other())]
    }
}

/// The relay tag of a leg within a call's relay session.
fn tag(leg: Leg) -> &'static str {
    match leg {
        Leg::A => "a",
        Leg::B => "b",
    }
}

/// Where each leg's signalling comes from, as far as the call actor knows.
#[derive(Debug, Clone, Copy)]
struct Sources {
    caller: SocketAddr,
    callee: Option<SocketAddr>,
}

/// The flags of `op`, for the SDP of the leg that sent it.
///
/// That leg's SDP address is read by its policy in `addressing`, with its signalling source
/// as the alternative; the relay then learns where its packets really come from, preferring
/// that address (endpoint learning). Offers name both legs' interfaces (`direction`); an
/// answer names none, because the relay keeps what its offer chose.
fn flags(
    op: MediaOp,
    sources: Sources,
    interfaces: &LegInterfaces,
    addressing: LegAddressing,
) -> Flags {
    let (leg, direction) = match op {
        MediaOp::Offer { from } => (from, interfaces.direction(from)),
        MediaOp::Answer { offerer } => (offerer.other(), [None, None]),
    };
    Flags {
        address: addressing.of(leg),
        received_from: match leg {
            Leg::A => Some(sources.caller),
            Leg::B => sources.callee,
        },
        symmetric: true,
        replace_origin: true,
        replace_session_connection: true,
        direction,
        ..Flags::default()
    }
}

/// The SIP status for a refused SDP: 488 when the SDP is at fault (unparseable, too many
/// m-lines, too many ports for one call), 503 when the relay is (no ports, shut down).
fn failure(e: &MediaError) -> MediaFailure {
    MediaFailure {
        status: if e.is_offer_fault() { 488 } else { 503 },
    }
}

/// The node's one clock (ARCHITECTURE.md rule 7), as the call actors read it.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// The media actor: collects the relay's timeouts once a second and shuts the relay down
/// when it stops.
pub struct MediaActor;

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = Arc<MediaControl>;
    type Arguments = Arc<MediaControl>;

    async fn pre_start(
        &self,
        myself: ActorRef<MediaMsg>,
        control: Arc<MediaControl>,
    ) -> Result<Arc<MediaControl>, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || MediaMsg::Poll);
        Ok(control)
    }

    async fn handle(
        &self,
        _myself: ActorRef<MediaMsg>,
        msg: MediaMsg,
        control: &mut Arc<MediaControl>,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediaMsg::Poll => control.collect_timeouts(),
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MediaMsg>,
        control: &mut Arc<MediaControl>,
    ) -> Result<(), ActorProcessingErr> {
        control.relay.shutdown();
        Ok(())
    }
}

/// Starts the media actor around a running relay's control.
pub async fn spawn(control: Arc<MediaControl>) -> Result<ActorRef<MediaMsg>, ractor::SpawnErr> {
    let (actor, _join) = ractor::ActorRuntime::spawn(None, MediaActor, control).await?;
    Ok(actor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier_b() -> LegInterfaces {
        LegInterfaces {
            a: Some(Arc::from("access")),
            b: Some(Arc::from("carrier")),
        }
    }

    fn source() -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 7], 5060))
    }

    fn sources() -> Sources {
        Sources {
            caller: source(),
            callee: None,
        }
    }

    fn sbc() -> LegAddressing {
        LegAddressing::default()
    }

    #[test]
    fn offers_name_the_offering_legs_interface_first() {
        let f = flags(
            MediaOp::Offer { from: Leg::A },
            sources(),
            &carrier_b(),
            sbc(),
        );
        assert_eq!(
            f.direction,
            [Some("access".to_owned()), Some("carrier".to_owned())]
        );
        assert_eq!(f.received_from, Some(source()));
        assert_eq!(f.address, AddressPolicy::Auto);
        // A re-INVITE from the callee: the same two interfaces, the other way round.
        let f = flags(
            MediaOp::Offer { from: Leg::B },
            sources(),
            &carrier_b(),
            sbc(),
        );
        assert_eq!(
            f.direction,
            [Some("carrier".to_owned()), Some("access".to_owned())]
        );
        assert_eq!(f.address, AddressPolicy::Sdp);
        assert_eq!(f.received_from, None);
    }

    /// The caller's address is `Auto` (its SDP unless unreachable), the trunk's its SDP;
    /// a call can give either leg another policy, with the leg's own signalling source.
    #[test]
    fn each_leg_is_read_by_its_own_address_policy() {
        let callee = SocketAddr::from(([198, 51, 100, 9], 5060));
        let both = Sources {
            caller: source(),
            callee: Some(callee),
        };
        let answer_from_b = MediaOp::Answer { offerer: Leg::A };
        let f = flags(answer_from_b, both, &carrier_b(), sbc());
        assert_eq!(
            (f.address, f.received_from),
            (AddressPolicy::Sdp, Some(callee))
        );
        let source_trunk = LegAddressing {
            b: AddressPolicy::Source,
            ..sbc()
        };
        let f = flags(answer_from_b, both, &carrier_b(), source_trunk);
        assert_eq!(f.address, AddressPolicy::Source);
        let trusted_caller = LegAddressing {
            a: AddressPolicy::Sdp,
            ..sbc()
        };
        let f = flags(
            MediaOp::Offer { from: Leg::A },
            both,
            &carrier_b(),
            trusted_caller,
        );
        assert_eq!(
            (f.address, f.received_from),
            (AddressPolicy::Sdp, Some(source()))
        );
    }

    #[test]
    fn refusals_map_to_488_when_the_sdp_is_at_fault() {
        let status = |e: MediaError| failure(&e).status;
        assert_eq!(
            status(MediaError::TooManyStreams { count: 17, max: 16 }),
            488
        );
        assert_eq!(
            status(MediaError::TooManyPorts {
                needed: 68,
                max: 64
            }),
            488
        );
        assert_eq!(status(MediaError::NoPorts), 503);
        assert_eq!(status(MediaError::ShutDown), 503);
    }

    #[test]
    fn default_interfaces_stay_unnamed_and_answers_name_none() {
        let b_only = LegInterfaces {
            a: None,
            b: Some(Arc::from("carrier")),
        };
        let f = flags(MediaOp::Offer { from: Leg::A }, sources(), &b_only, sbc());
        assert_eq!(f.direction, [None, Some("carrier".to_owned())]);
        let f = flags(
            MediaOp::Answer { offerer: Leg::A },
            sources(),
            &carrier_b(),
            sbc(),
        );
        assert_eq!(f.direction, [None, None]);
        assert_eq!(
            f.address,
            AddressPolicy::Sdp,
            "the answer comes from the callee"
        );
        let f = flags(
            MediaOp::Offer { from: Leg::A },
            sources(),
            &LegInterfaces::default(),
            sbc(),
        );
        assert_eq!(f.direction, [None, None]);
    }
}

//! The node's media-relay actor: the one owner of the relay's control plane.
//!
//! Call actors send it SDP bodies to anchor (`MediaMsg::Rewrite`) and get the
//! rewritten body back as `CallMsg::MediaDone`; packets never come near a mailbox —
//! the relay's worker threads forward them (ARCHITECTURE.md rule 5). Once a second it
//! collects sessions whose media stopped and tells their call actors, which hang up.

use crate::messages::CallMsg;
use bytes::Bytes;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use trunkline_b2bua::{Leg, MediaFailure, MediaOp};
use trunkline_media::{Flags, MediaError, Relay};

/// What the media actor does.
pub enum MediaMsg {
    /// Anchor an SDP body of call `key` and send the result to `reply`.
    Rewrite {
        key: Arc<str>,
        id: u64,
        op: MediaOp,
        sdp: Bytes,
        /// Where the caller's signalling comes from (NAT handling of the A side).
        caller_source: SocketAddr,
        /// The interface each leg is anchored on.
        interfaces: LegInterfaces,
        reply: ActorRef<CallMsg>,
    },
    /// The call is over: free its ports.
    Delete { key: Arc<str> },
    /// Collect media timeouts.
    Poll,
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

/// The flags of `op`, for the SDP of the leg that sent it.
///
/// How that leg's SDP addresses are treated: toward the caller (the access side, often
/// behind NAT) the relay starts from the SIP source address rather than the private
/// address a phone writes into SDP; toward the trunk it trusts the SDP. Both sides then
/// latch onto where packets really come from.
///
/// Offers name both legs' interfaces (`direction`); an answer names none, because the
/// relay keeps what its offer chose.
fn flags(op: MediaOp, caller_source: SocketAddr, interfaces: &LegInterfaces) -> Flags {
    let (leg, direction) = match op {
        MediaOp::Offer { from } => (from, interfaces.direction(from)),
        MediaOp::Answer { offerer } => (offerer.other(), [None, None]),
    };
    Flags {
        trust_address: leg == Leg::B,
        received_from: (leg == Leg::A).then_some(caller_source),
        symmetric: true,
        replace_origin: true,
        replace_session_connection: true,
        direction,
        ..Flags::default()
    }
}

fn failure(e: &MediaError) -> MediaFailure {
    MediaFailure {
        status: match e {
            MediaError::Sdp(_) => 488,
            _ => 503,
        },
    }
}

/// The media actor.
pub struct MediaActor;

/// Its state: the relay and which call actor owns each session.
pub struct MediaState {
    relay: Relay,
    owners: HashMap<Arc<str>, ActorRef<CallMsg>>,
}

impl Actor for MediaActor {
    type Msg = MediaMsg;
    type State = MediaState;
    type Arguments = Relay;

    async fn pre_start(
        &self,
        myself: ActorRef<MediaMsg>,
        relay: Relay,
    ) -> Result<MediaState, ActorProcessingErr> {
        myself.send_interval(Duration::from_secs(1), || MediaMsg::Poll);
        Ok(MediaState {
            relay,
            owners: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<MediaMsg>,
        msg: MediaMsg,
        state: &mut MediaState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MediaMsg::Rewrite {
                key,
                id,
                op,
                sdp,
                caller_source,
                interfaces,
                reply,
            } => {
                let flags = flags(op, caller_source, &interfaces);
                let result = match op {
                    MediaOp::Offer { from } => state.relay.offer(&key, tag(from), &sdp, &flags),
                    MediaOp::Answer { offerer } => {
                        state
                            .relay
                            .answer(&key, tag(offerer), tag(offerer.other()), &sdp, &flags)
                    }
                };
                let result = match result {
                    Ok(body) => Ok(Bytes::from(body)),
                    Err(e) => {
                        tracing::warn!(call = %key, error = %e, ?op, "media relay refused SDP");
                        Err(failure(&e))
                    }
                };
                state.owners.insert(key, reply.clone());
                let _ = reply.send_message(CallMsg::MediaDone { id, result });
            }
            MediaMsg::Delete { key } => {
                if state.owners.remove(&key).is_some() {
                    match state.relay.delete(&key, None, None) {
                        Ok(stats) => tracing::debug!(call = %key, ?stats, "media session closed"),
                        Err(e) => tracing::debug!(call = %key, error = %e, "media delete"),
                    }
                }
            }
            MediaMsg::Poll => {
                for t in state.relay.take_timeouts() {
                    let key: Arc<str> = Arc::from(t.call_id.as_str());
                    if let Some(owner) = state.owners.get(&key) {
                        tracing::info!(call = %key, idle_secs = t.idle.as_secs(), "media timeout");
                        let _ = owner.send_message(CallMsg::MediaTimeout);
                    } else {
                        let _ = state.relay.delete(&key, None, None);
                    }
                }
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<MediaMsg>,
        state: &mut MediaState,
    ) -> Result<(), ActorProcessingErr> {
        state.relay.shutdown();
        Ok(())
    }
}

/// Starts the media actor around a running relay.
pub async fn spawn(relay: Relay) -> Result<ActorRef<MediaMsg>, ractor::SpawnErr> {
    let (actor, _join) = ractor::ActorRuntime::spawn(None, MediaActor, relay).await?;
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

    #[test]
    fn offers_name_the_offering_legs_interface_first() {
        let f = flags(MediaOp::Offer { from: Leg::A }, source(), &carrier_b());
        assert_eq!(
            f.direction,
            [Some("access".to_owned()), Some("carrier".to_owned())]
        );
        assert_eq!(f.received_from, Some(source()));
        assert!(!f.trust_address);
        // A re-INVITE from the callee: the same two interfaces, the other way round.
        let f = flags(MediaOp::Offer { from: Leg::B }, source(), &carrier_b());
        assert_eq!(
            f.direction,
            [Some("carrier".to_owned()), Some("access".to_owned())]
        );
        assert!(f.trust_address);
        assert_eq!(f.received_from, None);
    }

    #[test]
    fn default_interfaces_stay_unnamed_and_answers_name_none() {
        let b_only = LegInterfaces {
            a: None,
            b: Some(Arc::from("carrier")),
        };
        let f = flags(MediaOp::Offer { from: Leg::A }, source(), &b_only);
        assert_eq!(f.direction, [None, Some("carrier".to_owned())]);
        let f = flags(MediaOp::Answer { offerer: Leg::A }, source(), &carrier_b());
        assert_eq!(f.direction, [None, None]);
        assert!(f.trust_address, "the answer comes from the callee");
        let f = flags(
            MediaOp::Offer { from: Leg::A },
            source(),
            &LegInterfaces::default(),
        );
        assert_eq!(f.direction, [None, None]);
    }
}

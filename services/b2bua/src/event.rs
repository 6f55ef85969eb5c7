//! What a call asks of its driver: bytes to send and things that happened.

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use trunkline_sip::{Method, Peer, Uri};

/// Which side of the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Leg {
    /// Toward the caller.
    A,
    /// Toward the callee (the trunk).
    B,
}

impl Leg {
    pub fn other(self) -> Leg {
        match self {
            Leg::A => Leg::B,
            Leg::B => Leg::A,
        }
    }
}

/// One message to put on the wire.
#[derive(Debug, Clone)]
pub struct Transmit {
    pub leg: Leg,
    pub peer: Peer,
    pub data: Bytes,
    /// Request method, or the CSeq method of a response (for metrics).
    pub method: Method,
    /// Status code when this is a response.
    pub status: Option<u16>,
    pub retransmission: bool,
}

/// Why a call ended; recorded in logs and, later, CDRs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EndCause {
    CallerHangup,
    CalleeHangup,
    CallerCancel,
    /// The callee answered with a final error.
    Rejected,
    NoRoute,
    /// No final response from the callee (Timer B) or no answer before the ring limit.
    NoAnswer,
    TooManyHops,
    TransportError,
    /// The caller never ACKed our 2xx.
    NoAck,
    /// A transaction on an established call timed out (e.g. BYE never answered).
    Timeout,
    /// No media flowed for the relay's inactivity timeout.
    MediaTimeout,
    /// The media relay could not anchor the session (no ports, unparsable SDP).
    MediaUnavailable,
    /// Ended by the node itself (operator, drain deadline).
    Local,
    /// The call reached the configured maximum duration.
    MaxDuration,
    /// The callee's trunk was at its limit (calls up at once or per second).
    TrunkLimit,
}

/// What the media relay is asked to do with an SDP body before it leaves the call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MediaOp {
    /// `from` offers: allocate/refresh relay ports, rewrite the offer for the other leg.
    Offer { from: Leg },
    /// The answer to an offer made by `offerer`: rewrite it for the offerer.
    Answer { offerer: Leg },
}

/// Things the driver reacts to.
#[derive(Debug, Clone)]
pub enum Event {
    /// The call needs a routing decision for this Request-URI (`Call::handle_route`).
    RouteRequired {
        request_uri: Uri,
        caller: Option<String>,
    },
    /// The trunk of the last routing decision failed the call with `status` before it
    /// was answered, and the route has another (`RouteDecision::Trunk::failover`): a
    /// `RouteRequired` for the next one follows. The failed leg is gone.
    RouteFailed { status: u16 },
    /// The callee's provisional answer (18x) was relayed to the caller; `early_media`:
    /// it carried SDP, so media flows before the answer.
    Progress { status: u16, early_media: bool },
    /// The callee answered.
    Answered,
    /// An offer/answer exchange on the established call completed; `held`: the offer
    /// `by` made put the media on hold (`sendonly`, `inactive` or a zero address).
    Hold { by: Leg, held: bool },
    /// A transfer target answered; its offer is on its way to the remaining leg. From
    /// here the relay's side of `leg` belongs to the target (its address, interface).
    TransferAnswered { leg: Leg },
    /// `leg` now is the transfer target; the old party was sent BYE.
    Transferred { leg: Leg },
    /// The transfer of `leg` failed with `status` (the target's answer, 408 when it
    /// never answered, 487 when the call ended first); the call goes on as it was
    /// unless an `Ended` follows.
    TransferFailed { leg: Leg, status: u16 },
    /// The caller has its final answer (`status`), or an answered call hung up (200).
    /// Emitted once per call.
    Ended { status: u16, cause: EndCause },
    /// A transaction timer fired without an answer.
    TransactionTimeout { leg: Leg, timer: char },
    /// A retransmitted request or response was absorbed.
    RetransmissionReceived { leg: Leg },
    /// The call is in a stable state worth replicating (answered, re-INVITE done).
    Settled,
    /// An adopted call's legs answered the adopter's re-INVITEs: with `ok` both
    /// accepted and the call goes on here; without, it is being hung up.
    Adopted { ok: bool },
    /// An SDP must go through the media relay before it is sent: answer with
    /// `Call::handle_media(now, id, ..)`. Later output of the call waits behind it.
    /// `sdp` is the SDP alone even when the body is multipart (SIP-I: SDP + ISUP); the
    /// call splices the rewrite back into the body, so the relay never sees other parts.
    Media { id: u64, op: MediaOp, sdp: Bytes },
}

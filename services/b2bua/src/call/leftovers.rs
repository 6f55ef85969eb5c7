//! What an ended call still owes the network, in a form that outlives the call.
//!
//! Once both dialogs are over, the only work left in a call is answering
//! retransmissions: the 200 for a BYE whose 200 was lost (Timer J, 32 s over UDP) and
//! the ACK for a final response the far side re-sends (Timer D). Keeping the whole call
//! — two dialogs, its transactions, its actor — for that long multiplies the memory of
//! a busy node by the call rate times 32 s. `Call::take_leftovers` hands those answers
//! over as plain bytes instead, and the call can be dropped at once.

use super::Call;
use crate::event::Leg;
use bytes::Bytes;
use std::time::Instant;
use trunkline_sip::transaction::Leftover;
use trunkline_sip::Peer;

/// One answer to a retransmission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replay {
    pub leg: Leg,
    /// The top Via branch of the retransmitted message this answers: the request's
    /// (for a request of the far side) or our own request's (for a response to it).
    pub branch: Bytes,
    /// `true`: answers a retransmitted request, to its source; `false`: answers a
    /// retransmitted response, to `peer`.
    pub to_request: bool,
    pub data: Bytes,
    pub peer: Peer,
}

/// Everything an ended call still owes, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftovers {
    pub replays: Vec<Replay>,
    /// After this nothing is owed any more.
    pub until: Option<Instant>,
}

impl Call {
    /// When the call has ended and its transactions only answer (or absorb)
    /// retransmissions, takes those answers and drops the transactions, so that
    /// `is_finished()` holds. `None` while anything is still in flight.
    pub fn take_leftovers(&mut self) -> Option<Leftovers> {
        if !self.ended
            || !self.outbox.is_empty()
            || self.pending_ack.is_some()
            || self.transfer.is_some()
        {
            return None;
        }
        let mut replays = Vec::new();
        let mut until: Option<Instant> = None;
        let mut take =
            |leftover: Leftover, leg: Leg, branch: Option<&str>, to_request: bool, peer: Peer| {
                match leftover {
                    Leftover::Busy => return false,
                    Leftover::Nothing => {}
                    Leftover::Replay { data, until: u } => {
                        if let Some(b) = branch {
                            replays.push(Replay {
                                leg,
                                branch: Bytes::copy_from_slice(b.as_bytes()),
                                to_request,
                                data,
                                peer,
                            });
                            until = Some(until.map_or(u, |t| t.max(u)));
                        }
                    }
                }
                true
            };
        for e in &self.servers {
            if !take(e.tx.leftover(), e.leg, e.tx.key().branch(), true, e.peer) {
                return None;
            }
        }
        for e in &self.clients {
            if !take(e.tx.leftover(), e.leg, e.tx.key().branch(), false, e.peer) {
                return None;
            }
        }
        self.servers.clear();
        self.clients.clear();
        Some(Leftovers { replays, until })
    }
}

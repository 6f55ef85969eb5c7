//! RFC 3261 §17 transaction state machines, with the RFC 6026 "Accepted" state for
//! 2xx responses to INVITE.
//!
//! Sans-IO: every input carries `now`, every output is polled. The TU (the B2BUA's
//! call) feeds received messages, timer expiries and transport failures in with
//! `handle_*`, then drains `poll_transmit` (bytes to send on the transaction's
//! transport), `poll_event` (timeouts, termination) and `poll_timeout` (when to
//! call `handle_timeout` next). Transactions never pick a destination or socket:
//! the TU sends every `Transmit` of a transaction where the request went (client)
//! or where responses to its Via go (server).
//!
//! Routing a received message to a transaction is the TU's job, with [`TxKey`]:
//! `TxKey::server(&req)` for requests (an ACK for a non-2xx finds its INVITE),
//! `TxKey::client(&resp)` for responses. The ACK for a 2xx carries a new branch and
//! so matches no transaction key; the TU finds the INVITE server transaction
//! through the dialog and passes the ACK to `handle_request`, which stops the 2xx
//! retransmissions.

mod client;
mod key;
mod outbox;
mod server;

#[cfg(test)]
mod sim_tests;
#[cfg(test)]
mod tests;

pub use client::ClientTransaction;

/// What a transaction still has to do once its TU is done with everything else (see
/// `leftover` on both kinds). A call that has ended keeps only these, and only as long
/// as they matter, so it can free the rest at once instead of holding two whole
/// transactions for 32 s to answer a BYE that is retransmitted once in a blue moon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// Still working: retransmitting, waiting for a response or an ACK, or for the TU.
    Busy,
    /// Only absorbing retransmissions that need no answer; can be dropped.
    Nothing,
    /// Only answering each retransmission of the other side with `data` (the last
    /// response of a non-INVITE server transaction, the ACK of an INVITE client
    /// transaction) until `until`.
    Replay {
        data: bytes::Bytes,
        until: std::time::Instant,
    },
}
pub use key::TxKey;
pub use server::ServerTransaction;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// The RFC 3261 timer base values. Everything else derives from them (Table 4):
/// A/E/G start at T1 and cap at T2 (A never caps), B/F/H/J/L/M are 64*T1, D is
/// at least 32 s, I/K are T4 — and D/I/J/K are zero on reliable transports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timers {
    /// RTT estimate.
    pub t1: Duration,
    /// Maximum retransmission interval for non-INVITE requests and INVITE responses.
    pub t2: Duration,
    /// Maximum time a message stays in the network.
    pub t4: Duration,
}

impl Default for Timers {
    /// RFC 3261 defaults: 500 ms, 4 s, 5 s.
    fn default() -> Self {
        Timers {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl Timers {
    /// 64*T1: Timers B, F, H, J (unreliable), L and M.
    pub fn t1x64(&self) -> Duration {
        self.t1.saturating_mul(64)
    }

    /// Timer D for unreliable transports: "at least 32 seconds", and never shorter
    /// than the server's Timer H so our ACK outlives its retransmissions.
    pub fn timer_d(&self) -> Duration {
        self.t1x64().max(Duration::from_secs(32))
    }

    /// The next retransmission interval after `current`: doubled, capped at T2.
    pub(crate) fn backoff(&self, current: Duration) -> Duration {
        current.saturating_mul(2).min(self.t2)
    }
}

/// One datagram or stream write the TU must send for a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// The encoded message, shared with the transaction's own copy (no re-encode).
    pub data: Bytes,
    /// True for retransmissions (timer-driven or answering a retransmitted
    /// message), so the TU can count them and skip per-message logging.
    pub retransmission: bool,
}

/// Client transaction states (RFC 3261 Fig. 5 and 6, RFC 6026 Fig. 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ClientState {
    /// INVITE sent, no response yet (Timers A and B run).
    Calling,
    /// Non-INVITE sent, no response yet (Timers E and F run).
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// INVITE got a 2xx: absorbing nothing, passing every 2xx up until Timer M.
    Accepted,
    /// Final non-2xx (INVITE, Timer D) or any final (non-INVITE, Timer K).
    Completed,
    /// Done; the TU drops the transaction.
    Terminated,
}

/// Server transaction states (RFC 3261 Fig. 7 and 8, RFC 6026 Fig. 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ServerState {
    /// Non-INVITE received, no response sent yet.
    Trying,
    /// A provisional was sent (INVITE starts here).
    Proceeding,
    /// INVITE answered with 2xx: retransmitting it until ACK, Timer L.
    Accepted,
    /// Final non-2xx sent (INVITE: Timers G and H; non-INVITE: Timer J).
    Completed,
    /// INVITE: the ACK for our non-2xx arrived (Timer I).
    Confirmed,
    /// Done; the TU drops the transaction.
    Terminated,
}

/// What a transaction tells its TU besides messages to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxEvent {
    /// Timer B / F (client) or H (server, no ACK for a non-2xx final) fired: the
    /// TU maps B/F to a 408.
    Timeout { timer: char },
    /// INVITE server transaction in Accepted never got the ACK for its 2xx
    /// within 64*T1 (the TU should send BYE).
    NoAck,
    /// The transport failed (reported by the TU through handle_transport_error):
    /// the TU maps it to 503 (RFC 3261 §8.1.3.1).
    TransportError,
    /// The transaction reached Terminated; the TU removes it from its table.
    Terminated,
}

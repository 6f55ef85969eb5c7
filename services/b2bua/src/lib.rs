//! `trunkline-b2bua`: the two-leg call state machine, sans-IO.
//!
//! A [`Call`] owns the caller-side (A) and callee-side (B) dialogs and every
//! transaction of both. Its driver feeds it messages, routing decisions and timer
//! ticks (`handle_*`, each with `now`) and drains what it wants done (`poll_transmit`,
//! `poll_event`, `poll_timeout`) — the shape of `quinn-proto`. Nothing of one leg's
//! topology (Via, Contact, Record-Route, Call-ID, tags) is copied to the other: the
//! B-leg is built from scratch and only session headers cross (see `relay`).

pub mod call;
pub mod config;
pub mod event;
pub mod hold;
pub mod ids;
pub mod multipart;
pub mod relay;
pub mod snapshot;

pub use call::{
    Adoption, Call, CallState, Leftovers, MediaFailure, Party, Replay, RouteDecision,
    TransferError, TransferTarget,
};
pub use config::{CallConfig, Local, PeerCredentials, Presentation};
pub use event::{EndCause, Event, Leg, MediaOp, Transmit};
pub use ids::{owner_of, Ids};
pub use snapshot::{CallSnapshot, LegSnapshot};

//! `trunkline-call`: the actor layer. One ractor actor per call drives a
//! `trunkline_b2bua::Call`; the dispatcher classifies what the transports receive and
//! hands it to the call its dialog or transaction names; the router picks the trunk and
//! the trust rules say who may call at all.

pub mod actor;
pub mod digest;
pub mod directory;
pub mod dispatcher;
pub mod dns;
pub mod health;
pub mod limits;
pub mod media;
pub mod messages;
pub mod metrics;
pub mod outbound;
pub mod pike;
pub mod registration;
pub mod registry;
pub mod replicate;
pub mod rewrite;
pub mod router;
pub mod shared;
pub mod stateless;
pub mod tls;
pub mod trust;

pub use directory::{CallDirectory, CallEvent, CallEventKind, CallPhase, CallRecord, EndedBy};
pub use dispatcher::{AdoptFailure, Dispatcher, HangupError, OriginateFailure};
pub use limits::{Limits, TrunkLimits};
pub use messages::TransferFailure;
pub use outbound::{Listener, Outbound};
pub use pike::SourceLimitConfig;
pub use replicate::{via_node, via_parts, Replicate, Strays, VIA_NODE};
pub use router::{Route, RouteTrunk, Router, Routing, TargetError, Trunk};
pub use shared::DispatcherConfig;
pub use trust::{Origin, Source, Trust};

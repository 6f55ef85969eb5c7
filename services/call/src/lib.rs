//! `trunkline-call`: the actor layer. One ractor actor per call drives a
//! `trunkline_b2bua::Call`; the dispatcher parses what the transports receive and
//! routes it by Call-ID; the router picks the trunk.

pub mod actor;
pub mod dispatcher;
pub mod media;
pub mod metrics;
pub mod router;
pub mod stateless;

pub use dispatcher::{Dispatcher, DispatcherConfig};
pub use router::{Router, Trunk};

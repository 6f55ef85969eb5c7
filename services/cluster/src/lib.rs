//! `trunkline-cluster`: what makes nodes a cluster. Today: membership in etcd (each node
//! registers itself under a lease and watches the others) and the consistent-hash ring of
//! live nodes that call ownership and buddy choice will use. etcd is never on a call's
//! path: the call layer reads the membership from memory (`Membership::members`), and an
//! etcd outage leaves the last known membership in place.

pub mod document;
pub mod member;
pub mod membership;
pub mod ring;

pub use document::{Document, WriteError};
pub use member::{NodeInfo, NodeState};
pub use membership::{Members, Membership, MembershipConfig};
pub use ring::Ring;

//! `trunkline-cluster`: what makes nodes a cluster. Today: membership in etcd (each node
//! registers itself under a lease and watches the others), the consistent-hash ring of
//! live nodes, a document in etcd every node follows (the shared trunks and routes), call
//! replication to buddies over node-to-node gRPC (mutual TLS optional, `link`), owner routing of strays (`forward`), and the takeover of a dead node's calls
//! (`takeover`: who is dead, which of its calls this node adopts). etcd is never on a
//! call's path: the call layer reads the membership from memory (`Membership::members`), and an etcd outage
//! leaves the last known membership in place.

pub mod document;
pub mod etcd;
pub mod forward;
pub mod link;
pub mod member;
pub mod membership;
pub mod replication;
pub mod ring;
pub mod takeover;

pub use document::{Document, WriteError};
pub use etcd::{Etcd, EtcdTls};
pub use forward::Forwarder;
pub use member::{NodeInfo, NodeState};
pub use membership::{Members, Membership, MembershipConfig};
pub use replication::{Change, Emit, Forwarded, Handover, ReplicaStore, Replicator, SentCounters};
pub use ring::Ring;
pub use takeover::{Orphan, TakeoverStats};

//! Trunkline's gRPC API as Rust: messages, tonic clients and servers, generated at build
//! time from `proto/` so the node, `trunkctl` and tests share one definition.

/// `trunkline.admin.v1`: the admin API a node serves to operators and applications.
pub mod admin {
    /// Version 1; fields are only ever added, so old clients keep working.
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("trunkline.admin.v1");
    }
}

/// `trunkline.cluster.v1`: what nodes of a cluster say to each other.
pub mod cluster {
    pub mod v1 {
        #![allow(clippy::all, clippy::pedantic, missing_docs)]
        tonic::include_proto!("trunkline.cluster.v1");
    }
}

/// The encoded descriptors of every file under `proto/`, for server reflection: with it
/// a generic client lists and calls every method without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/trunkline_descriptor.bin"));

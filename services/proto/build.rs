//! Compiles `proto/` with protox (a protobuf compiler in Rust, so the build needs nothing
//! outside Cargo) into Rust types, tonic clients and servers, and the encoded descriptor
//! set that server reflection hands to generic clients.

use std::path::PathBuf;

const FILES: &[&str] = &[
    "trunkline/admin/v1/node.proto",
    "trunkline/admin/v1/calls.proto",
    "trunkline/admin/v1/trunks.proto",
];

const CLUSTER_FILES: &[&str] = &["trunkline/cluster/v1/replication.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    for file in FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let fds = protox::compile(FILES, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("trunkline_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure().compile_fds(fds)?;
    // The node-to-node API is compiled apart: it is not in the reflection set the admin
    // API publishes.
    for file in CLUSTER_FILES {
        println!("cargo:rerun-if-changed={}", root.join(file).display());
    }
    let cluster = protox::compile(CLUSTER_FILES, [&root])?;
    tonic_prost_build::configure().compile_fds(cluster)?;
    Ok(())
}

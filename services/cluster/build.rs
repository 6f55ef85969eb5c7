//! Checks, for a clear message rather than etcd-client's, that the protoc tools/protoc
//! runs is there.
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if let Err(e) = protoc_bin_vendored::protoc_bin_path() {
        println!("cargo:warning=protoc-bin-vendored has no protoc for this platform: {e}");
    }
}

//! The process allocator and how it gives memory back.
//!
//! mimalloc fragments less than glibc's allocator under many small per-call
//! allocations, but by default it keeps freed pages committed (and, on this kind of
//! host, backed by transparent huge pages) for reuse, so RSS never returns to its
//! baseline after a burst of calls or connections. An SBC that is watched for memory
//! leaks must give memory back, so two options are set at start-up:
//! - arenas are committed on demand rather than eagerly;
//! - freed pages are purged at once (an idle worker thread would otherwise never get
//!   to its delayed purge).

#![allow(unsafe_code)]

/// mimalloc's `mi_option_arena_eager_commit` (index in `mi_option_e`, mimalloc 2.x).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// mimalloc's `mi_option_purge_delay` (index in `mi_option_e`, mimalloc 2.x).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Applies the options above. Call first thing in `main`, before threads start.
pub fn tune() {
    // Huge pages make a purge of a few KiB free nothing; per-call allocations are small.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("trunkline: cannot disable transparent huge pages: {e}");
    }
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is
    // documented as not thread safe, which is why it runs before any thread is spawned.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, 0);
    }
}

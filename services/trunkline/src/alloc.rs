//! The process allocator and how it gives memory back.
//!
//! mimalloc fragments less than glibc's allocator under many small per-call
//! allocations, but by default it keeps freed pages committed (and, on this kind of
//! host, backed by transparent huge pages) for reuse, so RSS never returns to its
//! baseline after a burst of calls or connections. An SBC that is watched for memory
//! leaks must give memory back, so at start-up:
//! - arenas are committed on demand rather than eagerly;
//! - freed pages are purged after `PURGE_DELAY_MS` (mimalloc waits ten times that for
//!   arena memory), not at once: purging every freed page at once costs a page fault
//!   when it is used again and a TLB shootdown across the cores, about a tenth of the
//!   node's CPU per call at several thousand calls/s;
//! - one thread asks mimalloc every `COLLECT_EVERY` to purge what has waited long
//!   enough. mimalloc purges only when a thread allocates or frees, so without it a
//!   node that went idle after a burst would keep the burst's memory.

#![allow(unsafe_code)]

use std::time::Duration;

/// mimalloc's `mi_option_arena_eager_commit` (index in `mi_option_e`, mimalloc 2.x and 3.x).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// mimalloc's `mi_option_purge_delay` (index in `mi_option_e`, mimalloc 2.x and 3.x).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long a freed page stays committed for reuse (arena memory: ten times this).
const PURGE_DELAY_MS: std::ffi::c_long = 100;
/// How often the collector thread purges what is due.
const COLLECT_EVERY: Duration = Duration::from_millis(500);

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Applies the options above and starts the collector thread. Call first thing in
/// `main`: the options must be set before any other thread starts.
pub fn tune() {
    // Huge pages make a purge of a few KiB free nothing; per-call allocations are small.
    if let Err(e) = nix::sys::prctl::set_thp_disable(true) {
        eprintln!("trunkline: cannot disable transparent huge pages: {e}");
    }
    // SAFETY: mi_option_set only stores an integer in mimalloc's option table; it is
    // documented as not thread safe, which is why it runs before any thread is spawned.
    unsafe {
        libmimalloc_sys::mi_option_set(ARENA_EAGER_COMMIT, 0);
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    }
    let collector = std::thread::Builder::new()
        .name("alloc-purge".into())
        .spawn(|| loop {
            std::thread::sleep(COLLECT_EVERY);
            // SAFETY: mi_collect may be called from any thread at any time; without
            // `force` it only purges memory whose delay has passed.
            unsafe { libmimalloc_sys::mi_collect(false) };
        });
    if let Err(e) = collector {
        eprintln!("trunkline: cannot start the allocator's collector thread: {e}");
    }
}

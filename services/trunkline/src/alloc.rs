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
//!   node that went idle after a burst would keep the burst's memory;
//! - each runtime thread, as it parks, collects its own heap (at most once per
//!   `PARK_COLLECT_EVERY`). The collector thread's `mi_collect` reaches only its own
//!   heap and the shared arenas: the pages a worker freed stay in that worker's heap
//!   until the worker itself collects, and an idle worker never does. Measured with
//!   1000 idle TCP connections opened and reaped twice: without it the node kept 7 MiB
//!   after the first round and 9 MiB after the second; with it, under 1 MiB after each,
//!   within a second. Its cost at 2000 anchored calls/s is 0.06 % of the node's samples
//!   (`perf`), the rate limit being what keeps it there: a thread parks thousands of
//!   times a second at load. At 5000 calls/s the pages it gives back cost 0.4 more
//!   minor page faults per call (0.7 before, 1.1 after), with no change in CPU per
//!   call that the run-to-run noise lets one see. The limit leaves one gap: what a
//!   thread freed in its last `PARK_COLLECT_EVERY` before going idle stays until that
//!   thread next wakes and parks.

#![allow(unsafe_code)]

use libmimalloc_sys as mi;
use std::alloc::{GlobalAlloc, Layout};
use std::cell::Cell;
use std::time::{Duration, Instant};

/// mimalloc's `mi_option_arena_eager_commit` (index in `mi_option_e`, mimalloc 2.x and 3.x).
const ARENA_EAGER_COMMIT: libmimalloc_sys::mi_option_t = 4;
/// mimalloc's `mi_option_purge_delay` (index in `mi_option_e`, mimalloc 2.x and 3.x).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// How long a freed page stays committed for reuse (arena memory: ten times this).
const PURGE_DELAY_MS: std::ffi::c_long = 100;
/// How often the collector thread purges what is due.
const COLLECT_EVERY: Duration = Duration::from_millis(500);
/// The least time between two collections of one runtime thread's heap as it parks.
const PARK_COLLECT_EVERY: Duration = Duration::from_millis(100);

thread_local! {
    /// When this thread last collected its heap on parking.
    static PARK_COLLECTED: Cell<Option<Instant>> = const { Cell::new(None) };
}

#[global_allocator]
static GLOBAL: MiMalloc = MiMalloc;

/// mimalloc, entered by its plain functions when the alignment asked for is one it
/// gives every block anyway. The `mimalloc` crate's allocator calls the `_aligned`
/// functions for every allocation, whose fast path checks the alignment of the block
/// it is about to hand out and falls back to a slower path when it is off; with a few
/// hundred allocations per call, that was about 4 % of the node's instructions.
struct MiMalloc;

/// mimalloc's `MI_MAX_ALIGN_SIZE` on 64-bit targets.
const MI_MAX_ALIGN_SIZE: usize = 16;

/// Whether a plain `mi_malloc(size)` block is aligned to `align`: mimalloc aligns every
/// block to its size up to `MI_MAX_ALIGN_SIZE` (its own `mi_malloc_is_naturally_aligned`).
fn natural(size: usize, align: usize) -> bool {
    align <= MI_MAX_ALIGN_SIZE && align <= size
}

// SAFETY: every function hands the request to mimalloc, which returns blocks aligned as
// `natural` states or as asked through its `_aligned` entry points, and frees any of its
// blocks with `mi_free` whatever function allocated them.
unsafe impl GlobalAlloc for MiMalloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: plain calls into mimalloc with a valid size and power-of-two alignment.
        unsafe {
            if natural(size, align) {
                mi::mi_malloc(size).cast()
            } else {
                mi::mi_malloc_aligned(size, align).cast()
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if natural(size, align) {
                mi::mi_zalloc(size).cast()
            } else {
                mi::mi_zalloc_aligned(size, align).cast()
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from one of the functions above (GlobalAlloc's contract).
        unsafe { mi::mi_free(ptr.cast()) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let align = layout.align();
        // SAFETY: `ptr` is a live mimalloc block (GlobalAlloc's contract); the new block
        // is aligned as `alloc` would align a block of `new_size`.
        unsafe {
            if natural(new_size, align) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, align).cast()
            }
        }
    }
}

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

/// For the runtime's `on_thread_park`: gives back what this thread's heap holds free,
/// unless it did so less than `PARK_COLLECT_EVERY` ago. Forced, because a thread about
/// to park may sleep until the next packet: what it freed must not wait for a purge
/// delay that only its own next allocation would act on.
pub fn on_thread_park() {
    let now = Instant::now();
    let due = PARK_COLLECTED.with(|last| {
        let due = last
            .get()
            .is_none_or(|t| now.duration_since(t) >= PARK_COLLECT_EVERY);
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect works on the calling thread's own heap (and the shared
        // arenas, which mimalloc locks); it may be called at any time.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks from every entry point are aligned as asked, across the sizes and
    /// alignments where `natural` switches between the plain and `_aligned` functions.
    #[test]
    fn blocks_are_aligned_as_asked() {
        for align in [1usize, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [
                1usize, 3, 8, 15, 16, 24, 40, 48, 100, 129, 1000, 5000, 70_000,
            ] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; every block is freed once, by `dealloc`.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    assert!(
                        !p.is_null() && (p as usize).is_multiple_of(align),
                        "alloc {size} {align}"
                    );
                    p.write_bytes(0xa5, size);
                    let grown = MiMalloc.realloc(p, layout, size * 3);
                    assert!(
                        (grown as usize).is_multiple_of(align),
                        "realloc {size} {align}"
                    );
                    assert_eq!(*grown.add(size - 1), 0xa5);
                    MiMalloc.dealloc(
                        grown,
                        Layout::from_size_align(size * 3, align).expect("layout"),
                    );
                    let z = MiMalloc.alloc_zeroed(layout);
                    assert!(
                        (z as usize).is_multiple_of(align),
                        "alloc_zeroed {size} {align}"
                    );
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    MiMalloc.dealloc(z, layout);
                }
            }
        }
    }
}

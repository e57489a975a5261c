//! A global allocator that can count the heap bytes allocated and freed while counting is on,
//! so the memory workload can measure what its tasks hold (the runtime's own allocations
//! included: that is the point).
//!
//! Counting is off unless a workload turns it on: a shared counter updated on every
//! allocation would bounce between cores and slow the multi-threaded runtimes more than the
//! single-threaded one, skewing every timed workload. Off, each allocation costs one relaxed
//! load of a flag that is never written.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering::Relaxed};

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while counting was on (frees of older blocks count too,
/// so this is the net growth of the heap over the counted window).
static NET: AtomicIsize = AtomicIsize::new(0);

fn count(delta: isize) {
    if COUNTING.load(Relaxed) {
        NET.fetch_add(delta, Relaxed);
    }
}

/// `size` as a signed delta (an allocation larger than `isize::MAX` cannot exist).
fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

/// Forwards to the system allocator, counting bytes.
pub(crate) struct Counting;

// SAFETY: every call forwards to `System` with the caller's layout and pointer unchanged; the
// counter is only arithmetic on the side.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(signed(layout.size()));
        // SAFETY: the caller upholds `alloc`'s contract; forwarded as is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        // SAFETY: `ptr` came from `alloc`/`realloc` above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(signed(layout.size()));
        // SAFETY: as `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: as `alloc`/`dealloc`: forwarded unchanged.
        let moved = unsafe { System.realloc(ptr, layout, new_size) };
        if !moved.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        moved
    }
}

/// Starts counting from zero.
pub(crate) fn start_counting() {
    NET.store(0, Relaxed);
    COUNTING.store(true, Relaxed);
}

/// Stops counting; returns the net heap growth (bytes) since [`start_counting`].
pub(crate) fn stop_counting() -> isize {
    COUNTING.store(false, Relaxed);
    NET.load(Relaxed)
}

/// Resident set size in bytes (Linux: `/proc/self/statm`), or `None` elsewhere.
pub(crate) fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

#[cfg(target_os = "linux")]
fn page_size() -> usize {
    rustix::param::page_size()
}

#[cfg(not(target_os = "linux"))]
fn page_size() -> usize {
    4096
}

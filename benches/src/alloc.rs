//! A global allocator wrapper (over mimalloc, as in the services) that counts live heap bytes, so a benchmark can measure what a
//! data structure really holds (capacity and hash-table overhead included).

use std::alloc::{GlobalAlloc, Layout};

/// The allocator the services use (see `tally-aggregator`), so figures match production.
use mimalloc::MiMalloc as Inner;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};

/// Counts live bytes allocated through it; install with `#[global_allocator]`.
pub struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);
/// Counting costs an atomic read-modify-write per allocation, so it is on only while a
/// memory figure is measured ([`counting`]), never during timed runs.
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns counting on or off.
pub fn counting(on: bool) {
    ENABLED.store(on, Ordering::SeqCst);
}

fn add(bytes: isize) {
    if ENABLED.load(Ordering::Relaxed) {
        LIVE.fetch_add(bytes, Ordering::Relaxed);
    }
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        // SAFETY: forwarded unchanged to the inner allocator.
        unsafe { Inner.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        // SAFETY: forwarded unchanged to the inner allocator.
        unsafe { Inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        // SAFETY: forwarded unchanged to the inner allocator.
        unsafe { Inner.realloc(ptr, layout, new_size) }
    }
}

/// Live heap bytes right now (only meaningful when [`Counting`] is the global allocator).
pub fn live_bytes() -> isize {
    LIVE.load(Ordering::Relaxed)
}

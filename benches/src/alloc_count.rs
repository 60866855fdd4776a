//! Heap allocations counted in the benchmark binaries: a global allocator that forwards to
//! the system allocator and, while counting is on, counts every allocation and
//! reallocation of every thread (callers, Tokio's workers, the cache runtime's Redis
//! thread, the connection drivers).
//!
//! Counting is off by default, so criterion's timed loops pay one relaxed load per
//! allocation and no shared-counter traffic; [`counted`] turns it on around a measured
//! pass ([`crate::process_cost`] uses it).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

/// The benches' global allocator (see the module docs).
pub struct CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCS: AtomicU64 = AtomicU64::new(0);

impl CountingAlloc {
    fn note(&self) {
        if COUNTING.load(Relaxed) {
            ALLOCS.fetch_add(1, Relaxed);
        }
    }
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        self.note();
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Runs `f` with counting on; returns its result and the allocations made meanwhile by
/// every thread of the process.
///
/// ```
/// let (v, allocs) = cache_benches::alloc_count::counted(|| vec![1u8; 64]);
/// assert_eq!(v.len(), 64);
/// assert!(allocs >= 1);
/// ```
pub fn counted<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNTING.store(true, Relaxed);
    let before = ALLOCS.load(Relaxed);
    let out = f();
    let after = ALLOCS.load(Relaxed);
    COUNTING.store(false, Relaxed);
    (out, after - before)
}

/// Turns counting on for the rest of the process (a binary that only measures, such as
/// `hit-instructions`); read the count with [`allocations`].
///
/// ```
/// cache_benches::alloc_count::count_from_now();
/// let before = cache_benches::alloc_count::allocations();
/// let v = vec![0u8; 32];
/// assert!(cache_benches::alloc_count::allocations() > before);
/// drop(v);
/// ```
pub fn count_from_now() {
    COUNTING.store(true, Relaxed);
}

/// Allocations counted so far.
pub fn allocations() -> u64 {
    ALLOCS.load(Relaxed)
}

//! A local hit allocates nothing of its own: the key and its tags are written on the stack
//! (`cache_runtime::key::KeyWriter`), and only a miss turns them into strings. Counted by a
//! global allocator, per thread, so nothing else running in the process is counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct PerThreadCount;

thread_local! {
    static ALLOCS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for PerThreadCount {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as the caller's.
        unsafe { System.realloc(ptr, layout, size) }
    }
}

#[global_allocator]
static GLOBAL: PerThreadCount = PerThreadCount;

/// Allocations made by this thread while `f` runs.
fn allocations(f: impl FnOnce()) -> u64 {
    let before = ALLOCS.with(Cell::get);
    f();
    ALLOCS.with(Cell::get) - before
}

#[cache_runtime::cached(tier = "local", ttl = 300, key = "item:<id>:<name>")]
fn item(id: u64, name: &str) -> u64 {
    id + name.len() as u64
}

#[cache_runtime::cached(
    tier = "local",
    ttl = 300,
    key = "item:<id>:<owner>:<kind>",
    tags = ["owner:<owner>", "kind:<kind>"]
)]
fn tagged_item(id: u64, owner: u32, kind: &str) -> u64 {
    id + u64::from(owner) + kind.len() as u64
}

/// `item` for the long-key test (tests run in parallel; each counts its own cache's hits).
#[cache_runtime::cached(tier = "local", ttl = 300, key = "item:<id>:<name>")]
fn long_item(id: u64, name: &str) -> u64 {
    id + name.len() as u64
}

#[cache_runtime::cached(tier = "local", ttl = 300, key = "item:<id>")]
async fn async_item(id: u64) -> u64 {
    id * 2
}

#[test]
fn a_sync_local_hit_allocates_nothing() {
    let name = "a name: with separators";
    for id in 0..100 {
        assert_eq!(item(id, name), id + name.len() as u64);
    }
    let n = allocations(|| {
        for round in 0..10 {
            for id in 0..100 {
                assert_eq!(item(id, name), id + name.len() as u64, "round {round}");
            }
        }
    });
    assert_eq!(n, 0, "1 000 local hits allocated {n} times");
    assert_eq!(item_cache().stats().local_hits, 1000);
}

#[test]
fn a_tagged_local_hit_allocates_nothing() {
    for id in 0..100 {
        assert_eq!(tagged_item(id, 7, "book"), id + 11);
    }
    let n = allocations(|| {
        for id in 0..100 {
            assert_eq!(tagged_item(id, 7, "book"), id + 11);
        }
    });
    assert_eq!(n, 0, "100 tagged local hits allocated {n} times");
    // The tags still reach the entries: a tag invalidation drops them.
    cache_runtime::invalidate_tag_blocking("owner:7").expect("local tag invalidation");
    let misses = tagged_item_cache().stats().misses;
    assert_eq!(tagged_item(3, 7, "book"), 14);
    assert_eq!(tagged_item_cache().stats().misses, misses + 1);
}

#[test]
fn an_async_local_hit_allocates_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        for id in 0..100 {
            assert_eq!(async_item(id).await, id * 2);
        }
        let before = ALLOCS.with(Cell::get);
        for id in 0..100 {
            assert_eq!(async_item(id).await, id * 2);
        }
        let n = ALLOCS.with(Cell::get) - before;
        assert_eq!(n, 0, "100 async local hits allocated {n} times");
    });
}

#[test]
fn a_key_longer_than_the_stack_buffer_still_hits() {
    let long = "x".repeat(cache_runtime::key::KeyWriter::INLINE * 2);
    assert_eq!(long_item(1, &long), 1 + long.len() as u64);
    assert_eq!(long_item(1, &long[1..]), long.len() as u64);
    let stats = long_item_cache().stats();
    assert_eq!((stats.misses, stats.local_hits), (2, 0));
    assert_eq!(long_item(1, &long), 1 + long.len() as u64);
    assert_eq!(long_item_cache().stats().local_hits, 1);
}

//! Blocking calls: a cached `fn` and every `_blocking` function wait for their future on the
//! caller's thread (`pollster`). That thread may be a Tokio runtime's own — a sync helper
//! called from async code, a `current_thread` service — and the wait blocks it. So while a
//! thread waits here, the Redis tier does its work on the runtime's Redis thread, not on
//! connections driven by the caller's runtime: on a `current_thread` runtime nothing else
//! would drive them, and the call would never end (`tests/tests/redis_sync_in_async.rs`).

use std::cell::Cell;
use std::future::Future;

thread_local! {
    static BLOCKING: Cell<bool> = const { Cell::new(false) };
}

/// Waits for `fut` on this thread, marked as blocking (see the module docs). A recursive
/// cached function nests one miss per level, each with the cache's frames around the body, so
/// the stack is grown on demand (`stacker`) instead of overflowing a thread's default stack.
pub(crate) fn block_on<F: Future>(fut: F) -> F::Output {
    on_stack(|| pollster::block_on(fut))
}

/// Runs `f` on this thread as [`block_on`] runs a future: marked as blocking, the stack grown
/// on demand. For a blocking call that has nothing to wait for (a miss of a cache without
/// Redis runs its body on the caller's stack): what its body does meets the same thread as
/// under `block_on`.
pub(crate) fn on_stack<T>(f: impl FnOnce() -> T) -> T {
    let _restore = Restore(BLOCKING.with(|b| b.replace(true)));
    stacker::maybe_grow(128 * 1024, 2 * 1024 * 1024, f)
}

/// Restores the mark, also when what runs under it panics.
struct Restore(bool);

impl Drop for Restore {
    fn drop(&mut self) {
        BLOCKING.with(|b| b.set(self.0));
    }
}

/// Whether this thread is waiting in [`block_on`]: its runtime, if any, is not running.
pub(crate) fn in_blocking_call() -> bool {
    BLOCKING.with(Cell::get)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_holds_inside_only_and_survives_a_panic() {
        assert!(!in_blocking_call());
        assert!(block_on(async { in_blocking_call() }));
        assert!(!in_blocking_call());
        let nested =
            block_on(async { block_on(async { in_blocking_call() }) && in_blocking_call() });
        assert!(nested);
        let panicked = std::panic::catch_unwind(|| block_on(async { panic!("body") }));
        assert!(panicked.is_err());
        assert!(!in_blocking_call());
        assert!(on_stack(in_blocking_call));
        assert!(std::panic::catch_unwind(|| on_stack(|| panic!("body"))).is_err());
        assert!(!in_blocking_call());
    }
}

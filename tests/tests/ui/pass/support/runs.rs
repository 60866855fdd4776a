//! How many times the fixture's bodies ran: a hit runs none. Each fixture that includes
//! this module (`#[path = "support/runs.rs"] mod runs;`) has its own count.

use std::sync::atomic::{AtomicU32, Ordering};

static RUNS: AtomicU32 = AtomicU32::new(0);

/// Called by every body.
pub fn ran() {
    RUNS.fetch_add(1, Ordering::SeqCst);
}

/// Bodies run so far.
pub fn runs() -> u32 {
    RUNS.load(Ordering::SeqCst)
}

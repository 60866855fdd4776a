//! How many times a fixture's bodies ran: a hit runs none. Each ui pass fixture includes this
//! module (`#[path = "support/runs.rs"] mod runs;`), so trybuild compiles it alone, and
//! keeps a `static` `Runs` per function or group of functions it counts.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many times a body ran.
pub struct Runs(AtomicUsize);

impl Runs {
    pub const fn new() -> Self {
        Self(AtomicUsize::new(0))
    }

    /// Called by the body.
    pub fn hit(&self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }

    /// Body runs so far.
    pub fn get(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

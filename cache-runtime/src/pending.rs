//! Writes that could not reach Redis are not forgotten: they wait here, deduplicated, and are
//! retried in the background until Redis takes them. Meanwhile the keys they cover are not
//! read from Redis (a stale value may still be there), so no process serves a value that was
//! invalidated during an outage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use crate::bus::Action;

#[derive(Debug, Clone)]
pub(crate) enum PendingOp {
    /// A key invalidation (also used for a populate that Redis did not take).
    Invalidate {
        value_key: String,
        ticket_key: String,
        channel: String,
        logical: String,
    },
    /// A tag invalidation or a clear: a version bump.
    Bump {
        key: String,
        channel: String,
        action: Action,
        target: String,
    },
}

impl PendingOp {
    /// Two pending ops with the same id are the same write.
    pub(crate) fn id(&self) -> String {
        match self {
            PendingOp::Invalidate { value_key, .. } => format!("i:{value_key}"),
            PendingOp::Bump { key, .. } => format!("b:{key}"),
        }
    }
}

#[derive(Default)]
pub(crate) struct Pending {
    ops: Mutex<HashMap<String, PendingOp>>,
    any: AtomicBool,
}

impl Pending {
    pub(crate) fn add(&self, op: PendingOp) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.insert(op.id(), op);
        self.any.store(true, Ordering::Release);
    }

    pub(crate) fn snapshot(&self) -> Vec<PendingOp> {
        self.ops
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }

    pub(crate) fn done(&self, id: &str) {
        let mut ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.remove(id);
        if ops.is_empty() {
            self.any.store(false, Ordering::Release);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether a pending write covers this entry (then Redis must not be read for it).
    pub(crate) fn blocks(&self, logical: &str, tags: &[String], cache: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let ops = self.ops.lock().unwrap_or_else(|p| p.into_inner());
        ops.values().any(|op| match op {
            PendingOp::Invalidate { logical: l, .. } => l == logical,
            PendingOp::Bump { action, target, .. } => match action {
                Action::Tag => tags.iter().any(|t| t == target),
                Action::ClearCache => target == cache,
                Action::ClearAll => true,
                Action::Invalidated | Action::Updated => false,
            },
        })
    }
}

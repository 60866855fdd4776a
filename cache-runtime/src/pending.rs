//! Writes that could not reach Redis are not forgotten: they wait here, deduplicated, and are
//! retried in the background until Redis takes them. Meanwhile the keys they cover are not
//! read from Redis (a stale value may still be there), so no process serves a value that was
//! invalidated during an outage.
//!
//! Bounded (docs/PROTOCOL.md §8, fault 8): at most [`MAX_PENDING`] key invalidations. Past
//! it, the key entries of the cache that overflows fold into one pending clear of that cache
//! (which covers them: every value of the cache written before it is refused), and further
//! key invalidations of a cache whose clear is pending add nothing. Past [`MAX_SCOPES`]
//! pending tag invalidations and cache clears, they fold into one pending global clear.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use crate::bus::{self, Action};
use crate::key::{scope_key, Scope};

/// Most pending key invalidations kept one by one (≈ 200 B each).
pub(crate) const MAX_PENDING: usize = 10_000;
/// Most pending tag invalidations and cache clears kept one by one.
pub(crate) const MAX_SCOPES: usize = 64;

#[derive(Debug, Clone)]
pub(crate) enum PendingOp {
    /// A key invalidation (also used for a populate that Redis did not take).
    Invalidate {
        value_key: String,
        ticket_key: String,
        channel: String,
        logical: String,
        /// The cache's name: what a fold clears.
        cache: Arc<str>,
    },
    /// A tag invalidation or a clear: the scope's token deleted (docs/PROTOCOL.md §4.3).
    Scope {
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
            PendingOp::Scope { key, .. } => format!("b:{key}"),
        }
    }
}

/// What [`Pending::add`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Added {
    /// Kept as it is.
    Kept,
    /// Folded into a coarser pending write (`n` entries folded, this one included).
    Folded(usize),
}

#[derive(Default)]
struct Inner {
    /// Key invalidations by value key.
    keys: HashMap<String, PendingOp>,
    /// Pending key invalidations per logical key (what `blocks` looks up).
    logicals: HashMap<String, u32>,
    /// Tag invalidations and clears by id.
    scopes: HashMap<String, PendingOp>,
}

impl Inner {
    fn forget_key(&mut self, op: &PendingOp) {
        if let PendingOp::Invalidate { logical, .. } = op {
            if let Some(n) = self.logicals.get_mut(logical) {
                *n -= 1;
                if *n == 0 {
                    self.logicals.remove(logical);
                }
            }
        }
    }

    fn covered(&self, cache: &str) -> bool {
        self.scopes.values().any(|op| match op {
            PendingOp::Scope { action, target, .. } => {
                *action == Action::ClearAll || (*action == Action::ClearCache && target == cache)
            }
            PendingOp::Invalidate { .. } => false,
        })
    }

    fn is_empty(&self) -> bool {
        self.keys.is_empty() && self.scopes.is_empty()
    }
}

pub(crate) struct Pending {
    inner: Mutex<Inner>,
    any: AtomicBool,
    prefix: String,
    /// Woken whenever the set empties (what [`crate::drain`] waits for).
    emptied: tokio::sync::Notify,
}

impl Pending {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            inner: Mutex::default(),
            any: AtomicBool::new(false),
            prefix: prefix.to_string(),
            emptied: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn scope(&self, action: Action, target: &str) -> PendingOp {
        let key = match action {
            Action::ClearCache => scope_key(&self.prefix, Scope::Cache(target)),
            _ => scope_key(&self.prefix, Scope::All),
        };
        PendingOp::Scope {
            key,
            channel: bus::channel(&self.prefix),
            action,
            target: target.to_string(),
        }
    }

    pub(crate) fn add(&self, op: PendingOp) -> Added {
        let mut inner = self.lock();
        self.any.store(true, Ordering::Release);
        match op {
            PendingOp::Invalidate { ref cache, .. } => {
                if inner.covered(cache) {
                    return Added::Folded(1);
                }
                let cache = cache.clone();
                let (id, logical) = match &op {
                    PendingOp::Invalidate {
                        value_key, logical, ..
                    } => (value_key.clone(), logical.clone()),
                    PendingOp::Scope { .. } => unreachable!("matched above"),
                };
                if let Some(old) = inner.keys.insert(id, op) {
                    inner.forget_key(&old);
                }
                *inner.logicals.entry(logical).or_insert(0) += 1;
                if inner.keys.len() <= MAX_PENDING {
                    return Added::Kept;
                }
                // Fold this cache's key entries into one clear of the cache.
                let folded: Vec<String> = inner
                    .keys
                    .iter()
                    .filter(|(_, op)| matches!(op, PendingOp::Invalidate { cache: c, .. } if *c == cache))
                    .map(|(id, _)| id.clone())
                    .collect();
                for id in &folded {
                    if let Some(op) = inner.keys.remove(id) {
                        inner.forget_key(&op);
                    }
                }
                let clear = self.scope(Action::ClearCache, &cache);
                self.add_scope(&mut inner, clear);
                Added::Folded(folded.len())
            }
            PendingOp::Scope { .. } => {
                self.add_scope(&mut inner, op);
                Added::Kept
            }
        }
    }

    fn add_scope(&self, inner: &mut Inner, op: PendingOp) {
        if inner.scopes.values().any(|op| {
            matches!(
                op,
                PendingOp::Scope {
                    action: Action::ClearAll,
                    ..
                }
            )
        }) {
            // A pending global clear covers it.
            return;
        }
        let all = matches!(
            op,
            PendingOp::Scope {
                action: Action::ClearAll,
                ..
            }
        );
        inner.scopes.insert(op.id(), op);
        if all || inner.scopes.len() > MAX_SCOPES {
            // A global clear covers every tag, every cache clear and every key.
            inner.scopes.clear();
            inner.keys.clear();
            inner.logicals.clear();
            let all = self.scope(Action::ClearAll, "");
            inner.scopes.insert(all.id(), all);
        }
    }

    /// Takes up to `n` key invalidations out, for one pipelined round trip; the caller puts
    /// back what Redis did not take ([`Self::restore`]). Scope writes are in
    /// [`Self::scopes`].
    pub(crate) fn take_keys(&self, n: usize) -> Vec<PendingOp> {
        let mut inner = self.lock();
        let ids: Vec<String> = inner.keys.keys().take(n).cloned().collect();
        ids.into_iter()
            .filter_map(|id| inner.keys.remove(&id))
            .collect()
    }

    /// Puts back key invalidations that were taken but not confirmed.
    pub(crate) fn restore(&self, ops: Vec<PendingOp>) {
        let mut inner = self.lock();
        for op in ops {
            if let PendingOp::Invalidate { cache, .. } = &op {
                if inner.covered(cache) {
                    inner.forget_key(&op);
                    continue;
                }
            }
            match inner.keys.entry(op.id_key()) {
                // Re-added meanwhile: one entry, so one count.
                std::collections::hash_map::Entry::Occupied(_) => inner.forget_key(&op),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(op);
                }
            }
        }
    }

    /// Marks taken key invalidations as done (Redis took them).
    pub(crate) fn keys_done(&self, ops: &[PendingOp]) {
        let mut inner = self.lock();
        for op in ops {
            inner.forget_key(op);
        }
        self.settle(&inner);
    }

    /// The pending scope writes (at most [`MAX_SCOPES`] + 1).
    pub(crate) fn scopes(&self) -> Vec<PendingOp> {
        self.lock().scopes.values().cloned().collect()
    }

    pub(crate) fn done(&self, id: &str) {
        let mut inner = self.lock();
        inner.scopes.remove(id);
        self.settle(&inner);
    }

    /// After writes went through: when nothing is left, readers stop checking the set and
    /// [`Self::wait_empty`] returns.
    /// (Taken key invalidations still count: their batch may yet fail and be put back.)
    fn settle(&self, inner: &Inner) {
        if inner.is_empty() && inner.logicals.is_empty() {
            self.any.store(false, Ordering::Release);
            self.emptied.notify_waiters();
        }
    }

    /// Waits until no write is pending (taken ones included): at once if none is.
    pub(crate) async fn wait_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            tokio::pin!(emptied);
            // Registered before the check, so an emptying in between is not missed.
            emptied.as_mut().enable();
            if self.len() == 0 {
                return;
            }
            emptied.await;
        }
    }

    /// Pending writes (key entries not yet confirmed, taken ones included, plus scopes).
    pub(crate) fn len(&self) -> usize {
        let inner = self.lock();
        inner.logicals.values().map(|n| *n as usize).sum::<usize>() + inner.scopes.len()
    }

    /// Whether a pending write covers this entry (then Redis must not be read for it).
    pub(crate) fn blocks(&self, logical: &str, tags: &[String], cache: &str) -> bool {
        if !self.any.load(Ordering::Acquire) {
            return false;
        }
        let inner = self.lock();
        inner.logicals.contains_key(logical)
            || inner.scopes.values().any(|op| match op {
                PendingOp::Scope { action, target, .. } => match action {
                    Action::Tag => tags.iter().any(|t| t == target),
                    Action::ClearCache => target == cache,
                    Action::ClearAll => true,
                    Action::Invalidated | Action::Updated => false,
                },
                PendingOp::Invalidate { .. } => false,
            })
    }
}

impl PendingOp {
    /// The key under which a key invalidation is kept (its value key).
    fn id_key(&self) -> String {
        match self {
            PendingOp::Invalidate { value_key, .. } => value_key.clone(),
            PendingOp::Scope { .. } => self.id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(cache: &str, i: usize) -> PendingOp {
        PendingOp::Invalidate {
            value_key: format!("{{t:0}}:v2:1:{cache}:{i}"),
            ticket_key: format!("{{t:0}}:t:{cache}:{i}"),
            channel: "t:bus:1".into(),
            logical: format!("{cache}:{i}"),
            cache: Arc::from(cache),
        }
    }

    #[test]
    fn past_the_bound_a_cache_folds_into_one_clear_then_all_into_a_global_clear() {
        let p = Pending::new("t");
        for i in 0..MAX_PENDING {
            assert_eq!(p.add(inv("a", i)), Added::Kept);
        }
        assert_eq!(p.len(), MAX_PENDING);
        assert!(p.blocks("a:5", &[], "a"));
        assert_eq!(p.add(inv("a", MAX_PENDING)), Added::Folded(MAX_PENDING + 1));
        assert_eq!(p.len(), 1, "one pending clear of cache a");
        assert!(p.blocks("a:123456", &[], "a"), "the clear covers the cache");
        assert!(!p.blocks("b:1", &[], "b"));
        assert_eq!(p.add(inv("a", 7)), Added::Folded(1), "already covered");
        assert_eq!(p.len(), 1);
        for i in 0..=MAX_SCOPES {
            p.add(PendingOp::Scope {
                key: format!("t:tag:{i}"),
                channel: "t:bus:1".into(),
                action: Action::Tag,
                target: format!("{i}"),
            });
        }
        assert_eq!(p.len(), 1, "one pending global clear");
        assert!(p.blocks("b:1", &[], "b"));
    }

    /// `wait_empty` returns at once on an empty set, and otherwise only once the last write
    /// went through: not while a taken batch is still in flight, nor when it is put back.
    #[test]
    fn waiting_for_an_empty_set_ends_when_the_last_write_went_through() {
        use std::future::Future;
        use std::task::{Context, Poll};
        let p = Pending::new("t");
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(Box::pin(p.wait_empty()).as_mut().poll(&mut cx).is_ready());
        p.add(inv("a", 1));
        p.add(PendingOp::Scope {
            key: "t:tag:x".into(),
            channel: "t:bus:1".into(),
            action: Action::Tag,
            target: "x".into(),
        });
        let mut wait = Box::pin(p.wait_empty());
        assert!(wait.as_mut().poll(&mut cx).is_pending());
        let taken = p.take_keys(10);
        p.restore(taken);
        let taken = p.take_keys(10);
        p.done(&p.scopes()[0].id());
        assert!(
            wait.as_mut().poll(&mut cx).is_pending(),
            "a batch in flight"
        );
        assert!(
            p.blocks("a:1", &[], "a"),
            "and its key is not read from Redis"
        );
        p.keys_done(&taken);
        assert_eq!(wait.as_mut().poll(&mut cx), Poll::Ready(()));
    }

    #[test]
    fn taken_keys_block_until_done_and_come_back_when_restored() {
        let p = Pending::new("t");
        for i in 0..10 {
            p.add(inv("a", i));
        }
        let batch = p.take_keys(4);
        assert_eq!(batch.len(), 4);
        assert_eq!(p.len(), 10, "taken but not confirmed");
        let logical = match &batch[0] {
            PendingOp::Invalidate { logical, .. } => logical.clone(),
            PendingOp::Scope { .. } => unreachable!(),
        };
        assert!(p.blocks(&logical, &[], "a"));
        p.restore(batch);
        let batch = p.take_keys(100);
        assert_eq!(batch.len(), 10);
        p.keys_done(&batch);
        assert_eq!(p.len(), 0);
        assert!(!p.blocks(&logical, &[], "a"));
    }
}

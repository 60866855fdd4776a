//! The waterfall of one call: local tier → single-flight → Redis → body → store, and the
//! stores themselves (a body's result, an explicit write).
//!
//! [`Cache::load`] answers a hit from the local tier or joins the key's flight; the leader
//! runs [`Cache::lead`]: the Redis side ([`redis_side`](super::redis_side)), then the body
//! (under the fail-safe, see [`background`](super::background)), then [`Cache::store_fresh`].

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::coarse_clock::Stamp;
use crate::entry::{Meta, Source};
use crate::error::CacheError;
use crate::flight::{Join, Joined, Leader, Outcome};
use crate::observe::{Mode, Observer};
use crate::shape::{Shape, Sharing};
use crate::tier::Key;

use super::local_side::{named, Named, Written};
use super::redis_side::{Claim, Fill, LockGuard};
use super::{Cache, DEFAULT_CAPACITY};

/// A value as single-flight hands it to waiters: with its metadata and where it came from.
#[derive(Clone)]
pub(super) struct Got<V> {
    pub(super) value: V,
    pub(super) meta: Meta,
    pub(super) source: Source,
}

impl<V: Clone + Send + Sync + 'static> Cache<V> {
    /// The waterfall, returning the value's metadata and source too. `body` is taken only
    /// if it runs (a caller may still use it for a refresh ahead).
    pub(super) async fn load<R, S, B>(
        &self,
        key: &Key,
        body: &mut Option<B>,
        sharing: &Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        if self.mode.load(Ordering::Relaxed) != 0 {
            let body = body.take().expect("the body future is used at most once");
            let r = self.unserved(key, body).await;
            return (r, Meta::fresh(Duration::ZERO, None), Source::Body);
        }
        if let Some((v, meta)) = self.local_hit(&key.logical) {
            return (S::rebuild(v), meta, Source::Local);
        }
        self.load_missed::<R, S, B>(key, body, sharing).await
    }

    /// [`load`](Self::load) past a local miss in normal mode: join the key's flight or
    /// lead it. For callers that checked the local tier themselves (their inlined hit).
    pub(super) async fn load_missed<R, S, B>(
        &self,
        key: &Key,
        body: &mut Option<B>,
        sharing: &Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        let mut joined = false;
        // Set once a flight this call joined gave it nothing: every flight it joins from then
        // on started after it did, so even an unverified value is fresh for it.
        let mut retrying = false;
        let how = self.first_join();
        loop {
            let (flight, late) = match self.flights.join(&key.logical, &key.tags, how) {
                Joined::Follower(flight) => (flight, false),
                // Its leader's read may have executed before a write that returned before
                // this call started: only a value its body computes is this call's
                // (docs/PROTOCOL.md §13 F9).
                Joined::Late(flight) => (flight, true),
                Joined::Leader(leader) => {
                    // A flight may have completed between our local miss and the join.
                    if let Some((v, meta)) = self.local_hit(&key.logical) {
                        return hand_over::<R, S, V>(leader, v, meta, Source::Local);
                    }
                    // A miss is counted there, once Redis had nothing either (a Redis hit
                    // is not one).
                    return self
                        .lead::<R, S, B>(key, leader, body, sharing, true, false)
                        .await;
                }
            };
            if !joined {
                joined = true;
                self.counters.joined.add(1);
            }
            let waited = flight
                .wait(
                    |g: &Got<V>| match late && g.source == Source::Redis {
                        // A value that flight read, maybe before this call started: not
                        // this call's (it joined late), and not copied.
                        true => None,
                        false => Some((S::rebuild(g.value.clone()), g.meta, g.source)),
                    },
                    |b| {
                        (sharing.unshare)(b)
                            .map(|r| Some((r, Meta::fresh(Duration::ZERO, None), Source::Body)))
                    },
                    retrying,
                )
                .await;
            match waited {
                // Refused: it goes round again, and every flight of the key it can meet
                // now was created after it started.
                Some(None) => {
                    retrying = true;
                    continue;
                }
                Some(Some(r)) => {
                    self.count_follower(r.2);
                    return r;
                }
                None => {}
            }
            retrying = true;
            // The leader gave up or could not share its result: try again.
            if let Some((v, meta)) = self.local_hit(&key.logical) {
                return (S::rebuild(v), meta, Source::Local);
            }
        }
    }

    /// [`load_missed`](Self::load_missed) for a blocking call of a cache that has neither
    /// Redis nor a fail-safe, whose leader never waits: it runs the body and stores its
    /// result on the caller's stack, without a future (`block_on`, its waker and the miss
    /// path's moved state cost more than the rest of such a miss). Only a follower waits
    /// for its leader (`block_on`). The same flight, counters, generation check and store
    /// as the asynchronous path.
    pub(super) fn load_missed_blocking<R, S>(
        &self,
        key: Named<'_>,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
    {
        debug_assert!(self.redis.is_none() && self.fail_safe.is_none());
        let mut joined = false;
        // As in `load_missed`.
        let mut retrying = false;
        loop {
            match self.flights.join(key.0, key.1, Join::Computes) {
                Joined::Follower(flight) | Joined::Late(flight) => {
                    if !joined {
                        joined = true;
                        self.counters.joined.add(1);
                    }
                    let waited = crate::blocking::block_on(flight.wait(
                        |g: &Got<V>| (S::rebuild(g.value.clone()), g.meta, g.source),
                        |b| {
                            (sharing.unshare)(b)
                                .map(|r| (r, Meta::fresh(Duration::ZERO, None), Source::Body))
                        },
                        retrying,
                    ));
                    if let Some(r) = waited {
                        self.count_follower(r.2);
                        return r;
                    }
                    retrying = true;
                    if let Some((v, meta)) = self.local_hit(key.0) {
                        return (S::rebuild(v), meta, Source::Local);
                    }
                }
                Joined::Leader(leader) => {
                    // A flight may have completed between our local miss and the join.
                    if let Some((v, meta)) = self.local_hit(key.0) {
                        return hand_over::<R, S, V>(leader, v, meta, Source::Local);
                    }
                    return self.lead_blocking::<R, S>(key, leader, body, sharing);
                }
            }
        }
    }

    /// [`lead`](Self::lead) for [`load_missed_blocking`](Self::load_missed_blocking): no
    /// Redis to read or write, no fail-safe around the body.
    fn lead_blocking<R, S>(
        &self,
        key: Named<'_>,
        leader: Leader<'_, Got<V>>,
        body: impl FnOnce() -> R,
        sharing: &Sharing<R>,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
    {
        let seen_local = self.local_generation(key.0);
        self.counters.misses.add(1);
        // Marked while it runs: a call the body makes for this same key leads apart.
        // `ended`: the body's end, read for its time, is the store's start.
        let (r, ended) = leader.run_marked(|| self.timed_blocking(body));
        let (v, negative) = match S::into_cacheable(r) {
            Ok(cacheable) => cacheable,
            Err(r) => return hand_over_uncacheable(leader, r, sharing),
        };
        let ttl = self.entry_ttl(negative);
        let meta = Meta::fresh(ttl, None);
        let meta = self.keep_fresh(key, &v, meta, (ttl, ended), seen_local, false);
        // Copied for concurrent callers only, if any joined.
        leader.finish_with(|| {
            Outcome::Value(Got {
                value: v.clone(),
                meta,
                source: Source::Body,
            })
        });
        (S::rebuild(v), meta, Source::Body)
    }

    /// How a call joins its key's flight, taken at its start: with a Redis tier, late to a
    /// flight created before (its leader's read may have been sent before this call started),
    /// else always a follower.
    pub(super) fn first_join(&self) -> Join {
        match self.redis {
            Some(_) => Join::ReadsFirst {
                since: self.flights.since(),
            },
            None => Join::Computes,
        }
    }

    /// Counts a call that joined a concurrent load by what that load found: a leader's
    /// Redis hit is a Redis hit for its followers too (not a miss: nothing ran for them).
    fn count_follower(&self, source: Source) {
        match source {
            Source::Local => self.counters.local_hits.add(1),
            Source::Redis => self.counters.redis_hits.add(1),
            Source::Body | Source::Stale => {
                self.counters.misses.add(1);
                self.counters.coalesced.add(1);
            }
        }
    }

    /// A leader's work: Redis (with the lock, if any), then the body under the fail-safe,
    /// then the store. `count_miss`: counted as a miss when Redis has no usable value either
    /// (a caller's read not counted yet). `refresh`: a refresh ahead, for which a value that
    /// is itself due for refresh does not count as found.
    pub(super) async fn lead<R, S, B>(
        &self,
        key: &Key,
        mut leader: Leader<'_, Got<V>>,
        body: &mut Option<B>,
        sharing: &Sharing<R>,
        count_miss: bool,
        refresh: bool,
    ) -> (R, Meta, Source)
    where
        S: Shape<R, Value = V>,
        B: Future<Output = R>,
    {
        let seen_local = self.local_generation(&key.logical);
        let fill = match self.redis {
            // Nothing to read (as `redis_fill` answers, without its future).
            None => Fill::Compute {
                claim: None,
                fallback: None,
                unlock: LockGuard::none(),
            },
            Some(_) => {
                self.redis_fill(key, seen_local, refresh, !leader.reentrant())
                    .await
            }
        };
        let (claim, fallback, mut unlock) = match fill {
            Fill::Found(v, meta) => return hand_over::<R, S, V>(leader, v, meta, Source::Redis),
            Fill::Compute {
                claim,
                fallback,
                unlock,
            } => (claim, fallback, unlock),
        };
        if self.redis.is_some() {
            // Callers that start from now on follow: the body reads after they started.
            leader.computing();
        }
        if count_miss {
            self.counters.misses.add(1);
        }
        // Marked while polled: a call the body makes for this same key leads apart instead
        // of waiting for this flight (which waits for it).
        let body = leader.running(body.take().expect("the body future is used at most once"));
        // Past the body, no await may hold anything of type `R` (the result, or a `Result`
        // or temporary containing it): an error type that is not `Send` (`Box<dyn Error>`)
        // then leaves this future `Send`, as the body's own was. So where the result is not
        // stored, the lock (if this call holds it) is released without waiting, by dropping
        // `unlock`, and where it is, only the value (`Send + Sync`) is kept across the store.
        // Dropped with this future (cancelled), `unlock` releases the lock too.
        // Redis answered this call's read (it holds a claim) unless it failed: then a kept
        // local copy may stand in for a failing body even while the bus is down.
        let outage = claim.is_none();
        let r = match self.run_body::<R, S>(key, body, fallback, outage).await {
            Ok(r) => r,
            Err((fb, fb_meta)) => {
                drop(unlock);
                return hand_over::<R, S, V>(leader, fb, fb_meta, Source::Stale);
            }
        };
        let (v, negative) = match S::into_cacheable(r) {
            Ok(cacheable) => cacheable,
            Err(r) => {
                drop(unlock);
                return hand_over_uncacheable(leader, r, sharing);
            }
        };
        // A failed Redis write is counted and logged; the caller still gets the value.
        let heard = self.redis.is_some() && leader.detached();
        // A Redis-only cache vouches for the value to the callers that joined its flight
        // with the store itself: sealed first (nobody joins after), then stored with the
        // script, which refuses it if the key's ticket or a scope token changed since the
        // read, i.e. if a write landed while the body ran, here or in any process, whether
        // or not its bus message arrived (docs/PROTOCOL.md §7.2). A cache with a local tier
        // keeps relying on the bus and its trust window for its flights, as for its copies.
        let followers = self.local.is_none() && self.redis.is_some() && leader.seal();
        let (_, meta, refused) = self
            .store_fresh(key, &v, negative, (seen_local, heard || followers), claim)
            .await;
        // The store released the lock (its script, or `release` where it stored nothing).
        unlock.disarm();
        // Copied for concurrent callers only, if any joined.
        leader.finish_with(|| {
            let got = Got {
                value: v.clone(),
                meta,
                source: Source::Body,
            };
            match refused && followers {
                true => Outcome::Unverified(got),
                false => Outcome::Value(got),
            }
        });
        (S::rebuild(v), meta, Source::Body)
    }

    /// Whether a value read now is late enough in its TTL for a refresh ahead.
    pub(super) fn refresh_due(&self, meta: &Meta) -> bool {
        let Some(fraction) = self.refresh_ahead else {
            return false;
        };
        let span = meta.expires_unix_ms.saturating_sub(meta.created_unix_ms);
        let age = crate::clock::now_unix_ms().saturating_sub(meta.created_unix_ms);
        span > 0 && age as f64 >= fraction * span as f64
    }

    /// Observe and bypass modes: the body runs; nothing is served or stored.
    async fn unserved<R>(&self, key: &Key, body: impl Future<Output = R>) -> R {
        let start = Instant::now();
        let r = self.timed(body).await;
        if self.mode() == Mode::Observe {
            let ttl = self.ttl;
            let capacity = if self.tier.has_local() {
                self.capacity
            } else {
                DEFAULT_CAPACITY * 5
            };
            self.observer
                .get_or_init(|| Observer::new(ttl, capacity, self.tier))
                .record(&key.logical, start.elapsed());
        }
        r
    }

    /// Runs the body in a span, counting it and its time.
    pub(super) async fn timed<R>(&self, body: impl Future<Output = R>) -> R {
        let start = Instant::now();
        let r = body
            .instrument(tracing::debug_span!("cache.body", cache = %self.name))
            .await;
        self.counters.body(start.elapsed());
        r
    }

    /// [`timed`](Self::timed) for a blocking body; also returns when it ended.
    /// The end is read as a [`Stamp`] (both clocks), which the store then reuses.
    fn timed_blocking<R>(&self, body: impl FnOnce() -> R) -> (R, Stamp) {
        let start = Instant::now();
        let r = tracing::debug_span!("cache.body", cache = %self.name).in_scope(body);
        let ended = Stamp::now();
        self.counters
            .body(ended.instant().saturating_duration_since(start));
        (r, ended)
    }

    /// Stores a body result: in Redis under the ticket claimed at lookup (one round trip,
    /// which also releases the lock), then locally only if the ticket was still ours and no
    /// local write happened since the lookup (`seen_local`). `heard`: a write covering the
    /// key was heard while the body ran, so the Redis write is the conditional script
    /// instead of a plain `SET` (docs/PROTOCOL.md §7.2). Returns Redis's answer, the
    /// value's metadata, and whether Redis refused the value as superseded (the script found
    /// the key's ticket or a scope token changed since the read).
    pub(super) async fn store_fresh(
        &self,
        key: &Key,
        value: &V,
        negative: bool,
        (seen_local, heard): (u64, bool),
        claim: Option<Claim>,
    ) -> (Result<(), CacheError>, Meta, bool) {
        let ttl = self.entry_ttl(negative);
        // Taken before the Redis write: the local deadline then never passes Redis's expiry,
        // which starts when Redis receives the SET. (The local insert reuses it.)
        let start = Stamp::now();
        let mut meta = Meta::fresh(ttl, None);
        let mut res = Ok(());
        if let (Some(redis), Some(claim)) = (&self.redis, claim) {
            if redis
                .tier
                .pending
                .blocks(&key.logical, &key.tags, &self.clear_scope)
            {
                // This process invalidated the key while the body ran and Redis did not take
                // it yet (it still holds the old ticket): nothing is written there (F1e). An
                // invalidation Redis took deleted the ticket and detached the flight, so the
                // store is the script, which refuses.
                // (The striped local generation is not used here: other keys of its stripe
                // and bus-gap clears move it too, which would skip legitimate stores.)
                self.release(key, claim.into_token()).await;
                self.counters.superseded.add(1);
                return (Ok(()), meta, false);
            }
            match self
                .redis_store_fresh(key, value, &mut meta, ttl, (claim, heard))
                .await
            {
                Ok(false) => {
                    // A write happened while the body ran: this value is stale.
                    self.counters.superseded.add(1);
                    return (Ok(()), meta, true);
                }
                written => res = self.count_redis(written.map(drop)),
            }
        }
        let kept = res.is_ok() && self.redis.is_some();
        let meta = self.keep_fresh(named(key), value, meta, (ttl, start), seen_local, kept);
        (res, meta, false)
    }

    /// The local half of [`store_fresh`](Self::store_fresh): the value kept locally unless a
    /// local write happened since the lookup (`seen_local`), counted as populated (or as
    /// `kept` in Redis, without a local tier) or superseded. Returns its metadata.
    fn keep_fresh(
        &self,
        key: Named<'_>,
        value: &V,
        mut meta: Meta,
        (ttl, start): (Duration, Stamp),
        seen_local: u64,
        kept: bool,
    ) -> Meta {
        self.etag_if_missing(&mut meta, value);
        let written = Written {
            generation: 0,
            start,
            ttl,
        };
        let stored = self
            .store_local_if_current(key, value, meta, written, seen_local)
            .unwrap_or(kept);
        if stored {
            self.counters.populates.add(1);
        } else if self.local.is_some() {
            self.counters.superseded.add(1);
        }
        meta
    }

    /// An explicit write (populate, refresh): bumps the generation (evicting other
    /// processes' copies, failing in-flight stale writes), then writes under the new stamps.
    pub(super) async fn store_explicit(
        &self,
        key: &Key,
        value: V,
        negative: bool,
    ) -> Result<(), CacheError> {
        let ttl = self.entry_ttl(negative);
        self.flights.detach(&key.logical);
        if let Some(local) = &self.local {
            local.generations.bump_with(&key.logical, || {});
        }
        let start = Stamp::now();
        let mut meta = Meta::fresh(ttl, None);
        let (res, generation) = self.redis_store_explicit(key, &value, &mut meta, ttl).await;
        self.etag_if_missing(&mut meta, &value);
        let written = Written {
            generation,
            start,
            ttl,
        };
        self.store_local_bumped(key, value, meta, written);
        self.counters.populates.add(1);
        res
    }

    /// Without a Redis encoding at hand, the ETag is computed from the value (if enabled,
    /// and once an entry call wants ETags).
    fn etag_if_missing(&self, meta: &mut Meta, value: &V) {
        if meta.etag.is_none() && self.etags_wanted() {
            meta.etag = self.etag.and_then(|etag_of| etag_of(value));
        }
    }

    /// Whether reads and stores compute ETags: once a call returning an
    /// [`Entry`](crate::Entry) was made.
    pub(super) fn etags_wanted(&self) -> bool {
        self.etags_wanted.load(Ordering::Relaxed)
    }

    /// Called by every call that returns an [`Entry`](crate::Entry), before it loads: from
    /// then on, reads and stores compute ETags.
    pub(super) fn want_etags(&self) {
        if !self.etags_wanted() {
            self.etags_wanted.store(true, Ordering::Relaxed);
        }
    }

    /// The ETag of an entry call's value: as loaded, or, for a value read or stored before
    /// ETags were wanted (a local copy, a flight led by a plain call), hashed now from its
    /// encoding (the same tag: [`codec::payload_etag`](crate::codec::payload_etag) equals
    /// the envelope's). Not in observe or bypass mode, whose results are neither served nor
    /// stored and carry no tag.
    pub(super) fn etag_for_entry<R, S>(&self, r: &R, meta: &mut Meta)
    where
        S: Shape<R, Value = V>,
    {
        if meta.etag.is_none() && self.etag.is_some() && self.mode.load(Ordering::Relaxed) == 0 {
            if let Some((v, _)) = S::cacheable(r) {
                self.etag_if_missing(meta, v);
            }
        }
    }

    /// The TTL of one new entry: `ttl` (or `none_ttl`), spread by ± `jitter` so that entries
    /// written together do not expire together.
    fn entry_ttl(&self, negative: bool) -> Duration {
        let base = if negative { self.none_ttl } else { self.ttl };
        if self.jitter <= 0.0 {
            return base;
        }
        let factor = 1.0 + self.jitter * (2.0 * fastrand::f64() - 1.0);
        base.mul_f64(factor).max(Duration::from_millis(1))
    }
}

/// A leader's body result that is not cached (an `Err`, a `None` without `cache_none`): to
/// the waiters if it can be shared with them, then to the caller.
fn hand_over_uncacheable<R, V>(
    leader: Leader<'_, Got<V>>,
    r: R,
    sharing: &Sharing<R>,
) -> (R, Meta, Source) {
    leader.finish(match (sharing.share)(&r) {
        Some(b) => Outcome::Shared(b),
        None => Outcome::Unshareable,
    });
    (r, Meta::fresh(Duration::ZERO, None), Source::Body)
}

/// A leader's answer that is a value (found, or a fallback): to the waiters, then to the
/// caller.
pub(super) fn hand_over<R, S, V>(
    leader: Leader<'_, Got<V>>,
    value: V,
    meta: Meta,
    source: Source,
) -> (R, Meta, Source)
where
    S: Shape<R, Value = V>,
    V: Clone,
{
    // The value is cloned only for followers, if any joined.
    leader.finish_with(|| {
        Outcome::Value(Got {
            value: value.clone(),
            meta,
            source,
        })
    });
    (S::rebuild(value), meta, source)
}

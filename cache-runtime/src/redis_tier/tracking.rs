//! Scope tokens kept in the process, exact by Redis's own client tracking
//! (docs/PROTOCOL.md §7.1, §12).
//!
//! A hit must compare its envelope's stamps with the scope tokens *in force when its read
//! executed*. Reading them in the hit's `MGET` costs a reply element each (about 2.5 K client
//! instructions in redis-rs's parser). Instead, one connection per set of connections speaks
//! RESP3 with `CLIENT TRACKING ON OPTIN`, and the tokens it read (prefixed by `CLIENT CACHING
//! yes`) are kept here. Redis queues an invalidation push on that connection when a tracked
//! token is written, deleted, expired, evicted or flushed, at the moment the write executes
//! (default tracking mode), so the push precedes the reply of every read that executes after
//! the write. redis-rs hands pushes to [`TokenCache::on_push`] synchronously in the
//! connection's driver, before it delivers any later reply; so a token still cached when a
//! reply arrives was in force when that read executed. A lost connection empties the cache
//! and it is never used again (its connection is replaced).
//!
//! A null invalidation (a flush of *any* database of the server, a full resync, `DEBUG
//! RELOAD`: client tracking ignores databases) empties the cache too, and makes the
//! connection unusable until the server is judged again on it ([`Tracked::rejudge`]: the
//! incarnation check of the open, `INFO` + `GET` of the record, docs/PROTOCOL.md §8.2); judged,
//! the same connection serves on (a flush of another database costs one round trip, not a
//! reopen); not judged, the connections are reopened and judged as after a loss. No reply
//! of a read sent before the null push was applied is used (the epoch's era, below).
//!
//! Entry tickets are kept the same way (read after the value, behind `CLIENT CACHING yes`),
//! so that a hit whose ticket and tokens are all kept reads its value alone (`GET v`).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use redis::{PushInfo, PushKind, Value};

use super::ReadKeys;
use crate::redis_request::Stamps;

/// Tokens kept per connection, at most (about 80 bytes each): a cache of per-key tags
/// (`user:<id>`) has one per key. Past it an eighth of them, arbitrary ones, are dropped.
/// Redis keeps tracking the dropped keys; their pushes then remove nothing.
const MAX_TOKENS: usize = 32_768;

/// Entry tickets kept per connection, at most (about 100 bytes each: one per key read
/// through Redis lately). Past it an eighth of them, arbitrary ones, are dropped.
const MAX_TICKETS: usize = 32_768;

/// A tracked connection and the tokens it has read (shared behind an `Arc`: a read borrows
/// it and clones the connection only to send a request of its own).
pub(crate) struct Tracked {
    pub(super) conn: redis::aio::MultiplexedConnection,
    pub(super) tokens: Arc<TokenCache>,
    /// Plain reads pipelined under load (`batch.rs`).
    pub(super) batch: super::batch::ReadBatch,
}

impl Tracked {
    /// After a null invalidation ([`TokenCache::is_lost`], not [`TokenCache::is_gone`]):
    /// judges the server again on this very connection, as the open does (`INFO` and `GET`
    /// of the incarnation record `server_key`, [`incarnation::judged`](super::incarnation::judged)),
    /// by `deadline`. Judged (the record names the server this connection reaches, and no
    /// other null push arrived before the reply), the connection serves on: its check executed
    /// after the flush that pushed, and every read sent from now on executes after it. Not
    /// judged (the record gone or another's, `INFO` or the record refused, loading, a
    /// timeout, anything unexpected), the connection is given up: `false`, and the caller
    /// reopens the connections, whose open judges and clears (docs/PROTOCOL.md §8.2). One
    /// judgement at a time; the readers that wait for it take its outcome.
    pub(super) async fn rejudge(&self, server_key: &str, deadline: tokio::time::Instant) -> bool {
        let Ok(_one) = tokio::time::timeout_at(deadline, self.tokens.judging.lock()).await else {
            // Another judgement under way took the time: its outcome is the next read's.
            return false;
        };
        // A null push during a judgement makes it judge again, a few times at most.
        for _ in 0..3 {
            if self.tokens.is_gone() {
                return false;
            }
            let since = self.tokens.epoch();
            if usable(since) {
                return true;
            }
            let mut p = redis::pipe();
            p.cmd("INFO").cmd("GET").arg(server_key);
            let mut conn = self.conn.clone();
            let reply = tokio::time::timeout_at(
                deadline,
                p.query_async::<(String, Option<String>)>(&mut conn),
            )
            .await;
            let judged = matches!(&reply, Ok(Ok((info, record)))
                if super::incarnation::judged(info, record.as_deref()));
            if !judged {
                break;
            }
            if self.tokens.judged(since) {
                return true;
            }
        }
        self.tokens.give_up();
        false
    }
}

/// Scope tokens by key, as read on one tracked connection.
pub(crate) struct TokenCache {
    map: Mutex<Tokens>,
    /// Changed (under the lock) by every push, the connection's loss and a judgement; read
    /// before a read is sent, so that what was read is used or cached only if no push arrived
    /// while it was in flight (the push may concern a write that executed after the read).
    /// Bit 0 ([`LOST`]): the connection may not be read on (lost, or a null push not yet
    /// judged); a key push adds [`PUSH`]; a null push, a judgement and the loss start a new
    /// era (a multiple of [`ERA`]): a reply whose read was sent in another era is not used.
    epoch: AtomicU64,
    /// The connection is gone (closed, or a null push could not be judged on it): nothing is
    /// cached any more, and a caller that finds it so reconnects before its read instead of
    /// failing on it (read without the lock).
    gone: AtomicBool,
    /// One judgement at a time ([`Tracked::rejudge`]); the others wait for its outcome.
    judging: tokio::sync::Mutex<()>,
}

/// [`TokenCache::epoch`]'s bit 0: not to be read on.
const LOST: u64 = 1;
/// What a key push adds to the epoch (bit 0 untouched).
const PUSH: u64 = 2;
/// An era of the epoch: from a null push, a judgement or the loss to the next.
const ERA: u64 = 1 << 32;

/// The first epoch of the era after `epoch`'s, `lost` or not.
fn next_era(epoch: u64, lost: bool) -> u64 {
    ((epoch / ERA).wrapping_add(1)).wrapping_mul(ERA) | u64::from(lost)
}

/// Whether a read may be sent at `epoch` (the connection not lost, no null push unjudged).
pub(super) fn usable(epoch: u64) -> bool {
    epoch & LOST == 0
}

struct Tokens {
    /// Hashed with foldhash (a per-process random seed), as the flight map.
    by_key: HashMap<Box<[u8]>, KeptToken, foldhash::fast::RandomState>,
    /// Entry tickets, kept like the tokens: a hit whose ticket is kept reads its value
    /// alone (`GET v`). By the entry's logical key (its ticket key is `{prefix:bucket}:t:`
    /// and the logical key, the bucket a hash of it): a hit looks its ticket up without
    /// writing the ticket key out, and a push names the ticket key, from which
    /// [`ticket_logical`] takes the logical key back.
    tickets: hashbrown::HashTable<KeptTicket>,
    hasher: foldhash::fast::RandomState,
    /// The key prefix of the kept tickets (the runtime's, one for all its caches), learnt
    /// from the first ticket kept.
    prefix: Option<Box<str>>,
}

/// A scope token kept, and the latest tag deadline this process's own stores are known to
/// have set on it (`PEXPIREAT … GT` answered, docs/PROTOCOL.md §7.2): a store that would
/// send the same deadline again leaves it out, since Redis would change nothing. Removed
/// with the token by its push (any write to the key, its expiry or eviction), a flush or
/// the connection's loss, so it never outlives the token's identity or its expiry.
#[derive(Clone, Copy)]
struct KeptToken {
    token: u64,
    /// 0: none known.
    extended_to: u64,
}

/// Bit `i` of a tag mask (tags past the 64th are never in a mask: always claimed, always
/// extended).
pub(super) fn tag_bit(i: usize) -> u64 {
    if i < 64 {
        1 << i
    } else {
        0
    }
}

struct KeptTicket {
    /// The hash of `logical` (`Tokens::hasher`).
    hash: u64,
    logical: Box<[u8]>,
    ticket: u64,
}

impl TokenCache {
    pub(super) fn new() -> Self {
        Self {
            map: Mutex::new(Tokens {
                by_key: HashMap::default(),
                tickets: hashbrown::HashTable::new(),
                hasher: Default::default(),
                prefix: None,
            }),
            epoch: AtomicU64::new(0),
            gone: AtomicBool::new(false),
            judging: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether no read may be sent on the connection now: it was closed (by Redis's idle
    /// `timeout`, a proxy, `CLIENT KILL`, a restart), or the server's data set may have been
    /// replaced under it (a null invalidation) and it was not judged since. Nothing is kept.
    pub(super) fn is_lost(&self) -> bool {
        !usable(self.epoch.load(Ordering::Acquire))
    }

    /// Whether the connection is gone for good: closed, or a null push not judged on it
    /// ([`Tracked::rejudge`]): the connections are to be reopened before the next read.
    pub(super) fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Acquire)
    }

    /// Whether a read sent at `epoch` (taken before it was sent) must not be used: a null
    /// invalidation (or the loss) was applied since, so it may have executed on a replaced
    /// data set, or the connection is not to be read on now.
    pub(super) fn flushed_since(&self, epoch: u64) -> bool {
        let now = self.epoch.load(Ordering::Acquire);
        !usable(epoch) || !usable(now) || now / ERA != epoch / ERA
    }

    /// A judgement ([`Tracked::rejudge`]) sent at `since` (lost) found the server's
    /// incarnation recorded: the connection serves again, in a new era, if no null push
    /// arrived meanwhile (its flush may have followed the check) and it is not gone.
    fn judged(&self, since: u64) -> bool {
        let _tokens = self.lock();
        let now = self.epoch.load(Ordering::Acquire);
        if self.is_gone() || usable(now) || now / ERA != since / ERA {
            return false;
        }
        self.epoch.store(next_era(now, false), Ordering::Release);
        true
    }

    /// A judgement failed: the connection is not read on again (reopened).
    fn give_up(&self) {
        let _tokens = self.lock();
        self.gone.store(true, Ordering::Release);
        let now = self.epoch.load(Ordering::Acquire);
        self.epoch.store(next_era(now, true), Ordering::Release);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Applies one push of the tracked connection (called by redis-rs's driver, in order with
    /// the replies).
    pub(super) fn on_push(&self, info: PushInfo) {
        let keys = match (&info.kind, info.data.first()) {
            (PushKind::Invalidate, Some(Value::Array(keys))) => keys,
            // What it holds now may be older data (a resync from a node that started from a
            // snapshot), which only the server's incarnation can tell: the next read judges
            // it first (`Tracked::rejudge`), on this connection if it is still up, else as
            // for a lost connection on reopened ones (docs/PROTOCOL.md §8.2). The server
            // forgot what this connection tracked (its tracking table is emptied by any
            // flush), so nothing kept is known to hold any more.
            _ if data_set_lost(&info) => {
                let mut tokens = self.lock();
                if !matches!(info.kind, PushKind::Invalidate) {
                    self.gone.store(true, Ordering::Release);
                }
                let now = self.epoch.load(Ordering::Acquire);
                self.epoch.store(next_era(now, true), Ordering::Release);
                tokens.by_key.clear();
                tokens.tickets.clear();
                return;
            }
            _ => return,
        };
        let mut tokens = self.lock();
        self.epoch.fetch_add(PUSH, Ordering::AcqRel);
        for key in keys {
            if let Value::BulkString(key) = key {
                tokens.by_key.remove(key.as_slice());
                tokens.forget_ticket(key);
            }
        }
    }

    /// The epoch to pass to [`TokenCache::insert`] for a read sent after this call, or to
    /// compare with later: unchanged, no push was applied since, so every token cached then
    /// still is, with the same value (a cached token only changes by a push removing it).
    /// A read is sent only at a [`usable`] epoch.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// The stamps of `k`'s scopes (cache clear, global clear, tags, in that order) if every
    /// one is cached, and its entry's ticket if that is cached too (one lock for both).
    pub(super) fn kept(&self, k: &ReadKeys<'_>) -> Option<(Stamps, Option<u64>)> {
        let tokens = self.lock();
        let stamps = self.stamps_in(&tokens, k)?;
        let ticket = match tokens.tickets.is_empty() || tokens.prefix.as_deref() != Some(k.prefix) {
            true => None,
            false => {
                let logical = k.logical.as_bytes();
                let hash = tokens.hasher.hash_one(logical);
                tokens
                    .tickets
                    .find(hash, |t| *t.logical == *logical)
                    .map(|t| t.ticket)
            }
        };
        Some((stamps, ticket))
    }

    /// The stamps of `k`'s scopes (cache clear, global clear, tags, in that order) if every
    /// one is cached.
    pub(super) fn stamps(&self, k: &ReadKeys<'_>) -> Option<Stamps> {
        self.stamps_in(&self.lock(), k)
    }

    fn stamps_in(&self, tokens: &Tokens, k: &ReadKeys<'_>) -> Option<Stamps> {
        if self.is_lost() {
            return None;
        }
        let mut stamps = Stamps::new();
        for c in k.clears {
            stamps.push(tokens.by_key.get(c.as_bytes())?.token);
        }
        for tag in k.tags {
            let key = tag_token_key(k.prefix, tag);
            stamps.push(tokens.by_key.get(key.as_str().as_bytes())?.token);
        }
        Some(stamps)
    }

    /// For a claiming read whose clear tokens are kept but not every tag's: the stamps (0
    /// for a tag not kept) and the mask of the tags not kept, which the read claims (the
    /// claim's reply is the token in force, read after the value: docs/PROTOCOL.md §7.1).
    /// `None` if a clear token is not kept, or a tag past the 64th is not.
    pub(super) fn kept_but_tags(&self, k: &ReadKeys<'_>) -> Option<(Stamps, u64)> {
        let tokens = self.lock();
        if self.is_lost() || k.striped {
            return None;
        }
        let mut stamps = Stamps::new();
        for c in k.clears {
            stamps.push(tokens.by_key.get(c.as_bytes())?.token);
        }
        let mut unkept = 0;
        for (i, tag) in k.tags.iter().enumerate() {
            let key = tag_token_key(k.prefix, tag);
            match tokens.by_key.get(key.as_str().as_bytes()) {
                Some(kept) => stamps.push(kept.token),
                None if i < 64 => {
                    stamps.push(0);
                    unkept |= tag_bit(i);
                }
                None => return None,
            }
        }
        Some((stamps, unkept))
    }

    /// The mask of `k`'s tags whose token is not kept (all of them on a lost connection):
    /// those a claiming read claims; a kept one exists and is read by the read.
    pub(super) fn unkept_tags(&self, k: &ReadKeys<'_>) -> u64 {
        let tokens = self.lock();
        if self.is_lost() || k.striped {
            return u64::MAX;
        }
        let mut unkept = 0;
        for (i, tag) in k.tags.iter().enumerate().take(64) {
            let key = tag_token_key(k.prefix, tag);
            if !tokens.by_key.contains_key(key.as_str().as_bytes()) {
                unkept |= tag_bit(i);
            }
        }
        unkept
    }

    /// [`TokenCache::still_kept`] for a read looked up by [`TokenCache::kept_but_tags`]:
    /// the stamps, if every tag kept then (not in `unkept`) still is with the same token when
    /// the reply arrives (no push since, or looked up again). The claimed tags' stamps are
    /// the claims' to fill in.
    pub(super) fn still_kept_but(
        &self,
        k: &ReadKeys<'_>,
        stamps: Stamps,
        unkept: u64,
        epoch: u64,
    ) -> Option<Stamps> {
        let now = self.epoch();
        if now == epoch && usable(now) {
            return Some(stamps);
        }
        if now / ERA != epoch / ERA {
            return None;
        }
        let (now, now_unkept) = self.kept_but_tags(k)?;
        let same = stamps.iter().zip(&now).enumerate().all(|(i, (was, is))| {
            match i.checked_sub(k.clears.len()) {
                Some(tag) if unkept & tag_bit(tag) != 0 => true,
                _ => was == is,
            }
        });
        (same && now_unkept & !unkept == 0).then_some(stamps)
    }

    /// The mask of `k`'s tags (their stamps `seen`, one per tag) whose kept token is the
    /// stamp and already has `deadline` (or a later one) from this process's stores: their
    /// `PEXPIREAT token deadline GT` would change nothing.
    pub(super) fn extended_tags(&self, k: &ReadKeys<'_>, seen: &[u64], deadline: u64) -> u64 {
        if k.striped || self.is_lost() {
            return 0;
        }
        let tokens = self.lock();
        let mut done = 0;
        for (i, (tag, &token)) in k.tags.iter().zip(seen).enumerate().take(64) {
            let key = tag_token_key(k.prefix, tag);
            if let Some(kept) = tokens.by_key.get(key.as_str().as_bytes()) {
                if kept.token == token && kept.extended_to >= deadline {
                    done |= tag_bit(i);
                }
            }
        }
        done
    }

    /// Notes that Redis answered `PEXPIREAT token deadline GT` for each tag in `sent`
    /// (stamps `seen`), the store sent after `epoch` was taken: from then on the token's
    /// expiry is `deadline` or later, until a write to it (whose push removes the note).
    /// Noted only for a kept token that is the stamp, and only if no push arrived since
    /// `epoch` (the push may be of a write after the extension).
    pub(super) fn note_extended(
        &self,
        k: &ReadKeys<'_>,
        seen: &[u64],
        sent: u64,
        deadline: u64,
        epoch: u64,
    ) {
        if sent == 0 || k.striped {
            return;
        }
        let Some(mut tokens) = self.lock_if_current(epoch) else {
            return;
        };
        for (i, (tag, &token)) in k.tags.iter().zip(seen).enumerate().take(64) {
            if sent & tag_bit(i) == 0 {
                continue;
            }
            let key = tag_token_key(k.prefix, tag);
            if let Some(kept) = tokens.by_key.get_mut(key.as_str().as_bytes()) {
                if kept.token == token {
                    kept.extended_to = kept.extended_to.max(deadline);
                }
            }
        }
    }

    /// Caches the tokens a read found (`stamps`, in [`TokenCache::stamps`]'s order; 0 = none,
    /// not cached) if no push arrived since `epoch` was taken, before the read was sent.
    /// (The clears-then-tags walk is spelled out here and in `stamps`: one shared iterator
    /// of keys cost 500–700 instructions per hit, measured.)
    pub(super) fn insert(&self, k: &ReadKeys<'_>, stamps: &[u64], epoch: u64) {
        let Some(mut tokens) = self.lock_if_current(epoch) else {
            return;
        };
        make_room(&mut tokens.by_key, stamps.len(), MAX_TOKENS);
        let mut stamps = stamps.iter();
        for c in k.clears {
            match stamps.next() {
                Some(&t) if t != 0 => keep_token(&mut tokens.by_key, c.as_bytes(), t),
                _ => {}
            }
        }
        for tag in k.tags {
            match stamps.next() {
                Some(&t) if t != 0 => keep_token(
                    &mut tokens.by_key,
                    tag_token_key(k.prefix, tag).as_str().as_bytes(),
                    t,
                ),
                _ => {}
            }
        }
    }

    /// Caches the tokens of `k`'s tags in `mask` (their values `found`, in tag order; 0 =
    /// none, not cached), read behind `CLIENT CACHING yes` by a read sent after `epoch` was
    /// taken, if no push arrived since.
    pub(super) fn insert_tags(
        &self,
        k: &ReadKeys<'_>,
        mask: u64,
        found: impl Iterator<Item = u64>,
        epoch: u64,
    ) {
        let Some(mut tokens) = self.lock_if_current(epoch) else {
            return;
        };
        make_room(&mut tokens.by_key, mask.count_ones() as usize, MAX_TOKENS);
        let tags = k
            .tags
            .iter()
            .enumerate()
            .filter(|(i, _)| mask & tag_bit(*i) != 0);
        for ((_, tag), t) in tags.zip(found) {
            if t != 0 {
                keep_token(
                    &mut tokens.by_key,
                    tag_token_key(k.prefix, tag).as_str().as_bytes(),
                    t,
                );
            }
        }
    }

    /// Caches `k`'s entry ticket, read (after `CLIENT CACHING yes`) by a read sent after
    /// `epoch` was taken, if no push arrived since.
    pub(super) fn insert_ticket(&self, k: &ReadKeys<'_>, ticket: u64, epoch: u64) {
        let Some(mut tokens) = self.lock_if_current(epoch) else {
            return;
        };
        match tokens.prefix.as_deref() {
            None => tokens.prefix = Some(k.prefix.into()),
            Some(p) if p == k.prefix => {}
            // Another prefix (one runtime has one): not kept, its pushes could not be read.
            Some(_) => return,
        }
        if tokens.tickets.len() >= MAX_TICKETS {
            let mut keep = all_but_every_eighth();
            tokens.tickets.retain(|_| keep());
        }
        let logical = k.logical.as_bytes();
        let hash = tokens.hasher.hash_one(logical);
        match tokens.tickets.find_mut(hash, |t| *t.logical == *logical) {
            Some(kept) => kept.ticket = ticket,
            None => {
                tokens.tickets.insert_unique(
                    hash,
                    KeptTicket {
                        hash,
                        logical: logical.into(),
                        ticket,
                    },
                    |t| t.hash,
                );
            }
        }
    }

    /// The locked cache, if what a read sent at `epoch` found may be cached: the connection
    /// is alive and no push arrived since (the push may concern a write after the read).
    fn lock_if_current(&self, epoch: u64) -> Option<std::sync::MutexGuard<'_, Tokens>> {
        let tokens = self.lock();
        (usable(epoch) && self.epoch.load(Ordering::Acquire) == epoch).then_some(tokens)
    }

    /// The stamps looked up for `k` at `epoch` (with its ticket `ticket`, if the read relied
    /// on one), if they still hold when its reply arrives: no push since (one atomic load),
    /// or looked up again, the same ticket still kept, in the same era (no null push since:
    /// see [`TokenCache::flushed_since`]). `None`: read everything again.
    pub(super) fn still_kept(
        &self,
        k: &ReadKeys<'_>,
        stamps: Stamps,
        ticket: Option<u64>,
        epoch: u64,
    ) -> Option<Stamps> {
        let now = self.epoch();
        if now == epoch && usable(now) {
            return Some(stamps);
        }
        if now / ERA != epoch / ERA {
            return None;
        }
        match ticket {
            None => self.stamps(k),
            Some(ticket) => match self.kept(k)? {
                (stamps, Some(kept)) if kept == ticket => Some(stamps),
                _ => None,
            },
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().by_key.len()
    }
}

/// Keeps `token` under `key`. The same token kept already keeps what is known of its
/// expiry: no push removed it since, so no write changed it.
fn keep_token(
    map: &mut HashMap<Box<[u8]>, KeptToken, foldhash::fast::RandomState>,
    key: &[u8],
    token: u64,
) {
    match map.get_mut(key) {
        Some(kept) if kept.token == token => {}
        Some(kept) => {
            *kept = KeptToken {
                token,
                extended_to: 0,
            }
        }
        None => {
            map.insert(
                key.into(),
                KeptToken {
                    token,
                    extended_to: 0,
                },
            );
        }
    }
}

/// Drops an eighth of `map`'s entries, arbitrary ones, if `adding` more would pass `max`.
fn make_room(
    map: &mut HashMap<Box<[u8]>, KeptToken, foldhash::fast::RandomState>,
    adding: usize,
    max: usize,
) {
    if map.len() + adding > max {
        let mut keep = all_but_every_eighth();
        map.retain(|_, _| keep());
    }
}

/// A `retain` predicate that keeps all entries but every eighth (arbitrary ones): how a
/// full token or ticket cache makes room.
fn all_but_every_eighth() -> impl FnMut() -> bool {
    let mut i = 0u32;
    move || {
        i = i.wrapping_add(1);
        i % 8 != 0
    }
}

impl Tokens {
    /// Drops the ticket kept under `key`, if `key` is a ticket key of this prefix.
    fn forget_ticket(&mut self, key: &[u8]) {
        let Some(logical) = self.prefix.as_deref().and_then(|p| ticket_logical(p, key)) else {
            return;
        };
        let hash = self.hasher.hash_one(logical);
        if let Ok(kept) = self.tickets.find_entry(hash, |t| *t.logical == *logical) {
            kept.remove();
        }
    }
}

/// The logical key of a ticket key `{prefix:bucket}:t:<logical>` (docs/PROTOCOL.md §2), for
/// this `prefix`; `None` for any other key. (A well-formed key whose bucket is not its
/// logical key's is no key of ours: forgetting that logical key's ticket for it costs one
/// read of the ticket, nothing else.)
fn ticket_logical<'a>(prefix: &str, key: &'a [u8]) -> Option<&'a [u8]> {
    let rest = key.strip_prefix(b"{")?.strip_prefix(prefix.as_bytes())?;
    let rest = rest.strip_prefix(b":")?;
    let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 4 {
        return None;
    }
    rest[digits..]
        .strip_prefix(b"}:")?
        .strip_prefix(crate::key::TICKET_MIDDLE.as_bytes())
}

/// `{prefix:scopes}:t:<tag>` (single node; docs/PROTOCOL.md §2), on the stack when short.
fn tag_token_key(prefix: &str, tag: &str) -> crate::key::KeyWriter {
    joined(crate::key::tag_token_key_parts(prefix, tag))
}

fn joined<const N: usize>(parts: [&str; N]) -> crate::key::KeyWriter {
    let mut key = crate::key::KeyWriter::with_head("");
    for p in parts {
        key.literal(p);
    }
    key
}

/// `client`'s server (address, TLS, credentials) speaking RESP3, for connections that take
/// pushes: tracking invalidations here, bus messages in `bus.rs`.
pub(crate) fn resp3_client(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

/// Whether a push says this connection no longer knows what the server holds: a null
/// invalidation (the data set emptied or replaced: `FLUSHALL`, `FLUSHDB`, a full resync from
/// another master, `DEBUG RELOAD`; anything but a key list) or the connection's loss.
pub(super) fn data_set_lost(info: &PushInfo) -> bool {
    match (&info.kind, info.data.first()) {
        (PushKind::Invalidate, Some(Value::Array(_))) => false,
        (PushKind::Invalidate | PushKind::Disconnection, _) => true,
        _ => false,
    }
}

/// Opens a tracked connection to `client`'s server: RESP3, pushes applied to a new
/// [`TokenCache`], `CLIENT TRACKING ON OPTIN`. `Err` where the server or the ACL refuse
/// (`HELLO 3`, `CLIENT TRACKING`): hits then read the tokens in their `MGET`.
pub(super) async fn open(
    client: &redis::Client,
    connect_timeout: std::time::Duration,
    response_timeout: std::time::Duration,
) -> redis::RedisResult<Tracked> {
    let client = resp3_client(client)?;
    let tokens = Arc::new(TokenCache::new());
    let on_push = tokens.clone();
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(connect_timeout))
        .set_response_timeout(Some(response_timeout))
        .set_push_sender(move |info: PushInfo| {
            on_push.on_push(info);
            Ok::<(), std::convert::Infallible>(())
        });
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("CLIENT")
        .arg("TRACKING")
        .arg("ON")
        .arg("OPTIN")
        .query_async::<()>(&mut conn)
        .await?;
    let batch = super::batch::ReadBatch::spawn(conn.clone());
    Ok(Tracked {
        conn,
        tokens,
        batch,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys<'a>(clears: &'a [Arc<str>; 2], tags: &'a [String]) -> ReadKeys<'a> {
        ReadKeys {
            prefix: "cr",
            bucket: 1,
            slot: 0,
            value_middle: "v2:1:",
            logical: "k",
            clears,
            tags,
            striped: false,
        }
    }

    fn invalidate(keys: &[&str]) -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Array(
                keys.iter()
                    .map(|k| Value::BulkString(k.as_bytes().to_vec()))
                    .collect(),
            )],
        }
    }

    #[test]
    fn pushes_remove_what_they_name_and_a_flush_or_a_loss_removes_everything() {
        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let tags = vec!["team:7".to_string()];
        let k = keys(&clears, &tags);
        let cache = TokenCache::new();
        assert!(cache.stamps(&k).is_none());
        cache.insert(&k, &[1, 2, 3], cache.epoch());
        assert_eq!(cache.stamps(&k).unwrap().as_slice(), &[1, 2, 3]);

        cache.on_push(invalidate(&["{cr:scopes}:t:team:7"]));
        assert!(
            cache.stamps(&k).is_none(),
            "the tag's token was invalidated"
        );
        assert_eq!(cache.len(), 2);

        cache.insert(&k, &[1, 2, 4], cache.epoch());
        cache.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert_eq!(cache.len(), 0, "a flush empties the cache");
        assert!(
            cache.is_lost(),
            "a flush (or a resync) reopens the connections before the next read"
        );
        cache.insert(&k, &[1, 2, 4], cache.epoch());
        assert_eq!(cache.len(), 0, "nothing is kept after it");

        let cache = TokenCache::new();
        cache.insert(&k, &[1, 2, 4], cache.epoch());
        assert!(cache.stamps(&k).is_some());
        cache.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        assert!(cache.stamps(&k).is_none());
        cache.insert(&k, &[1, 2, 4], cache.epoch());
        assert!(
            cache.stamps(&k).is_none(),
            "a lost connection's cache stays empty"
        );
    }

    #[test]
    fn tickets_go_with_their_push_a_flush_or_the_connection_and_stay_bounded() {
        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let k = keys(&clears, &[]);
        let cache = TokenCache::new();
        cache.insert(&k, &[1, 2], cache.epoch());
        cache.insert_ticket(&k, 9, cache.epoch());
        assert_eq!(cache.kept(&k).unwrap().1, Some(9));
        // The ticket key of `keys`: bucket 1, logical `k`.
        cache.on_push(invalidate(&["{cr:1}:t:k"]));
        assert_eq!(cache.kept(&k).unwrap().1, None, "its push removes it");
        let sent = cache.epoch();
        cache.on_push(invalidate(&["{cr:1}:t:other"]));
        cache.insert_ticket(&k, 9, sent);
        assert_eq!(
            cache.kept(&k).unwrap().1,
            None,
            "a read overtaken by a push"
        );
        cache.insert_ticket(&k, 10, cache.epoch());
        cache.on_push(PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        });
        assert!(cache.kept(&k).is_none(), "a flush removes every ticket");
        let cache = TokenCache::new();
        cache.insert(&k, &[1, 2], cache.epoch());
        for i in 0..(MAX_TICKETS as u64 + 10) {
            let logical = format!("k{i}");
            let ki = ReadKeys {
                logical: &logical,
                ..keys(&clears, &[])
            };
            cache.insert_ticket(&ki, i + 1, cache.epoch());
        }
        assert!(cache.lock().tickets.len() <= MAX_TICKETS);
        cache.insert_ticket(&k, 11, cache.epoch());
        cache.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        assert!(cache.kept(&k).is_none());
        assert!(
            cache.lock().tickets.is_empty(),
            "a lost connection's tickets go"
        );
    }

    #[test]
    fn a_push_finds_the_kept_ticket_by_the_exact_ticket_key_only() {
        assert_eq!(ticket_logical("cr", b"{cr:1}:t:k"), Some(&b"k"[..]));
        assert_eq!(
            ticket_logical("cr", b"{cr:1023}:t:a:b}:t:c"),
            Some(&b"a:b}:t:c"[..])
        );
        assert_eq!(ticket_logical("a}:t", b"{a}:t:7}:t:k"), Some(&b"k"[..]));
        for other in [
            &b"{cr:1}:v2:1:k"[..],
            b"{cr:scopes}:t:k",
            b"{crx:1}:t:k",
            b"{cr:}:t:k",
            b"{cr:12345}:t:k",
            b"cr:1}:t:k",
            b"{cr:1}:t",
        ] {
            assert_eq!(ticket_logical("cr", other), None, "{other:?}");
        }

        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let k = keys(&clears, &[]);
        let cache = TokenCache::new();
        cache.insert(&k, &[1, 2], cache.epoch());
        cache.insert_ticket(&k, 9, cache.epoch());
        // The value key's push, or another key's, leaves the ticket.
        cache.on_push(invalidate(&["{cr:1}:v2:1:k", "{cr:1}:t:kk", "{cr:1}:t:"]));
        assert_eq!(cache.kept(&k).unwrap().1, Some(9));
        cache.insert_ticket(&k, 10, cache.epoch());
        assert_eq!(cache.kept(&k).unwrap().1, Some(10), "replaced, not added");
        assert_eq!(cache.lock().tickets.len(), 1);
        // Another prefix is neither kept nor answered.
        let other = ReadKeys {
            prefix: "other",
            ..keys(&clears, &[])
        };
        cache.insert(&other, &[1, 2], cache.epoch());
        cache.insert_ticket(&other, 11, cache.epoch());
        assert_eq!(cache.kept(&other).unwrap().1, None);
        cache.on_push(invalidate(&["{cr:1}:t:k"]));
        assert_eq!(cache.kept(&k).unwrap().1, None);
    }

    #[test]
    fn the_cache_stays_bounded_and_keeps_most_tokens_when_full() {
        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let cache = TokenCache::new();
        for i in 0..MAX_TOKENS as u64 {
            let tags = vec![format!("user:{i}")];
            cache.insert(&keys(&clears, &tags), &[1, 2, i + 1], cache.epoch());
            assert!(cache.len() <= MAX_TOKENS);
        }
        assert!(cache.len() > MAX_TOKENS * 3 / 4, "{}", cache.len());
        let tags = vec![format!("user:{}", MAX_TOKENS - 1)];
        assert_eq!(
            cache.stamps(&keys(&clears, &tags)).unwrap().as_slice(),
            &[1, 2, MAX_TOKENS as u64],
            "the newest tokens are kept"
        );
    }

    fn null() -> PushInfo {
        PushInfo {
            kind: PushKind::Invalidate,
            data: vec![Value::Nil],
        }
    }

    #[test]
    fn a_null_push_is_judged_in_place_and_no_read_sent_before_it_is_used() {
        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let k = keys(&clears, &[]);
        let cache = TokenCache::new();
        cache.insert(&k, &[1, 2], cache.epoch());
        cache.insert_ticket(&k, 9, cache.epoch());
        let before = cache.epoch();
        assert!(usable(before) && !cache.flushed_since(before));
        cache.on_push(invalidate(&["{cr:scopes}:t:other"]));
        assert!(!cache.flushed_since(before), "a key push is no flush");
        let before = cache.epoch();

        // A flush of any database: nothing kept, not to be read on, not gone.
        cache.on_push(null());
        assert!(cache.is_lost() && !cache.is_gone());
        assert!(cache.kept(&k).is_none());
        let during = cache.epoch();
        assert!(!usable(during));
        cache.insert(&k, &[1, 2], during);
        assert_eq!(cache.len(), 0, "nothing is kept while unjudged");
        // A key push while unjudged (a read in flight re-tracked its key) keeps it so.
        cache.on_push(invalidate(&["{cr:1}:t:k"]));
        assert!(cache.is_lost());

        // Judged: read on again, in a new era.
        assert!(cache.judged(during));
        assert!(!cache.is_lost() && !cache.is_gone());
        let after = cache.epoch();
        assert!(usable(after) && !cache.flushed_since(after));
        assert!(!cache.judged(after), "judged once");
        // A read sent before the flush (or while unjudged) is never used, even with its
        // tokens and ticket kept again by a later read.
        assert!(cache.flushed_since(before) && cache.flushed_since(during));
        cache.insert(&k, &[1, 2], after);
        cache.insert_ticket(&k, 9, after);
        assert_eq!(cache.kept(&k).unwrap().1, Some(9));
        let stamps: Stamps = [1, 2].into_iter().collect();
        assert!(cache
            .still_kept(&k, stamps.clone(), Some(9), before)
            .is_none());
        assert!(cache.still_kept(&k, stamps.clone(), None, during).is_none());
        assert!(cache
            .still_kept_but(&k, stamps.clone(), 0, before)
            .is_none());
        assert!(cache
            .still_kept(&k, stamps.clone(), Some(9), after)
            .is_some());
        cache.on_push(invalidate(&["{cr:scopes}:t:other"]));
        assert!(
            cache
                .still_kept(&k, stamps.clone(), Some(9), after)
                .is_some(),
            "a key push since: looked up again, in the same era"
        );

        // A second flush while judging: that judgement is void.
        cache.on_push(null());
        let first = cache.epoch();
        cache.on_push(null());
        assert!(!cache.judged(first), "a flush after the check was sent");
        assert!(cache.judged(cache.epoch()));

        // Not judged: gone for good.
        cache.on_push(null());
        cache.give_up();
        assert!(cache.is_lost() && cache.is_gone());
        assert!(!cache.judged(cache.epoch()));

        // A lost connection is gone, never judged.
        let cache = TokenCache::new();
        cache.on_push(PushInfo {
            kind: PushKind::Disconnection,
            data: Vec::new(),
        });
        assert!(cache.is_lost() && cache.is_gone());
        assert!(!cache.judged(cache.epoch()));
        assert_eq!(next_era(ERA - 1, true), ERA | LOST);
        assert_eq!(next_era(ERA | LOST, false), 2 * ERA);
    }

    #[test]
    fn a_read_overtaken_by_a_push_is_not_cached_and_missing_tokens_never_are() {
        let clears: [Arc<str>; 2] = ["{cr:scopes}:c:app::a".into(), "{cr:scopes}:a".into()];
        let k = keys(&clears, &[]);
        let cache = TokenCache::new();
        let sent = cache.epoch();
        // A push for a write that may have executed after the read: the read's tokens are
        // used by that read only.
        cache.on_push(invalidate(&["{cr:scopes}:t:other"]));
        cache.insert(&k, &[1, 2], sent);
        assert!(cache.stamps(&k).is_none());

        cache.insert(&k, &[1, 0], cache.epoch());
        assert!(cache.stamps(&k).is_none(), "a missing token is not cached");
        assert_eq!(cache.len(), 1);
    }
}

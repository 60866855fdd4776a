//! The shared tier: one reconnecting, multiplexed Redis connection per process.
//!
//! Connecting, reconnects, the bus and retries run on a small dedicated Tokio runtime (one
//! thread) owned by the cache runtime; blocking callers (and async callers outside Tokio)
//! submit their operations there, so a plain `fn` can use Redis without nesting runtimes.
//! Async callers on a Tokio runtime use connections driven by their own runtime (one set
//! per runtime, opened on its first call), so a request and its reply never cross threads. Every operation is
//! bounded by `Config::redis_timeout`, connection included; connecting happens in the
//! background with exponential backoff, so a down Redis costs callers at most one timeout
//! (usually nothing: during backoff operations fail immediately).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redis::RedisError;

use crate::breaker::{Breaker, BreakerState};
use crate::bus;
use crate::config::{redact, Config, WaitReplicas};
use crate::error::{CacheError, InitError};
use crate::pending::{Added, Pending, PendingOp};

mod batch;
mod blocking_conn;
mod connection;
mod direct;
mod incarnation;
mod lane;
mod scripts;
mod tracking;
pub(crate) use tracking::resp3_client;

pub(crate) use crate::redis_request::{
    EntryKeys, Fetched, PlainRead, PlainStore, ReadKeys, ReadRequest, Stamps, StoreKeys,
    WriteRequest,
};
pub(crate) use connection::RedisTarget;
pub(crate) use connection::{key_slot, master_slot_ranges, ClusterTarget, Conn};
use connection::{
    open_client, open_sentinel, resend_pause, resend_waits, Conns, Fault, SentinelTarget, Shared,
};
use scripts::{parse_stamps, ScriptCall, Scripts};

/// Pending key invalidations sent per round trip when draining.
const DRAIN_BATCH: usize = 512;

pub(crate) struct RedisTier {
    handle: tokio::runtime::Handle,
    shared: Arc<Shared>,
    scripts: Arc<Scripts>,
    breaker: Arc<Breaker>,
    pub(crate) pending: Pending,
    retrying: AtomicBool,
    /// The ACL refused `GETEX` once: plain stores check and extend tickets with `GET` and
    /// `PEXPIRE` (docs/PROTOCOL.md §7.2, §10).
    getex_refused: AtomicBool,
    /// Redis Cluster: bus messages go with `SPUBLISH` to bucket channels, scope tokens are
    /// striped per bucket.
    cluster: bool,
    /// The key prefix (pending scope writes are expanded with it on a cluster).
    pending_prefix: String,
    /// Cluster hits may be served by replicas.
    read_replicas: bool,
    /// Dropped with the tier: its Redis thread then ends (a runtime that lost a race of
    /// `init` calls is dropped; the installed one lives as long as the process).
    _thread_stop: tokio::sync::oneshot::Sender<()>,
}

/// A ticket as stored in Redis: 16 lower-case hex digits, on the stack (a command argument:
/// misses and invalidations write one to four of these, and `format!` cost 600 instructions
/// and an allocation each).
#[derive(Clone, Copy)]
pub(crate) struct TicketText([u8; 16]);

#[cfg(test)]
impl TicketText {
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl redis::ToRedisArgs for TicketText {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        out.write_arg(&self.0);
    }
}

pub(crate) fn ticket_text(ticket: u64) -> TicketText {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 16];
    for (i, d) in out.iter_mut().enumerate() {
        *d = DIGITS[((ticket >> (60 - 4 * i)) & 0xf) as usize];
    }
    TicketText(out)
}

/// A ticket read from Redis; anything else than 16 hex digits never matches an envelope.
/// (By hand over the bytes, through a table: three of these are read on every Redis hit.)
fn parse_ticket(raw: &[u8]) -> Option<u64> {
    /// Each byte's hex value, or 16 for a byte that is no hex digit.
    const HEX: [u8; 256] = {
        let mut t = [16u8; 256];
        let mut i = 0;
        while i < 10 {
            t[b'0' as usize + i] = i as u8;
            i += 1;
        }
        let mut i = 0;
        while i < 6 {
            t[b'a' as usize + i] = 10 + i as u8;
            t[b'A' as usize + i] = 10 + i as u8;
            i += 1;
        }
        t
    };
    let raw: &[u8; 16] = raw.try_into().ok()?;
    let mut out = 0u64;
    let mut bad = 0u8;
    for &c in raw {
        let v = HEX[c as usize];
        bad |= v;
        out = out << 4 | u64::from(v & 15);
    }
    // Only a non-digit has bit 4 set.
    (bad & 16 == 0).then_some(out)
}

/// Writes `{prefix:bucket}:<middle><tail>` as the command's next argument, straight into
/// its buffer (docs/PROTOCOL.md §2; the same bytes as `key::bucket_key`).
fn write_bucket_key(cmd: &mut redis::Cmd, k: &ReadKeys<'_>, middle: &str, tail: &str) {
    let mut digits = itoa::Buffer::new();
    let parts = crate::key::bucket_key_parts(k.prefix, digits.format(k.bucket), middle, tail);
    write_parts(cmd, parts);
}

/// Writes `parts`, concatenated, as the command's next argument. A key that fits
/// [`KEY_ON_STACK`] bytes is put together on the stack and appended in one copy: one
/// `Vec` append per part cost ~400 instructions per key, and a miss writes four.
fn write_parts<const N: usize>(cmd: &mut redis::Cmd, parts: [&str; N]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    if len <= KEY_ON_STACK {
        let mut buf = [0u8; KEY_ON_STACK];
        let mut at = 0;
        for p in parts {
            buf[at..at + p.len()].copy_from_slice(p.as_bytes());
            at += p.len();
        }
        cmd.arg(&buf[..at]);
        return;
    }
    use std::io::Write;
    let mut w = redis::RedisWrite::writer_for_next_arg(cmd);
    for p in parts {
        // The writer appends to the command's `Vec`: every `write` takes the whole slice
        // and cannot fail. (`write_all`, a loop around it, is not always inlined: 350
        // instructions per hit when it is not.)
        #[allow(clippy::unused_io_amount)]
        let _ = w.write(p.as_bytes());
    }
}

/// The longest key [`write_parts`] puts together on the stack.
const KEY_ON_STACK: usize = 192;

/// `MGET value ticket clear-tokens tag-tokens…` of a plain read (docs/PROTOCOL.md §7.1),
/// sized up front (no regrowth while the keys are written).
pub(crate) fn mget_command(k: &ReadKeys<'_>) -> redis::Cmd {
    mget_of(k, true, true)
}

/// `MGET` of the entry's value and ticket (`entry`), then of its scope tokens (`tokens`).
fn mget_of(k: &ReadKeys<'_>, entry: bool, tokens: bool) -> redis::Cmd {
    let entry_len = 2 * (k.prefix.len() + k.logical.len() + 8) + k.value_middle.len();
    let tokens_len = k.clears.iter().map(|c| c.len()).sum::<usize>()
        + k.tags
            .iter()
            .map(|t| t.len() + k.prefix.len() + 16)
            .sum::<usize>();
    let mut mget = redis::Cmd::with_capacity(
        5 + k.tags.len(),
        usize::from(entry) * entry_len + usize::from(tokens) * tokens_len + 8,
    );
    mget.arg("MGET");
    if entry {
        write_bucket_key(&mut mget, k, k.value_middle, k.logical);
        write_bucket_key(&mut mget, k, crate::key::TICKET_MIDDLE, k.logical);
    }
    if tokens {
        for c in k.clears {
            mget.arg(&**c);
        }
        for tag in k.tags {
            write_tag_token_key(&mut mget, k, tag);
        }
    }
    mget
}

/// `GET` of the entry's bucket key with `middle`: its value (`k.value_middle`) or its ticket
/// (`key::TICKET_MIDDLE`).
fn get_of(k: &ReadKeys<'_>, middle: &str) -> redis::Cmd {
    let mut get =
        redis::Cmd::with_capacity(2, k.prefix.len() + middle.len() + k.logical.len() + 16);
    get.arg("GET");
    write_bucket_key(&mut get, k, middle, k.logical);
    get
}

/// The entry read by the tracked connection (as value, ticket found), from its reply:
/// `MGET v t` for a plain read; `GET v` for a claiming read (`claim`: its new ticket),
/// whose claim's reply is the ticket in force, read after the value (`None` found where
/// the claim created it). A claim Redis refused (`noeviction` OOM) leaves the ticket
/// unknown: it takes a `GET t` of its own then, so that values already in Redis stay hits.
/// `Err` if that `GET` failed; `Ok(Err)` for an unexpected reply.
async fn tracked_entry(
    reply: redis::Value,
    claim: Option<u64>,
    claimed: &[Option<u64>],
    k: &ReadKeys<'_>,
    c: &mut impl redis::aio::ConnectionLike,
) -> redis::RedisResult<Result<(Option<Vec<u8>>, Option<u64>), CacheError>> {
    let Some(new) = claim else {
        return Ok(mget_items(reply).map(|items| {
            let (value, found, _) = entry_of(items);
            (value, found)
        }));
    };
    let value = bulk_bytes(reply);
    let found = match claimed.first() {
        Some(Some(t)) if *t == new => None,
        Some(Some(t)) => Some(*t),
        _ if value.is_some() => {
            let t = get_of(k, crate::key::TICKET_MIDDLE)
                .query_async::<redis::Value>(c)
                .await?;
            bulk_bytes(t).and_then(|b| parse_ticket(&b))
        }
        _ => None,
    };
    Ok(Ok((value, found)))
}

/// The bytes of a bulk-string reply (moved out); `None` for nil or anything else.
fn bulk_bytes(reply: redis::Value) -> Option<Vec<u8>> {
    match reply {
        redis::Value::BulkString(bytes) => Some(bytes),
        _ => None,
    }
}

/// A token as `MGET` returns it: a missing or foreign one reads as 0 (no token is 0).
fn token_of(v: redis::Value) -> u64 {
    match v {
        redis::Value::BulkString(b) => parse_ticket(&b).unwrap_or(0),
        _ => 0,
    }
}

/// The items of an `MGET` reply.
fn mget_items(reply: redis::Value) -> Result<Vec<redis::Value>, CacheError> {
    match reply {
        redis::Value::Array(items) => Ok(items),
        other => Err(CacheError::Redis(
            format!("unexpected MGET reply: {other:?}").into(),
        )),
    }
}

/// The value and ticket at the head of an `MGET` reply, parsed in place (the value's bytes
/// moved out, the ticket read without a copy); the rest of the items follow.
fn entry_of(
    items: Vec<redis::Value>,
) -> (
    Option<Vec<u8>>,
    Option<u64>,
    std::vec::IntoIter<redis::Value>,
) {
    let mut items = items.into_iter();
    let value = items.next().and_then(bulk_bytes);
    let ticket = match items.next() {
        Some(redis::Value::BulkString(b)) => parse_ticket(&b),
        _ => None,
    };
    (value, ticket, items)
}

/// [`read_tracked`] when every scope token of the entry is kept (`stamps`, looked up at
/// `epoch`), by what else is kept:
///
/// - its ticket too, and no claim: `GET v` alone;
/// - not its ticket, and no claim: `GET v`, `CLIENT CACHING yes`, `GET t`, the ticket read
///   after the value (a ticket that still matches then matched at the read: tickets never
///   repeat) and kept from then on;
/// - a claim: `GET v` and the claims, whose reply is the ticket in force (`SET t new NX GET`),
///   and for each tag in `unkept` (a claiming read only: tags whose token is not kept, their
///   stamps 0 in `stamps`) the token in force, read after the value as a kept one was.
///
/// `None` if a push overtook the read and what it relied on is no longer kept, or a claim of
/// a tag not kept was refused: the caller reads everything again.
#[allow(clippy::too_many_arguments)]
async fn read_kept(
    k: &ReadKeys<'_>,
    t: &tracking::Tracked,
    stamps: Stamps,
    ticket: Option<u64>,
    claim: Option<(u64, u64)>,
    claim_alone: bool,
    epoch: u64,
    unkept: u64,
) -> redis::RedisResult<Option<Result<Fetched, CacheError>>> {
    debug_assert!(unkept == 0 || claim.is_some());
    match (claim, ticket) {
        (None, Some(ticket)) => {
            // The hot read: pipelined with the others when many are in flight (`batch.rs`).
            let reply = t.batch.query(&t.conn, get_of(k, k.value_middle)).await;
            let reply = value_reply(reply)?;
            let Some(stamps) = t.tokens.still_kept(k, stamps, Some(ticket), epoch) else {
                return Ok(None);
            };
            Ok(Some(Ok(fetched(
                bulk_bytes(reply),
                Some(ticket),
                stamps,
                Vec::new(),
            ))))
        }
        (None, None) => {
            let mut p = redis::Pipeline::with_capacity(3);
            p.add_command(get_of(k, k.value_middle));
            p.cmd("CLIENT").arg("CACHING").arg("YES");
            p.add_command(get_of(k, crate::key::TICKET_MIDDLE));
            let replies = direct::query_all(&mut t.conn.clone(), &p).await?;
            let mut replies = replies.into_iter();
            let mut next = || replies.next().unwrap_or(redis::Value::Nil);
            let value = value_reply(Ok(next()))?;
            let (caching, found) = (next().extract_error()?, next().extract_error()?);
            let Some(stamps) = t.tokens.still_kept(k, stamps, None, epoch) else {
                return Ok(None);
            };
            let found = bulk_bytes(found).and_then(|b| parse_ticket(&b));
            // Kept only if Redis tracks it for this connection now (`CLIENT CACHING` took).
            if let (Some(found), redis::Value::Okay) = (found, caching) {
                t.tokens.insert_ticket(k, found, epoch);
            }
            Ok(Some(Ok(fetched(
                bulk_bytes(value),
                found,
                stamps,
                Vec::new(),
            ))))
        }
        (Some((new, px)), _) => {
            let mut conn = t.conn.clone();
            // The stamps still hold, and every tag not kept was claimed (its reply is the
            // token in force).
            let holds = |stamps: Stamps, claimed: &[Option<u64>]| {
                let all_claimed = (0..k.tags.len()).all(|i| {
                    unkept & tracking::tag_bit(i) == 0
                        || claimed.get(1 + i).is_some_and(|c| c.is_some())
                });
                if !all_claimed {
                    return None;
                }
                match unkept {
                    0 => t.tokens.still_kept(k, stamps, None, epoch),
                    _ => t.tokens.still_kept_but(k, stamps, unkept, epoch),
                }
            };
            if claim_alone {
                let claimed = claims_alone(k, new, px, unkept, &mut conn).await?;
                // The ticket is ours: no value in Redis names it, so none is current.
                if claimed.first() == Some(&Some(new)) {
                    let Some(stamps) = holds(stamps, &claimed) else {
                        return Ok(None);
                    };
                    keep_found_tags(k, t, found_tags(k, unkept, new, &claimed)).await;
                    return Ok(Some(Ok(fetched(None, None, stamps, claimed))));
                }
                // A ticket was in force (or the claim was refused): the read below, whose
                // claim finds the ticket again. One round trip more, on a misprediction.
            }
            let read = claiming_read(get_of(k, k.value_middle), k, new, px, unkept);
            let replies = direct::query_all(&mut conn, &read).await?;
            let (reply, claimed) = split_claims_in(replies, new, k.tags.len(), unkept)?;
            let Some(stamps) = holds(stamps, &claimed) else {
                return Ok(None);
            };
            let entry = tracked_entry(reply, Some(new), &claimed, k, &mut conn).await?;
            keep_found_tags(k, t, found_tags(k, unkept, new, &claimed)).await;
            Ok(Some(entry.map(|(value, found)| {
                fetched(value, found, stamps, claimed)
            })))
        }
    }
}

/// After a claiming read that claimed the tags in `unkept` (their replies in `claimed`):
/// the tag tokens a claim found (not created, `new`: a shared tag whose token this
/// connection stopped keeping, say after a store's extension pushed it) are read behind
/// `CLIENT CACHING yes`, one round trip, and kept if no push arrived meanwhile, so that the
/// next reads neither claim them nor extend them again. A token the claim created (a
/// per-key tag, new with its key) is left alone: it costs nothing to claim. Best effort: a
/// failure only leaves them not kept.
/// (Boxed when there is something to read: the common claiming read, which has nothing to
/// keep, carries no pipeline in its future.)
async fn keep_found_tags(k: &ReadKeys<'_>, t: &tracking::Tracked, found: u64) {
    if found != 0 {
        Box::pin(read_and_keep_tags(k, t, found)).await;
    }
}

/// The mask of the tags in `unkept` whose claim found a token (its reply not `new`).
fn found_tags(k: &ReadKeys<'_>, unkept: u64, new: u64, claimed: &[Option<u64>]) -> u64 {
    if unkept == 0 {
        return 0;
    }
    (0..k.tags.len().min(64))
        .filter(|&i| unkept & tracking::tag_bit(i) != 0)
        .filter(|&i| matches!(claimed.get(1 + i), Some(Some(c)) if *c != new))
        .fold(0u64, |m, i| m | tracking::tag_bit(i))
}

/// [`keep_found_tags`]' round trip.
async fn read_and_keep_tags(k: &ReadKeys<'_>, t: &tracking::Tracked, found: u64) {
    let epoch = t.tokens.epoch();
    let mut p = redis::Pipeline::with_capacity(2);
    p.cmd("CLIENT").arg("CACHING").arg("YES");
    let mut mget = redis::Cmd::new();
    mget.arg("MGET");
    for (i, tag) in k.tags.iter().enumerate() {
        if found & tracking::tag_bit(i) != 0 {
            write_tag_token_key(&mut mget, k, tag);
        }
    }
    p.add_command(mget);
    let Ok(replies) = direct::query_all(&mut t.conn.clone(), &p).await else {
        return;
    };
    let mut replies = replies.into_iter();
    if !matches!(replies.next(), Some(redis::Value::Okay)) {
        return;
    }
    let Some(Ok(items)) = replies.next().map(mget_items) else {
        return;
    };
    t.tokens
        .insert_tags(k, found, items.into_iter().map(token_of), epoch);
}

/// Sends a plain invalidation's pipeline (`DEL`, the message, the fresh ticket or token,
/// `lane::key_pipeline` / `lane::scope_pipeline`): `Ok` needs the `DEL`'s and the message's
/// replies (a replica refuses the `DEL`, an ACL the message); a refused `SET` (`noeviction`
/// OOM) leaves no ticket or token, as the invalidate script's `pcall` does.
async fn send_plain_invalidation(c: &mut Conn, pipe: &redis::Pipeline) -> redis::RedisResult<()> {
    plain_invalidation_sent(direct::query_all(c, pipe).await?)
}

/// A plain invalidation's replies: `Ok` needs the `DEL`'s and the message's (a refused
/// `SET` of the fresh ticket leaves the key without one, as the script's `pcall` does).
fn plain_invalidation_sent(replies: Vec<redis::Value>) -> redis::RedisResult<()> {
    let mut replies = replies.into_iter();
    for _ in 0..2 {
        replies
            .next()
            .unwrap_or(redis::Value::Nil)
            .extract_error()?;
    }
    Ok(())
}

/// The invalidate script's call for a key (`value`, `ticket`): the fresh ticket and its
/// lifetime, the bus message's channel and text, and the command that publishes it.
fn invalidate_call<'s>(
    script: &'s redis::Script,
    (value_key, ticket_key): (&str, &str),
    (new_ticket, ticket_px): (u64, u64),
    (publish, channel, message): (&str, &str, &str),
) -> ScriptCall<'s> {
    let bytes = value_key.len() + ticket_key.len() + channel.len() + message.len() + 48;
    let mut call = ScriptCall::new(script, 2, 5, bytes);
    call.arg(value_key)
        .arg(ticket_key)
        .arg(ticket_text(new_ticket))
        .arg(ticket_px.max(1))
        .arg(channel)
        .arg(message)
        .arg(publish);
    call
}

/// The connection a plain read of an async caller goes through.
enum Via {
    Tracked(Arc<tracking::Tracked>),
    Conns(Conns),
    /// The tracked connection, found closed.
    Lost,
}

/// A plain read on `conns`: on their tracked connection if they have one (a closed one
/// is a lost connection, the read not sent), else on the data connection.
async fn read_on(
    shared: &Shared,
    k: &ReadKeys<'_>,
    mut conns: Conns,
    claim: Option<(u64, u64)>,
    claim_alone: bool,
    read_replicas: bool,
) -> (Result<Fetched, CacheError>, Fault) {
    match conns.tracked.take() {
        // Closed: reopened. A null push not judged yet: judged by the read.
        Some(t) if t.tokens.is_gone() => (Err(shared.tracked_lost()), Fault::Lost),
        Some(t) => read_tracked(shared, k, t, claim, claim_alone).await,
        None => read_untracked(shared, k, conns, claim, read_replicas).await,
    }
}

/// A tracked connection that may not be read on: judged again on it after a null push
/// ([`tracking::Tracked::rejudge`]), else (closed, or not judged) the connections are
/// reopened, and judged by their open.
async fn judge_or_reopen(shared: &Shared, t: &tracking::Tracked) {
    let deadline = tokio::time::Instant::now() + shared.op_timeout;
    if t.tokens.is_gone() || !t.rejudge(shared.server_key(), deadline).await {
        let _ = shared.tracked_lost();
    }
}

/// A plain read on the data connection (`MGET value ticket tokens…`, the claims after it).
async fn read_untracked(
    shared: &Shared,
    k: &ReadKeys<'_>,
    conns: Conns,
    claim: Option<(u64, u64)>,
    read_replicas: bool,
) -> (Result<Fetched, CacheError>, Fault) {
    let read = untracked_read(k, claim, read_replicas);
    let (res, fault) = run_op(shared, conns, Confirm::No, move |c| read.run(c)).await;
    (
        res.and_then(|(reply, claimed)| untracked_fetched(reply, claimed)),
        fault,
    )
}

/// A read on the tracked connection (docs/PROTOCOL.md §7.1, `tracking.rs`): [`read_kept`]
/// when every scope token of the entry is cached and still is when the reply arrives (the
/// pushes of writes that executed before the read were applied before it); otherwise `MGET
/// value ticket` (or `GET value` and the claims), `CLIENT CACHING yes`, `MGET tokens…` in
/// one pipeline, the tokens read after the value (a token that still matches then matched
/// at the read) and cached from then on.
///
/// After a null invalidation (a flush of any database, a resync: `tracking.rs`) the server
/// is judged again on the connection ([`tracking::Tracked::rejudge`]) and the read sent
/// again; not judged (or the connection closed), the connections are reopened (a lost
/// connection).
async fn read_tracked(
    shared: &Shared,
    k: &ReadKeys<'_>,
    t: Arc<tracking::Tracked>,
    claim: Option<(u64, u64)>,
    claim_alone: bool,
) -> (Result<Fetched, CacheError>, Fault) {
    match read_tracked_once(shared, k, &t, claim, claim_alone).await {
        Some(res) => res,
        // Boxed: rare, and its state would otherwise weigh on the future of every read.
        None => Box::pin(read_tracked_judged(shared, k, &t, claim, claim_alone)).await,
    }
}

/// [`read_tracked`] after a null invalidation: the server judged again on the connection,
/// then the read sent again (a read is safe to repeat, its claim included: a claim that took
/// answers with our own ticket), the whole within one operation timeout. Not judged (or the
/// connection closed, or flushed again at every try): the connections are reopened, as for
/// a lost connection.
async fn read_tracked_judged(
    shared: &Shared,
    k: &ReadKeys<'_>,
    t: &tracking::Tracked,
    claim: Option<(u64, u64)>,
    claim_alone: bool,
) -> (Result<Fetched, CacheError>, Fault) {
    let deadline = tokio::time::Instant::now() + shared.op_timeout;
    for _ in 0..3 {
        if !t.rejudge(shared.server_key(), deadline).await {
            if tokio::time::Instant::now() >= deadline && !t.tokens.is_gone() {
                break;
            }
            return (Err(shared.tracked_lost()), Fault::Lost);
        }
        match tokio::time::timeout_at(
            deadline,
            read_tracked_once(shared, k, t, claim, claim_alone),
        )
        .await
        {
            Ok(Some(res)) => return res,
            Ok(None) => {}
            Err(_) => break,
        }
    }
    if tokio::time::Instant::now() >= deadline {
        return (Err(CacheError::Timeout(shared.op_timeout)), Fault::Timeout);
    }
    (Err(shared.tracked_lost()), Fault::Lost)
}

/// One try of [`read_tracked`]; `None` if the connection may not be read on (a null
/// invalidation not judged since, or the connection lost), or a null invalidation was
/// applied while the read was in flight (its reply may be of a replaced data set).
async fn read_tracked_once(
    shared: &Shared,
    k: &ReadKeys<'_>,
    t: &tracking::Tracked,
    claim: Option<(u64, u64)>,
    claim_alone: bool,
) -> Option<(Result<Fetched, CacheError>, Fault)> {
    let fail = |e| Some(shared.outcome(Err(e)));
    // Taken before anything is sent: a null push applied after it changes its era, so the
    // reply of any read sent at it is refused (`flushed_since`, `still_kept`).
    let epoch = t.tokens.epoch();
    if !tracking::usable(epoch) {
        return None;
    }
    if let Some((stamps, ticket)) = t.tokens.kept(k) {
        match read_kept(k, t, stamps, ticket, claim, claim_alone, epoch, 0).await {
            Ok(Some(res)) => return Some((res, Fault::Answered)),
            // The data set may have been replaced (a null invalidation): judge first.
            Ok(None) if t.tokens.flushed_since(epoch) => return None,
            // A token or the ticket was invalidated while the read was in flight: read
            // them all again.
            Ok(None) => {}
            Err(e) => return fail(e),
        }
    } else if claim.is_some() && !k.tags.is_empty() {
        // A claiming read whose clear tokens are kept, not all its tags' (a new per-key tag,
        // `user:<id>`): the kept tokens as on a hit, the others from their claims' replies.

        let epoch = t.tokens.epoch();
        if !tracking::usable(epoch) {
            return None;
        }
        if let Some((stamps, unkept)) = t.tokens.kept_but_tags(k) {
            match read_kept(k, t, stamps, None, claim, claim_alone, epoch, unkept).await {
                Ok(Some(res)) => return Some((res, Fault::Answered)),
                Ok(None) if t.tokens.flushed_since(epoch) => return None,
                Ok(None) => {}
                Err(e) => return fail(e),
            }
        }
    }
    let epoch = t.tokens.epoch();
    if !tracking::usable(epoch) {
        return None;
    }
    // Tag tokens kept are not claimed (`add_claims`); the `MGET` reads them after the value.
    let unkept = match claim {
        Some(_) if !k.tags.is_empty() => t.tokens.unkept_tags(k),
        _ => u64::MAX,
    };
    let mut p = redis::Pipeline::with_capacity(4 + k.tags.len());
    // As above: a claiming read reads the value alone.
    p.add_command(match claim {
        None => mget_of(k, true, false),
        Some(_) => get_of(k, k.value_middle),
    });
    // The claims before the token reads: a tag token a claim creates is then not yet
    // tracked by this connection, so its creation pushes nothing here and the tokens read
    // after it can be kept (before, every read that created a per-key tag's token kept
    // nothing, its clear tokens included). The tokens are still read after the value.
    let claims = match claim {
        Some((new, px)) => {
            add_claims(&mut p, k, new, px, unkept);
            1 + (0..k.tags.len()).filter(|&i| claims_tag(unkept, i)).count()
        }
        None => 0,
    };
    p.cmd("CLIENT").arg("CACHING").arg("YES");
    p.add_command(mget_of(k, false, true));
    // Errors come back in place: a claim Redis refuses (OOM) is dropped, the reads are not.
    let mut conn = t.conn.clone();
    let replies = match direct::query_all(&mut conn, &p).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    // The data set may have been replaced while the read was in flight (its null push came
    // first): what it read may be another incarnation's, never used; the read is sent again
    // once the server is judged (on this connection, or on reopened ones).
    if t.tokens.flushed_since(epoch) {
        return None;
    }
    let mut replies = replies.into_iter();
    let entry = value_reply(Ok(replies.next().unwrap_or(redis::Value::Nil)));
    let claimed = match claim {
        Some((new, _)) => claims_in(replies.by_ref().take(claims), new, k.tags.len(), unkept),
        None => Vec::new(),
    };
    let mut next = || replies.next().unwrap_or(redis::Value::Nil);
    let (entry, caching, tokens) = match (entry, next().extract_error(), next().extract_error()) {
        (Ok(entry), Ok(caching), Ok(tokens)) => (entry, caching, tokens),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return fail(e),
    };
    let entry = match tracked_entry(entry, claim.map(|c| c.0), &claimed, k, &mut conn).await {
        Ok(entry) => entry,
        Err(e) => return fail(e),
    };
    let res = entry.and_then(|(value, found)| {
        let stamps: Stamps = mget_items(tokens)?.into_iter().map(token_of).collect();
        // Kept only if Redis tracks them for this connection now (`CLIENT CACHING` took).
        if matches!(caching, redis::Value::Okay) {
            t.tokens.insert(k, &stamps, epoch);
        }
        Ok(fetched(value, found, stamps, claimed))
    });
    Some((res, Fault::Answered))
}

/// A read that carries its scope tokens: `MGET value ticket tokens…`, with the claims (if
/// any) in the same pipeline, the keys written into the commands up front.
struct UntrackedRead {
    /// The pipeline and the new ticket of a claiming read, else the `MGET` alone.
    request: Result<(redis::Pipeline, u64), redis::Cmd>,
    slot: u16,
    read_replicas: bool,
}

fn untracked_read(
    k: &ReadKeys<'_>,
    claim: Option<(u64, u64)>,
    read_replicas: bool,
) -> UntrackedRead {
    let mget = mget_command(k);
    let request = match claim {
        None => Err(mget),
        Some((new, px)) => Ok((claiming_read(mget, k, new, px, u64::MAX), new)),
    };
    UntrackedRead {
        request,
        slot: k.slot,
        read_replicas,
    }
}

impl UntrackedRead {
    /// The `MGET`'s reply and the claims'.
    async fn run(self, mut c: Conn) -> Result<(redis::Value, Vec<Option<u64>>), RedisError> {
        let (p, new) = match self.request {
            Ok(claiming) => claiming,
            // On a cluster, straight to the slot's node: every key is in the value's slot,
            // and redis-rs would otherwise split the multi-key `MGET` by slot and
            // reassemble it (measured: a third of a cluster hit's time).
            Err(mget) => {
                let reply = c.query_in_slot(mget, self.slot, self.read_replicas).await?;
                return Ok((reply, Vec::new()));
            }
        };
        // A pipeline goes whole to the slot of its first single-key command (the ticket's
        // `SET`), which is the `MGET`'s slot.
        split_claims(direct::query_all(&mut c, &p).await?, new)
    }
}

/// What [`untracked_read`] found: the tokens are the `MGET`'s, overridden by the claims.
fn untracked_fetched(
    reply: redis::Value,
    claimed: Vec<Option<u64>>,
) -> Result<Fetched, CacheError> {
    let (value, found, items) = entry_of(mget_items(reply)?);
    Ok(fetched(
        value,
        found,
        items.map(token_of).collect(),
        claimed,
    ))
}

/// A claiming read's pipeline: its `read` (`GET v` on the tracked connection, else the
/// `MGET`), then `SET ticket new NX GET PX px` and the same for each tag's token (a
/// cache of mostly new keys often has per-key tags, `user:<id>`, whose tokens are as new as
/// the keys; the cache-clear and global-clear tokens almost always exist: a missing one
/// takes its own round trip). Errors come back in place: a claim Redis refuses (OOM) is
/// dropped, the read is not ([`split_claims`]).
fn claiming_read(
    read: redis::Cmd,
    k: &ReadKeys<'_>,
    new: u64,
    px: u64,
    unkept: u64,
) -> redis::Pipeline {
    let mut p = redis::Pipeline::with_capacity(2 + k.tags.len());
    p.add_command(read);
    add_claims(&mut p, k, new, px, unkept);
    p
}

/// A read's claims without the read (`PlainRead::claim_alone`): the ticket's `SET … NX GET`
/// alone (one command, no pipeline), or with the tag tokens' in `unkept`. Their replies in
/// their places ([`claims_in`]), ticket first.
async fn claims_alone(
    k: &ReadKeys<'_>,
    new: u64,
    px: u64,
    unkept: u64,
    c: &mut (impl redis::aio::ConnectionLike + direct::Direct + Send),
) -> redis::RedisResult<Vec<Option<u64>>> {
    if !(0..k.tags.len()).any(|i| claims_tag(unkept, i)) {
        return match direct::query(c, &ticket_claim(k, new, px)).await {
            Ok(reply) => Ok(claims_in(std::iter::once(reply), new, k.tags.len(), 0)),
            // Refused (OOM, `LOADING`): no claim, as a pipeline answers it in place.
            Err(e) if e.code().is_some() => Ok(vec![None; 1 + k.tags.len()]),
            Err(e) => Err(e),
        };
    }
    let mut p = redis::Pipeline::with_capacity(1 + k.tags.len());
    add_claims(&mut p, k, new, px, unkept);
    let replies = direct::query_all(c, &p).await?;
    Ok(claims_in(replies.into_iter(), new, k.tags.len(), unkept))
}

/// The claim of the entry's ticket: `SET t new NX GET PX px`.
fn ticket_claim(k: &ReadKeys<'_>, new: u64, px: u64) -> redis::Cmd {
    let key_len = k.prefix.len() + k.logical.len();
    claim_command(key_len, new, Some(px), |set| {
        write_bucket_key(set, k, crate::key::TICKET_MIDDLE, k.logical)
    })
}

/// Appends a read's claims to `p`: the ticket's, then each tag token's in `unkept` (a mask
/// of the tags, [`claims_tag`]). A tag token the tracked connection keeps is not claimed:
/// it exists (its deletion, expiry or eviction would have pushed it out), and the kept
/// value is the token in force when the read executed, by the argument that serves a hit
/// with it (docs/PROTOCOL.md §7.1); its `SET … NX GET` would write nothing and answer that
/// same token.
fn add_claims(p: &mut redis::Pipeline, k: &ReadKeys<'_>, new: u64, px: u64, unkept: u64) {
    let key_len = k.prefix.len() + k.logical.len();
    p.add_command(ticket_claim(k, new, px));
    for (i, tag) in k.tags.iter().enumerate() {
        if claims_tag(unkept, i) {
            p.add_command(claim_command(key_len, new, Some(px), |set| {
                write_tag_token_key(set, k, tag)
            }));
        }
    }
}

/// Whether a read claims its `i`-th tag's token, given the mask of the tags it claims
/// (`u64::MAX`: all; a tag past the 64th always is).
fn claims_tag(unkept: u64, i: usize) -> bool {
    i >= 64 || unkept & (1 << i) != 0
}

/// The claims' replies as [`claims_of`] reads them, in their places: the ticket's, then one
/// per tag, `None` for a tag not claimed (`unkept`, [`add_claims`]).
fn claims_in(
    replies: impl Iterator<Item = redis::Value>,
    new: u64,
    tags: usize,
    unkept: u64,
) -> Vec<Option<u64>> {
    // Every tag claimed (an untagged read, or none kept): the replies are in their places.
    if (0..tags).all(|i| claims_tag(unkept, i)) {
        return claims_of(replies, new);
    }
    let mut claimed = claims_of(replies, new).into_iter();
    let mut out = Vec::with_capacity(1 + tags);
    out.push(claimed.next().flatten());
    for i in 0..tags {
        out.push(match claims_tag(unkept, i) {
            true => claimed.next().flatten(),
            false => None,
        });
    }
    out
}

/// The read script's call for `req` (`lock = true`, docs/PROTOCOL.md §7.3).
fn read_call<'s>(scripts: &'s Scripts, req: &ReadRequest) -> ScriptCall<'s> {
    let keys = &req.keys;
    let (token, lease_ms) = &req.try_lock;
    let mut call = ScriptCall::new(
        &scripts.read,
        3 + keys.stamps.len(),
        4,
        keys.total_len() + token.len() + 48,
    );
    call.arg(&keys.value).arg(&keys.ticket).arg(&keys.lock);
    for k in &keys.stamps {
        call.arg(&**k);
    }
    call.arg(ticket_text(req.new_ticket))
        .arg(req.ticket_px)
        .arg(token)
        .arg(*lease_ms);
    call
}

/// The lock release script's call: deletes `lock_key` only while it holds `token`.
fn release_call<'s>(scripts: &'s Scripts, lock_key: &str, token: &str) -> ScriptCall<'s> {
    let mut call = ScriptCall::new(&scripts.release, 1, 1, lock_key.len() + token.len());
    call.arg(lock_key).arg(token);
    call
}

/// The `store` script's call for `req` (docs/PROTOCOL.md §7.2): writes only if the ticket and
/// scope tokens are still the ones read, and releases the lock `req.token` still owns.
fn store_call<'s>(scripts: &'s Scripts, req: &WriteRequest) -> ScriptCall<'s> {
    let ms = req.ttl.as_millis().max(1) as u64;
    let (keys, seen) = (&req.keys, &req.seen);
    let token = req.token.as_deref().unwrap_or("");
    let mut call = ScriptCall::new(
        &scripts.store,
        3 + keys.stamps.len(),
        5 + seen.len(),
        keys.total_len() + req.bytes.len() + token.len() + 16 * seen.len() + 64,
    );
    call.arg(&keys.value).arg(&keys.ticket).arg(&keys.lock);
    for k in &keys.stamps {
        call.arg(&**k);
    }
    call.arg(ticket_text(req.ticket))
        .arg(&req.bytes[..])
        .arg(ms)
        .arg(req.ticket_px.max(ms))
        .arg(token);
    for s in seen {
        call.arg(ticket_text(*s));
    }
    call
}

/// The commands of a plain store (`now_ms`: the reference clock, read only for the tag
/// tokens' deadline): `GET t` (when `check_ticket`), `SET v <envelope> PX`, `PEXPIRE t keep GT`
/// (when `extend_ticket`), one `PEXPIREAT … GT` per tag token the store did not create with
/// its ticket; errors answered in place (a lone `SET` goes alone, its error as `Err`). With
/// `getex` (only for a store that both checks and extends the ticket), both in one command,
/// `GETEX t PX keep`, first (docs/PROTOCOL.md §7.2).
///
/// `extended` answers, for the deadline, the mask of the tags whose token this process's
/// stores already extended to it (`TokenCache::extended_tags`): their `PEXPIREAT` would
/// change nothing and is left out. Returns, with the commands, which tags' `PEXPIREAT` is
/// sent ([`Extensions`]).
fn plain_store_commands(
    req: &PlainStore<'_>,
    getex: bool,
    now_ms: impl FnOnce() -> u64,
    extended: impl FnOnce(u64) -> u64,
) -> (Commands, Extensions) {
    let ms = req.ttl.as_millis().max(1) as u64;
    let keep = req.ticket_px.max(ms);
    let (clears, tags) = match &req.keys {
        StoreKeys::Owned(keys) => (keys.clears, keys.stamps.len().saturating_sub(keys.clears)),
        StoreKeys::Scheme(k) => (crate::key::CLEAR_TOKENS, k.tags.len()),
    };
    let deadline = if tags > 0 {
        tag_deadline(keep, now_ms())
    } else {
        0
    };
    let done = if tags > 0 { extended(deadline) } else { 0 };
    // A tag token this miss created with its ticket (in one pipeline: the same value, the
    // same lifetime) outlives the value as that ticket does: not extended either. No write,
    // so no push empties it from the processes that keep it, this one included. Nor is one
    // this process already extended to the same deadline (`extended`).
    let created_with_ticket =
        |i: usize| !req.extend_ticket && req.seen.get(clears + i) == Some(&req.ticket);
    let skipped = |i: usize| created_with_ticket(i) || done & tracking::tag_bit(i) != 0;
    let mut sent = Extensions {
        deadline,
        first: usize::from(req.check_ticket) + 1 + usize::from(req.extend_ticket && !getex),
        tags: 0,
    };
    for i in 0..tags.min(64) {
        if !skipped(i) {
            sent.tags |= tracking::tag_bit(i);
        }
    }
    let write_key = |cmd: &mut redis::Cmd, which: StoreKey| match (&req.keys, which) {
        (StoreKeys::Owned(keys), StoreKey::Value) => {
            cmd.arg(&keys.value);
        }
        (StoreKeys::Owned(keys), StoreKey::Ticket) => {
            cmd.arg(&keys.ticket);
        }
        (StoreKeys::Owned(keys), StoreKey::Tag(i)) => {
            cmd.arg(&*keys.stamps[clears + i]);
        }
        (StoreKeys::Scheme(k), StoreKey::Value) => {
            write_bucket_key(cmd, k, k.value_middle, k.logical)
        }
        (StoreKeys::Scheme(k), StoreKey::Ticket) => {
            write_bucket_key(cmd, k, crate::key::TICKET_MIDDLE, k.logical)
        }
        (StoreKeys::Scheme(k), StoreKey::Tag(i)) => write_tag_token_key(cmd, k, &k.tags[i]),
    };
    let key_len = match &req.keys {
        StoreKeys::Owned(keys) => keys.value.len().max(keys.ticket.len()),
        StoreKeys::Scheme(k) => k.prefix.len() + k.value_middle.len() + k.logical.len() + 16,
    };
    let extends = (req.extend_ticket && !getex)
        .then_some(("PEXPIRE", StoreKey::Ticket, keep))
        .into_iter()
        .chain(
            (0..tags)
                .filter(|&i| !skipped(i))
                .map(|i| ("PEXPIREAT", StoreKey::Tag(i), deadline)),
        );
    let mut set = redis::Cmd::with_capacity(5, key_len + req.bytes.len() + 28);
    set.arg("SET");
    write_key(&mut set, StoreKey::Value);
    set.arg(req.bytes).arg("PX").arg(ms);
    if !req.check_ticket && extends.clone().next().is_none() {
        return (Commands::One(set), sent);
    }
    let mut p = redis::Pipeline::with_capacity(3 + tags);
    // One command reads the ticket and moves its expiry to `keep` from now: tickets are all
    // created with this cache's `keep`, so that is never shorter than what is left (§7.2).
    debug_assert!(!getex || (req.check_ticket && req.extend_ticket));
    if req.check_ticket {
        let mut get = redis::Cmd::with_capacity(if getex { 4 } else { 2 }, 24 + key_len);
        get.arg(if getex { "GETEX" } else { "GET" });
        write_key(&mut get, StoreKey::Ticket);
        if getex {
            get.arg("PX").arg(keep);
        }
        p.add_command(get);
    }
    p.add_command(set);
    for (command, key, at) in extends {
        let mut extend = redis::Cmd::with_capacity(4, key_len + 32);
        extend.arg(command);
        write_key(&mut extend, key);
        extend.arg(at).arg("GT");
        p.add_command(extend);
    }
    (Commands::Many(p), sent)
}

/// The tag tokens' `PEXPIREAT … GT` of a plain store: to `deadline`, for the tags in
/// `tags` (a mask, [`tracking::tag_bit`]; tags past the 64th are sent but not in it), their
/// replies in order from the `first`-th.
#[derive(Clone, Copy)]
struct Extensions {
    deadline: u64,
    first: usize,
    tags: u64,
}

impl Extensions {
    /// The mask of the tags whose `PEXPIREAT` Redis answered (an integer: set, or already
    /// as late; not an error), from the store's `replies` (`ok[i]`: the `i`-th answered).
    fn answered(&self, ok: impl Fn(usize) -> bool) -> u64 {
        let mut answered = 0;
        let mut at = self.first;
        for i in 0..64 - self.tags.leading_zeros() as usize {
            if self.tags & tracking::tag_bit(i) != 0 {
                if ok(at) {
                    answered |= tracking::tag_bit(i);
                }
                at += 1;
            }
        }
        answered
    }
}

/// A request of one command or more: a lone command goes without a pipeline (the store of a
/// Redis-only cache's new key is one `SET`), which spares redis-rs's pipeline encoding, its
/// reply `Vec` and the pipeline's own allocation (≈ 1 100 instructions per miss, callgrind).
enum Commands {
    One(redis::Cmd),
    /// Errors answered in place ([`direct::query_all`]).
    Many(redis::Pipeline),
}

impl Commands {
    /// The replies, one per command: a pipeline's errors in place, a lone command's as `Err`.
    async fn query(self, c: &mut Conn) -> redis::RedisResult<Replies> {
        Ok(match self {
            Commands::One(cmd) => Replies::One(Some(direct::query(c, &cmd).await?)),
            Commands::Many(p) => Replies::Many(direct::query_all(c, &p).await?.into_iter()),
        })
    }

    /// [`query`](Self::query) on a blocking caller's own connection (`blocking_conn.rs`),
    /// every reply within `timeout`.
    fn query_blocking(
        &self,
        c: &mut redis::Connection,
        timeout: Duration,
    ) -> redis::RedisResult<Replies> {
        use redis::ConnectionLike;
        Ok(match self {
            Commands::One(cmd) => Replies::One(Some(
                c.req_packed_command(&cmd.get_packed_command())
                    .and_then(redis::Value::extract_error)?,
            )),
            Commands::Many(p) => Replies::Many(blocking_conn::pipeline(c, p, timeout)?.into_iter()),
        })
    }
}

/// What [`Commands::query`] answered, in order.
enum Replies {
    One(Option<redis::Value>),
    Many(std::vec::IntoIter<redis::Value>),
}

impl Iterator for Replies {
    type Item = redis::Value;

    fn next(&mut self) -> Option<redis::Value> {
        match self {
            Replies::One(v) => v.take(),
            Replies::Many(v) => v.next(),
        }
    }
}

/// An operation skipped because the breaker is open. It completes at once, without awaiting
/// Redis, so it takes a unit of the task's cooperative budget (as Tokio's own resources do)
/// and yields once that is spent: a caller that loops over calls during an outage, with
/// bodies that do not await either, still lets its runtime run the tasks that end the outage
/// (the reconnect, the breaker's probe) and everything else.
async fn circuit_open<T>() -> Result<T, CacheError> {
    tokio::task::coop::consume_budget().await;
    Err(CacheError::CircuitOpen)
}

/// Which key of a [`PlainStore`] a command names.
#[derive(Clone, Copy)]
enum StoreKey {
    Value,
    Ticket,
    /// The `i`-th tag's token.
    Tag(usize),
}

/// Until when a store extends a tag's token, from `now_ms` (the reference clock: Redis's
/// `TIME` as this process estimates it): the end of the quantum of `keep` ms after the next
/// one, as an absolute Unix time for `PEXPIREAT … GT`. Every store within one quantum names
/// exactly the same deadline (absolute, so neither the request's transit nor when the
/// server runs it moves it), so after the first the rest change nothing: no write, so no
/// tracking push to every process that keeps the token (an extension by a fixed `keep` from
/// now would be a write on every store, and a relative one computed here would differ by
/// the transit's milliseconds). The token keeps at least `keep` ms (≥ a ticket's lifetime ≥
/// the value's) after every store. Processes whose clock estimates straddle a quantum's end
/// only make a few more calls extend.
fn tag_deadline(keep: u64, now_ms: u64) -> u64 {
    let keep = keep.max(1);
    (now_ms / keep + 2) * keep
}

/// `SET <key> new NX GET PX px`, the key written by `write_key` (about `key_len` bytes);
/// without `PX` when `px` is `None` (a clear token, which lives until a clear deletes it).
fn claim_command(
    key_len: usize,
    new: u64,
    px: Option<u64>,
    write_key: impl FnOnce(&mut redis::Cmd),
) -> redis::Cmd {
    let mut set = redis::Cmd::with_capacity(7, key_len + 48);
    set.arg("SET");
    write_key(&mut set);
    set.arg(ticket_text(new)).arg("NX").arg("GET");
    if let Some(px) = px {
        set.arg("PX").arg(px.max(1));
    }
    set
}

/// The token a claim leaves in force: ours where there was none (`old` nil), else the one
/// found (a foreign one reads as 0, which matches nothing).
fn claimed_token(old: Option<&[u8]>, new: u64) -> u64 {
    old.map_or(new, |old| parse_ticket(old).unwrap_or(0))
}

/// A claiming read's replies: the `MGET`'s (an error fails the read), then the claims':
/// the token in force after each, or `None` where Redis refused the claim (OOM) or held
/// something else than a string.
fn split_claims(
    replies: Vec<redis::Value>,
    new: u64,
) -> redis::RedisResult<(redis::Value, Vec<Option<u64>>)> {
    let mut replies = replies.into_iter();
    let reply = value_reply(Ok(replies.next().unwrap_or(redis::Value::Nil)))?;
    Ok((reply, claims_of(replies, new)))
}

/// [`split_claims`] of a read that claimed the tags in `unkept` only ([`claims_in`]).
fn split_claims_in(
    replies: Vec<redis::Value>,
    new: u64,
    tags: usize,
    unkept: u64,
) -> redis::RedisResult<(redis::Value, Vec<Option<u64>>)> {
    let mut replies = replies.into_iter();
    let reply = value_reply(Ok(replies.next().unwrap_or(redis::Value::Nil)))?;
    Ok((reply, claims_in(replies, new, tags, unkept)))
}

/// A read's reply for the value (`GET v` or the `MGET`: a command's own result, or its
/// place in a pipeline), errors extracted. A value key of another Redis type (a hash where
/// the value belongs) answers `GET` with `WRONGTYPE` where `MGET` answers nil: a miss all
/// the same, whose store replaces it.
fn value_reply(reply: redis::RedisResult<redis::Value>) -> redis::RedisResult<redis::Value> {
    const WRONGTYPE: &str = "WRONGTYPE";
    match reply {
        Err(e) if e.code() == Some(WRONGTYPE) => Ok(redis::Value::Nil),
        Ok(redis::Value::ServerError(e)) if e.code() == WRONGTYPE => Ok(redis::Value::Nil),
        reply => reply?.extract_error(),
    }
}

/// The claims' replies, as [`split_claims`] reads them.
fn claims_of(replies: impl Iterator<Item = redis::Value>, new: u64) -> Vec<Option<u64>> {
    replies
        .map(|r| match r {
            redis::Value::Nil => Some(claimed_token(None, new)),
            redis::Value::BulkString(old) => Some(claimed_token(Some(&old), new)),
            _ => None,
        })
        .collect()
}

/// A read's result: the claims' replies (ticket first, then the tags' tokens) are the later
/// reading, so they win over what the `MGET` or the kept tokens said.
fn fetched(
    value: Option<Vec<u8>>,
    found: Option<u64>,
    mut stamps: Stamps,
    claimed: Vec<Option<u64>>,
) -> Fetched {
    let mut claimed = claimed.into_iter();
    let claimed_ticket = claimed.next().flatten();
    // The stamps are the clear tokens, then one per tag.
    for (stamp, tag_token) in stamps
        .iter_mut()
        .skip(crate::key::CLEAR_TOKENS)
        .zip(claimed)
    {
        if let Some(t) = tag_token {
            *stamp = t;
        }
    }
    Fetched {
        value,
        // (A foreign ticket reads as 0: unusable.)
        ticket: claimed_ticket.or(found).filter(|t| *t != 0),
        ticketless: found.is_none(),
        stamps,
        locked: false,
    }
}

/// Writes a tag's token key as the command's next argument: `{prefix:scopes}:t:<tag>`, or
/// on a cluster the bucket's `{prefix:bucket}:s:t:<tag>` (a long name, hashed, is built by
/// `key::scope_token_key`, the one place that knows how).
fn write_tag_token_key(cmd: &mut redis::Cmd, k: &ReadKeys<'_>, tag: &str) {
    use crate::key::Scope;
    if !k.striped {
        write_parts(cmd, crate::key::tag_token_key_parts(k.prefix, tag));
    } else if "t:".len() + tag.len() > crate::key::STRIPED_NAME_MAX {
        cmd.arg(crate::key::scope_token_key(
            k.prefix,
            k.bucket,
            Scope::Tag(tag),
        ));
    } else {
        write_bucket_key(cmd, k, "s:t:", tag);
    }
}

impl RedisTier {
    /// The tier for `config`'s Redis (a URL, Sentinel or a cluster); `None` without any.
    pub(crate) fn new(config: &Config) -> Result<Self, InitError> {
        let invalid = |e: RedisError| InitError::InvalidUrl(redact(&e.to_string()));
        let target = match (&config.sentinel, &config.redis_url) {
            _ if config.cluster.is_some() => RedisTarget::Cluster(Box::new(
                ClusterTarget::new(
                    config.cluster.as_ref().expect("checked"),
                    config.tls_root_pem.clone(),
                    config.connect_timeout,
                    config.redis_timeout,
                )
                .map_err(invalid)?,
            )),
            (Some(s), _) => RedisTarget::Sentinel(SentinelTarget::new(
                open_sentinel(s, config.tls_root_pem.clone()).map_err(invalid)?,
            )),
            (None, Some(url)) => {
                RedisTarget::Url(open_client(url, config.tls_root_pem.clone()).map_err(invalid)?)
            }
            (None, None) => return Err(InitError::InvalidUrl("no redis configured".into())),
        };
        let (tx, rx) = std::sync::mpsc::channel();
        let (thread_stop, stopped) = tokio::sync::oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("cache-runtime-redis".into())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("cache-runtime: cannot build the Redis I/O runtime");
                let _ = tx.send(rt.handle().clone());
                // Until the tier is dropped (never, for the installed runtime).
                let _ = rt.block_on(stopped);
            })
            .expect("cache-runtime: cannot spawn the Redis I/O thread");
        let handle = rx
            .recv()
            .expect("cache-runtime: the Redis I/O thread died at start");
        let shared = Arc::new(Shared::new(target, config));
        let _ = shared.home.set(handle.id());
        Ok(Self {
            handle,
            shared,
            scripts: Arc::new(Scripts::new()),
            breaker: Arc::new(Breaker::new(
                config.breaker_threshold,
                config.breaker_cooldown,
            )),
            pending: Pending::new(&config.key_prefix),
            retrying: AtomicBool::new(false),
            getex_refused: AtomicBool::new(false),
            cluster: config.cluster.is_some(),
            pending_prefix: config.key_prefix.clone(),
            read_replicas: config.read_from_replicas(),
            _thread_stop: thread_stop,
        })
    }

    /// Runs `op` with the data connection: [`exec_write`](Self::exec_write) without a
    /// `WAIT`, its fast path written out here (an async caller with its connections up awaits
    /// `op` in this future: no `run_op` future around it, and only the data connection
    /// cloned).
    async fn exec<T, F, Fut>(&self, op: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        if !self.breaker.allow() {
            return circuit_open().await;
        }
        let Some(data) = self.shared.caller_conns_with(|c| c.data.clone()) else {
            return self.exec_on_redis_thread(Confirm::No, op).await;
        };
        let res = self.shared.outcome(op(data).await);
        self.settle(res)
    }

    /// A write that must survive a failover: `op` on the write connection, then `WAIT n` for
    /// the replicas (`Config::wait_replicas`). Fewer acknowledgements than `n` is `Err`
    /// (the caller keeps the write pending and retries it).
    ///
    /// On a cluster `WAIT` goes to the master of `route` (a key of the write's slot), or to
    /// every master when `route` is `None` (a write that touched every node).
    async fn exec_write<T, F, Fut>(&self, route: Option<String>, op: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        let confirm = match route {
            Some(key) => Confirm::Key(key),
            None => Confirm::All,
        };
        if !self.breaker.allow() {
            return circuit_open().await;
        }
        // Fast path: an async caller on a Tokio runtime, with the connection up, talks to a
        // multiplexed connection driven by its own runtime (opened on the runtime's first
        // call): no hop through the Redis thread, no extra timer (the connection's response
        // timeout is the operation timeout). Connecting, reconnects and blocking callers stay
        // on the Redis thread.
        if let Some(conns) = self.shared.caller_conns() {
            let res = run_op(&self.shared, conns, confirm, op).await;
            return self.settle(res);
        }
        self.exec_on_redis_thread(confirm, op).await
    }

    /// [`exec`](Self::exec) or [`exec_write`](Self::exec_write) for a caller without
    /// connections of its own (a blocking caller, or the connection still coming up): on the
    /// Redis thread, bounded by the operation timeout, connecting included. A confirmed write
    /// may use a second operation timeout for its `WAIT`.
    async fn exec_on_redis_thread<T, F, Fut>(
        &self,
        confirm: Confirm,
        op: F,
    ) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(Conn) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, RedisError>> + Send,
    {
        let timeout = self.shared.op_timeout * if confirm.waits() { 2 } else { 1 };
        self.on_redis_thread(timeout, move |shared, conns| async move {
            run_op(&shared, conns, confirm, op).await
        })
        .await
    }

    /// Runs `op` on the Redis thread with the connections (waiting for them while they are
    /// coming up), the whole bounded by `timeout`.
    async fn on_redis_thread<T, F, Fut>(&self, timeout: Duration, op: F) -> Result<T, CacheError>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Shared>, Conns) -> Fut + Send + 'static,
        Fut: Future<Output = (Result<T, CacheError>, Fault)> + Send,
    {
        let shared = self.shared.clone();
        let span = tracing::trace_span!("cache.redis");
        let task = self.handle.spawn(tracing::Instrument::instrument(
            async move {
                tokio::time::timeout(timeout, async {
                    let conns = match Shared::connection(&shared).await {
                        Ok(c) => c,
                        Err(e) => return (Err(e), Fault::Lost),
                    };
                    op(shared, conns).await
                })
                .await
                .unwrap_or((Err(CacheError::Timeout(timeout)), Fault::Timeout))
            },
            span,
        ));
        let res = task.await.unwrap_or_else(|e| {
            (
                Err(CacheError::Unavailable(crate::ErrorSource::with_message(
                    format!("redis task failed: {e}"),
                    e,
                ))),
                Fault::Lost,
            )
        });
        self.settle(res)
    }

    /// The read script (`lock = true`): value, ticket and tokens, the ticket set if missing
    /// and the lock tried, in one round trip (docs/PROTOCOL.md §7.3).
    pub(crate) async fn read(&self, req: ReadRequest) -> Result<Fetched, CacheError> {
        // The script reads on the data connection, which redis-rs reconnects by itself: if
        // Redis closed the tracked connection meanwhile (a restart), the connections are
        // reopened first, so that the server's incarnation is checked (§8.2) before a read;
        // after a null push on it, the server is judged again on it first.
        //
        // A blocking caller's own connection (§7.1) needs neither: it never reconnects by
        // itself, and a reply that follows a null push is not used (the read then takes the
        // path below).
        type Reply = (Option<Vec<u8>>, Option<Vec<u8>>, i64, Vec<Option<Vec<u8>>>);
        let own = self.blocking_op(|c| read_call(&self.scripts, &req).invoke_blocking::<Reply>(c));
        let (value, ticket, locked, stamps) = match own {
            Some(res) => self.settle(res)?,
            None if self.shared.caller_conns_with(|_| ()).is_none() => {
                if !self.breaker.allow() {
                    return circuit_open().await;
                }
                self.read_script_on_redis_thread::<Reply>(req).await?
            }
            None => {
                self.judge_if_tracked_lost().await;
                match self.read_script_tracked::<Reply>(&req).await {
                    Some(res) => self.settle(res)?,
                    None => {
                        let scripts = self.scripts.clone();
                        self.exec(move |mut c| async move {
                            read_call(&scripts, &req).invoke::<Reply>(&mut c).await
                        })
                        .await?
                    }
                }
            }
        };
        Ok(Fetched {
            value,
            ticket: ticket.as_deref().and_then(parse_ticket),
            // The script sets a missing ticket itself.
            ticketless: false,
            stamps: parse_stamps(stamps),
            locked: locked == 1,
        })
    }

    /// The read script on the tracked connection of this async caller's runtime, its reply
    /// used only if no null push came before it (`flushed_since`, as for the tracked hit,
    /// §7.1): a push and the reply share the socket, so a script that executed after a flush
    /// or a resync is seen to. On the data connection nothing orders the reply with the
    /// tracked connection's push, and a lock read right after a resync to an older copy could
    /// return the restored value before the push was taken (docs/PROTOCOL.md §13 F10). The
    /// script opts no key in: nothing is tracked. `None`: not an async caller on connections
    /// of its runtime (a caller without them takes
    /// [`read_script_on_redis_thread`](Self::read_script_on_redis_thread), whose runtime
    /// alone can time a request on the main connections; a blocking caller on its own
    /// connection has in-band pushes, §7.1), no usable tracked connection, or a null push
    /// came first (after which the server is judged again or the connections reopened): the
    /// caller reads on the data connection.
    async fn read_script_tracked<T: redis::FromRedisValue>(
        &self,
        req: &ReadRequest,
    ) -> Option<(Result<T, CacheError>, Fault)> {
        let t = self.shared.caller_conns_with(|c| c.tracked.clone())??;
        let epoch = t.tokens.epoch();
        if !tracking::usable(epoch) {
            return None;
        }
        let mut c = t.conn.clone();
        let res = read_call(&self.scripts, req).invoke::<T>(&mut c).await;
        if t.tokens.flushed_since(epoch) {
            self.judge_if_tracked_lost().await;
            return None;
        }
        Some(self.shared.outcome(res))
    }

    /// The read script for a caller without connections of its own (a blocking caller
    /// before its thread's connection, an async caller outside Tokio), on the Redis thread,
    /// whose runtime drives the main connections: there on the main tracked connection, its
    /// reply used only if no null push came before it, as
    /// [`read_script_tracked`](Self::read_script_tracked) does for an async caller
    /// (docs/PROTOCOL.md §13 F10). After a null push the server is judged again (or the
    /// connections reopened) and the script sent on the data connection of the connections
    /// then up; so it is without a usable tracked connection (a cluster, tracking refused).
    async fn read_script_on_redis_thread<T>(&self, req: ReadRequest) -> Result<T, CacheError>
    where
        T: redis::FromRedisValue + Send + 'static,
    {
        let scripts = self.scripts.clone();
        self.on_redis_thread(
            self.shared.op_timeout,
            move |shared, mut conns| async move {
                if let Some(t) = conns.tracked.clone() {
                    let epoch = t.tokens.epoch();
                    if tracking::usable(epoch) {
                        let res = read_call(&scripts, &req)
                            .invoke::<T>(&mut t.conn.clone())
                            .await;
                        if !t.tokens.flushed_since(epoch) {
                            return shared.outcome(res);
                        }
                    }
                    if t.tokens.is_lost() {
                        judge_or_reopen(&shared, &t).await;
                    }
                    // The connections up now (reopened, if they were).
                    conns = match Shared::connection(&shared).await {
                        Ok(c) => c,
                        Err(e) => return (Err(e), Fault::Lost),
                    };
                }
                let mut data = conns.data;
                shared.outcome(read_call(&scripts, &req).invoke::<T>(&mut data).await)
            },
        )
        .await
    }

    /// If the tracked connection of the connections this caller would use (its runtime's,
    /// or the main ones) may not be read on: judged again after a null push (a flush of any
    /// database, a resync), or the connections reopened (closed, or not judged).
    async fn judge_if_tracked_lost(&self) {
        let lost = |c: &Conns| c.tracked.as_ref().filter(|t| t.tokens.is_lost()).cloned();
        match self.shared.caller_conns_with(lost) {
            Some(Some(t)) => judge_or_reopen(&self.shared, &t).await,
            Some(None) => {}
            None => {
                if let Some(t) = self.shared.ready().and_then(|c| lost(&c)) {
                    // On the Redis thread, whose runtime drives the main connections (a
                    // blocking caller's thread may have no runtime).
                    let shared = self.shared.clone();
                    let judged = self
                        .handle
                        .spawn(async move { judge_or_reopen(&shared, &t).await });
                    let _ = judged.await;
                }
            }
        }
    }

    /// A read without a lock attempt: one `MGET value ticket scope-tokens…` (one command,
    /// one round trip), the keys written straight into the command; with a claim, followed
    /// in the same pipeline by `SET ticket new NX GET PX px`, whose reply is the ticket in
    /// force (ours where there was none). A claim Redis refuses (`noeviction` OOM) is
    /// dropped: the read stands, as a plain read.
    pub(crate) async fn read_plain(&self, req: PlainRead<'_>) -> Result<Fetched, CacheError> {
        // A replica read cannot carry a write: the claim then has its own round trip.
        let read_replicas = self.read_replicas;
        let claim = req.claim.filter(|_| !read_replicas);
        let (k, alone) = (&req.keys, req.claim_alone);
        if !self.breaker.allow() {
            return circuit_open().await;
        }
        // An async caller with a tracked connection checks the tokens it keeps (its claim,
        // if any, rides in the same pipeline); the others go on with the connections looked
        // up here.
        let picked = self.shared.caller_conns_with(|c| match &c.tracked {
            Some(t) if t.tokens.is_gone() => Via::Lost,
            Some(t) => Via::Tracked(t.clone()),
            None => Via::Conns(c.clone()),
        });
        let first = match picked {
            Some(Via::Tracked(t)) => read_tracked(&self.shared, k, t, claim, alone).await,
            Some(Via::Conns(conns)) => {
                read_untracked(&self.shared, k, conns, claim, read_replicas).await
            }
            // Redis closed the tracked connection since the last call (its idle `timeout`, a
            // proxy's, `CLIENT KILL`): the read waits for the reconnect instead of failing.
            Some(Via::Lost) => {
                let _ = self.shared.tracked_lost();
                return self.read_on_redis_thread(k, claim, alone, false).await;
            }
            // A blocking caller: on its thread's own connection if it has one. Otherwise (or
            // the connection still coming up) the read runs on the Redis thread, there too
            // on the tracked connection if there is one.
            None => {
                if let Some(res) = blocking_conn::read(&self.shared, k, claim) {
                    return self.settle(res);
                }
                return self.read_on_redis_thread(k, claim, alone, true).await;
            }
        };
        if first.1 == Fault::Lost {
            // The connection was found closed as the read was sent: once more, on the Redis
            // thread once it is reopened (a read is safe to repeat, its claim included: a
            // claim that took answers with our own ticket). Only the last try counts. A
            // cluster connection repairs itself: there the read waits for it.
            return self
                .read_on_redis_thread(k, claim, alone, self.cluster)
                .await;
        }
        self.settle(first)
    }

    /// [`read_plain`](Self::read_plain) for a caller without connections of its own: on
    /// the Redis thread, the keys copied there. With `retry`, a read that finds the
    /// connection closed is sent again on the reopened connections, within the same
    /// operation timeout, after each of [`resend_waits`] (as a request is).
    async fn read_on_redis_thread(
        &self,
        k: &ReadKeys<'_>,
        claim: Option<(u64, u64)>,
        claim_alone: bool,
        retry: bool,
    ) -> Result<Fetched, CacheError> {
        let keys = crate::redis_request::OwnedReadKeys::of(k);
        let read_replicas = self.read_replicas;
        let waits = if retry {
            resend_waits(self.cluster)
        } else {
            &[]
        };
        self.on_redis_thread(self.shared.op_timeout, move |shared, conns| async move {
            let k = keys.keys();
            let mut res = read_on(&shared, &k, conns, claim, claim_alone, read_replicas).await;
            for wait in waits {
                if res.1 != Fault::Lost {
                    break;
                }
                resend_pause(*wait).await;
                let Ok(conns) = Shared::connection(&shared).await else {
                    break;
                };
                res = read_on(&shared, &k, conns, claim, claim_alone, read_replicas).await;
            }
            res
        })
        .await
    }

    /// `SET ticket new NX GET PX px` (when `ticket` is given) and `SET token new NX GET` for
    /// each scope token key given (all in the entry's bucket: one slot), pipelined (one
    /// round trip): the tokens in force, ours where there was none. A tag's token (`expires`)
    /// takes `PX px` and lives as long as the tickets of the values stamped with it (stores
    /// extend both); an expired one only turns those values into misses. A clear token has
    /// no TTL.
    pub(crate) async fn claim_tokens(
        &self,
        ticket: Option<String>,
        px: u64,
        scopes: Vec<(String, bool)>,
        new: u64,
    ) -> Result<(Option<u64>, Vec<u64>), CacheError> {
        self.exec(move |mut c| async move {
            let mut p =
                redis::Pipeline::with_capacity(usize::from(ticket.is_some()) + scopes.len());
            let keys = ticket.iter().map(|t| (t, true));
            for (key, expires) in keys.chain(scopes.iter().map(|(k, e)| (k, *e))) {
                p.add_command(claim_command(
                    key.len(),
                    new,
                    expires.then_some(px),
                    |set| {
                        set.arg(key);
                    },
                ));
            }
            let replies = p.query_async::<Vec<Option<Vec<u8>>>>(&mut c).await?;
            let mut tokens = replies
                .into_iter()
                .map(|old| claimed_token(old.as_deref(), new));
            let ticket = match ticket {
                Some(_) => tokens.next(),
                None => None,
            };
            Ok((ticket, tokens.collect()))
        })
        .await
    }

    /// Stores a body result under the ticket it claimed. `Ok(false)`: the key was
    /// invalidated or replaced since the ticket was taken (the ticket is no longer ours).
    ///
    /// Unless `conditional`, a plain pipeline (docs/PROTOCOL.md §4.2, §7.2):
    ///
    /// ```text
    /// GET t                   -- still ours? (the answer, for the stats and the local
    ///                            tier: only when `check_ticket`; else the answer is `true`)
    /// SET v <envelope> PX ms
    /// PEXPIRE t keep GT       -- the ticket outlives the value (unless this call just
    ///                            created it: it does already; with `check_ticket`,
    ///                            `GETEX t PX keep` replaces `GET t` and this)
    /// PEXPIREAT <tag> q GT    -- each tag's token too, to a quantized deadline (not one
    ///                            this call created with the ticket)
    /// ```
    ///
    /// The `SET` is not conditional: a value stored under a superseded ticket or scope token
    /// names one that is no longer in force (they never repeat), so every reader refuses it
    /// and the next miss replaces it. It costs the server a fraction of the script (no Lua
    /// call). Redis refusing the `SET` (OOM) is `Err`.
    ///
    /// Otherwise the `store` script, which writes only if the ticket and scope tokens are
    /// still the ones read, and releases the lock if `token` still owns it (a lock holder's
    /// write is always conditional). It serves lock holders, explicit writes, and bodies
    /// that heard of a write to their key while they ran: their value is likely superseded,
    /// and a plain `SET` would replace a newer value, which readers accept, with one they
    /// refuse.
    pub(crate) async fn write_if(&self, req: WriteRequest) -> Result<bool, CacheError> {
        if !req.conditional {
            return self
                .store_plain(PlainStore {
                    keys: StoreKeys::Owned(&req.keys),
                    bytes: &req.bytes,
                    ttl: req.ttl,
                    ticket: req.ticket,
                    ticket_px: req.ticket_px,
                    extend_ticket: req.extend_ticket,
                    check_ticket: req.check_ticket,
                    seen: &req.seen,
                })
                .await;
        }
        // A blocking caller: on its thread's own connection if it has one (a fresh
        // connection to a server that lost its scripts loads it, as on the Redis thread).
        let own = self.blocking_op(|c| {
            store_call(&self.scripts, &req)
                .invoke_blocking::<i64>(c)
                .map(|ok| ok == 1)
        });
        if let Some(res) = own {
            return self.settle(res);
        }
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            store_call(&scripts, &req)
                .invoke::<i64>(&mut c)
                .await
                .map(|ok| ok == 1)
        })
        .await
    }

    /// A blocking caller's store, lock attempt or lock script on its thread's own
    /// connection (`blocking_conn::store`), only while the breaker is closed and clean (no
    /// probe of a half-open one taken: the Redis thread's path takes it); `None`: the Redis
    /// thread's path.
    fn blocking_op<T>(
        &self,
        send: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
    ) -> Option<(Result<T, CacheError>, Fault)> {
        if !self.breaker.healthy() {
            return None;
        }
        blocking_conn::store(&self.shared, send)
    }

    /// A store without a script (docs/PROTOCOL.md §4.2, a body that heard of no write): one
    /// pipeline, built here from borrowed keys before it is sent. `Ok(false)` when
    /// `check_ticket` and the ticket was no longer `ticket`.
    pub(crate) async fn store_plain(&self, req: PlainStore<'_>) -> Result<bool, CacheError> {
        let getex = !self.getex_refused.load(Ordering::Relaxed);
        if let Some(ours) = self.send_plain_store(&req, getex).await? {
            return Ok(ours);
        }
        // `GETEX` refused (an ACL without `+getex`): the ticket was neither read nor
        // extended. From now on the store reads and extends it as before, in two commands;
        // this one is sent again that way (the `SET` writes the same envelope).
        if !self.getex_refused.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "redis: `GETEX` refused (grant +getex): stores check and extend tickets with \
                 `GET` + `PEXPIRE`, one command more per miss"
            );
        }
        Ok(self.send_plain_store(&req, false).await?.unwrap_or(false))
    }

    /// Sends one plain store; `None` when `GETEX` was sent and refused by the ACL.
    async fn send_plain_store(
        &self,
        req: &PlainStore<'_>,
        getex: bool,
    ) -> Result<Option<bool>, CacheError> {
        let (check_ticket, ticket) = (req.check_ticket, req.ticket);
        let getex = getex && check_ticket && req.extend_ticket;
        // A tagged store of an async caller with a tracked connection leaves out the tag
        // extensions its earlier stores already made (docs/PROTOCOL.md §7.2): what it knows
        // is kept with the tokens, per connection, and goes with their pushes.
        let tokens = match &req.keys {
            StoreKeys::Scheme(k) if !k.tags.is_empty() && !k.striped => self
                .shared
                .caller_conns_with(|c| c.tracked.as_ref().map(|t| t.tokens.clone()))
                .flatten()
                .filter(|t| !t.is_lost())
                .map(|t| (t.epoch(), t, k)),
            _ => None,
        };
        let tag_seen = &req.seen[req.seen.len().min(crate::key::CLEAR_TOKENS)..];
        let (p, sent) =
            plain_store_commands(
                req,
                getex,
                crate::clock::now_unix_ms,
                |deadline| match &tokens {
                    Some((_, t, k)) => t.extended_tags(k, tag_seen, deadline),
                    None => 0,
                },
            );
        let answer = move |replies: Replies| {
            let mut ours = Some(!check_ticket);
            let mut ok = 0u128;
            for (i, reply) in replies.enumerate() {
                match reply.extract_error() {
                    Ok(redis::Value::BulkString(t)) if check_ticket && i == 0 => {
                        ours = Some(parse_ticket(&t) == Some(ticket))
                    }
                    Ok(redis::Value::Int(_)) if i < 128 => ok |= 1 << i,
                    Ok(_) => {}
                    Err(e) if getex && i == 0 && e.code() == Some("NOPERM") => ours = None,
                    Err(e) => return Err(e),
                }
            }
            Ok((ours, sent.answered(|i| i < 128 && ok & (1 << i) != 0)))
        };
        // A blocking caller: on its thread's own connection if it has one (no hop to the
        // Redis thread; docs/PROTOCOL.md §7.1), with the same commands and the same reading
        // of their replies. It has no tracked connection: every extension is sent.
        let timeout = self.shared.op_timeout;
        let own = self.blocking_op(|c| p.query_blocking(c, timeout).and_then(answer));
        let (ours, answered) = match own {
            Some(res) => self.settle(res)?,
            None => {
                self.exec(move |mut c| async move { answer(p.query(&mut c).await?) })
                    .await?
            }
        };
        if let Some((epoch, t, k)) = &tokens {
            t.note_extended(k, tag_seen, answered, sent.deadline, *epoch);
        }
        Ok(ours)
    }

    /// `SET lock token NX PX lease`: whether this call took the lock.
    pub(crate) async fn try_lock(
        &self,
        lock_key: String,
        token: String,
        lease_ms: u64,
    ) -> Result<bool, CacheError> {
        // `GET`: the holder's token, so that an attempt sent twice (the connection was found
        // closed, `Conn`; a blocking caller's own connection's reply not used) still knows
        // the lock it took is its own.
        let mut set = redis::cmd("SET");
        set.arg(&lock_key)
            .arg(&token)
            .arg("NX")
            .arg("GET")
            .arg("PX")
            .arg(lease_ms);
        let taken = |reply: redis::RedisResult<redis::Value>, token: &str| match reply {
            Ok(redis::Value::Nil) => Ok(true),
            Ok(redis::Value::BulkString(holder)) => Ok(holder == token.as_bytes()),
            Ok(_) => Ok(false),
            // Not a string at the lock key (foreign data): held by nobody we know.
            Err(e) if e.code() == Some("WRONGTYPE") => Ok(false),
            Err(e) => Err(e),
        };
        if let Some(res) = self.blocking_op(|c| taken(set.query(c), &token)) {
            return self.settle(res);
        }
        self.exec(move |mut c| async move { taken(set.query_async(&mut c).await, &token) })
            .await
    }

    pub(crate) async fn release_lock(
        &self,
        lock_key: String,
        token: String,
    ) -> Result<(), CacheError> {
        // A release sent twice (a reply not used on the own connection) deletes nothing the
        // second time: the lock holds another token, or none.
        let own = self.blocking_op(|c| {
            release_call(&self.scripts, &lock_key, &token).invoke_blocking::<i64>(c)
        });
        if let Some(res) = own {
            return self.settle(res).map(drop);
        }
        let scripts = self.scripts.clone();
        self.exec(move |mut c| async move {
            release_call(&scripts, &lock_key, &token)
                .invoke::<i64>(&mut c)
                .await
                .map(drop)
        })
        .await
    }

    /// Invalidates one key: `DEL value ticket`, `SET ticket <new> PX px`, then `PUBLISH`,
    /// in one script (one round trip). `DEL` comes first and is allowed under `noeviction`
    /// OOM; deleting the ticket kills every schema version's value and every in-flight
    /// store. The fresh random ticket only spares the next miss its claim round trip: if
    /// Redis refuses it, the key simply has no ticket, as after a plain `DEL`. `Ok` needs the
    /// `DEL` and the message. On a cluster the message goes with `SPUBLISH` to the key's
    /// bucket channel, in the same script on the key's master (docs/PROTOCOL.md §5.3, §7.4).
    pub(crate) async fn invalidate(
        &self,
        value_key: String,
        ticket_key: String,
        fresh: (u64, u64),
        channel: String,
        message: String,
    ) -> Result<(), CacheError> {
        // Without a subscriber in the process no echo of the message comes back to it: the
        // lane's reply order (`CLIENT REPLY SKIP`) and the script's buy nothing, and plain
        // pipelines run, on the lane when it is free, else on the shared connection.
        let subscribes = bus::subscribes();
        let keys = (value_key.as_str(), ticket_key.as_str());
        if let Some(done) = self.invalidate_blocking(keys, fresh, &channel, &message, subscribes) {
            return self.settle(done);
        }
        if let Some(lane) = self.invalidation_lane().await {
            let message = (channel.as_str(), message.as_str());
            let sent = lane.invalidate(keys, fresh, message, subscribes).await;
            if let Some(done) = self.lane_outcome(sent) {
                return done;
            }
        }
        if !subscribes {
            return self
                .invalidate_plain(value_key, ticket_key, fresh, channel, message)
                .await;
        }
        let scripts = self.scripts.clone();
        let (publish, channel) = self.message_route(&value_key, channel);
        let (new_ticket, ticket_px) = fresh;
        let cluster = self.cluster;
        self.exec_write(Some(value_key.clone()), move |mut c| async move {
            let call = invalidate_call(
                &scripts.invalidate,
                (&value_key, &ticket_key),
                (new_ticket, ticket_px),
                (publish, &channel, &message),
            );
            match call.invoke::<i64>(&mut c).await {
                Ok(heard) if cluster => publish_if_unheard(&mut c, heard, &channel, &message).await,
                Ok(_) => Ok(()),
                Err(e) if cluster && e.code() == Some("TRYAGAIN") => {
                    invalidate_apart(&mut c, (&value_key, &ticket_key), &channel, &message).await
                }
                Err(e) => Err(e),
            }
        })
        .await
    }

    /// [`Self::invalidate`] of a blocking caller on its thread's own connection
    /// (`blocking_conn.rs`): the script, or the plain pipeline where the process does not
    /// subscribe, as on the Redis thread. `None`: the Redis thread's path.
    fn invalidate_blocking(
        &self,
        (value_key, ticket_key): (&str, &str),
        (new_ticket, ticket_px): (u64, u64),
        channel: &str,
        message: &str,
        subscribes: bool,
    ) -> Option<(Result<(), CacheError>, Fault)> {
        // Only while the breaker is closed and clean (no probe of a half-open one taken).
        if !self.breaker.healthy() {
            return None;
        }
        let (publish, channel) = self.message_route(value_key, channel.to_string());
        blocking_conn::write(&self.shared, |c| {
            let keys = (value_key, ticket_key);
            let fresh = (new_ticket, ticket_px);
            if subscribes {
                invalidate_call(
                    &self.scripts.invalidate,
                    keys,
                    fresh,
                    (publish, &channel, message),
                )
                .invoke_blocking::<i64>(c)
                .map(drop)
            } else {
                let pipe = lane::key_pipeline(false, keys, fresh, (publish, &channel, message));
                plain_invalidation_sent(blocking_conn::pipeline(c, &pipe, self.shared.op_timeout)?)
            }
        })
    }

    /// [`Self::invalidate`] in a process that does not subscribe (docs/PROTOCOL.md §7.4), when
    /// the lane is busy, off or not for this caller: one plain pipeline on the shared
    /// connection, `DEL v t` · `PUBLISH` · `SET t <new> PX`, any number in flight at once. The
    /// script's semantics: `Ok` needs the `DEL`'s count (a replica refuses it) and the
    /// message's; a refused `SET` (`noeviction` OOM) leaves the key without a ticket, as the
    /// script's `pcall` does.
    async fn invalidate_plain(
        &self,
        value_key: String,
        ticket_key: String,
        fresh: (u64, u64),
        channel: String,
        message: String,
    ) -> Result<(), CacheError> {
        let (publish, channel) = self.message_route(&value_key, channel);
        self.exec_write(Some(value_key.clone()), move |mut c| async move {
            let keys = (value_key.as_str(), ticket_key.as_str());
            let pipe = lane::key_pipeline(false, keys, fresh, (publish, &channel, &message));
            send_plain_invalidation(&mut c, &pipe).await
        })
        .await
    }

    /// The caller's invalidation lane (`lane.rs`: plain commands under `CLIENT REPLY SKIP`,
    /// no script), if an invalidation may take it now: an async caller on a runtime with its
    /// own connections, single node or Sentinel, Redis healthy, no write waiting for
    /// replicas, the lane ready (a closed one starts opening for a later call).
    async fn invalidation_lane(&self) -> Option<Arc<lane::Lane>> {
        if self.cluster || !self.breaker.healthy() {
            return None;
        }
        let lane = self
            .shared
            .caller_conns_with(|c| c.lane.clone())
            .flatten()?;
        // Replicas first: a lane that would not be used is not opened. The data connection
        // only when `ROLE` must be asked (every 10 s at most).
        let replicas = match self.shared.replicas_known() {
            Some(n) => n,
            None => {
                let mut data = self.shared.caller_conns_with(|c| c.data.clone())?;
                self.shared.replicas_to_wait(&mut data).await
            }
        };
        (replicas == 0 && lane.poll_ready()).then_some(lane)
    }

    /// The invalidation's result if the lane settled it (done, or no answer within the
    /// timeout: the caller's `Err`, counted as any); `None`: run it the usual way.
    fn lane_outcome(&self, sent: lane::Sent) -> Option<Result<(), CacheError>> {
        match sent {
            lane::Sent::Done => Some(Ok(())),
            lane::Sent::TimedOut(e) => {
                let (e, fault) = self.shared.failed_op(e);
                Some(self.settle((Err(e), fault)))
            }
            lane::Sent::NotHere => None,
        }
    }

    /// The token keys a scope invalidation deletes, from the scope's single-node key: that
    /// key (single node, Sentinel), or the scope's token in every bucket (cluster).
    pub(crate) fn scope_keys(&self, prefix: &str, scope_key: &str) -> Vec<String> {
        scope_keys_on(self.cluster, prefix, scope_key)
    }

    /// How a message about `key` is published: `PUBLISH` on `channel` (single node,
    /// Sentinel), or `SPUBLISH` on the key's bucket channel (cluster: same slot as the key).
    fn message_route(&self, key: &str, channel: String) -> (&'static str, String) {
        if self.cluster {
            ("SPUBLISH", bus::shard_channel_of(key))
        } else {
            ("PUBLISH", channel)
        }
    }

    /// The first half of a populate: `DEL value ticket` (first, so the old value is gone even
    /// under OOM), the new ticket, the bus message, and the scope tokens to stamp the new
    /// envelope with (created where missing) (one script, one round trip). The value is then written with
    /// [`Self::write_if`] under the new ticket.
    pub(crate) async fn replace_ticket(
        &self,
        keys: &EntryKeys,
        ticket: u64,
        ticket_px: u64,
        channel: String,
        message: String,
    ) -> Result<Stamps, CacheError> {
        let scripts = self.scripts.clone();
        let (value, ticket_key, stamps, clears) = (
            keys.value.clone(),
            keys.ticket.clone(),
            keys.stamps.clone(),
            keys.clears,
        );
        let (publish, channel) = self.message_route(&value, channel);
        let cluster = self.cluster;
        self.exec_write(Some(value.clone()), move |mut c| async move {
            let mut call = ScriptCall::new(
                &scripts.populate,
                2 + stamps.len(),
                6,
                value.len() + ticket_key.len() + channel.len() + message.len() + 64,
            );
            call.arg(&value).arg(&ticket_key);
            for k in &stamps {
                call.arg(&**k);
            }
            call.arg(ticket_text(ticket))
                .arg(ticket_px.max(1))
                .arg(&channel)
                .arg(&message)
                .arg(publish)
                .arg(clears);
            // The stamps, then how many subscribers heard the message.
            let mut reply = call.invoke::<Vec<Option<Vec<u8>>>>(&mut c).await?;
            let heard = reply
                .pop()
                .flatten()
                .and_then(|n| std::str::from_utf8(&n).ok()?.parse().ok())
                .unwrap_or(0);
            if cluster {
                publish_if_unheard(&mut c, heard, &channel, &message).await?;
            }
            Ok(parse_stamps(reply))
        })
        .await
    }

    /// A tag invalidation or a clear: `DEL` of the scope's token in every bucket (`keys`),
    /// then the bus message (allowed under `noeviction` OOM, idempotent). Every value stamped
    /// with a deleted token is refused from now on. Single node and Sentinel: one pipeline,
    /// one round trip, `DEL <token>` · `PUBLISH` · `SET <token> <fresh> [PX]` (`fresh`: the new
    /// token and, for a tag's, its lifetime; refused under OOM, which leaves no token, as a
    /// `DEL` alone does). The `SET` is a write even where the `DEL` finds no token, so every
    /// process that keeps the token (client tracking) is told to drop it: the data set may
    /// have been swapped under it (`SWAPDB`), taking the token away without a push, and a
    /// `DEL` of nothing tells nobody (docs/PROTOCOL.md §7.6). Cluster: the `DEL` is split per
    /// slot by the cluster client (each master its part, in parallel), then `SPUBLISH` on the
    /// bucket channel of the scope (no token is kept there, and there is one database);
    /// `WAIT` (if any) goes to every master.
    pub(crate) async fn invalidate_scope(
        &self,
        keys: Vec<String>,
        fresh: (u64, Option<u64>),
        channel: String,
        message: String,
    ) -> Result<(), CacheError> {
        if let Some(done) = self.invalidate_scope_blocking(&keys, fresh, &channel, &message) {
            return self.settle(done);
        }
        if let (Some(lane), [token]) = (self.invalidation_lane().await, keys.as_slice()) {
            let sent = lane.invalidate_scope(token, fresh, (&channel, &message), bus::subscribes());
            if let Some(done) = self.lane_outcome(sent.await) {
                return done;
            }
        }
        let first = keys.first().cloned().unwrap_or_default();
        let pick = crate::key::redis_bucket(&first) as usize % keys.len().max(1);
        let (publish, channel) = self.message_route(keys.get(pick).unwrap_or(&first), channel);
        let cluster = self.cluster;
        self.exec_write(None, move |mut c| async move {
            if cluster {
                c.del_everywhere(&keys).await?;
                return redis::cmd(publish)
                    .arg(&channel)
                    .arg(&message)
                    .query_async::<()>(&mut c)
                    .await;
            }
            let pipe = lane::scope_pipeline(false, &keys, fresh, (publish, &channel, &message));
            send_plain_invalidation(&mut c, &pipe).await
        })
        .await
    }

    /// [`Self::invalidate_scope`] of a blocking caller on its thread's own connection
    /// (`blocking_conn.rs`), single node and Sentinel: the same pipeline (`DEL` · `PUBLISH` ·
    /// `SET` fresh), not a write that waits for replicas. Sent twice (a reply not used, a
    /// transport failure), it deletes the token again, publishes again and leaves another
    /// fresh token: harmless. `None`: the Redis thread's path.
    fn invalidate_scope_blocking(
        &self,
        keys: &[String],
        fresh: (u64, Option<u64>),
        channel: &str,
        message: &str,
    ) -> Option<(Result<(), CacheError>, Fault)> {
        if self.cluster || !crate::blocking::in_blocking_call() || !self.breaker.healthy() {
            return None;
        }
        let timeout = self.shared.op_timeout;
        blocking_conn::write(&self.shared, |c| {
            let pipe = lane::scope_pipeline(false, keys, fresh, ("PUBLISH", channel, message));
            plain_invalidation_sent(blocking_conn::pipeline(c, &pipe, timeout)?)
        })
    }

    /// Keeps a write that Redis did not take (maybe folded, see `pending`), and makes sure
    /// the retry loop runs.
    pub(crate) fn defer(&'static self, op: PendingOp) -> Added {
        let added = self.pending.add(op);
        if !self.retrying.swap(true, Ordering::AcqRel) {
            self.handle.spawn(self.retry_loop());
        }
        added
    }

    /// Retries pending writes every 100 ms: scope writes (at most 65) one by one, then key
    /// invalidations in pipelines of [`DRAIN_BATCH`], taken out of the set (never cloning
    /// it) and put back if Redis did not take them.
    async fn retry_loop(&'static self) {
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let _ = self.retry_round().await;
        }
    }

    /// Waits until no write is pending, for at most `timeout` (on the Redis thread, whose
    /// timer runs whatever the caller's thread is doing); whether none is.
    pub(crate) async fn drain(&'static self, timeout: Duration) -> bool {
        if self.pending.len() == 0 {
            return true;
        }
        let pending = &self.pending;
        self.handle
            .spawn(async move {
                tokio::time::timeout(timeout, pending.wait_empty())
                    .await
                    .is_ok()
            })
            .await
            .unwrap_or(false)
    }

    async fn retry_round(&'static self) -> Result<(), CacheError> {
        for op in self.pending.scopes() {
            if let PendingOp::Scope {
                key,
                channel,
                action,
                target,
            } = &op
            {
                self.invalidate_scope(
                    self.scope_keys(&self.pending_prefix, key),
                    crate::redis_request::fresh_token(*action == bus::Action::Tag),
                    channel.clone(),
                    bus::message(*action, target),
                )
                .await?;
                bus::apply_locally(*action, target, 0);
                tracing::info!(write = %op.id(), "a deferred redis write went through");
                self.pending.done(&op.id());
            }
        }
        loop {
            let batch = self.pending.take_keys(DRAIN_BATCH);
            if batch.is_empty() {
                return Ok(());
            }
            match self.invalidate_batch(&batch).await {
                Ok(()) => {
                    for op in &batch {
                        if let PendingOp::Invalidate { logical, .. } = op {
                            bus::apply_locally(bus::Action::Invalidated, logical, 0);
                        }
                    }
                    self.pending.keys_done(&batch);
                    tracing::info!(
                        writes = batch.len(),
                        "deferred redis invalidations went through"
                    );
                }
                Err(e) => {
                    self.pending.restore(batch);
                    return Err(e);
                }
            }
        }
    }

    /// Pending key invalidations: `DEL value ticket` + the message each. Single node and
    /// Sentinel: one pipeline. Cluster: each key on its own, all in parallel
    /// ([`invalidate_apart`]: the cluster client redirects a command, not a pipeline, to the
    /// importing master of a slot on the move). `Err` if any failed (they are idempotent: the
    /// whole batch is retried).
    async fn invalidate_batch(&self, batch: &[PendingOp]) -> Result<(), CacheError> {
        let keys = batch.iter().filter_map(|op| match op {
            PendingOp::Invalidate {
                value_key,
                ticket_key,
                channel,
                logical,
                ..
            } => Some((value_key, ticket_key, channel, logical)),
            _ => None,
        });
        if !self.cluster {
            let mut p = redis::pipe();
            let mut route = None;
            for (value_key, ticket_key, channel, logical) in keys {
                route.get_or_insert_with(|| value_key.clone());
                let (publish, channel) = self.message_route(value_key, channel.clone());
                p.cmd("DEL").arg(value_key).arg(ticket_key).ignore();
                p.cmd(publish)
                    .arg(channel)
                    .arg(bus::message(bus::Action::Invalidated, logical))
                    .ignore();
            }
            let Some(route) = route else {
                return Ok(());
            };
            return self
                .exec_write(Some(route), move |mut c| async move {
                    p.query_async::<()>(&mut c).await
                })
                .await;
        }
        let sends = keys.map(|(value_key, ticket_key, channel, logical)| {
            let (value_key, ticket_key) = (value_key.clone(), ticket_key.clone());
            let (_, channel) = self.message_route(&value_key, channel.clone());
            let message = bus::message(bus::Action::Invalidated, logical);
            self.exec_write(Some(value_key.clone()), move |mut c| async move {
                invalidate_apart(&mut c, (&value_key, &ticket_key), &channel, &message).await
            })
        });
        for res in futures_util::future::join_all(sends).await {
            res?;
        }
        Ok(())
    }

    pub(crate) fn breaker_state(&self) -> BreakerState {
        self.breaker.state()
    }

    /// Sleeps on the Redis thread: usable from any executor, `pollster` included.
    pub(crate) async fn sleep(&self, d: Duration) {
        let _ = self.handle.spawn(tokio::time::sleep(d)).await;
    }

    pub(crate) fn handle(&self) -> &tokio::runtime::Handle {
        &self.handle
    }

    /// What the bus calls when a subscription it had is lost (docs/PROTOCOL.md §8.2): the
    /// server may have died and come back restarted from a snapshot, unseen by connections
    /// that reconnect by themselves (a cluster's, an untracked data connection).
    pub(crate) fn subscription_lost_hook(&self) -> crate::bus::SubscriptionLost {
        let shared = self.shared.clone();
        Box::new(move || shared.restart_suspected("the invalidation bus lost its subscription"))
    }

    /// Where the master is, for the bus subscriber (which follows the same master).
    pub(crate) fn target(&self) -> Arc<RedisTarget> {
        self.shared.target.clone()
    }

    /// Exercises what the runtime really sends, as the configured user, on probe keys under
    /// `prefix` (`{prefix:health}:*`) and a probe channel under the bus's (`{channel}:health`):
    /// `PING`, `SCRIPT LOAD` of every script, each operation (and so every command its script
    /// calls), `TIME`, `ROLE` / `WAIT` when writes wait, `PUBLISH` and `SUBSCRIBE`. The first
    /// failure names its step and, for `NOPERM`, the command the user may not run. Bypasses
    /// the breaker: it is the probe an operator asks for.
    pub(crate) async fn health_check(&self, prefix: &str, channel: &str) -> Result<(), CacheError> {
        let shared = self.shared.clone();
        let conns = self
            .handle
            .spawn(async move {
                tokio::time::timeout(shared.connect_timeout, Shared::connection(&shared))
                    .await
                    .unwrap_or_else(|_| Err(CacheError::Timeout(shared.connect_timeout)))
            })
            .await
            .unwrap_or_else(|e| Err(CacheError::Unavailable(crate::ErrorSource::new(e))))?;
        match self.health_steps(&conns, prefix, channel).await {
            // A server older than 7.0 refuses the runtime's commands as syntax errors: the
            // step that failed then says why (`INFO` refused by the ACL: no claim either way).
            Err(CacheError::Redis(msg)) => {
                let infos = conns.data.clone().server_infos().await.unwrap_or_default();
                Err(CacheError::Redis(match incarnation::too_old(&infos) {
                    Some(version) => msg.map_message(|m| {
                        format!("{m} ({})", incarnation::too_old_message(version))
                    }),
                    None => msg,
                }))
            }
            checked => checked,
        }
    }

    /// The health check's steps (see [`Self::health_check`]).
    async fn health_steps(
        &self,
        conns: &Conns,
        prefix: &str,
        channel: &str,
    ) -> Result<(), CacheError> {
        let step = |name: &'static str| {
            move |e: CacheError| match e {
                CacheError::Redis(msg) => {
                    CacheError::Redis(msg.map_message(|m| health_message(name, m)))
                }
                other => other,
            }
        };
        let run = |conn: Conn, cmd: redis::Cmd, name: &'static str| {
            let shared = self.shared.clone();
            async move {
                let mut c = conn;
                cmd.query_async::<redis::Value>(&mut c)
                    .await
                    .map_err(|e| shared.failed_op(e).0)
                    .map_err(step(name))
            }
        };
        run(conns.data.clone(), redis::cmd("PING"), "PING").await?;
        for script in self.scripts.all() {
            let mut c = conns.data.clone();
            script
                .load_async(&mut c)
                .await
                .map_err(|e| self.shared.failed_op(e).0)
                .map_err(step("SCRIPT LOAD"))?;
        }
        // The commands the scripts call, one by one first: inside a script a refusal names
        // only the script's line, so a direct refusal is what names the command to grant.
        // Not the bus's own channel: receivers never see the probe.
        // One hash tag for every probe key (one slot), under the prefix's ACL pattern.
        let head = format!("{{{prefix}:health}}");
        // On a cluster the probe channel is a shard channel in the probe keys' slot.
        let channel = match self.cluster {
            true => format!("{head}:bus:health"),
            false => format!("{channel}:health"),
        };
        let channel = channel.as_str();
        let publish = if self.cluster { "SPUBLISH" } else { "PUBLISH" };
        let k = format!("{head}:cmd");
        let n = format!("{head}:n");
        let direct: [(&'static str, &[&str]); 8] = [
            ("SET", &["SET", &k, "ok", "PX", "10000"]),
            ("GET", &["GET", &k]),
            ("MGET", &["MGET", &k, &n]),
            ("PEXPIRE", &["PEXPIRE", &k, "10000"]),
            // Far in the future (2100); the key is deleted below.
            ("PEXPIREAT", &["PEXPIREAT", &k, "4102444800000"]),
            ("PTTL", &["PTTL", &k]),
            ("DEL", &["DEL", &k, &n]),
            (publish, &[publish, channel, "probe"]),
        ];
        for (name, args) in direct {
            let mut cmd = redis::cmd(args[0]);
            cmd.arg(&args[1..]);
            run(conns.data.clone(), cmd, name).await?;
        }
        let keys = |k: &str| EntryKeys {
            value: format!("{head}:v:{k}"),
            ticket: format!("{head}:t:{k}"),
            lock: format!("{head}:lock:{k}"),
            stamps: vec![format!("{head}:scope:{k}").into()],
            // The probe's token expires like a tag's.
            clears: 0,
        };
        let ttl = Duration::from_secs(10);
        let px = 10_000;
        let msg = format!("{head}:probe");
        let probe = async {
            // Every operation the runtime sends, on probe keys: populate (new ticket, then
            // the conditional store), a read, a ticket claim, the lock read and lock
            // commands, scope and key invalidations.
            let seen = self
                .replace_ticket(
                    &keys("p"),
                    0x4845_414c_5448,
                    px,
                    channel.into(),
                    msg.clone(),
                )
                .await?;
            // The conditional store (with a lock token), then the plain one of a body result.
            for (token, conditional) in [(Some("health".to_string()), true), (None, false)] {
                self.write_if(WriteRequest {
                    keys: keys("p"),
                    bytes: b"ok".to_vec(),
                    ttl,
                    ticket: 0x4845_414c_5448,
                    ticket_px: px,
                    extend_ticket: true,
                    check_ticket: true,
                    seen: seen.clone(),
                    token,
                    conditional,
                })
                .await?;
            }
            // A claiming read, as a cache of new keys sends it (its own hash tag, one slot).
            let (tag_prefix, logical) = (format!("{prefix}:health"), "p".to_string());
            let tag = format!("{{{tag_prefix}:0}}");
            let clears = [format!("{tag}:s:c").into(), format!("{tag}:s:a").into()];
            self.read_plain(PlainRead {
                keys: ReadKeys {
                    prefix: &tag_prefix,
                    bucket: 0,
                    slot: crate::key::cluster_slot(&tag),
                    value_middle: "v:",
                    logical: &logical,
                    clears: &clears,
                    tags: &[],
                    striped: self.cluster,
                },
                claim: Some((1, px)),
                claim_alone: false,
            })
            .await?;
            let scopes = keys("c")
                .stamps
                .iter()
                .map(|k| (k.to_string(), true))
                .collect();
            self.claim_tokens(Some(keys("c").ticket), px, scopes, 2)
                .await?;
            self.read(ReadRequest {
                keys: keys("l"),
                try_lock: ("health".into(), px),
                new_ticket: 3,
                ticket_px: px,
            })
            .await?;
            self.try_lock(keys("l").lock, "health".into(), px).await?;
            self.release_lock(keys("l").lock, "health".into()).await?;
            for k in ["p", "l", "c"] {
                let EntryKeys {
                    value,
                    ticket,
                    stamps,
                    ..
                } = keys(k);
                for scope in stamps {
                    let fresh = (5, Some(px));
                    self.invalidate_scope(
                        vec![scope.to_string()],
                        fresh,
                        channel.into(),
                        msg.clone(),
                    )
                    .await?;
                }
                self.invalidate(value, ticket, (4, px), channel.into(), msg.clone())
                    .await?;
            }
            Ok::<_, CacheError>(())
        };
        probe.await.map_err(step("an operation (script)"))?;
        // Client tracking (single node): what the hits' token cache needs, on a connection
        // of its own, as each set of connections opens it.
        if let (false, Some(client)) = (self.cluster, self.shared.single_client()) {
            let shared = &self.shared;
            let mut t = tracking::open(&client, shared.connect_timeout, shared.op_timeout)
                .await
                .map_err(|e| shared.failed_op(e).0)
                .map_err(step("CLIENT TRACKING"))?;
            let mut p = redis::pipe();
            p.cmd("CLIENT").arg("CACHING").arg("YES").ignore();
            p.cmd("MGET").arg(&k).arg(&n);
            p.query_async::<(redis::Value,)>(&mut t.conn)
                .await
                .map_err(|e| shared.failed_op(e).0)
                .map_err(step("CLIENT CACHING"))?;
        }
        run(conns.data.clone(), redis::cmd("TIME"), "TIME").await?;
        if self.shared.wait != WaitReplicas::Off {
            run(conns.data.clone(), redis::cmd("ROLE"), "ROLE").await?;
            let mut wait = redis::cmd("WAIT");
            wait.arg(0).arg(0);
            run(conns.write.clone(), wait, "WAIT").await?;
        }
        let target = self.target();
        let channel = channel.to_string();
        let timeout = self.shared.connect_timeout;
        // The bus's subscription, as the subscriber makes it: on a cluster `SSUBSCRIBE` on a
        // RESP3 cluster connection (and `CLUSTER SLOTS` for probe routing), else `SUBSCRIBE`.
        type Sub = std::pin::Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;
        let (command, sub): (&str, Sub) = if let RedisTarget::Cluster(cluster) = &*target {
            run(
                conns.data.clone(),
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                "CLUSTER SLOTS",
            )
            .await?;
            let builder = cluster.builder();
            let sub = async move {
                let (tx, _rx) = tokio::sync::mpsc::unbounded_channel::<redis::PushInfo>();
                let client = builder?
                    .use_protocol(redis::ProtocolVersion::RESP3)
                    .push_sender(tx)
                    .build()?;
                let mut conn = client.get_async_connection().await?;
                conn.ssubscribe(&channel).await?;
                conn.sunsubscribe(&channel).await
            };
            ("SSUBSCRIBE", Box::pin(sub))
        } else {
            let sub = async move {
                let mut pubsub = target.client().await?.get_async_pubsub().await?;
                pubsub.subscribe(&channel).await?;
                pubsub.unsubscribe(&channel).await
            };
            ("SUBSCRIBE", Box::pin(sub))
        };
        self.handle
            .spawn(async move {
                match tokio::time::timeout(timeout, sub).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(CacheError::Redis(crate::ErrorSource::with_message(
                        health_message(command, &redact(&e.to_string())),
                        e,
                    ))),
                    Err(_) => Err(CacheError::Timeout(timeout)),
                }
            })
            .await
            .unwrap_or_else(|e| Err(CacheError::Unavailable(crate::ErrorSource::new(e))))
    }
}

impl Scripts {
    /// Every script, for the health check's `SCRIPT LOAD`.
    fn all(&self) -> [&redis::Script; 5] {
        [
            &self.read,
            &self.store,
            &self.release,
            &self.populate,
            &self.invalidate,
        ]
    }
}

/// [`RedisTier::scope_keys`] before the tier exists: the scope's token key, or its stripe in
/// every bucket on a cluster.
pub(super) fn scope_keys_on(cluster: bool, prefix: &str, scope_key: &str) -> Vec<String> {
    if cluster {
        crate::key::scope_token_keys(prefix, scope_key)
    } else {
        vec![scope_key.to_string()]
    }
}

/// Publishes a key's message again, on its own, when the write's script or pipeline says
/// it reached no subscriber (`heard`, `SPUBLISH`'s count; cluster only, where every process
/// subscribes to every bucket channel, this one included). That happens when the write was
/// redirected (`ASK`) to the importing master of a slot on the move: the keys had been
/// migrated there, while every subscription still listens on the slot's owner, which serves
/// the slot's shard channels until the move is final (docs/PROTOCOL.md §5.3). Routed by the
/// channel, the message goes to that owner, after the write has run.
async fn publish_if_unheard(
    c: &mut Conn,
    heard: i64,
    channel: &str,
    message: &str,
) -> redis::RedisResult<()> {
    if heard > 0 {
        return Ok(());
    }
    spublish(c, channel, message).await
}

/// `SPUBLISH` on its own, routed by the channel to its slot's owner.
async fn spublish(c: &mut Conn, channel: &str, message: &str) -> redis::RedisResult<()> {
    redis::cmd("SPUBLISH")
        .arg(channel)
        .arg(message)
        .query_async::<()>(c)
        .await
}

/// A key's invalidation as commands of their own, each redirected (`ASK`) by the cluster
/// client to wherever its key is while a slot is on the move: `DEL t` first (from then on no
/// value of the key's is served, and none stored under the old ticket), `DEL v`, then the
/// message, routed by its channel to the slot's owner, where every subscription listens
/// until the move is final. For a slot on the move, where the importing master refuses the
/// script (`TRYAGAIN`: one of its two keys is gone) and the cluster client does not redirect
/// a pipeline (docs/PROTOCOL.md §5.3).
async fn invalidate_apart(
    c: &mut Conn,
    (value_key, ticket_key): (&str, &str),
    channel: &str,
    message: &str,
) -> redis::RedisResult<()> {
    redis::cmd("DEL")
        .arg(ticket_key)
        .query_async::<()>(c)
        .await?;
    redis::cmd("DEL")
        .arg(value_key)
        .query_async::<()>(c)
        .await?;
    spublish(c, channel, message).await
}

/// `health check: <step> failed: the redis user may not run 'zadd' (grant +zadd): NOPERM ...`
fn health_message(step: &str, msg: &str) -> String {
    let denied = msg
        .to_ascii_uppercase()
        .contains("NOPERM")
        .then(|| msg.split('\'').nth(1))
        .flatten()
        .filter(|c| !c.is_empty() && !c.contains(' '));
    match denied {
        Some(cmd) => format!(
            "health check: {step} failed: the redis user may not run '{cmd}' (grant +{}): {msg}",
            cmd.to_lowercase()
        ),
        None => format!("health check: {step} failed: {msg}"),
    }
}

impl RedisTier {
    /// Breaker bookkeeping and rate-limited logging of one operation's result.
    fn settle<T>(&self, (res, fault): (Result<T, CacheError>, Fault)) -> Result<T, CacheError> {
        match (&res, fault) {
            // Only an error that says nothing about this node's health (`WRONGTYPE`, a
            // write refused by a full server, `OOM`, ...) counts as Redis answering;
            // `READONLY`, `NOPERM`, ... are failures.
            (Ok(_), _) | (Err(_), Fault::Answered) => self.breaker.success(),
            (Err(e), fault) => {
                if self.breaker.failure() && fault == Fault::Timeout {
                    // Nothing answered, several times in a row: the connections may be dead
                    // without knowing it (a NAT, a load balancer or a firewall dropped them
                    // without a reset; TCP notices after minutes). New ones are opened for
                    // the next attempt; if the server itself hangs, that connect fails and
                    // backs off.
                    self.shared.stalled(e);
                }
            }
        }
        if let Err(e) = &res {
            self.shared.log.warn_error(
                "redis",
                "redis operation failed, falling back to the source",
                e,
            );
        }
        res
    }
}

/// Whether a write waits for replicas, and where its `WAIT` goes on a cluster.
enum Confirm {
    /// A read, or a write that never waits.
    No,
    /// The master of this key's slot.
    Key(String),
    /// Every master.
    All,
}

impl Confirm {
    fn waits(&self) -> bool {
        !matches!(self, Confirm::No)
    }
}

/// Runs `op` on the data connection, or on the write connection followed by `WAIT` when
/// `confirm`, and classifies a failure.
async fn run_op<T, F, Fut>(
    shared: &Shared,
    conns: Conns,
    confirm: Confirm,
    op: F,
) -> (Result<T, CacheError>, Fault)
where
    F: FnOnce(Conn) -> Fut,
    Fut: Future<Output = Result<T, RedisError>>,
{
    let fail = |e| shared.outcome(Err(e));
    if !confirm.waits() {
        return shared.outcome(op(conns.data).await);
    }
    let mut write = conns.write;
    let mut data = conns.data;
    let value = match op(write.clone()).await {
        Ok(v) => v,
        Err(e) => return fail(e),
    };
    let wanted = shared.replicas_to_wait(&mut data).await;
    if wanted == 0 {
        return (Ok(value), Fault::Answered);
    }
    // `WAIT` covers every write sent before it on this connection (on a cluster: on this
    // node's connection), the one above included.
    let wait_ms = shared.op_timeout.as_millis().max(1) as u64;
    let route = match &confirm {
        Confirm::Key(k) => Some(k.as_str()),
        _ => None,
    };
    // Boxed: only a write to a master with replicas waits, and the `WAIT`'s state (a cluster
    // route's, on a cluster) would otherwise weigh on the future of every operation.
    match Box::pin(write.wait(wanted, wait_ms, route)).await {
        Ok(acked) if acked >= wanted => (Ok(value), Fault::Answered),
        Ok(acked) => {
            counters::unconfirmed();
            (
                Err(CacheError::Unavailable(crate::ErrorSource::from(format!(
                    "write not confirmed: {acked} of {wanted} replica(s) acknowledged it \
                     within {wait_ms} ms (WAIT)"
                )))),
                Fault::Refused,
            )
        }
        Err(e) => fail(e),
    }
}

#[cfg(test)]
mod ticket_tests {
    use super::{parse_ticket, tag_deadline, ticket_text};

    #[test]
    fn tag_deadlines_keep_the_token_past_keep_and_are_one_per_quantum() {
        let keep = 600_000;
        let start = 1_764_633_600_000; // a multiple of keep
        for now in [start, start + 1, start + keep / 2, start + keep - 1] {
            let at = tag_deadline(keep, now);
            assert!(at - now > keep && at - now <= 2 * keep, "{now}: {at}");
            assert_eq!(at, start + 2 * keep, "one deadline in the quantum");
        }
        assert_eq!(
            tag_deadline(keep, start + keep),
            start + 3 * keep,
            "the next quantum moves it"
        );
        assert_eq!(tag_deadline(0, 5), 7, "keep 0 reads as 1 ms");
    }

    #[test]
    fn tickets_round_trip_and_foreign_text_never_parses() {
        for t in [1u64, 0xdead_beef, u64::MAX, 0x0123_4567_89ab_cdef] {
            assert_eq!(parse_ticket(ticket_text(t).as_bytes()), Some(t));
            assert_eq!(ticket_text(t).as_bytes(), format!("{t:016x}").as_bytes());
        }
        assert_eq!(
            parse_ticket(b"0123456789ABCDEF"),
            Some(0x0123_4567_89ab_cdef)
        );
        for bad in [
            &b""[..],
            b"123",
            b"0123456789abcdeg",
            b"0123456789abcdef0",
            b"+123456789abcdef",
        ] {
            assert_eq!(parse_ticket(bad), None, "{bad:?}");
        }
    }
}

/// Process-wide counts of the connection layer (exported as metrics).
pub(crate) mod counters {
    use std::sync::atomic::{AtomicU64, Ordering};

    use crate::metrics_shim as metrics;

    static UNCONFIRMED: AtomicU64 = AtomicU64::new(0);

    /// A write the replicas did not confirm in time.
    pub(crate) fn unconfirmed() {
        UNCONFIRMED.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cache_redis_unconfirmed_writes").increment(1);
    }

    /// Writes the replicas did not confirm in time, since start.
    pub(crate) fn unconfirmed_writes() -> u64 {
        UNCONFIRMED.load(Ordering::Relaxed)
    }

    static PIPELINED: AtomicU64 = AtomicU64::new(0);
    static PIPELINES: AtomicU64 = AtomicU64::new(0);

    /// `n` reads sent together in one pipeline (`batch.rs`).
    pub(crate) fn pipelined(n: u64) {
        PIPELINED.fetch_add(n, Ordering::Relaxed);
        PIPELINES.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cache_redis_pipelined_reads").increment(n);
    }

    /// Reads sent in a pipeline with others, and those pipelines, since start.
    pub(crate) fn pipelined_reads() -> (u64, u64) {
        (
            PIPELINED.load(Ordering::Relaxed),
            PIPELINES.load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod key_writing_tests {
    use super::{get_of, write_tag_token_key, KEY_ON_STACK};
    use crate::key::{bucket_key_at, scope_key, Scope, TICKET_MIDDLE};
    use crate::redis_request::ReadKeys;

    /// Keys written straight into commands are byte for byte the key scheme's strings,
    /// whether put together on the stack or appended part by part (longer keys).
    #[test]
    fn keys_written_into_commands_are_the_schemes_keys() {
        let clears: [std::sync::Arc<str>; 2] = ["{cr:scopes}:c:x".into(), "{cr:scopes}:a".into()];
        for len in [
            1,
            20,
            KEY_ON_STACK - 20,
            KEY_ON_STACK,
            KEY_ON_STACK + 1,
            1000,
        ] {
            let logical = "k".repeat(len);
            let tag = "t".repeat(len);
            let k = ReadKeys {
                prefix: "cr",
                bucket: 917,
                slot: 0,
                value_middle: "v2:1:",
                logical: &logical,
                clears: &clears,
                tags: std::slice::from_ref(&tag),
                striped: false,
            };
            for middle in ["v2:1:", TICKET_MIDDLE] {
                let expected = redis::cmd("GET")
                    .arg(bucket_key_at("cr", 917, middle, &logical))
                    .get_packed_command();
                assert_eq!(get_of(&k, middle).get_packed_command(), expected, "{len}");
            }
            let mut cmd = redis::cmd("DEL");
            write_tag_token_key(&mut cmd, &k, &tag);
            let expected = redis::cmd("DEL")
                .arg(scope_key("cr", Scope::Tag(&tag)))
                .get_packed_command();
            assert_eq!(cmd.get_packed_command(), expected, "{len}");
        }
    }
}

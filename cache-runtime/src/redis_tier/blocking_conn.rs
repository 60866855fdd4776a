//! A blocking caller's own connection (a cached `fn`, a `_blocking` function): a plain read
//! sent and answered on the caller's thread, as a hand-written synchronous `GET` is, instead of
//! a task on the Redis thread (two thread wake-ups per read: measured 2.2 × a hand-written
//! sync hit's instructions, docs/BENCHMARKS.md, thirty-eighth round).
//!
//! At most [`MAX_IN_FLIGHT`] such operations run at once in a process: beyond them a call
//! takes the Redis thread, whose shared connection batches concurrent requests (the server's
//! cost per request, measured in docs/BENCHMARKS.md, thirty-ninth round).
//!
//! Single node and Sentinel only (a cluster's reads go on through the Redis thread). What
//! keeps a read on it as safe as one on the tracked connection (docs/PROTOCOL.md §8.2, §13
//! F10):
//!
//! - *Opened only on a judged server*: when the main connections are up, and only if the
//!   incarnation record names the incarnation this connection reaches (`INFO` and the record
//!   read on it right after the connect). A server restarted from its snapshot, or resynced,
//!   before the main connections noticed is refused until their check has cleared and
//!   recorded it.
//! - *Never reconnected by itself*: a closed connection is dropped; a reopen is judged again.
//! - *Dropped with the main connections*: it belongs to their epoch, which every loss,
//!   reopen or suspected restart bumps.
//! - *In-band null pushes*: it is a RESP3 connection with `CLIENT TRACKING ON OPTIN` that
//!   never opts a key in, so the only push it gets is the null invalidation of a data set
//!   emptied or replaced (`FLUSHALL`, `FLUSHDB`, a resync). The server sends it before the
//!   reply of any later command on the connection, so a reply that follows one is not served,
//!   and the connection is judged again on itself before its next use, as the open judges it
//!   (since the forty-first round; before, it was dropped and a new one opened: one connect
//!   per warm thread per flush of *any* database, client tracking ignoring databases). Not
//!   judged (the record gone or another incarnation's), it is dropped.
//!
//! The read itself is the untracked one (`MGET value ticket tokens…`, claims pipelined), so
//! it needs no token kept in the process. A transport failure or a refusal to open sends the
//! read through the Redis thread as before; a timeout is an answer (the breaker counts it).
//!
//! The thread's writes go there too, under the same rules ([`write`], [`store`]): its key
//! and scope invalidations (not one that waits for replicas), and, since the fortieth round,
//! its miss's store (the plain pipeline or the `store` script), a `lock = true` miss's lock
//! script, lock attempt and release. Each is safe to send again through the Redis thread when
//! its reply is not used (a null push came first) or its transport failed: an invalidation
//! leaves another fresh ticket or token and message; a plain store writes the same envelope
//! under the same ticket and only extends expiries; the scripts write only under the ticket,
//! tokens or lock token they name (docs/PROTOCOL.md §7.1).

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use redis::{ConnectionLike, FromRedisValue, PushInfo, RedisError, Value};

use super::connection::{Fault, RedisTarget, Shared};
use super::{incarnation, split_claims, untracked_fetched, untracked_read};
use crate::error::CacheError;
use crate::redis_request::{Fetched, ReadKeys};

/// Blocking calls a thread makes through the Redis thread before it opens its own
/// connection: a thread that calls a handful of times (one per request) never opens one.
const CALLS_BEFORE_OWN: u32 = 16;

/// Threads with a connection of their own, at most, per runtime; the others go through the
/// Redis thread.
pub(super) const MAX_THREADS: usize = 64;

/// Operations on blocking callers' own connections in flight at once, at most, in the
/// process; a call beyond them goes through the Redis thread, whose shared connection sends
/// concurrent requests in one batch. Own connections pay off while few calls overlap (no
/// thread wake-ups); with many, the server's cost per request decides (each own connection
/// is one request per read and write of the server's event loop): measured in
/// docs/BENCHMARKS.md, thirty-ninth round.
const MAX_IN_FLIGHT: usize = 8;

/// Operations in flight on own connections (see [`MAX_IN_FLIGHT`]).
static IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The connection's name in `CLIENT LIST`.
const CLIENT_NAME: &str = "cache-runtime-blocking";

/// How long a thread whose open failed, or whose connection timed out, waits before it
/// tries again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// The same after the server refused what the connection needs (the ACL).
const RETRY_REFUSED: Duration = Duration::from_secs(60);

/// One thread's connection.
struct Own {
    shared: Weak<Shared>,
    epoch: u64,
    conn: redis::Connection,
    pushes: mpsc::Receiver<PushInfo>,
    /// A null push came: judged again ([`judge_again`]) before the connection's next use.
    unjudged: bool,
}

impl Drop for Own {
    fn drop(&mut self) {
        if let Some(shared) = self.shared.upgrade() {
            shared.blocking_conns.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

/// This thread's calls towards [`CALLS_BEFORE_OWN`], and its retry time after a failed open.
#[derive(Clone, Copy)]
struct Counting {
    shared: *const Shared,
    calls: u32,
    retry_at: Option<Instant>,
}

thread_local! {
    static OWN: RefCell<Option<Own>> = const { RefCell::new(None) };
    static COUNTING: Cell<Counting> = const {
        Cell::new(Counting { shared: std::ptr::null(), calls: 0, retry_at: None })
    };
}

/// A plain read of a blocking caller on this thread's own connection; `None` when there is
/// none to use (not a blocking call, a cluster, the main connections not up, this thread still
/// counting, the connection lost): the caller then reads through the Redis thread.
pub(super) fn read(
    shared: &Arc<Shared>,
    k: &ReadKeys<'_>,
    claim: Option<(u64, u64)>,
) -> Option<(Result<Fetched, CacheError>, Fault)> {
    let res = on_own(shared, true, |conn| {
        match untracked_read(k, claim, false).request {
            Err(mget) => conn
                .req_packed_command(&mget.get_packed_command())
                .and_then(Value::extract_error)
                .map(|reply| (reply, Vec::new())),
            Ok((p, new)) => {
                pipeline(conn, &p, shared.op_timeout).and_then(|replies| split_claims(replies, new))
            }
        }
    })?;
    let (res, fault) = shared.outcome(res);
    Some((
        res.and_then(|(reply, claimed)| untracked_fetched(reply, claimed)),
        fault,
    ))
}

/// A write of a blocking caller (a key's invalidation) on this thread's own connection, as
/// [`read`] does; `None` also for a write that waits for replicas (`WAIT`, on the Redis
/// thread). A write sent here that failed as a transport goes through the Redis thread
/// again: invalidations are safe to repeat (two fresh tickets, two messages).
pub(super) fn write(
    shared: &Arc<Shared>,
    send: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<()>,
) -> Option<(Result<(), CacheError>, Fault)> {
    if shared.replicas_known() != Some(0) {
        return None;
    }
    on_own(shared, true, send).map(|res| shared.outcome(res))
}

/// A miss's store of a blocking caller (the plain pipeline or the `store` script) on this
/// thread's own connection, if it has one (a store never opens it: the thread's reads do,
/// after [`CALLS_BEFORE_OWN`] calls); `None` as for [`read`]. No `WAIT`: a store does not
/// wait for replicas on the Redis thread either. A store whose reply follows a null push is
/// not used and goes through the Redis thread again, as is one that failed as a transport:
/// both are safe to repeat (docs/PROTOCOL.md §7.1): the plain store writes the same envelope
/// under the same ticket and only extends expiries (`GT`, or to the cache's own `keep`), and
/// the script writes only under the ticket and tokens read, so a second run after an
/// invalidation writes nothing and answers "superseded".
pub(super) fn store<T>(
    shared: &Arc<Shared>,
    send: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Option<(Result<T, CacheError>, Fault)> {
    on_own(shared, false, send).map(|res| shared.outcome(res))
}

/// `op` on this thread's own connection (opened if `may_open` and it is its turn), or
/// `None` (see [`read`]). A transport failure (closed, reset) or a replaced data set drops the connection
/// and answers `None`: the operation then goes through the Redis thread, which judges the
/// main connections. A timeout is an answer (the breaker counts it); its connection is
/// dropped all the same (its reply may still come) and not reopened at once, which would
/// cost the next call a connect to a server that may not answer.
fn on_own<T>(
    shared: &Arc<Shared>,
    may_open: bool,
    op: impl FnOnce(&mut redis::Connection) -> redis::RedisResult<T>,
) -> Option<redis::RedisResult<T>> {
    if !crate::blocking::in_blocking_call() || matches!(*shared.target, RedisTarget::Cluster(_)) {
        return None;
    }
    let _slot = InFlight::take()?;
    let epoch = shared.epoch();
    OWN.with(|own| {
        let mut own = own.borrow_mut();
        let usable = own.as_ref().is_some_and(|o| {
            std::ptr::eq(o.shared.as_ptr(), Arc::as_ptr(shared)) && o.epoch == epoch
        });
        if !usable {
            *own = None;
            if !may_open {
                return None;
            }
            *own = match open(shared, epoch) {
                Opened::Yes(o) => Some(o),
                Opened::No => return None,
                // The server does not answer: that is this call's answer (the breaker
                // counts it), not a second wait through the Redis thread.
                Opened::TimedOut(e) => return Some(Err(e)),
            };
        }
        let o = own.as_mut()?;
        if o.unjudged {
            match judge_again(shared, o) {
                Ok(true) => {}
                Ok(false) => {
                    *own = None;
                    return None;
                }
                // The server does not answer: that is this call's answer, as for an open.
                Err(e) => {
                    *own = None;
                    retry_later(shared, RETRY_AFTER);
                    return Some(Err(e));
                }
            }
        }
        let res = op(&mut o.conn);
        let keep = match (&res, pushed(&o.pushes)) {
            (_, Pushed::Closed) => None,
            (Err(e), _) if e.is_timeout() => Some(false),
            (Err(e), _) if !super::connection::error_reply(e) => None,
            // A null push came before the reply: the data set may have been replaced, and
            // what a read found may be another incarnation's. Not used; the connection is
            // judged again before its next use.
            (_, Pushed::Flushed) => {
                o.unjudged = true;
                return None;
            }
            _ => Some(true),
        };
        match keep {
            None => {
                *own = None;
                None
            }
            Some(false) => {
                *own = None;
                retry_later(shared, RETRY_AFTER);
                Some(res)
            }
            Some(true) => Some(res),
        }
    })
}

/// A place among the [`MAX_IN_FLIGHT`] operations, given back on drop.
struct InFlight;

impl InFlight {
    fn take() -> Option<InFlight> {
        match IN_FLIGHT.fetch_add(1, Ordering::Acquire) < MAX_IN_FLIGHT {
            true => Some(InFlight),
            false => {
                IN_FLIGHT.fetch_sub(1, Ordering::Release);
                None
            }
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.fetch_sub(1, Ordering::Release);
    }
}

/// What the pushes received since the last look say.
#[derive(Debug, PartialEq)]
enum Pushed {
    /// Nothing that matters (the connection never opts a key in).
    Nothing,
    /// A null invalidation: the data set was emptied or replaced, in this database or
    /// another (client tracking ignores databases).
    Flushed,
    /// The connection closed.
    Closed,
}

/// Drains the pushes received: the worst of what they say.
fn pushed(pushes: &mpsc::Receiver<PushInfo>) -> Pushed {
    let mut seen = Pushed::Nothing;
    while let Ok(p) = pushes.try_recv() {
        if p.kind == redis::PushKind::Disconnection {
            seen = Pushed::Closed;
        } else if seen == Pushed::Nothing && super::tracking::data_set_lost(&p) {
            seen = Pushed::Flushed;
        }
    }
    seen
}

/// After a null push: judges the server again on `o`'s connection, as [`connect`] does
/// (`INFO` and the incarnation record, [`incarnation::judged`]), within the operation
/// timeout. Judged, and no other push before the replies: the connection serves on (its
/// check executed after the flush, and every command sent from now on after it). As safe as
/// a reopen, whose check is the same: a record naming this server after a flush means that
/// nothing of ours was replaced, or that the main connections judged the replacement and
/// cleared it before they wrote the record, or that our database was emptied (nothing in it
/// to serve). Anything else: `Ok(false)`, and the connection is dropped; a timeout is
/// `Err`.
fn judge_again(shared: &Shared, o: &mut Own) -> redis::RedisResult<bool> {
    let mut p = redis::pipe();
    p.cmd("INFO");
    p.cmd("GET").arg(shared.server_key());
    let replies = match pipeline(&mut o.conn, &p, shared.op_timeout) {
        Ok(replies) => replies,
        Err(e) if e.is_timeout() => return Err(e),
        Err(_) => return Ok(false),
    };
    let judged = match <(String, Option<String>)>::from_redis_value(Value::Array(replies)) {
        Ok((info, record)) => incarnation::judged(&info, record.as_deref()),
        Err(_) => false,
    };
    o.unjudged = !(judged && pushed(&o.pushes) == Pushed::Nothing);
    Ok(!o.unjudged)
}

/// What [`open`] did.
enum Opened {
    Yes(Own),
    /// Not this thread's turn, no place left, or it failed or was refused.
    No,
    /// The server did not answer within the operation timeout.
    TimedOut(RedisError),
}

/// This thread's connection, if it is its turn to open one and the open succeeds.
fn open(shared: &Arc<Shared>, epoch: u64) -> Opened {
    let me = Arc::as_ptr(shared);
    let mut c = COUNTING.get();
    if c.shared != me {
        c = Counting {
            shared: me,
            calls: 0,
            retry_at: None,
        };
    }
    c.calls = c.calls.saturating_add(1);
    let due = c.calls > CALLS_BEFORE_OWN && c.retry_at.is_none_or(|t| Instant::now() >= t);
    COUNTING.set(c);
    if !due {
        return Opened::No;
    }
    // Judged by the main connections: up (their check ran under this epoch).
    let Some(client) = shared.ready().and_then(|_| shared.single_client()) else {
        return Opened::No;
    };
    if shared.blocking_conns.fetch_add(1, Ordering::AcqRel) >= MAX_THREADS {
        shared.blocking_conns.fetch_sub(1, Ordering::AcqRel);
        retry_later(shared, RETRY_AFTER);
        return Opened::No;
    }
    match connect(shared, &client) {
        // Counted until `Own`'s drop gives the place back.
        Ok((conn, pushes)) => {
            let own = Own {
                shared: Arc::downgrade(shared),
                epoch,
                conn,
                pushes,
                unjudged: false,
            };
            match shared.epoch() == epoch {
                true => Opened::Yes(own),
                false => Opened::No,
            }
        }
        Err(e) => {
            shared.blocking_conns.fetch_sub(1, Ordering::AcqRel);
            // Refused (an ACL without `client|tracking` or `info`): for good, nearly.
            let refused = super::connection::error_reply(&e);
            retry_later(shared, if refused { RETRY_REFUSED } else { RETRY_AFTER });
            tracing::debug!(error = %e, "no connection of its own for a blocking caller");
            match e.is_timeout() {
                true => Opened::TimedOut(e),
                false => Opened::No,
            }
        }
    }
}

/// Every command of `p` sent on `conn`, their replies (errors in place), all of them within
/// `timeout` (the connection's read timeout, restored after): redis-rs's own pipeline read
/// waits its read timeout once per reply, even after the first one timed out (a 3-command
/// invalidation took 3 × the operation timeout on a hung server).
pub(super) fn pipeline(
    conn: &mut redis::Connection,
    p: &redis::Pipeline,
    timeout: Duration,
) -> redis::RedisResult<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    conn.send_packed_command(&p.get_packed_pipeline())?;
    let mut replies = Vec::with_capacity(p.len());
    let read = (|| {
        while replies.len() < p.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RedisError::from(std::io::Error::from(
                    std::io::ErrorKind::TimedOut,
                )));
            }
            conn.set_read_timeout(Some(left))?;
            match conn.recv_response()? {
                // Also sent to the push channel, which the caller reads.
                Value::Push { .. } => {}
                reply => replies.push(reply),
            }
        }
        Ok(())
    })();
    conn.set_read_timeout(Some(timeout))?;
    read.map(|()| replies)
}

/// This thread tries to open its connection again only after `wait`.
fn retry_later(shared: &Shared, wait: Duration) {
    COUNTING.set(Counting {
        shared,
        calls: CALLS_BEFORE_OWN,
        retry_at: Some(Instant::now() + wait),
    });
}

/// Connects, turns tracking on (for the null pushes alone) and checks that the server was
/// judged: the incarnation record names what this connection reaches.
fn connect(
    shared: &Shared,
    client: &redis::Client,
) -> redis::RedisResult<(redis::Connection, mpsc::Receiver<PushInfo>)> {
    let client = super::tracking::resp3_client(client)?;
    // Within the caller's operation timeout, all of it: the open runs inside its call.
    let started = Instant::now();
    let mut conn =
        client.get_connection_with_timeout(shared.op_timeout.min(shared.connect_timeout))?;
    let left = shared.op_timeout.saturating_sub(started.elapsed());
    conn.set_write_timeout(Some(shared.op_timeout))?;
    let (tx, pushes) = mpsc::channel();
    conn.set_push_sender(tx);
    let mut p = redis::pipe();
    p.cmd("CLIENT").arg("TRACKING").arg("ON").arg("OPTIN");
    p.cmd("INFO");
    p.cmd("GET").arg(shared.server_key());
    // For operators (`CLIENT LIST`); an ACL may refuse it, which changes nothing.
    p.cmd("CLIENT").arg("SETNAME").arg(CLIENT_NAME);
    let mut replies = pipeline(&mut conn, &p, left.max(Duration::from_millis(1)))?.into_iter();
    conn.set_read_timeout(Some(shared.op_timeout))?;
    let mut next = || replies.next().unwrap_or(Value::Nil).extract_error();
    let ((), info, record): ((), String, Option<String>) = (
        redis::from_redis_value(next()?)?,
        redis::from_redis_value(next()?)?,
        redis::from_redis_value(next()?)?,
    );
    if pushed(&pushes) != Pushed::Nothing || !incarnation::judged(&info, record.as_deref()) {
        return Err(RedisError::from((
            redis::ErrorKind::Client,
            "the server's incarnation is not judged yet",
        )));
    }
    Ok((conn, pushes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::PushKind;

    fn push(kind: PushKind, data: Vec<Value>) -> PushInfo {
        PushInfo { kind, data }
    }

    #[test]
    fn at_most_max_in_flight_operations_take_own_connections() {
        // Nothing else in this crate's tests makes blocking calls on own connections.
        let held: Vec<InFlight> = (0..MAX_IN_FLIGHT).map_while(|_| InFlight::take()).collect();
        assert_eq!(held.len(), MAX_IN_FLIGHT);
        assert!(
            InFlight::take().is_none(),
            "one more goes through the Redis thread"
        );
        drop(held);
        assert!(InFlight::take().is_some(), "places are given back");
        assert_eq!(IN_FLIGHT.load(Ordering::Acquire), 0);
    }

    #[test]
    fn only_a_null_invalidation_flushes_and_a_disconnection_closes() {
        let (tx, rx) = mpsc::channel();
        assert_eq!(pushed(&rx), Pushed::Nothing);
        tx.send(push(
            PushKind::Invalidate,
            vec![Value::Array(vec![Value::BulkString(b"k".to_vec())])],
        ))
        .unwrap();
        assert_eq!(pushed(&rx), Pushed::Nothing);
        tx.send(push(PushKind::Invalidate, vec![Value::Nil]))
            .unwrap();
        assert_eq!(pushed(&rx), Pushed::Flushed);
        assert_eq!(pushed(&rx), Pushed::Nothing, "drained");
        tx.send(push(PushKind::Disconnection, vec![])).unwrap();
        tx.send(push(PushKind::Invalidate, vec![Value::Nil]))
            .unwrap();
        assert_eq!(pushed(&rx), Pushed::Closed, "the worst of them");
    }
}

//! The invalidation lane: a connection of its own per set of connections on which an
//! invalidation is sent as plain commands, the `DEL` under `CLIENT REPLY SKIP`
//! (docs/PROTOCOL.md §7.4, §7.6):
//!
//! ```text
//! CLIENT REPLY SKIP · DEL v t · PUBLISH <bus> <msg> · SET t <new> PX <ms>     (a key)
//! CLIENT REPLY SKIP · DEL s · PUBLISH <bus> <msg> · SET s <new> [PX <ms>]    (a tag, a clear)
//! ```
//!
//! Why: Redis writes the client that got its first reply of the event loop last first. Here
//! the caller's first reply (the `PUBLISH`'s) comes after the bus message's copy to this
//! process's own subscriber, so the caller is answered before the echo wakes the
//! subscriber's thread, as with the invalidate script, without the script's server time
//! (≈ 7 µs of Lua per call on Redis 7.0, measured: docs/BENCHMARKS.md), and, for a scope,
//! without the pipeline's order (`DEL`, `PUBLISH`), where the echo is written first. The
//! last write's answer (`OK`) proves the writes ran on a master that took them (a replica
//! refuses them, `noeviction` refuses the `SET`): only then is the invalidation done here.
//! The fresh ticket (a scope's fresh token) follows the message, so a reader that read the
//! key in between may have claimed one of its own; the `SET` replaces it, which only refuses
//! that reader's store (one more miss).
//!
//! Why a connection of its own: a multiplexed connection matches replies to requests by
//! count. A server, proxy or ACL that refuses `CLIENT REPLY` answers every command, and on a
//! shared connection the extra replies would be handed to the requests behind (a read would
//! get another key's value). On the lane one request is in flight at a time, its replies must
//! have exactly the expected shape (an integer, then `OK` or an error), and anything else
//! discards the connection, whose late replies then go nowhere, and turns the lane off. A new
//! lane proves `CLIENT REPLY SKIP` before its first use. An invalidation that finds the lane
//! off, busy (another invalidation of this runtime in flight), still opening, or whose last
//! write was refused runs as before on the shared connection (the invalidate script, or a
//! scope's pipeline): the lane only ever makes an invalidation faster, never different.
//!
//! A process that does not subscribe hears no echo, so the reply order buys it nothing: its
//! invalidations go without `CLIENT REPLY SKIP`, a key's as `DEL v t` · `PUBLISH` · `SET`,
//! three replies ([`Lane::invalidate`]), a scope's as `DEL s` · `PUBLISH` · `SET s`; when
//! the lane is busy a key's goes on the shared connection instead of the script (§7.4).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::log_limit::LogLimiter;

/// The shape of the lane's replies.
enum Replies {
    /// `PUBLISH`'s count, then the last write's answer: done.
    Done,
    /// In step, but the last write was refused (a replica; OOM for a key's `SET`).
    NotTaken,
    /// Not the two replies the pipeline answers when `CLIENT REPLY SKIP` works: the server
    /// or something between refused it (or the `PUBLISH` failed). The connection may hold
    /// more replies than requests.
    Foreign,
}

enum State {
    /// No connection; open one (in the background) from `retry_at` on.
    Closed {
        retry_at: Instant,
    },
    Opening,
    Ready(MultiplexedConnection),
    /// An invalidation holds the connection.
    Busy,
    /// `CLIENT REPLY` refused: every invalidation of this connection set uses the script.
    Off,
}

/// Consecutive failures (a timeout, a dropped connection) after which the lane stays off.
const MAX_FAILURES: u32 = 3;

pub(super) struct Lane {
    /// The runtime that drives this set of connections: the lane's connection is opened and
    /// used there only (its driver task lives as long as that runtime).
    runtime: tokio::runtime::Id,
    client: redis::Client,
    connect_timeout: Duration,
    response_timeout: Duration,
    state: Mutex<State>,
    /// Failures in a row (an open, or an invalidation that timed out or lost the
    /// connection); reset by a confirmed invalidation.
    failures: AtomicU32,
    log: LogLimiter,
}

impl Lane {
    /// A lane to `client`'s server for the current runtime's connections; it connects on its
    /// first use.
    pub(super) fn new(
        client: redis::Client,
        connect_timeout: Duration,
        response_timeout: Duration,
    ) -> Option<Self> {
        Some(Lane {
            runtime: tokio::runtime::Handle::try_current().ok()?.id(),
            client,
            connect_timeout,
            response_timeout,
            state: Mutex::new(State::Closed {
                retry_at: Instant::now(),
            }),
            failures: AtomicU32::new(0),
            log: LogLimiter::default(),
        })
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether the lane is ready on this runtime (no connection is taken). A closed lane due
    /// for an attempt starts opening, in the background (this invalidation uses the script).
    pub(super) fn poll_ready(self: &Arc<Self>) -> bool {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        if handle.id() != self.runtime {
            return false;
        }
        let mut state = self.state();
        match &*state {
            State::Ready(_) => true,
            State::Closed { retry_at } if *retry_at <= Instant::now() => {
                *state = State::Opening;
                handle.spawn(self.clone().open());
                false
            }
            _ => false,
        }
    }

    /// The connection, if the lane is ready (it is `Busy` until the caller sets it again).
    fn take(&self) -> Option<MultiplexedConnection> {
        let mut state = self.state();
        match std::mem::replace(&mut *state, State::Busy) {
            State::Ready(conn) => Some(conn),
            other => {
                *state = other;
                None
            }
        }
    }

    /// Connects and proves `CLIENT REPLY SKIP`: `CLIENT REPLY SKIP`, `PING 1`, `PING 2` must
    /// answer `2` alone.
    async fn open(self: Arc<Self>) {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let opened = async {
            let mut conn = self
                .client
                .get_multiplexed_async_connection_with_config(&config)
                .await?;
            let mut probe = redis::pipe();
            probe
                .cmd("CLIENT")
                .arg("REPLY")
                .arg("SKIP")
                .cmd("PING")
                .arg("1")
                .cmd("PING")
                .arg("2");
            let replies = conn.send_packed_commands(&probe, 0, 1).await?;
            Ok::<_, redis::RedisError>((conn, replies))
        };
        let next = match tokio::time::timeout(self.connect_timeout * 2, opened).await {
            Ok(Ok((conn, replies))) => match replies.as_slice() {
                [Value::BulkString(b)] if b == b"2" => State::Ready(conn),
                _ => {
                    self.turned_off(&format!("{replies:?}"));
                    State::Off
                }
            },
            Ok(Err(e)) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) => {
                self.turned_off(&e.to_string());
                State::Off
            }
            _ => self.failed(),
        };
        *self.state() = next;
    }

    /// After a failure: closed for a while, or off after [`MAX_FAILURES`] in a row.
    fn failed(&self) -> State {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if failures >= MAX_FAILURES {
            return State::Off;
        }
        State::Closed {
            retry_at: Instant::now() + Duration::from_millis(100 << failures),
        }
    }

    fn turned_off(&self, reply: &str) {
        self.log.warn_error(
            "redis",
            "`CLIENT REPLY SKIP` refused (grant +client|reply for faster invalidations): \
             invalidations use the invalidate script (plain pipelines on the shared \
             connection in a process that does not subscribe)",
            &crate::config::redact(reply),
        );
    }

    /// Invalidates a key on the lane: `CLIENT REPLY SKIP`, `DEL v t`, `PUBLISH`, `SET t <new>
    /// PX`, whose `OK` proves the writes ran on a master that took them. Without `skip` (a
    /// process that does not subscribe: no echo to answer the caller before) the same three
    /// commands, all answered: done with the `DEL`'s count and the message's (a refused `SET`
    /// leaves the key without a ticket, as the invalidate script's `pcall` does), and a refused
    /// `DEL` or message runs the usual way, which reports it. [`Sent::Done`]: done and
    /// confirmed (the message published, the new ticket in force on the server the lane writes
    /// to, or refused as above). Otherwise nothing is promised, though some of its commands may
    /// have run (every one of them is harmless to run again): [`Sent::NotHere`], the caller
    /// runs the invalidation the usual way; [`Sent::TimedOut`], the server did not answer
    /// within the operation timeout, which the caller reports as it would its own (no second
    /// wait for a server that hangs).
    pub(super) async fn invalidate(
        &self,
        keys: (&str, &str),
        fresh: (u64, u64),
        message: (&str, &str),
        skip: bool,
    ) -> Sent {
        let pipe = key_pipeline(skip, keys, fresh, ("PUBLISH", message.0, message.1));
        let last = if skip { Last::Okay } else { Last::Plain };
        self.send(&pipe, last).await
    }

    /// Invalidates a scope (a tag, a cache, everything) on the lane, as a key
    /// ([`Lane::invalidate`]) with its token for the value and the ticket: `CLIENT REPLY
    /// SKIP`, `DEL s`, `PUBLISH`, `SET s <fresh> [PX]`, whose `OK` proves the writes ran on a
    /// master that took them; without `skip` the same three commands, all answered. The
    /// fresh token is a write even where the `DEL` found none, so every process that keeps
    /// the token is told (docs/PROTOCOL.md §7.6). Outcomes as [`Lane::invalidate`].
    pub(super) async fn invalidate_scope(
        &self,
        token_key: &str,
        fresh: (u64, Option<u64>),
        (channel, message): (&str, &str),
        skip: bool,
    ) -> Sent {
        let pipe = scope_pipeline(skip, &[token_key], fresh, ("PUBLISH", channel, message));
        let last = if skip { Last::Okay } else { Last::Plain };
        self.send(&pipe, last).await
    }

    /// Sends an invalidation's pipeline (`CLIENT REPLY SKIP` and three commands, two
    /// replies) if the lane is ready, and judges its replies.
    async fn send(&self, pipe: &redis::Pipeline, last: Last) -> Sent {
        let Some(mut conn) = self.take() else {
            return Sent::NotHere;
        };
        let replies = conn.send_packed_commands(pipe, 0, last.replies()).await;
        // The lane is `Busy` until this sets it again: no other request used the connection.
        let (next, sent) = match replies {
            Ok(replies) => match shape(&replies, last) {
                Replies::Done => (State::Ready(conn), Sent::Done),
                Replies::NotTaken => (State::Ready(conn), Sent::NotHere),
                Replies::Foreign => {
                    self.turned_off(&format!("{replies:?}"));
                    (State::Off, Sent::NotHere)
                }
            },
            // Timed out or dropped: late replies may still come on it, so it is not reused.
            Err(e) => {
                let next = self.failed();
                match e.is_timeout() {
                    true => (next, Sent::TimedOut(e)),
                    false => (next, Sent::NotHere),
                }
            }
        };
        if matches!(sent, Sent::Done) {
            self.failures.store(0, Ordering::Relaxed);
        }
        *self.state() = next;
        sent
    }
}

/// A key's invalidation: `DEL v t`, `<publish> <channel> <message>` (`PUBLISH`, or a
/// cluster's `SPUBLISH`), `SET t <new> PX <ms>`, under `CLIENT REPLY SKIP` when `skip`.
pub(super) fn key_pipeline(
    skip: bool,
    (value_key, ticket_key): (&str, &str),
    (new_ticket, ticket_px): (u64, u64),
    publish: (&str, &str, &str),
) -> redis::Pipeline {
    let t = ticket_key.as_bytes();
    invalidation_pipeline(
        skip,
        &[value_key.as_bytes(), t],
        &[t],
        (new_ticket, Some(ticket_px)),
        publish,
    )
}

/// A scope's invalidation: `DEL <tokens>`, `PUBLISH`, `SET <token> <fresh> [PX]` for each
/// token, under `CLIENT REPLY SKIP` when `skip`.
pub(super) fn scope_pipeline(
    skip: bool,
    token_keys: &[impl AsRef<[u8]>],
    fresh: (u64, Option<u64>),
    publish: (&str, &str, &str),
) -> redis::Pipeline {
    let keys: smallvec::SmallVec<[&[u8]; 2]> = token_keys.iter().map(AsRef::as_ref).collect();
    invalidation_pipeline(skip, &keys, &keys, fresh, publish)
}

/// `DEL <del…>`, `<publish> <channel> <message>`, then `SET <key> <fresh> [PX <ms>]` for each
/// of `fresh_keys`, under `CLIENT REPLY SKIP` when `skip`: a key's or a scope's invalidation.
fn invalidation_pipeline(
    skip: bool,
    del: &[&[u8]],
    fresh_keys: &[&[u8]],
    (fresh, px): (u64, Option<u64>),
    (publish, channel, message): (&str, &str, &str),
) -> redis::Pipeline {
    let fresh = super::ticket_text(fresh);
    let mut px_text = itoa::Buffer::new();
    let px = px.map(|px| px_text.format(px.max(1)).as_bytes());
    let mut pipe = redis::Pipeline::with_capacity(2 + usize::from(skip) + fresh_keys.len());
    if skip {
        pipe.add_command(sized(&[b"CLIENT", b"REPLY", b"SKIP"]));
    }
    let mut del_cmd = redis::Cmd::with_capacity(
        1 + del.len(),
        3 + del.iter().map(|k| k.len()).sum::<usize>(),
    );
    del_cmd.arg("DEL");
    for k in del {
        del_cmd.arg(*k);
    }
    pipe.add_command(del_cmd).add_command(sized(&[
        publish.as_bytes(),
        channel.as_bytes(),
        message.as_bytes(),
    ]));
    for k in fresh_keys {
        pipe.add_command(match px {
            Some(px) => sized(&[b"SET", k, &fresh.0, b"PX", px]),
            None => sized(&[b"SET", k, &fresh.0]),
        });
    }
    pipe
}

/// A command sized up front: no buffer grows while the pipeline is written.
fn sized(args: &[&[u8]]) -> redis::Cmd {
    let mut c = redis::Cmd::with_capacity(args.len(), args.iter().map(|a| a.len()).sum());
    for a in args {
        c.arg(*a);
    }
    c
}

/// What became of an invalidation sent to the lane.
pub(super) enum Sent {
    Done,
    /// Not sent, or not confirmed: the caller runs it the usual way.
    NotHere,
    /// No answer within the operation timeout.
    TimedOut(redis::RedisError),
}

/// What an invalidation's pipeline answers.
#[derive(Clone, Copy)]
enum Last {
    /// Under `CLIENT REPLY SKIP`: the `PUBLISH`'s count, the `SET`'s `OK`.
    Okay,
    /// No `CLIENT REPLY SKIP`: the `DEL`'s count, the `PUBLISH`'s, the `SET`'s answer.
    Plain,
}

impl Last {
    /// The replies the pipeline answers.
    fn replies(self) -> usize {
        match self {
            Last::Plain => 3,
            Last::Okay => 2,
        }
    }
}

/// What the lane's two replies say: the `PUBLISH`'s count, then the last write's answer
/// (exactly of its kind) or its error.
fn shape(replies: &[Value], last: Last) -> Replies {
    match (replies, last) {
        ([Value::Int(_), Value::Okay], Last::Okay) => Replies::Done,
        ([Value::Int(_), Value::Int(_), Value::Okay | Value::ServerError(_)], Last::Plain) => {
            Replies::Done
        }
        // In step, the last write refused (a replica; OOM for the `SET`), or without
        // `CLIENT REPLY SKIP` the `DEL` or the message refused (a replica; an ACL): the usual
        // way, which reports it.
        ([Value::Int(_), Value::ServerError(_)], Last::Okay)
        | ([Value::ServerError(_), _, _], Last::Plain)
        | ([Value::Int(_), Value::ServerError(_), _], Last::Plain) => Replies::NotTaken,
        _ => Replies::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_pipeline_is_done_with_the_dels_and_the_messages_counts() {
        let oom = redis::parse_redis_value(b"-OOM command not allowed\r\n").unwrap();
        let readonly = redis::parse_redis_value(b"-READONLY replica\r\n").unwrap();
        for done in [
            [Value::Int(1), Value::Int(0), Value::Okay],
            // The fresh ticket refused: the key has no ticket, as after the script's `pcall`.
            [Value::Int(0), Value::Int(2), oom.clone()],
        ] {
            assert!(matches!(shape(&done, Last::Plain), Replies::Done));
        }
        for usual in [
            [readonly.clone(), Value::Int(0), readonly.clone()],
            [Value::Int(1), readonly.clone(), Value::Okay],
        ] {
            assert!(matches!(shape(&usual, Last::Plain), Replies::NotTaken));
        }
        for foreign in [
            vec![Value::Int(1), Value::Int(0)],
            vec![Value::Okay, Value::Int(1), Value::Okay],
            vec![Value::Int(1), Value::Int(0), Value::Nil],
            vec![Value::Int(1), Value::Int(0), Value::Okay, Value::Okay],
        ] {
            assert!(
                matches!(shape(&foreign, Last::Plain), Replies::Foreign),
                "{foreign:?}"
            );
        }
    }

    #[test]
    fn a_scope_is_invalidated_as_a_key_with_its_token_for_value_and_ticket() {
        let commands = |pipe: &redis::Pipeline| -> Vec<String> {
            pipe.cmd_iter()
                .map(|c| {
                    c.args_iter()
                        .map(|a| match a {
                            redis::Arg::Simple(b) => String::from_utf8_lossy(b).into_owned(),
                            _ => "<cursor>".into(),
                        })
                        .collect::<Vec<_>>()
                        .join(" ")
                })
                .collect()
        };
        let token = super::super::ticket_text(7);
        let token = std::str::from_utf8(&token.0).unwrap();
        let publish = ("PUBLISH", "cr:bus:1", "T1...");
        // A tag's token: a fresh one with a lifetime; a clear's: without (as a read creates it).
        let tag = ["{cr:scopes}:t:team:7".to_string()];
        assert_eq!(
            commands(&scope_pipeline(false, &tag, (7, Some(60_000)), publish)),
            [
                "DEL {cr:scopes}:t:team:7".to_string(),
                "PUBLISH cr:bus:1 T1...".into(),
                format!("SET {{cr:scopes}}:t:team:7 {token} PX 60000"),
            ]
        );
        let clear = ["{cr:scopes}:a".to_string()];
        assert_eq!(
            commands(&scope_pipeline(true, &clear, (7, None), publish)),
            [
                "CLIENT REPLY SKIP".to_string(),
                "DEL {cr:scopes}:a".into(),
                "PUBLISH cr:bus:1 T1...".into(),
                format!("SET {{cr:scopes}}:a {token}"),
            ]
        );
        // A key's, for comparison: the same shape.
        assert_eq!(
            commands(&key_pipeline(false, ("v", "t"), (7, 5), publish)),
            [
                "DEL v t".to_string(),
                "PUBLISH cr:bus:1 T1...".into(),
                format!("SET t {token} PX 5"),
            ]
        );
    }

    #[test]
    fn only_the_publish_count_and_the_last_writes_answer_are_done() {
        use Last::Okay;
        assert!(matches!(
            shape(&[Value::Int(1), Value::Okay], Okay),
            Replies::Done
        ));
        assert!(matches!(
            shape(&[Value::Int(0), Value::Okay], Okay),
            Replies::Done
        ));
        // In step, the last write refused (a replica, OOM): the usual way.
        let oom = redis::parse_redis_value(b"-OOM command not allowed\r\n").unwrap();
        assert!(matches!(
            shape(&[Value::Int(1), oom.clone()], Okay),
            Replies::NotTaken
        ));
        // `CLIENT REPLY` refused: its error, then the `DEL`'s count; a proxy's own `+OK` for
        // it; the `DEL`'s and `PUBLISH`'s counts after a swallowed `CLIENT` (also caught by
        // the proof on open, where `PING 1` answers first): never in step.
        let refused = redis::parse_redis_value(b"-NOPERM no permissions\r\n").unwrap();
        assert!(matches!(refused, Value::ServerError(_)));
        for (foreign, last) in [
            (vec![refused.clone(), Value::Int(1)], Okay),
            (vec![Value::Okay, Value::Int(1)], Okay),
            (vec![Value::Int(2), Value::Int(1)], Okay),
            (vec![Value::Int(1), Value::Int(0)], Okay),
            (vec![Value::Int(2), Value::Nil], Okay),
            (vec![oom, Value::Okay], Okay),
            (vec![Value::Okay], Okay),
            (vec![Value::Int(1), Value::Okay, Value::Okay], Okay),
        ] {
            assert!(
                matches!(shape(&foreign, last), Replies::Foreign),
                "{foreign:?}"
            );
        }
    }
}

//! The invalidation lane: a connection of its own per set of connections on which a key's
//! invalidation is sent as plain commands, the ones before the bus message under
//! `CLIENT REPLY SKIP` (docs/PROTOCOL.md §7.4):
//!
//! ```text
//! CLIENT REPLY SKIP · DEL v t · CLIENT REPLY SKIP · SET t <new> PX <ms> · PUBLISH <bus> <msg> · GET t
//! ```
//!
//! Why: Redis writes the client that got its first reply of the event loop last first. Here
//! the caller's first reply (the `PUBLISH`'s) comes after the bus message's copy to this
//! process's own subscriber, so the caller is answered before the echo wakes the
//! subscriber's thread, as with the invalidate script, without the script's server time
//! (≈ 7 µs of Lua per call on Redis 7.0, measured: docs/BENCHMARKS.md). `GET t` answering
//! the new ticket proves the writes ran on a master that took them (a replica refuses them,
//! `noeviction` refuses the `SET`): only then is the invalidation done here.
//!
//! Why a connection of its own: a multiplexed connection matches replies to requests by
//! count. A server, proxy or ACL that refuses `CLIENT REPLY` answers every command, and on a
//! shared connection the extra replies would be handed to the requests behind (a read would
//! get another key's value). On the lane one request is in flight at a time, its replies must
//! have exactly the expected shape (an integer, then a bulk string or nil), and anything else
//! discards the connection, whose late replies then go nowhere, and turns the lane off. A new
//! lane proves `CLIENT REPLY SKIP` before its first use. An invalidation that finds the lane
//! off, busy (another invalidation of this runtime in flight), still opening, or not in sync
//! with the writes' outcome runs the invalidate script on the shared connection instead: the
//! lane only ever makes an invalidation faster, never different.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;
use redis::Value;

use crate::log_limit::LogLimiter;

/// The shape of the lane's replies.
enum Replies {
    /// `PUBLISH`'s count, then the new ticket: done.
    Done,
    /// In step, but the ticket is not the new one: the `SET` did not land (a replica, OOM).
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
        failures: u32,
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
                failures: 0,
            }),
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
            State::Closed { retry_at, failures } if *retry_at <= Instant::now() => {
                let failures = *failures;
                *state = State::Opening;
                handle.spawn(self.clone().open(failures));
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
    async fn open(self: Arc<Self>, failures: u32) {
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
            _ => Self::failed(failures),
        };
        *self.state() = next;
    }

    /// After a failure: closed for a while, or off after [`MAX_FAILURES`] in a row.
    fn failed(failures: u32) -> State {
        let failures = failures + 1;
        if failures >= MAX_FAILURES {
            return State::Off;
        }
        State::Closed {
            retry_at: Instant::now() + Duration::from_millis(100 << failures),
            failures,
        }
    }

    fn turned_off(&self, reply: &str) {
        self.log.warn_error(
            "redis",
            "`CLIENT REPLY SKIP` refused (grant +client|reply for faster invalidations): \
             invalidations use the invalidate script",
            &crate::config::redact(reply),
        );
    }

    /// Invalidates on the lane: `true` if done and confirmed (the new ticket is in force on
    /// the server the lane writes to, the message published); `false` if the caller must
    /// run the invalidation the usual way (nothing is promised by the lane then, though some
    /// of its commands may have run: every one of them is harmless to run again).
    pub(super) async fn invalidate(
        &self,
        value_key: &str,
        ticket_key: &str,
        (new_ticket, ticket_px): (u64, u64),
        channel: &str,
        message: &str,
    ) -> bool {
        let Some(mut conn) = self.take() else {
            return false;
        };
        let mut pipe = redis::pipe();
        pipe.cmd("CLIENT")
            .arg("REPLY")
            .arg("SKIP")
            .cmd("DEL")
            .arg(value_key)
            .arg(ticket_key)
            .cmd("CLIENT")
            .arg("REPLY")
            .arg("SKIP")
            .cmd("SET")
            .arg(ticket_key)
            .arg(super::ticket_text(new_ticket))
            .arg("PX")
            .arg(ticket_px.max(1))
            .cmd("PUBLISH")
            .arg(channel)
            .arg(message)
            .cmd("GET")
            .arg(ticket_key);
        let replies = conn.send_packed_commands(&pipe, 0, 2).await;
        // The lane is `Busy` until this sets it again: no other request used the connection.
        let (next, done) = match replies {
            Ok(replies) => match shape(&replies, new_ticket) {
                Replies::Done => (State::Ready(conn), true),
                Replies::NotTaken => (State::Ready(conn), false),
                Replies::Foreign => {
                    self.turned_off(&format!("{replies:?}"));
                    (State::Off, false)
                }
            },
            // Timed out or dropped: late replies may still come on it, so it is not reused.
            Err(_) => (Self::failed(0), false),
        };
        *self.state() = next;
        done
    }
}

/// What the lane's two replies say.
fn shape(replies: &[Value], new_ticket: u64) -> Replies {
    match replies {
        [Value::Int(_), Value::BulkString(t)] if super::parse_ticket(t) == Some(new_ticket) => {
            Replies::Done
        }
        [Value::Int(_), Value::BulkString(_) | Value::Nil] => Replies::NotTaken,
        _ => Replies::Foreign,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_publish_count_and_the_new_ticket_are_done() {
        let new = 0x0123_4567_89ab_cdef;
        let ticket = Value::BulkString(b"0123456789abcdef".to_vec());
        assert!(matches!(
            shape(&[Value::Int(1), ticket.clone()], new),
            Replies::Done
        ));
        // In step, the SET not taken (a replica, OOM): run the script.
        assert!(matches!(
            shape(&[Value::Int(1), Value::Nil], new),
            Replies::NotTaken
        ));
        assert!(matches!(
            shape(
                &[
                    Value::Int(0),
                    Value::BulkString(b"fedcba9876543210".to_vec())
                ],
                new
            ),
            Replies::NotTaken
        ));
        // `CLIENT REPLY` refused: its error, then the `DEL`'s count; or a proxy's `+OK` for
        // it; or the `SET`'s `+OK` after a swallowed `CLIENT`: never in step.
        let refused = redis::parse_redis_value(b"-NOPERM no permissions\r\n").unwrap();
        assert!(matches!(refused, Value::ServerError(_)));
        for foreign in [
            vec![refused.clone(), Value::Int(1)],
            vec![Value::Okay, Value::Int(1)],
            vec![Value::Int(2), Value::Okay],
            vec![ticket.clone()],
            vec![Value::Int(1), ticket.clone(), Value::Int(1)],
        ] {
            assert!(
                matches!(shape(&foreign, new), Replies::Foreign),
                "{foreign:?}"
            );
        }
    }
}

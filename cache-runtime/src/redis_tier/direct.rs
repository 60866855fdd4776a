//! One command sent without the boxed future of redis-rs's `ConnectionLike`.
//!
//! `Cmd::query_async` goes through `ConnectionLike::req_packed_command`, which boxes its
//! future: an allocation of 1.1–1.4 KB (past glibc's thread cache) and a copy of the future
//! into it, on every command. The hot commands and pipelines (a hit's `GET` or `MGET`, a miss's
//! claims and store, the scripts) await the connection's own future in place instead: the same
//! request, the same replies, the same errors.

use std::future::Future;

use redis::aio::MultiplexedConnection;
use redis::{FromRedisValue, RedisResult, Value};

use super::connection::Conn;

/// A connection whose request future can be awaited in place.
pub(super) trait Direct {
    /// Sends `cmd` and returns its raw reply (an error reply as `Value::ServerError`).
    fn send_one<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a;

    /// Sends every command of `p` and returns their raw replies, errors in place.
    fn send_all<'a>(
        &'a mut self,
        p: &'a redis::Pipeline,
    ) -> impl Future<Output = RedisResult<Vec<Value>>> + Send + 'a;
}

impl Direct for MultiplexedConnection {
    fn send_one<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a {
        self.send_packed_command(cmd)
    }

    fn send_all<'a>(
        &'a mut self,
        p: &'a redis::Pipeline,
    ) -> impl Future<Output = RedisResult<Vec<Value>>> + Send + 'a {
        self.send_packed_commands(p, 0, p.len())
    }
}

impl Direct for Conn {
    fn send_one<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> impl Future<Output = RedisResult<Value>> + Send + 'a {
        self.request(cmd)
    }

    fn send_all<'a>(
        &'a mut self,
        p: &'a redis::Pipeline,
    ) -> impl Future<Output = RedisResult<Vec<Value>>> + Send + 'a {
        self.request_all(p, 0, p.len())
    }
}

/// `cmd.query_async(c)`, without the box: an error reply is `Err`, the rest converted to `T`.
pub(super) async fn query<T: FromRedisValue>(
    c: &mut impl Direct,
    cmd: &redis::Cmd,
) -> RedisResult<T> {
    let reply = c.send_one(cmd).await?;
    Ok(T::from_redis_value(reply.extract_error()?)?)
}

/// What `p.ignore_errors().query_async::<Vec<Value>>(c)` answers, without the box: one reply
/// per command, an error reply in place (`Value::ServerError`), whether or not `p` was marked
/// `ignore_errors` (a flag only `query_async` reads). For pipelines that are not transactions
/// and ignore no command's reply (`Pipeline::ignore`), as every one of the hot paths.
pub(super) async fn query_all(c: &mut impl Direct, p: &redis::Pipeline) -> RedisResult<Vec<Value>> {
    debug_assert!(!p.is_transaction());
    c.send_all(p).await
}

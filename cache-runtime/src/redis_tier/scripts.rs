//! The Lua scripts: each keeps one operation to one round trip and makes it atomic.

use redis::{Cmd, ErrorKind, FromRedisValue, RedisResult, Script, ServerErrorKind, ToRedisArgs};

/// Scripts keep each operation to one round trip and make it atomic (docs/PROTOCOL.md §7).
pub(super) struct Scripts {
    pub(super) read: Script,
    pub(super) store: Script,
    pub(super) release: Script,
    pub(super) populate: Script,
    pub(super) invalidate: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            // The read with lock (§7.3). KEYS: value, ticket, lock, scope tokens...;
            // ARGV: new ticket, ticket px, lock token, lease ms. A key without a ticket gets
            // ours (only when there is no value: a value without a ticket is unusable and
            // the caller claims one). The lock is ours if it was free or already holds our
            // token (the script sent twice: `Conn` resends a request whose connection was
            // found closed). Returns {value or false, ticket or false, locked, tokens}.
            read: Script::new(
                r"
local stamps = {}
if #KEYS > 3 then stamps = redis.call('MGET', unpack(KEYS, 4)) end
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' then v = false end
local t = redis.call('GET', KEYS[2])
if v then return {v, t, 0, stamps} end
if not t then
  redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
  t = ARGV[1]
end
local locked = 0
local holder = redis.pcall('SET', KEYS[3], ARGV[3], 'NX', 'GET', 'PX', ARGV[4])
if holder == false or holder == ARGV[3] then locked = 1 end
return {false, t, locked, stamps}",
            ),
            // The store (§7.2). KEYS: value, ticket, lock, scope tokens...; ARGV: ticket,
            // bytes, value px, ticket px, token or '', seen scope tokens... A missing token
            // never equals a seen one (tokens are random, compared as text). The scope
            // tokens outlive every value stamped with them: one with less than a ticket's
            // lifetime left is extended to two. Only then: an extension is a write, which
            // pushes an invalidation to every connection tracking the token (tracking.rs),
            // so extending on every store would empty every process's token cache. (A user
            // the ACL refuses `PTTL` extends on every store, as before; it has no tracking
            // either: the health check names both.)
            store: Script::new(
                r"
local ok = redis.call('GET', KEYS[2]) == ARGV[1]
if ok and #KEYS > 3 then
  local cur = redis.call('MGET', unpack(KEYS, 4))
  for i = 1, #cur do
    if cur[i] ~= ARGV[i + 5] then ok = false break end
  end
end
if ok then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('PEXPIRE', KEYS[2], ARGV[4], 'GT')
  local keep = tonumber(ARGV[4])
  for i = 4, #KEYS do
    local left = redis.pcall('PTTL', KEYS[i])
    if type(left) ~= 'number' or left < keep then redis.call('PEXPIRE', KEYS[i], 2 * keep, 'GT') end
  end
end
if ARGV[5] ~= '' and redis.call('GET', KEYS[3]) == ARGV[5] then redis.call('DEL', KEYS[3]) end
return ok and 1 or 0",
            ),
            // KEYS: lock; ARGV: token.
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
            ),
            // Populate / refresh (§7.5), DEL first (allowed under OOM, and a script that
            // wrote first is not refused later). KEYS: value, ticket, scope tokens...; ARGV:
            // new ticket, ticket px, channel, message, PUBLISH or SPUBLISH (cluster: the
            // channel is in the keys' slot), how many scope tokens are clear tokens (first,
            // no TTL). A missing scope token gets the new ticket's value (any fresh random
            // number will do), a tag's with its PX. Returns the scope tokens, then how many
            // subscribers heard the message (in decimal).
            populate: Script::new(
                r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
local heard = redis.call(ARGV[5], ARGV[3], ARGV[4])
local clears = tonumber(ARGV[6])
local out = {}
for i = 3, #KEYS do
  local s = redis.call('GET', KEYS[i])
  if not s then
    if i - 2 <= clears then
      redis.call('SET', KEYS[i], ARGV[1])
    else
      redis.call('SET', KEYS[i], ARGV[1], 'PX', ARGV[2])
    end
    s = ARGV[1]
  end
  out[#out + 1] = s
end
out[#out + 1] = tostring(heard)
return out",
            ),
            // Invalidate (§7.4). KEYS: value, ticket; ARGV: new ticket, ticket px, channel,
            // message, PUBLISH or SPUBLISH (cluster: the channel is in the keys' slot). `DEL`
            // first (allowed under OOM); the fresh ticket only spares the next miss its claim,
            // so its refusal is ignored; the message's error fails the call. A script, not a
            // pipeline, for the order Redis writes the replies in: the caller's one reply is
            // added after the message was queued for the subscribers, so Redis writes it
            // first (it queues clients at the head of its pending list), and the process's
            // own echo no longer takes the idle CPU before the caller's reply (§5.2). Returns
            // how many subscribers heard the message.
            invalidate: Script::new(
                r"
redis.call('DEL', KEYS[1], KEYS[2])
redis.pcall('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
return redis.call(ARGV[5], ARGV[3], ARGV[4])",
            ),
        }
    }
}

/// One `EVALSHA` of a script, its keys and arguments written straight into one command sized
/// up front. (redis-rs's `ScriptInvocation` first copies each key and argument into a `Vec`
/// of its own, then all of them into the command: a miss's store paid 13 allocations and two
/// copies of the value for it.)
pub(super) struct ScriptCall<'s> {
    script: &'s Script,
    cmd: Cmd,
}

impl<'s> ScriptCall<'s> {
    /// `keys` and `args`: how many of each follow; `bytes`: their total length, about.
    pub(super) fn new(script: &'s Script, keys: usize, args: usize, bytes: usize) -> Self {
        let mut cmd = Cmd::with_capacity(3 + keys + args, 7 + 40 + 4 + bytes);
        cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
        Self { script, cmd }
    }

    /// Appends a key or an argument: all the keys first (as many as given to `new`).
    pub(super) fn arg<T: ToRedisArgs>(&mut self, arg: T) -> &mut Self {
        self.cmd.arg(arg);
        self
    }

    /// Runs it; a server that does not know the script (restarted, `SCRIPT FLUSH`) gets it
    /// loaded, then the same command again.
    pub(super) async fn invoke<T: FromRedisValue>(
        &self,
        con: &mut (impl redis::aio::ConnectionLike + super::direct::Direct),
    ) -> RedisResult<T> {
        // In place, not boxed (`direct`): the script is on every store under a claim and every
        // read of a `lock` cache; reloading it is rare.
        match super::direct::query(con, &self.cmd).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(con).await?;
                self.cmd.query_async(con).await
            }
            other => other,
        }
    }

    /// [`invoke`](Self::invoke) on a blocking caller's own connection (`blocking_conn.rs`).
    pub(super) fn invoke_blocking<T: FromRedisValue>(
        &self,
        con: &mut redis::Connection,
    ) -> RedisResult<T> {
        match self.cmd.query(con) {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load(con)?;
                self.cmd.query(con)
            }
            other => other,
        }
    }
}

/// Scope tokens as `MGET` returns them: a missing or foreign one reads as 0, which no
/// envelope carries (tokens are never 0).
pub(super) fn parse_stamps(raw: Vec<Option<Vec<u8>>>) -> crate::redis_request::Stamps {
    raw.into_iter()
        .map(|s| s.as_deref().and_then(super::parse_ticket).unwrap_or(0))
        .collect()
}

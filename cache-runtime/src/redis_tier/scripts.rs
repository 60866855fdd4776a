//! The Lua scripts: each keeps one operation to one round trip and makes it atomic.

use redis::Script;

/// Scripts keep each operation to one round trip and make it atomic.
pub(super) struct Scripts {
    pub(super) read: Script,
    pub(super) write_if: Script,
    pub(super) release: Script,
    pub(super) invalidate: Script,
    pub(super) bump_gen: Script,
    pub(super) bump_version: Script,
}

impl Scripts {
    pub(super) fn new() -> Self {
        Self {
            // KEYS: value, lock, stamps...; ARGV: try-lock flag, token, lease ms.
            read: Script::new(
                r"
local stamps = redis.call('MGET', unpack(KEYS, 3))
local v = redis.pcall('GET', KEYS[1])
if type(v) == 'table' and v.err then return {2, false, -2, stamps, 0} end
if v then return {1, v, redis.call('PTTL', KEYS[1]), stamps, 0} end
local locked = 0
if ARGV[1] == '1' and redis.call('SET', KEYS[2], ARGV[2], 'NX', 'PX', ARGV[3]) then
  locked = 1
end
return {0, false, -2, stamps, locked}",
            ),
            // KEYS: value, lock, stamps...; ARGV: bytes, px, token or '', seen stamps...
            write_if: Script::new(
                r"
local cur = redis.call('MGET', unpack(KEYS, 3))
local ok = 1
for i = 1, #cur do
  if (tonumber(cur[i]) or 0) ~= tonumber(ARGV[i + 3]) then ok = 0 break end
end
if ok == 1 then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
if ARGV[3] ~= '' and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) end
return ok",
            ),
            // KEYS: lock; ARGV: token.
            release: Script::new(
                r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0",
            ),
            // KEYS: value, generation; ARGV: retention ms, channel, message prefix.
            invalidate: Script::new(
                r"
local g = redis.call('INCR', KEYS[2])
redis.call('PEXPIRE', KEYS[2], ARGV[1])
redis.call('DEL', KEYS[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. g)
return g",
            ),
            // KEYS: generation, other stamps...; ARGV: retention ms, channel, message prefix.
            bump_gen: Script::new(
                r"
local g = redis.call('INCR', KEYS[1])
redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[2], ARGV[3] .. g)
local stamps = redis.call('MGET', unpack(KEYS))
stamps[1] = g
return stamps",
            ),
            // KEYS: version; ARGV: channel, message prefix.
            bump_version: Script::new(
                r"
local v = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', ARGV[1], ARGV[2] .. v)
return v",
            ),
        }
    }
}

/// Stamps as `MGET` returns them: a missing or unparsable counter reads as 0.
pub(super) fn parse_stamps(raw: Vec<Option<String>>) -> Vec<u64> {
    raw.into_iter()
        .map(|s| s.and_then(|s| s.parse().ok()).unwrap_or(0))
        .collect()
}

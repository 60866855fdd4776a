//! What the cache asks of the Redis tier and what it gets back: plain data, shared by the
//! real tier (`redis_tier/`) and its stand-in without the `redis` feature
//! (`redis_tier_off.rs`), so the two cannot drift apart.

use std::time::Duration;

/// What a read found, atomically: the value's bytes (`None`: missing, or a key of another
/// Redis type, which `MGET` answers as nil), the key's ticket, the scope counters (missing
/// ones read as 0) and whether the lock was taken.
pub(crate) struct Fetched {
    pub value: Option<Vec<u8>>,
    /// The ticket in force after the read: the one found, or ours if the read claimed it
    /// (the read script, or a speculative claim).
    pub ticket: Option<u64>,
    /// The read found no ticket (whether or not it then claimed one).
    pub ticketless: bool,
    pub stamps: Vec<u64>,
    pub locked: bool,
}

/// The Redis keys of one entry (docs/PROTOCOL.md §2): its value, ticket and lock (one hash
/// tag), and the scope counters it is stamped with (cache clear, global clear, tags), built
/// by the cache's key scheme.
pub(crate) struct EntryKeys {
    pub value: String,
    pub ticket: String,
    /// Empty for a read without a lock attempt.
    pub lock: String,
    pub stamps: Vec<std::sync::Arc<str>>,
}

/// One read; with `try_lock` (token, lease ms) it is the read script, which also sets
/// `new_ticket` (for `ticket_px` ms) if the key has none and tries the lock. Without it,
/// `claim` pipelines `SET ticket new_ticket NX GET PX ticket_px` after the `MGET` (a
/// speculative claim, for caches whose reads mostly find no ticket: the miss then needs no
/// round trip of its own before the body).
pub(crate) struct ReadRequest {
    pub keys: EntryKeys,
    pub try_lock: Option<(String, u64)>,
    pub claim: bool,
    pub new_ticket: u64,
    pub ticket_px: u64,
}

/// One conditional write: `bytes` for `ttl`, if the key's ticket is still `ticket` and the
/// scope counters still hold `seen`; releases the lock if `token` still owns it.
pub(crate) struct WriteRequest {
    pub keys: EntryKeys,
    pub bytes: Vec<u8>,
    pub ttl: Duration,
    pub ticket: u64,
    pub ticket_px: u64,
    pub seen: Vec<u64>,
    pub token: Option<String>,
}

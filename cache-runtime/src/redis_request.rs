//! What the cache asks of the Redis tier and what it gets back: plain data, shared by the
//! real tier (`redis_tier/`) and its stand-in without the `redis` feature
//! (`redis_tier_off.rs`), so the two cannot drift apart.

use std::time::Duration;

/// A random ticket (docs/PROTOCOL.md §4.1): never derived from a counter, never 0.
pub(crate) fn new_ticket() -> u64 {
    use std::hash::BuildHasher;
    thread_local! {
        static RNG: std::cell::Cell<u64> = std::cell::Cell::new(
            std::collections::hash_map::RandomState::new().hash_one(crate::bus::instance_id()) | 1,
        );
    }
    // xorshift64*, seeded per thread from the OS-seeded `RandomState`.
    RNG.with(|r| {
        let mut x = r.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d).max(1)
    })
}

/// How long the fresh token of a tag invalidation lives until a store extends it (each
/// store of a value stamped with it moves its expiry past the value's, docs/PROTOCOL.md §7.6):
/// as long as a body may run and still store. A clear's token has no expiry, as when a read
/// creates it.
pub(crate) const FRESH_TAG_TOKEN_PX: u64 = 60_000;

/// The fresh token a scope invalidation writes (docs/PROTOCOL.md §7.6), and its lifetime:
/// [`FRESH_TAG_TOKEN_PX`] for a tag's, none for a clear's.
pub(crate) fn fresh_token(tag: bool) -> (u64, Option<u64>) {
    (new_ticket(), tag.then_some(FRESH_TAG_TOKEN_PX))
}

/// Scope tokens read or stamped (cache clear, global clear, tags): inline up to two tags,
/// so a Redis hit allocates none.
pub(crate) type Stamps = smallvec::SmallVec<[u64; 4]>;

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
    pub stamps: Stamps,
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
    /// How many of `stamps` come first and have no TTL: the cache-clear and global-clear
    /// tokens (a handful per cache, never extended). The rest (tags) expire unless stores
    /// extend them.
    pub clears: usize,
}

impl EntryKeys {
    /// The keys' total length (to size a command up front).
    pub fn total_len(&self) -> usize {
        self.value.len()
            + self.ticket.len()
            + self.lock.len()
            + self.stamps.iter().map(|s| s.len()).sum::<usize>()
    }
}

/// A store without a script (`RedisTier::store_plain`): `bytes` for `ttl` under `ticket`,
/// with the scope tokens `seen` (as in [`WriteRequest`]), its commands built before it is
/// sent, so everything is borrowed.
pub(crate) struct PlainStore<'a> {
    pub keys: StoreKeys<'a>,
    pub bytes: &'a [u8],
    pub ttl: Duration,
    pub ticket: u64,
    pub ticket_px: u64,
    pub extend_ticket: bool,
    pub check_ticket: bool,
    pub seen: &'a [u64],
}

/// The keys a plain store writes to.
pub(crate) enum StoreKeys<'a> {
    /// Built up front (a caller that has them anyway, such as the health probe).
    Owned(&'a EntryKeys),
    /// The cache's key scheme, written straight into the commands: no key string is built.
    Scheme(ReadKeys<'a>),
}

/// A read with a lock attempt: the read script, which also sets `new_ticket` (for
/// `ticket_px` ms) if the key has none and tries the lock (`try_lock`: token, lease ms).
pub(crate) struct ReadRequest {
    pub keys: EntryKeys,
    pub try_lock: (String, u64),
    pub new_ticket: u64,
    pub ticket_px: u64,
}

/// The keys of a plain read (docs/PROTOCOL.md §2), borrowed from the cache's key scheme:
/// the tier writes them straight into its `MGET`, so a hit builds no key string.
pub(crate) struct ReadKeys<'a> {
    pub prefix: &'a str,
    pub bucket: u32,
    /// The cluster slot of the bucket's hash tag (0 off a cluster).
    pub slot: u16,
    pub value_middle: &'a str,
    pub logical: &'a str,
    /// The cache-clear and global-clear token keys (built once per cache).
    pub clears: &'a [std::sync::Arc<str>; crate::key::CLEAR_TOKENS],
    pub tags: &'a [String],
    /// Tag token keys striped per bucket (cluster) or under `{prefix:scopes}`.
    pub striped: bool,
}

/// [`ReadKeys`] owned, for a read that runs on the runtime's Redis thread (a blocking
/// caller's): the same keys, copied once.
pub(crate) struct OwnedReadKeys {
    prefix: String,
    bucket: u32,
    slot: u16,
    value_middle: String,
    logical: String,
    clears: [std::sync::Arc<str>; crate::key::CLEAR_TOKENS],
    tags: Vec<String>,
    striped: bool,
}

impl OwnedReadKeys {
    pub fn of(k: &ReadKeys<'_>) -> Self {
        Self {
            prefix: k.prefix.to_owned(),
            bucket: k.bucket,
            slot: k.slot,
            value_middle: k.value_middle.to_owned(),
            logical: k.logical.to_owned(),
            clears: k.clears.clone(),
            tags: k.tags.to_vec(),
            striped: k.striped,
        }
    }

    pub fn keys(&self) -> ReadKeys<'_> {
        ReadKeys {
            prefix: &self.prefix,
            bucket: self.bucket,
            slot: self.slot,
            value_middle: &self.value_middle,
            logical: &self.logical,
            clears: &self.clears,
            tags: &self.tags,
            striped: self.striped,
        }
    }
}

/// A plain read: `MGET value ticket tokens…`; with `claim` (new ticket, px), followed in
/// the same pipeline by `SET ticket new NX GET PX px` and the same for each tag's token (a
/// speculative claim, for caches whose reads mostly find no ticket: the miss then needs no
/// round trip of its own before the body).
pub(crate) struct PlainRead<'a> {
    pub keys: ReadKeys<'a>,
    pub claim: Option<(u64, u64)>,
    /// The claims may go first, without the value's read: for a cache none of whose last
    /// eight reads found a ticket (docs/PROTOCOL.md §7.2). A claim that creates the ticket
    /// proves no value in Redis can be current; one that finds a ticket costs a second read.
    pub claim_alone: bool,
}

/// One write of `bytes` for `ttl` under the key's ticket `ticket` and the scope tokens
/// `seen`: conditional on them when `conditional` (the store script, which also releases
/// the lock if `token` still owns it; a lock holder's write is always conditional), else
/// plain (`RedisTier::write_if`).
pub(crate) struct WriteRequest {
    pub keys: EntryKeys,
    pub bytes: Vec<u8>,
    pub ttl: Duration,
    pub ticket: u64,
    pub ticket_px: u64,
    /// Whether a plain store extends the ticket (not when this call just created it with
    /// a lifetime that outlasts the value).
    pub extend_ticket: bool,
    /// Whether a plain store reads the ticket back (`GET t`) to answer whether it still
    /// held. Only a cache with a local tier needs the answer (it keeps no copy of a value
    /// whose ticket vanished behind its back); without one a plain store answers `true`
    /// (readers refuse such a value all the same).
    pub check_ticket: bool,
    pub seen: Stamps,
    pub token: Option<String>,
    pub conditional: bool,
}

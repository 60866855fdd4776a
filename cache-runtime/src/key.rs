//! Cache keys: injective encoding of arguments into a readable Redis key.
//!
//! A key is `{prefix}:w{WIRE}:v{schema}:{template}`, where each `<placeholder>` of the template
//! is replaced by the [`KeyPart`] encoding of the argument. Encodings are *injective* and
//! never contain a [separator](SEPARATORS) (those characters, `%` and a few more are
//! percent-escaped), and the macro requires every placeholder to be followed by a separator or
//! the end of the template. Together this guarantees that distinct argument tuples can never
//! produce the same key (`"1:2"` and `(1, 2)` differ), whatever the strings contain.

use std::fmt::{self, Write};

/// Buckets of the Redis key layout (docs/PROTOCOL.md §2): a key's bucket is its hash tag.
pub const REDIS_BUCKETS: u32 = 1024;

/// The bucket of a logical key: `fnv1a(logical) mod 1024`, stable across builds and hosts.
///
/// ```
/// let b = cache_runtime::key::redis_bucket("user:42");
/// assert!(b < cache_runtime::key::REDIS_BUCKETS);
/// assert_eq!(b, cache_runtime::key::redis_bucket("user:42"));
/// ```
pub fn redis_bucket(logical: &str) -> u32 {
    (crate::codec::fnv1a(logical.bytes()) % u64::from(REDIS_BUCKETS)) as u32
}

/// The Redis Cluster slot of a Redis key, as `CLUSTER KEYSLOT` computes it: CRC16/XMODEM
/// of its hash tag (the text between the first `{` and the next `}`, if not empty) or of the
/// whole key, mod 16384. Every key of one cache entry has the same slot.
///
/// ```
/// use cache_runtime::key::{cluster_slot, redis_keys};
/// assert_eq!(cluster_slot("foo"), 12182); // CLUSTER KEYSLOT foo
/// assert_eq!(cluster_slot("{user1000}.following"), cluster_slot("{user1000}.followers"));
/// let (value, ticket, lock) = redis_keys("cr", cache_runtime::key::KeySchema::of::<u64>(1), "user:42");
/// assert_eq!(cluster_slot(&value), cluster_slot(&ticket));
/// assert_eq!(cluster_slot(&value), cluster_slot(&lock));
/// ```
pub fn cluster_slot(key: &str) -> u16 {
    slot_of_bytes(key.as_bytes())
}

pub(crate) fn slot_of_bytes(key: &[u8]) -> u16 {
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter()
                .position(|&b| b == b'}')
                .filter(|&close| close > 0)
                .map(|close| &rest[..close])
        })
        .unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in tag {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// What a cache's value and lock keys say of its value type: the `version` it was declared
/// with and a digest of the fingerprint its envelopes carry (the type's name, `version` and
/// shape, [`codec::type_fingerprint`](crate::codec::type_fingerprint)). Written
/// `<version>.<digest>` (`1.3fa9c1`), in the keys as `v2:1.3fa9c1:` and `l:1.3fa9c1:`.
///
/// Why the digest: two builds of one cache whose value types differ (a field added without
/// a `version` bump, during a rolling deploy) refuse each other's envelopes. Sharing one key
/// they would overwrite each other's entries until the deploy ends, each read by the other
/// build a miss; with the digest each build keeps entries of its own, and both still share
/// the key's ticket, so one invalidation covers both (docs/PROTOCOL.md §2).
///
/// ```
/// use cache_runtime::key::KeySchema;
/// let schema = KeySchema::of::<Vec<u32>>(1);
/// assert_eq!(schema.version(), 1);
/// assert_eq!(schema, KeySchema::of::<Vec<u32>>(1), "stable for one type");
/// assert_ne!(schema, KeySchema::of::<Vec<u64>>(1), "another shape");
/// assert_ne!(schema, KeySchema::of::<Vec<u32>>(2), "another version");
/// assert!(schema.to_string().starts_with("1."));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeySchema {
    version: u32,
    digest: u32,
}

impl KeySchema {
    /// Six hex digits: two builds whose digests collide (one pair in 16 million) share a key
    /// as before the digest, and still refuse each other's envelopes.
    const DIGEST_MASK: u64 = 0xff_ffff;

    /// The schema of a cache of `V` declared with `version`, as the cache computes it.
    pub fn of<V: serde::de::DeserializeOwned + 'static>(version: u32) -> Self {
        Self::from_fingerprint(version, crate::codec::type_fingerprint::<V>(version))
    }

    /// The schema of a cache declared with `version` whose envelopes carry `fingerprint`.
    ///
    /// ```
    /// use cache_runtime::{codec, key::KeySchema};
    /// let fp = codec::type_fingerprint::<String>(3);
    /// assert_eq!(KeySchema::from_fingerprint(3, fp), KeySchema::of::<String>(3));
    /// ```
    pub fn from_fingerprint(version: u32, fingerprint: u64) -> Self {
        let folded = fingerprint ^ (fingerprint >> 32);
        Self {
            version,
            digest: (folded & Self::DIGEST_MASK) as u32,
        }
    }

    /// The `version` the cache was declared with.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Display for KeySchema {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:06x}", self.version, self.digest)
    }
}

/// The Redis keys of one logical key (value, ticket, lock) for a key prefix and a cache's
/// [`KeySchema`], as the runtime writes them: for operators and tests (docs/PROTOCOL.md §2).
/// A cache gives its own with [`Cache::redis_key`](crate::Cache::redis_key) and
/// [`Cache::key_schema`](crate::Cache::key_schema).
///
/// ```
/// use cache_runtime::key::{redis_bucket, redis_keys, KeySchema};
/// let schema = KeySchema::of::<String>(1);
/// let (value, ticket, lock) = redis_keys("cr", schema, "user:42");
/// let b = redis_bucket("user:42");
/// assert_eq!(value, format!("{{cr:{b}}}:v2:{schema}:user:42"));
/// assert_eq!(ticket, format!("{{cr:{b}}}:t:user:42"));
/// assert_eq!(lock, format!("{{cr:{b}}}:l:{schema}:user:42"));
/// ```
pub fn redis_keys(prefix: &str, schema: KeySchema, logical: &str) -> (String, String, String) {
    let (value, lock) = key_middles(schema);
    let b = redis_bucket(logical);
    (
        bucket_key_at(prefix, b, &value, logical),
        bucket_key_at(prefix, b, TICKET_MIDDLE, logical),
        bucket_key_at(prefix, b, &lock, logical),
    )
}

/// What goes between a key's hash tag and its logical key: the value's (`v<wire>:<schema>:`)
/// and the lock's (`l:<schema>:`); the ticket's is [`TICKET_MIDDLE`].
pub(crate) fn key_middles(schema: KeySchema) -> (String, String) {
    (
        format!("v{}:{schema}:", crate::codec::WIRE_VERSION),
        format!("l:{schema}:"),
    )
}

/// The ticket's middle part (every schema version shares the ticket).
pub(crate) const TICKET_MIDDLE: &str = "t:";

/// How many of an entry's scope tokens are clear tokens (its cache's, then the global one):
/// they come first among its stamps, before one per tag, and have no TTL
/// (docs/PROTOCOL.md §4.3).
pub(crate) const CLEAR_TOKENS: usize = 2;

/// `{prefix:bucket}:<middle><tail>` as its parts, in order: the one layout of a bucket key,
/// for every writer (a `String` here, a command's buffer in the Redis tier).
pub(crate) fn bucket_key_parts<'a>(
    prefix: &'a str,
    bucket: &'a str,
    middle: &'a str,
    tail: &'a str,
) -> [&'a str; 7] {
    ["{", prefix, ":", bucket, "}:", middle, tail]
}

/// `{prefix:bucket}:<middle><logical>` in one allocation, without the formatting machinery.
pub(crate) fn bucket_key(prefix: &str, middle: &str, logical: &str) -> String {
    bucket_key_at(prefix, redis_bucket(logical), middle, logical)
}

/// [`bucket_key`] with the bucket of `logical` already computed (the keys of one entry
/// share it).
pub(crate) fn bucket_key_at(prefix: &str, bucket: u32, middle: &str, logical: &str) -> String {
    let mut digits = itoa::Buffer::new();
    let parts = bucket_key_parts(prefix, digits.format(bucket), middle, logical);
    let mut out = String::with_capacity(parts.iter().map(|p| p.len()).sum());
    for p in parts {
        out.push_str(p);
    }
    out
}

/// What a tag invalidation or a clear invalidates: a **scope** (docs/PROTOCOL.md §4.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every cache (`clear_all`).
    All,
    /// One cache, by name (`clear`).
    Cache(&'a str),
    /// Every entry carrying a tag (`invalidate_tag`).
    Tag(&'a str),
}

/// The Redis key of a scope's random token on a single node or Sentinel (docs/PROTOCOL.md
/// §4.3). Every value carries the tokens of its scopes; a tag invalidation or a clear
/// deletes the scope's token, so every value stamped with it is refused everywhere, and the
/// next token is a new random number. On a cluster the token is striped per bucket instead:
/// see [`scope_token_key`].
///
/// ```
/// use cache_runtime::key::{scope_key, Scope};
/// assert_eq!(scope_key("cr", Scope::All), "{cr:scopes}:a");
/// assert_eq!(scope_key("cr", Scope::Cache("app::user")), "{cr:scopes}:c:app::user");
/// assert_eq!(scope_key("cr", Scope::Tag("team:7")), "{cr:scopes}:t:team:7");
/// ```
pub fn scope_key(prefix: &str, scope: Scope<'_>) -> String {
    match scope {
        Scope::All => format!("{{{prefix}:scopes}}:a"),
        Scope::Cache(name) => format!("{{{prefix}:scopes}}:c:{name}"),
        Scope::Tag(tag) => tag_token_key_parts(prefix, tag).concat(),
    }
}

/// A tag's token key on a single node, `{prefix:scopes}:t:<tag>`, as its parts: the one
/// layout for every writer (a `String` in [`scope_key`], a command's buffer and the kept
/// tokens' lookup key in the Redis tier).
pub(crate) fn tag_token_key_parts<'a>(prefix: &'a str, tag: &'a str) -> [&'a str; 4] {
    ["{", prefix, ":scopes}:t:", tag]
}

/// Scope names longer than this are hashed in striped token keys (a tag invalidation deletes
/// one key per bucket: 1 024 copies of the name).
pub(crate) const STRIPED_NAME_MAX: usize = 64;

/// The Redis key of a scope's random token **in one bucket**, on Redis Cluster
/// (docs/PROTOCOL.md §4.3, stage 3). Tokens are striped: every bucket has its own token for
/// each scope it holds entries of, in the bucket's slot, so a hit reads value, ticket and
/// tokens with one single-slot `MGET` and no node is a hot spot; a tag invalidation or a
/// clear deletes the scope's token in every bucket. A scope part (`t:<tag>`, `c:<cache>`)
/// longer than 64 bytes is replaced by `#` and its 128-bit xxh3 in hex.
///
/// ```
/// use cache_runtime::key::{scope_token_key, Scope};
/// assert_eq!(scope_token_key("cr", 7, Scope::All), "{cr:7}:s:a");
/// assert_eq!(scope_token_key("cr", 7, Scope::Cache("app::user")), "{cr:7}:s:c:app::user");
/// assert_eq!(scope_token_key("cr", 1023, Scope::Tag("team:7")), "{cr:1023}:s:t:team:7");
/// assert!(scope_token_key("cr", 1, Scope::Tag(&"x".repeat(100))).starts_with("{cr:1}:s:#"));
/// ```
pub fn scope_token_key(prefix: &str, bucket: u32, scope: Scope<'_>) -> String {
    let single = scope_key(prefix, scope);
    striped_key(
        prefix,
        bucket,
        scope_suffix(prefix, &single).unwrap_or(&single),
    )
}

/// The part of a single-node scope key after `{prefix:scopes}:`.
fn scope_suffix<'a>(prefix: &str, single: &'a str) -> Option<&'a str> {
    single
        .strip_prefix('{')?
        .strip_prefix(prefix)?
        .strip_prefix(":scopes}:")
}

fn striped_key(prefix: &str, bucket: u32, suffix: &str) -> String {
    if suffix.len() > STRIPED_NAME_MAX {
        let h = xxhash_rust::xxh3::xxh3_128(suffix.as_bytes());
        format!("{{{prefix}:{bucket}}}:s:#{h:032x}")
    } else {
        format!("{{{prefix}:{bucket}}}:s:{suffix}")
    }
}

/// Every bucket's token key (cluster layout) of the scope whose single-node key is
/// `single` ([`scope_key`]), in bucket order.
///
/// ```
/// use cache_runtime::key::{scope_key, scope_token_keys, Scope, REDIS_BUCKETS};
/// let keys = scope_token_keys("cr", &scope_key("cr", Scope::Tag("t")));
/// assert_eq!(keys.len(), REDIS_BUCKETS as usize);
/// assert_eq!(keys[5], "{cr:5}:s:t:t");
/// ```
pub fn scope_token_keys(prefix: &str, single: &str) -> Vec<String> {
    let suffix = scope_suffix(prefix, single).unwrap_or(single);
    (0..REDIS_BUCKETS)
        .map(|b| striped_key(prefix, b, suffix))
        .collect()
}

/// Characters that may follow a placeholder in a key template. Interpolated values never
/// contain them unescaped, so they delimit values unambiguously.
///
/// Defined once, in the macro crate, which checks key templates against the same list.
pub const SEPARATORS: &[char] = cache_macros::__key_separators!();

/// Builds one key. Created by the cache (which writes the prefix) and fed by generated code.
///
/// The key is written on the stack while it fits (the first [`KeyWriter::INLINE`] bytes), so a
/// call that hits the local tier allocates nothing for its key; only a miss, which stores
/// the key, turns it into a `String` ([`IntoKey::into_key`]).
///
/// ```
/// use cache_runtime::key::{KeyPart, KeyWriter};
/// let mut w = KeyWriter::with_head("app:w1:v1:");
/// w.literal("user:");
/// "a:b c".write_key(&mut w);
/// assert_eq!(w.as_str(), "app:w1:v1:user:a%3Ab%20c");
/// assert_eq!(w.finish(), "app:w1:v1:user:a%3Ab%20c");
/// ```
#[derive(Debug, Clone)]
pub struct KeyWriter {
    buf: KeyBuf,
}

/// A key's text: inline up to [`KeyWriter::INLINE`] bytes, then on the heap.
#[derive(Debug, Clone)]
enum KeyBuf {
    Inline(arrayvec::ArrayString<{ KeyWriter::INLINE }>),
    Heap(String),
}

impl KeyBuf {
    #[inline]
    fn push_str(&mut self, s: &str) {
        match self {
            KeyBuf::Inline(a) => {
                if a.try_push_str(s).is_err() {
                    self.spill(s);
                }
            }
            KeyBuf::Heap(h) => h.push_str(s),
        }
    }

    /// The inline text and `s`, moved to the heap (the key outgrew the stack buffer).
    #[cold]
    #[inline(never)]
    fn spill(&mut self, s: &str) {
        let old = self.as_str();
        let mut heap = String::with_capacity((old.len() + s.len()) * 2);
        heap.push_str(old);
        heap.push_str(s);
        *self = KeyBuf::Heap(heap);
    }

    #[inline]
    fn as_str(&self) -> &str {
        match self {
            KeyBuf::Inline(a) => a,
            KeyBuf::Heap(h) => h,
        }
    }

    /// Inserts `s` at byte `at` (a char boundary).
    fn insert_str(&mut self, at: usize, s: &str) {
        let tail = match self {
            KeyBuf::Heap(h) => return h.insert_str(at, s),
            KeyBuf::Inline(a) => {
                let tail = arrayvec::ArrayString::<{ KeyWriter::INLINE }>::from(&a[at..])
                    .expect("a part of the buffer fits in it");
                a.truncate(at);
                tail
            }
        };
        self.push_str(s);
        self.push_str(&tail);
    }
}

impl Write for KeyBuf {
    #[inline]
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push_str(s);
        Ok(())
    }
}

/// [`KeyWriter::str`] as a formatter's sink: `Display` output escaped as it is written.
struct Escaping<'a>(&'a mut KeyWriter);

impl Write for Escaping<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.str(s);
        Ok(())
    }
}

impl KeyWriter {
    /// How many bytes of a key are written on the stack before it moves to the heap.
    pub const INLINE: usize = 96;

    /// Starts a key with an already formatted head (prefix and versions).
    #[inline]
    pub fn with_head(head: &str) -> Self {
        let mut buf = KeyBuf::Inline(arrayvec::ArrayString::new());
        if !head.is_empty() {
            buf.push_str(head);
        }
        Self { buf }
    }

    /// Appends template text verbatim. Only for the template's literal parts.
    #[inline]
    pub fn literal(&mut self, text: &str) {
        self.buf.push_str(text);
    }

    /// Appends a string value, escaped.
    #[inline]
    pub fn str(&mut self, s: &str) {
        // Fast path: plain ASCII needs no escaping and is copied at once.
        if s.bytes().all(|b| b < 128 && !ASCII_ESCAPE[b as usize]) {
            self.buf.push_str(s);
            return;
        }
        for c in s.chars() {
            if needs_escape(c) {
                let mut bytes = [0u8; 4];
                for b in c.encode_utf8(&mut bytes).bytes() {
                    self.buf.push_str(percent_encoding::percent_encode_byte(b));
                }
            } else {
                self.buf.push_str(c.encode_utf8(&mut [0u8; 4]));
            }
        }
    }

    /// Appends the `Display` form of a value, escaped. The way to implement [`KeyPart`] for
    /// an identifier type whose `Display` output is unique per value.
    pub fn display(&mut self, value: &dyn fmt::Display) {
        // Escaped piece by piece as it is formatted: no temporary string.
        let _ = write!(Escaping(self), "{value}");
    }

    /// Appends text that is known to need no escaping (digits, `-`, `true`).
    fn token(&mut self, args: fmt::Arguments<'_>) {
        let _ = self.buf.write_fmt(args);
    }

    #[inline]
    fn raw(&mut self, s: &str) {
        self.buf.push_str(s);
    }

    /// The key written so far.
    #[inline]
    pub fn as_str(&self) -> &str {
        self.buf.as_str()
    }

    /// The finished key.
    #[inline]
    pub fn finish(self) -> String {
        match self.buf {
            KeyBuf::Inline(a) => a.as_str().to_owned(),
            KeyBuf::Heap(h) => h,
        }
    }
}

/// What a cache call takes as its key: a [`Key`](crate::Key) or anything that converts into
/// one (`String`, `&str`), or a [`KeyWriter`] as generated code passes it. The call reads
/// the local tier with [`logical`](IntoKey::logical) and builds the owned [`Key`](crate::Key)
/// only past a local hit, so a hit allocates nothing for its key.
///
/// ```
/// use cache_runtime::key::{IntoKey, KeyWriter};
/// let mut w = KeyWriter::with_head("");
/// w.literal("user:42");
/// assert_eq!(w.logical(), "user:42");
/// assert_eq!(w.into_key().as_str(), "user:42");
/// assert_eq!("user:42".into_key().as_str(), "user:42");
/// ```
pub trait IntoKey {
    /// The logical key (what the local tier is keyed by).
    fn logical(&self) -> &str;
    /// The owned key, tags included.
    fn into_key(self) -> crate::Key;
    /// The tags alone, as an entry carries them (what an `_entry` call's local hit needs):
    /// an untagged key's allocate nothing.
    fn into_tags(self) -> std::sync::Arc<[String]>
    where
        Self: Sized,
    {
        shared_tags(self.into_key().tags)
    }
    /// Whether the key surely has no tags (`false`: it may have some), so that a call may
    /// read [`logical`](IntoKey::logical) alone and never build the owned key.
    #[doc(hidden)]
    fn surely_untagged(&self) -> bool {
        false
    }
}

/// `tags` as an entry carries them; none shares one empty list per thread instead of
/// allocating (and keeps its count off other threads' cache lines).
pub(crate) fn shared_tags(tags: Vec<String>) -> std::sync::Arc<[String]> {
    thread_local! {
        static NONE: std::sync::Arc<[String]> = std::sync::Arc::from(Vec::new());
    }
    if tags.is_empty() {
        NONE.with(std::sync::Arc::clone)
    } else {
        tags.into()
    }
}

impl<T: Into<crate::Key> + AsRef<str>> IntoKey for T {
    #[inline]
    fn logical(&self) -> &str {
        self.as_ref()
    }
    #[inline]
    fn into_key(self) -> crate::Key {
        self.into()
    }
}

/// A key with its tags, each still on the stack: what generated code passes for a
/// `tags = [...]` cache, so that a local hit allocates nothing for the key or its tags.
///
/// ```
/// use cache_runtime::key::{IntoKey, KeyWriter, TaggedKey};
/// let writer = |s: &str| {
///     let mut w = KeyWriter::with_head("");
///     w.literal(s);
///     w
/// };
/// let k = TaggedKey::new(writer("user:42"), [writer("tenant:7")]);
/// assert_eq!(k.logical(), "user:42");
/// let key = k.into_key();
/// assert_eq!(key.tags(), ["tenant:7".to_string()]);
/// ```
#[derive(Debug, Clone)]
pub struct TaggedKey<const N: usize> {
    key: KeyWriter,
    tags: [KeyWriter; N],
}

impl<const N: usize> TaggedKey<N> {
    /// The key and its tags, as written.
    #[inline]
    pub fn new(key: KeyWriter, tags: [KeyWriter; N]) -> Self {
        Self { key, tags }
    }
}

impl<const N: usize> IntoKey for TaggedKey<N> {
    #[inline]
    fn logical(&self) -> &str {
        self.key.as_str()
    }
    fn into_key(self) -> crate::Key {
        crate::Key::new(self.key.finish()).with_tags(self.tags.map(KeyWriter::finish).into())
    }
    fn into_tags(self) -> std::sync::Arc<[String]> {
        shared_tags(self.tags.map(KeyWriter::finish).into())
    }
}

impl IntoKey for KeyWriter {
    #[inline]
    fn logical(&self) -> &str {
        self.as_str()
    }
    #[inline]
    fn into_key(self) -> crate::Key {
        crate::Key::new(self.finish())
    }
    #[inline]
    fn into_tags(self) -> std::sync::Arc<[String]> {
        shared_tags(Vec::new())
    }
    #[inline]
    fn surely_untagged(&self) -> bool {
        true
    }
}

/// `needs_escape` for every ASCII byte, computed at compile time.
const ASCII_ESCAPE: [bool; 128] = {
    let mut t = [false; 128];
    let mut i = 0;
    while i < 128 {
        let c = i as u8 as char;
        let mut sep = false;
        let mut j = 0;
        while j < SEPARATORS.len() {
            if SEPARATORS[j] == c {
                sep = true;
            }
            j += 1;
        }
        t[i] =
            sep || matches!(
                c,
                '%' | '[' | ']' | '+' | '*' | '\\' | '<' | '>' | '"' | '\'' | '{' | '}' | '^' | '$'
            ) || c.is_ascii_whitespace()
                || c.is_ascii_control();
        i += 1;
    }
    t
};

/// ASCII by the table; beyond ASCII, only whitespace and control characters (other
/// characters stay readable: `é` is `é`).
fn needs_escape(c: char) -> bool {
    match u8::try_from(c) {
        Ok(b) if b < 128 => ASCII_ESCAPE[b as usize],
        _ => c.is_whitespace() || c.is_control(),
    }
}

/// A value that can be interpolated into a cache key.
///
/// Implemented for integers (and their `NonZero` forms), `bool`, `char`, strings, `Option`,
/// slices, `Vec`, `VecDeque`, `BTreeSet`, `BTreeMap`, `HashSet`, `HashMap`, tuples (up to 6), `()`, smart pointers
/// and `Cow`, floats, `Duration`, paths and OS strings, IP and socket addresses, and with the
/// `uuid` / `chrono` features `uuid::Uuid` and chrono's dates and times. `HashSet` and
/// `HashMap` are written in the order of their items' encodings (their own order differs
/// between processes), so equal collections give one key.
/// Derive it for your own key types (`#[derive(KeyPart)]`, see [the derive](macro@KeyPart)), or
/// implement it; the encoding must be injective (distinct values,
/// distinct output) and must escape separators, which [`KeyWriter::str`] and
/// [`KeyWriter::display`] do for you:
///
/// ```
/// use cache_runtime::key::{KeyPart, KeyWriter};
///
/// struct UserId(u64);
/// impl KeyPart for UserId {
///     fn write_key(&self, w: &mut KeyWriter) {
///         w.display(&self.0);
///     }
/// }
///
/// let mut w = KeyWriter::with_head("");
/// UserId(7).write_key(&mut w);
/// assert_eq!(w.finish(), "7");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used in a cache key",
    label = "this value is interpolated into the cache key",
    note = "add `#[derive(cache_runtime::key::KeyPart)]` to `{Self}` or implement the trait (for \
            a type of another crate, on a newtype around it), use a field with \
            `<param.field>`, or list the parameter in `skip(...)`"
)]
pub trait KeyPart {
    /// Appends this value's encoding.
    fn write_key(&self, w: &mut KeyWriter);
}

/// `#[derive(KeyPart)]` for structs and enums: every field with its own `KeyPart`
/// (`{name=value,..}`, `[a+b]`, a newtype as its field, an enum variant's name first);
/// `#[key(skip)]` leaves a field out. See [the derive's docs](macro@KeyPart).
///
/// ```
/// use cache_runtime::key::{KeyPart, KeyWriter};
///
/// #[derive(KeyPart)]
/// struct Page { tenant: u32, n: u32 }
///
/// let mut w = KeyWriter::with_head("");
/// Page { tenant: 4, n: 2 }.write_key(&mut w);
/// assert_eq!(w.finish(), "{tenant=4,n=2}");
/// ```
pub use cache_macros::KeyPart;

macro_rules! int_key_part {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            #[inline]
            fn write_key(&self, w: &mut KeyWriter) {
                // The same digits as `Display`, without the formatting machinery (on every
                // call of a cache keyed by a number).
                w.raw(itoa::Buffer::new().format(*self));
            }
        }
    )*};
}
int_key_part!(u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize);

impl KeyPart for bool {
    fn write_key(&self, w: &mut KeyWriter) {
        w.raw(if *self { "true" } else { "false" });
    }
}

macro_rules! nonzero_key_part {
    ($($t:ty),*) => {$(
        impl KeyPart for $t {
            fn write_key(&self, w: &mut KeyWriter) {
                w.token(format_args!("{self}"));
            }
        }
    )*};
}
nonzero_key_part!(
    std::num::NonZeroU8,
    std::num::NonZeroU16,
    std::num::NonZeroU32,
    std::num::NonZeroU64,
    std::num::NonZeroU128,
    std::num::NonZeroUsize,
    std::num::NonZeroI8,
    std::num::NonZeroI16,
    std::num::NonZeroI32,
    std::num::NonZeroI64,
    std::num::NonZeroI128,
    std::num::NonZeroIsize
);

/// As `Display` writes them, separators escaped (`127%2E0%2E0%2E1`, `1%2E5`).
macro_rules! display_key_part {
    ($($(#[$attr:meta])* $t:ty),* $(,)?) => {$(
        $(#[$attr])*
        impl KeyPart for $t {
            fn write_key(&self, w: &mut KeyWriter) {
                w.display(self);
            }
        }
    )*};
}
display_key_part!(
    // The shortest digits that read back as the same float: distinct floats, distinct keys
    // (`-0` and `0` too); every NaN is `NaN`.
    f32,
    f64,
    std::net::IpAddr,
    std::net::Ipv4Addr,
    std::net::Ipv6Addr,
    std::net::SocketAddr,
    std::net::SocketAddrV4,
    std::net::SocketAddrV6,
);

/// Nanoseconds: `Duration` has no `Display`, and its `Debug` rounds.
impl KeyPart for std::time::Duration {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_nanos().write_key(w);
    }
}

/// A UTF-8 path as its text (escaped like any string); any other as `%P` and its `Debug`
/// form, which escapes the bytes that are not UTF-8 (no text starts with an unescaped `%`).
impl KeyPart for std::ffi::OsStr {
    fn write_key(&self, w: &mut KeyWriter) {
        match self.to_str() {
            Some(text) => w.str(text),
            None => {
                w.raw("%P");
                w.display(&format_args!("{self:?}"));
            }
        }
    }
}

impl KeyPart for std::ffi::OsString {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_os_str().write_key(w);
    }
}

impl KeyPart for std::path::Path {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_os_str().write_key(w);
    }
}

impl KeyPart for std::path::PathBuf {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_os_str().write_key(w);
    }
}

// Foreign types a user crate cannot implement `KeyPart` for (orphan rule), behind features.
// Each `Display` is injective: the hyphenated lowercase UUID; chrono's ISO 8601 forms with
// every non-zero fraction digit (and the offset, for a `DateTime`).
display_key_part!(
    #[cfg(feature = "uuid")]
    #[cfg_attr(docsrs, doc(cfg(feature = "uuid")))]
    uuid::Uuid,
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveDate,
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveTime,
    #[cfg(feature = "chrono")]
    #[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
    chrono::NaiveDateTime,
);

#[cfg(feature = "chrono")]
#[cfg_attr(docsrs, doc(cfg(feature = "chrono")))]
impl<Tz: chrono::TimeZone> KeyPart for chrono::DateTime<Tz>
where
    Tz::Offset: std::fmt::Display,
{
    fn write_key(&self, w: &mut KeyWriter) {
        w.display(self);
    }
}

impl KeyPart for char {
    fn write_key(&self, w: &mut KeyWriter) {
        w.str(self.encode_utf8(&mut [0u8; 4]));
    }
}

impl KeyPart for str {
    fn write_key(&self, w: &mut KeyWriter) {
        w.str(self);
    }
}

impl KeyPart for String {
    fn write_key(&self, w: &mut KeyWriter) {
        w.str(self);
    }
}

/// As the borrowed form: `Cow<'_, str>` as a `str`, `Cow<'_, [T]>` as a slice, `Cow<'_, Path>`
/// as a path.
impl<B: KeyPart + ToOwned + ?Sized> KeyPart for std::borrow::Cow<'_, B> {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

impl KeyPart for () {
    fn write_key(&self, _w: &mut KeyWriter) {}
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &mut T {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for Box<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::sync::Arc<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

impl<T: KeyPart + ?Sized> KeyPart for std::rc::Rc<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        (**self).write_key(w);
    }
}

/// `None` is `%N`; `Some(v)` is `v`, or `%S` + `v` when `v` itself starts with `%N`/`%S`
/// (nested options). Escapes are always `%` + two hex digits, so no string starts with these.
impl<T: KeyPart> KeyPart for Option<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        match self {
            None => w.raw("%N"),
            Some(v) => {
                let start = w.as_str().len();
                v.write_key(w);
                let written = &w.as_str()[start..];
                if written.starts_with("%N") || written.starts_with("%S") {
                    w.buf.insert_str(start, "%S");
                }
            }
        }
    }
}

/// `[+a+b+c]` (and `[]` when empty): every element is introduced by `+`, so `[]` and `[""]`
/// differ; brackets and `+` are escaped inside strings, so nesting stays unambiguous.
/// `[+a+b]`: every sequence (slices, `Vec`, arrays, `VecDeque`, sorted sets and maps)
/// encodes its items in order this way.
fn write_sequence<I>(w: &mut KeyWriter, items: I)
where
    I: IntoIterator,
    I::Item: KeyPart,
{
    w.raw("[");
    for item in items {
        w.raw("+");
        item.write_key(w);
    }
    w.raw("]");
}

impl<T: KeyPart> KeyPart for [T] {
    fn write_key(&self, w: &mut KeyWriter) {
        write_sequence(w, self);
    }
}

impl<T: KeyPart> KeyPart for Vec<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_slice().write_key(w);
    }
}

impl<T: KeyPart, const N: usize> KeyPart for [T; N] {
    fn write_key(&self, w: &mut KeyWriter) {
        self.as_slice().write_key(w);
    }
}

/// In order, as a slice.
impl<T: KeyPart> KeyPart for std::collections::VecDeque<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        write_sequence(w, self);
    }
}

/// In the set's (sorted) order, as a slice.
impl<T: KeyPart> KeyPart for std::collections::BTreeSet<T> {
    fn write_key(&self, w: &mut KeyWriter) {
        write_sequence(w, self);
    }
}

/// In the map's (sorted) order, as a slice of `(key, value)` tuples: `[+[k+v]+[k+v]]`.
impl<K: KeyPart, V: KeyPart> KeyPart for std::collections::BTreeMap<K, V> {
    fn write_key(&self, w: &mut KeyWriter) {
        write_sequence(w, self);
    }
}

/// The items in the order of their encodings, as a sequence (`[+a+b]`). A hash set's
/// iteration order differs between processes (each seeds its hasher at random) and between
/// two equal sets in one process, so the items are encoded one by one first: equal
/// collections give one key whatever their order, and distinct ones distinct keys (each
/// item's encoding is injective, and so is the sequence of them). One allocation per item;
/// a `BTreeSet` / `BTreeMap`, sorted already, writes in place.
fn write_unordered<I>(w: &mut KeyWriter, items: I)
where
    I: IntoIterator,
    I::Item: KeyPart,
{
    let mut encoded: Vec<String> = items
        .into_iter()
        .map(|item| {
            let mut one = KeyWriter::with_head("");
            item.write_key(&mut one);
            one.finish()
        })
        .collect();
    encoded.sort_unstable();
    w.raw("[");
    for item in &encoded {
        w.raw("+");
        w.raw(item);
    }
    w.raw("]");
}

/// In the order of the items' encodings (see `write_unordered`), as a sequence: `{3, 1}` and
/// `{1, 3}` are both `[+1+3]`, in every process.
impl<T: KeyPart, S> KeyPart for std::collections::HashSet<T, S> {
    fn write_key(&self, w: &mut KeyWriter) {
        write_unordered(w, self);
    }
}

/// In the order of the `(key, value)` tuples' encodings, as a sequence: `[+[k+v]+[k+v]]`,
/// the same in every process whatever the map's iteration order.
impl<K: KeyPart, V: KeyPart, S> KeyPart for std::collections::HashMap<K, V, S> {
    fn write_key(&self, w: &mut KeyWriter) {
        write_unordered(w, self);
    }
}

macro_rules! tuple_key_part {
    ($($name:ident $idx:tt),+) => {
        impl<$($name: KeyPart),+> KeyPart for ($($name,)+) {
            fn write_key(&self, w: &mut KeyWriter) {
                w.raw("[");
                tuple_key_part!(@items self w $($idx)+);
                w.raw("]");
            }
        }
    };
    (@items $self:ident $w:ident $first:tt $($rest:tt)*) => {
        $self.$first.write_key($w);
        $( $w.raw("+"); $self.$rest.write_key($w); )*
    };
}
tuple_key_part!(A 0);
tuple_key_part!(A 0, B 1);
tuple_key_part!(A 0, B 1, C 2);
tuple_key_part!(A 0, B 1, C 2, D 3);
tuple_key_part!(A 0, B 1, C 2, D 3, E 4);
tuple_key_part!(A 0, B 1, C 2, D 3, E 4, F 5);

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn enc<T: KeyPart + ?Sized>(v: &T) -> String {
        let mut w = KeyWriter::with_head("");
        v.write_key(&mut w);
        w.finish()
    }

    #[test]
    fn keys_longer_than_the_stack_buffer_move_to_the_heap_whole() {
        // Every split of a long key across the inline limit: the same text as one string.
        let piece = "ab:é日%x";
        let mut expected = String::from("h:");
        let mut w = KeyWriter::with_head("h:");
        for i in 0..40 {
            w.literal("|");
            w.str(piece);
            i.write_key(&mut w);
            expected.push('|');
            expected.push_str("ab%3Aé日%25x");
            expected.push_str(&i.to_string());
            assert_eq!(w.as_str(), expected);
        }
        assert!(expected.len() > KeyWriter::INLINE * 3);
        assert_eq!(w.clone().into_key().as_str(), expected);
        assert_eq!(w.finish(), expected);
        // A nested option's escape inserted where the key crosses the limit.
        let head = "h".repeat(KeyWriter::INLINE - 2);
        let mut w = KeyWriter::with_head(&head);
        Some(None::<u8>).write_key(&mut w);
        assert_eq!(w.finish(), format!("{head}%S%N"));
        // A head longer than the buffer on its own.
        let head = "h".repeat(KeyWriter::INLINE + 1);
        assert_eq!(KeyWriter::with_head(&head).finish(), head);
    }

    #[test]
    fn display_parts_are_escaped_as_a_whole_string_would_be() {
        struct Spaced;
        impl fmt::Display for Spaced {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                // Several pieces, one of them a separator, one needing `%`.
                let (n, tail) = (7, "é\n");
                write!(f, "a b:{n}%{tail}")
            }
        }
        let mut w = KeyWriter::with_head("");
        w.display(&Spaced);
        assert_eq!(w.finish(), enc("a b:7%é\n"));
    }

    #[test]
    fn strings_escape_separators_and_escape_char() {
        assert_eq!(enc("a:b"), "a%3Ab");
        assert_eq!(enc("%3A"), "%253A");
        assert_eq!(enc("x\ny"), "x%0Ay");
        assert_eq!(enc("é"), "é");
        assert_eq!(enc("{tag}"), "%7Btag%7D");
        for s in ["a:b", "%", "[1+2]", "*?", "a.b", "x y"] {
            assert!(!enc(s).contains(SEPARATORS), "{s}");
        }
    }

    #[test]
    fn escapes_whitespace_controls_and_reserved_characters() {
        for c in [
            ' ', '\t', '\u{7f}', '%', '+', '[', '{', '\u{a0}', '\u{2028}', '\u{85}',
        ] {
            assert!(needs_escape(c), "{c:?}");
        }
        for c in ['a', 'Z', '0', '-', '_', '~', 'é', '日'] {
            assert!(!needs_escape(c), "{c:?}");
        }
        assert_eq!(enc("a\u{a0}b"), "a%C2%A0b");
    }

    #[test]
    fn options_and_nesting_are_injective() {
        let values: Vec<Option<Option<String>>> = vec![
            None,
            Some(None),
            Some(Some(String::new())),
            Some(Some("%N".into())),
            Some(Some("%S".into())),
        ];
        let set: HashSet<_> = values.iter().map(enc).collect();
        assert_eq!(set.len(), values.len(), "{set:?}");
    }

    #[test]
    fn collections_encode_in_order_as_sequences() {
        use std::borrow::Cow;
        use std::collections::{BTreeMap, BTreeSet, VecDeque};
        let set: BTreeSet<&str> = ["b", "a:"].into_iter().collect();
        assert_eq!(enc(&set), "[+a%3A+b]");
        let map: BTreeMap<&str, u8> = [("z", 1), ("a", 2)].into_iter().collect();
        assert_eq!(enc(&map), enc(&vec![("a", 2u8), ("z", 1)]));
        assert_eq!(enc(&map), "[+[a+2]+[z+1]]");
        let deque: VecDeque<u8> = [3, 1].into_iter().collect();
        assert_eq!(enc(&deque), enc(&vec![3u8, 1]));
        assert_eq!(enc(&Cow::Borrowed("a b")), enc("a b"));
        assert_eq!(enc(&Cow::<[u8]>::Owned(vec![1, 2])), "[+1+2]");
        assert_eq!(enc(&std::num::NonZeroU8::new(7).unwrap()), "7");
        assert_eq!(enc(&std::num::NonZeroI128::new(-7).unwrap()), "-7");
        // An empty map and a map with one empty entry differ.
        let empty: BTreeMap<String, String> = BTreeMap::new();
        let one: BTreeMap<String, String> = [(String::new(), String::new())].into_iter().collect();
        assert_ne!(enc(&empty), enc(&one));
    }

    #[test]
    fn sequences_are_injective() {
        let a = vec![vec![1u8, 2], vec![3]];
        let b = vec![vec![1u8], vec![2, 3]];
        assert_ne!(enc(&a), enc(&b));
        assert_ne!(
            enc(&vec!["a+b".to_string()]),
            enc(&vec!["a".to_string(), "b".to_string()])
        );
        assert_ne!(enc(&("1", "2")), enc(&("1+2", "")));
        assert_eq!(enc(&(1u8, "x", true)), "[1+x+true]");
    }

    #[test]
    fn hash_collections_give_one_key_whatever_their_order() {
        use std::collections::hash_map::RandomState;
        use std::collections::{BTreeSet, HashMap};
        // Each `RandomState` is seeded anew, as every process's is: the same items come out
        // of the sets in different orders, the key does not change.
        let items: Vec<u64> = (0..64).map(|i| i * 7919 % 1000).collect();
        let keys: HashSet<String> = (0..16)
            .map(|_| {
                let mut set = HashSet::with_hasher(RandomState::new());
                set.extend(items.iter().copied());
                enc(&set)
            })
            .collect();
        assert_eq!(keys.len(), 1, "{keys:?}");
        let orders: HashSet<Vec<u64>> = (0..16)
            .map(|_| {
                let mut set = HashSet::with_hasher(RandomState::new());
                set.extend(items.iter().copied());
                set.into_iter().collect()
            })
            .collect();
        assert!(
            orders.len() > 1,
            "the sets' own orders differ (else this test proves nothing)"
        );

        let set: HashSet<&str> = ["b", "a:", "10", "9"].into_iter().collect();
        assert_eq!(enc(&set), "[+10+9+a%3A+b]");
        let map: HashMap<&str, u8> = [("z", 1), ("a", 2)].into_iter().collect();
        assert_eq!(enc(&map), "[+[a+2]+[z+1]]");
        let mut other = HashMap::with_hasher(RandomState::new());
        other.extend([("a", 2u8), ("z", 1)]);
        assert_eq!(enc(&map), enc(&other));

        // Distinct collections, distinct keys: items that would run together, the empty
        // item, nesting, and a map whose values swap.
        let sets: Vec<HashSet<String>> = vec![
            HashSet::new(),
            [String::new()].into_iter().collect(),
            ["a+b".into()].into_iter().collect(),
            ["a".into(), "b".into()].into_iter().collect(),
            ["[+a]".into()].into_iter().collect(),
            ["a".into()].into_iter().collect(),
        ];
        let distinct: HashSet<String> = sets.iter().map(enc).collect();
        assert_eq!(distinct.len(), sets.len(), "{distinct:?}");
        let swapped: HashMap<&str, u8> = [("z", 2), ("a", 1)].into_iter().collect();
        assert_ne!(enc(&map), enc(&swapped));
        let nested: HashSet<BTreeSet<u8>> = [BTreeSet::from([1, 2]), BTreeSet::from([3])]
            .into_iter()
            .collect();
        let regrouped: HashSet<BTreeSet<u8>> = [BTreeSet::from([1]), BTreeSet::from([2, 3])]
            .into_iter()
            .collect();
        assert_ne!(enc(&nested), enc(&regrouped));
    }
}

//! [`CachePolicy`]: what a response tells HTTP caches (`Cache-Control`, `Vary`, validators,
//! surrogate keys), rendered from a policy and an [`Entry`]'s metadata.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::clock::unix_ms;
use crate::edge::encode_surrogate_key;
use crate::{Entry, Meta, Source};

/// The response header naming where the value came from: `local`, `redis`, `body` or
/// `stale` (see [`source_name`]). On by default; [`CachePolicy::source_header`] turns it off.
///
/// ```
/// assert_eq!(cache_runtime::http::X_CACHE_SOURCE.as_str(), "x-cache-source");
/// ```
pub const X_CACHE_SOURCE: HeaderName = HeaderName::from_static("x-cache-source");

/// The `Surrogate-Key` response header (Fastly-style CDNs): the entry's tags, space separated.
///
/// ```
/// assert_eq!(cache_runtime::http::SURROGATE_KEY.as_str(), "surrogate-key");
/// ```
pub const SURROGATE_KEY: HeaderName = HeaderName::from_static("surrogate-key");

/// The `xkey` response header read by Varnish's xkey vmod: the entry's tags, space separated.
///
/// ```
/// assert_eq!(cache_runtime::http::XKEY.as_str(), "xkey");
/// ```
pub const XKEY: HeaderName = HeaderName::from_static("xkey");

/// The `Cache-Tag` response header read by Cloudflare: the entry's tags, comma separated.
///
/// ```
/// assert_eq!(cache_runtime::http::CACHE_TAG.as_str(), "cache-tag");
/// ```
pub const CACHE_TAG: HeaderName = HeaderName::from_static("cache-tag");

/// How many `Vary` names a policy holds (it is `Copy` and built in `const` context).
pub const MAX_VARY: usize = 8;

/// Which surrogate-key headers a public response carries (the entry's tags, for purging a
/// CDN by tag). Private and `no-store` responses never carry them: no shared cache keeps them.
///
/// ```
/// use cache_runtime::http::{CachePolicy, SurrogateKeys};
/// const P: CachePolicy = CachePolicy::public().surrogate_keys(SurrogateKeys::Xkey);
/// # let _ = P;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SurrogateKeys {
    /// Neither header.
    Off,
    /// `Surrogate-Key` only.
    SurrogateKey,
    /// `xkey` only.
    Xkey,
    /// Both `Surrogate-Key` and `xkey` (the default).
    #[default]
    Both,
    /// `Cache-Tag` only (Cloudflare; comma separated).
    CacheTag,
    /// `Surrogate-Key`, `xkey` and `Cache-Tag`.
    All,
}

/// What a response tells HTTP caches, browsers and CDNs alike.
///
/// Build one in `const` context and pass `&POLICY` when responding:
///
/// ```
/// use cache_runtime::http::CachePolicy;
/// use std::time::Duration;
///
/// // Per-user data: only the caller's browser may keep it, for 30 s.
/// const ME: CachePolicy = CachePolicy::private().max_age(Duration::from_secs(30));
/// assert_eq!(ME.to_string(), "private, max-age=30");
///
/// // Shared data: browsers 60 s, CDNs 10 min, served stale for 30 s while the CDN revalidates.
/// const PRODUCT: CachePolicy = CachePolicy::public()
///     .max_age(Duration::from_secs(60))
///     .s_maxage(Duration::from_secs(600))
///     .stale_while_revalidate(Duration::from_secs(30));
/// assert_eq!(
///     PRODUCT.to_string(),
///     "public, max-age=60, s-maxage=600, stale-while-revalidate=30"
/// );
/// ```
///
/// # The defaults, and why
///
/// * **`private`** ([`CachePolicy::default`] is [`CachePolicy::private`]): a response that
///   depends on the caller must never be stored by a shared cache, and forgetting to say so
///   is the expensive mistake. Opt into sharing with [`CachePolicy::public`], which asserts
///   that the response is the same for every caller.
/// * **`Vary: Authorization` on private responses**: a browser that switches users (another
///   `Authorization` header) does not reuse the previous user's copy. Add what else the
///   response depends on with [`vary`](Self::vary) (e.g. `Cookie` when the session is a
///   cookie), or drop it with [`no_vary`](Self::no_vary). Public responses vary on nothing
///   unless told.
/// * **`max-age=0` unless set**: no cache may reuse the response without asking, and no
///   browser applies heuristic freshness. Revalidation is cheap: the `ETag` makes it a `304`
///   answered from the server cache.
/// * **Capped by the entry's lifetime** ([`cap_to_ttl`](Self::cap_to_ttl), on by default):
///   no cache keeps the value beyond the moment the server cache itself stops serving it.
///   The freshness a response grants from now is `min(max-age, remaining TTL)` (likewise
///   `s-maxage`), so an invalidation or expiry on the server is never outlived by a client
///   copy for longer than the window the policy allows.
/// * **No `Age`**: the service is the origin, and RFC 9111 §5.1 reserves `Age` for caches
///   (checkers such as REDbot read an origin's `Age` as an intermediary having rewritten
///   `Date`). Freshness is sent as the window left from now instead: for a value cached for
///   250 s with 50 s left, a 60 s policy renders `max-age=50`, which is what a cache would
///   have computed from `max-age=300` and `Age: 250`, so no cache in front loses anything.
/// * A fail-safe [`Source::Stale`] value is never given freshness (its window is 0).
/// * `stale-while-revalidate` and `stale-if-error` are sent as configured (not capped): they
///   are an explicit allowance to serve past freshness.
/// * **`no-store`** renders `Cache-Control: no-store` alone: no freshness, no
///   `Last-Modified`, no surrogate keys, and conditional requests are not answered with a `304`
///   (that would tell a client to reuse a copy it was told not to keep). The `ETag` is still
///   sent (it identifies the value, e.g. for `If-Match` on a later write).
/// * **Surrogate keys** (the entry's tags, in `Surrogate-Key` and `xkey`) are sent on public
///   responses so a CDN can purge by tag; see [`surrogate_keys`](Self::surrogate_keys). Each
///   tag is encoded with [`encode_surrogate_key`](crate::edge::encode_surrogate_key), the
///   tokens the edge purgers send. Strip them at the edge before they reach clients if the
///   tag names are private.
/// * **`x-cache-source`** names where the value came from (`local`, `redis`, `body`,
///   `stale`); turn it off with [`source_header`](Self::source_header).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachePolicy {
    public: bool,
    max_age: Duration,
    s_maxage: Option<Duration>,
    stale_while_revalidate: Option<Duration>,
    stale_if_error: Option<Duration>,
    must_revalidate: bool,
    no_cache: bool,
    no_store: bool,
    vary: [&'static str; MAX_VARY],
    vary_len: u8,
    cap_to_ttl: bool,
    surrogate_keys: SurrogateKeys,
    source_header: bool,
}

impl Default for CachePolicy {
    /// [`CachePolicy::private`].
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert_eq!(CachePolicy::default(), CachePolicy::private());
    /// ```
    fn default() -> Self {
        Self::private()
    }
}

impl CachePolicy {
    const BASE: CachePolicy = CachePolicy {
        public: false,
        max_age: Duration::ZERO,
        s_maxage: None,
        stale_while_revalidate: None,
        stale_if_error: None,
        must_revalidate: false,
        no_cache: false,
        no_store: false,
        vary: [""; MAX_VARY],
        vary_len: 0,
        cap_to_ttl: true,
        surrogate_keys: SurrogateKeys::Both,
        source_header: true,
    };

    /// `Cache-Control: private, max-age=0` and `Vary: Authorization`: only the caller's own
    /// (browser) cache may keep the response. The default.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// let p = CachePolicy::private();
    /// assert_eq!(p.to_string(), "private, max-age=0");
    /// assert_eq!(p.vary_names().collect::<Vec<_>>(), ["Authorization"]);
    /// ```
    pub const fn private() -> Self {
        Self::BASE.vary("Authorization")
    }

    /// `Cache-Control: public, max-age=0`: any cache, shared ones included, may keep the
    /// response. Only for responses that are the same for every caller.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().max_age(Duration::from_secs(60));
    /// assert_eq!(p.to_string(), "public, max-age=60");
    /// assert_eq!(p.vary_names().count(), 0);
    /// ```
    pub const fn public() -> Self {
        let mut p = Self::BASE;
        p.public = true;
        p
    }

    /// `Cache-Control: no-store`: nothing may keep the response (see the type's docs for
    /// what is left out with it).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert_eq!(CachePolicy::no_store_at_all().to_string(), "no-store");
    /// ```
    pub const fn no_store_at_all() -> Self {
        Self::private().no_store()
    }

    /// How long a cache may reuse the response without asking (`max-age`, whole seconds).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// assert_eq!(
    ///     CachePolicy::private().max_age(Duration::from_secs(30)).to_string(),
    ///     "private, max-age=30"
    /// );
    /// ```
    pub const fn max_age(mut self, d: Duration) -> Self {
        self.max_age = d;
        self
    }

    /// How long a shared cache (CDN) may reuse the response (`s-maxage`); public
    /// responses only, ignored for private ones.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().s_maxage(Duration::from_secs(300));
    /// assert_eq!(p.to_string(), "public, max-age=0, s-maxage=300");
    /// ```
    pub const fn s_maxage(mut self, d: Duration) -> Self {
        self.s_maxage = Some(d);
        self
    }

    /// `stale-while-revalidate` (RFC 5861): how long past freshness a cache may serve the
    /// response while it revalidates in the background.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().stale_while_revalidate(Duration::from_secs(30));
    /// assert_eq!(p.to_string(), "public, max-age=0, stale-while-revalidate=30");
    /// ```
    pub const fn stale_while_revalidate(mut self, d: Duration) -> Self {
        self.stale_while_revalidate = Some(d);
        self
    }

    /// `stale-if-error` (RFC 5861): how long past freshness a cache may serve the response
    /// when revalidation fails (5xx or no answer).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().stale_if_error(Duration::from_secs(600));
    /// assert_eq!(p.to_string(), "public, max-age=0, stale-if-error=600");
    /// ```
    pub const fn stale_if_error(mut self, d: Duration) -> Self {
        self.stale_if_error = Some(d);
        self
    }

    /// `must-revalidate`: once stale, a cache must not serve the response without a
    /// successful revalidation.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// let p = CachePolicy::private().must_revalidate();
    /// assert_eq!(p.to_string(), "private, max-age=0, must-revalidate");
    /// ```
    pub const fn must_revalidate(mut self) -> Self {
        self.must_revalidate = true;
        self
    }

    /// `no-cache`: caches may store the response but must revalidate it on every use (with
    /// the `ETag`, a cheap `304`). Replaces `max-age`, `s-maxage` and
    /// `stale-while-revalidate`, which it makes meaningless.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert_eq!(CachePolicy::private().no_cache().to_string(), "private, no-cache");
    /// ```
    pub const fn no_cache(mut self) -> Self {
        self.no_cache = true;
        self
    }

    /// `no-store`: nothing may keep the response. Overrides every other directive.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().max_age(Duration::from_secs(60)).no_store();
    /// assert_eq!(p.to_string(), "no-store");
    /// ```
    pub const fn no_store(mut self) -> Self {
        self.no_store = true;
        self
    }

    /// Adds a request header the response depends on to `Vary` (case-insensitive
    /// duplicates are ignored). Panics (at compile time in `const` context) on a name that
    /// is not an HTTP token or beyond [`MAX_VARY`] names.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// const P: CachePolicy = CachePolicy::private().vary("Cookie").vary("authorization");
    /// assert_eq!(P.vary_names().collect::<Vec<_>>(), ["Authorization", "Cookie"]);
    /// ```
    pub const fn vary(mut self, name: &'static str) -> Self {
        assert!(is_token(name), "a Vary name must be an HTTP token");
        let mut i = 0;
        while i < self.vary_len as usize {
            if eq_ignore_case(self.vary[i], name) {
                return self;
            }
            i += 1;
        }
        assert!((self.vary_len as usize) < MAX_VARY, "too many Vary names");
        self.vary[self.vary_len as usize] = name;
        self.vary_len += 1;
        self
    }

    /// Removes every `Vary` name (including the default `Authorization` of private
    /// responses).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert_eq!(CachePolicy::private().no_vary().vary_names().count(), 0);
    /// ```
    pub const fn no_vary(mut self) -> Self {
        self.vary_len = 0;
        self
    }

    /// Whether freshness (`max-age`, `s-maxage`) is capped by the entry's remaining TTL, so
    /// that no cache keeps the value longer than the server cache does. On by default.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// const P: CachePolicy = CachePolicy::public()
    ///     .max_age(Duration::from_secs(3600))
    ///     .cap_to_ttl(false);
    /// # let _ = P;
    /// ```
    pub const fn cap_to_ttl(mut self, on: bool) -> Self {
        self.cap_to_ttl = on;
        self
    }

    /// Which surrogate-key headers public responses carry ([`SurrogateKeys::Both`] by
    /// default).
    ///
    /// ```
    /// use cache_runtime::http::{CachePolicy, SurrogateKeys};
    /// const P: CachePolicy = CachePolicy::public().surrogate_keys(SurrogateKeys::Off);
    /// # let _ = P;
    /// ```
    pub const fn surrogate_keys(mut self, which: SurrogateKeys) -> Self {
        self.surrogate_keys = which;
        self
    }

    /// Whether responses carry [`X_CACHE_SOURCE`] (on by default).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// const P: CachePolicy = CachePolicy::public().source_header(false);
    /// # let _ = P;
    /// ```
    pub const fn source_header(mut self, on: bool) -> Self {
        self.source_header = on;
        self
    }

    /// Whether the policy is `public`.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert!(CachePolicy::public().is_public());
    /// assert!(!CachePolicy::default().is_public());
    /// ```
    pub const fn is_public(&self) -> bool {
        self.public
    }

    /// Whether the policy is `no-store`.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// assert!(CachePolicy::no_store_at_all().is_no_store());
    /// ```
    pub const fn is_no_store(&self) -> bool {
        self.no_store
    }

    /// The `Vary` names, in the order they were added.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// let p = CachePolicy::public().vary("Accept-Language");
    /// assert_eq!(p.vary_names().collect::<Vec<_>>(), ["Accept-Language"]);
    /// ```
    pub fn vary_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.vary[..self.vary_len as usize].iter().copied()
    }

    /// The `Cache-Control` value for this entry, now.
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use cache_runtime::{Entry, Source};
    /// use std::time::{Duration, SystemTime};
    ///
    /// let p = CachePolicy::public().max_age(Duration::from_secs(60));
    /// // A value computed for this request, with 10 s of server TTL: capped to 10 s.
    /// let e = Entry::new((), None, SystemTime::now(), Duration::from_secs(10), vec![], Source::Body);
    /// let cc = p.cache_control(&e);
    /// assert!(cc == "public, max-age=10" || cc == "public, max-age=9");
    /// ```
    pub fn cache_control<V>(&self, entry: &Entry<V>) -> HeaderValue {
        let t = Timing::of(&entry.meta(), entry.source(), crate::clock::now_system());
        self.cache_control_value(&t)
    }

    /// Every caching header for a `200` response carrying this entry, now: `Cache-Control`,
    /// `Vary`, `ETag`, `Last-Modified`, the surrogate keys and [`X_CACHE_SOURCE`] (no `Age`:
    /// see the type's docs).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use cache_runtime::{ETag, Entry, Source};
    /// use std::time::{Duration, SystemTime};
    ///
    /// let e = Entry::new(
    ///     "v",
    ///     Some(ETag::of(b"v")),
    ///     SystemTime::now() - Duration::from_secs(5),
    ///     Duration::from_secs(60),
    ///     vec!["products".into()],
    ///     Source::Local,
    /// );
    /// let h = CachePolicy::public().max_age(Duration::from_secs(30)).headers(&e);
    /// assert_eq!(h["etag"], ETag::of(b"v").to_string());
    /// assert_eq!(h["xkey"], "products");
    /// assert_eq!(h["surrogate-key"], "products");
    /// assert_eq!(h["x-cache-source"], "local");
    /// assert!(h.contains_key("last-modified") && !h.contains_key("age"));
    /// ```
    pub fn headers<V>(&self, entry: &Entry<V>) -> HeaderMap {
        let mut h = HeaderMap::new();
        self.write_headers(entry, &mut h);
        h
    }

    /// [`headers`](Self::headers), written into an existing map (replacing those fields,
    /// appending to `Vary`).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use cache_runtime::{Entry, Source};
    /// use http::HeaderMap;
    /// use std::time::{Duration, SystemTime};
    ///
    /// let e = Entry::new(1, None, SystemTime::now(), Duration::from_secs(60), vec![], Source::Body);
    /// let mut h = HeaderMap::new();
    /// h.insert("vary", "Origin".parse().unwrap());
    /// CachePolicy::private().write_headers(&e, &mut h);
    /// assert_eq!(h.get_all("vary").iter().collect::<Vec<_>>(), ["Origin", "Authorization"]);
    /// ```
    pub fn write_headers<V>(&self, entry: &Entry<V>, headers: &mut HeaderMap) {
        let t = Timing::of(&entry.meta(), entry.source(), crate::clock::now_system());
        self.write(
            &t,
            &entry.meta(),
            entry.tags(),
            entry.source(),
            false,
            headers,
        );
    }

    /// Writes the headers of a `200` (`not_modified == false`) or of a `304`: per RFC 9110
    /// §15.4.5 a `304` carries what the `200` would have for updating stored responses
    /// (`Cache-Control`, `Vary`, `ETag`, and `Last-Modified` only without an `ETag`).
    pub(crate) fn write(
        &self,
        t: &Timing,
        meta: &Meta,
        tags: &[String],
        source: Source,
        not_modified: bool,
        headers: &mut HeaderMap,
    ) {
        headers.insert(header::CACHE_CONTROL, self.cache_control_value(t));
        if self.vary_len > 0 {
            let mut v = String::with_capacity(32);
            for (i, name) in self.vary_names().enumerate() {
                if i > 0 {
                    v.push_str(", ");
                }
                v.push_str(name);
            }
            headers.append(
                header::VARY,
                HeaderValue::try_from(v).expect("Vary names are tokens"),
            );
        }
        if let Some(etag) = meta.etag {
            headers.insert(
                header::ETAG,
                HeaderValue::try_from(etag.to_string()).expect("an ETag is visible ASCII"),
            );
        }
        if !self.no_store {
            if let Some(lm) = t.last_modified {
                if !(not_modified && meta.etag.is_some()) {
                    headers.insert(
                        header::LAST_MODIFIED,
                        HeaderValue::try_from(httpdate::fmt_http_date(lm))
                            .expect("an HTTP date is visible ASCII"),
                    );
                }
            }
            if self.public && !tags.is_empty() && self.surrogate_keys != SurrogateKeys::Off {
                let mut v = String::new();
                for (i, tag) in tags.iter().enumerate() {
                    if i > 0 {
                        v.push(' ');
                    }
                    v.push_str(&encode_surrogate_key(tag));
                }
                let v = HeaderValue::try_from(v).expect("surrogate keys are visible ASCII");
                use SurrogateKeys as K;
                let which = self.surrogate_keys;
                if matches!(which, K::SurrogateKey | K::Both | K::All) {
                    headers.insert(SURROGATE_KEY, v.clone());
                }
                if matches!(which, K::CacheTag | K::All) {
                    // Cloudflare separates tags by commas (which the encoding escapes).
                    let tags = v.to_str().expect("visible ASCII").replace(' ', ",");
                    headers.insert(
                        CACHE_TAG,
                        HeaderValue::try_from(tags).expect("visible ASCII"),
                    );
                }
                if matches!(which, K::Xkey | K::Both | K::All) {
                    headers.insert(XKEY, v);
                }
            }
        }
        if self.source_header {
            headers.insert(
                X_CACHE_SOURCE,
                HeaderValue::from_static(source_name(source)),
            );
        }
    }

    fn cache_control_value(&self, t: &Timing) -> HeaderValue {
        let mut s = String::with_capacity(64);
        self.render(t, &mut s).expect("writing to a String");
        HeaderValue::try_from(s).expect("Cache-Control is visible ASCII")
    }

    fn render(&self, t: &Timing, out: &mut impl fmt::Write) -> fmt::Result {
        if self.no_store {
            return out.write_str("no-store");
        }
        out.write_str(if self.public { "public" } else { "private" })?;
        if self.no_cache {
            out.write_str(", no-cache")?;
        } else {
            write!(
                out,
                ", max-age={}",
                t.header_secs(self.max_age, self.cap_to_ttl)
            )?;
            if let (true, Some(s)) = (self.public, self.s_maxage) {
                write!(out, ", s-maxage={}", t.header_secs(s, self.cap_to_ttl))?;
            }
            if let Some(d) = self.stale_while_revalidate {
                write!(out, ", stale-while-revalidate={}", d.as_secs())?;
            }
        }
        if let Some(d) = self.stale_if_error {
            write!(out, ", stale-if-error={}", d.as_secs())?;
        }
        if self.must_revalidate {
            out.write_str(", must-revalidate")?;
        }
        Ok(())
    }
}

impl fmt::Display for CachePolicy {
    /// The `Cache-Control` value for a value computed now that the server keeps at least
    /// as long as the policy's `max-age` (the static form of the policy).
    ///
    /// ```
    /// use cache_runtime::http::CachePolicy;
    /// use std::time::Duration;
    /// let p = CachePolicy::public().max_age(Duration::from_secs(5)).must_revalidate();
    /// assert_eq!(p.to_string(), "public, max-age=5, must-revalidate");
    /// ```
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.render(&Timing::UNBOUNDED, f)
    }
}

/// The [`X_CACHE_SOURCE`] value for a source: `local`, `redis`, `body` or `stale`.
///
/// ```
/// use cache_runtime::http::source_name;
/// use cache_runtime::Source;
/// assert_eq!(source_name(Source::Redis), "redis");
/// ```
pub const fn source_name(source: Source) -> &'static str {
    match source {
        Source::Local => "local",
        Source::Redis => "redis",
        Source::Body => "body",
        Source::Stale => "stale",
    }
}

/// An entry's times relative to one `now`, in whole seconds, shared by the headers and the
/// conditional evaluation of one response.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timing {
    /// Whole seconds of server freshness left (`None`: unbounded).
    remaining_s: Option<u64>,
    /// A fail-safe value: never granted freshness.
    stale: bool,
    /// `Last-Modified`, truncated to seconds; `None` while still in the creation second.
    pub(crate) last_modified: Option<SystemTime>,
}

impl Timing {
    const UNBOUNDED: Timing = Timing {
        remaining_s: None,
        stale: false,
        last_modified: None,
    };

    pub(crate) fn of(meta: &Meta, source: Source, now: SystemTime) -> Timing {
        let now_ms = unix_ms(now);
        let created_s = meta.created_unix_ms / 1000;
        Timing {
            remaining_s: Some(meta.expires_unix_ms.saturating_sub(now_ms) / 1000),
            stale: source == Source::Stale,
            // RFC 9110 §8.8.2.2: a Last-Modified is only a safe validator once its second is
            // over; two values created within one second would otherwise share it, and an
            // `If-Modified-Since` from the first would validate the second.
            last_modified: (created_s < now_ms / 1000)
                .then(|| UNIX_EPOCH + Duration::from_secs(created_s)),
        }
    }

    /// A freshness directive's value: the window granted from now.
    fn header_secs(&self, configured: Duration, cap: bool) -> u64 {
        let mut window = configured.as_secs();
        if let (true, Some(r)) = (cap, self.remaining_s) {
            window = window.min(r);
        }
        if self.stale {
            window = 0;
        }
        window
    }
}

const fn is_token(s: &str) -> bool {
    let b = s.as_bytes();
    if b.is_empty() {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let ok = c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            );
        if !ok {
            return false;
        }
        i += 1;
    }
    true
}

const fn eq_ignore_case(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if !a[i].eq_ignore_ascii_case(&b[i]) {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ETag;

    const NOW_MS: u64 = 1_700_000_000_500;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// An entry created `age_ms` before `now()` that lives `ttl_s`.
    fn entry(age_ms: u64, ttl_s: u64, tags: &[&str], source: Source) -> Entry<&'static str> {
        Entry::new(
            "v",
            Some(ETag::from_u128(0xfeed)),
            UNIX_EPOCH + Duration::from_millis(NOW_MS - age_ms),
            secs(ttl_s),
            tags.iter().map(|t| t.to_string()).collect(),
            source,
        )
    }

    fn headers(p: &CachePolicy, e: &Entry<&str>, not_modified: bool) -> HeaderMap {
        let t = Timing::of(&e.meta(), e.source(), now());
        let mut h = HeaderMap::new();
        p.write(&t, &e.meta(), e.tags(), e.source(), not_modified, &mut h);
        h
    }

    fn get<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
        h.get(name).map(|v| v.to_str().unwrap())
    }

    #[test]
    fn static_rendering() {
        let p = CachePolicy::public()
            .max_age(secs(60))
            .s_maxage(secs(600))
            .stale_while_revalidate(secs(30))
            .stale_if_error(secs(86400))
            .must_revalidate();
        assert_eq!(
            p.to_string(),
            "public, max-age=60, s-maxage=600, stale-while-revalidate=30, \
             stale-if-error=86400, must-revalidate"
        );
        // s-maxage means nothing to a private response.
        let p = CachePolicy::private().max_age(secs(5)).s_maxage(secs(600));
        assert_eq!(p.to_string(), "private, max-age=5");
        // Sub-second durations round down.
        let p = CachePolicy::private().max_age(Duration::from_millis(1999));
        assert_eq!(p.to_string(), "private, max-age=1");
        assert_eq!(
            CachePolicy::public()
                .no_cache()
                .stale_if_error(secs(9))
                .to_string(),
            "public, no-cache, stale-if-error=9"
        );
        let p = CachePolicy::public()
            .max_age(secs(60))
            .must_revalidate()
            .no_store();
        assert_eq!(p.to_string(), "no-store");
    }

    #[test]
    fn vary_defaults_and_dedup() {
        assert_eq!(CachePolicy::default(), CachePolicy::private());
        let names = |p: CachePolicy| p.vary_names().collect::<Vec<_>>();
        assert_eq!(names(CachePolicy::private()), ["Authorization"]);
        assert!(names(CachePolicy::public()).is_empty());
        let p = CachePolicy::private()
            .vary("AUTHORIZATION")
            .vary("Cookie")
            .vary("cookie");
        assert_eq!(names(p), ["Authorization", "Cookie"]);
        assert!(names(p.no_vary()).is_empty());
        let h = headers(&p, &entry(5000, 60, &[], Source::Local), false);
        assert_eq!(get(&h, "vary"), Some("Authorization, Cookie"));
        let h = headers(
            &CachePolicy::public(),
            &entry(5000, 60, &[], Source::Local),
            false,
        );
        assert!(h.get("vary").is_none());
    }

    #[test]
    #[should_panic(expected = "HTTP token")]
    fn vary_rejects_non_tokens() {
        let _ = CachePolicy::public().vary("Accept Language");
    }

    #[test]
    #[should_panic(expected = "too many")]
    fn vary_is_bounded() {
        let mut p = CachePolicy::public();
        for name in ["a", "b", "c", "d", "e", "f", "g", "h", "i"] {
            p = p.vary(name);
        }
    }

    #[test]
    fn fresh_value_gets_the_configured_max_age() {
        let p = CachePolicy::public().max_age(secs(60)).s_maxage(secs(120));
        let h = headers(&p, &entry(0, 300, &[], Source::Body), false);
        assert_eq!(
            get(&h, "cache-control"),
            Some("public, max-age=60, s-maxage=120")
        );
        assert_eq!(get(&h, "age"), None, "the origin sends no Age");
    }

    #[test]
    fn freshness_is_capped_by_the_remaining_ttl_and_counted_from_now() {
        // 250.4 s old, 49.6 s left: the window is 49 s, from now (no Age).
        let e = entry(250_400, 300, &[], Source::Local);
        let p = CachePolicy::public().max_age(secs(60)).s_maxage(secs(600));
        let h = headers(&p, &e, false);
        assert_eq!(get(&h, "age"), None);
        assert_eq!(
            get(&h, "cache-control"),
            Some("public, max-age=49, s-maxage=49")
        );
        assert!(49 <= e.meta().expires_unix_ms.saturating_sub(NOW_MS) / 1000);
        // Smaller than the remaining TTL: the policy's window.
        let p = CachePolicy::public().max_age(secs(10));
        let h = headers(&p, &e, false);
        assert_eq!(get(&h, "cache-control"), Some("public, max-age=10"));
        // Uncapped: the policy's window even past the server's expiry.
        let p = CachePolicy::public().max_age(secs(60)).cap_to_ttl(false);
        assert_eq!(
            get(&headers(&p, &e, false), "cache-control"),
            Some("public, max-age=60")
        );
        // Expired on the server: no freshness.
        let e = entry(400_000, 300, &[], Source::Local);
        let p = CachePolicy::private().max_age(secs(60));
        assert_eq!(
            get(&headers(&p, &e, false), "cache-control"),
            Some("private, max-age=0")
        );
        // stale-while-revalidate / stale-if-error are not capped.
        let p = CachePolicy::public()
            .stale_while_revalidate(secs(30))
            .stale_if_error(secs(60));
        assert_eq!(
            get(&headers(&p, &e, false), "cache-control"),
            Some("public, max-age=0, stale-while-revalidate=30, stale-if-error=60")
        );
    }

    #[test]
    fn stale_fallbacks_get_no_freshness() {
        let e = entry(10_000, 300, &[], Source::Stale);
        for p in [
            CachePolicy::public().max_age(secs(60)),
            CachePolicy::public().max_age(secs(60)).cap_to_ttl(false),
        ] {
            let h = headers(&p, &e, false);
            assert_eq!(get(&h, "cache-control"), Some("public, max-age=0"));
            assert_eq!(get(&h, "x-cache-source"), Some("stale"));
        }
    }

    #[test]
    fn validators_and_source() {
        let p = CachePolicy::private().max_age(secs(30));
        let h = headers(&p, &entry(5_000, 60, &["t"], Source::Redis), false);
        assert_eq!(get(&h, "etag"), Some(&*ETag::from_u128(0xfeed).to_string()));
        // Created 5 s before NOW (…495.5 s): truncated to the second.
        let lm = UNIX_EPOCH + secs((NOW_MS - 5_000) / 1000);
        assert_eq!(
            get(&h, "last-modified"),
            Some(&*httpdate::fmt_http_date(lm))
        );
        assert_eq!(get(&h, "age"), None);
        assert_eq!(get(&h, "x-cache-source"), Some("redis"));
        // Private: no surrogate keys.
        assert!(h.get("xkey").is_none() && h.get("surrogate-key").is_none());
        let h = headers(
            &p.source_header(false),
            &entry(5_000, 60, &[], Source::Redis),
            false,
        );
        assert!(h.get("x-cache-source").is_none());
        // No ETag: none sent.
        let e = Entry::new((), None, now(), secs(1), vec![], Source::Body);
        let t = Timing::of(&e.meta(), e.source(), now());
        let mut h = HeaderMap::new();
        p.write(&t, &e.meta(), e.tags(), e.source(), false, &mut h);
        assert!(h.get("etag").is_none());
    }

    #[test]
    fn last_modified_waits_for_its_second_to_end() {
        let p = CachePolicy::private();
        // NOW is x.500; created at x.100: same second, so no Last-Modified yet.
        let h = headers(&p, &entry(400, 60, &[], Source::Body), false);
        assert!(h.get("last-modified").is_none());
        // Created at (x-1).900: the second is over.
        let h = headers(&p, &entry(600, 60, &[], Source::Body), false);
        let lm = UNIX_EPOCH + secs(NOW_MS / 1000 - 1);
        assert_eq!(
            get(&h, "last-modified"),
            Some(&*httpdate::fmt_http_date(lm))
        );
    }

    #[test]
    fn not_modified_headers() {
        let p = CachePolicy::public().max_age(secs(30));
        let h = headers(&p, &entry(5_000, 60, &["a"], Source::Local), true);
        for name in [
            "cache-control",
            "etag",
            "x-cache-source",
            "xkey",
            "surrogate-key",
        ] {
            assert!(h.contains_key(name), "{name}");
        }
        // With an ETag, Last-Modified is left out of a 304 (RFC 9110 §15.4.5)...
        assert!(h.get("last-modified").is_none());
        // ...and kept without one.
        let e = Entry::new("v", None, now() - secs(5), secs(60), vec![], Source::Local);
        let t = Timing::of(&e.meta(), e.source(), now());
        let mut h = HeaderMap::new();
        p.write(&t, &e.meta(), e.tags(), e.source(), true, &mut h);
        assert!(h.contains_key("last-modified"));
    }

    #[test]
    fn surrogate_keys_on_public_responses() {
        let e = entry(5_000, 60, &["users", "user:42", "a b,c"], Source::Local);
        let h = headers(&CachePolicy::public(), &e, false);
        assert_eq!(get(&h, "surrogate-key"), Some("users user:42 a%20b%2Cc"));
        assert_eq!(get(&h, "xkey"), Some("users user:42 a%20b%2Cc"));
        let only = |which| headers(&CachePolicy::public().surrogate_keys(which), &e, false);
        let h = only(SurrogateKeys::Xkey);
        assert!(h.contains_key("xkey") && !h.contains_key("surrogate-key"));
        let h = only(SurrogateKeys::SurrogateKey);
        assert!(!h.contains_key("xkey") && h.contains_key("surrogate-key"));
        let h = only(SurrogateKeys::Off);
        assert!(!h.contains_key("xkey") && !h.contains_key("surrogate-key"));
        let h = only(SurrogateKeys::CacheTag);
        assert_eq!(get(&h, "cache-tag"), Some("users,user:42,a%20b%2Cc"));
        assert!(!h.contains_key("xkey") && !h.contains_key("surrogate-key"));
        let h = only(SurrogateKeys::All);
        assert!(h.contains_key("xkey") && h.contains_key("surrogate-key"));
        assert!(h.contains_key("cache-tag"));
        // No tags: no headers.
        let h = headers(
            &CachePolicy::public(),
            &entry(5_000, 60, &[], Source::Local),
            false,
        );
        assert!(!h.contains_key("xkey") && !h.contains_key("surrogate-key"));
    }

    #[test]
    fn no_store_sends_nothing_that_contradicts_it() {
        let p = CachePolicy::public()
            .max_age(secs(60))
            .s_maxage(secs(60))
            .no_store();
        let h = headers(&p, &entry(5_000, 60, &["t"], Source::Local), false);
        assert_eq!(get(&h, "cache-control"), Some("no-store"));
        for name in ["last-modified", "age", "xkey", "surrogate-key"] {
            assert!(!h.contains_key(name), "{name}");
        }
        assert!(h.contains_key("etag"));
    }
}

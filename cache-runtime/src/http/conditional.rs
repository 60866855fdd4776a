//! [`Conditional`]: a request's `If-None-Match` / `If-Modified-Since`, evaluated per RFC 9110
//! §13.1.2, §13.1.3 and §13.2.2 against an entry's validators.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ::http::header::{self, HeaderMap, HeaderValue};
use ::http::Method;

use crate::ETag;

/// The outcome of evaluating a request's preconditions (RFC 9110 §13.2.2).
///
/// ```
/// use cache_runtime::http::{Conditional, Precondition};
/// use cache_runtime::ETag;
/// use http::{HeaderMap, Method};
///
/// let tag = ETag::of(b"v");
/// let mut h = HeaderMap::new();
/// h.insert("if-none-match", tag.to_string().parse().unwrap());
/// let get = Conditional::new(&Method::GET, &h);
/// assert_eq!(get.evaluate(Some(tag), None), Precondition::NotModified);
/// let put = Conditional::new(&Method::PUT, &h);
/// assert_eq!(put.evaluate(Some(tag), None), Precondition::Failed);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// No precondition stops the request: send the full response.
    Proceed,
    /// A `GET`/`HEAD` whose copy is current: answer `304 Not Modified` without content.
    NotModified,
    /// Another method whose `If-None-Match` matched: answer `412 Precondition Failed`.
    Failed,
}

/// A request's conditional headers, parsed once: extract it from the request (with the `axum`
/// feature it is an extractor), then answer with [`respond`](super::respond) or the axum
/// helpers, or evaluate it yourself with [`evaluate`](Self::evaluate).
///
/// The rules (RFC 9110):
///
/// * `If-None-Match` takes precedence: when present, `If-Modified-Since` is ignored.
/// * `If-None-Match` is a comma-separated list (several header lines combine) compared with
///   the **weak** comparison function: `W/"x"` matches `"x"` and vice versa; opaque tags are
///   compared octet by octet. `*` matches any current representation. Malformed members are
///   ignored (the others still count), and a field of only malformed members matches nothing.
/// * A match answers `304` to `GET`/`HEAD` and `412` to other methods.
/// * `If-Modified-Since` only counts for `GET`/`HEAD`, with exactly one field line holding a
///   valid HTTP-date (IMF-fixdate, RFC 850 or asctime); a date later than the server's clock is
///   ignored as well (it cannot come from a `Last-Modified` this server sent, and trusting it
///   could validate a copy older than the current value). Times compare at second precision:
///   `Last-Modified` is truncated to whole seconds.
///
/// ```
/// use cache_runtime::http::Conditional;
/// use cache_runtime::ETag;
/// use http::{HeaderMap, Method};
///
/// let tag = ETag::of(b"profile");
/// let mut h = HeaderMap::new();
/// h.insert("if-none-match", format!("\"other\", W/{tag}").parse().unwrap());
/// assert!(Conditional::new(&Method::GET, &h).not_modified(Some(tag), None));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conditional {
    method: Method,
    if_none_match: Option<IfNoneMatch>,
    if_modified_since: Option<SystemTime>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum IfNoneMatch {
    /// `*`.
    Any,
    /// The listed tags that can match one of ours (others can never match, so are dropped;
    /// the field still counts as present).
    Tags(Vec<ETag>),
}

impl Default for Conditional {
    /// A `GET` without conditions.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// assert!(!Conditional::default().is_conditional());
    /// ```
    fn default() -> Self {
        Conditional {
            method: Method::GET,
            if_none_match: None,
            if_modified_since: None,
        }
    }
}

impl Conditional {
    /// Parses the conditional headers of a request with this method.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// use http::{HeaderMap, Method};
    /// let mut h = HeaderMap::new();
    /// h.insert("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
    /// assert!(Conditional::new(&Method::GET, &h).is_conditional());
    /// ```
    pub fn new(method: &Method, headers: &HeaderMap) -> Self {
        let mut inm = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
        let if_none_match = inm.peek().is_some().then(|| parse_if_none_match(inm));
        let mut ims = headers.get_all(header::IF_MODIFIED_SINCE).iter();
        let if_modified_since = match (ims.next(), ims.next()) {
            (Some(v), None) => v
                .to_str()
                .ok()
                .and_then(|s| httpdate::parse_http_date(s.trim()).ok()),
            _ => None,
        };
        Conditional {
            method: method.clone(),
            if_none_match,
            if_modified_since,
        }
    }

    /// Parses the conditional headers of a request's head.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// let (parts, ()) = http::Request::head("/users/1")
    ///     .header("if-none-match", "*")
    ///     .body(())
    ///     .unwrap()
    ///     .into_parts();
    /// let c = Conditional::from_parts(&parts);
    /// assert!(c.is_head() && c.is_conditional());
    /// ```
    pub fn from_parts(parts: &::http::request::Parts) -> Self {
        Self::new(&parts.method, &parts.headers)
    }

    /// Parses the conditional headers of a request.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// let req = http::Request::get("/users/1").body(()).unwrap();
    /// assert!(!Conditional::from_request(&req).is_conditional());
    /// ```
    pub fn from_request<B>(req: &::http::Request<B>) -> Self {
        Self::new(req.method(), req.headers())
    }

    /// The request's method.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// assert_eq!(Conditional::default().method(), http::Method::GET);
    /// ```
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Whether the request is a `HEAD` (its response carries the headers of a `GET`, no
    /// content; frameworks such as axum and hyper drop the body themselves).
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// use http::{HeaderMap, Method};
    /// assert!(Conditional::new(&Method::HEAD, &HeaderMap::new()).is_head());
    /// ```
    pub fn is_head(&self) -> bool {
        self.method == Method::HEAD
    }

    /// Whether the request carries a precondition that can change the answer.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// use http::{HeaderMap, Method};
    /// let mut h = HeaderMap::new();
    /// h.insert("if-modified-since", "not a date".parse().unwrap());
    /// assert!(!Conditional::new(&Method::GET, &h).is_conditional());
    /// ```
    pub fn is_conditional(&self) -> bool {
        self.if_none_match.is_some() || (self.safe() && self.if_modified_since.is_some())
    }

    /// Evaluates the preconditions against the selected representation's validators: its
    /// entity tag and last modification time (truncated to seconds here; pass `None` when
    /// it has none).
    ///
    /// ```
    /// use cache_runtime::http::{Conditional, Precondition};
    /// use http::{HeaderMap, Method};
    /// use std::time::{Duration, UNIX_EPOCH};
    ///
    /// let mut h = HeaderMap::new();
    /// h.insert("if-modified-since", "Sun, 06 Nov 1994 08:49:37 GMT".parse().unwrap());
    /// let c = Conditional::new(&Method::GET, &h);
    /// let at = UNIX_EPOCH + Duration::from_secs(784111777); // that date
    /// assert_eq!(c.evaluate(None, Some(at)), Precondition::NotModified);
    /// assert_eq!(
    ///     c.evaluate(None, Some(at + Duration::from_millis(999))),
    ///     Precondition::NotModified
    /// );
    /// assert_eq!(c.evaluate(None, Some(at + Duration::from_secs(1))), Precondition::Proceed);
    /// ```
    pub fn evaluate(&self, etag: Option<ETag>, last_modified: Option<SystemTime>) -> Precondition {
        self.evaluate_at(etag, last_modified, crate::clock::now_system())
    }

    /// Whether a `GET`/`HEAD` may be answered `304 Not Modified`:
    /// [`evaluate`](Self::evaluate) `== Precondition::NotModified`.
    ///
    /// ```
    /// use cache_runtime::http::Conditional;
    /// use cache_runtime::ETag;
    /// use http::{HeaderMap, Method};
    /// let mut h = HeaderMap::new();
    /// h.insert("if-none-match", "*".parse().unwrap());
    /// assert!(Conditional::new(&Method::GET, &h).not_modified(Some(ETag::of(b"x")), None));
    /// ```
    pub fn not_modified(&self, etag: Option<ETag>, last_modified: Option<SystemTime>) -> bool {
        self.evaluate(etag, last_modified) == Precondition::NotModified
    }

    pub(crate) fn evaluate_at(
        &self,
        etag: Option<ETag>,
        last_modified: Option<SystemTime>,
        now: SystemTime,
    ) -> Precondition {
        // §13.2.2 step 3: If-None-Match, when present, decides alone.
        if let Some(inm) = &self.if_none_match {
            let matched = match inm {
                IfNoneMatch::Any => true,
                IfNoneMatch::Tags(tags) => etag.is_some_and(|e| tags.contains(&e)),
            };
            return match (matched, self.safe()) {
                (false, _) => Precondition::Proceed,
                (true, true) => Precondition::NotModified,
                (true, false) => Precondition::Failed,
            };
        }
        // Step 4: If-Modified-Since, GET/HEAD only.
        if let (true, Some(since), Some(lm)) = (self.safe(), self.if_modified_since, last_modified)
        {
            if since <= now && truncate_to_secs(lm) <= since {
                return Precondition::NotModified;
            }
        }
        Precondition::Proceed
    }

    fn safe(&self) -> bool {
        self.method == Method::GET || self.method == Method::HEAD
    }
}

fn truncate_to_secs(t: SystemTime) -> SystemTime {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => UNIX_EPOCH + Duration::from_secs(d.as_secs()),
        Err(_) => t,
    }
}

fn parse_if_none_match<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> IfNoneMatch {
    let mut tags = Vec::new();
    for v in values {
        for member in Members::new(v.as_bytes()) {
            match member {
                Member::Any => return IfNoneMatch::Any,
                Member::Tag(opaque) => {
                    if let Some(t) = our_tag(opaque) {
                        tags.push(t);
                    }
                }
            }
        }
    }
    IfNoneMatch::Tags(tags)
}

/// Our tags are 32 lowercase hex digits; opaque tags compare octet by octet, so nothing
/// else can match one.
fn our_tag(opaque: &[u8]) -> Option<ETag> {
    if opaque.len() != 32
        || !opaque
            .iter()
            .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return None;
    }
    let hex = std::str::from_utf8(opaque).ok()?;
    u128::from_str_radix(hex, 16).ok().map(ETag::from_u128)
}

#[derive(Debug, PartialEq, Eq)]
enum Member<'a> {
    Any,
    /// An entity tag's opaque part, without quotes; weakness is irrelevant to the weak
    /// comparison `If-None-Match` uses.
    Tag(&'a [u8]),
}

/// The well-formed members of an `If-None-Match` field line: `*` or
/// `[W/] DQUOTE *etagc DQUOTE`, separated by commas with optional whitespace; a malformed
/// member is skipped up to the next comma.
struct Members<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Members<'a> {
    fn new(b: &'a [u8]) -> Self {
        Members { b, i: 0 }
    }

    fn skip_ows(&mut self) {
        while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t') {
            self.i += 1;
        }
    }

    fn member(&mut self) -> Option<Member<'a>> {
        let b = self.b;
        if b[self.i] == b'*' {
            self.i += 1;
            return Some(Member::Any);
        }
        if b[self.i..].starts_with(b"W/") {
            self.i += 2;
        }
        if self.i >= b.len() || b[self.i] != b'"' {
            return None;
        }
        self.i += 1;
        let start = self.i;
        while self.i < b.len() {
            match b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Some(Member::Tag(&b[start..self.i - 1]));
                }
                0x21 | 0x23..=0x7e | 0x80..=0xff => self.i += 1,
                _ => return None,
            }
        }
        None
    }
}

impl<'a> Iterator for Members<'a> {
    type Item = Member<'a>;

    fn next(&mut self) -> Option<Member<'a>> {
        loop {
            while self.i < self.b.len() && matches!(self.b[self.i], b' ' | b'\t' | b',') {
                self.i += 1;
            }
            if self.i >= self.b.len() {
                return None;
            }
            let m = self.member();
            self.skip_ows();
            if m.is_some() && (self.i >= self.b.len() || self.b[self.i] == b',') {
                return m;
            }
            // Malformed: skip to the next comma.
            while self.i < self.b.len() && self.b[self.i] != b',' {
                self.i += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(s: &str) -> Vec<Member<'_>> {
        Members::new(s.as_bytes()).collect()
    }

    fn cond(method: Method, headers: &[(&str, &str)]) -> Conditional {
        let mut h = HeaderMap::new();
        for (k, v) in headers {
            h.append(
                ::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        Conditional::new(&method, &h)
    }

    fn get(headers: &[(&str, &str)]) -> Conditional {
        cond(Method::GET, headers)
    }

    fn tag(n: u128) -> ETag {
        ETag::from_u128(n)
    }

    const NOW: u64 = 1_700_000_000;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    fn eval(c: &Conditional, etag: Option<ETag>, lm: Option<SystemTime>) -> Precondition {
        c.evaluate_at(etag, lm, at(NOW))
    }

    #[test]
    fn list_syntax() {
        assert_eq!(members(""), vec![]);
        assert_eq!(members(" , ,"), vec![]);
        assert_eq!(members("\"a\""), vec![Member::Tag(b"a")]);
        assert_eq!(
            members("\"a\", W/\"b\" ,\t\"\""),
            vec![Member::Tag(b"a"), Member::Tag(b"b"), Member::Tag(b"")]
        );
        // A comma inside an opaque tag is part of it.
        assert_eq!(
            members("\"a,b\", \"c\""),
            vec![Member::Tag(b"a,b"), Member::Tag(b"c")]
        );
        assert_eq!(members("*"), vec![Member::Any]);
        assert_eq!(members(" * "), vec![Member::Any]);
    }

    #[test]
    fn malformed_members_are_skipped() {
        // Unquoted, lowercase weak prefix, junk after the tag, unterminated.
        assert_eq!(members("abc, \"ok\""), vec![Member::Tag(b"ok")]);
        assert_eq!(members("w/\"x\", \"ok\""), vec![Member::Tag(b"ok")]);
        assert_eq!(members("\"x\"junk, \"ok\""), vec![Member::Tag(b"ok")]);
        assert_eq!(members("W/ \"x\", \"ok\""), vec![Member::Tag(b"ok")]);
        assert_eq!(members("\"ok\", \"unterminated"), vec![Member::Tag(b"ok")]);
        // A space is not an etagc: the member is malformed.
        assert_eq!(members("\"a b\", \"ok\""), vec![Member::Tag(b"ok")]);
        assert_eq!(members("**, \"ok\""), vec![Member::Tag(b"ok")]);
    }

    #[test]
    fn if_none_match_strong_and_weak_match() {
        let t = tag(0xabc);
        let strong = t.to_string();
        let weak = format!("W/{t}");
        for v in [strong.as_str(), weak.as_str()] {
            assert_eq!(
                eval(&get(&[("if-none-match", v)]), Some(t), None),
                Precondition::NotModified
            );
        }
        let other = tag(0xabd).to_string();
        assert_eq!(
            eval(&get(&[("if-none-match", &other)]), Some(t), None),
            Precondition::Proceed
        );
    }

    #[test]
    fn if_none_match_lists_and_field_lines() {
        let t = tag(7);
        let list = format!("\"x\", {}, W/\"y\"", tag(8));
        assert_eq!(
            eval(&get(&[("if-none-match", &list)]), Some(t), None),
            Precondition::Proceed
        );
        let list = format!("\"x\", junk, W/{t}");
        assert_eq!(
            eval(&get(&[("if-none-match", &list)]), Some(t), None),
            Precondition::NotModified
        );
        // Several field lines form one list.
        let h = [
            ("if-none-match", "\"x\""),
            ("if-none-match", &t.to_string()),
        ];
        assert_eq!(eval(&get(&h), Some(t), None), Precondition::NotModified);
    }

    #[test]
    fn opaque_tags_compare_octet_by_octet() {
        let t = tag(0xabcdef);
        let upper = t.to_string().to_uppercase();
        assert_eq!(
            eval(&get(&[("if-none-match", &upper)]), Some(t), None),
            Precondition::Proceed
        );
    }

    #[test]
    fn star_matches_any_current_representation() {
        let c = get(&[("if-none-match", "*")]);
        assert_eq!(eval(&c, Some(tag(1)), None), Precondition::NotModified);
        assert_eq!(eval(&c, None, None), Precondition::NotModified);
        // `*` alongside tags (not valid syntax) is still honoured.
        let c = get(&[("if-none-match", "\"a\", *")]);
        assert_eq!(eval(&c, Some(tag(1)), None), Precondition::NotModified);
    }

    #[test]
    fn no_etag_never_matches_a_list() {
        let c = get(&[("if-none-match", &tag(1).to_string())]);
        assert_eq!(eval(&c, None, Some(at(NOW - 100))), Precondition::Proceed);
    }

    #[test]
    fn unsafe_methods_get_412() {
        let t = tag(3);
        for m in [Method::PUT, Method::POST, Method::DELETE, Method::PATCH] {
            let c = cond(m, &[("if-none-match", &t.to_string())]);
            assert_eq!(eval(&c, Some(t), None), Precondition::Failed);
            assert_eq!(eval(&c, Some(tag(4)), None), Precondition::Proceed);
        }
        let c = cond(Method::HEAD, &[("if-none-match", &t.to_string())]);
        assert_eq!(eval(&c, Some(t), None), Precondition::NotModified);
    }

    #[test]
    fn if_none_match_takes_precedence_over_if_modified_since() {
        let lm = at(NOW - 100);
        let ims = httpdate::fmt_http_date(at(NOW - 10));
        // IMS alone would say 304, but the tag does not match.
        let c = get(&[("if-none-match", "\"other\""), ("if-modified-since", &ims)]);
        assert_eq!(eval(&c, Some(tag(1)), Some(lm)), Precondition::Proceed);
        // An If-None-Match of only malformed members still counts as present.
        let c = get(&[("if-none-match", "junk"), ("if-modified-since", &ims)]);
        assert_eq!(eval(&c, Some(tag(1)), Some(lm)), Precondition::Proceed);
        // And a matching tag wins over an IMS that would say modified.
        let old = httpdate::fmt_http_date(at(NOW - 1000));
        let c = get(&[
            ("if-none-match", &tag(1).to_string()),
            ("if-modified-since", &old),
        ]);
        assert_eq!(eval(&c, Some(tag(1)), Some(lm)), Precondition::NotModified);
    }

    #[test]
    fn if_modified_since_dates() {
        let lm = at(NOW - 100);
        let c = |d: SystemTime| get(&[("if-modified-since", &httpdate::fmt_http_date(d))]);
        // Equal or later: not modified.
        assert_eq!(eval(&c(lm), None, Some(lm)), Precondition::NotModified);
        assert_eq!(
            eval(&c(at(NOW - 50)), None, Some(lm)),
            Precondition::NotModified
        );
        // Earlier: modified.
        assert_eq!(
            eval(&c(at(NOW - 101)), None, Some(lm)),
            Precondition::Proceed
        );
        // Second precision: Last-Modified's milliseconds are truncated.
        let lm_ms = lm + Duration::from_millis(900);
        assert_eq!(eval(&c(lm), None, Some(lm_ms)), Precondition::NotModified);
        // A date in the future (beyond the server's clock) is ignored.
        assert_eq!(
            eval(&c(at(NOW + 3600)), None, Some(lm)),
            Precondition::Proceed
        );
        // No modification date: ignored.
        assert_eq!(eval(&c(lm), Some(tag(1)), None), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_formats_and_invalid_values() {
        let lm = at(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        let now = at(NOW);
        for v in [
            "Sun, 06 Nov 1994 08:49:37 GMT",
            "Sunday, 06-Nov-94 08:49:37 GMT",
            "Sun Nov  6 08:49:37 1994",
        ] {
            let c = get(&[("if-modified-since", v)]);
            assert_eq!(
                c.evaluate_at(None, Some(lm), now),
                Precondition::NotModified,
                "{v}"
            );
        }
        for v in [
            "",
            "yesterday",
            "1994-11-06T08:49:37Z",
            "Sun, 06 Nov 1994 08:49:37 PST",
        ] {
            let c = get(&[("if-modified-since", v)]);
            assert!(!c.is_conditional(), "{v}");
            assert_eq!(
                c.evaluate_at(None, Some(lm), now),
                Precondition::Proceed,
                "{v}"
            );
        }
        // More than one field line: ignored.
        let d = "Sun, 06 Nov 1994 08:49:37 GMT";
        let c = get(&[("if-modified-since", d), ("if-modified-since", d)]);
        assert_eq!(c.evaluate_at(None, Some(lm), now), Precondition::Proceed);
    }

    #[test]
    fn if_modified_since_only_for_get_and_head() {
        let lm = at(NOW - 100);
        let d = httpdate::fmt_http_date(lm);
        let h = [("if-modified-since", d.as_str())];
        assert_eq!(
            eval(&cond(Method::HEAD, &h), None, Some(lm)),
            Precondition::NotModified
        );
        for m in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
            let c = cond(m, &h);
            assert!(!c.is_conditional());
            assert_eq!(eval(&c, None, Some(lm)), Precondition::Proceed);
        }
    }

    #[test]
    fn no_headers_proceed() {
        let c = get(&[]);
        assert!(!c.is_conditional());
        assert_eq!(c, Conditional::default());
        assert_eq!(eval(&c, Some(tag(1)), Some(at(1))), Precondition::Proceed);
    }
}

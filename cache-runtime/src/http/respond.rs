//! [`respond`]: a cached entry as an `http::Response`, `304` included, for any framework.

use std::time::SystemTime;

use ::http::{header, HeaderValue, Response, StatusCode};

use super::conditional::{Conditional, Precondition};
use super::policy::{CachePolicy, Timing};
use crate::Entry;

/// Answers a request for a cached entry: `200` with the content built by `body` and every
/// caching header of the policy, or, when the request's copy is current, `304 Not Modified`
/// without content (and `body` is not called).
///
/// * `200`: `Cache-Control`, `Vary`, `ETag`, `Last-Modified`, surrogate keys and
///   `x-cache-source`, as [`CachePolicy::headers`] describes.
/// * `304` (RFC 9110 §15.4.5): the fields a cache needs to update its stored copy:
///   `Cache-Control`, `Vary`, `ETag`, surrogate keys, `x-cache-source`, and
///   `Last-Modified` only when there is no `ETag`. No `Content-Type`, no `Content-Length`.
/// * `412 Precondition Failed` for a method other than `GET`/`HEAD` whose `If-None-Match`
///   matched; no content.
/// * With a `no-store` policy, conditional headers are not honoured (always `200`).
///
/// The content is `None` exactly when no content may be sent. For `HEAD` the content is
/// still built (so a framework can compute `Content-Length`); drop it if yours does not.
///
/// ```
/// use cache_runtime::http::{respond, CachePolicy, Conditional};
/// use cache_runtime::{ETag, Entry, Source};
/// use http::{HeaderMap, Method, StatusCode};
/// use std::time::{Duration, SystemTime};
///
/// let entry = Entry::new(
///     "hello".to_string(),
///     Some(ETag::of(b"hello")),
///     SystemTime::now() - Duration::from_secs(3),
///     Duration::from_secs(60),
///     vec![],
///     Source::Local,
/// );
/// const POLICY: CachePolicy = CachePolicy::private();
///
/// // First request: 200 with the ETag.
/// let r = respond(&Conditional::default(), &entry, &POLICY, |v| v.clone().into_bytes());
/// assert_eq!(r.status(), StatusCode::OK);
/// assert_eq!(r.body().as_deref(), Some(&b"hello"[..]));
/// let etag = r.headers()["etag"].clone();
///
/// // Revalidation: 304, and the body closure does not run.
/// let mut h = HeaderMap::new();
/// h.insert("if-none-match", etag.clone());
/// let cond = Conditional::new(&Method::GET, &h);
/// let r = respond(&cond, &entry, &POLICY, |_| -> Vec<u8> { unreachable!() });
/// assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
/// assert!(r.body().is_none());
/// assert_eq!(r.headers()["etag"], etag);
/// ```
pub fn respond<V, B>(
    cond: &Conditional,
    entry: &Entry<V>,
    policy: &CachePolicy,
    body: impl FnOnce(&V) -> B,
) -> Response<Option<B>> {
    respond_at(cond, entry, policy, body, crate::clock::now_system())
}

pub(crate) fn respond_at<V, B>(
    cond: &Conditional,
    entry: &Entry<V>,
    policy: &CachePolicy,
    body: impl FnOnce(&V) -> B,
    now: SystemTime,
) -> Response<Option<B>> {
    let meta = entry.meta();
    let t = Timing::of(&meta, entry.source(), now);
    let pre = if policy.is_no_store() {
        Precondition::Proceed
    } else {
        cond.evaluate_at(meta.etag, t.last_modified, now)
    };
    match pre {
        Precondition::Proceed => {
            let mut r = Response::new(Some(body(entry.value())));
            policy.write(
                &t,
                &meta,
                entry.tags(),
                entry.source(),
                false,
                r.headers_mut(),
            );
            r
        }
        Precondition::NotModified => {
            let mut r = Response::new(None);
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            policy.write(
                &t,
                &meta,
                entry.tags(),
                entry.source(),
                true,
                r.headers_mut(),
            );
            r
        }
        Precondition::Failed => {
            let mut r = Response::new(None);
            *r.status_mut() = StatusCode::PRECONDITION_FAILED;
            if let Some(etag) = meta.etag {
                r.headers_mut().insert(
                    header::ETAG,
                    HeaderValue::try_from(etag.to_string()).expect("an ETag is visible ASCII"),
                );
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ETag, Source};
    use ::http::{HeaderMap, Method};
    use std::time::{Duration, UNIX_EPOCH};

    const NOW_MS: u64 = 1_700_000_000_500;

    fn now() -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(NOW_MS)
    }

    fn entry(age_ms: u64) -> Entry<String> {
        Entry::new(
            "v".to_string(),
            Some(ETag::from_u128(42)),
            now() - Duration::from_millis(age_ms),
            Duration::from_secs(60),
            vec!["t".into()],
            Source::Local,
        )
    }

    fn cond(method: Method, name: &str, value: &str) -> Conditional {
        let mut h = HeaderMap::new();
        h.insert(
            ::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        Conditional::new(&method, &h)
    }

    fn run(
        c: &Conditional,
        e: &Entry<String>,
        p: &CachePolicy,
    ) -> (Response<Option<String>>, bool) {
        let mut called = false;
        let r = respond_at(
            c,
            e,
            p,
            |v| {
                called = true;
                v.clone()
            },
            now(),
        );
        (r, called)
    }

    #[test]
    fn ok_then_not_modified_without_calling_the_body() {
        let e = entry(3_000);
        let p = CachePolicy::public().max_age(Duration::from_secs(10));
        let (r, called) = run(&Conditional::default(), &e, &p);
        assert!(called);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.body().as_deref(), Some("v"));
        let etag = r.headers()["etag"].to_str().unwrap().to_string();

        let (r, called) = run(&cond(Method::GET, "if-none-match", &etag), &e, &p);
        assert!(!called);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
        assert!(r.body().is_none());
        assert_eq!(r.headers()["etag"], etag.as_str());
        assert_eq!(r.headers()["cache-control"], "public, max-age=10");
        assert!(r.headers().get("content-type").is_none());

        let weak = format!("W/{etag}");
        let (r, _) = run(&cond(Method::HEAD, "if-none-match", &weak), &e, &p);
        assert_eq!(r.status(), StatusCode::NOT_MODIFIED);
    }

    #[test]
    fn if_modified_since_uses_the_rendered_last_modified() {
        let p = CachePolicy::private();
        // Created 3 s ago: Last-Modified is that second; an IMS of it is a 304.
        let e = entry(3_000);
        let lm = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW_MS / 1000 - 3));
        let (r, called) = run(&cond(Method::GET, "if-modified-since", &lm), &e, &p);
        assert_eq!((r.status(), called), (StatusCode::NOT_MODIFIED, false));
        assert!(
            r.headers().get("last-modified").is_none(),
            "an ETag is there"
        );
        // Created within the current second: no Last-Modified, so IMS cannot validate it,
        // even with a date equal to the creation second.
        let e = entry(200);
        let same = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(NOW_MS / 1000));
        let (r, called) = run(&cond(Method::GET, "if-modified-since", &same), &e, &p);
        assert_eq!((r.status(), called), (StatusCode::OK, true));
        assert!(r.headers().get("last-modified").is_none());
    }

    #[test]
    fn precondition_failed_for_writes() {
        let e = entry(3_000);
        let etag = ETag::from_u128(42).to_string();
        let (r, called) = run(
            &cond(Method::PUT, "if-none-match", &etag),
            &e,
            &CachePolicy::private(),
        );
        assert_eq!(
            (r.status(), called),
            (StatusCode::PRECONDITION_FAILED, false)
        );
        assert!(r.body().is_none());
        let (r, _) = run(
            &cond(Method::PUT, "if-none-match", "*"),
            &e,
            &CachePolicy::private(),
        );
        assert_eq!(r.status(), StatusCode::PRECONDITION_FAILED);
    }

    #[test]
    fn no_store_always_sends_the_content() {
        let e = entry(3_000);
        let (r, called) = run(
            &cond(Method::GET, "if-none-match", "*"),
            &e,
            &CachePolicy::no_store_at_all(),
        );
        assert_eq!((r.status(), called), (StatusCode::OK, true));
        assert_eq!(r.headers()["cache-control"], "no-store");
    }

    #[test]
    fn a_different_tag_gets_the_content() {
        let e = entry(3_000);
        let other = ETag::from_u128(43).to_string();
        let (r, called) = run(
            &cond(Method::GET, "if-none-match", &other),
            &e,
            &CachePolicy::private(),
        );
        assert_eq!((r.status(), called), (StatusCode::OK, true));
    }
}

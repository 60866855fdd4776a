//! The axum integration (feature `axum`): [`Conditional`] as an extractor, and responses
//! built from an [`Entry`] in one line.

use std::borrow::Borrow;
use std::convert::Infallible;

use ::axum::body::{Body, Bytes};
use ::axum::extract::FromRequestParts;
use ::axum::response::{IntoResponse, Response};
use ::http::header::{self, HeaderValue};
use ::http::request::Parts;
use ::http::StatusCode;

use super::{respond, CachePolicy, Conditional};
use crate::Entry;

/// Extracts the request's conditional headers; never rejects.
///
/// ```
/// use axum::routing::get;
/// use cache_runtime::http::Conditional;
///
/// async fn handler(cond: Conditional) -> String {
///     format!("conditional: {}", cond.is_conditional())
/// }
/// let _app: axum::Router = axum::Router::new().route("/", get(handler));
/// ```
impl<S: Send + Sync> FromRequestParts<S> for Conditional {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(Conditional::from_parts(parts))
    }
}

impl Conditional {
    /// The entry as a JSON response (`application/json`, serde_json), with the policy's
    /// caching headers, or a `304 Not Modified` without serializing anything when the
    /// request's copy is current. `HEAD` works through axum's `get` routes (axum keeps the
    /// `Content-Length` and drops the content). A value that fails to serialize is a `500`.
    ///
    /// The handler idiom, for a function cached with `#[cached]` (whose generated
    /// `<fn>_entry` returns the value with the validators computed when it was stored):
    ///
    /// ```
    /// use axum::{body::Body, extract::Path, http::Request, response::Response, routing::get, Router};
    /// use cache_runtime::cached;
    /// use cache_runtime::http::{CachePolicy, Conditional};
    /// use std::time::Duration;
    /// use tower::ServiceExt;
    ///
    /// #[derive(Clone, serde::Serialize, serde::Deserialize)]
    /// struct User { id: u64, name: String }
    ///
    /// #[cached(ttl = 60, key = "doc:user:<id>", etag = true)]
    /// async fn get_user(id: u64) -> Result<User, String> {
    ///     Ok(User { id, name: "Ada".into() })
    /// }
    ///
    /// const USER: CachePolicy = CachePolicy::private().max_age(Duration::from_secs(30));
    ///
    /// async fn user(cond: Conditional, Path(id): Path<u64>) -> Result<Response, String> {
    ///     Ok(cond.json(get_user_entry(id).await?, &USER))
    /// }
    ///
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let app = Router::new().route("/users/{id}", get(user));
    /// let r = app.clone().oneshot(Request::get("/users/1").body(Body::empty()).unwrap()).await.unwrap();
    /// assert_eq!(r.status(), 200);
    /// assert_eq!(r.headers()["content-type"], "application/json");
    /// assert_eq!(r.headers()["vary"], "Authorization");
    /// let etag = r.headers()["etag"].clone();
    ///
    /// let again = Request::get("/users/1").header("if-none-match", etag).body(Body::empty()).unwrap();
    /// let r = app.oneshot(again).await.unwrap();
    /// assert_eq!(r.status(), 304);
    /// assert!(r.headers().get("content-length").is_none());
    /// assert_eq!(get_user_cache().stats().body_calls, 1); // the 304 came from the cache
    /// # });
    /// ```
    pub fn json<V: serde::Serialize>(
        &self,
        entry: impl Borrow<Entry<V>>,
        policy: &CachePolicy,
    ) -> Response {
        self.response(entry, policy, |v| match serde_json::to_vec(v) {
            Ok(bytes) => (
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                )],
                bytes,
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "cached value failed to serialize as JSON");
                StatusCode::INTERNAL_SERVER_ERROR.into_response()
            }
        })
    }

    /// The entry as a response whose content `body` builds (any [`IntoResponse`]: a
    /// `String`, `Html`, a tuple with headers...), with the policy's caching headers; or a
    /// `304 Not Modified` without calling `body`. The caching headers replace those of the
    /// same name `body` set (`Vary` is appended to); a non-2xx response from `body` is
    /// returned as it is, without caching headers.
    ///
    /// ```
    /// use axum::response::Html;
    /// use cache_runtime::http::{CachePolicy, Conditional};
    /// use cache_runtime::{Entry, ETag, Source};
    /// use std::time::{Duration, SystemTime};
    ///
    /// let e = Entry::new("Ada".to_string(), Some(ETag::of(b"Ada")), SystemTime::now(),
    ///     Duration::from_secs(60), vec![], Source::Body);
    /// let r = Conditional::default().response(&e, &CachePolicy::public(), |name| {
    ///     Html(format!("<h1>{name}</h1>"))
    /// });
    /// assert_eq!(r.status(), 200);
    /// assert_eq!(r.headers()["content-type"], "text/html; charset=utf-8");
    /// assert_eq!(r.headers()["cache-control"], "public, max-age=0");
    /// ```
    pub fn response<V, R: IntoResponse>(
        &self,
        entry: impl Borrow<Entry<V>>,
        policy: &CachePolicy,
        body: impl FnOnce(&V) -> R,
    ) -> Response {
        let (parts, content) =
            respond(self, entry.borrow(), policy, |v| body(v).into_response()).into_parts();
        match content {
            Some(mut inner) => {
                if !inner.status().is_success() {
                    return inner;
                }
                let headers = inner.headers_mut();
                for (name, value) in &parts.headers {
                    if name == header::VARY {
                        headers.append(name, value.clone());
                    } else {
                        headers.insert(name, value.clone());
                    }
                }
                inner
            }
            // No content: a body of unknown length, so that axum does not add
            // `Content-Length: 0`, which a 304 must not carry (RFC 9110 §8.6).
            None => Response::from_parts(parts, no_content()),
        }
    }
}

fn no_content() -> Body {
    Body::from_stream(futures_util::stream::empty::<Result<Bytes, Infallible>>())
}

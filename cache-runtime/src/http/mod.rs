//! HTTP caching (layer 3): `Cache-Control`, `Vary`, validators and conditional requests for
//! cached values, over plain [`http`] types, with an optional axum integration.
//! Enabled by the `http` feature (`axum` adds the integration).
//!
//! * [`CachePolicy`] says who may keep a response and for how long, and renders the headers
//!   from an [`Entry`](crate::Entry): its strong `ETag` (computed once, when the value was
//!   stored), `Last-Modified` from its creation time, freshness capped by its
//!   remaining TTL, its tags as surrogate keys.
//! * [`Conditional`] is a request's `If-None-Match` / `If-Modified-Since`, evaluated per
//!   RFC 9110.
//! * [`respond`] builds the `200` or the `304 Not Modified` (without calling the body
//!   closure) as an `http::Response`, for any framework.
//! * With the `axum` feature, `Conditional` is an extractor and answers in one line:
//!
//! ```
//! # #[cfg(feature = "axum")] {
//! use axum::extract::Path;
//! use axum::response::Response;
//! use cache_runtime::cached;
//! use cache_runtime::http::{CachePolicy, Conditional};
//! use std::time::Duration;
//!
//! #[cached(ttl = "5m", key = "mod:user:<id>", etag = true)]
//! async fn get_user(id: u64) -> Result<String, String> {
//!     Ok(format!("user {id}"))
//! }
//!
//! const USER: CachePolicy = CachePolicy::private().max_age(Duration::from_secs(30));
//!
//! async fn user(cond: Conditional, Path(id): Path<u64>) -> Result<Response, String> {
//!     Ok(cond.json(get_user_entry(id).await?, &USER))
//! }
//! let _app: axum::Router = axum::Router::new().route("/users/{id}", axum::routing::get(user));
//! # }
//! ```
//!
//! See `docs/HTTP.md` for the rules implemented and what is left out.

#[cfg(feature = "axum")]
mod axum;
mod conditional;
mod policy;
mod respond;

pub use conditional::{Conditional, Precondition};
pub use policy::{
    source_name, CachePolicy, SurrogateKeys, CACHE_TAG, MAX_VARY, SURROGATE_KEY, XKEY,
    X_CACHE_SOURCE,
};
pub use respond::respond;

//! Parameters written as patterns, as axum handlers and destructuring code write them:
//! `Path(id): Path<u64>`, `State(state): State<AppState>`, `Point { x, y }: Point`,
//! `(a, b): (u8, u8)`. The bindings are what keys, templates and `skip(...)` name; the
//! companions take the argument whole (`invalidate_user(Path(9))`). Bodies of one
//! expression, with and without patterns, compile without a warning (`deny(warnings)`):
//! the destructuring goes inside the body's own braces.
#![deny(warnings)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use axum::extract::{Path, State};
use cache_runtime::cached;

#[derive(Clone)]
struct AppState {
    queries: Arc<AtomicU32>,
}

/// An axum handler as written: extractors destructured, the state skipped.
#[cached(ttl = 60, key = "user:<id>", skip(state), tags = ["user-tag:<id>"])]
async fn user(State(state): State<AppState>, Path(id): Path<u64>) -> String {
    state.queries.fetch_add(1, Ordering::SeqCst);
    format!("user{id}")
}

struct Point {
    x: i32,
    y: i32,
    label: String,
}

static RUNS: AtomicU32 = AtomicU32::new(0);

/// A struct pattern with a skipped binding, a tuple pattern with `mut`, the default key.
#[cached(ttl = 60, skip(label))]
fn distance(Point { x, y, label }: Point, (mut a, b): (i32, i32)) -> i64 {
    RUNS.fetch_add(1, Ordering::SeqCst);
    let _ = label;
    a += b;
    (x * x + y * y) as i64 + a as i64
}

struct Repo {
    tenant: u32,
    runs: AtomicU32,
}

impl Repo {
    /// A method: the wrapper hands the argument whole to `by_pair_uncached`.
    #[cached(ttl = 60, key = "pair:<self.tenant>:<left>:<right>")]
    fn by_pair(&self, (left, right): (u8, u8)) -> u32 {
        self.runs.fetch_add(1, Ordering::SeqCst);
        self.tenant + left as u32 * 10 + right as u32
    }
}

// One line each, as written (rustc's `unused_braces` looks at one-line blocks only).
#[rustfmt::skip]
mod one_line {
    use cache_runtime::cached;

    #[cached(ttl = 60)]
    pub fn one_expression(x: u64) -> u64 { x * 2 }

    #[cached(ttl = 60)]
    pub async fn one_expression_pattern((a, b): (u64, u64)) -> u64 { a + b }
}
use one_line::{lookup_one_expression_pattern, one_expression, one_expression_pattern};

#[tokio::test]
async fn one_expression_bodies() {
    assert_eq!(one_expression(2), 4);
    assert_eq!(one_expression_pattern((1, 2)).await, 3);
    assert_eq!(lookup_one_expression_pattern((1, 2)).await, Some(3));
}

#[tokio::test]
async fn an_axum_handler_with_extractor_patterns() {
    let state = AppState {
        queries: Arc::new(AtomicU32::new(0)),
    };
    assert_eq!(user(State(state.clone()), Path(9)).await, "user9");
    assert_eq!(user(State(state.clone()), Path(9)).await, "user9");
    assert_eq!(
        state.queries.load(Ordering::SeqCst),
        1,
        "the second call was a hit"
    );
    assert_eq!(lookup_user(Path(9)).await, Some("user9".to_string()));
    assert_eq!(user_cache().redis_key("user:9"), None, "local only");
    invalidate_user(Path(9)).await.unwrap();
    assert_eq!(lookup_user(Path(9)).await, None);
    assert_eq!(user(State(state.clone()), Path(9)).await, "user9");
    assert_eq!(state.queries.load(Ordering::SeqCst), 2);
    // Tags name the bindings too.
    cache_runtime::invalidate_tag("user-tag:9").await.unwrap();
    assert_eq!(lookup_user(Path(9)).await, None);
    // Mounted on a router, as a handler.
    let _app: axum::Router = axum::Router::new()
        .route("/users/{id}", axum::routing::get(user))
        .with_state(state);
}

#[test]
fn struct_and_tuple_patterns_key_by_their_bindings() {
    let p = |x, y, label: &str| Point {
        x,
        y,
        label: label.into(),
    };
    assert_eq!(distance(p(3, 4, "a"), (1, 2)), 28);
    // Another label (skipped): the same entry.
    assert_eq!(distance(p(3, 4, "b"), (1, 2)), 28);
    assert_eq!(RUNS.load(Ordering::SeqCst), 1);
    // Every other binding tells entries apart.
    assert_eq!(distance(p(4, 3, "a"), (1, 2)), 28);
    assert_eq!(distance(p(3, 4, "a"), (2, 1)), 28);
    assert_eq!(RUNS.load(Ordering::SeqCst), 3);
    assert_eq!(lookup_distance(p(3, 4, "z"), (1, 2)), Some(28));
    invalidate_distance(p(3, 4, "z"), (1, 2)).unwrap();
    assert_eq!(lookup_distance(p(3, 4, "a"), (1, 2)), None);
    assert_eq!(lookup_distance(p(4, 3, "a"), (1, 2)), Some(28));

    let repo = Repo {
        tenant: 100,
        runs: AtomicU32::new(0),
    };
    assert_eq!(repo.by_pair((1, 2)), 112);
    assert_eq!(repo.by_pair((1, 2)), 112);
    assert_eq!(repo.by_pair((2, 1)), 121);
    assert_eq!(repo.runs.load(Ordering::SeqCst), 2);
    repo.invalidate_by_pair((1, 2)).unwrap();
    assert_eq!(repo.lookup_by_pair((1, 2)), None);
    assert_eq!(repo.by_pair_uncached((1, 2)), 112);
}

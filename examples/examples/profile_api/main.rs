//! An API service with every cache layer: `cargo run --example profile_api`.
//!
//! An axum API over an embedded SQLite database (created and seeded on start; real SQL with
//! an artificial latency per query), whose reads go through `#[cached]` functions (local
//! tier, then Redis), whose responses carry HTTP validators and `Cache-Control` for clients
//! and a CDN, and whose writes invalidate every layer, the CDN included.
//!
//! ```text
//! GET  /users/{id}               a user's public profile (name, bio: cached by the CDN)
//! GET  /users/{id}/private       the user's e-mail, for `Authorization: Bearer <id>.<API_SECRET>`
//!                                (private, never stored by the CDN)
//! PUT  /users/{id}               {"name"?, "email"?, "bio"?}: write, then invalidate
//! GET  /products/{id}            a product
//! GET  /products?category=books  the products of a category (cached with a tag)
//! PUT  /products/{id}            {"name"?, "price_cents"?, "stock"?}: write, then invalidate
//! GET  /metrics                  JSON: cache stats, database queries, edge purges
//!                                (`?format=prometheus` for the text format)
//! GET  /health                   200 "ok"
//! ```
//!
//! Configuration (environment, or the flag in brackets):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `PORT` (`--port`) | 8080 | listening port on 127.0.0.1 (0: any free port) |
//! | `CACHE_LAYERS` (`--layers`) | `redis` with `REDIS_URL`, else `local` | `none` (every cache bypassed), `local`, `redis` (local + Redis) |
//! | `REDIS_URL` (`--redis-url`) | none | the Redis tier (needed by `CACHE_LAYERS=redis`) |
//! | `CACHE_EDGE_PURGE_URL` (`--edge`) | none | the edge (Varnish) to purge, e.g. `http://127.0.0.1:6081` |
//! | `CACHE_EDGE` and its variables | none | read by `cache_runtime::edge`: a CDN (`cloudflare`, `fastly`, `cloudfront`) instead of or beside Varnish, see docs/EDGE.md |
//! | `CACHE_EDGE_REPURGE_MS` | 1000 | read by `cache_runtime::edge`: purge every path and tag again this long after its first purge (0: once) |
//! | `LIST_INVALIDATION` | `tag` | how a product write drops its category's list: `tag` or `key` |
//! | `DB_PATH` (`--db`) | a new file in the temp dir | SQLite file; several processes may share one (WAL) |
//! | `DB_LATENCY_MS` (`--db-latency-ms`) | 20 | artificial latency of each query |
//! | `DB_POOL` (`--db-pool`) | 8 | connections (concurrent queries) per process |
//! | `SEED_USERS`, `SEED_PRODUCTS` | 10000, 2000 | rows created in an empty database |
//! | `API_SECRET` | `dev-secret` | the bearer tokens of `/users/{id}/private` are `<id>.<API_SECRET>` |
//!
//! Ctrl-C (SIGINT) and SIGTERM (what service managers and containers send) stop it the same
//! way: in-flight requests finish, pending edge purges are sent, and a temporary database is
//! removed.

mod api;
#[path = "../common/catalog.rs"]
mod catalog;
mod db;
mod settings;

use std::time::Duration;

use settings::{Layers, Settings};

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .init();
    // Installed first: a SIGTERM that arrives during start-up then also stops the service
    // cleanly instead of killing it with its temporary files.
    let term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("install a SIGTERM handler");
    let s = match Settings::from_env_and_args() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("profile_api: {e}\n\n{}", settings::USAGE);
            std::process::exit(2);
        }
    };

    let opened = db::open(
        &s.db_path,
        s.db_pool,
        Duration::from_millis(s.db_latency_ms),
        s.seed_users,
        s.seed_products,
    )
    .unwrap_or_else(|e| {
        eprintln!("profile_api: cannot open {}: {e}", s.db_path.display());
        std::process::exit(1);
    });

    // The Redis tier: configured explicitly, so a REDIS_URL in the environment does not
    // switch it on for `CACHE_LAYERS=local` or `none`.
    let mut config = cache_runtime::Config::builder().key_prefix("profile_api");
    config = match (&s.layers, &s.redis_url) {
        (Layers::Redis, Some(url)) => config.redis_url(url),
        _ => config.without_redis(),
    };
    cache_runtime::init(config.build()).expect("the runtime is configured once, here");
    api::configure(
        s.layers,
        api::Options {
            list_invalidation: s.list_invalidation,
        },
    );
    // The edge: `cache_runtime::edge` reads CACHE_EDGE_PURGE_URL (one HTTP `PURGE` per path
    // and one xkey purge per batch of tags, per URL) and CACHE_EDGE_REPURGE_MS (the second
    // purge, 1 s by default) once; `repurge_after` reads them now rather than on the first
    // purge.
    match &s.edge_purge_url {
        Some(url) => std::env::set_var("CACHE_EDGE_PURGE_URL", url),
        None => std::env::remove_var("CACHE_EDGE_PURGE_URL"),
    }
    let repurge = cache_runtime::edge::repurge_after();
    let edge_names: Vec<String> = cache_runtime::edge::health()
        .into_iter()
        .map(|h| h.name)
        .collect();

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", s.port))
        .await
        .unwrap_or_else(|e| {
            eprintln!("profile_api: cannot listen on 127.0.0.1:{}: {e}", s.port);
            std::process::exit(1);
        });
    let addr = listener.local_addr().expect("bound");

    println!(
        "profile_api listening on http://{addr} (pid {})",
        std::process::id()
    );
    println!(
        "  database: {} ({} users, {} products{}), {} ms per query, {} connections",
        s.db_path.display(),
        opened.users,
        opened.products,
        if opened.seeded { ", seeded now" } else { "" },
        s.db_latency_ms,
        s.db_pool
    );
    let redis = match s.layers {
        Layers::Redis => match cache_runtime::health_check().await {
            Ok(()) => "on".to_string(),
            Err(e) => format!("configured but unreachable ({e}); serving from the database"),
        },
        _ => "off".to_string(),
    };
    println!(
        "  layers: in-process {} · Redis {} · HTTP validators + Cache-Control on · edge purge {}",
        if s.layers == Layers::None {
            "off (bypassed)"
        } else {
            "on"
        },
        redis,
        // The purgers the edge was configured with (CACHE_EDGE_PURGE_URL, or CACHE_EDGE).
        match (edge_names.is_empty(), repurge) {
            (true, _) => "off".to_string(),
            (false, None) => format!("on ({})", edge_names.join(", ")),
            (false, Some(d)) => format!(
                "on ({}, again after {} ms)",
                edge_names.join(", "),
                d.as_millis()
            ),
        }
    );
    println!(
        "  a product write drops its category's list by {}",
        match s.list_invalidation {
            api::ListInvalidation::Tag => "tag (invalidate_tag)",
            api::ListInvalidation::Key => "key (invalidate_products_in)",
        }
    );
    if s.layers == Layers::Local && s.redis_url.is_none() {
        println!("  (set REDIS_URL to add the shared Redis tier, and CACHE_EDGE_PURGE_URL to purge a CDN)");
    }

    axum::serve(listener, api::router())
        .with_graceful_shutdown(shutdown_signal(term))
        .await
        .expect("serve");
    // Purges enqueued by the last writes (and their second purges) before the process ends.
    if !cache_runtime::edge::flush_all(Duration::from_secs(5)).await {
        eprintln!("profile_api: some edge purges were still pending at exit");
    }
    if s.db_is_temporary {
        for ext in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{ext}", s.db_path.display()));
        }
    }
}

/// Ctrl-C (SIGINT) or SIGTERM, whichever comes first.
async fn shutdown_signal(mut term: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

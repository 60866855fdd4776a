//! `CloudflarePurger` against a contract server that checks what Cloudflare *documents* for
//! `POST /zones/{zone_id}/purge_cache` (method, path, bearer token, JSON body shape, 100 items
//! per request) and answers with its error envelope, 429 + `Retry-After`, 5xx. It tests our
//! side of the documented contract, not the live service.

use std::time::Duration;

use cache_runtime::edge::{CloudflarePurger, Edge, EdgeBuilder};
use cache_tests::cdn::{CdnContract, Fault, Purge, CLOUDFLARE_MAX_PER_REQUEST};

const WAIT: Duration = Duration::from_secs(30);

fn purger(cf: &CdnContract, token: &str) -> CloudflarePurger {
    CloudflarePurger::builder("zone1", token)
        .site("https://www.example.com")
        .api_base(cf.api_base())
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap()
}

fn edge(cf: &CdnContract) -> EdgeBuilder {
    Edge::builder()
        .purger(purger(cf, "token"))
        .repurge_after(Duration::ZERO)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[test]
fn paths_and_tags_reach_the_api_in_the_documented_shape() {
    let cf = CdnContract::cloudflare("zone1", "token");
    let edge = edge(&cf).build();
    edge.enqueue_paths(["/users/42", "/search/a b"]);
    edge.enqueue_tags(["user:42", "team a,b"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(cf.violations(), Vec::<String>::new());
    assert_eq!(
        cf.purges(),
        [
            Purge::Urls(vec![
                "https://www.example.com/users/42".into(),
                "https://www.example.com/search/a%20b".into()
            ]),
            Purge::Tags(vec!["user:42".into(), "team%20a%2Cb".into()]),
        ]
    );
    assert_eq!(edge.stats().sent, 4);
}

#[test]
fn lists_are_split_at_the_documented_limit() {
    let cf = CdnContract::cloudflare("zone1", "token");
    let edge = edge(&cf).max_batch(1000).build();
    edge.enqueue_paths((0..250).map(|i| format!("/p/{i}")));
    edge.enqueue_tags((0..101).map(|i| format!("t{i}")));
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(cf.violations(), Vec::<String>::new());
    let sizes: Vec<usize> = cf
        .purges()
        .iter()
        .map(|p| match p {
            Purge::Urls(v) | Purge::Tags(v) => v.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [100, 100, 50, 100, 1]);
    assert!(sizes.iter().all(|n| *n <= CLOUDFLARE_MAX_PER_REQUEST));
    assert_eq!(cf.purged_items().len(), 351);
}

#[test]
fn a_429_storm_loses_nothing_and_waits_for_retry_after() {
    let cf = CdnContract::cloudflare("zone1", "token");
    cf.fail_next(
        3,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let edge = edge(&cf).retries(0).build(); // rate limits do not use up retries
    edge.enqueue_paths(["/a", "/b"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (2, 0, 3), "{s:?}");
    assert_eq!(
        cf.purged_items(),
        ["https://www.example.com/a", "https://www.example.com/b"]
    );
    let attempts = cf.attempts();
    assert_eq!(attempts.len(), 4);
    for pair in attempts.windows(2) {
        let gap = pair[1].at.duration_since(pair[0].at);
        assert!(
            gap >= Duration::from_millis(990),
            "Retry-After: 1 was not respected: {gap:?}"
        );
    }
}

#[test]
fn a_5xx_burst_loses_nothing() {
    let cf = CdnContract::cloudflare("zone1", "token");
    cf.fail_next(2, Fault::ServerError);
    let edge = edge(&cf).retries(3).build();
    edge.enqueue_tags(["user:1"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (1, 0, 2), "{s:?}");
    assert_eq!(cf.purges(), [Purge::Tags(vec!["user:1".into()])]);
}

#[test]
fn a_wrong_token_is_reported_and_not_retried() {
    let cf = CdnContract::cloudflare("zone1", "token");
    let edge = Edge::builder()
        .purger(purger(&cf, "wrong-token"))
        .repurge_after(Duration::ZERO)
        .retries(5)
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (0, 1, 0), "{s:?}");
    assert_eq!(
        cf.attempts().len(),
        1,
        "refused credentials are not retried"
    );
    let h = &edge.health()[0];
    assert!(h.unauthorized, "{h:?}");
    let error = h.last_error.as_deref().unwrap();
    // The envelope's code and message, never the token.
    assert!(error.contains("10000: Authentication error"), "{error}");
    assert!(!error.contains("wrong-token") && !format!("{edge:?}").contains("wrong-token"));
}

#[test]
fn an_api_down_for_a_while_folds_the_queue_and_loses_no_write() {
    let cf = CdnContract::cloudflare("zone1", "token");
    // Down for the first 4 calls: the first batch goes through on its last retry, and
    // meanwhile the writes of a burst pile up.
    cf.fail_next(4, Fault::ServerError);
    let edge = edge(&cf)
        .capacity(50)
        .retries(4)
        .backoff(Duration::from_millis(50), Duration::from_millis(100))
        .build();
    edge.enqueue_paths(["/first"]);
    cache_tests::eventually_blocking(WAIT, "the first batch to be in flight", || {
        !cf.attempts().is_empty()
    });
    // A write burst while the API is down: far more than the queue holds.
    edge.enqueue_paths((0..5000).map(|i| format!("/burst/{i}")));
    let s = edge.stats();
    assert!(s.pending <= 51, "the queue stays bounded: {s:?}");
    assert!(s.folded >= 4950, "{s:?}");
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!(
        (s.dropped, s.failed, s.purged_everything),
        (0, 0, 1),
        "{s:?}"
    );
    assert_eq!(
        s.enqueued,
        s.coalesced + s.sent + s.failed + s.pending,
        "{s:?}"
    );
    // Every write of the burst is covered by the purge of everything that reached the API.
    assert!(
        cf.purges().contains(&Purge::Everything),
        "{:?}",
        cf.purges()
    );
    assert_eq!(cf.violations(), Vec::<String>::new());
}

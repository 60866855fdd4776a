//! `FastlyPurger` against a contract server that checks what Fastly *documents* for its purge
//! API (`POST /purge/{host}{path}`, `POST /service/{id}/purge` with up to 256
//! `surrogate_keys`, `POST /service/{id}/purge_all`, `Fastly-Key`, `Fastly-Soft-Purge`) and
//! answers with its errors. It tests our side of the documented contract, not the live
//! service.

use std::time::Duration;

use cache_runtime::edge::{Edge, EdgeBuilder, FastlyPurger, PurgeBatch, Purger};
use cache_tests::cdn::{CdnContract, Fault, Purge, FASTLY_MAX_KEYS};

const WAIT: Duration = Duration::from_secs(30);

fn purger(f: &CdnContract, token: &str, soft: bool) -> FastlyPurger {
    FastlyPurger::builder("svc1", token)
        .site("https://www.example.com")
        .soft(soft)
        .api_base(f.api_base())
        .build()
        .unwrap()
}

fn edge(f: &CdnContract, soft: bool) -> EdgeBuilder {
    Edge::builder()
        .purger(purger(f, "token", soft))
        .repurge_after(Duration::ZERO)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
}

#[test]
fn urls_and_keys_reach_the_api_in_the_documented_shape() {
    let f = CdnContract::fastly("svc1", "token");
    let edge = edge(&f, false).build();
    edge.enqueue_paths(["/users/42"]);
    edge.enqueue_tags(["user:42", "é"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(f.violations(), Vec::<String>::new());
    assert_eq!(
        f.purges(),
        [
            Purge::Urls(vec!["www.example.com/users/42".into()]),
            Purge::Tags(vec!["user:42".into(), "%C3%A9".into()]),
        ]
    );
    assert!(f
        .purges_with_headers()
        .iter()
        .all(|(_, h)| !h.contains_key("fastly-soft-purge")));
}

#[test]
fn soft_purges_carry_the_header() {
    let f = CdnContract::fastly("svc1", "token");
    let edge = edge(&f, true).build();
    edge.enqueue_paths(["/a"]);
    edge.enqueue_tags(["k"]);
    assert!(edge.flush_blocking(WAIT));
    let purges = f.purges_with_headers();
    assert_eq!(purges.len(), 2);
    assert!(purges
        .iter()
        .all(|(_, h)| h.get("fastly-soft-purge").map(String::as_str) == Some("1")));
}

#[test]
fn keys_are_batched_at_the_documented_limit() {
    let f = CdnContract::fastly("svc1", "token");
    let edge = edge(&f, false).max_batch(1000).build();
    edge.enqueue_tags((0..600).map(|i| format!("k{i}")));
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(f.violations(), Vec::<String>::new());
    let sizes: Vec<usize> = f
        .purges()
        .iter()
        .map(|p| match p {
            Purge::Tags(v) => v.len(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [FASTLY_MAX_KEYS, FASTLY_MAX_KEYS, 88]);
}

#[test]
fn everything_is_a_hard_purge_all() {
    let f = CdnContract::fastly("svc1", "token");
    let p = purger(&f, "token", true);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(p.purge(&PurgeBatch::everything())).unwrap();
    assert_eq!(f.purges(), [Purge::Everything]);
    assert_eq!(
        f.violations(),
        Vec::<String>::new(),
        "purge_all is never soft"
    );
}

#[test]
fn a_bad_key_is_reported_and_not_retried_and_5xx_are() {
    let f = CdnContract::fastly("svc1", "token");
    let edge = Edge::builder()
        .purger(purger(&f, "wrong", false))
        .repurge_after(Duration::ZERO)
        .retries(4)
        .build();
    edge.enqueue_tags(["k"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!((edge.stats().failed, edge.stats().retried), (1, 0));
    assert_eq!(f.attempts().len(), 1);
    let h = &edge.health()[0];
    assert!(h.unauthorized, "{h:?}");
    assert!(h.last_error.as_deref().unwrap().contains("401"), "{h:?}");

    f.fail_next(2, Fault::ServerError);
    let ok = edge_after_failure(&f);
    ok.enqueue_tags(["k2"]);
    assert!(ok.flush_blocking(WAIT));
    assert_eq!((ok.stats().sent, ok.stats().retried), (1, 2));
    assert!(ok.health()[0].healthy());
}

fn edge_after_failure(f: &CdnContract) -> Edge {
    edge(f, false).retries(3).build()
}

//! `CloudFrontPurger` against a contract server that checks what AWS *documents* for
//! `CreateInvalidation` (`POST /2020-05-31/distribution/{id}/invalidation`, an
//! `InvalidationBatch` with a unique `CallerReference`, at most 3000 paths and 15 wildcard
//! paths, a valid AWS Signature V4 for `cloudfront` in `us-east-1`, recomputed by the server)
//! and answers with its XML errors. It tests our side of the documented contract, not the
//! live service.

use std::time::Duration;

use cache_runtime::edge::{CloudFrontPurger, CloudFrontPurgerBuilder, Edge};
use cache_tests::cdn::{CdnContract, Fault, Purge, CLOUDFRONT_MAX_WILDCARDS};

const WAIT: Duration = Duration::from_secs(30);
const KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

fn builder(cf: &CdnContract, secret: &str) -> CloudFrontPurgerBuilder {
    CloudFrontPurger::builder("EDFDVBD6EXAMPLE")
        .credentials(KEY, secret, None)
        .api_base(cf.api_base())
        .in_progress_wait(Duration::from_millis(200))
}

fn edge(p: CloudFrontPurger) -> Edge {
    Edge::builder()
        .purger(p)
        .repurge_after(Duration::ZERO)
        .backoff(Duration::from_millis(10), Duration::from_millis(50))
        .max_batch(1000)
        .build()
}

fn contract() -> CdnContract {
    CdnContract::cloudfront("EDFDVBD6EXAMPLE", KEY, SECRET)
}

#[test]
fn signed_invalidations_are_accepted_and_paths_encoded() {
    let cf = contract();
    let edge = edge(builder(&cf, SECRET).build().unwrap());
    edge.enqueue_paths(["/users/42", "/search/a b", "/users/42"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(cf.violations(), Vec::<String>::new());
    assert_eq!(
        cf.purges(),
        [Purge::Paths(vec![
            "/users/42".into(),
            "/search/a%20b".into()
        ])]
    );
    let auth = &cf.purges_with_headers()[0].1["authorization"];
    assert!(
        auth.starts_with("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/"),
        "{auth}"
    );
    assert!(!auth.contains(SECRET));
}

#[test]
fn wildcards_are_split_at_the_documented_limit() {
    let cf = contract();
    let edge = edge(builder(&cf, SECRET).build().unwrap());
    // One enqueue (atomic): with two, the worker may take the wildcards before the plain
    // path arrives, and send that one as a third batch.
    let wildcards = (0..20).map(|i| format!("/section/{i}/*"));
    edge.enqueue_paths(wildcards.chain(["/plain".to_string()]));
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(cf.violations(), Vec::<String>::new());
    let sizes: Vec<usize> = cf
        .purges()
        .iter()
        .map(|p| match p {
            Purge::Paths(v) => v.iter().filter(|p| p.ends_with('*')).count(),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(sizes, [CLOUDFRONT_MAX_WILDCARDS, 5]);
    assert_eq!(cf.purged_items().len(), 21);
}

#[test]
fn tags_fail_by_default_and_map_to_paths_when_told() {
    let cf = contract();
    let strict = edge(builder(&cf, SECRET).build().unwrap());
    strict.enqueue_tags(["user:42"]);
    assert!(strict.flush_blocking(WAIT));
    let s = strict.stats();
    assert_eq!(
        (s.failed, s.retried),
        (1, 0),
        "a tag is never silently lost: {s:?}"
    );
    assert!(cf.attempts().is_empty());
    let error = strict.health()[0].last_error.clone().unwrap();
    assert!(error.contains("tag_paths"), "{error}");

    let mapped = edge(
        builder(&cf, SECRET)
            .tag_paths(|t| vec![format!("/users/{}*", t.trim_start_matches("user:"))])
            .build()
            .unwrap(),
    );
    mapped.enqueue_tags(["user:42"]);
    assert!(mapped.flush_blocking(WAIT));
    assert_eq!(cf.purges(), [Purge::Paths(vec!["/users/42*".into()])]);
    assert_eq!(cf.violations(), Vec::<String>::new());
}

#[test]
fn a_wrong_secret_is_a_refused_signature_not_retried() {
    let cf = contract();
    let edge = edge(builder(&cf, "not-the-secret").build().unwrap());
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(cf.attempts().len(), 1);
    let h = &edge.health()[0];
    assert!(h.unauthorized, "{h:?}");
    assert!(
        h.last_error
            .as_deref()
            .unwrap()
            .contains("SignatureDoesNotMatch"),
        "{h:?}"
    );
    assert!(cf.purges().is_empty());
}

#[test]
fn too_many_invalidations_in_progress_waits_and_loses_nothing() {
    let cf = contract();
    cf.fail_next(2, Fault::TooManyInvalidations);
    cf.fail_next(
        1,
        Fault::RateLimited {
            retry_after_secs: 1,
        },
    );
    let edge = Edge::builder()
        .purger(builder(&cf, SECRET).build().unwrap())
        .repurge_after(Duration::ZERO)
        .retries(0)
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (1, 0, 3), "{s:?}");
    assert_eq!(cf.purges(), [Purge::Paths(vec!["/a".into()])]);
    let at: Vec<_> = cf.attempts().iter().map(|a| a.at).collect();
    assert!(at[1].duration_since(at[0]) >= Duration::from_millis(190));
    assert!(
        at[3].duration_since(at[2]) >= Duration::from_millis(990),
        "Retry-After: 1"
    );
}

#[test]
fn everything_invalidates_the_whole_distribution() {
    let cf = contract();
    let edge = Edge::builder()
        .purger(builder(&cf, SECRET).build().unwrap())
        .repurge_after(Duration::ZERO)
        .capacity(2)
        .build();
    cf.fail_next(1, Fault::Slow(Duration::from_millis(300)));
    edge.enqueue_paths(["/slow"]);
    cache_tests::eventually_blocking(WAIT, "the first invalidation to be sent", || {
        edge.stats().pending == 1 && edge.stats().enqueued == 1
    });
    edge.enqueue_paths(["/1", "/2", "/3"]);
    assert!(edge.flush_blocking(WAIT));
    assert!(
        cf.purges().contains(&Purge::Paths(vec!["/*".into()])),
        "{:?}",
        cf.purges()
    );
    assert_eq!(edge.stats().purged_everything, 1);
}

//! Counters and histograms reach the `metrics` facade (here a debugging recorder installed
//! before any cache is created, as an application would install its exporter).

use std::time::Duration;

use cache_runtime::edge::{Edge, FnPurger, PurgeBatch, PurgeError};
use cache_runtime::{cached, Config};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use metrics_util::MetricKind;

#[cached(ttl = 60, key = "m:<id>", name = "metrics.demo")]
fn demo(id: u64) -> u64 {
    id
}

#[test]
fn cache_events_are_exported_as_prometheus_style_metrics() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::set_global_recorder(recorder).expect("first recorder");
    cache_runtime::init(Config::builder().without_redis().build()).unwrap();

    demo(1);
    demo(1);
    demo(1);
    demo(2);
    invalidate_demo(1).unwrap();

    // An edge: purge latencies and second purges.
    let edge = Edge::builder()
        .purger(FnPurger::new("ok", |_: &PurgeBatch| {
            Ok::<(), PurgeError>(())
        }))
        .repurge_after(Duration::from_millis(10))
        .build();
    edge.enqueue_paths(["/a", "/b"]);
    assert!(edge.flush_all_blocking(Duration::from_secs(10)));

    let snapshot = snapshotter.snapshot().into_vec();
    let counter = |name: &str, labels: &[(&str, &str)]| -> u64 {
        snapshot
            .iter()
            .find(|(key, _, _, _)| {
                key.kind() == MetricKind::Counter
                    && key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(_, _, _, value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .unwrap_or_else(|| panic!("no counter {name} {labels:?}"))
    };
    let cache = ("cache", "metrics.demo");
    assert_eq!(counter("cache_hits_total", &[cache, ("tier", "local")]), 2);
    assert_eq!(counter("cache_misses_total", &[cache]), 2);
    assert_eq!(counter("cache_body_calls_total", &[cache]), 2);
    assert_eq!(counter("cache_invalidations_total", &[cache]), 1);
    let histogram = snapshot
        .iter()
        .find(|(key, _, _, _)| key.key().name() == "cache_body_duration_seconds")
        .expect("body duration histogram");
    match &histogram.3 {
        DebugValue::Histogram(samples) => {
            assert_eq!(samples.len(), 2);
            assert!(samples
                .iter()
                .all(|s| s.into_inner() < Duration::from_secs(1).as_secs_f64()));
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    let latency = snapshot
        .iter()
        .find(|(key, _, _, _)| key.key().name() == "cache_edge_purge_latency_seconds")
        .expect("edge purge latency histogram");
    match &latency.3 {
        DebugValue::Histogram(samples) => {
            assert_eq!(samples.len(), 2, "first purges only");
            assert!(samples.iter().all(|s| s.into_inner() < 10.0));
        }
        other => panic!("expected a histogram, got {other:?}"),
    }
    assert_eq!(counter("cache_edge_purges_repurged_total", &[]), 2);
    assert_eq!(counter("cache_edge_purges_sent_total", &[]), 4);
}

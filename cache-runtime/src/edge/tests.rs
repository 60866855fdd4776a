//! Unit tests of the edge queue: drops, retries, deduplication, flush; and of the encodings.

use super::*;
use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Instant;
use tokio::sync::Semaphore;

const WAIT: Duration = Duration::from_secs(10);

/// An edge without second purges, for the tests that count single purges.
fn builder() -> EdgeBuilder {
    Edge::builder().repurge_after(Duration::ZERO)
}

/// Waits (polling) until `cond` holds.
fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Batches with the time they were received.
type Received = Arc<Mutex<Vec<(Instant, PurgeBatch)>>>;

/// A purger recording each batch with the time it was received.
fn recorder() -> (impl Purger, Received) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let purger = FnPurger::new("recorder", move |b: &PurgeBatch| {
        log.lock().unwrap().push((Instant::now(), b.clone()));
        Ok(())
    });
    (purger, seen)
}

/// A purger that reports each batch as it starts, then waits for a permit from the test.
struct Gated {
    started: Mutex<mpsc::Sender<PurgeBatch>>,
    gate: Arc<Semaphore>,
    done: Arc<Mutex<Vec<PurgeBatch>>>,
}

struct GatedHandle {
    started: mpsc::Receiver<PurgeBatch>,
    gate: Arc<Semaphore>,
    done: Arc<Mutex<Vec<PurgeBatch>>>,
}

fn gated() -> (Gated, GatedHandle) {
    let (tx, rx) = mpsc::channel();
    let gate = Arc::new(Semaphore::new(0));
    let done = Arc::new(Mutex::new(Vec::new()));
    (
        Gated {
            started: Mutex::new(tx),
            gate: gate.clone(),
            done: done.clone(),
        },
        GatedHandle {
            started: rx,
            gate,
            done,
        },
    )
}

impl GatedHandle {
    fn next_started(&self) -> PurgeBatch {
        self.started
            .recv_timeout(WAIT)
            .expect("the worker started a batch")
    }
    fn release(&self, batches: usize) {
        self.gate.add_permits(batches);
    }
}

impl Purger for Gated {
    fn purge<'a>(&'a self, batch: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
        Box::pin(async move {
            let _ = self.started.lock().unwrap().send(batch.clone());
            self.gate.acquire().await.expect("gate open").forget();
            self.done.lock().unwrap().push(batch.clone());
            Ok(())
        })
    }
    fn name(&self) -> &str {
        "gated"
    }
}

fn paths(b: &PurgeBatch) -> Vec<&str> {
    b.paths().iter().map(String::as_str).collect()
}

fn assert_balanced(s: EdgeStats) {
    assert_eq!(
        s.enqueued,
        s.coalesced + s.sent + s.failed + s.pending,
        "{s:?}"
    );
}

#[test]
fn queued_duplicates_are_coalesced_into_one_batch() {
    let (purger, h) = gated();
    let edge = builder().purger(purger).build();
    edge.enqueue_paths(["/x"]);
    assert_eq!(paths(&h.next_started()), ["/x"]); // in flight, held by the gate
                                                  // Waiting items are deduplicated; the in-flight one is not (it may predate the write).
    edge.enqueue_paths(["/a", "/x", "/a"]);
    edge.enqueue_tags(["t", "t"]);
    edge.enqueue_paths(["/b", "/a", ""]);
    let s = edge.stats();
    assert_eq!((s.enqueued, s.coalesced, s.pending), (8, 3, 5), "{s:?}");
    h.release(2);
    let second = h.next_started();
    assert_eq!(paths(&second), ["/a", "/x", "/b"]);
    assert_eq!(second.tags(), ["t"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.pending), (5, 0, 0), "{s:?}");
    assert_balanced(s);
    assert_eq!(h.done.lock().unwrap().len(), 2);
}

#[test]
fn a_full_queue_folds_into_one_purge_of_everything() {
    let (purger, h) = gated();
    let edge = builder().purger(purger).capacity(2).build();
    edge.enqueue_paths(["/in-flight"]);
    h.next_started();
    // /1 and /2 fill the queue; /3 folds them into a purge of everything, which covers /4.
    edge.enqueue_paths(["/1", "/2", "/3", "/4"]);
    edge.enqueue_tags(["t"]);
    let s = edge.stats();
    assert_eq!(
        (s.enqueued, s.coalesced, s.folded, s.dropped, s.pending),
        (7, 5, 5, 0, 2),
        "{s:?}"
    );
    assert_balanced(s);
    h.release(2);
    let folded = h.next_started();
    assert!(
        folded.is_everything() && folded.paths().is_empty(),
        "{folded:?}"
    );
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.sent, s.purged_everything, s.pending), (2, 1, 0), "{s:?}");
    assert_balanced(s);
}

#[test]
fn enqueue_returns_while_the_purger_hangs_and_memory_stays_bounded() {
    let (purger, h) = gated();
    let edge = builder().purger(purger).capacity(100).build();
    edge.enqueue_paths(["/first"]);
    h.next_started(); // the worker is now stuck in the purger
    for i in 0..1000 {
        edge.enqueue_paths([format!("/p/{i}")]);
    }
    let s = edge.stats();
    // 100 queued, then folded with the other 900 into one purge of everything.
    assert_eq!(
        (s.enqueued, s.folded, s.dropped, s.pending),
        (1002, 1000, 0, 2),
        "{s:?}"
    );
    assert_balanced(s);
    // Not released: dropping the edge must not wait for the hung purger either.
    drop(edge);
}

#[test]
fn a_full_delay_queue_folds_its_second_purges() {
    let (purger, seen) = recorder();
    let edge = Edge::builder()
        .purger(purger)
        .capacity(3)
        .max_batch(10)
        .repurge_after(Duration::from_millis(20))
        .build();
    edge.enqueue_paths(["/a", "/b", "/c"]);
    assert!(edge.flush_blocking(WAIT));
    edge.enqueue_paths(["/d"]);
    assert!(edge.flush_all_blocking(WAIT));
    let batches: Vec<PurgeBatch> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(_, b)| b.clone())
        .collect();
    // The fourth second purge did not fit: the four became one purge of everything.
    assert!(batches.iter().any(PurgeBatch::is_everything), "{batches:?}");
    let s = edge.stats();
    assert_eq!(s.folded, 4, "{s:?}");
    assert_balanced(s);
}

#[test]
fn rate_limits_wait_for_retry_after_without_using_up_retries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let edge = builder()
        .purger(FnPurger::new("limited", move |_: &PurgeBatch| {
            if counted.fetch_add(1, Ordering::SeqCst) < 4 {
                Err(PurgeError::rate_limited("429", Duration::from_millis(30)))
            } else {
                Ok(())
            }
        }))
        .retries(1)
        .build();
    let start = Instant::now();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    assert!(
        start.elapsed() >= Duration::from_millis(120),
        "waited for each Retry-After"
    );
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (1, 0, 4), "{s:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 5);
}

#[test]
fn refused_credentials_are_reported_in_health_and_not_retried() {
    let edge = builder()
        .purger(FnPurger::new("cdn", |_: &PurgeBatch| {
            Err(PurgeError::unauthorized("401: bad token"))
        }))
        .retries(5)
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.failed, s.retried), (1, 0), "{s:?}");
    let h = edge.health();
    assert!(h[0].unauthorized && h[0].consecutive_failures == 1, "{h:?}");
}

#[test]
fn flush_waits_for_what_was_enqueued_and_times_out() {
    let (purger, h) = gated();
    let edge = builder().purger(purger).build();
    assert!(
        edge.flush_blocking(Duration::from_millis(1)),
        "nothing enqueued"
    );
    edge.enqueue_paths(["/a"]);
    h.next_started();
    assert!(
        !edge.flush_blocking(Duration::from_millis(20)),
        "held by the gate"
    );
    h.release(1);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(edge.stats().sent, 1);
    // The async flush works from another runtime too.
    edge.enqueue_tags(["t"]);
    h.release(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    assert!(rt.block_on(edge.flush(WAIT)));
    assert_eq!(edge.stats().sent, 2);
}

#[test]
fn retries_are_bounded_and_failures_counted() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let edge = builder()
        .purger(FnPurger::new("down", move |_: &PurgeBatch| {
            c.fetch_add(1, Ordering::SeqCst);
            Err(PurgeError::transient("connection refused"))
        }))
        .retries(3)
        .backoff(Duration::from_millis(1), Duration::from_millis(4))
        .build();
    edge.enqueue_paths(["/a", "/b"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(calls.load(Ordering::SeqCst), 4, "one try and three retries");
    let s = edge.stats();
    assert_eq!(
        (s.sent, s.failed, s.retried, s.pending),
        (0, 2, 3, 0),
        "{s:?}"
    );
    assert_balanced(s);
}

#[test]
fn permanent_errors_are_not_retried() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let edge = builder()
        .purger(FnPurger::new("forbidden", move |_: &PurgeBatch| {
            c.fetch_add(1, Ordering::SeqCst);
            Err(PurgeError::permanent("403 Forbidden"))
        }))
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build();
    edge.enqueue_tags(["t"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    let s = edge.stats();
    assert_eq!((s.failed, s.retried), (1, 0), "{s:?}");
}

#[test]
fn only_the_items_a_purger_blames_are_retried() {
    let batches = Arc::new(Mutex::new(Vec::new()));
    let seen = batches.clone();
    let ok = Arc::new(Mutex::new(Vec::new()));
    let ok2 = ok.clone();
    let edge = builder()
        .purger(FnPurger::new("flaky", move |b: &PurgeBatch| {
            seen.lock().unwrap().push(b.clone());
            if b.paths().iter().any(|p| p == "/bad") {
                Err(PurgeError::transient("503").with_items(PurgeBatch::new().with_path("/bad")))
            } else {
                Ok(())
            }
        }))
        .purger(FnPurger::new("fine", move |b: &PurgeBatch| {
            ok2.lock().unwrap().push(b.clone());
            Ok(())
        }))
        .retries(2)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build();
    edge.enqueue_paths(["/good", "/bad"]);
    assert!(edge.flush_blocking(WAIT));
    let batches = batches.lock().unwrap();
    assert_eq!(batches.len(), 3);
    assert_eq!(paths(&batches[0]), ["/good", "/bad"]);
    assert_eq!(paths(&batches[1]), ["/bad"]);
    assert_eq!(paths(&batches[2]), ["/bad"]);
    assert_eq!(
        ok.lock().unwrap().len(),
        1,
        "the healthy purger is called once"
    );
    let s = edge.stats();
    assert_eq!((s.sent, s.failed, s.retried), (1, 1, 2), "{s:?}");
}

#[test]
fn a_hung_purger_call_times_out_and_is_retried() {
    struct Never;
    impl Purger for Never {
        fn purge<'a>(&'a self, _: &'a PurgeBatch) -> BoxFuture<'a, Result<(), PurgeError>> {
            Box::pin(std::future::pending())
        }
    }
    let edge = builder()
        .purger(Never)
        .timeout(Duration::from_millis(10))
        .retries(1)
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.failed, s.retried), (1, 1), "{s:?}");
    assert_eq!(edge.purger_names(), ["purger"]);
}

#[test]
fn a_panicking_purger_fails_its_items_and_the_worker_lives_on() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let edge = builder()
        .purger(FnPurger::new("buggy", move |b: &PurgeBatch| {
            c.fetch_add(1, Ordering::SeqCst);
            if b.paths().iter().any(|p| p == "/boom") {
                panic!("a bug in a purger");
            }
            Ok(())
        }))
        .backoff(Duration::from_millis(1), Duration::from_millis(1))
        .build();
    edge.enqueue_paths(["/boom"]);
    assert!(edge.flush_blocking(WAIT));
    edge.enqueue_paths(["/fine"]);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert_eq!((s.failed, s.sent, s.retried), (1, 1, 0), "{s:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "a panic is not retried");
}

#[test]
fn batches_are_bounded() {
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s2 = sizes.clone();
    let (purger, h) = gated();
    let edge = builder()
        .purger(purger)
        .purger(FnPurger::new("sizes", move |b: &PurgeBatch| {
            s2.lock().unwrap().push(b.len());
            Ok(())
        }))
        .max_batch(3)
        .build();
    edge.enqueue_paths(["/0"]);
    h.next_started();
    edge.enqueue_paths((1..=7).map(|i| format!("/{i}")));
    h.release(10);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(*sizes.lock().unwrap(), [1, 3, 3, 1]);
}

#[test]
fn the_installed_edge_receives_the_global_enqueues() {
    // The only test of this binary that installs an edge.
    let seen = Arc::new(Mutex::new(PurgeBatch::new()));
    let s = seen.clone();
    let edge = builder()
        .purger(FnPurger::new("global", move |b: &PurgeBatch| {
            let mut all = s.lock().unwrap();
            for p in b.paths() {
                all.add_path(p.clone());
            }
            for t in b.tags() {
                all.add_tag(t.clone());
            }
            Ok(())
        }))
        .build();
    assert_eq!(install(edge), Ok(()));
    assert!(configured());
    assert_eq!(install(builder().build()), Err(EdgeError::AlreadyInstalled));
    enqueue_paths(vec!["/users/1".into()]);
    enqueue_tags(vec!["user:1".into()]);
    assert!(flush_blocking(WAIT));
    let seen = seen.lock().unwrap();
    assert!(seen.paths().contains(&"/users/1".to_string()));
    assert!(seen.tags().contains(&"user:1".to_string()));
    assert!(stats().sent >= 2);
}

#[test]
fn every_item_is_purged_again_once_after_the_delay() {
    let (purger, seen) = recorder();
    let delay = Duration::from_millis(300);
    let edge = Edge::builder().purger(purger).repurge_after(delay).build();
    edge.enqueue_paths(["/a", "/b"]);
    edge.enqueue_tags(["t"]);
    assert!(edge.flush_blocking(WAIT));
    let first_done = Instant::now();
    // `flush` does not wait for the second purges: they are scheduled, not pending.
    let s = edge.stats();
    assert_eq!(
        (s.sent, s.pending, s.delayed, s.repurged),
        (3, 0, 3, 0),
        "{s:?}"
    );
    // The worker may have taken the paths before the tag was enqueued: the first purges are
    // one batch or two, all before `flush` returned.
    let first_batches = seen.lock().unwrap().len();
    assert!((1..=2).contains(&first_batches), "{first_batches}");
    // When each item was purged, in order.
    let purges_of = |item: &str| -> Vec<Instant> {
        seen.lock()
            .unwrap()
            .iter()
            .filter(|(_, b)| paths(b).contains(&item) || b.tags().iter().any(|t| t == item))
            .map(|(at, _)| *at)
            .collect()
    };
    const ITEMS: [&str; 3] = ["/a", "/b", "t"];
    eventually("every second purge", || {
        ITEMS.iter().all(|i| purges_of(i).len() == 2)
    });
    for item in ITEMS {
        let at = purges_of(item);
        assert!(
            at[0] <= first_done,
            "{item}: first purge before flush returned"
        );
        // The delay runs from the end of the first purge's batch, after its purger call.
        assert!(at[1] >= at[0] + delay, "{item}: second purge too early");
    }

    // `flush_all` waits until nothing is scheduled; a second purge is not purged again.
    assert!(edge.flush_all_blocking(WAIT));
    let s = edge.stats();
    assert_eq!(
        (s.enqueued, s.sent, s.repurged, s.delayed, s.pending),
        (6, 6, 3, 0, 0),
        "{s:?}"
    );
    assert_balanced(s);
    for item in ITEMS {
        assert_eq!(purges_of(item).len(), 2, "{item}: no third purge");
    }
}

#[test]
fn a_rescheduled_repurge_happens_once_after_the_later_purge() {
    let (purger, seen) = recorder();
    let delay = Duration::from_millis(300);
    let edge = Edge::builder().purger(purger).repurge_after(delay).build();
    edge.enqueue_paths(["/a", "/b"]);
    assert!(edge.flush_blocking(WAIT));
    // Another write of /a: its second purge moves to after this one.
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    let second_write_done = Instant::now();
    assert_eq!(edge.stats().delayed, 2, "one entry per item");
    assert!(edge.flush_all_blocking(WAIT));
    let seen = seen.lock().unwrap();
    let purges_of = |p: &str| {
        seen.iter()
            .filter(|(_, b)| b.paths().iter().any(|x| x == p))
            .map(|(at, _)| *at)
            .collect::<Vec<_>>()
    };
    let a = purges_of("/a");
    assert_eq!(a.len(), 3, "two first purges and one second purge");
    assert!(a[2] >= second_write_done + delay - Duration::from_millis(5));
    assert_eq!(purges_of("/b").len(), 2);
    let s = edge.stats();
    assert_eq!((s.repurged, s.sent, s.delayed), (2, 5, 0), "{s:?}");
    assert_balanced(s);
}

#[test]
fn a_write_during_a_waiting_second_purge_is_purged_again() {
    let (purger, h) = gated();
    let edge = Edge::builder()
        .purger(purger)
        .max_batch(1)
        .repurge_after(Duration::from_millis(1))
        .build();
    edge.enqueue_paths(["/a"]);
    assert_eq!(paths(&h.next_started()), ["/a"]);
    edge.enqueue_paths(["/busy", "/x"]);
    h.release(1);
    assert_eq!(paths(&h.next_started()), ["/busy"]);
    // Let the second purge of /a become due (time passing, not synchronisation); it joins
    // the queue behind /x when /busy is done, and waits there while /x is held.
    std::thread::sleep(Duration::from_millis(5));
    h.release(1);
    assert_eq!(paths(&h.next_started()), ["/x"]);
    let s = edge.stats();
    assert_eq!((s.repurged, s.pending), (1, 2), "{s:?}");
    // A new write of /a coalesces with that waiting second purge, which thus becomes a first
    // purge: it is purged again afterwards.
    edge.enqueue_paths(["/a"]);
    h.release(10);
    assert!(edge.flush_all_blocking(WAIT));
    let done = h.done.lock().unwrap();
    let a = done.iter().filter(|b| paths(b) == ["/a"]).count();
    assert_eq!(a, 3, "{done:?}");
    let s = edge.stats();
    // Second purges: /a twice, /busy and /x once.
    assert_eq!((s.coalesced, s.repurged, s.sent), (1, 4, 7), "{s:?}");
    assert_balanced(s);
}

#[test]
fn second_purges_off_and_from_the_environment() {
    assert_eq!(builder().build().repurge_after(), None);
    assert_eq!(
        Edge::builder().build().repurge_after(),
        Some(Duration::from_secs(1))
    );
    assert_eq!(env::repurge_from_env(None), Duration::from_secs(1));
    assert_eq!(env::repurge_from_env(Some("")), Duration::from_secs(1));
    assert_eq!(
        env::repurge_from_env(Some("250")),
        Duration::from_millis(250)
    );
    assert_eq!(env::repurge_from_env(Some("0")), Duration::ZERO);
    assert_eq!(env::repurge_from_env(Some("soon")), Duration::from_secs(1));
}

#[test]
fn purge_latency_is_measured_from_enqueue_to_acknowledgement() {
    let (purger, h) = gated();
    let edge = builder().purger(purger).build();
    assert_eq!(
        edge.stats().latency_max,
        Duration::ZERO,
        "nothing purged yet"
    );
    edge.enqueue_paths(["/slow"]);
    h.next_started();
    // The purge is held 40 ms by the gate (time passing, not synchronisation).
    std::thread::sleep(Duration::from_millis(40));
    h.release(1);
    assert!(edge.flush_blocking(WAIT));
    let s = edge.stats();
    assert!(s.latency_p50 >= Duration::from_millis(40), "{s:?}");
    assert!(s.latency_p50 < WAIT, "{s:?}");
    assert_eq!(s.latency_p50, s.latency_max, "one sample");
    // Fast purges: the percentiles follow the recent samples, the maximum stays.
    for i in 0..20 {
        edge.enqueue_paths([format!("/fast/{i}")]);
        h.release(1);
        assert!(edge.flush_blocking(WAIT));
    }
    let s = edge.stats();
    assert!(s.latency_p50 < Duration::from_millis(40), "{s:?}");
    assert!(s.latency_p50 <= s.latency_p99 && s.latency_p99 <= s.latency_max);
    assert!(s.latency_max >= Duration::from_millis(40), "{s:?}");
}

#[test]
fn failed_purges_and_second_purges_are_not_timed() {
    let edge = builder()
        .purger(FnPurger::new("forbidden", |_: &PurgeBatch| {
            Err(PurgeError::permanent("403"))
        }))
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    assert_eq!(edge.stats().latency_max, Duration::ZERO);

    let (purger, h) = gated();
    let edge = Edge::builder()
        .purger(purger)
        .repurge_after(Duration::from_millis(1))
        .build();
    edge.enqueue_paths(["/a"]);
    h.next_started();
    h.release(1);
    assert!(edge.flush_blocking(WAIT));
    let first = edge.stats().latency_max;
    // The second purge is held 50 ms; it does not count as a purge latency.
    h.next_started();
    std::thread::sleep(Duration::from_millis(50));
    h.release(1);
    assert!(edge.flush_all_blocking(WAIT));
    let s = edge.stats();
    assert_eq!(s.repurged, 1);
    assert_eq!(s.latency_max, first, "{s:?}");
}

/// Decodes `%XX` (the inverse of both encodings).
fn decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[test]
fn surrogate_keys_become_single_reversible_tokens() {
    for key in [
        "user:42",
        "a b",
        "a,b",
        "50%",
        "%20",
        "tab\there",
        "new\nline",
        "ünï",
        "",
        "\u{7f}",
    ] {
        let e = encode_surrogate_key(key);
        assert!(
            e.bytes().all(|b| b.is_ascii_graphic() && b != b','),
            "{key:?} → {e:?}"
        );
        assert_eq!(decode(&e), key.as_bytes(), "{key:?} → {e:?}");
    }
    assert!(matches!(encode_surrogate_key("user:42"), Cow::Borrowed(_)));
}

#[test]
fn paths_keep_their_structure_and_lose_unsafe_bytes() {
    assert!(matches!(
        encode_path("/users/42?a=1&b=%20"),
        Cow::Borrowed(_)
    ));
    let e = encode_path("/q/a b\r\n\"<x>\"#frag");
    assert!(e.bytes().all(|b| b.is_ascii_graphic()), "{e}");
    assert_eq!(e, "/q/a%20b%0D%0A%22%3Cx%3E%22%23frag");
}

#[test]
fn jitter_and_clock_do_not_stall() {
    // The backoff of a default edge stays near its configured values.
    let start = Instant::now();
    let edge = builder()
        .purger(FnPurger::new("down", |_: &PurgeBatch| {
            Err(PurgeError::transient("down"))
        }))
        .retries(2)
        .backoff(Duration::from_millis(5), Duration::from_millis(5))
        .build();
    edge.enqueue_paths(["/a"]);
    assert!(edge.flush_blocking(WAIT));
    assert!(start.elapsed() >= Duration::from_millis(10));
}

#[cfg(feature = "edge")]
mod http {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A one-thread HTTP endpoint answering every request with `status`, recording the
    /// request heads.
    struct Endpoint {
        url: String,
        heads: Arc<Mutex<Vec<String>>>,
        _rt: tokio::runtime::Runtime,
    }

    fn endpoint(statuses: Vec<u16>) -> Endpoint {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let heads = Arc::new(Mutex::new(Vec::new()));
        let h = heads.clone();
        let statuses = Arc::new(Mutex::new(statuses.into_iter()));
        rt.spawn(async move {
            loop {
                let Ok((mut sock, _)) = listener.accept().await else {
                    return;
                };
                let h = h.clone();
                let statuses = statuses.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let mut chunk = [0u8; 4096];
                        let Ok(n) = sock.read(&mut chunk).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                            buf.drain(..end + 4);
                            h.lock().unwrap().push(head);
                            let status = statuses.lock().unwrap().next().unwrap_or(200);
                            let resp =
                                format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                            if sock.write_all(resp.as_bytes()).await.is_err() {
                                return;
                            }
                        }
                    }
                });
            }
        });
        Endpoint {
            url,
            heads,
            _rt: rt,
        }
    }

    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    #[test]
    fn http_purger_sends_one_purge_per_encoded_path() {
        let ep = endpoint(vec![]);
        let edge = builder()
            .purger(
                HttpPurger::builder(format!("{}/", ep.url))
                    .host("www.example.com")
                    .header("x-token", "s3cret")
                    .build()
                    .unwrap(),
            )
            .build();
        edge.enqueue_paths(["/users/1", "users/a b"]);
        edge.enqueue_tags(["ignored"]);
        assert!(edge.flush_blocking(WAIT));
        let mut heads = ep.heads.lock().unwrap().clone();
        heads.sort();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(heads[0].starts_with("PURGE /users/1 HTTP/1.1"), "{heads:?}");
        assert!(
            heads[1].starts_with("PURGE /users/a%20b HTTP/1.1"),
            "{heads:?}"
        );
        for h in &heads {
            assert_eq!(header(h, "host"), Some("www.example.com"));
            assert_eq!(header(h, "x-token"), Some("s3cret"));
        }
        assert_eq!(edge.stats().sent, 3);
    }

    #[test]
    fn xkey_purger_sends_keys_in_bulk() {
        let ep = endpoint(vec![]);
        let edge = builder()
            .purger(
                SurrogateKeyPurger::xkey(&ep.url)
                    .max_keys(2)
                    .build()
                    .unwrap(),
            )
            .build();
        edge.enqueue_tags(["user:1", "team a", "x,y"]);
        edge.enqueue_paths(["/ignored"]);
        assert!(edge.flush_blocking(WAIT));
        let heads = ep.heads.lock().unwrap().clone();
        assert_eq!(heads.len(), 2, "{heads:?}");
        assert!(heads.iter().all(|h| h.starts_with("PURGE / HTTP/1.1")));
        assert_eq!(header(&heads[0], "xkey-purge"), Some("user:1 team%20a"));
        assert_eq!(header(&heads[1], "xkey-purge"), Some("x%2Cy"));
    }

    #[test]
    fn server_errors_are_retried_and_client_errors_are_not() {
        let ep = endpoint(vec![503, 503, 200]);
        let edge = builder()
            .purger(HttpPurger::new(&ep.url).unwrap())
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .build();
        edge.enqueue_paths(["/a"]);
        assert!(edge.flush_blocking(WAIT));
        let s = edge.stats();
        assert_eq!((s.sent, s.failed, s.retried), (1, 0, 2), "{s:?}");

        let ep = endpoint(vec![403]);
        let edge = builder()
            .purger(SurrogateKeyPurger::xkey(&ep.url).build().unwrap())
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .build();
        edge.enqueue_tags(["t"]);
        assert!(edge.flush_blocking(WAIT));
        let s = edge.stats();
        assert_eq!((s.sent, s.failed, s.retried), (0, 1, 0), "{s:?}");
        assert_eq!(ep.heads.lock().unwrap().len(), 1);
    }

    #[test]
    fn an_unreachable_edge_fails_after_bounded_retries() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let edge = builder()
            .purger(HttpPurger::new(format!("http://127.0.0.1:{port}")).unwrap())
            .retries(2)
            .backoff(Duration::from_millis(1), Duration::from_millis(2))
            .build();
        edge.enqueue_paths(["/a"]);
        assert!(edge.flush_blocking(WAIT));
        let s = edge.stats();
        assert_eq!((s.failed, s.retried), (1, 2), "{s:?}");
    }

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn the_environment_configures_both_purgers_per_varnish_url() {
        let edge = env::from_vars(&vars(&[
            (
                "CACHE_EDGE_PURGE_URL",
                " http://127.0.0.1:1 ,, http://127.0.0.1:2/",
            ),
            ("CACHE_EDGE_PURGE_HOST", "ex.com"),
            ("CACHE_EDGE_REPURGE_MS", "250"),
        ]))
        .expect("two valid urls");
        assert_eq!(edge.repurge_after(), Some(Duration::from_millis(250)));
        assert_eq!(
            edge.purger_names(),
            [
                "http-purge http://127.0.0.1:1",
                "xkey http://127.0.0.1:1/",
                "http-purge http://127.0.0.1:2",
                "xkey http://127.0.0.1:2/",
            ]
        );
        let once = env::from_vars(&vars(&[
            ("CACHE_EDGE_PURGE_URL", "http://127.0.0.1:1"),
            ("CACHE_EDGE_REPURGE_MS", "0"),
        ]))
        .unwrap();
        assert_eq!(once.repurge_after(), None);
        assert!(env::from_vars(&vars(&[("CACHE_EDGE_PURGE_URL", "not a url")])).is_none());
        assert!(env::from_vars(&vars(&[])).is_none());
    }

    #[test]
    fn the_environment_names_several_cdns() {
        let edge = env::from_vars(&vars(&[
            ("CACHE_EDGE", "varnish, cloudflare,fastly,cloudfront"),
            ("CACHE_EDGE_PURGE_URL", "http://127.0.0.1:1"),
            ("CACHE_EDGE_SITE_URL", "https://www.example.com"),
            ("CACHE_EDGE_CLOUDFLARE_ZONE", "zone1"),
            ("CACHE_EDGE_CLOUDFLARE_TOKEN", "cf-secret"),
            ("CACHE_EDGE_FASTLY_SERVICE", "svc1"),
            ("CACHE_EDGE_FASTLY_TOKEN", "fastly-secret"),
            ("CACHE_EDGE_CLOUDFRONT_DISTRIBUTION", "dist1"),
            ("AWS_ACCESS_KEY_ID", "AKID"),
            ("AWS_SECRET_ACCESS_KEY", "aws-secret"),
        ]))
        .expect("four CDNs");
        assert_eq!(
            edge.purger_names(),
            [
                "http-purge http://127.0.0.1:1",
                "xkey http://127.0.0.1:1/",
                "cloudflare zone1",
                "fastly svc1",
                "cloudfront dist1",
            ]
        );
        let shown = format!("{edge:?}");
        for secret in ["cf-secret", "fastly-secret", "aws-secret"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        // A CDN without its settings is skipped; an unknown name too.
        let partial = env::from_vars(&vars(&[
            ("CACHE_EDGE", "cloudflare,fastly,akamai"),
            ("CACHE_EDGE_FASTLY_SERVICE", "svc1"),
            ("CACHE_EDGE_FASTLY_TOKEN", "t"),
        ]))
        .expect("fastly alone");
        assert_eq!(partial.purger_names(), ["fastly svc1"]);
    }
}

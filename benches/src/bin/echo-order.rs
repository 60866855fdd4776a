//! What the bus's own echo costs an invalidation, by the order Redis writes the replies.
//!
//! Redis 7.0 delivers a `PUBLISH` to every subscriber of the channel, the publisher's own
//! process included (docs/PROTOCOL.md §5.2). This measures, with a RESP3 subscriber on a
//! thread of the process (as ours: the runtime's Redis thread), the round trip of shapes of
//! an invalidation that all delete `v` and `t`, set a fresh `t` and publish a message,
//! against a bare `DEL` and a `PING`, in interleaved rounds (hand-written redis-rs on a
//! current-thread runtime, nothing of our runtime):
//!
//! - `del_only`: `DEL v` (the issue's reference);
//! - `del_set_publish`: ours as built (`DEL v t`, `SET t PX`, `PUBLISH`, one pipeline);
//! - `publish_first`: `PUBLISH`, `DEL v t`, `SET t PX`: **not atomic** (a pipeline split
//!   across reads lets a receiver see the message before the `DEL`), measured only to show
//!   the order's effect;
//! - `multi_publish_first`: the same in `MULTI`/`EXEC`;
//! - `script_publish_first`: the same in one `EVAL` (`allow-oom`);
//! - `reply_off`: `CLIENT REPLY OFF`, `DEL v t`, `SET t PX`, `PUBLISH`, `CLIENT REPLY ON`,
//!   `GET t`: the message still after the `DEL`, and the connection's first reply follows
//!   the push;
//! - `reply_skip`: `CLIENT REPLY SKIP`, `DEL v t`, `CLIENT REPLY SKIP`, `SET t PX`,
//!   `PUBLISH`, `GET t`: the same order, with the `PUBLISH`'s own reply (an error in it
//!   stays visible) as the first of the loop;
//! - `lane_key`: the invalidation lane as built (docs/PROTOCOL.md §7.4): `CLIENT REPLY
//!   SKIP`, `DEL v t`, `PUBLISH`, `SET t PX` (its `OK` the proof);
//! - `scope_pipeline`: a tag invalidation's pipeline, `DEL token`, `PUBLISH` (§7.6);
//! - `lane_scope`: the same on the lane, `CLIENT REPLY SKIP`, `DEL token`, `PUBLISH`,
//!   `DEL token`.
//!
//! Redis queues a client for writing at the head of its pending list when the client's
//! first reply of the event loop is added, so the client queued last is written first: in
//! ours' order the subscriber (queued at the `PUBLISH`) is written before the publisher
//! (queued at the `DEL`), and on two vCPUs the subscriber's thread takes the idle one first.
//!
//! ```sh
//! cargo run -p cache-benches --release --bin echo-order -- [rounds] [calls per round]
//! ```
use std::time::Instant;

use cache_benches::current_thread_runtime;
use cache_tests::RedisServer;

const CHANNEL: &str = "eo:bus:1";
const SHAPES: [&str; 11] = [
    "del_only",
    "del_set_publish",
    "publish_first",
    "multi_publish_first",
    "script_publish_first",
    "reply_off",
    "reply_skip",
    "lane_key",
    "scope_pipeline",
    "lane_scope",
    "ping",
];

fn voluntary_switches() -> i64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_nvcsw
}

fn subscribe_on_own_thread(url: String) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        current_thread_runtime().block_on(async move {
            let client = redis::Client::open(format!("{url}?protocol=resp3")).expect("url");
            let config =
                redis::AsyncConnectionConfig::new().set_push_sender(|info: redis::PushInfo| {
                    if let Some(redis::Value::BulkString(payload)) = info.data.get(1) {
                        std::hint::black_box(payload.len());
                    }
                    Ok::<(), std::convert::Infallible>(())
                });
            let mut conn = client
                .get_multiplexed_async_connection_with_config(&config)
                .await
                .expect("subscriber connects");
            conn.subscribe(CHANNEL).await.expect("subscribes");
            ready_tx.send(()).expect("ready");
            std::future::pending::<()>().await;
            drop(conn);
        })
    });
    ready_rx.recv().expect("subscribed");
}

/// A pipeline under `CLIENT REPLY` that answers two replies (the request counts them).
async fn two_replies(
    conn: &mut redis::aio::MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> Vec<redis::Value> {
    conn.send_packed_commands(pipe, 0, 2)
        .await
        .expect("pipeline")
}

async fn run_shape(
    shape: usize,
    conn: &mut redis::aio::MultiplexedConnection,
    script: &redis::Script,
    v: &str,
    t: &str,
    message: &str,
) {
    let mut pipe = redis::pipe();
    match SHAPES[shape] {
        "del_only" => {
            let _: i64 = redis::cmd("DEL")
                .arg(v)
                .query_async(conn)
                .await
                .expect("DEL");
            return;
        }
        "ping" => {
            let _: String = redis::cmd("PING").query_async(conn).await.expect("PING");
            return;
        }
        "script_publish_first" => {
            let _: i64 = script
                .key(v)
                .key(t)
                .arg(CHANNEL)
                .arg(message)
                .arg("ticket01")
                .invoke_async(conn)
                .await
                .expect("EVAL");
            return;
        }
        "reply_off" => {
            pipe.cmd("CLIENT").arg("REPLY").arg("OFF");
            pipe.cmd("DEL").arg(v).arg(t);
            pipe.cmd("SET")
                .arg(t)
                .arg("ticket01")
                .arg("PX")
                .arg(300_000);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
            pipe.cmd("CLIENT").arg("REPLY").arg("ON");
            pipe.cmd("GET").arg(t);
            // Two replies: `CLIENT REPLY ON`'s and the `GET`'s (the fresh ticket iff the
            // `SET`, and so the `DEL` before it, ran).
            let replies = two_replies(conn, &pipe).await;
            assert!(
                matches!(&replies[1], redis::Value::BulkString(b) if b == b"ticket01"),
                "{replies:?}"
            );
            return;
        }
        "reply_skip" => {
            pipe.cmd("CLIENT").arg("REPLY").arg("SKIP");
            pipe.cmd("DEL").arg(v).arg(t);
            pipe.cmd("CLIENT").arg("REPLY").arg("SKIP");
            pipe.cmd("SET")
                .arg(t)
                .arg("ticket01")
                .arg("PX")
                .arg(300_000);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
            pipe.cmd("GET").arg(t);
            // Two replies: the `PUBLISH`'s (receivers) and the `GET`'s.
            let replies = two_replies(conn, &pipe).await;
            assert!(matches!(&replies[0], redis::Value::Int(1)), "{replies:?}");
            assert!(
                matches!(&replies[1], redis::Value::BulkString(b) if b == b"ticket01"),
                "{replies:?}"
            );
            return;
        }
        "lane_key" => {
            pipe.cmd("CLIENT").arg("REPLY").arg("SKIP");
            pipe.cmd("DEL").arg(v).arg(t);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
            pipe.cmd("SET")
                .arg(t)
                .arg("ticket01")
                .arg("PX")
                .arg(300_000);
            let replies = two_replies(conn, &pipe).await;
            assert!(
                matches!(replies[..], [redis::Value::Int(1), redis::Value::Okay]),
                "{replies:?}"
            );
            return;
        }
        "scope_pipeline" => {
            pipe.cmd("DEL").arg(t);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
        }
        "lane_scope" => {
            pipe.cmd("CLIENT").arg("REPLY").arg("SKIP");
            pipe.cmd("DEL").arg(t);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
            pipe.cmd("DEL").arg(t);
            let replies = two_replies(conn, &pipe).await;
            assert!(
                matches!(replies[..], [redis::Value::Int(1), redis::Value::Int(0)]),
                "{replies:?}"
            );
            return;
        }
        "del_set_publish" => {
            pipe.cmd("DEL").arg(v).arg(t);
            pipe.cmd("SET")
                .arg(t)
                .arg("ticket01")
                .arg("PX")
                .arg(300_000);
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
        }
        _ => {
            if SHAPES[shape] == "multi_publish_first" {
                pipe.atomic();
            }
            pipe.cmd("PUBLISH").arg(CHANNEL).arg(message);
            pipe.cmd("DEL").arg(v).arg(t);
            pipe.cmd("SET")
                .arg(t)
                .arg("ticket01")
                .arg("PX")
                .arg(300_000);
        }
    }
    let _: redis::Value = pipe.query_async(conn).await.expect("pipeline");
}

fn main() {
    let mut args = std::env::args().skip(1);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(12);
    let calls: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(1500);
    let server = RedisServer::start();
    subscribe_on_own_thread(server.url());
    let url = server.url();
    current_thread_runtime().block_on(async move {
        let client = redis::Client::open(url).expect("url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connects");
        // Shaped like ours (origin, action, time sent, key; the same length).
        let message = "C1\u{1f}00000000deadbeef\u{1f}I\u{1f}1764806400000000\u{1f}user:profile:1000042\u{1f}0";
        let script = redis::Script::new(
            "#!lua flags=allow-oom\nredis.call('PUBLISH', ARGV[1], ARGV[2]) \
             redis.call('DEL', KEYS[1], KEYS[2]) \
             redis.call('SET', KEYS[2], ARGV[3], 'PX', 300000) return 1",
        );
        let mut micros: Vec<Vec<f64>> = vec![Vec::new(); SHAPES.len()];
        let mut switches = vec![0i64; SHAPES.len()];
        // Round 0 warms up and is not counted; the shapes rotate their order every round.
        for round in 0..=rounds {
            for slot in 0..SHAPES.len() {
                let shape = (slot + round) % SHAPES.len();
                let before = voluntary_switches();
                for i in 0..calls {
                    let v = format!("eo:v:{}", i % 1000);
                    let t = format!("eo:t:{}", i % 1000);
                    let start = Instant::now();
                    run_shape(shape, &mut conn, &script, &v, &t, message).await;
                    if round > 0 {
                        micros[shape].push(start.elapsed().as_secs_f64() * 1e6);
                    }
                }
                if round > 0 {
                    switches[shape] += voluntary_switches() - before;
                }
            }
        }
        println!("| shape | p25 | p50 | p75 | p50 − del_only | voluntary context switches per call |");
        println!("|---|---|---|---|---|---|");
        let p50 = |s: &Vec<f64>| s[s.len() / 2];
        for s in micros.iter_mut() {
            s.sort_by(f64::total_cmp);
        }
        let reference = p50(&micros[0]);
        for (shape, s) in micros.iter().enumerate() {
            println!(
                "| {} | {:.1} µs | {:.1} µs | {:.1} µs | {:+.1} µs | {:.2} |",
                SHAPES[shape],
                s[s.len() / 4],
                p50(s),
                s[s.len() * 3 / 4],
                p50(s) - reference,
                switches[shape] as f64 / (rounds * calls) as f64
            );
        }
    });
}

//! Reads pipelined under load ("auto-pipelining"), on a tracked connection.
//!
//! Every request through redis-rs's multiplexed connection pays a fixed toll besides its
//! command: a message to the connection's driver task, a reply channel, a response timer in
//! Tokio's timer wheel, and the driver's bookkeeping of it (about 3 000 instructions per
//! request on this machine, docs/BENCHMARKS.md nineteenth round). When many callers of one
//! runtime read at once, their plain reads (`GET v` of a hit whose ticket and tokens are
//! kept, docs/PROTOCOL.md §7.1 step 4) are gathered here and sent as one pipeline: one toll
//! for the batch. A caller alone keeps its direct request: a read joins a batch only when
//! [`BATCH_FROM`] or more of this connection's reads are already in flight, so a sequential
//! hit pays two uncontended atomic adds and nothing else.
//!
//! The batch is sent by a task of the connection's own runtime (the *flusher*), rung by the
//! read that opens a batch; it runs after the tasks that are ready at that moment, as the
//! connection's driver would, so the reads issued meanwhile ride in the same pipeline (at
//! most [`BATCH_MAX`]; the rest in the next ones, each written before the next is taken) and
//! no read waits for another's reply. Several batches may be in flight at once. A caller that
//! gives up (cancelled) leaves its read in the batch; its reply is dropped.
//!
//! What a read learns is exactly what its own request would have returned: the same command
//! on the same connection, its reply in order with the tracking pushes (the driver applies a
//! push before it hands over the batch's replies, so a push that precedes a reply is applied
//! before that read checks its kept ticket). A server error answers its own read only (the
//! pipeline ignores errors in place); a failed batch (timeout, connection lost) answers each
//! of its reads with the same error, which each handles as its own.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::stream::{FuturesUnordered, StreamExt};
use redis::aio::MultiplexedConnection;
use redis::{RedisError, RedisResult, Value};
use tokio::sync::{mpsc, oneshot};

/// Reads already in flight on the connection from which a read joins a batch.
pub(super) const BATCH_FROM: usize = 4;

/// The most reads one batch carries. More ready at once go in later batches, each handed to
/// the connection's driver (and so written to the socket) before the next is taken: Redis
/// starts on the first while the rest are still being written, its replies come back in
/// several chunks, and the callers woken by one chunk decode and send their next reads while
/// Redis works on the next chunk, as independent requests overlap. One batch of everything
/// ready left the client and the server taking turns: with 64 callers on this machine the
/// wall time per read was 10–20 % longer (docs/BENCHMARKS.md, twenty-first round).
pub(super) const BATCH_MAX: usize = 32;

/// The reads gathered for the next batch.
#[derive(Default)]
struct Queue {
    cmds: Vec<redis::Cmd>,
    waiters: Vec<oneshot::Sender<RedisResult<Value>>>,
    /// The flusher is gone (its runtime shut down): reads go direct.
    closed: bool,
}

impl Queue {
    /// The next batch: the oldest [`BATCH_MAX`] reads at most (the rest stay queued, in
    /// order), and whether any stay.
    fn take_batch(
        &mut self,
    ) -> (
        Vec<redis::Cmd>,
        Vec<oneshot::Sender<RedisResult<Value>>>,
        bool,
    ) {
        let n = self.cmds.len().min(BATCH_MAX);
        let rest = (self.cmds.split_off(n), self.waiters.split_off(n));
        let cmds = std::mem::replace(&mut self.cmds, rest.0);
        let waiters = std::mem::replace(&mut self.waiters, rest.1);
        let more = !self.cmds.is_empty();
        (cmds, waiters, more)
    }
}

type Shared = Arc<Mutex<Queue>>;

/// The batching side of a tracked connection (cloned with it).
#[derive(Clone)]
pub(crate) struct ReadBatch {
    inner: Arc<Inner>,
}

struct Inner {
    /// This connection's reads in flight, direct or batched.
    in_flight: AtomicUsize,
    queue: Shared,
    /// Rings the flusher when a batch opens; closed (the flusher ends) when the last clone of
    /// the tracked connection is dropped.
    doorbell: mpsc::Sender<()>,
}

/// Counts a read in flight while it lives.
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl ReadBatch {
    /// The batching side of `conn`; its flusher is spawned on the current runtime (the one
    /// that drives `conn`).
    pub(super) fn spawn(conn: MultiplexedConnection) -> Self {
        let queue = Shared::default();
        let (doorbell, rung) = mpsc::channel(1);
        tokio::spawn(flusher(queue.clone(), rung, conn));
        Self {
            inner: Arc::new(Inner {
                in_flight: AtomicUsize::new(0),
                queue,
                doorbell,
            }),
        }
    }

    /// Sends `cmd` (one command) on `conn`, alone or in a batch with other reads.
    pub(super) async fn query(
        &self,
        conn: &MultiplexedConnection,
        cmd: redis::Cmd,
    ) -> RedisResult<Value> {
        let inner = &*self.inner;
        let before = inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let _counted = InFlight(&inner.in_flight);
        if before < BATCH_FROM {
            return super::direct::query(&mut conn.clone(), &cmd).await;
        }
        let (tx, rx) = oneshot::channel();
        let queued = {
            let mut q = inner.queue.lock().unwrap_or_else(|p| p.into_inner());
            if q.closed {
                Err(cmd)
            } else {
                q.cmds.push(cmd);
                q.waiters.push(tx);
                Ok(q.cmds.len() == 1)
            }
        };
        let opened = match queued {
            Ok(opened) => opened,
            Err(cmd) => return super::direct::query(&mut conn.clone(), &cmd).await,
        };
        if opened {
            // Full: a ring not yet answered, which takes this read too.
            let _ = inner.doorbell.try_send(());
        }
        rx.await.unwrap_or_else(|_| Err(flusher_gone()))
    }
}

fn flusher_gone() -> RedisError {
    RedisError::from(std::io::Error::new(
        std::io::ErrorKind::BrokenPipe,
        "the connection's read batching ended",
    ))
}

/// Marks the queue closed and answers what it holds when the flusher ends, by return or by
/// being dropped with its runtime.
struct CloseOnDrop(Shared);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let mut q = self.0.lock().unwrap_or_else(|p| p.into_inner());
        q.closed = true;
        q.cmds.clear();
        // Dropping the senders answers their reads (`flusher_gone`).
        q.waiters.clear();
    }
}

async fn flusher(queue: Shared, mut rung: mpsc::Receiver<()>, conn: MultiplexedConnection) {
    let _close = CloseOnDrop(queue.clone());
    let mut sent = FuturesUnordered::new();
    loop {
        tokio::select! {
            biased;
            Some(()) = sent.next(), if !sent.is_empty() => {}
            ring = rung.recv() => {
                if ring.is_none() {
                    break;
                }
                loop {
                    let (cmds, waiters, more) = queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .take_batch();
                    if cmds.is_empty() {
                        break;
                    }
                    sent.push(send(conn.clone(), cmds, waiters));
                    if !more {
                        break;
                    }
                    // Hand this batch to the driver (poll the sends until none completes),
                    // and let the driver write it, before the next batch is taken.
                    std::future::poll_fn(|cx| {
                        while let std::task::Poll::Ready(Some(())) = sent.poll_next_unpin(cx) {}
                        std::task::Poll::Ready(())
                    })
                    .await;
                    tokio::task::yield_now().await;
                }
            }
        }
    }
    // The last reader is gone; what is in flight still answers (nobody may be waiting).
    while sent.next().await.is_some() {}
}

/// Sends one batch and answers its reads in order.
async fn send(
    mut conn: MultiplexedConnection,
    mut cmds: Vec<redis::Cmd>,
    waiters: Vec<oneshot::Sender<RedisResult<Value>>>,
) {
    let replies = if cmds.len() == 1 {
        let cmd = cmds.pop().expect("one command");
        super::direct::query::<Value>(&mut conn, &cmd)
            .await
            .map(|v| vec![v])
    } else {
        super::counters::pipelined(cmds.len() as u64);
        let mut p = redis::Pipeline::with_capacity(cmds.len());
        for cmd in cmds {
            p.add_command(cmd);
        }
        super::direct::query_all(&mut conn, &p).await
    };
    match replies {
        Ok(values) => {
            let mut values = values.into_iter();
            for w in waiters {
                let _ = w.send(values.next().ok_or_else(short_reply));
            }
        }
        Err(e) => {
            for w in waiters {
                let _ = w.send(Err(e.clone()));
            }
        }
    }
}

fn short_reply() -> RedisError {
    RedisError::from((
        redis::ErrorKind::Client,
        "a pipelined read got no reply of its own",
    ))
}

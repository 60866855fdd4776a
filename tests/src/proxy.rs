//! A TCP proxy in front of a server, that can silently stop carrying the connections it has
//! open: what a NAT, a load balancer or a firewall does to a connection it dropped from its
//! table (no `FIN`, no `RST`: the client's writes vanish and nothing ever comes back), while
//! new connections get through. It can also hold the server's replies back for a while
//! (a slow network on the way back): commands still reach the server and execute; on every
//! connection, or only on those on which the server sent a given sequence of bytes (a push
//! held on its connection, while the others carry on).
//!
//! ```no_run
//! let server = cache_tests::RedisServer::start();
//! let proxy = cache_tests::proxy::Proxy::start(server.port());
//! let url = proxy.url(); // give this to the client under test
//! proxy.blackhole_open_connections();
//! ```

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};

/// The proxy: forwards every connection to `127.0.0.1:<target>` until its generation is
/// blackholed. Its threads end with the test process.
pub struct Proxy {
    port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    /// Connections accepted before this generation are blackholed.
    generation: AtomicU64,
    /// Connections accepted so far.
    accepted: AtomicU64,
    /// What the server sends that waits in the proxy, until released.
    holding: Mutex<Hold>,
    released: Condvar,
    /// Connections held by [`Proxy::hold_replies_after`] so far.
    held: AtomicU64,
}

#[derive(Default)]
struct Hold {
    /// Every connection's ([`Proxy::hold_replies`]).
    all: bool,
    /// The connections on which the server sends this ([`Proxy::hold_replies_after`]).
    after: Option<Vec<u8>>,
    /// Releases so far: a connection held in round `r` goes on once it is passed.
    round: u64,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `127.0.0.1:<target>`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            holding: Mutex::new(Hold::default()),
            released: Condvar::new(),
            held: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                accepting.accepted.fetch_add(1, Ordering::SeqCst);
                let generation = accepting.generation.load(Ordering::SeqCst);
                for (from, to, replies) in [
                    (client.try_clone(), server.try_clone(), false),
                    (server.try_clone(), client.try_clone(), true),
                ] {
                    let (Ok(from), Ok(to)) = (from, to) else {
                        continue;
                    };
                    let shared = accepting.clone();
                    std::thread::spawn(move || pump(from, to, generation, replies, &shared));
                }
            }
        });
        Self { port, shared }
    }

    /// The proxy's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// From now on, every connection open now carries nothing, either way, and is never
    /// closed; connections accepted later are forwarded.
    pub fn blackhole_open_connections(&self) {
        self.shared.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// From now on what the server sends on any connection waits in the proxy, in order,
    /// until [`release_replies`](Self::release_replies); what clients send still reaches the
    /// server, whose commands execute.
    pub fn hold_replies(&self) {
        self.shared.holding.lock().unwrap().all = true;
    }

    /// From now on a connection on which the server sends `bytes` holds what the server
    /// sends on it, from the read that carried them, until
    /// [`release_replies`](Self::release_replies); the other connections carry on, and what
    /// clients send still reaches the server. E.g. a RESP3 null invalidation push held on the
    /// tracked connections while the data connection answers.
    pub fn hold_replies_after(&self, bytes: &[u8]) {
        assert!(!bytes.is_empty(), "nothing to look for");
        self.shared.holding.lock().unwrap().after = Some(bytes.to_vec());
    }

    /// Connections held by [`hold_replies_after`](Self::hold_replies_after) so far (released
    /// or not).
    pub fn connections_held(&self) -> u64 {
        self.shared.held.load(Ordering::SeqCst)
    }

    /// Sends on what [`hold_replies`](Self::hold_replies) and
    /// [`hold_replies_after`](Self::hold_replies_after) held, and everything after it, and
    /// stops looking for the bytes.
    pub fn release_replies(&self) {
        let mut hold = self.shared.holding.lock().unwrap();
        *hold = Hold {
            round: hold.round + 1,
            ..Hold::default()
        };
        self.shared.released.notify_all();
    }
}

/// Copies `from` to `to` while the connection's generation is current; afterwards reads and
/// drops what arrives, so that the sender sees its writes accepted and nothing else.
/// `replies`: the server-to-client direction, which [`Proxy::hold_replies`] holds.
fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, replies: bool, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    // The end of what came before, for bytes split across reads; the round this connection
    // is held in.
    let mut tail: Vec<u8> = Vec::new();
    let mut held_in: Option<u64> = None;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if replies {
            let mut hold = shared.holding.lock().unwrap();
            if let (None, Some(after)) = (held_in, &hold.after) {
                tail.extend_from_slice(&buf[..n]);
                if tail.windows(after.len()).any(|w| w == after.as_slice()) {
                    held_in = Some(hold.round);
                    shared.held.fetch_add(1, Ordering::SeqCst);
                }
                tail.drain(..tail.len().saturating_sub(after.len() - 1));
            }
            hold = shared
                .released
                .wait_while(hold, |h| h.all || held_in == Some(h.round))
                .unwrap();
            if held_in.is_some_and(|r| r != hold.round) {
                held_in = None;
                tail.clear();
            }
        }
        if shared.generation.load(Ordering::SeqCst) != generation {
            continue;
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    if shared.generation.load(Ordering::SeqCst) == generation {
        let _ = to.shutdown(Shutdown::Write);
    }
}

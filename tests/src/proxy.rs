//! A TCP proxy in front of a server, that can silently stop carrying the connections it has
//! open: what a NAT, a load balancer or a firewall does to a connection it dropped from its
//! table (no `FIN`, no `RST`: the client's writes vanish and nothing ever comes back), while
//! new connections get through. It can also hold the server's replies back for a while
//! (a slow network on the way back): commands still reach the server and execute.
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
    /// While true, what the server sends waits in the proxy ([`Proxy::hold_replies`]).
    holding: Mutex<bool>,
    released: Condvar,
}

impl Proxy {
    /// Listens on a free loopback port, forwarding to `127.0.0.1:<target>`.
    pub fn start(target: u16) -> Self {
        let listener = TcpListener::bind(("127.0.0.1", 0)).expect("bind the proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let shared = Arc::new(Shared {
            generation: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            holding: Mutex::new(false),
            released: Condvar::new(),
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
        *self.shared.holding.lock().unwrap() = true;
    }

    /// Sends on what [`hold_replies`](Self::hold_replies) held, and everything after it.
    pub fn release_replies(&self) {
        *self.shared.holding.lock().unwrap() = false;
        self.shared.released.notify_all();
    }
}

/// Copies `from` to `to` while the connection's generation is current; afterwards reads and
/// drops what arrives, so that the sender sees its writes accepted and nothing else.
/// `replies`: the server-to-client direction, which [`Proxy::hold_replies`] holds.
fn pump(mut from: TcpStream, mut to: TcpStream, generation: u64, replies: bool, shared: &Shared) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if replies {
            let held = shared.holding.lock().unwrap();
            drop(shared.released.wait_while(held, |h| *h).unwrap());
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

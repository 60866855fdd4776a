//! A real Varnish (`varnishd` from Debian's `varnish` package, with `varnish-modules` for
//! xkey) per test or per test binary, on a free loopback port, running the VCL the repository
//! ships (`deploy/varnish/cache-toolkit.vcl`) in front of a backend the test chooses.
//!
//! ```no_run
//! let backend_port = 8080; // e.g. a hyper or axum server started by the test
//! let varnish = cache_tests::VarnishServer::start(backend_port);
//! println!("GET {}/users/1", varnish.url());
//! assert_eq!(varnish.stat("MAIN.cache_hit"), 0);
//! varnish.kill(); // an edge that is down
//! varnish.restart(); // empty cache, same port
//! ```

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const VARNISH_HINT: &str = "varnishd was not found. The edge tests need a real Varnish with \
the xkey vmod: install Debian's packages with `apt-get install -y varnish varnish-modules` \
(or run `bash scripts/test.sh`, which does)";

/// The VCL shipped for production, relative to this crate.
const SHIPPED_VCL: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../deploy/varnish/cache-toolkit.vcl"
);

const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A `varnishd -F` process owned by the test: its own work directory (`-n`), no management
/// port, `malloc` storage, no privilege separation (`-j none`, so it runs as root or as the
/// current user alike). Killed, with its cache child process, when dropped and when the test
/// process exits.
pub struct VarnishServer {
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl VarnishServer {
    /// Starts Varnish on a free loopback port with the shipped VCL, its backend set to
    /// `127.0.0.1:backend_port`, and waits until it answers. Panics with an install hint when
    /// `varnishd` is missing, and with varnishd's own output when it does not start (e.g. the
    /// xkey vmod is missing).
    pub fn start(backend_port: u16) -> Self {
        let vcl = std::fs::read_to_string(SHIPPED_VCL)
            .unwrap_or_else(|e| panic!("cannot read the shipped VCL {SHIPPED_VCL}: {e}"));
        Self::start_with_vcl(&vcl, backend_port)
    }

    /// [`start`](Self::start) with another VCL, whose backend block is replaced the same way
    /// (between the lines `# BEGIN backend` and `# END backend`).
    pub fn start_with_vcl(vcl: &str, backend_port: u16) -> Self {
        remove_stale_workdirs();
        let port = crate::free_port();
        let dir =
            std::env::temp_dir().join(format!("cache-tests-varnish-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create the varnish work directory");
        std::fs::write(dir.join("test.vcl"), with_backend(vcl, backend_port))
            .expect("write the test VCL");
        let server = Self {
            port,
            dir,
            child: Mutex::new(None),
        };
        server.launch();
        server
    }

    fn launch(&self) {
        let log = std::fs::File::create(self.dir.join("varnishd.log")).expect("varnishd log");
        let mut cmd = Command::new(varnishd_path());
        cmd.arg("-F")
            .arg("-n")
            .arg(self.dir.join("n"))
            .args(["-a", &format!("127.0.0.1:{}", self.port)])
            .args(["-T", "none"])
            .arg("-f")
            .arg(self.dir.join("test.vcl"))
            .args(["-s", "malloc,64m"])
            .args(["-j", "none"])
            // Small shared-memory log: a test writes little, and /tmp may be a tmpfs.
            .args(["-p", "vsl_space=4M"])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("varnishd log"))
            .stderr(log);
        // Its own process group, so that `kill` reaches the cache child process as well.
        // SAFETY: setpgid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setpgid(0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = crate::spawn_tied_to_process(cmd);
        *self.child.lock().unwrap() = Some(child);
        self.wait_ready();
    }

    /// Ready when a `PURGE` of a URL nobody caches is answered: the VCL is loaded and the
    /// cache process serves requests (without involving the backend).
    fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.raw_status("PURGE /__cache_tests_ready") {
                assert_eq!(
                    status,
                    200,
                    "varnish on port {} refused the readiness PURGE; is the purge ACL \
                     loopback?\n{}",
                    self.port,
                    self.log()
                );
                return;
            }
            if let Some(child) = self.child.lock().unwrap().as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "varnishd on port {} exited at start ({status}). If the VCL could not \
                         import xkey, install `varnish-modules`.\n{}",
                        self.port,
                        self.log()
                    );
                }
            }
            assert!(
                Instant::now() < deadline,
                "varnishd on port {} did not answer within {START_TIMEOUT:?}\n{}",
                self.port,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends one request line (no body) and returns the response status, if any.
    fn raw_status(&self, request_line: &str) -> Option<u16> {
        let mut s = TcpStream::connect_timeout(&self.addr(), Duration::from_millis(200)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(
            s,
            "{request_line} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
            self.port
        )
        .ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    /// varnishd's output so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("varnishd.log")).unwrap_or_default()
    }

    /// The listening port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `http://127.0.0.1:PORT`: what clients GET and what purgers target.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The work directory (`-n`), e.g. for `varnishlog -n DIR/n -d`.
    pub fn workdir(&self) -> PathBuf {
        self.dir.join("n")
    }

    /// All counters (`varnishstat -1`), by name: `MAIN.cache_hit`, `MAIN.n_purges`,
    /// `XKEY.g_keys`, ...
    pub fn stats(&self) -> BTreeMap<String, u64> {
        let out = Command::new(tool_path("varnishstat"))
            .arg("-n")
            .arg(self.workdir())
            .arg("-1")
            .output()
            .expect("run varnishstat");
        assert!(
            out.status.success(),
            "varnishstat failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|line| {
                let mut f = line.split_whitespace();
                let name = f.next()?;
                let value = f.next()?.parse().ok()?;
                Some((name.to_string(), value))
            })
            .collect()
    }

    /// One counter (0 when absent).
    pub fn stat(&self, name: &str) -> u64 {
        self.stats().get(name).copied().unwrap_or(0)
    }

    /// SIGKILL to varnishd and its cache process, and waits until the manager is gone; the
    /// port then refuses connections.
    pub fn kill(&self) {
        if let Some(mut child) = self.child.lock().unwrap().take() {
            let pgid = child.id() as libc::pid_t;
            // SAFETY: plain syscall; the group is the one varnishd created at spawn.
            unsafe {
                libc::kill(-pgid, libc::SIGKILL);
            }
            let _ = child.kill();
            let _ = child.wait();
            // The cache process is in the group too; wait until nothing accepts any more.
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect_timeout(&self.addr(), Duration::from_millis(100)).is_ok() {
                assert!(
                    Instant::now() < deadline,
                    "varnish on port {} still accepts after SIGKILL",
                    self.port
                );
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }

    /// Starts Varnish again on the same port (after [`kill`](Self::kill)), with an empty cache.
    pub fn restart(&self) {
        self.kill();
        self.launch();
    }
}

impl Drop for VarnishServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the work directories of test processes that are gone (a server kept in a `static`
/// for a whole test binary is never dropped, so its directory outlives the process).
fn remove_stale_workdirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("cache-tests-varnish-"))
        else {
            continue;
        };
        let Some(pid) = rest
            .split('-')
            .next()
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Replaces the VCL's backend block (between `# BEGIN backend` and `# END backend`) with one
/// for `127.0.0.1:port`.
fn with_backend(vcl: &str, port: u16) -> String {
    let begin = vcl
        .find("# BEGIN backend")
        .expect("the VCL marks its backend with `# BEGIN backend`");
    let end_marker = "# END backend";
    let end = vcl[begin..]
        .find(end_marker)
        .map(|i| begin + i + end_marker.len())
        .expect("the VCL marks the end of its backend with `# END backend`");
    format!(
        "{}# backend set by cache_tests::VarnishServer\n\
         backend default {{\n    .host = \"127.0.0.1\";\n    .port = \"{port}\";\n    \
         .connect_timeout = 1s;\n    .first_byte_timeout = 10s;\n}}{}",
        &vcl[..begin],
        &vcl[end..]
    )
}

fn varnishd_path() -> PathBuf {
    find_tool("varnishd").unwrap_or_else(|| panic!("{VARNISH_HINT}"))
}

fn tool_path(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("{name} not found. {VARNISH_HINT}"))
}

/// `varnishd` lives in /usr/sbin, which is not on every PATH.
fn find_tool(name: &str) -> Option<PathBuf> {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"])
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::with_backend;

    #[test]
    fn the_backend_block_is_replaced() {
        let vcl = "vcl 4.1;\n# BEGIN backend\nbackend default { .host = \"x\"; }\n# END backend\nsub vcl_recv {}\n";
        let out = with_backend(vcl, 4242);
        assert!(out.starts_with("vcl 4.1;\n# backend set by"));
        assert!(out.contains(".port = \"4242\";"));
        assert!(!out.contains("\"x\""));
        assert!(out.ends_with("}\nsub vcl_recv {}\n"));
    }

    #[test]
    fn the_shipped_vcl_has_the_markers() {
        let vcl = std::fs::read_to_string(super::SHIPPED_VCL).unwrap();
        assert!(with_backend(&vcl, 1).contains(".port = \"1\";"));
    }
}

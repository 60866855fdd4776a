#!/usr/bin/env python3
"""Server CPU per store of a miss: the conditional `store` script against the plain pipeline
(docs/PROTOCOL.md §7.2), against a redis-server of its own on a free loopback port.

Each form is sent in pipelined batches of 50 (so the server's per-round-trip cost, the same
for every form, is spread thin) and the server's `used_cpu_user + used_cpu_sys` (`INFO cpu`)
is read before and after: the difference per store is what the server spends on it, Lua
included (`INFO commandstats` would count a script's commands twice). The forms alternate,
three rounds. The script is the one the runtime sends (read from `scripts.rs`; with two
scope tokens: the cache's and the global clear); "plain" is `GET t`, `SET v PX`, `PEXPIRE t GT` (an untagged entry), "plain +
1 tag" adds one `PEXPIRE … GT`, "SET" is a hand-written store. No dependencies: RESP by hand.

    python3 scripts/store-server-cost.py [stores per form and round, default 100000]
"""
import os
import socket
import subprocess
import sys
import tempfile
import time

def store_script():
    """The `store` script as the runtime sends it, read from its source."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "cache-runtime",
                        "src", "redis_tier", "scripts.rs")
    text = open(path).read()
    body = text.split("store: Script::new(", 1)[1].split('r"', 1)[1].split('",', 1)[0]
    assert "redis.call('SET', KEYS[1]" in body, "the store script moved in scripts.rs"
    return body.strip()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def enc(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(out)


class Conn:
    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.buf = b""

    def line(self):
        while b"\r\n" not in self.buf:
            self.buf += self.s.recv(1 << 20)
        i = self.buf.index(b"\r\n")
        line, self.buf = self.buf[:i], self.buf[i + 2:]
        return line

    def reply(self):
        line = self.line()
        if line[:1] == b"$":
            n = int(line[1:])
            if n < 0:
                return None
            while len(self.buf) < n + 2:
                self.buf += self.s.recv(1 << 20)
            data, self.buf = self.buf[:n], self.buf[n + 2:]
            return data
        if line[:1] == b"*":
            return [self.reply() for _ in range(int(line[1:]))]
        if line[:1] == b"-":
            raise RuntimeError(line.decode())
        return line

    def cmd(self, *args):
        self.s.sendall(enc(*args))
        return self.reply()

    def cpu(self):
        info = self.cmd("INFO", "cpu").decode()
        fields = dict(l.split(":", 1) for l in info.split("\r\n") if ":" in l)
        return float(fields["used_cpu_user"]) + float(fields["used_cpu_sys"])


def main():
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 100000
    port = free_port()
    workdir = tempfile.mkdtemp(prefix="store-cost-")
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", workdir],
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(100):
            try:
                c = Conn(port)
                c.cmd("PING")
                break
            except OSError:
                time.sleep(0.05)
        print(c.cmd("INFO", "server").decode().split("redis_version:")[1].split("\r\n")[0],
              "on port", port)
        sha = c.cmd("SCRIPT", "LOAD", store_script()).decode()
        ticket, cache, everything, tag = (
            "abcdef0123456789", "1111222233334444", "5555666677778888", "9999aaaabbbbcccc")
        value = b"x" * 150
        keep = 700_000
        c.cmd("SET", "t", ticket, "PX", keep)
        c.cmd("SET", "c", cache)
        c.cmd("SET", "a", everything)
        c.cmd("SET", "tag", tag, "PX", keep)

        def quantized():
            now = int(time.time() * 1000)
            return (now // keep + 2) * keep - now

        forms = {
            "script": (1, lambda: enc("EVALSHA", sha, 5, "v", "t", "l", "c", "a", ticket, value,
                                      300000, keep, "", cache, everything)),
            "plain": (3, lambda: enc("GET", "t") + enc("SET", "v", value, "PX", 300000)
                      + enc("PEXPIRE", "t", keep, "GT")),
            "plain + 1 tag": (4, lambda: enc("GET", "t") + enc("SET", "v", value, "PX", 300000)
                              + enc("PEXPIRE", "t", keep, "GT")
                              + enc("PEXPIRE", "tag", quantized(), "GT")),
            "SET": (1, lambda: enc("SET", "v", value, "PX", 300000)),
        }
        batch = 50
        results = {name: [] for name in forms}
        for _ in range(3):
            for name, (replies, build) in forms.items():
                before = c.cpu()
                for _ in range(n // batch):
                    c.s.sendall(build() * batch)
                    for _ in range(replies * batch):
                        c.reply()
                results[name].append((c.cpu() - before) / n * 1e6)
        for name, us in results.items():
            print(f"{name:>14}: server CPU per store {min(us):.2f}–{max(us):.2f} µs "
                  f"({', '.join(f'{u:.2f}' for u in us)})")
    finally:
        server.terminate()
        server.wait()


if __name__ == "__main__":
    main()

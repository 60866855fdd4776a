#!/usr/bin/env python3
"""The data working set of one call: distinct 64-byte lines a call touches, stack and the rest.

Runs a contender of benches/src/bin/hit-instructions.rs under valgrind's lackey
(`--trace-mem=yes`, every load and store of every thread) for 2 000 calls after its 1 000
warm-up calls, skips the first 60 % of the trace (start-up, warm-up, the first measured calls),
cuts the next twenty calls' worth into windows of one call's data accesses (its Dr + Dw per
call, from scripts/cachegrind-ops.sh) and prints, averaged over the windows, the distinct
lines each touched: on the main thread's stack (where a current-thread runtime polls the
call's futures), and elsewhere (heap, statics, other threads' stacks). The windows do not
start where calls start: one window's count moves by ±40 % around the average. A window
that fits the L1 data cache (32 KB = 512 lines on the AMD EPYC VM of docs/BENCHMARKS.md) runs
from it; one that does not misses on every call. See docs/BENCHMARKS.md, thirty-first round.

    CARGO_TARGET_DIR=/work/target-prof python3 scripts/working-set.py redis-ours redis-hand
    CARGO_TARGET_DIR=/work/target-prof python3 scripts/working-set.py --by-function miss-ours

`--by-function` also prints, for each function, the lines it touched first in a window (stack
and elsewhere, averaged over the windows; the thirty most): lackey traces superblocks too, and
each is named by the symbol of the binary it starts in (`?lib` for the shared libraries,
libc's `memcpy` and `malloc` among them).

Each contender takes two to four minutes and ~4 GB of temporary trace.
"""

import bisect
import collections
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "hit-instructions")
CALLS = 2000
ENV = dict(os.environ, BENCH_REDIS_TIMEOUT_MS="5000")
# Where valgrind loads a position-independent executable on amd64.
PIE_BASE = 0x108000


def data_accesses_per_call(contender):
    """Dr + Dw per call, from scripts/cachegrind-ops.sh (N = 1 000 and 4 000, the difference;
    it also builds the binary)."""
    table = subprocess.run(
        ["bash", os.path.join(ROOT, "scripts", "cachegrind-ops.sh"), contender],
        env=dict(os.environ, EVENTS="Dr Dw", N1="1000", N2="4000"),
        stdout=subprocess.PIPE, text=True, check=True).stdout
    row = table.strip().splitlines()[-1]
    reads, writes = (int(cell) for cell in row.strip("| ").split(" | ")[1:])
    return reads + writes


class Symbols:
    """The binary's function symbols, at the addresses valgrind runs them from."""

    def __init__(self):
        out = subprocess.run(["nm", "-C", "--defined-only", "-n", BIN],
                             stdout=subprocess.PIPE, text=True, check=True).stdout
        self.starts, self.names = [], []
        for line in out.splitlines():
            parts = line.split(" ", 2)
            if len(parts) == 3 and parts[1] in "tTwW":
                self.starts.append(int(parts[0], 16) + PIE_BASE)
                # Generic arguments dropped: one name per function, not per instance.
                name = parts[2]
                while re.search(r"<[^<>]*>", name):
                    name = re.sub(r"<[^<>]*>", "", name)
                self.names.append(name)
        self.end = self.starts[-1] + (1 << 20)

    def of(self, addr):
        i = bisect.bisect_right(self.starts, addr) - 1
        return self.names[i] if 0 <= i and addr < self.end else "?lib"


def lines_per_window(contender, window, by_function=False):
    """Distinct lines per window (stack, other); with `by_function`, also per function that
    touched each line first in its window."""
    symbols = Symbols() if by_function else None
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "trace")
        superblocks = ["--trace-superblocks=yes"] if by_function else []
        subprocess.run(
            ["valgrind", "--tool=lackey", "--trace-mem=yes", *superblocks, f"--log-file={log}",
             BIN, contender, str(CALLS)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        size = os.path.getsize(log)
        accesses, names, current = [], {}, "?"
        with open(log, "rb") as trace:
            trace.seek(int(size * 0.60))
            trace.readline()
            for line in trace:
                if len(accesses) >= window * 20:
                    break
                if line[:1] == b" " and line[1:2] in (b"L", b"S", b"M"):
                    accesses.append((int(line[3:].split(b",")[0], 16) >> 6, current))
                elif symbols and line[:3] == b"SB ":
                    addr = int(line[3:], 16)
                    if addr not in names:
                        names[addr] = symbols.of(addr)
                    current = names[addr]
    # The main thread's stack is the highest mapping valgrind gives the client.
    stack_floor = (max(a for a, _ in accesses) << 6) - (8 << 20)
    sums, firsts, windows = collections.Counter(), collections.Counter(), 0
    for i in range(0, len(accesses) - window, window):
        first = {}
        for line, function in accesses[i:i + window]:
            first.setdefault(line, function)
        for line, function in first.items():
            where = "stack" if (line << 6) >= stack_floor else "other"
            sums[where] += 1
            firsts[(function, where)] += 1
        windows += 1
    lines = {k: v / windows for k, v in sums.items()}
    return lines, {k: v / windows for k, v in firsts.items()}, windows


def print_by_function(contender, firsts):
    for where in ("stack", "other"):
        print(f"\n{contender}, {where} lines by the function that touched them first:\n")
        print("| lines | function |")
        print("|---|---|")
        rows = sorted(((n, f) for (f, w), n in firsts.items() if w == where), reverse=True)
        for n, function in rows[:30]:
            print(f"| {n:.1f} | `{function[-120:]}` |")
    print(flush=True)


def main():
    args = sys.argv[1:]
    by_function = "--by-function" in args
    contenders = [a for a in args if a != "--by-function"] or [
        "redis-ours", "redis-hand", "redis-cached"]
    attributed = []
    print("| contender | data accesses per call | lines per call: stack | other | all (KB) |")
    print("|---|---|---|---|---|")
    for c in contenders:
        window = data_accesses_per_call(c)
        lines, firsts, windows = lines_per_window(c, window, by_function)
        stack, other = lines.get("stack", 0), lines.get("other", 0)
        print(f"| {c} | {window} | {stack:.0f} | {other:.0f} | "
              f"{stack + other:.0f} ({(stack + other) * 64 / 1024:.1f}) |", flush=True)
        if by_function:
            attributed.append((c, firsts))
    for c, firsts in attributed:
        print_by_function(c, firsts)


if __name__ == "__main__":
    main()

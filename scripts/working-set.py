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

Each contender takes two to four minutes and ~4 GB of temporary trace.
"""

import collections
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
BIN = os.path.join(TARGET, "release", "hit-instructions")
CALLS = 2000
ENV = dict(os.environ, BENCH_REDIS_TIMEOUT_MS="5000")


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


def lines_per_window(contender, window):
    with tempfile.TemporaryDirectory() as tmp:
        log = os.path.join(tmp, "trace")
        subprocess.run(
            ["valgrind", "--tool=lackey", "--trace-mem=yes", f"--log-file={log}",
             BIN, contender, str(CALLS)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        size = os.path.getsize(log)
        accesses = []
        with open(log, "rb") as trace:
            trace.seek(int(size * 0.60))
            trace.readline()
            for line in trace:
                if len(accesses) >= window * 20:
                    break
                if line[:1] == b" " and line[1:2] in (b"L", b"S", b"M"):
                    accesses.append(int(line[3:].split(b",")[0], 16) >> 6)
    # The main thread's stack is the highest mapping valgrind gives the client.
    stack_floor = (max(accesses) << 6) - (8 << 20)
    sums, windows = collections.Counter(), 0
    for i in range(0, len(accesses) - window, window):
        for line in set(accesses[i:i + window]):
            sums["stack" if (line << 6) >= stack_floor else "other"] += 1
        windows += 1
    return {k: v / windows for k, v in sums.items()}, windows


def main():
    contenders = sys.argv[1:] or ["redis-ours", "redis-hand", "redis-cached"]
    print("| contender | data accesses per call | lines per call: stack | other | all (KB) |")
    print("|---|---|---|---|---|")
    for c in contenders:
        window = data_accesses_per_call(c)
        lines, windows = lines_per_window(c, window)
        stack, other = lines.get("stack", 0), lines.get("other", 0)
        print(f"| {c} | {window} | {stack:.0f} | {other:.0f} | "
              f"{stack + other:.0f} ({(stack + other) * 64 / 1024:.1f}) |", flush=True)


if __name__ == "__main__":
    main()

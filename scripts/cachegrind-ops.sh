#!/usr/bin/env bash
# Cache misses per call (hits, misses, invalidations), simulated by valgrind's cachegrind:
# the companion of scripts/callgrind-hits.sh for what instruction counts do not show. Every
# contender of benches/src/bin/hit-instructions.rs runs N1 and N2 calls under
# `valgrind --tool=cachegrind --cache-sim=yes --branch-sim=yes`, and each event's
# (E(N2) - E(N1)) / (N2 - N1) is its count for one call, client side (every thread of the
# caller's process; redis-server is another process). The simulated caches are the host's
# (cachegrind reads them from CPUID; this AMD EPYC VM: 32 KB 8-way L1 data and
# instruction caches, 64-byte lines). See docs/BENCHMARKS.md, thirty-first round.
#
#   bash scripts/cachegrind-ops.sh                       # the Redis hit and miss contenders
#   bash scripts/cachegrind-ops.sh miss-ours miss-hand   # some
#   D1=65536,8,64 bash scripts/cachegrind-ops.sh ...     # another simulated L1 data cache
#
# Columns (EVENTS, any of cachegrind's, overrides them): Ir instructions; I1mr L1
# instruction misses; D1mr / D1mw L1 data read / write misses; Bcm / Bim mispredicted
# conditional / indirect branches.
set -euo pipefail
N1=${N1:-1000}
N2=${N2:-4000}
source "$(dirname "$0")/hit-instructions-env.sh"
CONTENDERS=("$@")
if [ ${#CONTENDERS[@]} -eq 0 ]; then
    CONTENDERS=(redis-ours redis-hand redis-cached miss-ours miss-hand miss-cached miss-ours-two-tier)
fi
SIM=(--cache-sim=yes --branch-sim=yes)
if [ -n "${D1:-}" ]; then
    SIM+=("--D1=$D1")
fi
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT
events() { # contender calls -> cachegrind's output file, with its `events:` and `summary:` lines
    BENCH_REDIS_TIMEOUT_MS=5000 valgrind --tool=cachegrind "${SIM[@]}" \
        --cachegrind-out-file="$OUT/$1.$2" "$BIN" "$1" "$2" >/dev/null 2>&1
    echo "$OUT/$1.$2"
}
# The events to print (`EVENTS="Dr Dw"`: data reads and writes, as scripts/working-set.py asks).
read -r -a wanted <<< "${EVENTS:-Ir I1mr D1mr D1mw Bcm Bim}"
printf '| contender |'; printf ' %s |' "${wanted[@]}"; printf '\n|---|'; printf -- '---|%.0s' "${wanted[@]}"; printf '\n'
for c in "${CONTENDERS[@]}"; do
    a=$(events "$c" "$N1")
    b=$(events "$c" "$N2")
    header=$(sed -n 's/^events: //p' "$a")
    x_all=$(sed -n 's/^summary: //p' "$a")
    y_all=$(sed -n 's/^summary: //p' "$b")
    printf '| %s |' "$c"
    for w in "${wanted[@]}"; do
        i=0
        for name in $header; do
            if [ "$name" = "$w" ]; then
                x=$(echo "$x_all" | cut -d' ' -f$((i + 1)))
                y=$(echo "$y_all" | cut -d' ' -f$((i + 1)))
                printf ' %d |' $(( (y - x) / (N2 - N1) ))
            fi
            i=$((i + 1))
        done
    done
    printf '\n'
done

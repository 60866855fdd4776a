#!/usr/bin/env bash
# Instructions per call (hits, misses, invalidations), counted by valgrind's callgrind
# (stable on a noisy machine, unlike times): every contender of
# benches/src/bin/hit-instructions.rs runs N1 and N2 calls, and (I(N2) - I(N1)) / (N2 - N1)
# is the client-side cost of one call (all threads of the caller's
# process; redis-server is another process and not counted). See docs/BENCHMARKS.md.
#
#   bash scripts/callgrind-hits.sh                 # every contender
#   bash scripts/callgrind-hits.sh local-ours ...  # some
set -euo pipefail
N1=${N1:-2000}
N2=${N2:-12000}
source "$(dirname "$0")/hit-instructions-env.sh"
CONTENDERS=("$@")
if [ ${#CONTENDERS[@]} -eq 0 ]; then
    CONTENDERS=(local-ours local-ours-tagged local-hand local-cached local-ours-async local-hand-async local-cached-async local-quick local-mini redis-ours redis-hand redis-hand-mget redis-cached redis-ours-64 redis-hand-64 miss-ours miss-ours-tagged miss-ours-two-tier miss-hand miss-cached invalidate-ours invalidate-hand invalidate-hand-publish invalidate-hand-protocol invalidate-ours-64 invalidate-hand-64 invalidate-tag-ours local-ours-two-tier invalidated-miss-ours-two-tier)
fi
count() { # contender calls -> total instructions ("Collected" line of callgrind)
    BENCH_REDIS_TIMEOUT_MS=5000 valgrind --tool=callgrind --callgrind-out-file=/dev/null "$BIN" "$1" "$2" 2>&1 \
        | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}
printf '| contender | instructions per call |\n|---|---|\n'
for c in "${CONTENDERS[@]}"; do
    a=$(count "$c" "$N1")
    b=$(count "$c" "$N2")
    printf '| %s | %d |\n' "$c" $(( (b - a) / (N2 - N1) ))
done

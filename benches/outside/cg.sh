#!/bin/bash
# Client instructions per call of one contender, by callgrind:
#   (Ir at N2 - Ir at N1) / (N2 - N1), which strips start-up (default N1 = 1000, N2 = 4000),
# with its allocations per call and the Redis commands per call counted by the server.
# Usage: benches/outside/cg.sh <contender> [N1 N2]   (after the build in README.md there)
set -euo pipefail
c=$1; n1=${2:-1000}; n2=${3:-4000}
here=$(cd "$(dirname "$0")" && pwd)
bin=${BIN:-${CARGO_TARGET_DIR:-$here/target}/release/ext-perf}
out=${CG_OUT:-$here/target/cg}
mkdir -p "$out"
for n in $n1 $n2; do
  valgrind --tool=callgrind --callgrind-out-file="$out/$c.$n.out" "$bin" "$c" "$n" > "$out/$c.$n.log" 2>&1
done
ir() { grep -E '^(summary|totals):' "$out/$c.$1.out" | tail -1 | awk '{print $2}'; }
a=$(ir "$n1"); b=$(ir "$n2")
allocs=$(grep 'allocs/call' "$out/$c.$n2.log" | awk '{print $2}')
cmds=$(grep 'redis cmds' "$out/$c.$n2.log" | sed 's/.*ping\/info): //' || true)
echo "$c instr/call: $(( (b - a) / (n2 - n1) ))  allocs/call: $allocs  $cmds"

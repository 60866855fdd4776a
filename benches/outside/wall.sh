#!/bin/bash
# Wall time per call, interleaved rounds, of one or more builds of the harness:
#   BINS="before=/path/to/ext-perf after=/path/to/ext-perf" benches/outside/wall.sh ROUNDS N contender...
# Prints the median (min-max) of the binary's own "wall ns/call" per build and contender.
set -euo pipefail
rounds=$1; n=$2; shift 2
here=$(cd "$(dirname "$0")" && pwd)
bins=${BINS:-"ours=${CARGO_TARGET_DIR:-$here/target}/release/ext-perf"}
declare -A all
for _ in $(seq "$rounds"); do
  for c in "$@"; do
    for b in $bins; do
      v=$("${b#*=}" "$c" "$n" 2>&1 | awk '/wall ns/{print $3}')
      all[${b%%=*}:$c]="${all[${b%%=*}:$c]:-} $v"
    done
  done
done
for c in "$@"; do for b in $bins; do
  k=${b%%=*}:$c
  echo "$k $(echo ${all[$k]} | tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END{printf "median %s (%s-%s) ns/call", a[int((NR+1)/2)], a[1], a[NR]}')"
done; done

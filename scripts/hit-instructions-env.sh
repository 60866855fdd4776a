# Sourced by scripts/callgrind-hits.sh and scripts/cachegrind-ops.sh: checks for valgrind,
# builds benches/src/bin/hit-instructions (release) and sets BIN to it, from the repository's
# root. The caller sets `set -euo pipefail` and its N1 / N2 defaults first.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
command -v valgrind >/dev/null || { echo "valgrind not found: apt-get install -y valgrind" >&2; exit 1; }
cargo build -q --release -p cache-benches --bin hit-instructions
BIN=${CARGO_TARGET_DIR:-target}/release/hit-instructions

#!/usr/bin/env bash
# Runs every test of the workspace. The Redis tests start their own redis-server on free
# loopback ports, so the server binary must be installed; this installs Debian's package
# when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's redis-server package" >&2
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
redis-server --version

cargo test --workspace --all-targets
cargo test --workspace --doc

#!/usr/bin/env bash
# Runs every test of the workspace. The Redis tests start their own redis-server on free
# loopback ports, the edge tests their own varnishd (with the xkey vmod), and the clock-skew
# test runs nodes under libfaketime, so those must be installed; this installs Debian's
# packages when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
APT_UPDATED=""
apt_install() {
    if [ -z "$APT_UPDATED" ]; then
        $SUDO apt-get update -qq
        APT_UPDATED=1
    fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: installing Debian's redis-server package" >&2
    apt_install redis-server
fi
redis-server --version

# The idle-timeout test reads its sockets' keepalive timers with `ss`.
if ! command -v ss >/dev/null 2>&1; then
    echo "ss not found: installing Debian's iproute2 package" >&2
    apt_install iproute2
fi

# The clock-skew test runs cache nodes under libfaketime.
if ! compgen -G "/usr/lib/*/faketime/libfaketime.so.1" >/dev/null \
    && [ ! -e /usr/lib/faketime/libfaketime.so.1 ]; then
    echo "libfaketime not found: installing Debian's faketime package" >&2
    apt_install faketime
fi

have_varnish() {
    [ -x /usr/sbin/varnishd ] || command -v varnishd >/dev/null 2>&1 || return 1
    compgen -G "/usr/lib/*/varnish/vmods/libvmod_xkey.so" >/dev/null \
        || compgen -G "/usr/lib/varnish/vmods/libvmod_xkey.so" >/dev/null
}
if ! have_varnish; then
    echo "varnishd or its xkey vmod not found: installing Debian's varnish and varnish-modules" >&2
    # The tests start their own varnishd on free loopback ports; keep the package's service
    # (which would listen on :6081 and :6082) from being started by the install, through the
    # standard policy-rc.d hook, unless the machine already has one.
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$POLICY" >/dev/null
        $SUDO chmod +x "$POLICY"
        trap '$SUDO rm -f "$POLICY"' EXIT
    fi
    apt_install varnish varnish-modules
    if [ -n "$(trap -p EXIT)" ]; then
        $SUDO rm -f "$POLICY"
        trap - EXIT
    fi
fi
PATH="$PATH:/usr/sbin" varnishd -V 2>&1 | head -n 1

cargo test --workspace --all-targets --no-fail-fast
# The chaos soak's smoke run again, with blocking callers (their own connections) and
# `lock = true` caches (the lock script's reads) under the same faults.
CHAOS_CALLER=blocking CHAOS_LOCK=1 CHAOS_SECS=10 cargo test -p cache-tests --bench chaos_soak
cargo test --workspace --doc --no-fail-fast

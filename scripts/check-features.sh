#!/usr/bin/env bash
# CI: cache-runtime builds, and is lint-clean, with each feature set a user can pick.
# (`cargo test --workspace` only sees the union the workspace enables.)
set -euo pipefail
cd "$(dirname "$0")/.."

sets=(
    "--no-default-features"                     # local only: no redis, rustls, hyper, metrics
    "--no-default-features --features metrics"  # local only, with metrics
    "--no-default-features --features redis"    # redis without metrics (the shim's no-ops)
    ""                                          # default: redis, metrics
    "--features tls"                            # rediss://
    "--no-default-features --features http"
    "--no-default-features --features axum"
    "--no-default-features --features edge"
    "--no-default-features --features uuid,chrono"  # key types, local only
    "--all-features"
)
for set in "${sets[@]}"; do
    echo "== cache-runtime ${set:-(default features)}" >&2
    # shellcheck disable=SC2086 # word splitting of the flags is intended
    cargo check -p cache-runtime $set
    # shellcheck disable=SC2086
    cargo clippy -p cache-runtime --all-targets $set -- -D warnings
done

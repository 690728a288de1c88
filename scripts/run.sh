#!/usr/bin/env bash
# Builds chaincore (installing Rust and the C toolchain RocksDB needs, if
# missing) and
# runs it with the given arguments, e.g. `scripts/run.sh params --network regtest`.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/chaincore-target}"
source scripts/deps.sh
install_build_deps
install_rust
cargo build --locked --bin chaincore >&2
exec "$CARGO_TARGET_DIR/debug/chaincore" "$@"

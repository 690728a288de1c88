#!/usr/bin/env bash
# Builds chaincore (installing Rust and the C toolchain RocksDB needs, if
# missing) and
# runs it with the given arguments, e.g. `scripts/run.sh params --network regtest`.
# Relative paths in the arguments (--data-dir, --wallet, --import) are the
# caller's: only the build runs in the repository.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." >/dev/null && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/chaincore-target}"
source "$root/scripts/deps.sh"
check_target_dir
(
  cd "$root"
  install_build_deps
  install_rust
  cargo build --locked --bin chaincore >&2
)
exec "$CARGO_TARGET_DIR/debug/chaincore" "$@"

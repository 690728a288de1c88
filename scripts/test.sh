#!/usr/bin/env bash
# Runs ChainCore's whole test suite on a fresh Debian machine: installs what is
# missing (Rust through rustup, when no cargo new enough answers; a C toolchain and libclang for RocksDB's bindings, tshark for the
# dissector tests, schemathesis for the REST contract test, headless Chromium
# and chromedriver for the explorer's browser test, a PostgreSQL server when
# none answers), then runs the tests, clippy and rustfmt.
# `.ci/run` calls exactly this script.
set -euo pipefail
cd "$(dirname "$0")/.."

# One target directory shared by every build, so RocksDB's C++ builds once.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/chaincore-target}"
export CHAINCORE_TEST_DATABASE_URL="${CHAINCORE_TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}"
source scripts/deps.sh
check_target_dir
install_build_deps
install_rust
install_browser_deps
command -v pg_isready >/dev/null 2>&1 || apt_install postgresql-client
if ! command -v tshark >/dev/null 2>&1; then
  # tshark asks whether non-root users may capture: answer no, quietly.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | as_root debconf-set-selections
  apt_install tshark
fi

# A PostgreSQL server for the mirror tests: use the one at the URL, or install
# and start a local one when nothing answers there.
pg_host=$(sed -E 's#^[a-z]+://([^@/]*@)?([^:/]+).*#\2#' <<<"$CHAINCORE_TEST_DATABASE_URL")
pg_port=$(sed -nE 's#^[a-z]+://([^@/]*@)?[^:/]+:([0-9]+).*#\2#p' <<<"$CHAINCORE_TEST_DATABASE_URL")
pg_port=${pg_port:-5432}
# Debian's local cluster, trusting local TCP connections for the test user as
# the URL expects, started, or reloaded to read that line if it runs already
# (Debian's package starts it with systemd).
trust_local_cluster() {
  local version conf
  version=$(ls /etc/postgresql | sort -n | tail -1)
  conf="/etc/postgresql/$version/main"
  if ! as_root grep -q "chaincore-tests" "$conf/pg_hba.conf"; then
    echo "test.sh: letting local TCP connections into PostgreSQL $version without a password (a line marked chaincore-tests at the top of $conf/pg_hba.conf; remove it and reload the cluster to undo)" >&2
    as_root sed -i '1i host all all 127.0.0.1/32 trust # chaincore-tests' "$conf/pg_hba.conf"
  fi
  if as_root pg_ctlcluster --skip-systemctl-redirect "$version" main status >/dev/null 2>&1; then
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
  else
    echo "test.sh: starting PostgreSQL $version's main cluster" >&2
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
}
if ! pg_isready -q -h "$pg_host" -p "$pg_port"; then
  if ! ls /etc/postgresql/*/main >/dev/null 2>&1; then
    apt_install postgresql
  fi
  trust_local_cluster
  for _ in $(seq 1 30); do
    pg_isready -q -h "$pg_host" -p "$pg_port" && break
    sleep 1
  done
  pg_isready -h "$pg_host" -p "$pg_port" || {
    echo "test.sh: no PostgreSQL answers at $CHAINCORE_TEST_DATABASE_URL" >&2
    exit 1
  }
fi
# A server that answers but refuses the URL's user (Debian's cluster without
# the trust line): trust it, when it is this machine's own cluster.
if ! psql "$CHAINCORE_TEST_DATABASE_URL" -tAc 'SELECT 1' >/dev/null 2>&1; then
  if [ "$pg_host" = "127.0.0.1" ] && ls /etc/postgresql/*/main >/dev/null 2>&1; then
    trust_local_cluster
    sleep 1
  fi
  psql "$CHAINCORE_TEST_DATABASE_URL" -tAc 'SELECT 1' >/dev/null || {
    echo "test.sh: PostgreSQL at $CHAINCORE_TEST_DATABASE_URL refuses the connection (see above)" >&2
    exit 1
  }
fi

# The PostgreSQL fault test starts and stops a server of its own (initdb and
# pg_ctl from Debian's server package; as root it runs them as the
# `postgres` user through runuser): install the package even when a server
# already answers at the URL.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  apt_install postgresql
fi
command -v runuser >/dev/null 2>&1 || apt_install util-linux

# Schemathesis (from PyPI, pinned) for the REST contract test, in a venv of
# its own so the system Python stays untouched.
venv="${CHAINCORE_VENV:-/var/tmp/chaincore-venv}"
schemathesis_version=4.32.5
if ! "$venv/bin/st" --version 2>/dev/null | grep -q "$schemathesis_version"; then
  command -v python3 >/dev/null 2>&1 || apt_install python3
  python3 -m venv "$venv" 2>/dev/null || { apt_install python3-venv; python3 -m venv "$venv"; }
  "$venv/bin/pip" install -q "schemathesis==$schemathesis_version"
fi
export CHAINCORE_SCHEMATHESIS="$venv/bin/st"

# The toolchain's lint and format components.
if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
  rustup component add clippy rustfmt
fi

echo "test.sh: target dir $CARGO_TARGET_DIR"
cargo test --locked
cargo clippy --all-targets --locked -- -D warnings
cargo fmt --all -- --check
echo "test.sh: all checks passed"

# Sourced by run.sh and test.sh: installs Debian packages that are missing.
export DEBIAN_FRONTEND=noninteractive

# sudo resets the environment: DEBIAN_FRONTEND is passed on by name, or a
# package's debconf question (tzdata, say) would wait unseen for an answer.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo DEBIAN_FRONTEND="$DEBIAN_FRONTEND" "$@"; fi
}

# The shared target directory (RocksDB's C++ builds once for every build)
# must be this user's to write: one made by root (`sudo scripts/test.sh`)
# stops a later build as another user with cargo's bare "Permission denied".
check_target_dir() {
  local dir
  for dir in "$CARGO_TARGET_DIR" "$CARGO_TARGET_DIR/debug"; do
    if [ -e "$dir" ] && ! [ -w "$dir" ]; then
      echo "chaincore: the target directory $dir is not writable by $(id -un) (owner: $(stat -c %U "$dir"));" >&2
      echo "  build as its owner, take it over (sudo chown -R $(id -un) $CARGO_TARGET_DIR), or set CARGO_TARGET_DIR to a directory of yours" >&2
      exit 1
    fi
  done
}

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    as_root apt-get update -qq
    apt_updated=1
  fi
  echo "chaincore: installing $*" >&2
  as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# What building chaincore needs: a C++ compiler for RocksDB and libclang for
# its bindings.
install_build_deps() {
  local missing=()
  command -v clang >/dev/null 2>&1 || missing+=(clang)
  dpkg -s libclang-dev >/dev/null 2>&1 || missing+=(libclang-dev)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  command -v g++ >/dev/null 2>&1 || missing+=(g++)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# What the explorer's browser test needs: Debian's Chromium and its WebDriver
# (chromedriver), at the paths the test looks for.
install_browser_deps() {
  local missing=()
  [ -x /usr/bin/chromium ] || missing+=(chromium)
  [ -x /usr/bin/chromedriver ] || missing+=(chromium-driver)
  if [ "${#missing[@]}" -gt 0 ]; then
    apt_install "${missing[@]}"
  fi
}

# Rust itself: when no cargo as new as the crate's rust-version answers
# (Debian's own packages are older), rustup's stable toolchain, installed
# for the current user.
rust_is_new_enough() {
  local need have
  need=$(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' Cargo.toml)
  have=$(cargo --version 2>/dev/null | awk '{print $2}' || true)
  [ -n "$have" ] && [ "$(printf '%s\n%s\n' "$need" "$have" | sort -V | head -1)" = "$need" ]
}

install_rust() {
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
  fi
  rust_is_new_enough && return
  echo "chaincore: Rust $(sed -nE 's/^rust-version = "([0-9.]+)"/\1/p' Cargo.toml) or newer is needed (found: $(cargo --version 2>/dev/null || echo none)); installing rustup's stable toolchain" >&2
  if ! command -v rustup >/dev/null 2>&1; then
    command -v curl >/dev/null 2>&1 || apt_install curl ca-certificates
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs |
      sh -s -- -y --profile minimal --default-toolchain stable >&2
  fi
  if [ -f "$HOME/.cargo/env" ]; then
    # shellcheck disable=SC1091
    source "$HOME/.cargo/env"
  fi
  rustup toolchain install stable --profile minimal >&2
  # For these scripts only: the user's default toolchain stays as it is.
  export RUSTUP_TOOLCHAIN=stable
  if ! rust_is_new_enough; then
    echo "chaincore: still no Rust new enough after installing rustup's stable toolchain (cargo is $(command -v cargo)); put ~/.cargo/bin first in PATH" >&2
    exit 1
  fi
}

#!/usr/bin/env bash
# Runs every fuzz target for SECONDS (default 600) each, two at a time, on
# the stable toolchain (RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags).
# New corpus units go to fuzz/work/ (not committed); the committed seeds in
# fuzz/corpus/ are read only. A crash stops with its input in
# fuzz/artifacts/TARGET/: fix it and commit the input to fuzz/corpus/TARGET/
# as a regression test (the corpus replays in `cargo test`).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(frame_stream message_payload transaction block store_values)
fi
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
(cd fuzz && cargo fuzz build -O)
mkdir -p fuzz/work fuzz/logs
run() {
  local target=$1
  mkdir -p "fuzz/work/$target"
  (cd fuzz && cargo fuzz run -O "$target" "work/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -dict=chaincore.dict -print_final_stats=1 \
      > "logs/$target.log" 2>&1) || { echo "$target: CRASH (see fuzz/logs/$target.log)"; return 1; }
  local execs cov
  execs=$(grep -oE 'stat::average_exec_per_sec: *[0-9]+' "fuzz/logs/$target.log" | grep -oE '[0-9]+$' || echo "?")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+' "fuzz/logs/$target.log" | tail -1)
  echo "$target: ${seconds}s, no crash, ${execs} execs/s, ${cov}"
}
status=0
for ((i = 0; i < ${#targets[@]}; i += 2)); do
  run "${targets[i]}" & a=$!
  b=""
  if [ $((i + 1)) -lt ${#targets[@]} ]; then run "${targets[i+1]}" & b=$!; fi
  wait $a || status=1
  [ -z "$b" ] || wait $b || status=1
done
exit $status

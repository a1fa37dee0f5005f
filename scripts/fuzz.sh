#!/usr/bin/env bash
# Short coverage-guided runs of every cargo-fuzz target (default 30 s each), starting from the
# seeds in fuzz/corpus/<target> and the past crashes in fuzz/regressions/<target>. A crash is
# saved under fuzz/artifacts/<target>/ and fails this script; once fixed, copy the input into
# fuzz/regressions/<target>/ so tests/fuzz_regressions.rs keeps checking it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-30}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# cargo-fuzz passes -Z flags to rustc; this machine has only a stable toolchain.
export RUSTC_BOOTSTRAP=1
for target in manifest listing checkpoint; do
  corpus=$(mktemp -d)
  cp fuzz/corpus/"$target"/* "$corpus"/
  cp fuzz/regressions/"$target"/* "$corpus"/ 2>/dev/null || true
  cargo fuzz run --sanitizer none "$target" "$corpus" -- -max_total_time="$secs" -rss_limit_mb=4096
  rm -rf "$corpus"
done

#!/usr/bin/env bash
# The whole test suite: formatting, lints, and every test (unit, parity, end-to-end CLI).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export MUGFLOW_TEST_PYTHON="$PWD/.cache/venv/bin/python"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace --all-targets
# A short coverage-guided fuzzing run of the manifest parser and table listings.
scripts/fuzz.sh "${MUGFLOW_FUZZ_SECONDS:-20}"

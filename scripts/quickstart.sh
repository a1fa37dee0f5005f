#!/usr/bin/env bash
# Install what is missing, build mugflow and run the demo job on the bundled sample videos.
set -euo pipefail
cd "$(dirname "$0")/.."
MUGFLOW_SETUP_TESTS=0 scripts/setup.sh
cargo build --release
rm -rf out/demo
target/release/mugflow validate manifests/demo.toml
target/release/mugflow run manifests/demo.toml
target/release/mugflow inspect out/demo
target/release/mugflow scenes tests/data/videos/bbb_trailer_moviepy.mp4
# The whole curation chain with tiny random weights (plumbing only: the numbers mean nothing).
target/release/mugflow models init-tiny checkpoints/tiny
rm -rf out/curate
target/release/mugflow run manifests/curate.toml
target/release/mugflow inspect out/curate

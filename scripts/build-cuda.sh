#!/usr/bin/env bash
# Build mugflow with CUDA on a machine without a GPU or a CUDA toolkit (the toolchain and the
# link setup are scripts/cuda-env.sh's), and pack the GPU benchmark and tests for the GPU machine.
#
#   scripts/build-cuda.sh            # release build of mugflow --features cuda, and the GPU
#                                    # GPU benchmark and tests packed in .cache/gpu (*.xz, gpu-check.sh)
#   PROFILE=dev scripts/build-cuda.sh   # faster to build, for trying things
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
source scripts/cuda-env.sh
dir=$CARGO_TARGET_DIR/$(cargo_profile_dir "$profile")
cuda_link_stubs "$profile"
# MUGFLOW_ONLY_GPU_TOOLS=1 skips the mugflow binary (the GPU machine runs only the programs below).
[ -n "${MUGFLOW_ONLY_GPU_TOOLS:-}" ] || cargo build --profile "$profile" --features cuda --bin mugflow
cargo build --profile "$profile" --features cuda -p models --example gpu_bench
# The GPU machine has no FFmpeg: the models-only programs travel (the benchmark, the kernel
# correctness tests, the GPU parity tests); mugflow itself travels as the archive of
# `scripts/package.sh --cuda`, which links FFmpeg statically.
rm -rf .cache/gpu && mkdir -p .cache/gpu
pack() { strip -o ".cache/gpu/$2" "$1" && xz -f -9 -T2 ".cache/gpu/$2"; }
pack "$dir/examples/gpu_bench" gpu_bench
for t in "kernels --test kernels" "models --test gpu"; do
  set -- $t
  exe=$(cargo test --profile "$profile" --features cuda -p "$1" "$2" "$3" --no-run --message-format=json \
    | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
  pack "$exe" "test-$1-$3"
done
cp scripts/gpu-check.sh scripts/cuda-lib-path.sh .cache/gpu/
ls -la .cache/gpu
echo "build-cuda: carry .cache/gpu to the GPU machine and run: bash .cache/gpu/gpu-check.sh"

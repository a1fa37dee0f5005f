#!/usr/bin/env bash
# Run on the GPU machine (the device tool) with the .cache/gpu folder made by scripts/build-cuda.sh:
# the kernel correctness tests, the GPU parity tests, the benchmarks and end-to-end generation.
# Results go to $OUT (or out/gpu). Needs the CUDA runtime libraries (cuBLAS, cuRAND, cuDNN): taken
# from PyTorch's nvidia-* wheels or a CUDA install (cuda-lib-path.sh, beside this script).
#
#   PARTS="tests bench generate" bash .cache/gpu/gpu-check.sh     # the default: all three
#   PARTS=bench BENCH="dit attention" ITERS=2 bash .cache/gpu/gpu-check.sh
#   PARTS=bench BENCH="vae-encode vae-decode wan-vae-encode wan-vae-decode" ITERS=1 bash .cache/gpu/gpu-check.sh
#   PARTS=generate STEPS=1 FRAMES=105 bash .cache/gpu/gpu-check.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-out/gpu}
bin=/tmp/mugflow-gpu
mkdir -p "$out" "$bin"
for f in "$here"/*.xz; do xz -dc "$f" > "$bin/$(basename "$f" .xz)"; chmod +x "$bin/$(basename "$f" .xz)"; done
export LD_LIBRARY_PATH=$(bash "$here/cuda-lib-path.sh")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
status=0
for part in ${PARTS:-tests bench generate}; do
  case $part in
    tests)
      # Test binaries find their data through CARGO_MANIFEST_DIR-relative paths: run from the crates.
      # cuDNN runs f32 convolutions in TF32 unless told otherwise (as PyTorch does by default): off
      # here, so the f32 results are f32 arithmetic (the convolution kernels and the models).
      (cd kernels && NVIDIA_TF32_OVERRIDE=0 "$bin/test-kernels-kernels" --test-threads 1 --nocapture) 2>&1 \
        | tee "$out/test-kernels.txt" || status=1
      (cd models && NVIDIA_TF32_OVERRIDE=0 "$bin/test-models-gpu" --test-threads 1 --nocapture) 2>&1 \
        | tee "$out/test-gpu-parity.txt" || status=1
      ;;
    bench)
      for b in ${BENCH:-attention dit vae-encode t5}; do
        "$bin/gpu_bench" --bench "$b" --iters "${ITERS:-2}" --frames "${FRAMES:-105}" 2>&1 | tee "$out/bench-$b.txt" || status=1
      done
      ;;
    generate)
      # The 10B preset, 16:9 720p (1280 high), random bf16 weights made on the GPU, T5-XXL in f32
      # on the CPU; the video goes to /tmp (too big to bring back).
      { time "$bin/gpu_bench" --preset real --height 1280 --width 720 --frames "${FRAMES:-105}" \
          --steps "${STEPS:-2}" --device cuda --dtype bf16 --t5-device cpu \
          --tokenizer models/data/t5_tokenizer.json --out /tmp/mugflow-gpu ; } 2>&1 \
        | tee "$out/bench-generate.txt" || status=1
      ;;
    *) echo "gpu-check: unknown part $part (tests, bench, generate)"; exit 2 ;;
  esac
done
exit $status

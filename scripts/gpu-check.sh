#!/usr/bin/env bash
# Run on the GPU machine (the device tool): unpack the CUDA build from scripts/build-cuda.sh and
# run the GPU benchmarks; results go to $OUT (or out/gpu). Needs the CUDA runtime libraries
# (cuBLAS, cuRAND): taken from a CUDA install or from PyTorch's nvidia/* wheels.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${OUT:-out/gpu}
mkdir -p "$out" /tmp/mugflow-gpu
gunzip -c "$here/gpu_bench.gz" > /tmp/mugflow-gpu/gpu_bench && chmod +x /tmp/mugflow-gpu/gpu_bench
libs=$(python3 -c 'import nvidia, os; p = os.path.dirname(nvidia.__path__[0]); print(":".join(os.path.join(r) for r, d, f in os.walk(os.path.join(p, "nvidia")) if r.endswith("/lib")))' 2>/dev/null || true)
export LD_LIBRARY_PATH=${libs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}:/usr/local/nvidia/lib64:/usr/local/cuda/lib64
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
bin=/tmp/mugflow-gpu/gpu_bench
# Generation end to end: the 10B preset, 16:9 720p (1280 high), 105 frames, random bf16 weights
# made on the GPU, T5-XXL in f32 on the CPU; the video goes to /tmp (too big to bring back).
steps=${STEPS:-2}
frames=${FRAMES:-105}
{ time "$bin" --preset real --height 1280 --width 720 --frames "$frames" --steps "$steps" \
    --device cuda --dtype bf16 --t5-device cpu --tokenizer models/tests/data/t5/t5_tokenizer.json \
    --out /tmp/mugflow-gpu ; } 2>&1 | tee "$out/bench-generate.txt"

#!/usr/bin/env bash
# Build mugflow with CUDA on a machine without a GPU or a CUDA toolkit, and pack it for the GPU
# machine. NVIDIA's CUDA 13.0 compiler and headers come from PyPI wheels (pinned: the GPU
# machine's driver accepts PTX from CUDA <= 13.0), unpacked into .cache/cuda-pip; candle's
# kernels are compiled to PTX for sm_90 (H100/H200) at build time; cuBLAS/cuRAND are loaded at run
# time, so the binary links no CUDA library.
#
#   scripts/build-cuda.sh            # release build of mugflow --features cuda, and the GPU
#                                    # GPU benchmark and tests packed in .cache/gpu (*.xz, gpu-check.sh)
#   PROFILE=dev scripts/build-cuda.sh   # faster to build, for trying things
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${PROFILE:-release}
wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
        nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25 nvidia-cuda-nvrtc==13.0.88)
cuda=.cache/cuda-pip
if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ] || [ ! -e "$cuda/nvidia/cu13/include/crt/host_config.h" ]; then
  echo "build-cuda: fetching the CUDA 13.0 compiler and headers from PyPI"
  rm -rf "$cuda" .cache/cuda-wheels && mkdir -p "$cuda"
  python3 -m pip download -q --no-deps -d .cache/cuda-wheels "${wheels[@]}"
  # The wheels share nvidia/cu13/: unpack them on top of each other (pip --target would skip).
  for w in .cache/cuda-wheels/*.whl; do python3 -m zipfile -e "$w" "$cuda"; done
  chmod +x "$cuda"/nvidia/cu13/bin/* "$cuda"/nvidia/cu13/nvvm/bin/*
  rm -rf .cache/cuda-wheels
fi
root=$PWD/$cuda/nvidia/cu13
export PATH=$root/bin:$PATH CUDA_ROOT=$root CUDA_PATH=$root CUDA_TOOLKIT_ROOT_DIR=$root
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# A target folder of its own, so CPU builds in target/ are not replaced by CUDA ones.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}
target=$CARGO_TARGET_DIR
dir=$target/$([ "$profile" = dev ] && echo debug || echo "$profile")
# candle links the CUDA libraries at build time. The wheels ship them versioned (libcublas.so.13):
# give the linker plain names, and stubs of libcuda.so.1 (the driver, which only the GPU machine
# has) and libcudnn.so.9 defining the functions cudarc calls; at run time the real ones are loaded.
link=$PWD/$cuda/link
mkdir -p "$link"
for l in cudart.so.13 nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13; do
  ln -sf "$root/lib/lib$l" "$link/lib${l%%.so.*}.so"
done
cargo build --profile "$profile" --features cuda -p models
rlib=$(ls -t "$dir"/deps/libcudarc-*.rlib | head -1)
stub() { # stub <library> <soname> <symbol regex>: the symbols cudarc calls, for the linker only
  nm "$rlib" 2>/dev/null | awk -v re="$3" '$1 == "U" && $2 ~ re {print $2}' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$link/$1_stub.c"
  gcc -shared -fPIC -Wl,-soname,"$2" -o "$link/lib$1.so" "$link/$1_stub.c"
}
stub cuda libcuda.so.1 '^cu[A-Z]'
# cuDNN (candle's convolutions) likewise: the GPU machine loads the real libcudnn.so.9.
stub cudnn libcudnn.so.9 '^cudnn[A-Z]'

export LIBRARY_PATH=$link${LIBRARY_PATH:+:$LIBRARY_PATH}
# MUGFLOW_ONLY_GPU_TOOLS=1 skips the mugflow binary (the GPU machine runs only the programs below).
[ -n "${MUGFLOW_ONLY_GPU_TOOLS:-}" ] || cargo build --profile "$profile" --features cuda --bin mugflow
cargo build --profile "$profile" --features cuda -p models --example gpu_bench
# The GPU machine has no FFmpeg: the models-only programs travel (the benchmark, the kernel
# correctness tests, the GPU parity tests); mugflow itself needs FFmpeg's libraries wherever it runs.
rm -rf .cache/gpu && mkdir -p .cache/gpu
pack() { strip -o ".cache/gpu/$2" "$1" && xz -f -9 -T2 ".cache/gpu/$2"; }
pack "$dir/examples/gpu_bench" gpu_bench
for t in "kernels --test kernels" "models --test gpu"; do
  set -- $t
  exe=$(cargo test --profile "$profile" --features cuda -p "$1" "$2" "$3" --no-run --message-format=json \
    | python3 -c 'import json,sys; print([m["executable"] for m in map(json.loads, sys.stdin) if m.get("executable")][-1])')
  pack "$exe" "test-$1-$3"
done
cp scripts/gpu-check.sh .cache/gpu/
ls -la .cache/gpu
echo "build-cuda: carry .cache/gpu to the GPU machine and run: bash .cache/gpu/gpu-check.sh"

# Sourced (not run) by the scripts that build mugflow with CUDA on a machine without a GPU or a
# CUDA toolkit: scripts/build-cuda.sh and scripts/package.sh --cuda. Run from the repository root.
#
# NVIDIA's CUDA 13.0 compiler and headers come from PyPI wheels (pinned: the GPU machine's driver
# accepts PTX from CUDA <= 13.0), unpacked into .cache/cuda-pip; candle's kernels are compiled to
# PTX for sm_90 (H100/H200) at build time; cuBLAS/cuRAND/cuDNN are loaded at run time, so the
# binaries link no CUDA library.
#
# After sourcing: PATH and CUDA_ROOT point at the compiler, CARGO_TARGET_DIR defaults to
# target/cuda (so CPU builds in target/ are not replaced by CUDA ones), and
# `cuda_link_stubs PROFILE` prepares what the linker needs; call it before linking a binary.
cuda_wheels=(nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96
             nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.0.2.14 nvidia-curand==10.4.5.25 nvidia-cuda-nvrtc==13.0.88)
cuda=.cache/cuda-pip
if [ ! -x "$cuda/nvidia/cu13/bin/nvcc" ] || [ ! -e "$cuda/nvidia/cu13/include/crt/host_config.h" ]; then
  echo "cuda-env: fetching the CUDA 13.0 compiler and headers from PyPI"
  rm -rf "$cuda" .cache/cuda-wheels && mkdir -p "$cuda"
  python3 -m pip download -q --no-deps -d .cache/cuda-wheels "${cuda_wheels[@]}"
  # The wheels share nvidia/cu13/: unpack them on top of each other (pip --target would skip).
  for w in .cache/cuda-wheels/*.whl; do python3 -m zipfile -e "$w" "$cuda"; done
  chmod +x "$cuda"/nvidia/cu13/bin/* "$cuda"/nvidia/cu13/nvvm/bin/*
  rm -rf .cache/cuda-wheels
fi
cuda_root=$PWD/$cuda/nvidia/cu13
export PATH=$cuda_root/bin:$PATH CUDA_ROOT=$cuda_root CUDA_PATH=$cuda_root CUDA_TOOLKIT_ROOT_DIR=$cuda_root
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-target/cuda}

# cuda_link_stubs PROFILE: candle links the CUDA libraries at build time. The wheels ship them
# versioned (libcublas.so.13): give the linker plain names, and stubs of libcuda.so.1 (the driver,
# which only the GPU machine has) and libcudnn.so.9 defining the functions cudarc calls (read from
# cudarc's rlib, hence the build of `models` first); at run time the real ones are loaded.
cuda_link_stubs() {
  local profile=$1 link=$PWD/$cuda/link l rlib
  mkdir -p "$link"
  for l in cudart.so.13 nvrtc.so.13 curand.so.10 cublas.so.13 cublasLt.so.13; do
    ln -sf "$cuda_root/lib/lib$l" "$link/lib${l%%.so.*}.so"
  done
  cargo build --profile "$profile" --features cuda -p models
  rlib=$(ls -t "$CARGO_TARGET_DIR/$(cargo_profile_dir "$profile")"/deps/libcudarc-*.rlib | head -1)
  cuda_stub "$rlib" "$link" cuda libcuda.so.1 '^cu[A-Z]'
  cuda_stub "$rlib" "$link" cudnn libcudnn.so.9 '^cudnn[A-Z]'  # candle's convolutions
  export LIBRARY_PATH=$link${LIBRARY_PATH:+:$LIBRARY_PATH}
}

# cuda_stub RLIB DIR NAME SONAME REGEX: a library named SONAME defining the symbols of RLIB that
# match REGEX, for the linker only.
cuda_stub() {
  nm "$1" 2>/dev/null | awk -v re="$5" '$1 == "U" && $2 ~ re {print $2}' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$2/$3_stub.c"
  gcc -shared -fPIC -Wl,-soname,"$4" -o "$2/lib$3.so" "$2/$3_stub.c"
}

# cargo_profile_dir PROFILE: the folder of the target dir that cargo writes PROFILE's outputs to.
cargo_profile_dir() {
  if [ "$1" = dev ]; then echo debug; else echo "$1"; fi
}

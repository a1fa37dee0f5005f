#!/usr/bin/env bash
# Print a library path for LD_LIBRARY_PATH holding the CUDA libraries a CUDA build of mugflow loads
# at run time (cuBLAS, cuRAND, NVRTC, cuDNN; the driver's libcuda is found by the system): the
# lib/ folders of the nvidia-* wheels of the PyTorch that python3 imports, then the usual CUDA
# install folders. Travels with the GPU programs (.cache/gpu) and the CUDA archive (bin/).
#
#   export LD_LIBRARY_PATH=$(bash cuda-lib-path.sh)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
set -euo pipefail
wheels=$(python3 -c 'import nvidia, os; p = os.path.dirname(nvidia.__path__[0]); print(":".join(r for r, d, f in os.walk(os.path.join(p, "nvidia")) if r.endswith("/lib")))' 2>/dev/null || true)
echo "${wheels:+$wheels:}/usr/local/nvidia/lib64:/usr/local/cuda/lib64"

//! Custom CUDA kernels for the models (fused attention, norms, RoPE), compiled only with the `cuda`
//! feature. Kernels arrive with the CUDA issue.

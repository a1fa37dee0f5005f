//! Fused CUDA kernels: flash attention (bf16 tensor cores, head dims of [`FLASH_HEAD_DIMS`]),
//! LayerNorm + adaLN modulation, per-head RMSNorm + RoPE and the gated residual of the DiTs, the
//! VAEs' GroupNorm and channel norm (with SiLU), as candle ops; the VAEs' 2-D and 3-D convolutions
//! through cuDNN (measured algorithms, tensor-op math, channels-last, fused bias and residual).
//! Built only with the `cuda` feature; models fall back to plain candle ops elsewhere. Correctness
//! tests against f32 references: tests/kernels.rs (on the GPU machine).

#[cfg(feature = "cuda")]
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub use conv::{conv, ConvLayout};
#[cfg(feature = "cuda")]
pub use cuda::{
    channel_norm, flash_attention, gated_residual, group_norm, group_norm_channels_last, ln_modulate, rms_norm_rope,
    set_poison_outputs, FLASH_HEAD_DIMS,
};

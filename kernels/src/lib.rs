//! Fused CUDA kernels: attention (on Hopper our FlashAttention-3-style kernel for head dim 72, see
//! [`AttentionBackend::Hopper`]; cuDNN's fused SDPA; our flash kernel on bf16 tensor cores for head
//! dims of [`FLASH_HEAD_DIMS`], cross-attention with key lengths, and T5's position bias), linear
//! layers with the bias, GELU or a residual in cuBLASLt's epilogue (algorithms measured per shape),
//! LayerNorm + adaLN modulation, RMSNorm and RoPE, the gated residual of the DiTs, CLIP's quick
//! GELU, the VAEs' GroupNorm and channel norm (with SiLU), as candle ops; the VAEs' 2-D and 3-D
//! convolutions through cuDNN (measured algorithms, tensor-op math, channels-last, fused bias and
//! residual). Built only with the `cuda` feature; models fall back to plain candle ops elsewhere.
//! Correctness tests against f32 references: tests/kernels.rs (on the GPU machine).

#[cfg(feature = "cuda")]
mod conv;
#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
mod cudnn;
#[cfg(feature = "cuda")]
mod fa3;
#[cfg(feature = "cuda")]
mod linear;
#[cfg(feature = "cuda")]
mod memory;
#[cfg(feature = "cuda")]
mod sdpa;
#[cfg(feature = "cuda")]
pub use conv::{conv, ConvLayout};
#[cfg(feature = "cuda")]
pub use cuda::{
    channel_norm, cudnn_attention, flash_attention, flash_attention_bias, gated_residual, group_norm,
    group_norm_channels_last, hopper_attention, ln_modulate, quick_gelu, rms_norm, rms_norm_rope, rope,
    set_attention_backend, set_poison_outputs, softmax_bias, AttentionBackend, FLASH_BIAS_HEAD_DIMS, FLASH_HEAD_DIMS,
};
#[cfg(feature = "cuda")]
pub use linear::{linear, linear_residual};
#[cfg(feature = "cuda")]
pub use memory::{allocated_peak, keep_freed_memory, reset_allocated_peak};

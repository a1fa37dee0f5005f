//! Fused CUDA kernels for the DiT forward pass: flash attention (bf16 tensor cores, head dims of
//! [`FLASH_HEAD_DIMS`]), LayerNorm + adaLN modulation, per-head RMSNorm + RoPE and the gated
//! residual, as candle ops. Built only with the `cuda` feature; models fall back to plain candle
//! ops elsewhere. Correctness tests against f32 references: tests/kernels.rs (on the GPU machine).

#[cfg(feature = "cuda")]
mod cuda;
#[cfg(feature = "cuda")]
pub use cuda::{flash_attention, gated_residual, ln_modulate, rms_norm_rope, set_poison_outputs, FLASH_HEAD_DIMS};

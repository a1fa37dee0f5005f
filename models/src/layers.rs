//! Layers several models load alike: a linear map or a LayerNorm read from `{weight, bias}` under
//! a key, so each model file names its keys and not the tensors' shapes again.

use candle_core::Tensor;
use candle_nn::{LayerNorm, Linear, Module};

use crate::weights::{Weights, WeightsError};

/// A linear layer from `weight` `[cout, cin]` and `bias` `[cout]` under `w`.
pub(crate) fn linear(w: &Weights, cin: usize, cout: usize) -> Result<Linear, WeightsError> {
    Ok(Linear::new(w.get("weight", &[cout, cin])?, Some(w.get("bias", &[cout])?)))
}

/// A linear layer from `weight` `[cout, cin]` under `w`, without a bias (T5-style models).
pub(crate) fn linear_no_bias(w: &Weights, cin: usize, cout: usize) -> Result<Linear, WeightsError> {
    Ok(Linear::new(w.get("weight", &[cout, cin])?, None))
}

/// A LayerNorm from `weight` and `bias` `[dim]` under `w`.
pub(crate) fn layer_norm(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm, WeightsError> {
    Ok(LayerNorm::new(w.get("weight", &[dim])?, w.get("bias", &[dim])?, eps))
}

/// `ln(x)` over the last axis with `ln`'s weight and bias. On CUDA in bf16 over `[B, L, D]` one
/// fused kernel (statistics in f32, one rounding) instead of candle's separate passes.
pub(crate) fn layer_norm_forward(ln: &LayerNorm, x: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if let (true, Some(bias), Ok((_, _, d))) =
        (x.device().is_cuda() && x.dtype() == candle_core::DType::BF16, ln.bias(), x.dims3())
    {
        let (shift, scale) = (bias.reshape((1, 1, d))?, ln.weight().reshape((1, 1, d))?);
        return kernels::ln_modulate(&x.contiguous()?, &shift, &scale, None, 0.0, eps as f32);
    }
    let _ = eps; // candle's LayerNorm keeps its own
    ln.forward(x)
}

/// Whether `x` takes `kernels::linear`'s path: CUDA, bf16, and not `MUGFLOW_LINEAR=candle`.
#[cfg(feature = "cuda")]
fn cublaslt(x: &Tensor) -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let candle = *CANDLE.get_or_init(|| std::env::var("MUGFLOW_LINEAR").is_ok_and(|v| v == "candle"));
    !candle && x.device().is_cuda() && x.dtype() == candle_core::DType::BF16
}

/// `l(x)`, then GELU (tanh approximation) with `gelu`. On CUDA in bf16 this is one cuBLASLt
/// product over all leading axes with the bias and GELU in its epilogue (`MUGFLOW_LINEAR=candle`
/// keeps candle's batched matmul + bias + GELU, to compare the two).
pub(crate) fn linear_forward(l: &Linear, x: &Tensor, gelu: bool) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cublaslt(x) {
        return kernels::linear(&x.contiguous()?, l.weight(), l.bias(), gelu);
    }
    let y = l.forward(x)?;
    if gelu {
        y.gelu()
    } else {
        Ok(y)
    }
}

/// `residual + l(x)`, the residual add of a transformer block: on CUDA in bf16 in the same cuBLASLt
/// product's epilogue (one pass over the output, summed in f32 and rounded once), elsewhere a
/// product and an add.
pub(crate) fn linear_residual(l: &Linear, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if cublaslt(x) {
        return kernels::linear_residual(&x.contiguous()?, l.weight(), l.bias(), &residual.contiguous()?);
    }
    residual + l.forward(x)?
}

//! The convolutions the VAEs share: on CUDA through `kernels::conv` (cuDNN with measured
//! algorithms and a fused bias + residual epilogue), elsewhere through candle's `conv2d`.
//! `MUGFLOW_CANDLE_CONV=1` routes CUDA through candle too, to measure one against the other.

use candle_core::Tensor;

/// Whether `x`'s convolutions go through `kernels::conv`: on CUDA, unless `MUGFLOW_CANDLE_CONV=1`.
#[cfg(feature = "cuda")]
pub(crate) fn fast(x: &Tensor) -> bool {
    static CANDLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    x.device().is_cuda() && !*CANDLE.get_or_init(|| std::env::var("MUGFLOW_CANDLE_CONV").is_ok_and(|v| v == "1"))
}

/// `conv2d(x, weight) + bias (+ residual)` over `(N, C, H, W)` with square `padding` and `stride`.
pub(crate) fn conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    padding: usize,
    stride: usize,
) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if fast(x) {
        let (p, s) = ([padding; 2], [stride; 2]);
        return kernels::conv(x, weight, bias, residual, &p, &s, kernels::ConvLayout::Standard);
    }
    let y = x.conv2d(weight, padding, stride, 1, 1)?;
    let y = match bias {
        Some(b) => y.broadcast_add(&b.reshape((1, (), 1, 1))?)?,
        None => y,
    };
    match residual {
        Some(r) => y + r,
        None => Ok(y),
    }
}

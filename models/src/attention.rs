//! Scaled dot-product attention shared by the models: chunked plain candle ops on every device,
//! and on CUDA in bf16 the fused flash-attention kernel of `kernels/`.

use candle_core::Tensor;

/// Score elements materialised at once by [`attention`] (2 GiB in bf16).
const SCORE_BUDGET: usize = 1 << 30;

/// `softmax(q k^T * scale) v` for `[B, H, Lq, d]` x `[B, H, Lk, d]`, queries in chunks so the
/// score matrix stays within [`SCORE_BUDGET`] elements (50k-token videos would need 40+ GB).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (b, h, lq, _) = q.dims4()?;
    let lk = k.dim(2)?;
    let chunk = (SCORE_BUDGET / (b * h * lk).max(1)).clamp(1, lq.max(1));
    let kt = k.t()?.contiguous()?;
    let mut parts = Vec::new();
    for start in (0..lq).step_by(chunk) {
        let qc = q.narrow(2, start, chunk.min(lq - start))?.contiguous()?;
        let scores = (qc.matmul(&kt)? * scale)?;
        // candle's softmax accumulates in f32 whatever the input dtype.
        let p = candle_nn::ops::softmax_last_dim(&scores)?;
        parts.push(p.matmul(v)?);
    }
    Tensor::cat(&parts, 2)
}

/// `softmax(q k^T * scale) v` for `[B, Lq, H, d]` queries and `[B, Lk, H, d]` keys/values (token
/// major, as projections produce them; any strides), keys of sample b limited to `k_lens[b]`;
/// returns `[B, Lq, H, d]`. The flash-attention kernel on CUDA in bf16, [`attention`] otherwise.
pub fn attention_tokens(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    k_lens: Option<&[u32]>,
    scale: f64,
) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if q.device().is_cuda() && q.dtype() == candle_core::DType::BF16 && kernels::FLASH_HEAD_DIMS.contains(&q.dim(3)?) {
        return kernels::flash_attention(q, k, v, k_lens, scale as f32);
    }
    let heads = |t: &Tensor| t.transpose(1, 2)?.contiguous();
    if k_lens.is_none() {
        return attention(&heads(q)?, &heads(k)?, &heads(v)?, scale)?.transpose(1, 2);
    }
    let mut outs = Vec::new();
    for i in 0..q.dim(0)? {
        let n = k_lens.map_or(k.dim(1)?, |l| l[i] as usize);
        let kk = heads(&k.narrow(0, i, 1)?.narrow(1, 0, n)?)?;
        let vv = heads(&v.narrow(0, i, 1)?.narrow(1, 0, n)?)?;
        outs.push(attention(&heads(&q.narrow(0, i, 1)?)?, &kk, &vv, scale)?.transpose(1, 2)?);
    }
    Tensor::cat(&outs, 0)
}

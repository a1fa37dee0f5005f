//! Scaled dot-product attention shared by the models: chunked plain candle ops on every device,
//! and on CUDA in bf16 the fused flash-attention kernel of `kernels/`; and the T5 family's
//! attention with a relative position bias and a key padding mask.

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

/// The key padding of a T5-family attention, prepared once per forward: the keep flags, and on
/// CUDA the per-sample token counts when every mask is right-padded (what the fused kernel takes).
pub struct KeyPadding {
    /// `[B, L]` f32: 1 for a token, 0 for padding.
    keep: Tensor,
    /// Off CUDA: the last position bias given and its sum with the mask in the scores' dtype
    /// (`[B, H, L, L]`), so that a model passing one bias to every block (T5) builds it once.
    biased: std::cell::RefCell<Option<(candle_core::TensorId, Tensor)>>,
    /// Tokens per sample; `None` off CUDA or for a mask that is not ones-then-zeros.
    #[cfg(feature = "cuda")]
    lens: Option<Vec<u32>>,
}

impl KeyPadding {
    /// From an attention mask `[B, L]` (1 = token, 0 = padding) of any dtype.
    pub fn new(mask: &Tensor) -> candle_core::Result<KeyPadding> {
        let keep = mask.to_dtype(candle_core::DType::F32)?.contiguous()?;
        #[cfg(feature = "cuda")]
        let lens = if keep.device().is_cuda() { right_padded_lengths(&keep)? } else { None };
        Ok(KeyPadding {
            keep,
            biased: std::cell::RefCell::new(None),
            #[cfg(feature = "cuda")]
            lens,
        })
    }
}

/// Per sample, the number of tokens of a right-padded mask `[B, L]` (ones, then zeros); `None`
/// when some row is not of that form.
#[cfg(feature = "cuda")]
fn right_padded_lengths(keep: &Tensor) -> candle_core::Result<Option<Vec<u32>>> {
    let rows = keep.to_vec2::<f32>()?;
    Ok(rows
        .iter()
        .map(|row| {
            let n = row.iter().take_while(|&&m| m != 0.0).count();
            row[n..].iter().all(|&m| m == 0.0).then_some(n as u32)
        })
        .collect())
}

/// T5-family attention of the projections `[B, L, heads * d]`: `softmax(q k^T + bias[h]) v` per
/// head, unscaled (T5's initialisation absorbs the 1/sqrt(d)), with the position bias `bias`
/// `[H, L, L]` in the projections' dtype and padded keys at probability 0; returns `[B, L, heads *
/// d]`. On CUDA in bf16 with right-padded masks one fused kernel (no score matrix in memory);
/// otherwise the scores `[B, H, L, L]`, their probabilities (one fused kernel on CUDA, the bias
/// and mask rounded to the dtype and added before candle's softmax elsewhere), then `p v`.
pub fn position_biased(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    heads: usize,
    bias: &Tensor,
    padding: &KeyPadding,
) -> candle_core::Result<Tensor> {
    let (b, len, width) = q.dims3()?;
    let split = |t: &Tensor| t.reshape((b, len, heads, width / heads));
    #[cfg(feature = "cuda")]
    if let Some(lens) = padding
        .lens
        .as_ref()
        .filter(|_| q.dtype() == candle_core::DType::BF16 && kernels::FLASH_BIAS_HEAD_DIMS.contains(&(width / heads)))
    {
        let o =
            kernels::flash_attention_bias(&split(q)?, &split(k)?, &split(v)?, &bias.contiguous()?, Some(lens), 1.0)?;
        return o.reshape((b, len, width));
    }
    let head_major = |t: &Tensor| split(t)?.transpose(1, 2)?.contiguous();
    let (q, k, v) = (head_major(q)?, head_major(k)?, head_major(v)?);
    let scores = q.matmul(&k.t()?.contiguous()?)?;
    #[cfg(feature = "cuda")]
    let p = if scores.device().is_cuda() {
        kernels::softmax_bias(&scores, &bias.contiguous()?, &padding.keep)?
    } else {
        biased_softmax(&scores, bias, padding)?
    };
    #[cfg(not(feature = "cuda"))]
    let p = biased_softmax(&scores, bias, padding)?;
    p.matmul(&v)?.transpose(1, 2)?.reshape((b, len, width))
}

/// `softmax(scores + bias + mask)` with candle's ops: the most negative float at padded keys
/// (probability exactly 0), the sum of bias and mask rounded to the scores' dtype first, as the
/// reference adds them (that sum kept in `padding` for the next call with the same bias).
fn biased_softmax(scores: &Tensor, bias: &Tensor, padding: &KeyPadding) -> candle_core::Result<Tensor> {
    let mut biased = padding.biased.borrow_mut();
    let full = match biased.as_ref() {
        Some((id, full)) if *id == bias.id() => full.clone(),
        _ => {
            let f32 = candle_core::DType::F32;
            let (b, len) = padding.keep.dims2()?;
            let mask = padding.keep.affine(f64::from(f32::MAX), -f64::from(f32::MAX))?.reshape((b, 1, 1, len))?;
            let full = bias.to_dtype(f32)?.unsqueeze(0)?.broadcast_add(&mask)?.to_dtype(scores.dtype())?;
            *biased = Some((bias.id(), full.clone()));
            full
        }
    };
    candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&full)?)
}

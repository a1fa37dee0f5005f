//! MUG-DiT, MUG-V's image-to-video Diffusion Transformer (official `dit.pt` key names): 3D patch
//! embedding, timestep and fps embedders, a caption MLP, start/end tokens, 3D RoPE, blocks with
//! adaLN modulation (timestep-0 modulation for clean conditioning frames), cross-attention over
//! each sample's own valid text tokens, a modulated final layer and unpatchify.

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::Linear;

use crate::attention::attention;
#[cfg(feature = "cuda")]
use crate::attention::attention_tokens;
use crate::layers::{linear, linear_forward};
use crate::profile;
use crate::weights::{Checkpoint, Weights, WeightsError};

/// Sizes of a MUG-DiT.
#[derive(Debug, Clone, PartialEq)]
pub struct MugDitConfig {
    /// Latent channels in (the model predicts twice as many).
    pub in_channels: usize,
    /// Width of the token stream.
    pub hidden_size: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Width of the text features (T5-XXL: 4096).
    pub text_dim: usize,
    /// MLP hidden width as a multiple of `hidden_size`.
    pub mlp_ratio: usize,
}

/// Spatial patch size (the temporal one is 1).
const PATCH: usize = 2;
/// Sinusoid width of the timestep and fps embedders.
const FREQ_DIM: usize = 256;
/// Epsilon of every LayerNorm and RMSNorm.
const EPS: f64 = 1e-6;
/// RoPE table lengths of the reference: rows/columns and frame positions.
const ROPE_SPACE: usize = 384;
const ROPE_TIME: usize = 480;

impl MugDitConfig {
    /// MUG-DiT-10B: 56 blocks of width 3456 with 48 heads of 72, 24 latent channels, T5-XXL text.
    pub fn mugv_10b() -> MugDitConfig {
        MugDitConfig { in_channels: 24, hidden_size: 3456, depth: 56, num_heads: 48, text_dim: 4096, mlp_ratio: 4 }
    }

    /// The tiny random model of the goldens (`goldens/mugdit/config.json`, "tiny").
    pub fn golden() -> MugDitConfig {
        MugDitConfig { in_channels: 8, hidden_size: 96, depth: 3, num_heads: 4, text_dim: 64, mlp_ratio: 4 }
    }

    fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }
}

/// LayerNorm over the last axis without affine parameters, statistics in f32.
fn layer_norm0(x: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x = x.to_dtype(DType::F32)?;
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1)?)?;
    let var = x.sqr()?.mean_keepdim(D::Minus1)?;
    x.broadcast_div(&(var + EPS)?.sqrt()?)?.to_dtype(dtype)
}

/// `x * rsqrt(mean(x^2) + eps) * w` over the last axis, statistics in f32.
fn rms_norm(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
    x32.broadcast_div(&(var + EPS)?.sqrt()?)?.to_dtype(dtype)?.broadcast_mul(w)
}

/// `[cos(v f_0) .. cos(v f_127), sin(v f_0) .. sin(v f_127)]` for each value, f32, computed in
/// the reference's order of f32 operations (the embedding is high-frequency in `v`).
pub fn timestep_sinusoid(values: &[f32], device: &Device) -> candle_core::Result<Tensor> {
    let half = FREQ_DIM / 2;
    let c = -(10000f64.ln()) as f32;
    let freqs: Vec<f32> = (0..half).map(|i| ((c * i as f32) / half as f32).exp()).collect();
    let mut out = Vec::with_capacity(values.len() * FREQ_DIM);
    for &v in values {
        out.extend(freqs.iter().map(|f| (v * f).cos()));
        out.extend(freqs.iter().map(|f| (v * f).sin()));
    }
    Tensor::from_vec(out, (values.len(), FREQ_DIM), device)
}

/// A sinusoid followed by Linear, SiLU, Linear (`mlp.0`, `mlp.2`).
struct Embedder {
    mlp0: Linear,
    mlp2: Linear,
}

impl Embedder {
    fn load(w: &Weights, d: usize) -> Result<Self, WeightsError> {
        let m = w.pp("mlp");
        Ok(Embedder { mlp0: linear(&m.pp(0), FREQ_DIM, d)?, mlp2: linear(&m.pp(2), d, d)? })
    }

    fn forward(&self, values: &[f32], dtype: DType, device: &Device) -> candle_core::Result<Tensor> {
        let s = timestep_sinusoid(values, device)?.to_dtype(dtype)?;
        self.mlp2.forward(&self.mlp0.forward(&s)?.silu()?)
    }
}

/// Self-attention with per-head RMS-normed queries and keys and RoPE.
struct SelfAttention {
    qkv: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    proj: Linear,
}

/// Cross-attention from the video tokens to the text tokens.
struct CrossAttention {
    q_linear: Linear,
    kv_linear: Linear,
    q_norm: Tensor,
    k_norm: Tensor,
    proj: Linear,
}

/// One transformer block.
struct Block {
    scale_shift_table: Tensor,
    attn: SelfAttention,
    cross_attn_norm: (Tensor, Tensor),
    cross_attn: CrossAttention,
    fc1: Linear,
    fc2: Linear,
}

/// Modulation of one block for every token: `[B, L, D]` rows picked from `rows` (noisy tokens)
/// or `rows0` (clean tokens) by `noisy` `[B, L, 1]` (1 or 0).
fn pick(rows: &Tensor, rows0: &Tensor, noisy: &Tensor, i: usize) -> candle_core::Result<Tensor> {
    let a = rows.narrow(1, i, 1)?; // [B, 1, D]
    let b = rows0.narrow(1, i, 1)?;
    noisy.broadcast_mul(&a)?.broadcast_add(&(1.0 - noisy)?.broadcast_mul(&b)?)
}

/// What the blocks need besides the token stream.
struct Context<'a> {
    /// `t_mlp` and `t0_mlp` as `[B, 6, D]`.
    mods: (Tensor, Tensor),
    noisy: &'a Tensor,
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Each sample's valid text tokens, `[1, len_b, D]`.
    text: &'a [Tensor],
    /// Inputs of the fused CUDA kernels (on a CUDA device).
    #[cfg(feature = "cuda")]
    fused: Option<Fused>,
}

/// What the fused CUDA block needs: per-token table rows (0 noisy, 1 clean) `[B, L]` u32, RoPE
/// cos/sin `[L, d/2]` f32, the padded text tokens `[B, Lt, D]` and each sample's valid length.
#[cfg(feature = "cuda")]
struct Fused {
    rows: Tensor,
    cos: Tensor,
    sin: Tensor,
    text: Tensor,
    text_lens: Vec<u32>,
}

impl Block {
    fn load(w: &Weights, c: &MugDitConfig) -> Result<Self, WeightsError> {
        let (d, hd) = (c.hidden_size, c.head_dim());
        let a = w.pp("attn");
        let x = w.pp("cross_attn");
        Ok(Block {
            scale_shift_table: w.get("scale_shift_table", &[6, d])?,
            attn: SelfAttention {
                qkv: linear(&a.pp("qkv"), d, 3 * d)?,
                q_norm: a.pp("q_norm").get("weight", &[hd])?,
                k_norm: a.pp("k_norm").get("weight", &[hd])?,
                proj: linear(&a.pp("proj"), d, d)?,
            },
            cross_attn_norm: (w.pp("cross_attn_norm").get("weight", &[d])?, w.pp("cross_attn_norm").get("bias", &[d])?),
            cross_attn: CrossAttention {
                q_linear: linear(&x.pp("q_linear"), d, d)?,
                kv_linear: linear(&x.pp("kv_linear"), d, 2 * d)?,
                q_norm: x.pp("q_norm").get("weight", &[hd])?,
                k_norm: x.pp("k_norm").get("weight", &[hd])?,
                proj: linear(&x.pp("proj"), d, d)?,
            },
            fc1: linear(&w.pp("mlp").pp("fc1"), d, c.mlp_ratio * d)?,
            fc2: linear(&w.pp("mlp").pp("fc2"), c.mlp_ratio * d, d)?,
        })
    }

    fn forward(&self, x: &Tensor, cx: &Context, nh: usize) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(fused) = &cx.fused {
            return self.forward_fused(x, cx, fused, nh);
        }
        let (b, l, d) = x.dims3()?;
        let hd = d / nh;
        let sst = self.scale_shift_table.unsqueeze(0)?;
        let (rows, rows0) = (sst.broadcast_add(&cx.mods.0)?, sst.broadcast_add(&cx.mods.1)?);
        let m = |i| pick(&rows, &rows0, cx.noisy, i);
        let scale = 1.0 / (hd as f64).sqrt();

        // Self-attention.
        let h = layer_norm0(x)?.broadcast_mul(&(m(1)? + 1.0)?)?.broadcast_add(&m(0)?)?;
        let qkv = linear_forward(&self.attn.qkv, &h, false)?.reshape((b, l, 3, nh, hd))?.permute((2, 0, 3, 1, 4))?;
        let q = rms_norm(&qkv.get(0)?, &self.attn.q_norm)?.contiguous()?;
        let k = rms_norm(&qkv.get(1)?, &self.attn.k_norm)?.contiguous()?;
        let v = qkv.get(2)?.contiguous()?;
        let q = candle_nn::rotary_emb::rope_i(&q, cx.cos, cx.sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cx.cos, cx.sin)?;
        let o = attention(&q, &k, &v, scale)?.transpose(1, 2)?.reshape((b, l, d))?;
        let x = (x + m(2)?.mul(&self.attn.proj.forward(&o)?)?)?;

        // Cross-attention: sample b's queries see only sample b's valid text tokens.
        let (w, bias) = &self.cross_attn_norm;
        let h = layer_norm0(&x)?.broadcast_mul(w)?.broadcast_add(bias)?;
        let ca = &self.cross_attn;
        let mut outs = Vec::with_capacity(b);
        for (i, text) in cx.text.iter().enumerate() {
            let q = ca.q_linear.forward(&h.narrow(0, i, 1)?)?.reshape((1, l, nh, hd))?.transpose(1, 2)?;
            let q = rms_norm(&q, &ca.q_norm)?.contiguous()?;
            let n = text.dim(1)?;
            let kv = ca.kv_linear.forward(text)?.reshape((1, n, 2, nh, hd))?.permute((2, 0, 3, 1, 4))?;
            let k = rms_norm(&kv.get(0)?, &ca.k_norm)?.contiguous()?;
            let v = kv.get(1)?.contiguous()?;
            outs.push(attention(&q, &k, &v, scale)?.transpose(1, 2)?.reshape((1, l, d))?);
        }
        let x = (&x + ca.proj.forward(&Tensor::cat(&outs, 0)?)?)?;

        // MLP.
        let h = layer_norm0(&x)?.broadcast_mul(&(m(4)? + 1.0)?)?.broadcast_add(&m(3)?)?;
        let h = self.fc2.forward(&linear_forward(&self.fc1, &h, true)?)?;
        x + m(5)?.mul(&h)?
    }
}

#[cfg(feature = "cuda")]
impl Block {
    /// [`Block::forward`] with the fused kernels: LayerNorm + modulation, RMSNorm + RoPE read
    /// straight from the qkv projection, flash attention and gated residuals.
    fn forward_fused(&self, x: &Tensor, cx: &Context, f: &Fused, nh: usize) -> candle_core::Result<Tensor> {
        use candle_core::IndexOp;
        let (b, l, d) = x.dims3()?;
        let hd = d / nh;
        let eps = EPS as f32;
        let scale = 1.0 / (hd as f64).sqrt();
        let dev = x.device();
        let span = |name, f: &dyn Fn() -> candle_core::Result<Tensor>| profile::span(dev, name, f);
        let sst = self.scale_shift_table.unsqueeze(0)?;
        // [B, 2, 6, D]: row 0 for noisy tokens, row 1 for clean ones.
        let table = span("modulation tables", &|| {
            Tensor::stack(&[sst.broadcast_add(&cx.mods.0)?, sst.broadcast_add(&cx.mods.1)?], 1)
        })?;
        let m = |i| table.narrow(2, i, 1)?.squeeze(2)?.contiguous();
        let rows = Some(&f.rows);

        // Each part in its own scope, so that its intermediates (the qkv projection, q and k, the
        // MLP's hidden layer) are freed as soon as the part is done: the peak is one part's, not
        // the whole block's.
        let x = {
            let qkv = {
                let h = span("LayerNorm + adaLN", &|| kernels::ln_modulate(x, &m(0)?, &m(1)?, rows, 1.0, eps))?;
                span("qkv linear", &|| linear_forward(&self.attn.qkv, &h, false)?.reshape((b, l, 3, nh, hd)))?
            };
            let o = {
                let rope = Some((&f.cos, &f.sin));
                let q = span("RMSNorm + RoPE", &|| {
                    kernels::rms_norm_rope(&qkv.i((.., .., 0))?, &self.attn.q_norm, rope, eps)
                })?;
                let k = span("RMSNorm + RoPE", &|| {
                    kernels::rms_norm_rope(&qkv.i((.., .., 1))?, &self.attn.k_norm, rope, eps)
                })?;
                span("self-attention", &|| attention_tokens(&q, &k, &qkv.i((.., .., 2))?, None, scale))?
            };
            drop(qkv);
            let a = span("attention proj linear", &|| linear_forward(&self.attn.proj, &o.reshape((b, l, d))?, false))?;
            drop(o);
            span("gated residual", &|| kernels::gated_residual(x, &a, &m(2)?, rows))?
        };

        let x = {
            let (w, bias) = &self.cross_attn_norm;
            let ca = &self.cross_attn;
            let q = {
                let h = span("LayerNorm (cross)", &|| {
                    kernels::ln_modulate(&x, &bias.reshape((1, 1, d))?, &w.reshape((1, 1, d))?, None, 0.0, eps)
                })?;
                span("cross q linear", &|| linear_forward(&ca.q_linear, &h, false)?.reshape((b, l, nh, hd)))?
            };
            let q = span("RMSNorm (cross)", &|| kernels::rms_norm_rope(&q, &ca.q_norm, None, eps))?;
            let lt = f.text.dim(1)?;
            let kv = span("cross kv linear", &|| {
                linear_forward(&ca.kv_linear, &f.text, false)?.reshape((b, lt, 2, nh, hd))
            })?;
            let k = span("RMSNorm (cross)", &|| kernels::rms_norm_rope(&kv.i((.., .., 0))?, &ca.k_norm, None, eps))?;
            let o =
                span("cross-attention", &|| attention_tokens(&q, &k, &kv.i((.., .., 1))?, Some(&f.text_lens), scale))?;
            drop(q);
            let o = o.reshape((b, l, d))?;
            span("cross proj linear + residual", &|| crate::layers::linear_residual(&ca.proj, &o, &x))?
        };

        let y = {
            let hidden = {
                let h = span("LayerNorm + adaLN", &|| kernels::ln_modulate(&x, &m(3)?, &m(4)?, rows, 1.0, eps))?;
                span("fc1 linear + GELU", &|| linear_forward(&self.fc1, &h, true))?
            };
            span("fc2 linear", &|| linear_forward(&self.fc2, &hidden, false))?
        };
        span("gated residual", &|| kernels::gated_residual(&x, &y, &m(5)?, rows))
    }
}

/// Inputs of the fused CUDA blocks for one forward pass; `None` off CUDA. `flags` are the per-token
/// noisy flags `[B, L]` (1 noisy, 0 clean), which pick table row 0 or 1.
#[cfg(feature = "cuda")]
fn fused_inputs(
    flags: &[f32],
    (cos, sin): (&Tensor, &Tensor),
    y: &Tensor,
    text_lens: &[usize],
) -> candle_core::Result<Option<Fused>> {
    let dev = y.device();
    if !dev.is_cuda() {
        return Ok(None);
    }
    let rows: Vec<u32> = flags.iter().map(|&f| u32::from(f == 0.0)).collect();
    let b = text_lens.len();
    let rows = Tensor::from_vec(rows, (b, flags.len() / b), dev)?;
    let f32_row = |t: &Tensor| t.get(0)?.to_dtype(DType::F32)?.contiguous();
    let text = y.squeeze(1)?.contiguous()?;
    let lt = text.dim(1)?;
    let text_lens = text_lens.iter().map(|&n| n.min(lt) as u32).collect();
    Ok(Some(Fused { rows, cos: f32_row(cos)?, sin: f32_row(sin)?, text, text_lens }))
}

/// Inputs of one DiT call.
pub struct DitInput<'a> {
    /// Noisy latent `[B, C, T, H, W]`.
    pub x: &'a Tensor,
    /// Timestep per sample on the 0..1000 scale.
    pub timestep: &'a [f32],
    /// Text features `[B, 1, L, text_dim]`.
    pub y: &'a Tensor,
    /// Valid text tokens per sample (the rest of `y` is padding).
    pub text_lens: &'a [usize],
    /// Per sample and latent frame: true = being generated, false = clean conditioning frame.
    pub x_mask: &'a [Vec<bool>],
    /// Frame rate fed to the fps embedder (the pipeline uses 30).
    pub fps: f32,
    /// Positions of the start token, the `T` frames and the end token (`0..T+2` in the pipeline).
    pub frame_indices: &'a [usize],
}

/// Intermediate values of a forward pass, for parity tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DitPoint {
    /// Tokens after the patch embedding `[B, N, D]`.
    PatchTokens,
    /// Timestep embedding `[B, D]` (before the fps embedding is added).
    TimestepEmbedding,
    /// Packed valid text tokens `[1, sum(len), D]`.
    TextTokens,
    /// The sequence with start/end tokens before block 0 `[B, N+2, D]`.
    BlocksInput,
    /// After block `i`.
    Block(usize),
    /// Output of the final layer before unpatchify `[B, N, 4 * 2C]`.
    FinalLayer,
}

/// MUG-DiT.
pub struct MugDit {
    config: MugDitConfig,
    start_token: Tensor,
    end_token: Tensor,
    x_embedder: Linear,
    t_embedder: Embedder,
    fps_embedder: Embedder,
    t_block: Linear,
    fc1: Linear,
    fc2: Linear,
    blocks: Vec<Block>,
    final_sst: Tensor,
    final_linear: Linear,
}

/// RoPE frequencies per axis, `w_k = 10000^(-2k / (d/3))`, in the reference's f32 operations.
fn rope_freqs(head_dim: usize) -> Vec<f32> {
    let dim = head_dim / 3;
    (0..dim).step_by(2).map(|i| 1.0 / 10000f32.powf(i as f32 / dim as f32)).collect()
}

impl MugDit {
    /// Load from the official `dit.pt` layout (no prefix); every missing or unexpected key is named.
    pub fn load(checkpoint: &Checkpoint, config: &MugDitConfig) -> Result<MugDit, WeightsError> {
        let w = checkpoint.weights();
        let (d, c) = (config.hidden_size, config.in_channels);
        let patch = w.pp("x_embedder").pp("proj");
        let weight = patch.get("weight", &[d, c, 1, PATCH, PATCH])?;
        let x_embedder = Linear::new(
            weight.reshape((d, c * PATCH * PATCH)).map_err(|e| patch.error("weight", e))?,
            Some(patch.get("bias", &[d])?),
        );
        let y = w.pp("y_embedder").pp("y_proj");
        let f = w.pp("final_layer");
        let model = MugDit {
            start_token: w.get("start_token", &[d])?,
            end_token: w.get("end_token", &[d])?,
            x_embedder,
            t_embedder: Embedder::load(&w.pp("t_embedder"), d)?,
            fps_embedder: Embedder::load(&w.pp("fps_embedder"), d)?,
            t_block: linear(&w.pp("t_block").pp(1), d, 6 * d)?,
            fc1: linear(&y.pp("fc1"), config.text_dim, d)?,
            fc2: linear(&y.pp("fc2"), d, d)?,
            blocks: (0..config.depth).map(|i| Block::load(&w.pp("blocks").pp(i), config)).collect::<Result<_, _>>()?,
            final_sst: f.get("scale_shift_table", &[2, d])?,
            final_linear: linear(&f.pp("linear"), d, PATCH * PATCH * 2 * c)?,
            config: config.clone(),
        };
        w.finish(&[])?;
        Ok(model)
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &MugDitConfig {
        &self.config
    }

    /// RoPE cos and sin `[B, N+2, d/2]` for a `t x h x w` token grid: per token `d/6` factors of its
    /// row, then of its column, then of its frame position; the start token sits at (0, 0) and the
    /// end token at (h-1, w-1).
    pub fn rope(
        &self,
        b: usize,
        grid: (usize, usize, usize),
        frames: &[usize],
        device: &Device,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let (t, h, w) = grid;
        if frames.len() != t + 2 {
            candle_core::bail!("frame indices: {} given, {} needed (start, {t} frames, end)", frames.len(), t + 2);
        }
        if h > ROPE_SPACE || w > ROPE_SPACE {
            candle_core::bail!("token grid {h}x{w} exceeds the model's {ROPE_SPACE} positions per axis");
        }
        let freqs = rope_freqs(self.config.head_dim());
        let mut pos: Vec<[usize; 3]> = vec![[0, 0, frames[0]]];
        for &p in &frames[1..=t] {
            for r in 0..h {
                for c in 0..w {
                    pos.push([r, c, p]);
                }
            }
        }
        pos.push([h - 1, w - 1, frames[t + 1]]);
        let (mut cos, mut sin) = (Vec::new(), Vec::new());
        for [r, c, p] in &pos {
            for &axis in &[*r, *c, (*p).min(ROPE_TIME - 1)] {
                for f in &freqs {
                    let angle = axis as f32 * f;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        let half = 3 * freqs.len();
        let l = pos.len();
        let cos = Tensor::from_vec(cos, (1, l, half), device)?.repeat((b, 1, 1))?;
        let sin = Tensor::from_vec(sin, (1, l, half), device)?.repeat((b, 1, 1))?;
        Ok((cos, sin))
    }

    /// Predict `[B, 2C, T, H, W]` (the sampler keeps the first C channels); `hook` sees the
    /// intermediate values named by [`DitPoint`].
    pub fn forward_with(
        &self,
        input: &DitInput,
        hook: &mut dyn FnMut(DitPoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dev = input.x.device();
        let dtype = self.start_token.dtype();
        let (b, ch, t, hh, ww) = input.x.dims5()?;
        let (d, nh) = (c.hidden_size, c.num_heads);
        if input.timestep.len() != b || input.x_mask.len() != b || input.text_lens.len() != b {
            candle_core::bail!("timestep, x_mask and text lengths need one entry per sample ({b})");
        }
        // 1. Tokens: pad H, W to even, one linear map per 1x2x2 patch, (t, h, w) order.
        let (h2, w2) = (hh.div_ceil(PATCH), ww.div_ceil(PATCH));
        let x =
            input.x.to_dtype(dtype)?.pad_with_zeros(3, 0, h2 * PATCH - hh)?.pad_with_zeros(4, 0, w2 * PATCH - ww)?;
        let n = t * h2 * w2;
        let patches = x
            .reshape(vec![b, ch, t, h2, PATCH, w2, PATCH])?
            .permute(vec![0, 2, 3, 5, 1, 4, 6])?
            .reshape((b, n, ch * PATCH * PATCH))?;
        let tokens = self.x_embedder.forward(&patches)?;
        hook(DitPoint::PatchTokens, &tokens);

        // 2. Timestep, fps and the clean-frame (timestep 0) modulation.
        let t_emb = self.t_embedder.forward(input.timestep, dtype, dev)?;
        hook(DitPoint::TimestepEmbedding, &t_emb);
        let fps = self.fps_embedder.forward(&vec![input.fps; b], dtype, dev)?;
        let t_all = (t_emb + &fps)?;
        let t0 = (self.t_embedder.forward(&vec![0.0; b], dtype, dev)? + &fps)?;
        let t_mlp = self.t_block.forward(&t_all.silu()?)?.reshape((b, 6, d))?;
        let t0_mlp = self.t_block.forward(&t0.silu()?)?.reshape((b, 6, d))?;

        // 3. Text: MLP on every position, then each sample's valid tokens.
        let (_, _, l, _) = input.y.dims4()?;
        let y = layer_norm0(&self.fc2.forward(&self.fc1.forward(&layer_norm0(&input.y.to_dtype(dtype)?)?)?.gelu()?)?)?;
        let text: Vec<Tensor> = (0..b)
            .map(|i| {
                let len = input.text_lens[i].min(l);
                y.get(i)?.narrow(1, 0, len)
            })
            .collect::<candle_core::Result<_>>()?;
        hook(DitPoint::TextTokens, &Tensor::cat(&text, 1)?);

        // 4. Start/end tokens, per-token noisy flags, RoPE.
        let start = self.start_token.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let end = self.end_token.reshape((1, 1, d))?.repeat((b, 1, 1))?;
        let mut x = Tensor::cat(&[&start, &tokens, &end], 1)?;
        hook(DitPoint::BlocksInput, &x);
        let mut flags = Vec::with_capacity(b * (n + 2));
        for mask in input.x_mask {
            if mask.len() != t {
                candle_core::bail!("x_mask has {} frames, the latent {t}", mask.len());
            }
            flags.push(0f32);
            for &noisy in mask {
                flags.extend(std::iter::repeat_n(f32::from(u8::from(noisy)), h2 * w2));
            }
            flags.push(0f32);
        }
        let (cos, sin) = self.rope(b, (t, h2, w2), input.frame_indices, dev)?;
        #[cfg(feature = "cuda")]
        let fused = fused_inputs(&flags, (&cos, &sin), &y, input.text_lens)?;
        let noisy = Tensor::from_vec(flags, (b, n + 2, 1), dev)?.to_dtype(dtype)?;
        let (cos, sin) = (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?);
        let cx = Context {
            mods: (t_mlp, t0_mlp),
            noisy: &noisy,
            cos: &cos,
            sin: &sin,
            text: &text,
            #[cfg(feature = "cuda")]
            fused,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            crate::interrupt::check("the MUG-DiT forward")?;
            x = block.forward(&x, &cx, nh)?;
            hook(DitPoint::Block(i), &x);
        }
        if let Some(report) = profile::take_report("the MUG-DiT blocks") {
            eprint!("{report}");
        }

        // 5. Final layer on the video tokens with the raw (t, t0) embeddings.
        let x = x.narrow(1, 1, n)?;
        let noisy = noisy.narrow(1, 1, n)?;
        let sst = self.final_sst.unsqueeze(0)?;
        let rows = sst.broadcast_add(&t_all.unsqueeze(1)?)?;
        let rows0 = sst.broadcast_add(&t0.unsqueeze(1)?)?;
        let shift = pick(&rows, &rows0, &noisy, 0)?;
        let scale = pick(&rows, &rows0, &noisy, 1)?;
        let h = layer_norm0(&x)?.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)?;
        let out = self.final_linear.forward(&h)?;
        hook(DitPoint::FinalLayer, &out);

        // 6. Unpatchify (feature index (ph * 2 + pw) * 2C + c) and crop the padding.
        let co = 2 * ch;
        out.reshape(vec![b, t, h2, w2, PATCH, PATCH, co])?
            .permute(vec![0, 6, 1, 2, 4, 3, 5])?
            .reshape((b, co, t, h2 * PATCH, w2 * PATCH))?
            .narrow(3, 0, hh)?
            .narrow(4, 0, ww)?
            .to_dtype(DType::F32)
    }

    /// Predict `[B, 2C, T, H, W]` for one DiT call.
    pub fn forward(&self, input: &DitInput) -> candle_core::Result<Tensor> {
        self.forward_with(input, &mut |_, _| {})
    }
}

//! The MUG-V video enhancer's DiT: Wan2.1-T2V (key names of `diffusion_pytorch_model.safetensors`)
//! with two additions of `enhancer/dit_i2v.safetensors`: a second patch embedding
//! (`patch_embedding2`) of the clean video latent added to the noisy latent's tokens, and a
//! first-frame mode in which the tokens of latent frame 0 are modulated as at timestep 0. Blocks:
//! adaLN-modulated self-attention with whole-width q/k RMS norms and 3D RoPE, un-modulated
//! cross-attention to all `text_len` text positions, and a tanh-GELU feed-forward.

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;

use crate::attention::attention_tokens;
use crate::layers::{linear, linear_forward};
use crate::lora::Lora;
use crate::profile;
use crate::weights::{Checkpoint, Weights, WeightsError};

/// Sizes of a Wan DiT (names as in Wan's config).
#[derive(Debug, Clone, PartialEq)]
pub struct WanDitConfig {
    /// Latent channels in (each of the two patch embeddings).
    pub in_dim: usize,
    /// Width of the token stream.
    pub dim: usize,
    /// Feed-forward hidden width.
    pub ffn_dim: usize,
    /// Width of the timestep sinusoid.
    pub freq_dim: usize,
    /// Width of the text features (UMT5-XXL: 4096).
    pub text_dim: usize,
    /// Latent channels out.
    pub out_dim: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Transformer blocks.
    pub num_layers: usize,
    /// Text positions the cross-attention sees (texts are zero-padded to it).
    pub text_len: usize,
    /// Epsilon of every LayerNorm and RMSNorm.
    pub eps: f64,
}

/// Spatial patch size (the temporal one is 1).
const PATCH: usize = 2;
/// Base of the sinusoid and RoPE frequency ladders.
const THETA: f64 = 10000.0;

impl WanDitConfig {
    /// Wan2.1-T2V-1.3B as the MUG-V enhancer runs it: 30 blocks of width 1536, 12 heads of 128,
    /// FFN 8960, UMT5 text of 512 positions, 16 latent channels.
    pub fn wan_1_3b() -> WanDitConfig {
        WanDitConfig {
            in_dim: 16,
            dim: 1536,
            ffn_dim: 8960,
            freq_dim: 256,
            text_dim: 4096,
            out_dim: 16,
            num_heads: 12,
            num_layers: 30,
            text_len: 512,
            eps: 1e-6,
        }
    }

    /// The tiny random model of the goldens (`goldens/wan_dit/config.json`, "tiny").
    pub fn golden() -> WanDitConfig {
        WanDitConfig {
            dim: 64,
            ffn_dim: 96,
            text_dim: 32,
            num_heads: 4,
            num_layers: 2,
            text_len: 16,
            ..WanDitConfig::wan_1_3b()
        }
    }

    fn head_dim(&self) -> usize {
        self.dim / self.num_heads
    }

    /// Complex pairs per head given to frames, rows and columns: `c - 2 floor(c/3)`, then
    /// `floor(c/3)` twice, for `c = head_dim / 2`.
    fn rope_split(&self) -> [usize; 3] {
        let c = self.head_dim() / 2;
        [c - 2 * (c / 3), c / 3, c / 3]
    }
}

/// Intermediate values of a forward pass, for parity tests. `t0` marks the timestep-0 values of
/// the first-frame mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WanDitPoint {
    /// Timestep sinusoid `[B, freq_dim]`, cos then sin.
    Sinusoid {
        /// Of timestep 0.
        t0: bool,
    },
    /// Time embedding `e` `[B, dim]`.
    TimeEmbedding {
        /// Of timestep 0.
        t0: bool,
    },
    /// The six modulation vectors `e0`, flat `[B, 6 dim]`.
    TimeProjection {
        /// Of timestep 0.
        t0: bool,
    },
    /// Patch embedding of the noisy latent `[B, dim, T, H/2, W/2]`.
    PatchEmbedding,
    /// Patch embedding of the clean latent `[B, dim, T, H/2, W/2]`.
    PatchEmbedding2,
    /// Zero-padded text features `[B, text_len, text_dim]`.
    TextEmbeddingIn,
    /// Text tokens after the text MLP `[B, text_len, dim]`.
    TextEmbedding,
    /// Modulated self-attention input of block `i` `[B, L, dim]`.
    SelfAttentionIn(usize),
    /// Self-attention output of block `i` before its gate `[B, L, dim]`.
    SelfAttention(usize),
    /// Cross-attention output of block `i` `[B, L, dim]`.
    CrossAttention(usize),
    /// Feed-forward output of block `i` before its gate `[B, L, dim]`.
    FeedForward(usize),
    /// Tokens after block `i` `[B, L, dim]`.
    Block(usize),
    /// Tokens entering the head `[B, L, dim]`.
    HeadIn,
    /// Head output before unpatchify `[B, L, 4 out_dim]`.
    HeadOut,
}

/// Inputs of one DiT call.
pub struct WanDitInput<'a> {
    /// Noisy latent `[B, in_dim, T, H, W]` (H, W even).
    pub x: &'a Tensor,
    /// Clean latent of the same shape for `patch_embedding2` (the enhancer passes it; plain
    /// Wan2.1 text-to-video does not).
    pub y: Option<&'a Tensor>,
    /// Timestep per sample on the 0..1000 scale.
    pub timestep: &'a [f32],
    /// First-frame mode: tokens of latent frame 0 are modulated as at timestep 0.
    pub first_frame_clean: bool,
    /// Text features per sample, `[L_b, text_dim]` with `L_b <= text_len` valid tokens.
    pub context: &'a [Tensor],
}

/// A `(1, 2, 2)` patch conv under `w` as a linear map of the patch's `(c, i, j)` values.
fn patch_embedding(w: &Weights, cin: usize, dim: usize) -> Result<Linear, WeightsError> {
    let weight = w.get("weight", &[dim, cin, 1, PATCH, PATCH])?;
    let weight = weight.reshape((dim, cin * PATCH * PATCH)).map_err(|e| w.error("weight", e))?;
    Ok(Linear::new(weight, Some(w.get("bias", &[dim])?)))
}

/// Attention projections with whole-width q/k RMS norms (`self_attn`, `cross_attn`).
struct Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm_q: Tensor,
    norm_k: Tensor,
}

impl Attention {
    fn load(w: &Weights, dim: usize) -> Result<Self, WeightsError> {
        Ok(Attention {
            q: linear(&w.pp("q"), dim, dim)?,
            k: linear(&w.pp("k"), dim, dim)?,
            v: linear(&w.pp("v"), dim, dim)?,
            o: linear(&w.pp("o"), dim, dim)?,
            norm_q: w.pp("norm_q").get("weight", &[dim])?,
            norm_k: w.pp("norm_k").get("weight", &[dim])?,
        })
    }
}

/// One transformer block.
struct Block {
    modulation: Tensor,
    self_attn: Attention,
    norm3: (Tensor, Tensor),
    cross_attn: Attention,
    ffn0: Linear,
    ffn2: Linear,
}

/// Attention of head-major `[B, H, L, d]` operands, token-major `[B, Lq, H, d]` out (the fused
/// kernel on CUDA in bf16 reads the transposed views in place).
fn attend(q: &Tensor, k: &Tensor, v: &Tensor) -> candle_core::Result<Tensor> {
    let scale = 1.0 / (q.dim(3)? as f64).sqrt();
    attention_tokens(&q.transpose(1, 2)?, &k.transpose(1, 2)?, &v.transpose(1, 2)?, None, scale)
}

/// Modulation rows `[B, k, dim]` of every token, or in first-frame mode of the tokens after the
/// first `first`, which use `rows_t0` (a per-token choice, applied segment by segment so no
/// `[B, L, dim]` table is built).
struct Modulation {
    rows: Tensor,
    rows_t0: Option<Tensor>,
    first: usize,
}

impl Modulation {
    /// `f(start, len, rows)` on each token segment with its rows, concatenated along tokens.
    fn by_segment(
        &self,
        len: usize,
        f: impl Fn(usize, usize, &Tensor) -> candle_core::Result<Tensor>,
    ) -> candle_core::Result<Tensor> {
        match &self.rows_t0 {
            Some(rows_t0) if self.first < len => {
                Tensor::cat(&[f(0, self.first, rows_t0)?, f(self.first, len - self.first, &self.rows)?], 1)
            }
            Some(rows_t0) => f(0, len, rows_t0),
            None => f(0, len, &self.rows),
        }
    }

    /// `x + y * rows[k]` per token.
    fn gated_add(&self, x: &Tensor, y: &Tensor, k: usize) -> candle_core::Result<Tensor> {
        self.by_segment(x.dim(1)?, |s, n, m| {
            x.narrow(1, s, n)? + y.narrow(1, s, n)?.broadcast_mul(&m.narrow(1, k, 1)?)?
        })
    }
}

/// Inputs of the fused CUDA blocks for one forward pass ([`WanDit::block_fused`]).
#[cfg(feature = "cuda")]
struct Fused {
    /// Modulation table row per token `[B, L]` (u32): 1 for the first frame's tokens in
    /// first-frame mode, else 0.
    rows: Tensor,
    /// RoPE `[L, head_dim / 2]` in f32.
    cos: Tensor,
    sin: Tensor,
}

/// What the blocks need besides the token stream.
struct Context<'a> {
    /// `e0` and, in first-frame mode, `e0` of timestep 0, `[B, 6, dim]`.
    e0: (&'a Tensor, Option<&'a Tensor>),
    first: usize,
    /// RoPE `[L, head_dim / 2]`.
    cos: &'a Tensor,
    sin: &'a Tensor,
    /// Text tokens `[B, text_len, dim]`.
    text: &'a Tensor,
    /// On CUDA, what the fused blocks need; `None` elsewhere (the plain candle ops).
    #[cfg(feature = "cuda")]
    fused: Option<Fused>,
}

/// The MUG-V enhancer's Wan DiT.
pub struct WanDit {
    config: WanDitConfig,
    patch_embedding: Linear,
    patch_embedding2: Linear,
    text_embedding: (Linear, Linear),
    time_embedding: (Linear, Linear),
    time_projection: Linear,
    blocks: Vec<Block>,
    head_modulation: Tensor,
    head: Linear,
    /// Unit weight and zero bias of the affine-free LayerNorms.
    norm_one: (Tensor, Tensor),
}

impl WanDit {
    /// Load from `dit_i2v.safetensors` (Wan2.1 names plus `patch_embedding2.*`, no prefix), with
    /// `lora` merged into its target linears when given; every missing or unexpected key of the
    /// checkpoint, and every adapter key that matched nothing, is named.
    pub fn load(checkpoint: &Checkpoint, config: &WanDitConfig, lora: Option<Lora>) -> Result<WanDit, WeightsError> {
        let w = checkpoint.weights().with_lora(lora.as_ref());
        let (d, c) = (config.dim, config.in_dim);
        let blocks = (0..config.num_layers)
            .map(|i| {
                let b = w.pp("blocks").pp(i);
                let (norm3, ffn) = (b.pp("norm3"), b.pp("ffn"));
                Ok(Block {
                    modulation: b.get("modulation", &[1, 6, d])?,
                    self_attn: Attention::load(&b.pp("self_attn"), d)?,
                    norm3: (norm3.get("weight", &[d])?, norm3.get("bias", &[d])?),
                    cross_attn: Attention::load(&b.pp("cross_attn"), d)?,
                    ffn0: linear(&ffn.pp(0), d, config.ffn_dim)?,
                    ffn2: linear(&ffn.pp(2), config.ffn_dim, d)?,
                })
            })
            .collect::<Result<_, WeightsError>>()?;
        let dtype = checkpoint.dtype;
        let device = &checkpoint.device;
        let ones = Tensor::ones(d, dtype, device).and_then(|o| Ok((o.clone(), o.zeros_like()?)));
        let (text, time, head) = (w.pp("text_embedding"), w.pp("time_embedding"), w.pp("head"));
        let model = WanDit {
            patch_embedding: patch_embedding(&w.pp("patch_embedding"), c, d)?,
            patch_embedding2: patch_embedding(&w.pp("patch_embedding2"), c, d)?,
            text_embedding: (linear(&text.pp(0), config.text_dim, d)?, linear(&text.pp(2), d, d)?),
            time_embedding: (linear(&time.pp(0), config.freq_dim, d)?, linear(&time.pp(2), d, d)?),
            time_projection: linear(&w.pp("time_projection").pp(1), d, 6 * d)?,
            blocks,
            head_modulation: head.get("modulation", &[1, 2, d])?,
            head: linear(&head.pp("head"), d, PATCH * PATCH * config.out_dim)?,
            norm_one: ones.map_err(|e| w.error("(norm)", e))?,
            config: config.clone(),
        };
        w.finish(&[])?;
        if let Some(lora) = lora {
            lora.finish()?;
        }
        Ok(model)
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &WanDitConfig {
        &self.config
    }

    /// RoPE cos and sin `[f h w, head_dim / 2]` of a token grid: per token, the first pairs
    /// rotate with its frame index, the next with its row, the last with its column, each axis
    /// with its own ladder `10000^(-j / pairs)` (computed in f64, as the reference does).
    pub fn rope(&self, grid: (usize, usize, usize), device: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let (f, h, w) = grid;
        let ladders: Vec<Vec<f64>> = self
            .config
            .rope_split()
            .iter()
            .map(|&n| (0..n).map(|j| 1.0 / THETA.powf(j as f64 / n as f64)).collect())
            .collect();
        let pairs = self.config.head_dim() / 2;
        let (mut cos, mut sin) = (Vec::with_capacity(f * h * w * pairs), Vec::with_capacity(f * h * w * pairs));
        for fi in 0..f {
            for hi in 0..h {
                for wi in 0..w {
                    for (pos, ladder) in [fi, hi, wi].iter().zip(&ladders) {
                        for theta in ladder {
                            let angle = *pos as f64 * theta;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
        let l = f * h * w;
        Ok((Tensor::from_vec(cos, (l, pairs), device)?, Tensor::from_vec(sin, (l, pairs), device)?))
    }

    /// `[cos(t w_0) .. cos(t w_{n-1}), sin(t w_0) .. sin(t w_{n-1})]`, `w_j = 10000^(-j/n)` with
    /// `n = freq_dim / 2`, computed in f64 and given in f32, `[B, freq_dim]`.
    pub fn sinusoid(&self, timestep: &[f32], device: &Device) -> candle_core::Result<Tensor> {
        let half = self.config.freq_dim / 2;
        let freqs: Vec<f64> = (0..half).map(|j| THETA.powf(-(j as f64) / half as f64)).collect();
        let mut out = Vec::with_capacity(timestep.len() * 2 * half);
        for &t in timestep {
            out.extend(freqs.iter().map(|w| (f64::from(t) * w).cos() as f32));
            out.extend(freqs.iter().map(|w| (f64::from(t) * w).sin() as f32));
        }
        Tensor::from_vec(out, (timestep.len(), 2 * half), device)
    }

    /// `e` `[B, dim]` and `e0` `[B, 6, dim]` of the timesteps.
    fn time(
        &self,
        timestep: &[f32],
        t0: bool,
        dtype: DType,
        device: &Device,
        hook: &mut dyn FnMut(WanDitPoint, &Tensor),
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let s = self.sinusoid(timestep, device)?;
        hook(WanDitPoint::Sinusoid { t0 }, &s);
        let (l0, l2) = &self.time_embedding;
        let e = l2.forward(&l0.forward(&s.to_dtype(dtype)?)?.silu()?)?;
        hook(WanDitPoint::TimeEmbedding { t0 }, &e);
        let e0 = self.time_projection.forward(&e.silu()?)?;
        hook(WanDitPoint::TimeProjection { t0 }, &e0);
        let b = timestep.len();
        Ok((e, e0.reshape((b, 6, self.config.dim))?))
    }

    /// Tokens `[B, L, dim]` of a latent `[B, C, T, H, W]`, in (frame, row, column) order.
    fn patchify(&self, embedding: &Linear, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, t, hh, ww) = x.dims5()?;
        let (h, w) = (hh / PATCH, ww / PATCH);
        let patches = x.reshape(vec![b, c, t, h, PATCH, w, PATCH])?.permute(vec![0, 2, 3, 5, 1, 4, 6])?.reshape((
            b,
            t * h * w,
            c * PATCH * PATCH,
        ))?;
        embedding.forward(&patches)
    }

    fn layer_norm(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(&x.contiguous()?, &self.norm_one.0, &self.norm_one.1, self.config.eps as f32)
    }

    /// Predict the flow-matching velocity `[B, out_dim, T, H, W]` (noise minus clean, f32);
    /// `hook` sees the intermediate values named by [`WanDitPoint`].
    pub fn forward_with(
        &self,
        input: &WanDitInput,
        hook: &mut dyn FnMut(WanDitPoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let dev = input.x.device();
        let dtype = self.head_modulation.dtype();
        let (b, cin, t, hh, ww) = input.x.dims5()?;
        if cin != c.in_dim || hh % PATCH != 0 || ww % PATCH != 0 {
            candle_core::bail!(
                "latent {:?}: the DiT takes {} channels and even heights and widths",
                input.x.dims(),
                c.in_dim
            );
        }
        if input.timestep.len() != b || input.context.len() != b {
            candle_core::bail!("timestep and context need one entry per sample ({b})");
        }
        let (h, w) = (hh / PATCH, ww / PATCH);
        let (l, d) = (t * h * w, c.dim);
        let grid = |tokens: &Tensor| tokens.reshape((b, t, h, w, d))?.permute((0, 4, 1, 2, 3));

        // 1. Tokens of the noisy latent, plus those of the clean one.
        let mut x = self.patchify(&self.patch_embedding, &input.x.to_dtype(dtype)?)?;
        hook(WanDitPoint::PatchEmbedding, &grid(&x)?);
        if let Some(y) = input.y {
            let y = self.patchify(&self.patch_embedding2, &y.to_dtype(dtype)?)?;
            hook(WanDitPoint::PatchEmbedding2, &grid(&y)?);
            x = (x + y)?;
        }

        // 2. Time embeddings, of timestep 0 too in first-frame mode. They and the modulation run in
        //    the weights' dtype; the reference keeps them in f32 even under bf16 autocast.
        let (e, e0) = self.time(input.timestep, false, dtype, dev, hook)?;
        let t0 = if input.first_frame_clean { Some(self.time(&vec![0.0; b], true, dtype, dev, hook)?) } else { None };

        // 3. Text: each sample zero-padded to text_len, then the MLP on every position.
        let mut padded = Vec::with_capacity(b);
        for ctx in input.context {
            let n = ctx.dim(0)?;
            if n > c.text_len || ctx.dim(1)? != c.text_dim {
                candle_core::bail!(
                    "context {:?}: at most {} tokens of {} features",
                    ctx.dims(),
                    c.text_len,
                    c.text_dim
                );
            }
            padded.push(ctx.to_dtype(dtype)?.pad_with_zeros(0, 0, c.text_len - n)?);
        }
        let text_in = Tensor::stack(&padded, 0)?;
        hook(WanDitPoint::TextEmbeddingIn, &text_in);
        let (t1, t2) = &self.text_embedding;
        let text = t2.forward(&t1.forward(&text_in)?.gelu()?)?;
        hook(WanDitPoint::TextEmbedding, &text);

        // 4. Blocks.
        let (cos32, sin32) = self.rope((t, h, w), dev)?;
        let (cos, sin) = (cos32.to_dtype(dtype)?, sin32.to_dtype(dtype)?);
        #[cfg(feature = "cuda")]
        let fused = if dev.is_cuda() {
            let first = if t0.is_some() { (h * w).min(l) } else { 0 };
            let rows: Vec<u32> = (0..b).flat_map(|_| (0..l).map(|j| u32::from(j < first))).collect();
            Some(Fused { rows: Tensor::from_vec(rows, (b, l), dev)?, cos: cos32, sin: sin32 })
        } else {
            None
        };
        let cx = Context {
            e0: (&e0, t0.as_ref().map(|(_, e0)| e0)),
            first: h * w,
            cos: &cos,
            sin: &sin,
            text: &text,
            #[cfg(feature = "cuda")]
            fused,
        };
        for (i, block) in self.blocks.iter().enumerate() {
            crate::interrupt::check("the Wan DiT forward")?;
            x = self.block(block, i, &x, &cx, hook)?;
            hook(WanDitPoint::Block(i), &x);
        }
        if let Some(report) = profile::take_report("the Wan DiT blocks") {
            eprint!("{report}");
        }

        // 5. Head, modulated by `e` (not e0), and unpatchify: feature (2i + j) * C + c of token
        //    (f, h, w) is pixel (f, 2h + i, 2w + j) of channel c.
        hook(WanDitPoint::HeadIn, &x);
        let rows = |e: &Tensor| self.head_modulation.broadcast_add(&e.unsqueeze(1)?);
        let m = Modulation { rows: rows(&e)?, rows_t0: t0.as_ref().map(|(e, _)| rows(e)).transpose()?, first: h * w };
        let normed = self.layer_norm(&x)?;
        let out = self.head.forward(&m.by_segment(l, |s, n, m| {
            normed.narrow(1, s, n)?.broadcast_mul(&(m.narrow(1, 1, 1)? + 1.0)?)?.broadcast_add(&m.narrow(1, 0, 1)?)
        })?)?;
        hook(WanDitPoint::HeadOut, &out);
        let co = c.out_dim;
        out.reshape(vec![b, t, h, w, PATCH, PATCH, co])?
            .permute(vec![0, 6, 1, 2, 4, 3, 5])?
            .reshape((b, co, t, hh, ww))?
            .to_dtype(DType::F32)
    }

    /// Predict the velocity `[B, out_dim, T, H, W]` for one DiT call.
    pub fn forward(&self, input: &WanDitInput) -> candle_core::Result<Tensor> {
        self.forward_with(input, &mut |_, _| {})
    }

    fn block(
        &self,
        blk: &Block,
        i: usize,
        x: &Tensor,
        cx: &Context,
        hook: &mut dyn FnMut(WanDitPoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if let Some(f) = &cx.fused {
            return self.block_fused(blk, i, x, cx, f, hook);
        }
        let (b, l, d) = x.dims3()?;
        let (nh, hd) = (self.config.num_heads, self.config.head_dim());
        let eps = self.config.eps as f32;
        let m = Modulation {
            rows: blk.modulation.broadcast_add(cx.e0.0)?,
            rows_t0: cx.e0.1.map(|e0| blk.modulation.broadcast_add(e0)).transpose()?,
            first: cx.first,
        };
        // The modulated input of a branch: LN(x) * (1 + rows[scale]) + rows[shift].
        let modulated = |x: &Tensor, shift: usize| -> candle_core::Result<Tensor> {
            let normed = self.layer_norm(x)?;
            m.by_segment(l, |s, n, m| {
                normed
                    .narrow(1, s, n)?
                    .broadcast_mul(&(m.narrow(1, shift + 1, 1)? + 1.0)?)?
                    .broadcast_add(&m.narrow(1, shift, 1)?)
            })
        };
        let heads = |t: Tensor, n: usize| t.reshape((b, n, nh, hd))?.transpose(1, 2)?.contiguous();
        let rms = |t: Tensor, w: &Tensor| candle_nn::ops::rms_norm(&t.contiguous()?, w, eps);

        // Self-attention with RoPE on q and k.
        let a = &blk.self_attn;
        let h = modulated(x, 0)?;
        hook(WanDitPoint::SelfAttentionIn(i), &h);
        let q = heads(rms(linear_forward(&a.q, &h, false)?, &a.norm_q)?, l)?;
        let k = heads(rms(linear_forward(&a.k, &h, false)?, &a.norm_k)?, l)?;
        let v = heads(linear_forward(&a.v, &h, false)?, l)?;
        let q = candle_nn::rotary_emb::rope_i(&q, cx.cos, cx.sin)?;
        let k = candle_nn::rotary_emb::rope_i(&k, cx.cos, cx.sin)?;
        let o = linear_forward(&a.o, &attend(&q, &k, &v)?.reshape((b, l, d))?, false)?;
        hook(WanDitPoint::SelfAttention(i), &o);
        let x = m.gated_add(x, &o, 2)?;

        // Cross-attention to every text position, after an affine LayerNorm, without modulation.
        let ca = &blk.cross_attn;
        let (nw, nb) = &blk.norm3;
        let h = candle_nn::ops::layer_norm(&x.contiguous()?, nw, nb, eps)?;
        let n = cx.text.dim(1)?;
        let q = heads(rms(linear_forward(&ca.q, &h, false)?, &ca.norm_q)?, l)?;
        let k = heads(rms(linear_forward(&ca.k, cx.text, false)?, &ca.norm_k)?, n)?;
        let v = heads(linear_forward(&ca.v, cx.text, false)?, n)?;
        let o = linear_forward(&ca.o, &attend(&q, &k, &v)?.reshape((b, l, d))?, false)?;
        hook(WanDitPoint::CrossAttention(i), &o);
        let x = (x + o)?;

        // Feed-forward.
        let h = modulated(&x, 3)?;
        let f = linear_forward(&blk.ffn2, &linear_forward(&blk.ffn0, &h, true)?, false)?;
        hook(WanDitPoint::FeedForward(i), &f);
        m.gated_add(&x, &f, 5)
    }
}

#[cfg(feature = "cuda")]
impl WanDit {
    /// [`WanDit::block`] with the fused kernels: LayerNorm + modulation from a per-token table
    /// row, the whole-width q/k RMSNorm in one pass, RoPE on the token-major heads, attention
    /// on them in place, and gated residuals.
    fn block_fused(
        &self,
        blk: &Block,
        i: usize,
        x: &Tensor,
        cx: &Context,
        f: &Fused,
        hook: &mut dyn FnMut(WanDitPoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let (b, l, d) = x.dims3()?;
        let (nh, hd) = (self.config.num_heads, self.config.head_dim());
        let eps = self.config.eps as f32;
        let scale = 1.0 / (hd as f64).sqrt();
        let dev = x.device();
        let span = |name, f: &dyn Fn() -> candle_core::Result<Tensor>| profile::span(dev, name, f);
        // [B, 2, 6, dim]: row 0 for every token, row 1 for the first frame's in first-frame mode.
        let rows = blk.modulation.broadcast_add(cx.e0.0)?;
        let rows_t0 = match cx.e0.1 {
            Some(e0) => blk.modulation.broadcast_add(e0)?,
            None => rows.clone(),
        };
        let table = Tensor::stack(&[&rows, &rows_t0], 1)?;
        let m = |k: usize| table.narrow(2, k, 1)?.squeeze(2)?.contiguous();
        let r = Some(&f.rows);
        let heads = |t: Tensor, n: usize| t.reshape((b, n, nh, hd));
        // RMSNorm over the whole width of a projection of `src`.
        let normed = |lin: &Linear, w: &Tensor, src: &Tensor| -> candle_core::Result<Tensor> {
            let y = span("q/k linear", &|| linear_forward(lin, src, false))?;
            span("q/k RMSNorm", &|| kernels::rms_norm(&y, w, eps))
        };

        // Self-attention with RoPE on q and k.
        let a = &blk.self_attn;
        let h = span("LayerNorm + adaLN", &|| kernels::ln_modulate(x, &m(0)?, &m(1)?, r, 1.0, eps))?;
        hook(WanDitPoint::SelfAttentionIn(i), &h);
        let q = heads(normed(&a.q, &a.norm_q, &h)?, l)?;
        let q = span("RoPE", &|| kernels::rope(&q, &f.cos, &f.sin))?;
        let k = heads(normed(&a.k, &a.norm_k, &h)?, l)?;
        let k = span("RoPE", &|| kernels::rope(&k, &f.cos, &f.sin))?;
        let v = heads(span("v linear", &|| linear_forward(&a.v, &h, false))?, l)?;
        let o = span("self-attention", &|| attention_tokens(&q, &k, &v, None, scale))?.reshape((b, l, d))?;
        let o = span("o linear", &|| linear_forward(&a.o, &o, false))?;
        hook(WanDitPoint::SelfAttention(i), &o);
        let x = span("gated residual", &|| kernels::gated_residual(x, &o, &m(2)?, r))?;

        // Cross-attention to every text position, after an affine LayerNorm, without modulation.
        let ca = &blk.cross_attn;
        let (nw, nb) = &blk.norm3;
        let h = span("LayerNorm (cross)", &|| {
            kernels::ln_modulate(&x, &nb.reshape((1, 1, d))?, &nw.reshape((1, 1, d))?, None, 0.0, eps)
        })?;
        let n = cx.text.dim(1)?;
        let q = heads(normed(&ca.q, &ca.norm_q, &h)?, l)?;
        let k = heads(normed(&ca.k, &ca.norm_k, cx.text)?, n)?;
        let v = heads(span("v linear", &|| linear_forward(&ca.v, cx.text, false))?, n)?;
        let o = span("cross-attention", &|| attention_tokens(&q, &k, &v, None, scale))?.reshape((b, l, d))?;
        let o = span("o linear", &|| linear_forward(&ca.o, &o, false))?;
        hook(WanDitPoint::CrossAttention(i), &o);
        let x = span("residual add", &|| &x + &o)?;

        // Feed-forward.
        let h = span("LayerNorm + adaLN", &|| kernels::ln_modulate(&x, &m(3)?, &m(4)?, r, 1.0, eps))?;
        let h = span("ffn0 linear + GELU", &|| linear_forward(&blk.ffn0, &h, true))?;
        let y = span("ffn2 linear", &|| linear_forward(&blk.ffn2, &h, false))?;
        hook(WanDitPoint::FeedForward(i), &y);
        span("gated residual", &|| kernels::gated_residual(&x, &y, &m(5)?, r))
    }
}

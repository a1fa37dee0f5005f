//! UMT5-XXL encoder as Wan2.1 and the MUG-V enhancer condition their DiT on it (key names of
//! `models_t5_umt5-xxl-enc-bf16.pth`): T5's pre-norm blocks with RMS norms, un-scaled attention
//! and a gated tanh-GELU feed-forward, but with a relative position bias table in every block.
//! Its tokenizer (`google/umt5-xxl`, 512 tokens, EOS id 1, pad id 0) follows the same length rule
//! as [`crate::t5::T5Tokenizer`].

use candle_core::{DType, Device, Tensor};
use candle_nn::Linear;

use crate::attention::{position_biased, KeyPadding};
use crate::layers::{linear_forward, linear_no_bias};
use crate::t5::relative_position_bucket;
use crate::weights::{Checkpoint, Weights, WeightsError};

/// Sizes of a UMT5 encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct Umt5Config {
    /// Rows of the token embedding.
    pub vocab: usize,
    /// Width of the residual stream.
    pub dim: usize,
    /// Width of the attention projections (all heads together).
    pub dim_attn: usize,
    /// Width of the feed-forward hidden layer.
    pub dim_ffn: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Relative position buckets (half per direction).
    pub num_buckets: usize,
    /// Distance from which all positions share the last bucket.
    pub max_distance: usize,
    /// RMS norm epsilon.
    pub eps: f64,
}

/// Tokens per text after padding or truncation in the Wan pipeline (the tokenizer's length; the
/// encoder itself takes any length).
pub const TEXT_LEN: usize = 512;

impl Umt5Config {
    /// UMT5-XXL as Wan2.1-T2V-1.3B ships it: 4096 wide, 24 blocks, 64 heads of 64.
    pub fn xxl() -> Umt5Config {
        Umt5Config {
            vocab: 256_384,
            dim: 4096,
            dim_attn: 4096,
            dim_ffn: 10240,
            num_heads: 64,
            num_layers: 24,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
        }
    }

    /// The tiny random model of the goldens (`goldens/umt5/config.json`, "tiny").
    pub fn golden() -> Umt5Config {
        Umt5Config { vocab: 100, dim: 32, dim_attn: 32, dim_ffn: 48, num_heads: 4, num_layers: 2, ..Umt5Config::xxl() }
    }
}

/// Intermediate values of a forward pass, for parity tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Umt5Point {
    /// Token embeddings `[B, L, dim]`.
    TokenEmbedding,
    /// Relative position bias of block `i`, `[1, heads, L, L]` (before the padding mask).
    PositionBias(usize),
    /// Attention branch of block `i` before the residual add `[B, L, dim]`.
    Attention(usize),
    /// Feed-forward branch of block `i` before the residual add `[B, L, dim]`.
    FeedForward(usize),
    /// Residual stream after block `i` `[B, L, dim]`.
    Block(usize),
}

/// One encoder block's weights.
struct Block {
    norm1: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    norm2: Tensor,
    gate: Linear,
    fc1: Linear,
    fc2: Linear,
    /// `[num_buckets, heads]`.
    pos_embedding: Tensor,
}

impl Block {
    fn load(w: &Weights, c: &Umt5Config) -> Result<Self, WeightsError> {
        let (d, a, f) = (c.dim, c.dim_attn, c.dim_ffn);
        let attn = w.pp("attn");
        let ffn = w.pp("ffn");
        Ok(Block {
            norm1: w.pp("norm1").get("weight", &[d])?,
            q: linear_no_bias(&attn.pp("q"), d, a)?,
            k: linear_no_bias(&attn.pp("k"), d, a)?,
            v: linear_no_bias(&attn.pp("v"), d, a)?,
            o: linear_no_bias(&attn.pp("o"), a, d)?,
            norm2: w.pp("norm2").get("weight", &[d])?,
            gate: linear_no_bias(&ffn.pp("gate").pp(0), d, f)?,
            fc1: linear_no_bias(&ffn.pp("fc1"), d, f)?,
            fc2: linear_no_bias(&ffn.pp("fc2"), f, d)?,
            pos_embedding: w.pp("pos_embedding").pp("embedding").get("weight", &[c.num_buckets, c.num_heads])?,
        })
    }
}

/// The UMT5 encoder.
pub struct Umt5Encoder {
    config: Umt5Config,
    token_embedding: Tensor,
    blocks: Vec<Block>,
    norm: Tensor,
}

/// `x * rsqrt(mean(x^2) + eps) * w` over the last axis (candle's fused norm accumulates in f32).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, w, eps as f32)
}

impl Umt5Encoder {
    /// Load from the Wan2.1 `.pth` layout (no prefix: `token_embedding.weight`, `blocks.{i}.*`,
    /// `norm.weight`); every missing or unexpected key is named.
    pub fn load(checkpoint: &Checkpoint, config: &Umt5Config) -> Result<Umt5Encoder, WeightsError> {
        let w = checkpoint.weights();
        let model = Umt5Encoder {
            token_embedding: w.pp("token_embedding").get("weight", &[config.vocab, config.dim])?,
            blocks: (0..config.num_layers)
                .map(|i| Block::load(&w.pp("blocks").pp(i), config))
                .collect::<Result<_, _>>()?,
            norm: w.pp("norm").get("weight", &[config.dim])?,
            config: config.clone(),
        };
        w.finish(&[])?;
        Ok(model)
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &Umt5Config {
        &self.config
    }

    /// The bucket `[L, L]` (query row, key column) of every position pair, as u32 indices.
    pub fn buckets(&self, len: usize, device: &Device) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let buckets: Vec<u32> = (0..len * len)
            .map(|n| relative_position_bucket(n / len, n % len, c.num_buckets, c.max_distance) as u32)
            .collect();
        Tensor::from_vec(buckets, (len, len), device)
    }

    /// Encode token ids `[B, L]` with attention mask `[B, L]` (1 = token, 0 = padding) into the
    /// last hidden state `[B, L, dim]` (padded rows are computed too); `hook` sees the
    /// intermediate values named by [`Umt5Point`].
    pub fn forward_with(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        hook: &mut dyn FnMut(Umt5Point, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, len) = ids.dims2()?;
        let nh = c.num_heads;
        let dtype = self.token_embedding.dtype();
        let mut x = self
            .token_embedding
            .index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?
            .reshape((b, len, c.dim))?;
        hook(Umt5Point::TokenEmbedding, &x);
        let padding = KeyPadding::new(mask)?;
        let buckets = self.buckets(len, ids.device())?.flatten_all()?;
        for (i, blk) in self.blocks.iter().enumerate() {
            crate::interrupt::check("the UMT5 forward")?;
            let pos_bias = blk
                .pos_embedding
                .index_select(&buckets, 0)?
                .reshape((len, len, nh))?
                .permute((2, 0, 1))?
                .contiguous()?;
            hook(Umt5Point::PositionBias(i), &pos_bias.unsqueeze(0)?);
            let a = rms_norm(&x, &blk.norm1, c.eps)?;
            let (q, k, v) = (
                linear_forward(&blk.q, &a, false)?,
                linear_forward(&blk.k, &a, false)?,
                linear_forward(&blk.v, &a, false)?,
            );
            let o = position_biased(&q, &k, &v, nh, &pos_bias.to_dtype(dtype)?, &padding)?;
            let attn = linear_forward(&blk.o, &o, false)?;
            hook(Umt5Point::Attention(i), &attn);
            x = (x + attn)?;
            let f = rms_norm(&x, &blk.norm2, c.eps)?;
            let ffn = linear_forward(
                &blk.fc2,
                &(linear_forward(&blk.fc1, &f, false)? * linear_forward(&blk.gate, &f, true)?)?,
                false,
            )?;
            hook(Umt5Point::FeedForward(i), &ffn);
            x = (x + ffn)?;
            hook(Umt5Point::Block(i), &x);
        }
        rms_norm(&x, &self.norm, c.eps)
    }

    /// Encode token ids `[B, L]` with their mask into the last hidden state `[B, L, dim]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(ids, mask, &mut |_, _| {})
    }

    /// What Wan's DiT is conditioned on: each text's hidden states cut to its valid tokens,
    /// `[sum(mask[b]), dim]` per sample.
    pub fn encode(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Vec<Tensor>> {
        let out = self.forward(ids, mask)?;
        let lens = mask.to_dtype(DType::F32)?.sum(1)?.to_vec1::<f32>()?;
        lens.iter().enumerate().map(|(i, &n)| out.get(i)?.narrow(0, 0, n as usize)).collect()
    }
}

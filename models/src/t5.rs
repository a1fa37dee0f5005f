//! T5-v1.1 encoder as MUG-V conditions its DiT on it (`DeepFloyd/t5-v1_1-xxl`, HF key names),
//! with its SentencePiece tokenizer: pre-norm blocks with RMS norms, un-scaled attention with a
//! bucketed relative position bias shared by all blocks, and a gated tanh-GELU feed-forward.

use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::Linear;

use crate::attention::{position_biased, KeyPadding};
use crate::layers::{linear_forward, linear_no_bias, linear_residual};
use crate::profile;
use crate::weights::{Checkpoint, WeightsError};

/// Sizes of a T5-v1.1 encoder.
#[derive(Debug, Clone, PartialEq)]
pub struct T5Config {
    /// Rows of the token embedding.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Width of one attention head.
    pub d_kv: usize,
    /// Width of the feed-forward hidden layer.
    pub d_ff: usize,
    /// Encoder blocks.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Relative position buckets (half per direction).
    pub num_buckets: usize,
    /// Distance from which all positions share the last bucket.
    pub max_distance: usize,
    /// RMS norm epsilon.
    pub eps: f64,
    /// Tokens per text after padding or truncation (MUG-V: 300).
    pub max_length: usize,
}

impl T5Config {
    /// T5-v1.1-XXL as MUG-V runs it: 4096 wide, 24 blocks, 64 heads, texts of 300 tokens.
    pub fn xxl() -> T5Config {
        T5Config {
            vocab_size: 32128,
            d_model: 4096,
            d_kv: 64,
            d_ff: 10240,
            num_layers: 24,
            num_heads: 64,
            num_buckets: 32,
            max_distance: 128,
            eps: 1e-6,
            max_length: 300,
        }
    }

    /// The tiny random model of the goldens (`goldens/t5/config.json`, "tiny").
    pub fn golden() -> T5Config {
        T5Config {
            vocab_size: 512,
            d_model: 64,
            d_kv: 16,
            d_ff: 128,
            num_layers: 3,
            num_heads: 4,
            max_length: 120,
            ..T5Config::xxl()
        }
    }
}

/// The two names the token embedding goes by (a tied alias; checkpoints hold one or both).
const EMBEDDING_KEYS: [&str; 2] = ["shared.weight", "encoder.embed_tokens.weight"];

/// One encoder block's weights.
struct Block {
    attn_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ff_norm: Tensor,
    wi_0: Linear,
    wi_1: Linear,
    wo: Linear,
}

/// The T5-v1.1 encoder.
pub struct T5Encoder {
    config: T5Config,
    shared: Tensor,
    relative_attention_bias: Tensor,
    blocks: Vec<Block>,
    final_layer_norm: Tensor,
}

/// `x * rsqrt(mean(x^2) + eps) * w`, the variance in f32 whatever the working dtype (one fused
/// kernel on CUDA).
fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if x.device().is_cuda() {
        return kernels::rms_norm(&x.contiguous()?, w, eps as f32);
    }
    let dtype = x.dtype();
    let x32 = x.to_dtype(DType::F32)?;
    let var = x32.sqr()?.mean_keepdim(D::Minus1)?;
    x32.broadcast_mul(&(var + eps)?.sqrt()?.recip()?)?.to_dtype(dtype)?.broadcast_mul(w)
}

/// T5's bidirectional relative position bucket of key position `j` seen from query `i`.
pub fn relative_position_bucket(i: usize, j: usize, num_buckets: usize, max_distance: usize) -> usize {
    let half = num_buckets / 2;
    let r = j as i64 - i as i64;
    let mut bucket = if r > 0 { half } else { 0 };
    let a = r.unsigned_abs() as usize;
    let exact = half / 2;
    if a < exact {
        bucket += a;
    } else {
        // As the reference computes it: the log in f32, then truncation toward zero.
        let log = (a as f32 / exact as f32).ln() / (max_distance as f32 / exact as f32).ln() * (half - exact) as f32;
        bucket += (exact + log as usize).min(half - 1);
    }
    bucket
}

impl T5Encoder {
    /// Load the encoder from a checkpoint with the HF T5 key names (decoder and LM head keys,
    /// present in full T5 checkpoints, are ignored); every missing or unexpected key is named.
    pub fn load(checkpoint: &Checkpoint, config: &T5Config) -> Result<T5Encoder, WeightsError> {
        let (d, inner, f) = (config.d_model, config.num_heads * config.d_kv, config.d_ff);
        let w = checkpoint.weights();
        let encoder = w.pp("encoder");
        let blocks = (0..config.num_layers)
            .map(|i| {
                let l = encoder.pp("block").pp(i).pp("layer");
                let (a, m) = (l.pp(0).pp("SelfAttention"), l.pp(1).pp("DenseReluDense"));
                Ok(Block {
                    attn_norm: l.pp(0).pp("layer_norm").get("weight", &[d])?,
                    q: linear_no_bias(&a.pp("q"), d, inner)?,
                    k: linear_no_bias(&a.pp("k"), d, inner)?,
                    v: linear_no_bias(&a.pp("v"), d, inner)?,
                    o: linear_no_bias(&a.pp("o"), inner, d)?,
                    ff_norm: l.pp(1).pp("layer_norm").get("weight", &[d])?,
                    wi_0: linear_no_bias(&m.pp("wi_0"), d, f)?,
                    wi_1: linear_no_bias(&m.pp("wi_1"), d, f)?,
                    wo: linear_no_bias(&m.pp("wo"), f, d)?,
                })
            })
            .collect::<Result<_, WeightsError>>()?;
        let embedding = EMBEDDING_KEYS.into_iter().find(|k| w.contains(k)).unwrap_or(EMBEDDING_KEYS[0]);
        let attention = encoder.pp("block").pp(0).pp("layer").pp(0).pp("SelfAttention");
        let model = T5Encoder {
            config: config.clone(),
            shared: w.get(embedding, &[config.vocab_size, d])?,
            relative_attention_bias: attention
                .pp("relative_attention_bias")
                .get("weight", &[config.num_buckets, config.num_heads])?,
            blocks,
            final_layer_norm: encoder.pp("final_layer_norm").get("weight", &[d])?,
        };
        w.finish(&["decoder.", "lm_head.", EMBEDDING_KEYS[0], EMBEDDING_KEYS[1]])?;
        Ok(model)
    }

    /// The relative position bias `[H, L, L]` for `len` positions.
    fn position_bias(&self, len: usize, device: &Device) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let buckets: Vec<u32> = (0..len * len)
            .map(|n| relative_position_bucket(n / len, n % len, c.num_buckets, c.max_distance) as u32)
            .collect();
        let buckets = Tensor::from_vec(buckets, len * len, device)?;
        self.relative_attention_bias
            .index_select(&buckets, 0)?
            .reshape((len, len, c.num_heads))?
            .permute((2, 0, 1))?
            .contiguous()
    }

    /// Encode token ids `[B, L]` with attention mask `[B, L]` (1 = token, 0 = padding) into the
    /// last hidden state `[B, L, d_model]`; `hook` sees the residual stream after each block.
    pub fn forward_with(
        &self,
        ids: &Tensor,
        mask: &Tensor,
        hook: &mut dyn FnMut(usize, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, len) = ids.dims2()?;
        let dtype = self.shared.dtype();
        let mut x =
            self.shared.index_select(&ids.flatten_all()?.to_dtype(DType::U32)?, 0)?.reshape((b, len, c.d_model))?;
        let (bias, padding) = (self.position_bias(len, ids.device())?.to_dtype(dtype)?, KeyPadding::new(mask)?);
        let dev = ids.device();
        let span = |name, f: &dyn Fn() -> candle_core::Result<Tensor>| profile::span(dev, name, f);
        for (i, blk) in self.blocks.iter().enumerate() {
            crate::interrupt::check("the T5 forward")?;
            let a = span("RMSNorm", &|| rms_norm(&x, &blk.attn_norm, c.eps))?;
            let q = span("q/k/v linear", &|| linear_forward(&blk.q, &a, false))?;
            let k = span("q/k/v linear", &|| linear_forward(&blk.k, &a, false))?;
            let v = span("q/k/v linear", &|| linear_forward(&blk.v, &a, false))?;
            let o = span("attention (+ position bias)", &|| position_biased(&q, &k, &v, c.num_heads, &bias, &padding))?;
            x = span("o linear + residual", &|| linear_residual(&blk.o, &o, &x))?;
            let f = span("RMSNorm", &|| rms_norm(&x, &blk.ff_norm, c.eps))?;
            let h = span("wi_0 linear + GELU", &|| linear_forward(&blk.wi_0, &f, true))?;
            let g = span("wi_1 linear", &|| linear_forward(&blk.wi_1, &f, false))?;
            let h = span("gate multiply", &|| &h * &g)?;
            x = span("wo linear + residual", &|| linear_residual(&blk.wo, &h, &x))?;
            hook(i, &x);
        }
        if let Some(report) = profile::take_report("the T5 encoder blocks") {
            eprint!("{report}");
        }
        rms_norm(&x, &self.final_layer_norm, c.eps)
    }

    /// Encode token ids `[B, L]` with their mask into the last hidden state `[B, L, d_model]`.
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(ids, mask, &mut |_, _| {})
    }
}

/// T5's SentencePiece tokenizer (a HF `tokenizer.json`) with MUG-V's length rule: `</s>` ends
/// every text, texts longer than `max_length` keep their first `max_length - 1` pieces, and
/// shorter ones are right-padded with `<pad>` (id 0).
pub struct T5Tokenizer {
    tokenizer: tokenizers::Tokenizer,
    max_length: usize,
}

/// Id of `</s>`.
pub const EOS_ID: u32 = 1;

/// The T5 vocabulary (Google's Apache-2.0 SentencePiece model as a HF tokenizer.json, see
/// `models/data/PROVENANCE.md`), built in so that benchmarks and random-weight sets need no file.
pub const T5_VOCABULARY: &[u8] = include_bytes!("../data/t5_tokenizer.json");

impl T5Tokenizer {
    /// The tokenizer of the built-in T5 vocabulary ([`T5_VOCABULARY`]).
    pub fn bundled(max_length: usize) -> T5Tokenizer {
        // The built-in file is the one the T5 parity tests read: it always parses.
        let tokenizer = tokenizers::Tokenizer::from_bytes(T5_VOCABULARY).expect("the built-in T5 vocabulary parses");
        T5Tokenizer { tokenizer, max_length }
    }

    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path, max_length: usize) -> Result<T5Tokenizer, WeightsError> {
        let tokenizer = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| WeightsError::Read { path: path.to_path_buf(), message: e.to_string() })?;
        Ok(T5Tokenizer { tokenizer, max_length })
    }

    /// Token ids `[max_length]` and mask (1 for pieces and `</s>`, 0 for padding) of one text.
    pub fn encode(&self, text: &str) -> Result<(Vec<u32>, Vec<u32>), tokenizers::Error> {
        // The tokenizer's post-processor appends `</s>` itself.
        let mut ids = self.tokenizer.encode(text, true)?.get_ids().to_vec();
        if ids.len() > self.max_length {
            ids.truncate(self.max_length - 1);
            ids.push(EOS_ID);
        }
        let valid = ids.len();
        ids.resize(self.max_length, 0);
        let mask = (0..self.max_length).map(|i| u32::from(i < valid)).collect();
        Ok((ids, mask))
    }
}

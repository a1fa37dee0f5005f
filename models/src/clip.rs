//! CLIP ViT image tower with its visual projection (`openai/clip-vit-large-patch14`, HF
//! `CLIPVisionModelWithProjection` key names), as video curation runs it to embed frames for the
//! aesthetic score: patch convolution, class token, learned positions, pre-norm blocks with
//! quick-GELU MLPs, and the class token's post-norm projected to the joint embedding space.

use candle_core::{Module, Tensor};
use candle_nn::{LayerNorm, Linear};

use crate::attention::attention_tokens;
use crate::layers::{layer_norm, layer_norm_forward, linear, linear_forward, linear_no_bias, linear_residual};
use crate::profile;
use crate::weights::{Checkpoint, WeightsError};

/// Sizes of a CLIP ViT image tower.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipVisionConfig {
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP hidden layer.
    pub intermediate_size: usize,
    /// Encoder layers.
    pub num_layers: usize,
    /// Attention heads.
    pub num_heads: usize,
    /// Side of one square patch, pixels.
    pub patch_size: usize,
    /// Side of the square input image, pixels.
    pub image_size: usize,
    /// Width of the projected image embedding.
    pub projection_dim: usize,
    /// LayerNorm epsilon.
    pub eps: f64,
}

impl ClipVisionConfig {
    /// OpenAI CLIP ViT-L/14 at 224 px, the tower of the LAION aesthetic predictor.
    pub fn vit_l_14() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_layers: 24,
            num_heads: 16,
            patch_size: 14,
            image_size: 224,
            projection_dim: 768,
            eps: 1e-5,
        }
    }

    /// The tiny random tower of the goldens (`goldens/aesthetic/config.json`, "tiny_clip_vision").
    pub fn golden() -> ClipVisionConfig {
        ClipVisionConfig {
            hidden_size: 128,
            intermediate_size: 512,
            num_layers: 2,
            num_heads: 2,
            image_size: 56,
            projection_dim: 64,
            ..ClipVisionConfig::vit_l_14()
        }
    }

    /// Tokens per image: the class token and one per patch.
    fn num_positions(&self) -> usize {
        1 + (self.image_size / self.patch_size).pow(2)
    }
}

/// Key prefixes of a full `CLIPModel` file that the image tower does not use.
const IGNORED_PREFIXES: [&str; 4] =
    ["text_model.", "text_projection", "logit_scale", "vision_model.embeddings.position_ids"];

/// Points of the tower's forward pass that [`ClipVision::forward_with`] shows to its hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClipPoint {
    /// Patch embeddings with the class token prepended and positions added, `[B, T, W]`.
    Embeddings,
    /// After `pre_layrnorm`, `[B, T, W]`.
    AfterPreLayrnorm,
    /// After encoder layer `i`, `[B, T, W]` (the last one is the HF `last_hidden_state`).
    AfterLayer(usize),
    /// The class token after `post_layernorm`, `[B, W]` (the HF `pooler_output`).
    Pooled,
}

/// One encoder layer's weights (`vision_model.encoder.layers.{i}`).
struct EncoderLayer {
    layer_norm1: LayerNorm,
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    out_proj: Linear,
    layer_norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The CLIP ViT image tower and its visual projection.
pub struct ClipVision {
    config: ClipVisionConfig,
    class_embedding: Tensor,
    patch_embedding: Tensor,
    position_embedding: Tensor,
    pre_layrnorm: LayerNorm,
    layers: Vec<EncoderLayer>,
    post_layernorm: LayerNorm,
    visual_projection: Linear,
}

/// `z * sigmoid(1.702 z)`, the GELU approximation OpenAI trained CLIP with (one kernel on CUDA).
fn quick_gelu(z: &Tensor) -> candle_core::Result<Tensor> {
    #[cfg(feature = "cuda")]
    if z.device().is_cuda() {
        return kernels::quick_gelu(&z.contiguous()?);
    }
    z * candle_nn::ops::sigmoid(&(z * 1.702)?)?
}

impl ClipVision {
    /// Load the tower from a checkpoint with the HF key names (a whole `CLIPModel` file works: its
    /// text tower, `logit_scale` and `position_ids` are ignored); every missing or unexpected key
    /// is named.
    pub fn load(checkpoint: &Checkpoint, config: &ClipVisionConfig) -> Result<ClipVision, WeightsError> {
        let (w, f, eps) = (config.hidden_size, config.intermediate_size, config.eps);
        let root = checkpoint.weights();
        let v = root.pp("vision_model");
        let layers = (0..config.num_layers)
            .map(|i| {
                let l = v.pp("encoder").pp("layers").pp(i);
                let (a, m) = (l.pp("self_attn"), l.pp("mlp"));
                Ok(EncoderLayer {
                    layer_norm1: layer_norm(&l.pp("layer_norm1"), w, eps)?,
                    q_proj: linear(&a.pp("q_proj"), w, w)?,
                    k_proj: linear(&a.pp("k_proj"), w, w)?,
                    v_proj: linear(&a.pp("v_proj"), w, w)?,
                    out_proj: linear(&a.pp("out_proj"), w, w)?,
                    layer_norm2: layer_norm(&l.pp("layer_norm2"), w, eps)?,
                    fc1: linear(&m.pp("fc1"), w, f)?,
                    fc2: linear(&m.pp("fc2"), f, w)?,
                })
            })
            .collect::<Result<_, WeightsError>>()?;
        let (e, p) = (v.pp("embeddings"), config.patch_size);
        let model = ClipVision {
            config: config.clone(),
            class_embedding: e.get("class_embedding", &[w])?,
            patch_embedding: e.pp("patch_embedding").get("weight", &[w, 3, p, p])?,
            position_embedding: e.pp("position_embedding").get("weight", &[config.num_positions(), w])?,
            pre_layrnorm: layer_norm(&v.pp("pre_layrnorm"), w, eps)?,
            layers,
            post_layernorm: layer_norm(&v.pp("post_layernorm"), w, eps)?,
            visual_projection: linear_no_bias(&root.pp("visual_projection"), w, config.projection_dim)?,
        };
        root.finish(&IGNORED_PREFIXES)?;
        Ok(model)
    }

    /// Embed normalised images `[B, 3, S, S]` (see the CLIP preprocessing in `stages`) into
    /// `image_embeds` `[B, projection_dim]`; `hook` sees every [`ClipPoint`] on the way.
    pub fn forward_with(
        &self,
        pixel_values: &Tensor,
        hook: &mut dyn FnMut(ClipPoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let c = &self.config;
        let (b, w) = (pixel_values.dim(0)?, c.hidden_size);
        let (heads, d) = (c.num_heads, c.hidden_size / c.num_heads);
        let pixel_values = pixel_values.to_dtype(self.patch_embedding.dtype())?;
        // [B, W, g, g] -> [B, g*g, W], patches row-major.
        let patches =
            pixel_values.conv2d(&self.patch_embedding, 0, c.patch_size, 1, 1)?.flatten_from(2)?.transpose(1, 2)?;
        let class = self.class_embedding.reshape((1, 1, w))?.broadcast_as((b, 1, w))?;
        let mut x = Tensor::cat(&[&class, &patches], 1)?.broadcast_add(&self.position_embedding)?;
        hook(ClipPoint::Embeddings, &x);
        x = layer_norm_forward(&self.pre_layrnorm, &x, c.eps)?;
        hook(ClipPoint::AfterPreLayrnorm, &x);
        let t = x.dim(1)?;
        let scale = (d as f64).powf(-0.5);
        let dev = x.device().clone();
        let span = |name, f: &dyn Fn() -> candle_core::Result<Tensor>| profile::span(&dev, name, f);
        for (i, layer) in self.layers.iter().enumerate() {
            crate::interrupt::check("the CLIP forward")?;
            let a = span("LayerNorm", &|| layer_norm_forward(&layer.layer_norm1, &x, c.eps))?;
            // Every key is attended (no mask); token-major heads `[B, T, H, d]` for the attention.
            let split = |l: &Linear| span("q/k/v linear", &|| linear_forward(l, &a, false)?.reshape((b, t, heads, d)));
            let (q, k, v) = (split(&layer.q_proj)?, split(&layer.k_proj)?, split(&layer.v_proj)?);
            let o = span("attention", &|| attention_tokens(&q, &k, &v, None, scale)?.reshape((b, t, w)))?;
            x = span("out linear + residual", &|| linear_residual(&layer.out_proj, &o, &x))?;
            let n = span("LayerNorm", &|| layer_norm_forward(&layer.layer_norm2, &x, c.eps))?;
            let h = span("fc1 linear", &|| linear_forward(&layer.fc1, &n, false))?;
            let h = span("quick GELU", &|| quick_gelu(&h))?;
            x = span("fc2 linear + residual", &|| linear_residual(&layer.fc2, &h, &x))?;
            hook(ClipPoint::AfterLayer(i), &x);
        }
        if let Some(report) = profile::take_report("the CLIP vision layers") {
            eprint!("{report}");
        }
        let pooled = self.post_layernorm.forward(&x.narrow(1, 0, 1)?.squeeze(1)?)?;
        hook(ClipPoint::Pooled, &pooled);
        self.visual_projection.forward(&pooled)
    }

    /// Embed normalised images `[B, 3, S, S]` into `image_embeds` `[B, projection_dim]`.
    pub fn forward(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(pixel_values, &mut |_, _| {})
    }
}

//! Aesthetic score of images and video clips as Open-Sora's curation computes it
//! (`tools/scoring/aesthetic`): CLIP ViT-L/14 image embeddings, L2-normalised, through LAION's
//! "improved aesthetic predictor" MLP (`sac+logos+ava1-l14-linearMSE.pth`); a clip scores the
//! mean of its frames' scores.

use candle_core::{Module, Tensor, D};
use candle_nn::Linear;

use crate::clip::{ClipVision, ClipVisionConfig};
use crate::layers::linear;
use crate::weights::{Checkpoint, WeightsError};

/// Output widths of the MLP's Linears (Open-Sora's `MLP(input_size)` fixes them).
const MLP_WIDTHS: [usize; 5] = [1024, 128, 64, 16, 1];

/// Positions of those Linears in the checkpoint's `layers` Sequential (1, 3 and 5 are Dropouts).
const MLP_LAYERS: [usize; 5] = [0, 2, 4, 6, 7];

/// Sizes of the aesthetic scorer: the CLIP tower, whose projection width is the MLP's input.
#[derive(Debug, Clone, PartialEq)]
pub struct AestheticConfig {
    /// The image tower.
    pub clip: ClipVisionConfig,
}

impl AestheticConfig {
    /// The real scorer: ViT-L/14, MLP input 768.
    pub fn vit_l_14() -> AestheticConfig {
        AestheticConfig { clip: ClipVisionConfig::vit_l_14() }
    }

    /// The tiny random scorer of the goldens: MLP input 64, real hidden widths.
    pub fn golden() -> AestheticConfig {
        AestheticConfig { clip: ClipVisionConfig::golden() }
    }
}

/// The LAION aesthetic MLP: five Linears with no activation between them (the Dropouts are
/// identity at inference), from a normalised image embedding to one unbounded score.
pub struct AestheticMlp {
    /// Each Linear with its index in the checkpoint's `layers`.
    layers: Vec<(usize, Linear)>,
}

impl AestheticMlp {
    /// Load the MLP from a checkpoint with the LAION key names (`layers.0.weight` ...); every
    /// missing or unexpected key is named.
    pub fn load(checkpoint: &Checkpoint, config: &AestheticConfig) -> Result<AestheticMlp, WeightsError> {
        let w = checkpoint.weights();
        let inputs = std::iter::once(config.clip.projection_dim).chain(MLP_WIDTHS);
        let layers = MLP_LAYERS
            .into_iter()
            .zip(inputs.zip(MLP_WIDTHS))
            .map(|(k, (cin, cout))| Ok((k, linear(&w.pp("layers").pp(k), cin, cout)?)))
            .collect::<Result<_, WeightsError>>()?;
        w.finish(&[])?;
        Ok(AestheticMlp { layers })
    }

    /// Score normalised embeddings `[B, input]` into `[B, 1]`; `hook` sees the output of each
    /// Linear with its index in `layers`.
    pub fn forward_with(&self, embeds: &Tensor, hook: &mut dyn FnMut(usize, &Tensor)) -> candle_core::Result<Tensor> {
        let mut x = embeds.to_dtype(self.layers[0].1.weight().dtype())?;
        for (k, linear) in &self.layers {
            x = linear.forward(&x)?;
            hook(*k, &x);
        }
        Ok(x)
    }

    /// Score normalised embeddings `[B, input]` into `[B, 1]`.
    pub fn forward(&self, embeds: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_with(embeds, &mut |_, _| {})
    }
}

/// `x / max(||x||_2, 1e-12)` over the last dimension (PyTorch's `F.normalize`).
pub fn l2_normalize(x: &Tensor) -> candle_core::Result<Tensor> {
    x.broadcast_div(&x.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?)
}

/// CLIP tower and aesthetic MLP together: images or clips in, aesthetic scores out.
pub struct AestheticScorer {
    /// The image tower.
    pub clip: ClipVision,
    /// The score head.
    pub mlp: AestheticMlp,
}

impl AestheticScorer {
    /// Load the tower from its CLIP checkpoint and the MLP from its own file.
    pub fn load(
        clip: &Checkpoint,
        mlp: &Checkpoint,
        config: &AestheticConfig,
    ) -> Result<AestheticScorer, WeightsError> {
        Ok(AestheticScorer { clip: ClipVision::load(clip, &config.clip)?, mlp: AestheticMlp::load(mlp, config)? })
    }

    /// Score of each normalised image `[B, 3, S, S]`, `[B]`.
    pub fn score(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.mlp.forward(&l2_normalize(&self.clip.forward(pixel_values)?)?)?.squeeze(1)
    }

    /// Score of every frame of clips `[B, N, 3, S, S]`, `[B, N]` (one batch of `B * N` images).
    pub fn frame_scores(&self, frames: &Tensor) -> candle_core::Result<Tensor> {
        let (b, n) = (frames.dim(0)?, frames.dim(1)?);
        self.score(&frames.flatten(0, 1)?)?.reshape((b, n))
    }

    /// Clip score of clips `[B, N, 3, S, S]`: the mean of their frames' scores, `[B]`.
    pub fn clip_scores(&self, frames: &Tensor) -> candle_core::Result<Tensor> {
        self.frame_scores(frames)?.mean(1)
    }
}

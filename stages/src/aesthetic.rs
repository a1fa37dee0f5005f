//! `aesthetic`: the LAION aesthetic score of each clip (CLIP ViT-L/14 image tower + MLP head,
//! mean over frames sampled across the clip), with an optional threshold that drops low scores.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::Tensor;
use models::aesthetic::{AestheticMlp, AestheticScorer};
use models::clip::ClipVision;
use pipeline::io::fetch_local;
use pipeline::report::DroppedExample;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoints::{default_device, ModelPreset, ModelThread, Placement, Precision};
use crate::video::decode::{FrameFormat, Layout, VideoReader};
use crate::video::pillow::clip_pixel_values;

/// Score each clip with the LAION improved aesthetic predictor as Open-Sora's curation does:
/// `frames` frames at the centres of equal parts of the clip, each resized (shorter side, Pillow
/// bicubic) and centre-cropped for CLIP, scored, and averaged into `aesthetic_score` (about 1..10
/// with the real weights). Clips scoring below `min_score` are dropped.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AestheticConfig {
    /// CLIP checkpoint with HF key names (`openai/clip-vit-large-patch14` safetensors; the text
    /// tower's keys are ignored).
    pub clip: PathBuf,
    /// The aesthetic head (`sac+logos+ava1-l14-linearMSE.pth`, or a safetensors copy).
    pub mlp: PathBuf,
    /// Model sizes: "real" (ViT-L/14) or "tiny" (`mugflow models init-tiny`).
    #[serde(default)]
    pub preset: ModelPreset,
    /// Frames scored per clip.
    #[serde(default = "default_frames")]
    #[schemars(range(min = 1))]
    pub frames: usize,
    /// Drop clips scoring below this; unset keeps every clip.
    pub min_score: Option<f64>,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision: "f32", "bf16" (GPUs) or "f16".
    #[serde(default)]
    pub dtype: Precision,
}

fn default_frames() -> usize {
    4
}

/// Frame indices at the centres of `n` equal parts of `start..end`.
fn sample_indices(start: usize, end: usize, n: usize) -> Vec<usize> {
    let len = end.saturating_sub(start);
    let mut idx: Vec<usize> = (0..n).map(|i| start + ((2 * i + 1) * len) / (2 * n)).filter(|&i| i < end).collect();
    idx.dedup();
    idx
}

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct Aesthetic {
    frames: usize,
    min_score: Option<f64>,
    scorer: Arc<AestheticScorer>,
    size: usize,
    device: candle_core::Device,
    dtype: candle_core::DType,
    thread: ModelThread,
}

impl Aesthetic {
    /// Decode the sampled frames as CLIP's input values `(n, 3, S, S)`, flattened.
    fn pixel_values(&self, path: &Path, start: usize, end: usize) -> Result<Vec<f32>, StageError> {
        let indices = sample_indices(start, end, self.frames);
        let mut values = Vec::new();
        let mut reader = VideoReader::open(path, 1)?;
        reader.frames_at(&indices, FrameFormat::full(Layout::Rgb), |_, image| {
            values.extend(clip_pixel_values(image.view(), self.size));
            true
        })?;
        if values.is_empty() {
            return Err(StageError::msg(format!("frames {start}..{end} are past the video's end")));
        }
        Ok(values)
    }

    /// The mean score of the frames' values.
    fn score(&self, values: Vec<f32>) -> Result<f64, StageError> {
        let n = values.len() / (3 * self.size * self.size);
        let run = || -> candle_core::Result<f64> {
            let frames =
                Tensor::from_vec(values, (1, n, 3, self.size, self.size), &self.device)?.to_dtype(self.dtype)?;
            let score = self.scorer.clip_scores(&frames)?.to_dtype(candle_core::DType::F32)?;
            Ok(f64::from(score.flatten_all()?.to_vec1::<f32>()?[0]))
        };
        run().map_err(|e| StageError::from(e).context("aesthetic scoring failed"))
    }
}

#[async_trait]
impl Stage for Aesthetic {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let (start, end) = crate::row::clip_range(&item);
        let local = fetch_local(item.uri()?, &ctx.scratch)
            .await
            .map_err(|e| StageError::from(e).context("cannot fetch the source video"))?;
        let path = local.path().to_path_buf();
        let me = self.clone();
        let values = ctx
            .cpu(move || {
                let end = match end {
                    Some(e) => e,
                    None => VideoReader::open(&path, 0)?.count_frames()?,
                };
                me.pixel_values(&path, start, end)
            })
            .await??;
        let me = self.clone();
        let score = self.thread.run(ctx, move || me.score(values)).await??;
        if self.min_score.is_some_and(|min| score < min) {
            let example = DroppedExample {
                id: item.id.clone(),
                uri: item.uri()?.to_string(),
                frame: (start + end.unwrap_or(start + 1).max(start + 1) - 1) / 2,
            };
            ctx.dropped("below min_score", Some(example));
            return Ok(Vec::new());
        }
        item.set("aesthetic_score", score);
        Ok(vec![item])
    }
}

impl StageConfig for AestheticConfig {
    const KIND: &'static str = "aesthetic";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"aesthetic\"\nclip = \"models/clip-vit-large-patch14.safetensors\"\nmlp = \"models/sac+logos+ava1-l14-linearMSE.pth\"\nframes = 4\nmin_score = 4.5\ndevice = \"cuda:0\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new("uri", FieldType::Str, "path or URL of the source video")]
    }

    fn adds(&self) -> Vec<Field> {
        vec![Field::new("aesthetic_score", FieldType::Float, "mean LAION aesthetic score of the sampled frames")]
    }

    fn check(&self) -> Vec<String> {
        if self.frames == 0 {
            vec!["frames must be at least 1".into()]
        } else {
            Vec::new()
        }
    }

    fn reusable(&self) -> bool {
        true
    }
    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.clip.clone(), self.mlp.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        let config = self.preset.sizes().aesthetic();
        let placement = Placement::new(&self.device, self.dtype)?;
        let scorer = AestheticScorer {
            clip: placement.load(Self::KIND, "clip", &self.clip, |c| ClipVision::load(c, &config.clip))?,
            mlp: placement.load(Self::KIND, "mlp", &self.mlp, |c| AestheticMlp::load(c, &config))?,
        };
        Ok(Runnable::Transform(Arc::new(Aesthetic {
            frames: self.frames,
            min_score: self.min_score,
            scorer: Arc::new(scorer),
            size: config.clip.image_size,
            device: placement.device,
            dtype: placement.dtype,
            thread: placement.thread,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_sit_at_the_centres_of_equal_parts() {
        assert_eq!(sample_indices(0, 8, 4), [1, 3, 5, 7]);
        assert_eq!(sample_indices(10, 110, 4), [22, 47, 72, 97]);
        assert_eq!(sample_indices(5, 7, 4), [5, 6]);
        assert!(sample_indices(5, 5, 4).is_empty());
    }
}

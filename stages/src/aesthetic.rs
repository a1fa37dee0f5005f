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

use crate::batch::Batcher;
use crate::checkpoints::{default_device, ModelPreset, Placement, Precision};
use crate::video::decode::{FrameFormat, VideoReader};
use crate::video::pillow::clip_pixel_values;
use crate::video::pixel::Layout;

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

/// Frames scored in one CLIP call at most: on a GPU the sampled frames of many clips go through
/// the model together (a ViT-L/14 call of 4 frames costs about what one of 256 does).
const MAX_BATCH_FRAMES: usize = 256;

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct Aesthetic {
    frames: usize,
    min_score: Option<f64>,
    size: usize,
    /// Clips' frames scored together on the placement's model thread.
    batcher: Batcher<Vec<f32>, f64>,
}

/// The CLIP scorer on its placement: what the batches run.
struct Scorer {
    scorer: AestheticScorer,
    size: usize,
    device: candle_core::Device,
    dtype: candle_core::DType,
}

impl Scorer {
    /// The mean score of each clip's frames, one clip per entry of `clips` (CLIP's input values
    /// of its frames, flattened), all frames in one model call.
    fn clip_scores(&self, clips: Vec<Vec<f32>>) -> Result<Vec<f64>, String> {
        let per_frame = 3 * self.size * self.size;
        let counts: Vec<usize> = clips.iter().map(|c| c.len() / per_frame).collect();
        let n: usize = counts.iter().sum();
        let run = || -> candle_core::Result<Vec<f32>> {
            let frames =
                Tensor::from_vec(clips.concat(), (n, 3, self.size, self.size), &self.device)?.to_dtype(self.dtype)?;
            self.scorer.score(&frames)?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()
        };
        let scores = run().map_err(|e| format!("aesthetic scoring failed: {e}"))?;
        let mut at = 0;
        Ok(counts
            .into_iter()
            .map(|k| {
                let mean = scores[at..at + k].iter().map(|&s| f64::from(s)).sum::<f64>() / k as f64;
                at += k;
                mean
            })
            .collect())
    }
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
        let (score, _) = self.batcher.run(ctx, values).await?;
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

    /// Twice the cores: decoding the sampled frames keeps the CPU pool busy while the clips
    /// decoded meanwhile queue for the next batch on the GPU.
    fn default_parallelism(&self) -> usize {
        2 * std::thread::available_parallelism().map_or(2, |n| n.get())
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
        let scorer = Scorer {
            scorer: AestheticScorer {
                clip: placement.load(Self::KIND, "clip", &self.clip, |c| ClipVision::load(c, &config.clip))?,
                mlp: placement.load(Self::KIND, "mlp", &self.mlp, |c| AestheticMlp::load(c, &config))?,
            },
            size: config.clip.image_size,
            device: placement.device,
            dtype: placement.dtype,
        };
        let clips = (MAX_BATCH_FRAMES / self.frames).max(1);
        Ok(Runnable::Transform(Arc::new(Aesthetic {
            frames: self.frames,
            min_score: self.min_score,
            size: config.clip.image_size,
            batcher: Batcher::new(placement.thread, clips, move |c| scorer.clip_scores(c)),
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

    #[test]
    fn clips_scored_in_one_batch_score_as_each_alone() {
        use candle_core::{DType, Device};
        use models::random::{model_keys, random_checkpoint};
        let config = models::aesthetic::AestheticConfig::golden();
        let random =
            |keys: Vec<(String, Vec<usize>)>| random_checkpoint(&keys, DType::F32, &Device::Cpu, &Device::Cpu).unwrap();
        let clip = random(model_keys(|c| ClipVision::load(c, &config.clip)).unwrap());
        let mlp = random(model_keys(|c| AestheticMlp::load(c, &config)).unwrap());
        let size = config.clip.image_size;
        let scorer = Scorer {
            scorer: AestheticScorer::load(&clip, &mlp, &config).unwrap(),
            size,
            device: Device::Cpu,
            dtype: DType::F32,
        };
        // Clips of 3, 1 and 2 frames (a short clip samples fewer frames than asked).
        let clips: Vec<Vec<f32>> = [3usize, 1, 2]
            .iter()
            .enumerate()
            .map(|(c, &n)| (0..n * 3 * size * size).map(|i| ((i * 7 + c * 13) % 255) as f32 / 127.5 - 1.0).collect())
            .collect();
        let batched = scorer.clip_scores(clips.clone()).unwrap();
        assert_eq!(batched.len(), 3);
        for (values, got) in clips.into_iter().zip(batched) {
            let n = values.len() / (3 * size * size);
            let frames = Tensor::from_vec(values, (1, n, 3, size, size), &Device::Cpu).unwrap();
            let alone = scorer.scorer.clip_scores(&frames).unwrap().to_vec1::<f32>().unwrap()[0];
            assert!((got - f64::from(alone)).abs() <= 1e-5 * f64::from(alone).abs().max(1.0), "{got} vs {alone}");
        }
    }
}

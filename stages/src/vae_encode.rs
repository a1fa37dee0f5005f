//! `vae_encode`: each clip through the MUG-V VideoVAE into a latent `[24, T/8, H/8, W/8]`, at the
//! manifest's size (or aspect bucket), frame rate and frame count.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use models::mugvae::MugVae;
use pipeline::io::fetch_local;
use pipeline::manifest::Resolution;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::aesthetic::clip_range;
use crate::checkpoints::{default_device, to_payload, Placement, Precision, Preset};
use crate::video::decode::{nearest_bucket, uniform_indices, FrameFormat, Image, Layout, VideoReader};

/// Encode each clip with the MUG-V VideoVAE: frames selected at `fps`, the first `frames` of
/// them kept, each resized to fill `size` (or the nearest of `buckets`) and centre-cropped, pixels
/// scaled to `pixel_range`; the latent (posterior mean, or a seeded sample) is the item's `latent`
/// tensor `[24, T', H/8, W/8]`, normalised with the checkpoint's shift and scale.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaeEncodeConfig {
    /// The VideoVAE checkpoint (`vae.pt` of MUG-V, or a safetensors copy with the same keys).
    pub checkpoint: PathBuf,
    /// Model sizes: "real" or "tiny" (`mugflow models init-tiny`).
    #[serde(default)]
    pub preset: Preset,
    /// Resize to cover this size, then crop the centre; unset keeps the source size.
    pub size: Option<Resolution>,
    /// Aspect-ratio buckets: each clip fills the bucket nearest its aspect ratio (before `size`).
    #[serde(default)]
    pub buckets: Vec<Resolution>,
    /// Frame rate to sample the clip at (uniform selection); unset keeps every frame.
    pub fps: Option<f64>,
    /// Frames encoded from the clip's start (after fps selection); shorter clips are errors.
    /// Unset encodes the whole clip. MUG-V trains on 73 (3 s) or 105 (5 s) frames at 24 fps.
    pub frames: Option<usize>,
    /// Pixel scaling: "signed" maps 0..255 to [-1, 1] (MUG-V inference); "unit" to [0, 1]
    /// (what the MUG-V Megatron data-preparation script feeds).
    #[serde(default)]
    pub pixel_range: PixelRange,
    /// Sample the posterior (`mean + std * noise`, like the reference) instead of taking its mean;
    /// the noise is seeded by `seed` and the item id, so re-runs give the same latents.
    #[serde(default)]
    pub sample: bool,
    /// Seed of the posterior noise when `sample` is on.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision: "f32", "bf16" (GPUs) or "f16".
    #[serde(default)]
    pub dtype: Precision,
}

fn default_seed() -> u64 {
    42
}

/// How 8-bit pixels are scaled for the VAE.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PixelRange {
    /// `(u / 255 - 0.5) / 0.5`, in [-1, 1].
    #[default]
    Signed,
    /// `u / 255`, in [0, 1].
    Unit,
}

/// Frames `(3, T, H, W)` as the VAE's input values, channel-major.
fn frames_to_values(frames: &[Image], range: PixelRange) -> Vec<f32> {
    let (h, w) = (frames[0].height, frames[0].width);
    let (t, plane) = (frames.len(), h * w);
    let mut out = vec![0f32; 3 * t * plane];
    for (ti, f) in frames.iter().enumerate() {
        for (p, px) in f.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                let v = f32::from(px[c]) / 255.0;
                out[c * t * plane + ti * plane + p] = match range {
                    PixelRange::Signed => (v - 0.5) / 0.5,
                    PixelRange::Unit => v,
                };
            }
        }
    }
    out
}

/// A seed for one item's posterior noise: the stage seed mixed with a hash of the item id.
fn item_seed(seed: u64, id: &str) -> u64 {
    let digest = Sha256::digest(id.as_bytes());
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&digest[..8]);
    seed ^ u64::from_le_bytes(bytes)
}

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct VaeEncode {
    config: Arc<VaeEncodeConfig>,
    vae: Arc<MugVae>,
    device: Device,
    dtype: DType,
}

/// What encoding one clip produced.
struct Encoded {
    latent: Tensor,
    frames: usize,
    width: usize,
    height: usize,
    fps: f64,
}

impl VaeEncode {
    fn encode(&self, path: &Path, id: &str, start: usize, end: Option<usize>) -> Result<Encoded, StageError> {
        let c = &self.config;
        let mut reader = VideoReader::open(path, 0)?;
        let end = match end {
            Some(e) => e,
            None => VideoReader::open(path, 0)?.count_frames()?,
        };
        let (w, h) = reader.size();
        let buckets: Vec<(u32, u32)> = c.buckets.iter().map(|r| (r.width, r.height)).collect();
        let fill = nearest_bucket(w, h, &buckets).or(c.size.as_ref().map(|r| (r.width, r.height)));
        let mut indices = uniform_indices(start, end, reader.fps, c.fps);
        if let Some(n) = c.frames {
            if indices.len() < n {
                return Err(StageError::msg(format!(
                    "the clip has {} frames at the chosen fps, `frames` asks for {n}",
                    indices.len()
                )));
            }
            indices.truncate(n);
        }
        let mut frames = Vec::with_capacity(indices.len());
        reader.frames_at(&indices, FrameFormat { layout: Layout::Rgb, fill }, |_, image| {
            frames.push(image);
            true
        })?;
        if frames.is_empty() {
            return Err(StageError::msg(format!("frames {start}..{end} are past the video's end")));
        }
        let (t, height, width) = (frames.len(), frames[0].height, frames[0].width);
        let values = frames_to_values(&frames, c.pixel_range);
        drop(frames);
        let run = || -> candle_core::Result<Tensor> {
            let x = Tensor::from_vec(values, (1, 3, t, height, width), &self.device)?.to_dtype(self.dtype)?;
            let noise = if c.sample {
                let (lt, lh, lw) = self.vae.config().latent_size(t, height, width);
                let shape = [1, self.vae.config().temporal.latent_channels, lt, lh, lw];
                let eps = models::random::standard_normal(&shape, item_seed(c.seed, id))?;
                Some(eps.to_device(&self.device)?.to_dtype(self.dtype)?)
            } else {
                None
            };
            self.vae.encode(&x, noise.as_ref())?.squeeze(0)
        };
        let latent = run().map_err(|e| StageError::from(e).context("VAE encoding failed"))?;
        Ok(Encoded { latent, frames: t, width, height, fps: c.fps.unwrap_or(reader.fps) })
    }
}

#[async_trait]
impl Stage for VaeEncode {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let (start, end) = clip_range(&item);
        let local = fetch_local(item.uri()?, &ctx.scratch)
            .await
            .map_err(|e| StageError::from(e).context("cannot fetch the source video"))?;
        let (path, id, me) = (local.path().to_path_buf(), item.id.clone(), self.clone());
        let done = ctx.cpu(move || me.encode(&path, &id, start, end)).await??;
        let dims = done.latent.dims().to_vec();
        item.tensors.insert("latent".into(), to_payload(&done.latent)?);
        item.set("latent_frames", dims[1] as i64);
        item.set("latent_height", dims[2] as i64);
        item.set("latent_width", dims[3] as i64);
        item.set("vae_frames", done.frames as i64);
        item.set("vae_width", done.width as i64);
        item.set("vae_height", done.height as i64);
        item.set("vae_fps", done.fps);
        Ok(vec![item])
    }
}

impl StageConfig for VaeEncodeConfig {
    const KIND: &'static str = "vae_encode";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"vae_encode\"\ncheckpoint = \"models/MUG-V-inference/vae.pt\"\nbuckets = [\"720x1280\", \"1280x720\", \"960x960\"]\nfps = 24\nframes = 105\ndevice = \"cuda:0\"\ndtype = \"bf16\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new("uri", FieldType::Str, "path or URL of the source video")]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("latent", FieldType::Tensor, "VAE latent [24, T', H/8, W/8], f32, normalised"),
            Field::new("latent_frames", FieldType::Int, "latent frames T'"),
            Field::new("latent_height", FieldType::Int, "latent height (pixels / 8)"),
            Field::new("latent_width", FieldType::Int, "latent width (pixels / 8)"),
            Field::new("vae_frames", FieldType::Int, "video frames encoded"),
            Field::new("vae_width", FieldType::Int, "width of the encoded frames, pixels"),
            Field::new("vae_height", FieldType::Int, "height of the encoded frames, pixels"),
            Field::new("vae_fps", FieldType::Float, "frame rate of the encoded frames"),
        ]
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(f) = self.fps.filter(|f| *f <= 0.0) {
            problems.push(format!("fps must be positive, found {f}"));
        }
        if self.frames == Some(0) {
            problems.push("frames must be at least 1".into());
        }
        problems
    }

    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.checkpoint.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, String> {
        crate::ffmpeg_init();
        let placement = Placement { device: self.device.clone(), dtype: self.dtype };
        let checkpoint = placement.open("vae_encode `checkpoint`", &self.checkpoint)?;
        let vae = MugVae::load(&checkpoint, &self.preset.vae()).map_err(|e| e.to_string())?;
        Ok(Runnable::Transform(Arc::new(VaeEncode {
            config: Arc::new(self.clone()),
            vae: Arc::new(vae),
            device: placement.device()?,
            dtype: placement.dtype(),
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_are_laid_out_channel_major_and_scaled() {
        let frame = |v: u8| Image { width: 2, height: 1, data: vec![0, v, 255, 255, v, 0] };
        let values = frames_to_values(&[frame(51), frame(102)], PixelRange::Unit);
        // Channel 0 of frame 0, then of frame 1, then channel 1 ...
        assert_eq!(values[..4], [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(values[4..8], [0.2, 0.2, 0.4, 0.4]);
        let signed = frames_to_values(&[frame(0)], PixelRange::Signed);
        assert_eq!(signed[..2], [-1.0, 1.0]);
    }

    #[test]
    fn item_seeds_differ_by_id_and_repeat() {
        assert_eq!(item_seed(42, "a#0-10"), item_seed(42, "a#0-10"));
        assert_ne!(item_seed(42, "a#0-10"), item_seed(42, "a#10-20"));
    }
}

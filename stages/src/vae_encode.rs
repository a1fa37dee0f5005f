//! `vae_encode`: each clip through the MUG-V VideoVAE into a latent `[24, T/8, H/8, W/8]`, at the
//! manifest's size (or aspect bucket), frame rate and frame count.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use models::mugvae::MugVae;
use pipeline::io::fetch_local;
use pipeline::manifest::{Duration, Resolution};
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::checkpoints::{default_device, to_payload, ModelPreset, ModelThread, Placement, Precision};
use crate::row::clip_range;
use crate::video::decode::{nearest_bucket, uniform_indices, FrameFormat, VideoReader};
use crate::video::pixel::Layout;

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
    pub preset: ModelPreset,
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
    /// Clips of the same frame count and size encoded together in one VAE call (GPUs like
    /// batches); batches fill from the clips in flight, so set `parallelism` at least this high.
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1))]
    pub batch: usize,
    /// How long a clip waits for others of its shape before a partial batch runs.
    #[serde(default = "default_batch_wait")]
    pub batch_wait: Duration,
}

fn default_seed() -> u64 {
    42
}
fn default_batch() -> usize {
    1
}
fn default_batch_wait() -> Duration {
    Duration(std::time::Duration::from_secs(2))
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

impl PixelRange {
    /// The VAE's input value of each 8-bit level, computed on the CPU in f32 once: the device
    /// looks pixels up in this table, so every device sees the same values bit for bit.
    fn table(self) -> [f32; 256] {
        std::array::from_fn(|u| {
            let v = u as f32 / 255.0;
            match self {
                PixelRange::Signed => (v - 0.5) / 0.5,
                PixelRange::Unit => v,
            }
        })
    }
}

/// Clips of 8-bit frames `(B, T, H, W, 3)` as the VAE's input `(B, 3, T, H, W)` in `dtype`. The
/// bytes travel to the device as they are (a quarter of f32's size) and become values there.
fn pixels_to_input(
    pixels: Vec<u8>,
    (b, t, h, w): (usize, usize, usize, usize),
    range: PixelRange,
    device: &Device,
    dtype: DType,
) -> candle_core::Result<Tensor> {
    let table = Tensor::new(&range.table(), device)?;
    // As u32 indices: candle's index_select reads an index equal to its type's maximum as
    // "padding" and gives 0, which for u8 would be every 255.
    let levels = Tensor::from_vec(pixels, b * t * h * w * 3, device)?.to_dtype(DType::U32)?;
    table.index_select(&levels, 0)?.reshape((b, t, h, w, 3))?.permute((0, 4, 1, 2, 3))?.to_dtype(dtype)?.contiguous()
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
    /// Clips waiting for a batch.
    waiting: Arc<Mutex<Queues>>,
    /// Where the VAE calls run: on a GPU one thread, one call at a time, while the other workers
    /// decode the next clips on the CPU pool.
    thread: ModelThread,
}

/// Clips waiting for a batch, by (frames, height, width).
type Queues = HashMap<(usize, usize, usize), Vec<Waiting>>;

/// A decoded clip ready for the VAE.
struct Prepared {
    /// `(T, H, W, 3)` pixels.
    pixels: Vec<u8>,
    /// Posterior noise `(24, T', H/8, W/8)` when sampling.
    noise: Option<Vec<f32>>,
    frames: usize,
    width: usize,
    height: usize,
    fps: f64,
}

/// A clip in a batch queue and where its latent goes.
struct Waiting {
    clip: Prepared,
    /// The latent and the size of the batch it was encoded in.
    reply: tokio::sync::oneshot::Sender<Result<(Tensor, usize), String>>,
}

impl VaeEncode {
    /// Decode and scale the clip's frames (and draw its posterior noise when sampling).
    fn prepare(&self, path: &Path, id: &str, start: usize, end: Option<usize>) -> Result<Prepared, StageError> {
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
        let pixels = frames.into_iter().flat_map(|f| f.data).collect();
        let noise = if c.sample {
            let (lt, lh, lw) = self.vae.config().latent_size(t, height, width);
            let shape = [self.vae.config().temporal.latent_channels, lt, lh, lw];
            Some(models::random::standard_normal(&shape, item_seed(c.seed, id))?.flatten_all()?.to_vec1()?)
        } else {
            None
        };
        Ok(Prepared { pixels, noise, frames: t, width, height, fps: c.fps.unwrap_or(reader.fps) })
    }

    /// Encode same-shape clips in one VAE call: one latent `(24, T', H/8, W/8)` per clip, in order.
    /// The clips' pixels move into the input (one clip's without a copy: 290 MB at 720p).
    fn encode(&self, clips: Vec<Prepared>) -> candle_core::Result<Vec<Tensor>> {
        let (b, c0) = (clips.len(), &clips[0]);
        let (t, h, w) = (c0.frames, c0.height, c0.width);
        let (pixels, noise): (Vec<Vec<u8>>, Vec<Option<Vec<f32>>>) =
            clips.into_iter().map(|c| (c.pixels, c.noise)).unzip();
        let pixels = if b == 1 { pixels.into_iter().next().unwrap_or_default() } else { pixels.concat() };
        let x = pixels_to_input(pixels, (b, t, h, w), self.config.pixel_range, &self.device, self.dtype)?;
        let noise = match noise.into_iter().collect::<Option<Vec<_>>>() {
            Some(n) => {
                let (lt, lh, lw) = self.vae.config().latent_size(t, h, w);
                let shape = (b, self.vae.config().temporal.latent_channels, lt, lh, lw);
                Some(Tensor::from_vec(n.concat(), shape, &self.device)?.to_dtype(self.dtype)?)
            }
            None => None,
        };
        let z = self.vae.encode(&x, noise.as_ref())?;
        (0..b).map(|i| z.get(i)).collect()
    }

    /// Run a batch on the model thread and hand each clip its latent (or the batch's error).
    async fn run_batch(&self, batch: Vec<Waiting>, ctx: &StageContext) {
        let me = self.clone();
        let (clips, replies): (Vec<Prepared>, Vec<_>) = batch.into_iter().map(|w| (w.clip, w.reply)).unzip();
        let result = self.thread.run(ctx, move || me.encode(clips).map_err(|e| e.to_string())).await;
        match result {
            Ok(Ok(latents)) => {
                let n = latents.len();
                for (reply, latent) in replies.into_iter().zip(latents) {
                    // A receiver is gone only when its item timed out.
                    let _ = reply.send(Ok((latent, n)));
                }
            }
            Ok(Err(e)) => {
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                for reply in replies {
                    let _ = reply.send(Err(e.to_string()));
                }
            }
        }
    }

    /// The clip's latent, encoded with the same-shape clips that arrive within `batch_wait`, and
    /// how many clips that batch held.
    async fn latent(&self, clip: Prepared, ctx: &StageContext) -> Result<(Tensor, usize), StageError> {
        let key = (clip.frames, clip.height, clip.width);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (full, first) = {
            let mut waiting = self.waiting.lock().map_err(|_| StageError::msg("batch queue poisoned"))?;
            let queue = waiting.entry(key).or_default();
            queue.push(Waiting { clip, reply: tx });
            let first = queue.len() == 1;
            (if queue.len() >= self.config.batch { Some(std::mem::take(queue)) } else { None }, first)
        };
        if let Some(batch) = full {
            self.run_batch(batch, ctx).await;
        } else if first {
            // The first clip of a batch flushes whatever has gathered when its wait is over.
            let (me, ctx) = (self.clone(), ctx.clone());
            tokio::spawn(async move {
                tokio::time::sleep(me.config.batch_wait.0).await;
                let batch = me.waiting.lock().map(|mut w| w.remove(&key).unwrap_or_default()).unwrap_or_default();
                if !batch.is_empty() {
                    me.run_batch(batch, &ctx).await;
                }
            });
        }
        let latent = rx.await.map_err(|_| StageError::msg("the batch was dropped"))?;
        latent.map_err(|e| StageError::msg(e).context("VAE encoding failed"))
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
        let clip = ctx.cpu(move || me.prepare(&path, &id, start, end)).await??;
        let (frames, width, height, fps) = (clip.frames, clip.width, clip.height, clip.fps);
        let (latent, batch) = self.latent(clip, ctx).await?;
        let dims = latent.dims().to_vec();
        item.tensors.insert("latent".into(), to_payload(&latent)?);
        item.set("latent_frames", dims[1] as i64);
        item.set("latent_height", dims[2] as i64);
        item.set("latent_width", dims[3] as i64);
        item.set("vae_frames", frames as i64);
        item.set("vae_width", width as i64);
        item.set("vae_height", height as i64);
        item.set("vae_fps", fps);
        item.set("vae_batch", batch as i64);
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
            Field::new("vae_batch", FieldType::Int, "clips encoded together in the VAE call"),
        ]
    }

    fn default_parallelism(&self) -> usize {
        // Enough clips in flight to fill a batch.
        self.batch.max(1)
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(f) = self.fps.filter(|f| *f <= 0.0) {
            problems.push(format!("fps must be positive, found {f}"));
        }
        if self.frames == Some(0) {
            problems.push("frames must be at least 1".into());
        }
        if self.batch == 0 {
            problems.push("batch must be at least 1".into());
        }
        problems
    }

    fn reusable(&self) -> bool {
        true
    }
    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.checkpoint.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        let placement = Placement::new(&self.device, self.dtype)?;
        let vae = placement
            .load(Self::KIND, "checkpoint", &self.checkpoint, |c| MugVae::load(c, &self.preset.sizes().vae()))?;
        Ok(Runnable::Transform(Arc::new(VaeEncode {
            config: Arc::new(self.clone()),
            vae: Arc::new(vae),
            device: placement.device,
            dtype: placement.dtype,
            waiting: Arc::default(),
            thread: placement.thread,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixels_become_channel_major_scaled_values() -> candle_core::Result<()> {
        // Two frames of 2x1 pixels: (0, 51, 255) (255, 51, 0), then the same with 102 (255 checks
        // that no level is read as index_select's padding).
        let frame = |v: u8| [0, v, 255, 255, v, 0];
        let pixels = [frame(51), frame(102)].concat();
        let x = pixels_to_input(pixels.clone(), (1, 2, 1, 2), PixelRange::Unit, &Device::Cpu, DType::F32)?;
        assert_eq!(x.dims(), [1, 3, 2, 1, 2]);
        let values = x.flatten_all()?.to_vec1::<f32>()?;
        // Channel 0 of frame 0, then of frame 1, then channel 1 ...
        assert_eq!(values[..4], [0.0, 1.0, 0.0, 1.0]);
        assert_eq!(values[4..8], [0.2, 0.2, 0.4, 0.4]);
        let signed = pixels_to_input(pixels, (1, 2, 1, 2), PixelRange::Signed, &Device::Cpu, DType::F32)?;
        let signed = signed.flatten_all()?.to_vec1::<f32>()?;
        assert_eq!(signed[..2], [-1.0, 1.0]);
        Ok(())
    }

    #[test]
    fn item_seeds_differ_by_id_and_repeat() {
        assert_eq!(item_seed(42, "a#0-10"), item_seed(42, "a#0-10"));
        assert_ne!(item_seed(42, "a#0-10"), item_seed(42, "a#10-20"));
    }
}

//! `vae_decode`: generated latents back to frames with the MUG-V VideoVAE, one temporal chunk at
//! a time, with the reference image as frame 0 as MUG-V's pipeline does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use candle_core::{DType, Device, Tensor};
use models::i2v::decode_video;
use models::mugvae::MugVae;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoints::{default_device, stop_if_cancelled, ModelPreset, ModelThread, Placement, Precision};

/// Decode each row's `latent` except latent frame 0 (the reference image's) into `num_frames - 1`
/// frames, chunk by chunk, and put the reference image in front: the `video` tensor
/// `[T, H, W, 3]` (u8, values as MUG-V saves them). Where the VAE's 8-pixel grid cuts the frame
/// (MUG-V's 4:3 and 3:4 sizes, 1108 and 1110 pixels), the reference image is cropped to the
/// decoded size; the reference pipeline fails on those two ratios instead.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VaeDecodeConfig {
    /// MUG-V VideoVAE checkpoint (`vae.pt`).
    pub checkpoint: PathBuf,
    /// Model sizes: "real" or "tiny".
    #[serde(default)]
    pub preset: ModelPreset,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision: "f32", "bf16" (GPUs) or "f16".
    #[serde(default)]
    pub dtype: Precision,
}

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct VaeDecode {
    vae: Arc<MugVae>,
    device: Device,
    dtype: DType,
    thread: ModelThread,
}

#[async_trait]
impl Stage for VaeDecode {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let started = Instant::now();
        let latent =
            item.tensors.remove("latent").ok_or_else(|| StageError::msg("no `latent`: put i2v_generate first"))?;
        let reference =
            item.tensors.remove("ref_image").ok_or_else(|| StageError::msg("no `ref_image`: put load_image first"))?;
        let frames = item.get("num_frames").and_then(pipeline::Value::as_i64).unwrap_or(0).max(2) as usize;
        let (shape, floats): (Vec<usize>, Vec<f32>) = (
            latent.shape.clone(),
            latent.data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        );
        let me = self.clone();
        let width = reference.shape[1];
        let video = self
            .thread
            .run(ctx, move || -> Result<_, StageError> {
                let z = Tensor::from_vec(floats, shape, &Device::Cpu)?;
                decode_video(&me.vae, &z, &reference.data, width, frames, &me.device, me.dtype, &mut stop_if_cancelled)
                    .map_err(|e| StageError::from(e).context("VAE decoding failed"))
            })
            .await??;
        let (h, w) = (video.height, video.width);
        let t = video.bytes.len() / (3 * h * w);
        let tensor = pipeline::Tensor::new(pipeline::DType::U8, vec![t, h, w, 3], video.bytes.into())
            .ok_or_else(|| StageError::msg("video size mismatch"))?;
        item.tensors.insert("video".into(), tensor);
        item.set("decode_s", started.elapsed().as_secs_f64());
        Ok(vec![item])
    }
}

impl StageConfig for VaeDecodeConfig {
    const KIND: &'static str = "vae_decode";
    const EXAMPLE: &'static str =
        "[[stage]]\nkind = \"vae_decode\"\ncheckpoint = \"models/MUG-V-inference/vae.pt\"\ndevice = \"cuda\"\ndtype = \"bf16\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![
            Field::new("latent", FieldType::Tensor, "latents from i2v_generate"),
            Field::new("ref_image", FieldType::Tensor, "reference image from load_image"),
            Field::new("num_frames", FieldType::Int, "video frames from load_image"),
        ]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("video", FieldType::Tensor, "decoded video [T, H, W, 3], u8, frame 0 = the reference image"),
            Field::new("decode_s", FieldType::Float, "seconds spent decoding the row"),
        ]
    }

    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.checkpoint.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        let placement = Placement::new(&self.device, self.dtype)?;
        let vae = placement
            .load(Self::KIND, "checkpoint", &self.checkpoint, |c| MugVae::load(c, &self.preset.sizes().vae()))?;
        Ok(Runnable::Transform(Arc::new(VaeDecode {
            vae: Arc::new(vae),
            device: placement.device,
            dtype: placement.dtype,
            thread: placement.thread,
        })))
    }
}

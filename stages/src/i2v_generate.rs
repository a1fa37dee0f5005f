//! `i2v_generate`: MUG-V image-to-video sampling for each catalog row: the prompt (with the
//! aesthetic suffix) and the fixed negative prompt through T5, the reference image through the
//! VAE into latent frame 0, then the rectified-flow sampler with the MUG-DiT.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use candle_core::Tensor;
use models::i2v::{I2vModels, I2vPlacement, I2vSettings};
use models::mugdit::MugDit;
use models::mugvae::MugVae;
use models::rflow::ShiftPrecision;
use models::t5::{T5Encoder, T5Tokenizer};
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoints::{
    default_device, load_error, stop_if_cancelled, to_payload, ModelPreset, ModelThread, Placement, Precision,
};

/// Generate each row's video latents as MUG-V's `infer_pipeline.py` does: prompt + `" aesthetic
/// score: X.X."`, classifier-free guidance against MUG-V's negative prompt, the reference image
/// (repeated over 8 frames) encoded into latent frame 0 and kept clean, `steps` Euler steps of
/// the shifted rectified-flow schedule. The `latent` tensor `[24, T', H/8, W/8]` goes to
/// `vae_decode`. Noise is seeded by the row's `seed` (or `seed` here), so a re-run repeats it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct I2vGenerateConfig {
    /// MUG-DiT checkpoint (`dit.pt` of MUG-V-inference, or a safetensors copy).
    pub dit: PathBuf,
    /// MUG-V VideoVAE checkpoint (`vae.pt`), for the reference image.
    pub vae: PathBuf,
    /// T5-v1.1-XXL encoder checkpoint.
    pub t5: PathBuf,
    /// The T5 tokenizer (`tokenizer.json`).
    pub tokenizer: PathBuf,
    /// Model sizes: "real" (MUG-DiT-10B, ...) or "tiny" (`mugflow models init-tiny`).
    #[serde(default)]
    pub preset: ModelPreset,
    /// Sampling steps.
    #[serde(default = "default_steps")]
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Classifier-free guidance scale.
    #[serde(default = "default_cfg")]
    pub cfg_scale: f64,
    /// Aesthetic score appended to every prompt; unset appends nothing.
    #[serde(default = "default_aes")]
    pub aes_score: Option<f64>,
    /// Frame rate the DiT is conditioned on (MUG-V: 30; the MP4's rate is `encode_mp4`'s).
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// Seed of rows whose `seed` is empty.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Timestep shift arithmetic: "pipeline-bf16" (as the shipped MUG-V pipeline, to reproduce
    /// its outputs) or "f32".
    #[serde(default)]
    pub shift: Shift,
    /// Device of the DiT and the VAE: "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision of the DiT and the VAE: "f32", "bf16" (GPUs) or "f16".
    #[serde(default)]
    pub dtype: Precision,
    /// Device of T5 (f32, as the reference runs it): the CPU keeps its ~19 GB off the GPU.
    #[serde(default = "default_device")]
    pub t5_device: String,
}

fn default_steps() -> usize {
    25
}
fn default_cfg() -> f64 {
    4.0
}
fn default_aes() -> Option<f64> {
    Some(6.0)
}
fn default_fps() -> f64 {
    30.0
}
fn default_seed() -> u64 {
    42
}

/// Timestep shift arithmetic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Shift {
    /// bf16-rounded like the shipped pipeline.
    #[default]
    PipelineBf16,
    /// f32 throughout.
    F32,
}

/// One worker's generator: the models, the settings and where they run. Cheap to clone into a
/// worker thread.
#[derive(Clone)]
struct Generator {
    models: Arc<I2vModels>,
    settings: I2vSettings,
    placement: I2vPlacement,
    /// Where the sampling runs (the DiT's placement's thread).
    thread: ModelThread,
    default_seed: u64,
    steps: usize,
    cfg_scale: f64,
}

impl Generator {
    /// A generator over loaded models placed as `placement` says.
    fn new(config: &I2vGenerateConfig, models: I2vModels, placement: I2vPlacement, thread: ModelThread) -> Generator {
        let shift = match config.shift {
            Shift::PipelineBf16 => ShiftPrecision::PipelineBf16,
            Shift::F32 => ShiftPrecision::F32,
        };
        Generator {
            models: Arc::new(models),
            settings: I2vSettings {
                steps: config.steps,
                cfg_scale: config.cfg_scale as f32,
                aes_score: config.aes_score,
                fps: config.fps as f32,
                shift,
            },
            placement,
            thread,
            default_seed: config.seed,
            steps: config.steps,
            cfg_scale: config.cfg_scale,
        }
    }

    /// Latents `[24, T', H/8, W/8]` of one video (see [`models::i2v::generate`]); stops after the
    /// step in which the item's cancellation token is tripped.
    fn generate(
        &self,
        prompt: &str,
        image: &[u8],
        size: (usize, usize, usize),
        seed: u64,
    ) -> Result<Tensor, StageError> {
        models::i2v::generate(
            &self.models,
            &self.settings,
            &self.placement,
            prompt,
            image,
            size,
            seed,
            &mut stop_if_cancelled,
        )
        .map_err(|e| StageError::from(e).context("sampling failed"))
    }
}

#[async_trait]
impl Stage for Generator {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let started = Instant::now();
        let prompt = crate::row::prompt(&item)?;
        let image =
            item.tensors.get("ref_image").ok_or_else(|| StageError::msg("no `ref_image`: put load_image first"))?;
        let (height, width) = (image.shape[0], image.shape[1]);
        let frames = item.get("num_frames").and_then(pipeline::Value::as_i64).unwrap_or(0).max(2) as usize;
        let seed = crate::row::seed(&item, self.default_seed)?;
        let (me, pixels) = (self.clone(), image.data.clone());
        let latent =
            self.thread.run(ctx, move || me.generate(&prompt, &pixels, (frames, height, width), seed)).await??;
        item.tensors.insert("latent".into(), to_payload(&latent)?);
        item.set("seed", seed as i64);
        item.set("steps", self.steps as i64);
        item.set("cfg_scale", self.cfg_scale);
        item.set("generate_s", started.elapsed().as_secs_f64());
        Ok(vec![item])
    }
}

impl StageConfig for I2vGenerateConfig {
    const KIND: &'static str = "i2v_generate";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"i2v_generate\"\ndit = \"models/MUG-V-inference/dit.pt\"\nvae = \"models/MUG-V-inference/vae.pt\"\nt5 = \"models/t5-v1_1-xxl\"\ntokenizer = \"models/t5-v1_1-xxl/tokenizer.json\"\nsteps = 25\ncfg_scale = 4.0\ndevice = \"cuda\"\ndtype = \"bf16\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![
            Field::new("prompt", FieldType::Str, "what the video should show"),
            Field::new("ref_image", FieldType::Tensor, "reference image from load_image"),
            Field::new("num_frames", FieldType::Int, "video frames from load_image"),
        ]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("latent", FieldType::Tensor, "generated latents [24, T', H/8, W/8], f32"),
            Field::new("seed", FieldType::Int, "seed the row's noise came from"),
            Field::new("steps", FieldType::Int, "sampling steps"),
            Field::new("cfg_scale", FieldType::Float, "guidance scale"),
            Field::new("generate_s", FieldType::Float, "seconds spent generating the row"),
        ]
    }

    fn check(&self) -> Vec<String> {
        if self.steps == 0 {
            vec!["steps must be at least 1".into()]
        } else {
            Vec::new()
        }
    }

    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.dit.clone(), self.vae.clone(), self.t5.clone(), self.tokenizer.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        let placement = Placement::new(&self.device, self.dtype)?;
        let t5_placement = Placement::new(&self.t5_device, Precision::F32)?;
        let t5_config = self.preset.sizes().t5();
        let models = I2vModels::new(
            placement.load(Self::KIND, "dit", &self.dit, |c| MugDit::load(c, &self.preset.sizes().dit()))?,
            placement.load(Self::KIND, "vae", &self.vae, |c| MugVae::load(c, &self.preset.sizes().vae()))?,
            t5_placement.load(Self::KIND, "t5", &self.t5, |c| T5Encoder::load(c, &t5_config))?,
            T5Tokenizer::from_file(&self.tokenizer, t5_config.max_length)
                .map_err(load_error(Self::KIND, "tokenizer"))?,
        );
        let on = I2vPlacement { device: placement.device, dtype: placement.dtype, t5_device: t5_placement.device };
        Ok(Runnable::Transform(Arc::new(Generator::new(self, models, on, placement.thread))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use models::tiny;

    /// A timed-out generation stops at its next sampling step: a million tiny steps would take
    /// hours, and the item's work ends within a minute of its token being tripped.
    #[test]
    fn a_cancelled_generation_stops_within_a_step() {
        let dir = tempfile::tempdir().unwrap();
        use models::presets::{init_random, Part, Preset};
        init_random(dir.path(), Preset::Tiny, &Part::ALL, models::checkpoint_files::Fill::Random { seed: 0 }, |_| {})
            .unwrap();
        let config: I2vGenerateConfig = serde_json::from_value(serde_json::json!({
            "preset": "tiny",
            "dit": dir.path().join(tiny::DIT),
            "vae": dir.path().join(tiny::VAE),
            "t5": dir.path().join(tiny::T5),
            "tokenizer": dir.path().join(tiny::T5_TOKENIZER),
            "steps": 1_000_000,
        }))
        .unwrap();
        let Runnable::Transform(stage) = config.build(&pipeline::BuildContext { job_name: "t".into() }).unwrap() else {
            unreachable!("i2v_generate is a transform")
        };
        let mut item = Item::new("row");
        item.set("prompt", "A cup of coffee");
        item.set("num_frames", 9i64);
        let image = pipeline::Tensor::new(pipeline::DType::U8, vec![32, 48, 3], vec![128u8; 32 * 48 * 3].into());
        item.tensors.insert("ref_image".into(), image.unwrap());
        crate::checkpoints::testing::stops_when_cancelled(stage, item);
    }
}

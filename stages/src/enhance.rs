//! `enhance`: MUG-V's video enhancer on each decoded video: the Wan2.1 VAE's latent of the
//! frames, partly noised, one guided flow-matching step of the LoRA-merged Wan DiT between the
//! prompt and a fixed negative prompt (both through UMT5), and the Wan VAE back to frames. It
//! sits between `vae_decode` and `encode_mp4` and hands on the same `video` tensor. The models'
//! composition is `models::enhancer`; this stage reads the row, prepares the frames (size, blur)
//! and records the settings.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use candle_core::{Device, Tensor};
use models::enhancer::{EnhancerModels, PromptEncoder, WanEnhancer};
use models::lora::{Lora, LoraConfig};
use models::t5::T5Tokenizer;
use models::umt5::Umt5Encoder;
use models::wan_dit::WanDit;
use models::wan_flow::{Enhancer, FlowMatchSchedule, NEGATIVE_PROMPT};
use models::wan_vae::WanVae;
use pipeline::manifest::Resolution;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::checkpoints::{
    default_device, load_error, stop_if_cancelled, ModelPreset, ModelThread, Placement, Precision,
};
use crate::video::decode::ImageRef;
use crate::video::pillow::{resize_plane, resize_to_fill_with, Filter};

/// Enhance each row's `video` `[T, H, W, 3]` (u8) as MUG-V's `mug_enhancer` does (`run.sh`,
/// `predict.py`): the frames to [-1, 1], optionally blurred, encoded by the Wan2.1 VAE; the latent
/// mixed with seeded noise at `noise_level` (latent frame 0 kept clean); `steps` Euler steps of
/// the LoRA-merged Wan DiT guided by `cfg_scale` between the row's `prompt` and
/// `negative_prompt` (UMT5-XXL features); decoded back to 8-bit frames (truncated, as the
/// reference writes them). The enhanced `video` replaces the input; the row records the
/// settings. Videos are cut to `1 + 4k` frames (the Wan VAE's unit) and must be multiples of 16
/// pixels (or set `size`). One video at a time: at 1280x720x105 the DiT attends over 97,200
/// tokens, which keep a GPU busy alone.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EnhanceConfig {
    /// Run the enhancer. When false, rows pass through untouched and no model is loaded. Also
    /// "true"/"false" as text, which `${MUGFLOW_ENHANCE:-false}` in a manifest gives.
    #[serde(default)]
    pub enabled: Switch,
    /// The enhancer's Wan DiT (`MUG-V-inference/enhancer/dit_i2v.safetensors`).
    pub dit: PathBuf,
    /// Its LoRA adapter (`MUG-V-inference/enhancer/pytorch_model.bin`), merged at load.
    pub lora: PathBuf,
    /// The Wan2.1 VAE (`Wan2.1_VAE.pth` of Wan-AI/Wan2.1-T2V-1.3B).
    pub vae: PathBuf,
    /// The UMT5-XXL encoder (`models_t5_umt5-xxl-enc-bf16.pth` of Wan-AI/Wan2.1-T2V-1.3B).
    pub umt5: PathBuf,
    /// The UMT5 tokenizer (`google/umt5-xxl/tokenizer.json`, also in Wan-AI/Wan2.1-T2V-1.3B).
    pub tokenizer: PathBuf,
    /// Model sizes: "real" (Wan2.1-T2V-1.3B, UMT5-XXL) or "tiny" (`mugflow models init-tiny`).
    #[serde(default)]
    pub preset: ModelPreset,
    /// Denoising steps (MUG-V: 1).
    #[serde(default = "default_steps")]
    #[schemars(range(min = 1))]
    pub steps: usize,
    /// Classifier-free guidance scale (MUG-V: 2).
    #[serde(default = "default_cfg")]
    pub cfg_scale: f64,
    /// Noise level of the first step, the scheduler's `sigma_max` (MUG-V: 0.3): 0 keeps the
    /// video, 1 replaces it with noise.
    #[serde(default = "default_noise_level")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub noise_level: f64,
    /// Timestep shift of the flow-matching schedule (MUG-V: 1, none).
    #[serde(default = "default_shift")]
    pub shift: f64,
    /// The negative prompt of the guidance (default: MUG-V's, in Chinese).
    #[serde(default = "default_negative")]
    pub negative_prompt: String,
    /// Blur the frames before encoding (bicubic to half size and back), as `--blur_video` does.
    #[serde(default)]
    pub blur: bool,
    /// Resize every video to fill this size (bilinear, centre crop), as the reference's loader
    /// does (`run.sh`: "720x1280", a portrait frame); unset keeps the video's size.
    pub size: Option<Resolution>,
    /// Frames to enhance, from the first (`1 + 4k`; MUG-V: 105); shorter videos are errors, as in
    /// the reference. Unset: the longest `1 + 4k` prefix of each video.
    pub frames: Option<usize>,
    /// Seed of the noise of rows without a `seed` (rows from `i2v_generate` have one).
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// LoRA rank (MUG-V: 256); unset: the preset's.
    pub lora_rank: Option<usize>,
    /// LoRA alpha; the update is scaled by alpha / rank (MUG-V: 4, not stored in the file).
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    /// Device of the DiT and the VAE: "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision of the DiT and the VAE: "f32", "bf16" (GPUs; the reference's) or "f16".
    #[serde(default)]
    pub dtype: Precision,
    /// Device of UMT5 (its 5.7B parameters are 23 GB in f32 on the CPU, 11 GB in bf16 on a GPU).
    #[serde(default = "default_device")]
    pub umt5_device: String,
    /// Precision of UMT5.
    #[serde(default)]
    pub umt5_dtype: Precision,
}

fn default_steps() -> usize {
    1
}
fn default_cfg() -> f64 {
    2.0
}
fn default_noise_level() -> f64 {
    0.3
}
fn default_shift() -> f64 {
    1.0
}
fn default_negative() -> String {
    NEGATIVE_PROMPT.to_string()
}
fn default_seed() -> u64 {
    42
}
fn default_lora_alpha() -> f64 {
    4.0
}

/// A boolean that also reads the text "true" or "false" (what `${VAR:-false}` gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Switch {
    /// `true` or `false`.
    Bool(bool),
    /// "true" or "false".
    Text(SwitchText),
}

/// "true" or "false" as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SwitchText {
    /// On.
    True,
    /// Off.
    False,
}

impl JsonSchema for Switch {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Switch".into()
    }

    // By hand: one enum of both spellings, which the manifest checker and `mugflow stages` read.
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": ["boolean", "string"], "enum": [true, false, "true", "false"] })
    }
}

impl Default for Switch {
    fn default() -> Self {
        Switch::Bool(true)
    }
}

impl Switch {
    /// Whether it is on.
    pub fn on(self) -> bool {
        matches!(self, Switch::Bool(true) | Switch::Text(SwitchText::True))
    }
}

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct Enhance {
    models: Arc<EnhancerModels>,
    config: Arc<EnhanceConfig>,
    /// Where the enhancement runs (the Wan models' placement's thread).
    thread: ModelThread,
}

/// Frames `[T, H, W, 3]` (u8) of one video.
struct Frames<D> {
    data: D,
    count: usize,
    height: usize,
    width: usize,
}

impl Enhance {
    /// The first `n` frames, resized to `size` when set, as `[1, 3, n, H, W]` in [-1, 1], blurred
    /// when asked.
    fn input(&self, video: &Frames<impl AsRef<[u8]>>, n: usize) -> Result<(Tensor, usize, usize), StageError> {
        let (h, w) = (video.height, video.width);
        let frame_bytes = h * w * 3;
        let (height, width) = match &self.config.size {
            Some(r) => (r.height as usize, r.width as usize),
            None => (h, w),
        };
        if height % 16 != 0 || width % 16 != 0 {
            return Err(StageError::msg(format!(
                "{width}x{height} frames: the enhancer takes multiples of 16 pixels; set `size`"
            )));
        }
        let mut values = vec![0f32; 3 * n * height * width];
        let plane = height * width;
        for (t, frame) in video.data.as_ref().chunks_exact(frame_bytes).take(n).enumerate() {
            let resized;
            let pixels = if (height, width) == (h, w) {
                frame
            } else {
                let img = ImageRef { width: w, height: h, stride: 3 * w, data: frame };
                resized = resize_to_fill_with(img, width, height, Filter::Bilinear);
                &resized.data[..]
            };
            for (i, px) in pixels.chunks_exact(3).enumerate() {
                for c in 0..3 {
                    // ToTensor then Normalize(0.5, 0.5), in f32.
                    values[(c * n + t) * plane + i] = (f32::from(px[c]) / 255.0 - 0.5) / 0.5;
                }
            }
        }
        if self.config.blur {
            // torchvision's Resize to (int(H/2), int(W/2)) and back, bicubic, antialiased.
            let half = (width / 2, height / 2);
            for p in values.chunks_exact_mut(plane) {
                let low = resize_plane(p, (width, height), half, Filter::Bicubic);
                p.copy_from_slice(&resize_plane(&low, half, (width, height), Filter::Bicubic));
            }
        }
        Ok((Tensor::from_vec(values, (1, 3, n, height, width), &Device::Cpu)?, height, width))
    }

    /// The enhanced first `n` frames of `video`.
    fn enhance(
        &self,
        video: &Frames<impl AsRef<[u8]>>,
        n: usize,
        prompt: &str,
        seed: u64,
    ) -> Result<Frames<Vec<u8>>, StageError> {
        let (input, height, width) = self.input(video, n)?;
        let data = self
            .models
            .enhance(&input, prompt, seed, &mut stop_if_cancelled)
            .map_err(|e| StageError::from(e).context("enhancement failed"))?;
        Ok(Frames { count: data.len() / (3 * height * width), data, height, width })
    }

    /// The frames to enhance of a video of `count`.
    fn frame_count(&self, count: usize) -> Result<usize, StageError> {
        match self.config.frames {
            Some(n) if n > count => {
                Err(StageError::msg(format!("the video has {count} frames; `frames` = {n} needs at least that many")))
            }
            Some(n) => Ok(n),
            None if count == 0 => Err(StageError::msg("the video has no frames")),
            None => Ok(1 + (count - 1) / 4 * 4),
        }
    }
}

#[async_trait]
impl Stage for Enhance {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let started = Instant::now();
        let prompt = crate::row::prompt(&item)?;
        let video = item.tensors.get("video").ok_or_else(|| StageError::msg("no `video`: put vae_decode first"))?;
        let [count, height, width, 3] = video.shape[..] else {
            return Err(StageError::msg(format!("`video` has shape {:?}, expected [T, H, W, 3]", video.shape)));
        };
        if video.dtype != pipeline::DType::U8 {
            return Err(StageError::msg("`video` must hold 8-bit frames"));
        }
        let n = self.frame_count(count)?;
        let seed = crate::row::seed(&item, self.config.seed)?;
        // A cheap clone: the bytes are shared until the enhanced video replaces them.
        let frames = Frames { data: video.data.clone(), count, height, width };
        let me = self.clone();
        let out = self.thread.run(ctx, move || me.enhance(&frames, n, &prompt, seed)).await??;
        let tensor =
            pipeline::Tensor::new(pipeline::DType::U8, vec![out.count, out.height, out.width, 3], out.data.into())
                .ok_or_else(|| StageError::msg("enhanced video size mismatch"))?;
        item.tensors.insert("video".into(), tensor);
        let c = &self.config;
        item.set("enhance_seed", seed as i64);
        item.set("enhance_steps", c.steps as i64);
        item.set("enhance_cfg_scale", c.cfg_scale);
        item.set("enhance_noise_level", c.noise_level);
        item.set("enhance_shift", c.shift);
        item.set("enhance_blur", c.blur);
        item.set("enhance_frames", out.count as i64);
        item.set("enhance_s", started.elapsed().as_secs_f64());
        Ok(vec![item])
    }
}

/// The stage when `enabled` is false: every row as it came.
struct PassThrough;

#[async_trait]
impl Stage for PassThrough {
    async fn process(&self, item: Item, _: &StageContext) -> Result<Vec<Item>, StageError> {
        Ok(vec![item])
    }
}

impl StageConfig for EnhanceConfig {
    const KIND: &'static str = "enhance";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"enhance\"\ndit = \"models/MUG-V-inference/enhancer/dit_i2v.safetensors\"\nlora = \"models/MUG-V-inference/enhancer/pytorch_model.bin\"\nvae = \"models/Wan2.1-T2V-1.3B/Wan2.1_VAE.pth\"\numt5 = \"models/Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth\"\ntokenizer = \"models/Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json\"\nsteps = 1\ncfg_scale = 2.0\nnoise_level = 0.3\ndevice = \"cuda\"\ndtype = \"bf16\"\n";

    fn reads(&self) -> Vec<Field> {
        if !self.enabled.on() {
            return Vec::new();
        }
        vec![
            Field::new("prompt", FieldType::Str, "what the video shows"),
            Field::new("video", FieldType::Tensor, "decoded video [T, H, W, 3], u8, from vae_decode"),
        ]
    }

    fn adds(&self) -> Vec<Field> {
        if !self.enabled.on() {
            return Vec::new();
        }
        vec![
            Field::new("video", FieldType::Tensor, "enhanced video [T', H, W, 3], u8 (T' = 1 + 4k)"),
            Field::new("enhance_seed", FieldType::Int, "seed the enhancer's noise came from"),
            Field::new("enhance_steps", FieldType::Int, "enhancer denoising steps"),
            Field::new("enhance_cfg_scale", FieldType::Float, "enhancer guidance scale"),
            Field::new("enhance_noise_level", FieldType::Float, "noise level the enhancer started from"),
            Field::new("enhance_shift", FieldType::Float, "timestep shift of the enhancer's schedule"),
            Field::new("enhance_blur", FieldType::Bool, "whether the frames were blurred first"),
            Field::new("enhance_frames", FieldType::Int, "frames enhanced"),
            Field::new("enhance_s", FieldType::Float, "seconds spent enhancing the row"),
        ]
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.steps == 0 {
            problems.push("steps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.noise_level) {
            problems.push(format!("noise_level must be between 0 and 1, found {}", self.noise_level));
        }
        if self.shift <= 0.0 {
            problems.push(format!("shift must be positive, found {}", self.shift));
        }
        if self.frames.is_some_and(|n| n == 0 || (n - 1) % 4 != 0) {
            problems.push(format!(
                "frames must be 1 + 4k (the Wan VAE's unit, e.g. 105), found {}",
                self.frames.unwrap_or_default()
            ));
        }
        if self.size.is_some_and(|r| r.width % 16 != 0 || r.height % 16 != 0) {
            problems.push("size must be a multiple of 16 pixels each way (e.g. \"720x1280\")".into());
        }
        if self.lora_rank == Some(0) {
            problems.push("lora_rank must be at least 1".into());
        }
        problems
    }

    fn checkpoints(&self) -> Vec<PathBuf> {
        if !self.enabled.on() {
            return Vec::new();
        }
        vec![self.dit.clone(), self.lora.clone(), self.vae.clone(), self.umt5.clone(), self.tokenizer.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        if !self.enabled.on() {
            return Ok(Runnable::Transform(Arc::new(PassThrough)));
        }
        let placement = Placement::new(&self.device, self.dtype)?;
        let text_placement = Placement::new(&self.umt5_device, self.umt5_dtype)?;
        let dit_config = self.preset.sizes().wan_dit();
        let lora_config = LoraConfig {
            rank: self.lora_rank.unwrap_or(self.preset.sizes().enhancer_lora().rank),
            alpha: self.lora_alpha,
            ..self.preset.sizes().enhancer_lora()
        };
        let adapter = placement.open(Self::KIND, "lora", &self.lora)?;
        // The merge only complains about adapter keys it cannot place, so a file with none (the
        // DiT itself, say) would silently run the base model.
        let prefix = &lora_config.prefix;
        if !adapter.keys().iter().any(|k| k.starts_with(prefix.as_str()) && k.contains(".lora_A.")) {
            return Err(pipeline::BuildError::new(format!(
                "enhance `lora`: {} holds no LoRA tensors (`{prefix}...lora_A.default.weight`); point it at \
                 MUG-V-inference/enhancer/pytorch_model.bin",
                self.lora.display()
            ))
            .with_key("lora"));
        }
        let dit = WanDit::load(
            &placement.open(Self::KIND, "dit", &self.dit)?,
            &dit_config,
            Some(Lora::new(&adapter, &lora_config)),
        )
        .map_err(load_error(Self::KIND, "dit` + `lora"))?;
        let vae = placement.load(Self::KIND, "vae", &self.vae, |c| WanVae::load(c, &self.preset.sizes().wan_vae()))?;
        let umt5 = text_placement
            .load(Self::KIND, "umt5", &self.umt5, |c| Umt5Encoder::load(c, &self.preset.sizes().umt5()))?;
        let tokenizer = T5Tokenizer::from_file(&self.tokenizer, dit_config.text_len)
            .map_err(load_error(Self::KIND, "tokenizer"))?;
        let sampler = Enhancer {
            schedule: FlowMatchSchedule {
                shift: self.shift as f32,
                sigma_max: self.noise_level as f32,
                ..FlowMatchSchedule::enhancer()
            },
            steps: self.steps,
            cfg_scale: self.cfg_scale as f32,
        };
        let models = EnhancerModels {
            wan: WanEnhancer { dit, vae, sampler, device: placement.device.clone(), dtype: placement.dtype },
            text: PromptEncoder::new(umt5, tokenizer, text_placement.device, self.negative_prompt.clone()),
        };
        Ok(Runnable::Transform(Arc::new(Enhance {
            models: Arc::new(models),
            config: Arc::new(self.clone()),
            thread: placement.thread,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write the tiny random checkpoints of `mugflow models init-tiny` into `dir`.
    fn init_tiny(dir: &std::path::Path) {
        use models::presets::{init_random, Part, Preset};
        init_random(dir, Preset::Tiny, &Part::ALL, models::checkpoint_files::Fill::Random { seed: 0 }, |_| {}).unwrap();
    }

    /// A tiny-weights enhance stage reading the checkpoints [`init_tiny`] wrote into `dir`.
    fn tiny(dir: &std::path::Path, extra: serde_json::Value) -> Arc<dyn Stage> {
        let mut config = serde_json::json!({
            "preset": "tiny",
            "dit": dir.join("enhancer/dit_i2v.safetensors"),
            "lora": dir.join("enhancer/lora.safetensors"),
            "vae": dir.join("enhancer/Wan2.1_VAE.safetensors"),
            "umt5": dir.join("enhancer/umt5.safetensors"),
            "tokenizer": dir.join("t5_tokenizer.json"),
        });
        config.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let config: EnhanceConfig = serde_json::from_value(config).unwrap();
        assert!(config.check().is_empty(), "{:?}", config.check());
        match config.build(&pipeline::BuildContext { job_name: "t".into() }).unwrap() {
            Runnable::Transform(stage) => stage,
            Runnable::Sink(_) => unreachable!("enhance is a transform"),
        }
    }

    /// A row of a 10-frame 32x48 video with a gradient and a moving square.
    fn row(seed: Option<i64>) -> Item {
        let (t, h, w) = (10, 32, 48);
        let mut data = Vec::with_capacity(t * h * w * 3);
        for f in 0..t {
            for y in 0..h {
                for x in 0..w {
                    let inside = (x + 2 * f) % w < 12 && y > 8 && y < 20;
                    let v = if inside { 230 } else { (x * 4 + y * 2) as u8 };
                    data.extend([v, v / 2, 255 - v]);
                }
            }
        }
        let mut item = Item::new("row");
        item.set("prompt", "A  cup of\tcoffee");
        if let Some(s) = seed {
            item.set("seed", s);
        }
        let video = pipeline::Tensor::new(pipeline::DType::U8, vec![t, h, w, 3], data.into()).unwrap();
        item.tensors.insert("video".into(), video);
        item
    }

    fn run(stage: &Arc<dyn Stage>, item: Item) -> Result<Item, StageError> {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let ctx = StageContext {
            scratch: std::env::temp_dir(),
            attempt: "test".into(),
            cancel: Default::default(),
            drops: Default::default(),
        };
        rt.block_on(stage.process(item, &ctx)).map(|mut v| v.remove(0))
    }

    /// A timed-out enhancement stops at its next step: a million tiny steps would take hours,
    /// and the item's work ends within a minute of its token being tripped.
    #[test]
    fn a_cancelled_enhancement_stops_within_a_step() {
        let dir = tempfile::tempdir().unwrap();
        init_tiny(dir.path());
        let stage = tiny(dir.path(), serde_json::json!({ "steps": 1_000_000 }));
        crate::checkpoints::testing::stops_when_cancelled(stage, row(Some(7)));
    }

    #[test]
    fn enhancing_changes_the_frames_and_repeats_for_a_seed() {
        let dir = tempfile::tempdir().unwrap();
        init_tiny(dir.path());
        let stage = tiny(dir.path(), serde_json::json!({}));
        let input = row(Some(7));
        let before = input.tensors["video"].clone();
        let a = run(&stage, input).unwrap();
        let out = &a.tensors["video"];
        // 10 frames are cut to 9 = 1 + 4 * 2, the Wan VAE's unit.
        assert_eq!(out.shape, [9, 32, 48, 3]);
        assert_ne!(out.data[..], before.data[..9 * 32 * 48 * 3], "the enhancer changed nothing");
        assert!(out.data.iter().any(|&v| v != out.data[0]), "a flat video");
        assert_eq!(a.get("enhance_seed").and_then(pipeline::Value::as_i64), Some(7));
        assert_eq!(a.get("enhance_frames").and_then(pipeline::Value::as_i64), Some(9));

        let again = run(&stage, row(Some(7))).unwrap();
        assert_eq!(again.tensors["video"].data, out.data, "same seed, same frames");
        let other = run(&stage, row(Some(8))).unwrap();
        assert_ne!(other.tensors["video"].data, out.data, "another seed, other noise");
        let unseeded = run(&stage, row(None)).unwrap();
        assert_eq!(unseeded.get("enhance_seed").and_then(pipeline::Value::as_i64), Some(42));

        let blurred = run(&tiny(dir.path(), serde_json::json!({"blur": true})), row(Some(7))).unwrap();
        assert_ne!(blurred.tensors["video"].data, out.data, "blurring changes the input");
        let resized = tiny(dir.path(), serde_json::json!({"size": "32x16", "frames": 5}));
        assert_eq!(run(&resized, row(Some(7))).unwrap().tensors["video"].shape, [5, 16, 32, 3]);
    }

    #[test]
    fn videos_the_enhancer_cannot_take_are_row_errors() {
        let dir = tempfile::tempdir().unwrap();
        init_tiny(dir.path());
        let long = tiny(dir.path(), serde_json::json!({"frames": 13}));
        let e = run(&long, row(Some(1))).unwrap_err().to_string();
        assert!(e.contains("the video has 10 frames; `frames` = 13"), "{e}");
        let mut odd = row(Some(1));
        let data = vec![0u8; 5 * 24 * 40 * 3];
        odd.tensors.insert(
            "video".into(),
            pipeline::Tensor::new(pipeline::DType::U8, vec![5, 24, 40, 3], data.into()).unwrap(),
        );
        let e = run(&tiny(dir.path(), serde_json::json!({})), odd).unwrap_err().to_string();
        assert!(e.contains("40x24 frames") && e.contains("set `size`"), "{e}");
    }

    #[test]
    fn a_lora_file_without_adapter_tensors_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        init_tiny(dir.path());
        let mut config: EnhanceConfig = serde_json::from_value(serde_json::json!({
            "preset": "tiny",
            "dit": dir.path().join("enhancer/dit_i2v.safetensors"),
            "lora": dir.path().join("enhancer/dit_i2v.safetensors"),
            "vae": dir.path().join("enhancer/Wan2.1_VAE.safetensors"),
            "umt5": dir.path().join("enhancer/umt5.safetensors"),
            "tokenizer": dir.path().join("t5_tokenizer.json"),
        }))
        .unwrap();
        // The error with its cause chain, as the CLI shows it.
        let build = |c: &EnhanceConfig| {
            c.build(&pipeline::BuildContext { job_name: "t".into() }).err().map(|e| StageError::from(e).to_string())
        };
        let e = build(&config).unwrap();
        assert!(e.contains("enhance `lora`") && e.contains("holds no LoRA tensors"), "{e}");
        config.lora = dir.path().join("enhancer/missing.bin");
        let e = build(&config).unwrap();
        assert!(e.contains("enhance `lora`") && e.contains("does not exist"), "{e}");
        config.lora = dir.path().join("enhancer/lora.safetensors");
        config.lora_rank = Some(4);
        let e = build(&config).unwrap();
        assert!(e.contains("enhance `dit` + `lora`") && e.contains("lora_A"), "{e}");
    }

    #[test]
    fn a_disabled_stage_passes_rows_through_and_reads_no_checkpoint() {
        for enabled in [serde_json::json!(false), serde_json::json!("false")] {
            let config: EnhanceConfig = serde_json::from_value(serde_json::json!({
                "enabled": enabled, "dit": "nope", "lora": "nope", "vae": "nope", "umt5": "nope", "tokenizer": "nope",
            }))
            .unwrap();
            assert!(config.checkpoints().is_empty() && config.adds().is_empty());
            let Runnable::Transform(stage) = config.build(&pipeline::BuildContext { job_name: "t".into() }).unwrap()
            else {
                unreachable!("enhance is a transform")
            };
            let out = run(&stage, row(Some(1))).unwrap();
            assert_eq!(out.tensors["video"].shape, [10, 32, 48, 3]);
        }
        let config: Result<EnhanceConfig, _> = serde_json::from_value(serde_json::json!({
            "enabled": "maybe", "dit": "a", "lora": "a", "vae": "a", "umt5": "a", "tokenizer": "a",
        }));
        assert!(config.is_err());
    }
}

//! What the model stages share: where a model runs (device, dtype), which size preset a
//! checkpoint has, tensor payload conversion, and the tiny random-weight checkpoints that
//! `mugflow models init-tiny` writes so the demo runs the whole chain on a laptop.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use models::aesthetic::{AestheticConfig, AestheticMlp};
use models::clip::ClipVision;
use models::mugdit::{MugDit, MugDitConfig};
use models::mugvae::{MugVae, MugVaeConfig};
use models::random::{model_keys, random_weights};
use models::t5::{T5Config, T5Encoder};
use models::weights::{Checkpoint, WeightsError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a model runs and in which precision, resolved once from a stage's `device` and `dtype`
/// keys: the stage's weights and its inputs must share one device handle (two CUDA handles on the
/// same GPU are different devices to candle).
#[derive(Debug, Clone)]
pub struct Placement {
    /// The device.
    pub device: Device,
    /// Precision of weights and activations.
    pub dtype: DType,
}

/// The default of every model stage's `device` key.
pub fn default_device() -> String {
    "cpu".into()
}

/// Floating-point precision of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Placement {
    /// The device named by `device` ("cpu", "cuda", "cuda:N") with `precision`, or why it cannot
    /// be used in this build.
    pub fn new(device: &str, precision: Precision) -> Result<Placement, String> {
        let device = match device {
            "cpu" => Device::Cpu,
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal = d
                    .strip_prefix("cuda:")
                    .map_or(Ok(0), str::parse::<usize>)
                    .map_err(|_| format!("device `{d}`: expected \"cuda:N\" with N a GPU number, e.g. \"cuda:0\""))?;
                Device::new_cuda(ordinal).map_err(|e| {
                    format!("device `{d}` is not available ({e}); use device = \"cpu\" or a CUDA build of mugflow")
                })?
            }
            d => return Err(format!("unknown device `{d}`: use \"cpu\", \"cuda\" or \"cuda:N\"")),
        };
        let dtype = match precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        };
        if device.is_cpu() && dtype != DType::F32 {
            // candle's CPU backend has no bf16/f16 matrix products.
            let name = if dtype == DType::BF16 { "bf16" } else { "f16" };
            return Err(format!("dtype \"{name}\" runs on GPUs only; on device \"cpu\" use dtype = \"f32\""));
        }
        Ok(Placement { device, dtype })
    }

    /// Open a checkpoint onto this placement, the error naming what it is for.
    pub fn open(&self, what: &str, path: &Path) -> Result<Checkpoint, String> {
        if !path.exists() {
            return Err(format!(
                "{what}: {} does not exist (point it at the checkpoint, or write tiny random test weights \
                 with `mugflow models init-tiny DIR`)",
                path.display()
            ));
        }
        Checkpoint::open(path, self.dtype, &self.device).map_err(|e| format!("{what}: {e}"))
    }
}

/// Size presets: the released models, or the tiny random ones of `mugflow models init-tiny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    /// The released model's sizes (MUG-V VideoVAE, T5-v1.1-XXL, CLIP ViT-L/14).
    #[default]
    Real,
    /// The tiny test sizes, for plumbing only: random weights produce meaningless numbers.
    Tiny,
}

impl Preset {
    /// The VideoVAE sizes.
    pub fn vae(self) -> MugVaeConfig {
        match self {
            Preset::Real => MugVaeConfig::mugv(),
            Preset::Tiny => MugVaeConfig::golden(),
        }
    }

    /// The T5 sizes (the tiny one keeps the real vocabulary so the real tokenizer fits it).
    pub fn t5(self) -> T5Config {
        match self {
            Preset::Real => T5Config::xxl(),
            Preset::Tiny => T5Config { vocab_size: T5Config::xxl().vocab_size, max_length: 300, ..T5Config::golden() },
        }
    }

    /// The MUG-DiT sizes (the tiny one takes the VideoVAE's 24 channels and the tiny T5's width).
    pub fn dit(self) -> MugDitConfig {
        match self {
            Preset::Real => MugDitConfig::mugv_10b(),
            Preset::Tiny => MugDitConfig {
                in_channels: self.vae().temporal.latent_channels,
                text_dim: self.t5().d_model,
                ..MugDitConfig::golden()
            },
        }
    }

    /// The CLIP tower and aesthetic head sizes.
    pub fn aesthetic(self) -> AestheticConfig {
        match self {
            Preset::Real => AestheticConfig::vit_l_14(),
            Preset::Tiny => AestheticConfig::golden(),
        }
    }
}

/// A candle tensor as an f32 item payload (what datasets and trainers read).
pub fn to_payload(t: &Tensor) -> Result<pipeline::Tensor, candle_core::Error> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
    pipeline::Tensor::new(pipeline::DType::F32, t.dims().to_vec(), bytes.into())
        .ok_or_else(|| candle_core::Error::Msg("payload size does not match its shape".into()))
}

/// File names `init_tiny` writes, relative to its folder.
pub const TINY_FILES: [&str; 6] = [
    "vae.safetensors",
    "t5.safetensors",
    "t5_tokenizer.json",
    "clip.safetensors",
    "aesthetic_mlp.safetensors",
    "dit.safetensors",
];

/// The T5 vocabulary (Google's Apache-2.0 SentencePiece model as a HF tokenizer.json).
const T5_TOKENIZER: &[u8] = include_bytes!("../../models/tests/data/t5/t5_tokenizer.json");

/// Write tiny random-weight checkpoints with the real key names (VideoVAE, T5 encoder with its
/// tokenizer, CLIP tower, aesthetic head, MUG-DiT) into `dir`, for the demo and plumbing tests.
pub fn init_tiny(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let keys = |r: Result<Vec<(String, Vec<usize>)>, WeightsError>| r.map_err(|e| e.to_string());
    let aesthetic = Preset::Tiny.aesthetic();
    let sets = [
        keys(model_keys(|c| MugVae::load(c, &Preset::Tiny.vae())))?,
        keys(model_keys(|c| T5Encoder::load(c, &Preset::Tiny.t5())))?,
        keys(model_keys(|c| ClipVision::load(c, &aesthetic.clip)))?,
        keys(model_keys(|c| AestheticMlp::load(c, &aesthetic)))?,
        keys(model_keys(|c| MugDit::load(c, &Preset::Tiny.dit())))?,
    ];
    let mut written = Vec::new();
    let names = [TINY_FILES[0], TINY_FILES[1], TINY_FILES[3], TINY_FILES[4], TINY_FILES[5]];
    for (seed, (name, keys)) in names.iter().zip(sets).enumerate() {
        let path = dir.join(name);
        let tensors = random_weights(&keys, seed as u64).map_err(|e| e.to_string())?;
        let tensors: std::collections::HashMap<_, _> = tensors.into_iter().collect();
        candle_core::safetensors::save(&tensors, &path).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
        written.push(path);
    }
    let tokenizer = dir.join(TINY_FILES[2]);
    std::fs::write(&tokenizer, T5_TOKENIZER).map_err(|e| format!("cannot write {}: {e}", tokenizer.display()))?;
    written.push(tokenizer);
    Ok(written)
}

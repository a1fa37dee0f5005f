//! What the model stages share: where a model runs (device, dtype), which size preset a
//! checkpoint has, tensor payload conversion, and the tiny random-weight checkpoints that
//! `mugflow models init-tiny` writes so the demo runs the whole chain on a laptop.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use models::aesthetic::{AestheticConfig, AestheticMlp};
use models::clip::ClipVision;
use models::lora::LoraConfig;
use models::mugdit::{MugDit, MugDitConfig};
use models::mugvae::{MugVae, MugVaeConfig};
use models::random::{model_keys, random_weights};
use models::t5::{T5Config, T5Encoder};
use models::umt5::{Umt5Config, Umt5Encoder};
use models::wan_dit::{WanDit, WanDitConfig};
use models::wan_vae::{WanVae, WanVaeConfig};
use models::weights::{Checkpoint, WeightsError};
use pipeline::BuildError;
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
    pub fn new(device: &str, precision: Precision) -> Result<Placement, BuildError> {
        let device = match device {
            "cpu" => Device::Cpu,
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal = d.strip_prefix("cuda:").map_or(Ok(0), str::parse::<usize>).map_err(|_| {
                    BuildError::new(format!("device `{d}`: expected \"cuda:N\" with N a GPU number, e.g. \"cuda:0\""))
                })?;
                Device::new_cuda(ordinal).map_err(|e| {
                    BuildError::new(format!(
                        "device `{d}` is not available; use device = \"cpu\" or a CUDA build of mugflow"
                    ))
                    .with_source(e)
                })?
            }
            d => return Err(format!("unknown device `{d}`: use \"cpu\", \"cuda\" or \"cuda:N\"").into()),
        };
        let dtype = match precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        };
        if device.is_cpu() && dtype != DType::F32 {
            // candle's CPU backend has no bf16/f16 matrix products.
            let name = if dtype == DType::BF16 { "bf16" } else { "f16" };
            return Err(format!("dtype \"{name}\" runs on GPUs only; on device \"cpu\" use dtype = \"f32\"").into());
        }
        Ok(Placement { device, dtype })
    }

    /// Open the checkpoint that `stage`'s config key `key` names onto this placement; an error
    /// names the stage and the key.
    pub fn open(&self, stage: &str, key: &str, path: &Path) -> Result<Checkpoint, BuildError> {
        if !path.exists() {
            return Err(BuildError::new(format!(
                "{stage} `{key}`: {} does not exist (point it at the checkpoint, or write tiny random test \
                 weights with `mugflow models init-tiny DIR`)",
                path.display()
            ))
            .with_key(key));
        }
        Checkpoint::open(path, self.dtype, &self.device).map_err(load_error(stage, key))
    }
}

/// The error of a model (or tokenizer) that could not be read from the file `stage`'s config key
/// `key` names; the weights error stays its cause.
pub fn load_error(stage: &str, key: &str) -> impl Fn(WeightsError) -> BuildError {
    let (stage, key) = (stage.to_string(), key.to_string());
    move |e| BuildError::new(format!("{stage} `{key}`: cannot load the file it names")).with_key(&key).with_source(e)
}

/// Size presets: the released models, or the tiny random ones of `mugflow models init-tiny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelPreset {
    /// The released model's sizes (MUG-V VideoVAE, T5-v1.1-XXL, CLIP ViT-L/14).
    #[default]
    Real,
    /// The tiny test sizes, for plumbing only: random weights produce meaningless numbers.
    Tiny,
}

impl ModelPreset {
    /// The VideoVAE sizes.
    pub fn vae(self) -> MugVaeConfig {
        match self {
            ModelPreset::Real => MugVaeConfig::mugv(),
            ModelPreset::Tiny => MugVaeConfig::golden(),
        }
    }

    /// The T5 sizes (the tiny one keeps the real vocabulary so the real tokenizer fits it).
    pub fn t5(self) -> T5Config {
        match self {
            ModelPreset::Real => T5Config::xxl(),
            ModelPreset::Tiny => {
                T5Config { vocab_size: T5Config::xxl().vocab_size, max_length: 300, ..T5Config::golden() }
            }
        }
    }

    /// The MUG-DiT sizes (the tiny one takes the VideoVAE's 24 channels and the tiny T5's width).
    pub fn dit(self) -> MugDitConfig {
        match self {
            ModelPreset::Real => MugDitConfig::mugv_10b(),
            ModelPreset::Tiny => MugDitConfig {
                in_channels: self.vae().temporal.latent_channels,
                text_dim: self.t5().d_model,
                ..MugDitConfig::golden()
            },
        }
    }

    /// The enhancer's Wan2.1 VAE sizes.
    pub fn wan_vae(self) -> WanVaeConfig {
        match self {
            ModelPreset::Real => WanVaeConfig::wan21(),
            ModelPreset::Tiny => WanVaeConfig::golden(),
        }
    }

    /// The UMT5 sizes (the tiny one has the T5 tokenizer's vocabulary, so the tokenizer that
    /// `init_tiny` writes fits it: the real UMT5 one is 4.5 MB more for plumbing runs).
    pub fn umt5(self) -> Umt5Config {
        match self {
            ModelPreset::Real => Umt5Config::xxl(),
            ModelPreset::Tiny => Umt5Config { vocab: T5Config::xxl().vocab_size, ..Umt5Config::golden() },
        }
    }

    /// The enhancer's Wan DiT sizes (the tiny one reads 64 text tokens, so catalog prompts are
    /// not cut to the goldens' 16).
    pub fn wan_dit(self) -> WanDitConfig {
        match self {
            ModelPreset::Real => WanDitConfig::wan_1_3b(),
            ModelPreset::Tiny => WanDitConfig { text_len: 64, text_dim: self.umt5().dim, ..WanDitConfig::golden() },
        }
    }

    /// The enhancer's LoRA adapter (rank 256 real, 8 tiny; alpha 4, keys `pipe.dit.*`).
    pub fn enhancer_lora(self) -> LoraConfig {
        match self {
            ModelPreset::Real => LoraConfig::mugv_enhancer(),
            ModelPreset::Tiny => LoraConfig::golden(),
        }
    }

    /// The CLIP tower and aesthetic head sizes.
    pub fn aesthetic(self) -> AestheticConfig {
        match self {
            ModelPreset::Real => AestheticConfig::vit_l_14(),
            ModelPreset::Tiny => AestheticConfig::golden(),
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

/// File names `init_tiny` writes, relative to its folder. The enhancer's are named like the
/// released files they stand in for.
pub const TINY_FILES: [&str; 10] = [
    "vae.safetensors",
    "t5.safetensors",
    "t5_tokenizer.json",
    "clip.safetensors",
    "aesthetic_mlp.safetensors",
    "dit.safetensors",
    "enhancer/dit_i2v.safetensors",
    "enhancer/lora.safetensors",
    "enhancer/Wan2.1_VAE.safetensors",
    "enhancer/umt5.safetensors",
];

/// The T5 vocabulary (Google's Apache-2.0 SentencePiece model as a HF tokenizer.json); the tiny
/// UMT5 reads it too.
const T5_TOKENIZER: &[u8] = include_bytes!("../../models/tests/data/t5/t5_tokenizer.json");

/// peft's LoRA targets of the enhancer's DiT (`q,k,v,o,ffn.0,ffn.2`): the key stems
/// `blocks.{i}.{self_attn|cross_attn}.{q|k|v|o}` and `blocks.{i}.ffn.{0|2}`.
fn is_lora_target(stem: &str) -> bool {
    let Some(rest) = stem.strip_prefix("blocks.") else { return false };
    ["self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o", "cross_attn.q", "cross_attn.k"]
        .into_iter()
        .chain(["cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2"])
        .any(|t| rest.split_once('.').is_some_and(|(_, layer)| layer == t))
}

/// The `(key, shape)`s of a peft LoRA adapter for a model with `keys`: `lora_A` `[rank, in]` and
/// `lora_B` `[out, rank]` of every target linear, under `config.prefix`.
fn lora_keys(keys: &[(String, Vec<usize>)], config: &LoraConfig) -> Vec<(String, Vec<usize>)> {
    let p = &config.prefix;
    keys.iter()
        .filter_map(|(key, shape)| {
            let stem = key.strip_suffix(".weight").filter(|s| is_lora_target(s) && shape.len() == 2)?;
            Some([
                (format!("{p}{stem}.lora_A.default.weight"), vec![config.rank, shape[1]]),
                (format!("{p}{stem}.lora_B.default.weight"), vec![shape[0], config.rank]),
            ])
        })
        .flatten()
        .collect()
}

/// Write tiny random-weight checkpoints with the real key names (VideoVAE, T5 encoder with its
/// tokenizer, CLIP tower, aesthetic head, MUG-DiT, and the enhancer's Wan DiT, LoRA adapter, Wan
/// VAE and UMT5) into `dir`, for the demo and plumbing tests.
pub fn init_tiny(dir: &Path) -> Result<Vec<PathBuf>, String> {
    std::fs::create_dir_all(dir.join("enhancer")).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let keys = |r: Result<Vec<(String, Vec<usize>)>, WeightsError>| r.map_err(|e| e.to_string());
    let aesthetic = ModelPreset::Tiny.aesthetic();
    let wan_dit = keys(model_keys(|c| WanDit::load(c, &ModelPreset::Tiny.wan_dit(), None)))?;
    let lora = lora_keys(&wan_dit, &ModelPreset::Tiny.enhancer_lora());
    let sets = [
        (TINY_FILES[0], keys(model_keys(|c| MugVae::load(c, &ModelPreset::Tiny.vae())))?),
        (TINY_FILES[1], keys(model_keys(|c| T5Encoder::load(c, &ModelPreset::Tiny.t5())))?),
        (TINY_FILES[3], keys(model_keys(|c| ClipVision::load(c, &aesthetic.clip)))?),
        (TINY_FILES[4], keys(model_keys(|c| AestheticMlp::load(c, &aesthetic)))?),
        (TINY_FILES[5], keys(model_keys(|c| MugDit::load(c, &ModelPreset::Tiny.dit())))?),
        (TINY_FILES[6], wan_dit),
        (TINY_FILES[7], lora),
        (TINY_FILES[8], keys(model_keys(|c| WanVae::load(c, &ModelPreset::Tiny.wan_vae())))?),
        (TINY_FILES[9], keys(model_keys(|c| Umt5Encoder::load(c, &ModelPreset::Tiny.umt5())))?),
    ];
    let mut written = Vec::new();
    for (seed, (name, keys)) in sets.into_iter().enumerate() {
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny adapter holds the 10 targets of every block of the tiny DiT, and merges into it.
    #[test]
    fn tiny_lora_covers_every_target_and_loads() {
        let config = ModelPreset::Tiny.wan_dit();
        let keys = model_keys(|c| WanDit::load(c, &config, None)).unwrap();
        let lora = lora_keys(&keys, &ModelPreset::Tiny.enhancer_lora());
        assert_eq!(lora.len(), 2 * 10 * config.num_layers);
        assert!(lora.iter().any(|(k, s)| k == "pipe.dit.blocks.1.ffn.2.lora_B.default.weight" && s == &[64, 8]));
        let base = random_checkpoint(&keys);
        let adapter = random_checkpoint(&lora);
        let lora = models::lora::Lora::new(&adapter, &ModelPreset::Tiny.enhancer_lora());
        WanDit::load(&base, &config, Some(lora)).unwrap();
    }

    fn random_checkpoint(keys: &[(String, Vec<usize>)]) -> Checkpoint {
        models::random::random_checkpoint(keys, DType::F32, &Device::Cpu, &Device::Cpu).unwrap()
    }
}

//! The tiny random-weight checkpoints `mugflow models init-tiny` writes, so that the demo and the
//! plumbing tests run the whole chain on a laptop: their sizes, their file names (one table, which
//! the CLI's `generate --tiny` reads too) and the writer.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::aesthetic::{AestheticConfig, AestheticMlp};
use crate::clip::ClipVision;
use crate::lora::LoraConfig;
use crate::mugdit::{MugDit, MugDitConfig};
use crate::mugvae::{MugVae, MugVaeConfig};
use crate::random::{model_keys, random_weights};
use crate::t5::{T5Config, T5Encoder};
use crate::umt5::{Umt5Config, Umt5Encoder};
use crate::wan_dit::{WanDit, WanDitConfig};
use crate::wan_vae::{WanVae, WanVaeConfig};
use crate::weights::WeightsError;

/// The MUG-V VideoVAE.
pub const VAE: &str = "vae.safetensors";
/// The T5 text encoder.
pub const T5: &str = "t5.safetensors";
/// The T5 tokenizer (real vocabulary), read by the T5 and the UMT5 stand-ins alike.
pub const T5_TOKENIZER: &str = "t5_tokenizer.json";
/// The CLIP vision tower of the aesthetic scorer.
pub const CLIP: &str = "clip.safetensors";
/// The aesthetic scorer's MLP head.
pub const AESTHETIC_MLP: &str = "aesthetic_mlp.safetensors";
/// The MUG-DiT generator.
pub const DIT: &str = "dit.safetensors";
/// The enhancer's Wan DiT (named like the released file it stands in for).
pub const ENHANCER_DIT: &str = "enhancer/dit_i2v.safetensors";
/// The enhancer's LoRA adapter.
pub const ENHANCER_LORA: &str = "enhancer/lora.safetensors";
/// The enhancer's Wan2.1 VAE.
pub const ENHANCER_VAE: &str = "enhancer/Wan2.1_VAE.safetensors";
/// The enhancer's UMT5 text encoder.
pub const ENHANCER_UMT5: &str = "enhancer/umt5.safetensors";

/// Every file `init_tiny` writes, relative to its folder.
pub const FILES: [&str; 10] =
    [VAE, T5, T5_TOKENIZER, CLIP, AESTHETIC_MLP, DIT, ENHANCER_DIT, ENHANCER_LORA, ENHANCER_VAE, ENHANCER_UMT5];

/// The T5 vocabulary (Google's Apache-2.0 SentencePiece model as a HF tokenizer.json, see
/// `models/data/PROVENANCE.md`).
const T5_TOKENIZER_JSON: &[u8] = include_bytes!("../data/t5_tokenizer.json");

/// The tiny VideoVAE sizes.
pub fn vae() -> MugVaeConfig {
    MugVaeConfig::golden()
}

/// The tiny T5 sizes (the real vocabulary, so the real tokenizer fits it).
pub fn t5() -> T5Config {
    T5Config { vocab_size: T5Config::xxl().vocab_size, max_length: 300, ..T5Config::golden() }
}

/// The tiny MUG-DiT sizes (the tiny VideoVAE's 24 channels, the tiny T5's width).
pub fn dit() -> MugDitConfig {
    MugDitConfig { in_channels: vae().temporal.latent_channels, text_dim: t5().d_model, ..MugDitConfig::golden() }
}

/// The tiny Wan2.1 VAE sizes of the enhancer.
pub fn wan_vae() -> WanVaeConfig {
    WanVaeConfig::golden()
}

/// The tiny UMT5 sizes (the T5 tokenizer's vocabulary, so the tokenizer `init_tiny` writes fits
/// it: the real UMT5 one is 4.5 MB more for plumbing runs).
pub fn umt5() -> Umt5Config {
    Umt5Config { vocab: T5Config::xxl().vocab_size, ..Umt5Config::golden() }
}

/// The tiny Wan DiT sizes of the enhancer (64 text tokens, so catalog prompts are not cut to the
/// goldens' 16).
pub fn wan_dit() -> WanDitConfig {
    WanDitConfig { text_len: 64, text_dim: umt5().dim, ..WanDitConfig::golden() }
}

/// The tiny LoRA adapter of the enhancer (rank 8).
pub fn enhancer_lora() -> LoraConfig {
    LoraConfig::golden()
}

/// The tiny CLIP tower and aesthetic head sizes.
pub fn aesthetic() -> AestheticConfig {
    AestheticConfig::golden()
}

/// Why the tiny checkpoints could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitTinyError {
    /// A tiny model's keys could not be listed (a loader that does not fit its own config).
    #[error("cannot list the keys of the tiny models")]
    Keys(#[from] WeightsError),
    /// Random tensors could not be made.
    #[error("cannot make random weights")]
    Random(#[from] candle_core::Error),
    /// A file or folder could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

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
/// VAE and UMT5) into `dir`, for the demo and plumbing tests; returns the files written.
pub fn init_tiny(dir: &Path) -> Result<Vec<PathBuf>, InitTinyError> {
    let write_error = |path: &Path| {
        let path = path.to_path_buf();
        move |e: std::io::Error| InitTinyError::Write { path, source: e.into() }
    };
    std::fs::create_dir_all(dir.join("enhancer")).map_err(write_error(dir))?;
    let aesthetic = aesthetic();
    let wan_dit_keys = model_keys(|c| WanDit::load(c, &wan_dit(), None))?;
    let lora = lora_keys(&wan_dit_keys, &enhancer_lora());
    let sets = [
        (VAE, model_keys(|c| MugVae::load(c, &vae()))?),
        (T5, model_keys(|c| T5Encoder::load(c, &t5()))?),
        (CLIP, model_keys(|c| ClipVision::load(c, &aesthetic.clip))?),
        (AESTHETIC_MLP, model_keys(|c| AestheticMlp::load(c, &aesthetic))?),
        (DIT, model_keys(|c| MugDit::load(c, &dit()))?),
        (ENHANCER_DIT, wan_dit_keys),
        (ENHANCER_LORA, lora),
        (ENHANCER_VAE, model_keys(|c| WanVae::load(c, &wan_vae()))?),
        (ENHANCER_UMT5, model_keys(|c| Umt5Encoder::load(c, &umt5()))?),
    ];
    let mut written = Vec::new();
    for (seed, (name, keys)) in sets.into_iter().enumerate() {
        let path = dir.join(name);
        let tensors: HashMap<_, _> = random_weights(&keys, seed as u64)?.into_iter().collect();
        candle_core::safetensors::save(&tensors, &path)
            .map_err(|e| InitTinyError::Write { path: path.clone(), source: e.into() })?;
        written.push(path);
    }
    let tokenizer = dir.join(T5_TOKENIZER);
    std::fs::write(&tokenizer, T5_TOKENIZER_JSON).map_err(write_error(&tokenizer))?;
    written.push(tokenizer);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::*;
    use crate::weights::Checkpoint;

    /// The tiny adapter holds the 10 targets of every block of the tiny DiT, and merges into it.
    #[test]
    fn tiny_lora_covers_every_target_and_loads() {
        let config = wan_dit();
        let keys = model_keys(|c| WanDit::load(c, &config, None)).unwrap();
        let lora = lora_keys(&keys, &enhancer_lora());
        assert_eq!(lora.len(), 2 * 10 * config.num_layers);
        assert!(lora.iter().any(|(k, s)| k == "pipe.dit.blocks.1.ffn.2.lora_B.default.weight" && s == &[64, 8]));
        let base = random_checkpoint(&keys);
        let adapter = random_checkpoint(&lora);
        let lora = crate::lora::Lora::new(&adapter, &enhancer_lora());
        WanDit::load(&base, &config, Some(lora)).unwrap();
    }

    /// `init_tiny` writes exactly the files of the table, and the tiny T5 reads its tokenizer.
    #[test]
    fn init_tiny_writes_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut written: Vec<PathBuf> = init_tiny(dir.path()).unwrap();
        let mut expected: Vec<PathBuf> = FILES.iter().map(|f| dir.path().join(f)).collect();
        written.sort();
        expected.sort();
        assert_eq!(written, expected);
        crate::t5::T5Tokenizer::from_file(&dir.path().join(T5_TOKENIZER), t5().max_length).unwrap();
    }

    fn random_checkpoint(keys: &[(String, Vec<usize>)]) -> Checkpoint {
        crate::random::random_checkpoint(keys, DType::F32, &Device::Cpu, &Device::Cpu).unwrap()
    }
}

//! The tiny random-weight checkpoints `mugflow models init-tiny` writes, so that the demo and the
//! plumbing tests run the whole chain on a laptop: their sizes and their file names (one table,
//! which the CLI's `generate --tiny` reads too). [`crate::presets`] writes them.

use crate::aesthetic::AestheticConfig;
use crate::lora::LoraConfig;
use crate::mugdit::MugDitConfig;
use crate::mugvae::MugVaeConfig;
use crate::t5::T5Config;
use crate::umt5::Umt5Config;
use crate::wan_dit::WanDitConfig;
use crate::wan_vae::WanVaeConfig;

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

/// Every file of the tiny set, relative to its folder.
pub const FILES: [&str; 10] =
    [VAE, T5, T5_TOKENIZER, CLIP, AESTHETIC_MLP, DIT, ENHANCER_DIT, ENHANCER_LORA, ENHANCER_VAE, ENHANCER_UMT5];

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

/// The tiny UMT5 sizes (the T5 tokenizer's vocabulary, so the tokenizer of the tiny set fits
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

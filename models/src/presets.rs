//! The two size presets of every model (the released sizes, and the tiny test sizes of
//! [`crate::tiny`]) and the random-weight checkpoint sets `mugflow models init-random` writes for
//! them: for each model its file (path, format and stored dtype as the release ships it, or the
//! tiny flat layout), the keys and shapes its loader reads, and the one writer both presets use.

use std::path::{Path, PathBuf};

use candle_core::DType;

use crate::aesthetic::{AestheticConfig, AestheticMlp};
use crate::checkpoint_files::{write_checkpoint, Fill, Format, TensorSpec, WriteError};
use crate::clip::ClipVision;
use crate::lora::LoraConfig;
use crate::mugdit::{MugDit, MugDitConfig};
use crate::mugvae::{MugVae, MugVaeConfig};
use crate::random::model_keys;
use crate::t5::{T5Config, T5Encoder};
use crate::tiny;
use crate::umt5::{Umt5Config, Umt5Encoder};
use crate::wan_dit::{WanDit, WanDitConfig};
use crate::wan_vae::{WanVae, WanVaeConfig};
use crate::weights::WeightsError;

/// Model sizes: the released models, or the tiny random ones for plumbing tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The released sizes (MUG-DiT-10B, VideoVAE, T5-v1.1-XXL, CLIP ViT-L/14, Wan2.1-1.3B, UMT5-XXL).
    Real,
    /// The tiny test sizes: random weights of these produce meaningless numbers in seconds.
    Tiny,
}

impl Preset {
    /// The VideoVAE sizes.
    pub fn vae(self) -> MugVaeConfig {
        match self {
            Preset::Real => MugVaeConfig::mugv(),
            Preset::Tiny => tiny::vae(),
        }
    }

    /// The T5 sizes.
    pub fn t5(self) -> T5Config {
        match self {
            Preset::Real => T5Config::xxl(),
            Preset::Tiny => tiny::t5(),
        }
    }

    /// The MUG-DiT sizes.
    pub fn dit(self) -> MugDitConfig {
        match self {
            Preset::Real => MugDitConfig::mugv_10b(),
            Preset::Tiny => tiny::dit(),
        }
    }

    /// The enhancer's Wan2.1 VAE sizes.
    pub fn wan_vae(self) -> WanVaeConfig {
        match self {
            Preset::Real => WanVaeConfig::wan21(),
            Preset::Tiny => tiny::wan_vae(),
        }
    }

    /// The UMT5 sizes.
    pub fn umt5(self) -> Umt5Config {
        match self {
            Preset::Real => Umt5Config::xxl(),
            Preset::Tiny => tiny::umt5(),
        }
    }

    /// The enhancer's Wan DiT sizes.
    pub fn wan_dit(self) -> WanDitConfig {
        match self {
            Preset::Real => WanDitConfig::wan_1_3b(),
            Preset::Tiny => tiny::wan_dit(),
        }
    }

    /// The enhancer's LoRA adapter (rank 256 real; alpha 4, keys `pipe.dit.*`).
    pub fn enhancer_lora(self) -> LoraConfig {
        match self {
            Preset::Real => LoraConfig::mugv_enhancer(),
            Preset::Tiny => tiny::enhancer_lora(),
        }
    }

    /// The CLIP tower and aesthetic head sizes.
    pub fn aesthetic(self) -> AestheticConfig {
        match self {
            Preset::Real => AestheticConfig::vit_l_14(),
            Preset::Tiny => tiny::aesthetic(),
        }
    }
}

/// One model of a checkpoint set: what `init-random --models` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// MUG-DiT, the generator.
    Dit,
    /// The MUG-V VideoVAE.
    Vae,
    /// The T5 text encoder and its tokenizer.
    T5,
    /// The CLIP vision tower of the aesthetic scorer.
    Clip,
    /// The aesthetic scorer's MLP head.
    Aesthetic,
    /// The enhancer's Wan DiT.
    EnhancerDit,
    /// The enhancer's LoRA adapter.
    EnhancerLora,
    /// The enhancer's Wan2.1 VAE.
    EnhancerVae,
    /// The enhancer's UMT5 text encoder and its tokenizer.
    Umt5,
}

impl Part {
    /// Every part, in the order they are written.
    pub const ALL: [Part; 9] = [
        Part::Aesthetic,
        Part::Clip,
        Part::Vae,
        Part::EnhancerVae,
        Part::EnhancerLora,
        Part::EnhancerDit,
        Part::Umt5,
        Part::T5,
        Part::Dit,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Part::Dit => "dit",
            Part::Vae => "vae",
            Part::T5 => "t5",
            Part::Clip => "clip",
            Part::Aesthetic => "aesthetic",
            Part::EnhancerDit => "enhancer-dit",
            Part::EnhancerLora => "enhancer-lora",
            Part::EnhancerVae => "enhancer-vae",
            Part::Umt5 => "umt5",
        }
    }
}

impl std::str::FromStr for Part {
    type Err = String;

    fn from_str(s: &str) -> Result<Part, String> {
        Part::ALL.into_iter().find(|p| p.name() == s).ok_or_else(|| {
            let names: Vec<&str> = Part::ALL.iter().map(|p| p.name()).collect();
            format!("unknown model `{s}`; expected one of {}", names.join(", "))
        })
    }
}

/// T5-v1.1-XXL ships in shards of at most 10 GB (two for its 19 GB of f32).
const T5_SHARD_BYTES: u64 = 10_000_000_000;

/// Where `part`'s weights go in a `preset` set, in which format and stored dtype. Real: the
/// layout of the MUG-V, Wan2.1, T5 and CLIP releases that the bundled manifests name, bf16 where
/// the release is (the 10B DiT, whose storage dtype is unpublished, in the bf16 it runs in; UMT5,
/// whose file says bf16), f32 elsewhere. Tiny: the flat f32 safetensors of [`crate::tiny`].
fn weights_file(preset: Preset, part: Part) -> (&'static str, Format, DType) {
    let safetensors = Format::Safetensors;
    match (preset, part) {
        (Preset::Tiny, part) => {
            let name = match part {
                Part::Dit => tiny::DIT,
                Part::Vae => tiny::VAE,
                Part::T5 => tiny::T5,
                Part::Clip => tiny::CLIP,
                Part::Aesthetic => tiny::AESTHETIC_MLP,
                Part::EnhancerDit => tiny::ENHANCER_DIT,
                Part::EnhancerLora => tiny::ENHANCER_LORA,
                Part::EnhancerVae => tiny::ENHANCER_VAE,
                Part::Umt5 => tiny::ENHANCER_UMT5,
            };
            (name, safetensors, DType::F32)
        }
        (Preset::Real, Part::Dit) => ("MUG-V-inference/dit.pt", Format::TorchZip, DType::BF16),
        (Preset::Real, Part::Vae) => ("MUG-V-inference/vae.pt", Format::TorchZip, DType::F32),
        (Preset::Real, Part::T5) => {
            ("t5-v1_1-xxl", Format::ShardedSafetensors { max_shard_bytes: T5_SHARD_BYTES }, DType::F32)
        }
        // The HF file also holds the text tower, which the scorer never reads.
        (Preset::Real, Part::Clip) => ("clip-vit-large-patch14/model.safetensors", safetensors, DType::F32),
        (Preset::Real, Part::Aesthetic) => ("sac+logos+ava1-l14-linearMSE.pth", Format::TorchZip, DType::F32),
        (Preset::Real, Part::EnhancerDit) => ("MUG-V-inference/enhancer/dit_i2v.safetensors", safetensors, DType::F32),
        (Preset::Real, Part::EnhancerLora) => {
            ("MUG-V-inference/enhancer/pytorch_model.bin", Format::TorchZip, DType::F32)
        }
        (Preset::Real, Part::EnhancerVae) => ("Wan2.1-T2V-1.3B/Wan2.1_VAE.pth", Format::TorchZip, DType::F32),
        (Preset::Real, Part::Umt5) => {
            ("Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth", Format::TorchZip, DType::BF16)
        }
    }
}

/// The files besides the weights that `part` needs: the tokenizers (the T5 vocabulary for UMT5
/// too, as a stand-in: its ids fit UMT5's larger table, and the real UMT5 one is 4.5 MB more) and
/// the HF config of the T5 folder.
fn other_files(preset: Preset, part: Part) -> Vec<(&'static str, Vec<u8>)> {
    let tokenizer = crate::t5::T5_VOCABULARY.to_vec();
    match (preset, part) {
        (Preset::Tiny, Part::T5 | Part::Umt5) => vec![(tiny::T5_TOKENIZER, tokenizer)],
        (Preset::Real, Part::T5) => {
            vec![("t5-v1_1-xxl/tokenizer.json", tokenizer), ("t5-v1_1-xxl/config.json", t5_hf_config(&preset.t5()))]
        }
        (Preset::Real, Part::Umt5) => vec![("Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json", tokenizer)],
        _ => Vec::new(),
    }
}

/// The HF `config.json` of a T5-v1.1 encoder of `c`'s sizes.
fn t5_hf_config(c: &T5Config) -> Vec<u8> {
    let config = serde_json::json!({
        "architectures": ["T5EncoderModel"],
        "model_type": "t5",
        "d_model": c.d_model,
        "d_kv": c.d_kv,
        "d_ff": c.d_ff,
        "num_layers": c.num_layers,
        "num_heads": c.num_heads,
        "relative_attention_num_buckets": c.num_buckets,
        "relative_attention_max_distance": c.max_distance,
        "layer_norm_epsilon": c.eps,
        "vocab_size": c.vocab_size,
        "feed_forward_proj": "gated-gelu",
        "is_encoder_decoder": false,
        "torch_dtype": "float32",
    });
    // A JSON value always serializes.
    serde_json::to_vec_pretty(&config).expect("JSON serializes")
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

/// Every `(key, shape)` of `part`'s file at `preset`'s sizes: those its loader reads (the
/// dry-load of [`model_keys`]), in reading order, and those the release holds besides.
pub fn part_keys(preset: Preset, part: Part) -> Result<Vec<(String, Vec<usize>)>, WeightsError> {
    let aesthetic = preset.aesthetic();
    match part {
        Part::Dit => model_keys(|c| MugDit::load(c, &preset.dit())),
        Part::Vae => {
            let keys = model_keys(|c| MugVae::load(c, &preset.vae()))?;
            Ok(keys.into_iter().chain(MugVae::unread_keys(&preset.vae())).collect())
        }
        Part::T5 => model_keys(|c| T5Encoder::load(c, &preset.t5())),
        Part::Clip => model_keys(|c| ClipVision::load(c, &aesthetic.clip)),
        Part::Aesthetic => model_keys(|c| AestheticMlp::load(c, &aesthetic)),
        Part::EnhancerDit => model_keys(|c| WanDit::load(c, &preset.wan_dit(), None)),
        Part::EnhancerLora => Ok(lora_keys(&part_keys(preset, Part::EnhancerDit)?, &preset.enhancer_lora())),
        Part::EnhancerVae => model_keys(|c| WanVae::load(c, &preset.wan_vae())),
        Part::Umt5 => model_keys(|c| Umt5Encoder::load(c, &preset.umt5())),
    }
}

/// One weights file of a set, planned: where it goes (relative to the set's folder), its format
/// and its tensors.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The model it holds.
    pub part: Part,
    /// Its path relative to the set's folder (a folder for sharded safetensors).
    pub path: &'static str,
    /// Its layout.
    pub format: Format,
    /// Its tensors in file order.
    pub tensors: Vec<TensorSpec>,
}

impl PlannedFile {
    /// The bytes of its tensors.
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().map(TensorSpec::bytes).sum()
    }
}

/// The weights files of `parts` at `preset`'s sizes, in the order of [`Part::ALL`].
pub fn plan(preset: Preset, parts: &[Part]) -> Result<Vec<PlannedFile>, WeightsError> {
    Part::ALL
        .into_iter()
        .filter(|p| parts.contains(p))
        .map(|part| {
            let (path, format, dtype) = weights_file(preset, part);
            let tensors =
                part_keys(preset, part)?.into_iter().map(|(key, shape)| TensorSpec { key, shape, dtype }).collect();
            Ok(PlannedFile { part, path, format, tensors })
        })
        .collect()
}

/// Why a random-weight set could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitRandomError {
    /// A model's keys could not be listed (a loader that does not fit its own config).
    #[error("cannot list the keys of the models")]
    Keys(#[from] WeightsError),
    /// A weights file could not be written.
    #[error(transparent)]
    Weights(#[from] WriteError),
    /// A folder or another file could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Write random-weight checkpoints of `parts` at `preset`'s sizes, with the real key names and
/// (for [`Preset::Real`]) the release's file layout, formats and dtypes, into `dir`: one tensor
/// at a time, so a 10B model needs no more memory than a few chunks. `seed` makes the values;
/// `fill` may instead lay the files out as sparse zeros (see [`Fill::Zeros`]). `written` hears of
/// each file once it is complete. Returns the files written.
pub fn init_random(
    dir: &Path,
    preset: Preset,
    parts: &[Part],
    fill: Fill,
    mut written: impl FnMut(&Path),
) -> Result<Vec<PathBuf>, InitRandomError> {
    let create = |path: &Path| {
        let folder = path.parent().unwrap_or(path);
        std::fs::create_dir_all(folder).map_err(|source| InitRandomError::Write { path: folder.into(), source })
    };
    let mut files = Vec::new();
    for (i, file) in plan(preset, parts)?.into_iter().enumerate() {
        let path = dir.join(file.path);
        create(&path)?;
        let fill = match fill {
            Fill::Random { seed } => Fill::Random { seed: seed.wrapping_add(i as u64) },
            Fill::Zeros => Fill::Zeros,
        };
        for f in write_checkpoint(&path, file.format, &file.tensors, fill)? {
            written(&f);
            files.push(f);
        }
        for (name, bytes) in other_files(preset, file.part) {
            let path = dir.join(name);
            if files.contains(&path) {
                continue;
            }
            create(&path)?;
            std::fs::write(&path, bytes).map_err(|source| InitRandomError::Write { path: path.clone(), source })?;
            written(&path);
            files.push(path);
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use candle_core::Device;

    use super::*;
    use crate::weights::Checkpoint;

    /// The tiny adapter holds the 10 targets of every block of the tiny DiT, and merges into it.
    #[test]
    fn tiny_lora_covers_every_target_and_loads() {
        let config = tiny::wan_dit();
        let keys = model_keys(|c| WanDit::load(c, &config, None)).unwrap();
        let lora = lora_keys(&keys, &tiny::enhancer_lora());
        assert_eq!(lora.len(), 2 * 10 * config.num_layers);
        assert!(lora.iter().any(|(k, s)| k == "pipe.dit.blocks.1.ffn.2.lora_B.default.weight" && s == &[64, 8]));
        let random = |keys| crate::random::random_checkpoint(keys, DType::F32, &Device::Cpu, &Device::Cpu).unwrap();
        let (base, adapter) = (random(&keys), random(&lora));
        let lora = crate::lora::Lora::new(&adapter, &tiny::enhancer_lora());
        WanDit::load(&base, &config, Some(lora)).unwrap();
    }

    /// The tiny set is exactly the files of `tiny`'s table, and the tiny T5 reads its tokenizer.
    #[test]
    fn tiny_set_writes_the_table() {
        let dir = tempfile::tempdir().unwrap();
        let mut written = init_random(dir.path(), Preset::Tiny, &Part::ALL, Fill::Random { seed: 0 }, |_| {}).unwrap();
        let mut expected: Vec<PathBuf> = tiny::FILES.iter().map(|f| dir.path().join(f)).collect();
        written.sort();
        expected.sort();
        assert_eq!(written, expected);
        crate::t5::T5Tokenizer::from_file(&dir.path().join(tiny::T5_TOKENIZER), tiny::t5().max_length).unwrap();
    }

    /// The same seed gives the same bytes, another seed others.
    #[test]
    fn values_follow_the_seed() {
        let write = |seed| {
            let dir = tempfile::tempdir().unwrap();
            init_random(dir.path(), Preset::Tiny, &[Part::Aesthetic], Fill::Random { seed }, |_| {}).unwrap();
            std::fs::read(dir.path().join(tiny::AESTHETIC_MLP)).unwrap()
        };
        assert_eq!(write(1), write(1));
        assert_ne!(write(1), write(2));
    }

    /// `--models` names parse, and an unknown one lists the known ones.
    #[test]
    fn part_names_round_trip() {
        for part in Part::ALL {
            assert_eq!(part.name().parse::<Part>().unwrap(), part);
        }
        let e = "unet".parse::<Part>().unwrap_err();
        assert!(e.contains("enhancer-lora"), "{e}");
    }

    /// A real-size `.pth` (the aesthetic head) written with random values loads through the
    /// normal path and holds values of the rule's spread.
    #[test]
    fn real_aesthetic_head_loads() {
        let dir = tempfile::tempdir().unwrap();
        let files =
            init_random(dir.path(), Preset::Real, &[Part::Aesthetic], Fill::Random { seed: 3 }, |_| {}).unwrap();
        let checkpoint = Checkpoint::open(&files[0], DType::F32, &Device::Cpu).unwrap();
        AestheticMlp::load(&checkpoint, &Preset::Real.aesthetic()).unwrap();
        let w = checkpoint.get("layers.0.weight", &[1024, 768]).unwrap();
        let max = w.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        // Uniform with std 1/sqrt(768): bounded by sqrt(3/768) = 0.0625.
        assert!(max > 0.05 && max < 0.0626, "{max}");
    }
}

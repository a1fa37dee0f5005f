//! The `mugv-megatron` dataset layout, what the MUG-V Megatron trainer reads:
//! `latents/<id>.pt` (float32 `[24, T, H, W]`), `text_features/<id>_text.pt` (dict `y` float32
//! `[1, 1, L, d]`, `mask` bool `[1, L]`) and `train.csv` (`sample_id,source,latent_path,
//! text_feat_path`, relative paths, sorted ids that have both files). Each shard also keeps its
//! metadata table and error table, as in the native layout.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pipeline::format::NativeShardWriter;
use pipeline::journal::ShardEntry;
use pipeline::torch_pt::{dict_pt, tensor_pt};
use pipeline::{ErrorRecord, Item, PipelineError, ShardFiles, ShardSink, Sink, StageError, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::export_clips::safe_name;

/// What the trainer's `source` column says about the latents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum SampleSource {
    /// Real videos (the trainer's default). Note: the trainer normalises `real` latents with the
    /// VAE's shift/scale again at read time, although `vae_encode` (like the reference script)
    /// already wrote them normalised; MUG-V's own preparation scripts behave the same way.
    #[default]
    Real,
    /// Generated videos (the trainer reads their latents as they are).
    Generated,
}

impl SampleSource {
    fn name(self) -> &'static str {
        match self {
            SampleSource::Real => "real",
            SampleSource::Generated => "generated",
        }
    }
}

/// The sink writing the `mugv-megatron` layout.
pub struct MegatronSink {
    /// `source` column of train.csv.
    pub source: SampleSource,
}

/// File names of a sample in the layout.
fn latent_name(sample: &str) -> String {
    format!("latents/{sample}.pt")
}
fn text_name(sample: &str) -> String {
    format!("text_features/{sample}_text.pt")
}

impl Sink for MegatronSink {
    fn open_shard(&self, shard: usize, dir: &Path) -> Result<Box<dyn ShardSink>, PipelineError> {
        Ok(Box::new(MegatronShard { native: NativeShardWriter::new(shard, dir)?, dir: dir.to_path_buf() }))
    }

    fn dataset_files(&self, shards: &[ShardEntry]) -> Vec<(String, Vec<u8>)> {
        let files: BTreeSet<&str> = shards.iter().flat_map(|s| s.files.iter().map(String::as_str)).collect();
        let mut csv = String::from("sample_id,source,latent_path,text_feat_path\n");
        let samples = files.iter().filter_map(|f| f.strip_prefix("latents/")?.strip_suffix(".pt"));
        for sample in samples.filter(|s| files.contains(text_name(s).as_str())) {
            csv.push_str(&format!("{sample},{},{},{}\n", self.source.name(), latent_name(sample), text_name(sample)));
        }
        vec![("train.csv".into(), csv.into_bytes())]
    }
}

/// One shard: `.pt` files per item, plus the native metadata and error tables.
struct MegatronShard {
    native: NativeShardWriter,
    dir: PathBuf,
}

impl MegatronShard {
    fn write(&self, name: &str, bytes: Vec<u8>) -> Result<PathBuf, StageError> {
        let path = self.dir.join(name.replace('/', "__"));
        std::fs::write(&path, bytes).map_err(|e| StageError::from(e).context(format!("cannot write {name}")))?;
        Ok(path)
    }
}

/// An item's tensor, or an error saying which stage makes it.
fn take(item: &mut Item, name: &str, stage: &str) -> Result<Tensor, StageError> {
    item.tensors.remove(name).ok_or_else(|| {
        StageError::msg(format!(
            "the mugv-megatron layout needs the `{name}` tensor: put a `{stage}` stage before write"
        ))
    })
}

impl ShardSink for MegatronShard {
    fn add(&mut self, mut item: Item) -> Result<(), StageError> {
        let latent = take(&mut item, "latent", "vae_encode")?;
        let y = take(&mut item, "text_y", "t5_encode")?;
        let mask = take(&mut item, "text_mask", "t5_encode")?;
        let (len, width) = match y.shape[..] {
            [l, d] => (l, d),
            _ => return Err(StageError::msg(format!("`text_y` has shape {:?}, expected [L, d]", y.shape))),
        };
        // The trainer's shapes: y [1, 1, L, d] and mask [1, L]; the bytes stay as they are.
        let y = Tensor { shape: vec![1, 1, len, width], ..y };
        let mask = Tensor { shape: vec![1, mask.shape.iter().product()], ..mask };
        let sample = safe_name(&item.id);
        let (latent_file, text_file) = (latent_name(&sample), text_name(&sample));
        let latent_path = self.write(&latent_file, tensor_pt(&latent)?)?;
        let text_path = self.write(&text_file, dict_pt(&[("y", &y), ("mask", &mask)])?)?;
        item.set("sample_id", sample);
        item.set("latent_path", latent_file.as_str());
        item.set("text_feat_path", text_file.as_str());
        item.files.insert(latent_file, latent_path);
        item.files.insert(text_file, text_path);
        self.native.add(item)
    }

    fn finish(self: Box<Self>, errors: &[ErrorRecord]) -> Result<ShardFiles, PipelineError> {
        Box::new(self.native).finish(errors)
    }
}

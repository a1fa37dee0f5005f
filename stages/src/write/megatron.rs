//! The `mugv-megatron` dataset layout, what the MUG-V Megatron trainer reads:
//! `latents/<attempt>/<id>.pt` (float32 `[24, T, H, W]`), `text_features/<attempt>/<id>_text.pt`
//! (dict `y` float32 `[1, 1, L, d]`, `mask` bool `[1, L]`) and `train.csv` (`sample_id,source,
//! latent_path,text_feat_path`, relative paths, the rows of the latest dataset version that have
//! both files). Each shard also keeps its metadata table and error table, as in the native layout.
//! The `<attempt>` folder (see `pipeline::names`) keeps every run's files apart, so a new version
//! never overwrites the files of the previous one.

use std::collections::BTreeSet;
use std::path::PathBuf;

use pipeline::format::NativeShardWriter;
use pipeline::journal::ShardEntry;
use pipeline::torch_pt::{dict_pt, tensor_pt};
use pipeline::{ErrorRecord, Item, PipelineError, ShardFiles, ShardSink, Sink, StageError, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use pipeline::names::file_stem;
use pipeline::ShardTarget;

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

/// Folders and suffixes of a sample's two files in the layout.
const LATENTS: (&str, &str) = ("latents", ".pt");
const TEXT: (&str, &str) = ("text_features", "_text.pt");

impl Sink for MegatronSink {
    fn open_shard(&self, target: &ShardTarget) -> Result<Box<dyn ShardSink>, PipelineError> {
        Ok(Box::new(MegatronShard { native: NativeShardWriter::new(target)?, target: target.clone() }))
    }

    fn dataset_files(&self, shards: &[ShardEntry]) -> Vec<(String, Vec<u8>)> {
        let files: BTreeSet<&str> = shards.iter().flat_map(|s| s.files.iter().map(String::as_str)).collect();
        let mut rows: Vec<(&str, &str, String)> = files
            .iter()
            .filter_map(|f| {
                // latents/<attempt>/<sample>.pt pairs with text_features/<attempt>/<sample>_text.pt.
                let stem = f.strip_prefix(&format!("{}/", LATENTS.0))?.strip_suffix(LATENTS.1)?;
                let text = format!("{}/{stem}{}", TEXT.0, TEXT.1);
                let sample = stem.rsplit_once('/').map_or(stem, |(_, s)| s);
                files.contains(text.as_str()).then_some((sample, *f, text))
            })
            .collect();
        rows.sort();
        let mut csv = String::from("sample_id,source,latent_path,text_feat_path\n");
        for (sample, latent, text) in rows {
            csv.push_str(&format!("{sample},{},{latent},{text}\n", self.source.name()));
        }
        vec![("train.csv".into(), csv.into_bytes())]
    }
}

/// One shard: `.pt` files per item, plus the native metadata and error tables.
struct MegatronShard {
    native: NativeShardWriter,
    target: ShardTarget,
}

impl MegatronShard {
    fn write(&self, name: &str, bytes: Vec<u8>) -> Result<PathBuf, StageError> {
        let path = self.target.dir.join(name.replace('/', "__"));
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
        let sample = file_stem(&item.id);
        let latent_file = self.target.item_file(LATENTS.0, &item.id, LATENTS.1);
        let text_file = self.target.item_file(TEXT.0, &item.id, TEXT.1);
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

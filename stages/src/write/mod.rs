//! `write`: the sink that stores each shard in the chosen dataset layout.

pub mod megatron;

use std::sync::Arc;

use pipeline::format::NativeShardWriter;
use pipeline::{Field, FieldType, PipelineError, Runnable, ShardSink, ShardTarget, Sink, StageConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use megatron::{MegatronSink, SampleSource};

/// Write each shard: a Parquet table of all metadata fields (one row per item), an error table,
/// the dataset's index.json, and the tensors in the chosen layout: one safetensors file per shard
/// (keyed `<item_id>/<name>`), or the MUG-V Megatron trainer's `.pt` files and `train.csv`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteConfig {
    /// Dataset layout to write.
    #[serde(default)]
    pub format: WriteFormat,
    /// mugv-megatron only: the `source` column of train.csv ("real" or "generated").
    #[serde(default)]
    pub source: SampleSource,
}

/// Dataset layouts `write` can produce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WriteFormat {
    /// mugflow's native shards: Parquet + safetensors + index.json.
    #[default]
    Mugflow,
    /// The MUG-V Megatron trainer's layout: `latents/<attempt>/<id>.pt`,
    /// `text_features/<attempt>/<id>_text.pt`,
    /// `train.csv` (needs `vae_encode` and `t5_encode` upstream).
    MugvMegatron,
}

struct NativeSink;

impl Sink for NativeSink {
    fn open_shard(&self, target: &ShardTarget) -> Result<Box<dyn ShardSink>, PipelineError> {
        Ok(Box::new(NativeShardWriter::new(target)?))
    }
}

impl StageConfig for WriteConfig {
    const KIND: &'static str = "write";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"write\"\nformat = \"mugflow\"\n";
    const SINK: bool = true;

    fn reads(&self) -> Vec<Field> {
        match self.format {
            WriteFormat::Mugflow => Vec::new(),
            WriteFormat::MugvMegatron => vec![
                Field::new("latent", FieldType::Tensor, "VAE latent [24, T, H, W]"),
                Field::new("text_y", FieldType::Tensor, "T5 states [L, d]"),
                Field::new("text_mask", FieldType::Tensor, "T5 mask [L]"),
            ],
        }
    }

    fn adds(&self) -> Vec<Field> {
        Vec::new()
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        match self.format {
            WriteFormat::Mugflow => Ok(Runnable::Sink(Arc::new(NativeSink))),
            WriteFormat::MugvMegatron => Ok(Runnable::Sink(Arc::new(MegatronSink { source: self.source }))),
        }
    }
}

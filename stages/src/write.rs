//! `write`: the sink that stores each shard in the chosen dataset layout.

use std::path::Path;
use std::sync::Arc;

use pipeline::format::NativeShardWriter;
use pipeline::{Field, PipelineError, Runnable, ShardSink, Sink, StageConfig};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Write each shard: a Parquet table of all metadata fields (one row per item), a safetensors
/// file of all tensors (keyed `<item_id>/<name>`), an error table, and the dataset's index.json.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteConfig {
    /// Dataset layout to write.
    #[serde(default)]
    pub format: WriteFormat,
}

/// Dataset layouts `write` can produce.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum WriteFormat {
    /// mugflow's native shards: Parquet + safetensors + index.json.
    #[default]
    Mugflow,
}

struct NativeSink;

impl Sink for NativeSink {
    fn open_shard(&self, shard: usize, dir: &Path) -> Result<Box<dyn ShardSink>, PipelineError> {
        Ok(Box::new(NativeShardWriter::new(shard, dir)?))
    }
}

impl StageConfig for WriteConfig {
    const KIND: &'static str = "write";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"write\"\nformat = \"mugflow\"\n";
    const SINK: bool = true;

    fn reads(&self) -> Vec<Field> {
        Vec::new()
    }

    fn adds(&self) -> Vec<Field> {
        Vec::new()
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, String> {
        match self.format {
            WriteFormat::Mugflow => Ok(Runnable::Sink(Arc::new(NativeSink))),
        }
    }
}

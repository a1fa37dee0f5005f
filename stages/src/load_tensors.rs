//! `load_tensors`: bring tensors of an input dataset's items back into the items, byte for byte,
//! so a new dataset version can reuse them (e.g. text features when only the VAE changed).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use pipeline::format::TensorFiles;
use pipeline::input::DATASET_TENSORS;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Load the named tensors of each item from the shard it was read from (the job's input is
/// `{ dataset = "..." }`), reading only their byte ranges. Missing tensors are item errors.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadTensorsConfig {
    /// Tensor names to load, e.g. ["text_y", "text_mask"].
    pub tensors: Vec<String>,
}

struct LoadTensors {
    names: Vec<String>,
    files: TensorFiles,
}

#[async_trait]
impl Stage for LoadTensors {
    async fn process(&self, mut item: Item, _: &StageContext) -> Result<Vec<Item>, StageError> {
        let url = item
            .get(DATASET_TENSORS)
            .and_then(pipeline::Value::as_str)
            .ok_or_else(|| StageError::msg("the item's shard has no tensors file (is job.input a dataset?)"))?
            .to_string();
        let mut loaded = BTreeMap::new();
        for t in &self.names {
            loaded.insert(t.clone(), self.files.read(&url, &format!("{}/{t}", item.id)).await?);
        }
        item.tensors.extend(loaded);
        item.fields.remove(DATASET_TENSORS);
        Ok(vec![item])
    }
}

impl StageConfig for LoadTensorsConfig {
    const KIND: &'static str = "load_tensors";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"load_tensors\"\ntensors = [\"text_y\", \"text_mask\"]\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new(DATASET_TENSORS, FieldType::Str, "the input dataset's tensors file of this item")]
    }

    fn adds(&self) -> Vec<Field> {
        // Names are chosen by the manifest, so the field docs are generic.
        self.tensors.iter().map(|t| Field::new(t.clone(), FieldType::Tensor, "tensor from the input dataset")).collect()
    }

    fn check(&self) -> Vec<String> {
        if self.tensors.is_empty() {
            vec!["tensors must name at least one tensor".into()]
        } else {
            Vec::new()
        }
    }

    fn default_parallelism(&self) -> usize {
        8
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Ok(Runnable::Transform(Arc::new(LoadTensors { names: self.tensors.clone(), files: TensorFiles::default() })))
    }
}

//! `load_tensors`: bring tensors of an input dataset's items back into the items, byte for byte,
//! so a new dataset version can reuse them (e.g. text features when only the VAE changed).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use pipeline::input::DATASET_TENSORS;
use pipeline::io::Location;
use pipeline::{DType, Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError, Tensor};
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

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// A shard's tensor directory: where each tensor's bytes start and end in the file.
struct Header {
    data_start: u64,
    entries: HashMap<String, Entry>,
}

struct LoadTensors {
    names: Vec<String>,
    headers: Mutex<HashMap<String, Arc<Header>>>,
}

/// The folder and file name of a URL or path.
fn split(url: &str) -> (&str, &str) {
    url.rsplit_once('/').unwrap_or((".", url))
}

fn dtype(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        "I64" => DType::I64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        _ => return None,
    })
}

impl LoadTensors {
    /// The header of `url`, read once per file.
    async fn header(&self, url: &str) -> Result<Arc<Header>, StageError> {
        if let Some(h) = self.headers.lock().map_err(|_| StageError::msg("header cache poisoned"))?.get(url) {
            return Ok(h.clone());
        }
        let (dir, name) = split(url);
        let loc = Location::parse(dir)?;
        let len = loc.read_range(name, 0..8).await?;
        let n = u64::from_le_bytes(len[..].try_into().map_err(|_| StageError::msg(format!("{url} is too short")))?);
        let json = loc.read_range(name, 8..8 + n).await?;
        let mut entries: HashMap<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| StageError::msg(format!("{url}: not a safetensors header: {e}")))?;
        entries.remove("__metadata__");
        let entries = entries
            .into_iter()
            .map(|(k, v)| serde_json::from_value(v).map(|e| (k, e)))
            .collect::<Result<HashMap<String, Entry>, _>>()
            .map_err(|e| StageError::msg(format!("{url}: bad tensor entry: {e}")))?;
        let header = Arc::new(Header { data_start: 8 + n, entries });
        self.headers
            .lock()
            .map_err(|_| StageError::msg("header cache poisoned"))?
            .insert(url.to_string(), header.clone());
        Ok(header)
    }
}

#[async_trait]
impl Stage for LoadTensors {
    async fn process(&self, mut item: Item, _: &StageContext) -> Result<Vec<Item>, StageError> {
        let url = item
            .get(DATASET_TENSORS)
            .and_then(pipeline::Value::as_str)
            .ok_or_else(|| StageError::msg("the item's shard has no tensors file (is job.input a dataset?)"))?
            .to_string();
        let header = self.header(&url).await?;
        let (dir, name) = split(&url);
        let loc = Location::parse(dir)?;
        let mut loaded = BTreeMap::new();
        for t in &self.names {
            let key = format!("{}/{t}", item.id);
            let e = header.entries.get(&key).ok_or_else(|| StageError::msg(format!("{url} has no tensor `{key}`")))?;
            let ty =
                dtype(&e.dtype).ok_or_else(|| StageError::msg(format!("`{key}`: unsupported dtype {}", e.dtype)))?;
            let [a, b] = e.data_offsets;
            let bytes = loc.read_range(name, header.data_start + a..header.data_start + b).await?;
            let tensor = Tensor::new(ty, e.shape.clone(), bytes)
                .ok_or_else(|| StageError::msg(format!("`{key}`: byte length does not match its shape")))?;
            loaded.insert(t.clone(), tensor);
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
        Ok(Runnable::Transform(Arc::new(LoadTensors { names: self.tensors.clone(), headers: Mutex::default() })))
    }
}

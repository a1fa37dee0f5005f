//! `t5_encode`: each item's caption through the T5-v1.1 encoder into text states `[L, d]` and a
//! mask `[L]`, the conditioning MUG-V trains on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use candle_core::{Device, Tensor};
use models::t5::{T5Encoder, T5Tokenizer};
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use crate::checkpoints::{default_device, load_error, to_payload, ModelPreset, ModelThread, Placement, Precision};

/// Encode each item's caption with T5-v1.1 as MUG-V does (300 tokens, `</s>` last, right
/// padding): tensors `text_y` `[300, 4096]` (f32) and `text_mask` `[300]` (bool). The caption is
/// the item's `caption` field, or comes from the `captions` table by item id (then by the source
/// video's id, for captions written per video).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct T5EncodeConfig {
    /// T5 encoder checkpoint (HF `DeepFloyd/t5-v1_1-xxl` safetensors, a sharded folder, or .bin).
    pub checkpoint: PathBuf,
    /// The T5 tokenizer as a HF `tokenizer.json`.
    pub tokenizer: PathBuf,
    /// Model sizes: "real" (XXL) or "tiny" (`mugflow models init-tiny`).
    #[serde(default)]
    pub preset: ModelPreset,
    /// A CSV or Parquet table of captions; unset reads each item's `caption` field.
    pub captions: Option<String>,
    /// Column of `captions` holding the item id.
    #[serde(default = "default_id_column")]
    pub id_column: String,
    /// Column of `captions` holding the text.
    #[serde(default = "default_text_column")]
    pub text_column: String,
    /// Append `" aesthetic score: X.X."` from the item's `aesthetic_score`, as MUG-V's prompts do.
    #[serde(default)]
    pub aesthetic_suffix: bool,
    /// "cpu", "cuda" or "cuda:N".
    #[serde(default = "default_device")]
    pub device: String,
    /// Precision: "f32", "bf16" (GPUs) or "f16". The reference runs T5 in f32.
    #[serde(default)]
    pub dtype: Precision,
}

fn default_id_column() -> String {
    "id".into()
}
fn default_text_column() -> String {
    "text".into()
}

/// The runnable stage; cheap to clone into a worker thread.
#[derive(Clone)]
struct T5Encode {
    config: Arc<T5EncodeConfig>,
    encoder: Arc<T5Encoder>,
    tokenizer: Arc<T5Tokenizer>,
    captions: Arc<OnceCell<BTreeMap<String, String>>>,
    device: Device,
    thread: ModelThread,
}

impl T5Encode {
    /// The item's caption, with the aesthetic suffix if asked for.
    async fn caption(&self, item: &Item) -> Result<String, StageError> {
        let text = match &self.config.captions {
            None => item
                .get("caption")
                .and_then(pipeline::Value::as_str)
                .ok_or_else(|| StageError::msg("item has no `caption` field; set `captions` to a table of captions"))?
                .to_string(),
            Some(table) => {
                let c = &self.config;
                let captions = self
                    .captions
                    .get_or_try_init(|| pipeline::input::read_text_table(table, &c.id_column, &c.text_column))
                    .await?;
                let source = item.get("source_id").and_then(pipeline::Value::as_str);
                captions
                    .get(&item.id)
                    .or_else(|| source.and_then(|s| captions.get(s)))
                    .ok_or_else(|| StageError::msg(format!("{table} has no caption for `{}`", item.id)))?
                    .clone()
            }
        };
        if text.trim().is_empty() {
            return Err(StageError::msg("the caption is empty"));
        }
        if !self.config.aesthetic_suffix {
            return Ok(text);
        }
        let score = item.get("aesthetic_score").and_then(pipeline::Value::as_f64).ok_or_else(|| {
            StageError::msg("`aesthetic_suffix` needs `aesthetic_score`: put an `aesthetic` stage before t5_encode")
        })?;
        Ok(format!("{text} aesthetic score: {score:.1}."))
    }

    /// Tokenize and encode one text: states `[L, d]` and the mask as 0/1 bytes.
    fn encode(&self, text: &str) -> Result<(Tensor, Vec<u8>), StageError> {
        let (ids, mask) = self.tokenizer.encode(text).map_err(|e| StageError::msg(format!("tokenizer: {e}")))?;
        let len = ids.len();
        let run = || -> candle_core::Result<Tensor> {
            let ids = Tensor::from_vec(ids, (1, len), &self.device)?;
            let m = Tensor::from_vec(mask.clone(), (1, len), &self.device)?;
            self.encoder.forward(&ids, &m)?.squeeze(0)
        };
        let y = run().map_err(|e| StageError::from(e).context("T5 encoding failed"))?;
        Ok((y, mask.iter().map(|&m| m as u8).collect()))
    }
}

#[async_trait]
impl Stage for T5Encode {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let text = self.caption(&item).await?;
        let me = self.clone();
        let prompt = text.clone();
        let (y, mask) = self.thread.run(ctx, move || me.encode(&prompt)).await??;
        let tokens = mask.iter().filter(|&&m| m == 1).count();
        let mask = pipeline::Tensor::new(pipeline::DType::Bool, vec![mask.len()], mask.into())
            .ok_or_else(|| StageError::msg("mask payload size mismatch"))?;
        item.tensors.insert("text_y".into(), to_payload(&y)?);
        item.tensors.insert("text_mask".into(), mask);
        item.set("caption", text);
        item.set("text_tokens", tokens as i64);
        Ok(vec![item])
    }
}

impl StageConfig for T5EncodeConfig {
    const KIND: &'static str = "t5_encode";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"t5_encode\"\ncheckpoint = \"models/t5-v1_1-xxl\"\ntokenizer = \"models/t5-v1_1-xxl/tokenizer.json\"\ncaptions = \"captions.csv\"\naesthetic_suffix = true\ndevice = \"cuda:0\"\n";

    fn reads(&self) -> Vec<Field> {
        let mut reads = Vec::new();
        if self.captions.is_none() {
            reads.push(Field::new("caption", FieldType::Str, "the text to encode"));
        }
        if self.aesthetic_suffix {
            reads.push(Field::new("aesthetic_score", FieldType::Float, "score appended to the caption"));
        }
        reads
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("text_y", FieldType::Tensor, "T5 states [300, d_model], f32"),
            Field::new("text_mask", FieldType::Tensor, "T5 token mask [300], bool"),
            Field::new("caption", FieldType::Str, "the text that was encoded"),
            Field::new("text_tokens", FieldType::Int, "tokens in the caption incl. </s>"),
        ]
    }

    fn reusable(&self) -> bool {
        true
    }
    fn checkpoints(&self) -> Vec<PathBuf> {
        vec![self.checkpoint.clone(), self.tokenizer.clone()]
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        let placement = Placement::new(&self.device, self.dtype)?;
        let config = self.preset.sizes().t5();
        let encoder = placement.load(Self::KIND, "checkpoint", &self.checkpoint, |c| T5Encoder::load(c, &config))?;
        let tokenizer =
            T5Tokenizer::from_file(&self.tokenizer, config.max_length).map_err(load_error(Self::KIND, "tokenizer"))?;
        Ok(Runnable::Transform(Arc::new(T5Encode {
            config: Arc::new(self.clone()),
            encoder: Arc::new(encoder),
            tokenizer: Arc::new(tokenizer),
            captions: Arc::default(),
            device: placement.device,
            thread: placement.thread,
        })))
    }
}

//! peft-style LoRA adapters merged into a base model's weights while it loads: for every target
//! linear `X` with `X.lora_A.default.weight` (`[rank, in]`) and `X.lora_B.default.weight`
//! (`[out, rank]`) in the adapter, `W' = W + (alpha / rank) * B A`, which equals peft's unmerged
//! forward. Other adapter tensors under the model's prefix replace the base ones (peft's
//! `X.base_layer.*` names map to `X.*`), as a non-strict `load_state_dict` would.

use std::cell::RefCell;
use std::collections::BTreeSet;

use candle_core::DType;

use crate::weights::{Checkpoint, WeightsError};

/// How an adapter file is read: its rank, its alpha (not stored in peft files) and the prefix of
/// the model's keys in it.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    /// `r`: rows of `lora_A`, columns of `lora_B`.
    pub rank: usize,
    /// `lora_alpha`; the update is scaled by `alpha / rank`.
    pub alpha: f64,
    /// Prefix of the model's keys in the adapter file (MUG-V enhancer: `pipe.dit.`).
    pub prefix: String,
}

impl LoraConfig {
    /// The MUG-V enhancer's adapter (`enhancer/pytorch_model.bin`): rank 256 (`run.sh`), alpha 4
    /// (`predict.py`'s default), keys `pipe.dit.*`.
    pub fn mugv_enhancer() -> LoraConfig {
        LoraConfig { rank: 256, alpha: 4.0, prefix: "pipe.dit.".to_string() }
    }

    /// The tiny adapter of the goldens (`goldens/wan_dit/config.json`, "lora_tiny").
    pub fn golden() -> LoraConfig {
        LoraConfig { rank: 8, ..LoraConfig::mugv_enhancer() }
    }

    /// `alpha / rank`, the factor of the low-rank update.
    pub fn scale(&self) -> f64 {
        self.alpha / self.rank as f64
    }
}

/// An opened adapter that applies itself to base tensors by key and records which of its own
/// keys were used, so that [`Lora::finish`] can name the ones that match nothing.
pub struct Lora<'a> {
    checkpoint: &'a Checkpoint,
    config: LoraConfig,
    used: RefCell<BTreeSet<String>>,
}

/// Suffixes of the two low-rank factors of a target linear `X` (`X.lora_A...`, `X.lora_B...`).
const LORA_A: &str = "lora_A.default.weight";
const LORA_B: &str = "lora_B.default.weight";

impl<'a> Lora<'a> {
    /// An adapter read from `checkpoint` (opened on the base checkpoint's device) as `config` says.
    pub fn new(checkpoint: &'a Checkpoint, config: &LoraConfig) -> Lora<'a> {
        Lora { checkpoint, config: config.clone(), used: RefCell::default() }
    }

    /// The adapter's settings.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    fn has(&self, key: &str) -> bool {
        self.checkpoint.keys().contains(key)
    }

    fn read(&self, key: &str, shape: &[usize]) -> Result<candle_core::Tensor, WeightsError> {
        self.used.borrow_mut().insert(key.to_string());
        self.checkpoint.get(key, shape)
    }

    /// The base model's tensor `key` (e.g. `blocks.0.self_attn.q.weight`) with the adapter
    /// applied: replaced when the adapter holds it (under its own or its `base_layer` name), and
    /// for a 2-D `.weight` of a target linear, plus the scaled low-rank update (computed in f32,
    /// returned in the base tensor's dtype).
    pub fn apply(&self, key: &str, base: candle_core::Tensor) -> Result<candle_core::Tensor, WeightsError> {
        let p = &self.config.prefix;
        let (stem, leaf) = key.rsplit_once('.').unwrap_or(("", key));
        let replaced = [format!("{p}{key}"), format!("{p}{stem}.base_layer.{leaf}")].into_iter().find(|k| self.has(k));
        let base = match replaced {
            Some(k) => self.read(&k, base.dims())?.to_dtype(base.dtype()).map_err(|e| self.error(&k, e))?,
            None => base,
        };
        let (a_key, b_key) = (format!("{p}{stem}.{LORA_A}"), format!("{p}{stem}.{LORA_B}"));
        if leaf != "weight" || !self.has(&a_key) {
            return Ok(base);
        }
        let (out, inp) = base.dims2().map_err(|e| self.error(key, e))?;
        let r = self.config.rank;
        let a = self.read(&a_key, &[r, inp])?;
        let b = self.read(&b_key, &[out, r])?;
        if !self.checkpoint.has_values() {
            // Shapes only (zeros): the update is zero, and the product would cost seconds per
            // layer at the real sizes.
            return Ok(base);
        }
        let merge = || -> candle_core::Result<candle_core::Tensor> {
            let update = b.to_dtype(DType::F32)?.matmul(&a.to_dtype(DType::F32)?)?;
            (base.to_dtype(DType::F32)? + (update * self.config.scale())?)?.to_dtype(base.dtype())
        };
        merge().map_err(|e| self.error(key, e))
    }

    /// Check that every adapter key under the model's prefix was applied (keys of other models
    /// in the same file, such as `pipe.vae.*`, are ignored).
    pub fn finish(self) -> Result<(), WeightsError> {
        let used = self.used.into_inner();
        let prefix = &self.config.prefix;
        // Everything outside the prefix counts as needed, so only unused keys under it are named.
        let needed = self.checkpoint.keys().iter().filter(|k| !k.starts_with(prefix.as_str()) || used.contains(*k));
        self.checkpoint.check(&needed.cloned().collect(), &[])
    }

    fn error(&self, key: &str, source: candle_core::Error) -> WeightsError {
        self.checkpoint.weights().error(key, source)
    }
}

//! Checkpoint loading: `.safetensors` files, sharded safetensors folders with an index JSON, and
//! PyTorch `.pt/.pth` zip pickles, in f32, bf16 or f16. Keys are checked against what a model
//! expects before anything is loaded, so one error names every missing and unexpected key.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Mutex;

use candle_core::{DType, Device, Tensor};

use crate::lora::Lora;

/// Why a checkpoint could not be used.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    /// The file or folder could not be read.
    #[error("cannot read checkpoint {path}: {message}")]
    Read {
        /// The checkpoint path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The checkpoint's keys are not the model's.
    #[error("checkpoint {path} does not fit the model: {}", describe_keys(.missing, .unexpected))]
    Keys {
        /// The checkpoint path.
        path: PathBuf,
        /// Keys the model needs that the checkpoint lacks.
        missing: Vec<String>,
        /// Keys in the checkpoint the model does not use.
        unexpected: Vec<String>,
    },
    /// A tensor has another shape than the model expects.
    #[error("checkpoint {path}: `{key}` has shape {found:?}, the model expects {expected:?}")]
    Shape {
        /// The checkpoint path.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// Its shape in the checkpoint.
        found: Vec<usize>,
        /// The shape the model's config implies.
        expected: Vec<usize>,
    },
    /// A tensor operation failed while loading.
    #[error("checkpoint {path}: `{key}`: {source}")]
    Tensor {
        /// The checkpoint path.
        path: PathBuf,
        /// The tensor's key.
        key: String,
        /// The candle error (boxed: it is large and rare).
        source: Box<candle_core::Error>,
    },
}

fn describe_keys(missing: &[String], unexpected: &[String]) -> String {
    let mut parts = Vec::new();
    if !missing.is_empty() {
        parts.push(format!("{} missing key(s): {}", missing.len(), missing.join(", ")));
    }
    if !unexpected.is_empty() {
        parts.push(format!("{} unexpected key(s): {}", unexpected.len(), unexpected.join(", ")));
    }
    parts.join("; ")
}

/// Where a checkpoint's tensors live.
enum Store {
    Safetensors(candle_core::safetensors::MmapedSafetensors),
    /// A `torch.save` zip, each tensor read from it when asked for.
    Pth(candle_core::pickle::PthTensors),
    /// Tensors already in memory.
    Memory(BTreeMap<String, Tensor>),
    /// The stored shapes only: every read is checked against them and answered with zeros (see
    /// [`Checkpoint::open_shapes`]).
    Shapes(BTreeMap<String, (Vec<usize>, DType)>),
    /// No tensors: every read is answered with zeros and recorded (see [`Checkpoint::dry`]).
    Dry(Mutex<Vec<(String, Vec<usize>)>>),
}

/// An opened checkpoint: its key list, and tensors loaded on demand in the model's dtype.
pub struct Checkpoint {
    path: PathBuf,
    store: Store,
    keys: BTreeSet<String>,
    /// Data type tensors are converted to.
    pub dtype: DType,
    /// Device tensors are loaded onto.
    pub device: Device,
}

impl Checkpoint {
    /// Open a `.safetensors` file, a folder of shards with `*.safetensors.index.json`, or a
    /// `.pt/.pth/.bin` PyTorch pickle.
    pub fn open(path: &Path, dtype: DType, device: &Device) -> Result<Checkpoint, WeightsError> {
        let read = |message: String| WeightsError::Read { path: path.to_path_buf(), message };
        let store = if path.is_dir() {
            let index = std::fs::read_dir(path)
                .map_err(|e| read(e.to_string()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.to_string_lossy().ends_with(".safetensors.index.json"))
                .ok_or_else(|| read("the folder has no *.safetensors.index.json".into()))?;
            let text = std::fs::read_to_string(&index).map_err(|e| read(e.to_string()))?;
            let doc: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| read(format!("{}: {e}", index.display())))?;
            let files: BTreeSet<PathBuf> = doc["weight_map"]
                .as_object()
                .ok_or_else(|| read(format!("{} has no weight_map", index.display())))?
                .values()
                .filter_map(|v| v.as_str().map(|f| path.join(f)))
                .collect();
            let files: Vec<PathBuf> = files.into_iter().collect();
            if let Some(missing) = files.iter().find(|f| !f.is_file()) {
                return Err(read(format!(
                    "{} names the shard {}, which is missing",
                    index.display(),
                    missing.display()
                )));
            }
            // SAFETY: the files are mapped read-only; mugflow never writes checkpoints it reads.
            Store::Safetensors(
                unsafe { candle_core::safetensors::MmapedSafetensors::multi(&files) }
                    .map_err(|e| read(e.to_string()))?,
            )
        } else if path.extension().is_some_and(|e| e == "safetensors") {
            // SAFETY: as above.
            Store::Safetensors(
                unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(|e| read(e.to_string()))?,
            )
        } else {
            // candle's pickle reader panics on some malformed files (an index out of bounds in a
            // tuple): a damaged checkpoint must be an error naming the file, not a crash. Only
            // the pickle is read here; each tensor is read when a model asks for it, so a 20 GB
            // file is never in memory twice.
            let tensors = std::panic::catch_unwind(|| candle_core::pickle::PthTensors::new(path, None))
                .map_err(|panic| {
                    let why = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    read(format!("not a readable PyTorch checkpoint (the pickle reader failed: {why})"))
                })?
                .map_err(|e| read(e.to_string()))?;
            Store::Pth(tensors)
        };
        let keys = match &store {
            Store::Safetensors(st) => st.tensors().into_iter().map(|(k, _)| k).collect(),
            Store::Pth(pth) => pth.tensor_infos().keys().cloned().collect(),
            Store::Memory(_) | Store::Shapes(_) | Store::Dry(_) => BTreeSet::new(),
        };
        Ok(Checkpoint { path: path.to_path_buf(), store, keys, dtype, device: device.clone() })
    }

    /// Open `path` as [`Checkpoint::open`] does, but keep only the stored shapes: a model loads
    /// from it with every key and shape checked and zeros for values, without reading any tensor
    /// data (how a real-size checkpoint is checked against a model in milliseconds).
    pub fn open_shapes(path: &Path, dtype: DType, device: &Device) -> Result<Checkpoint, WeightsError> {
        let file = Checkpoint::open(path, dtype, device)?;
        Ok(Checkpoint { store: Store::Shapes(file.stored()), ..file })
    }

    /// The stored shape and data type of every tensor, from the file's header (no data read).
    pub fn stored(&self) -> BTreeMap<String, (Vec<usize>, DType)> {
        match &self.store {
            Store::Safetensors(st) => st
                .tensors()
                .into_iter()
                // A dtype candle lacks (bool, ints it has no type for) is listed as u8.
                .map(|(k, v)| (k, (v.shape().to_vec(), DType::try_from(v.dtype()).unwrap_or(DType::U8))))
                .collect(),
            Store::Pth(pth) => {
                pth.tensor_infos().iter().map(|(k, i)| (k.clone(), (i.layout.dims().to_vec(), i.dtype))).collect()
            }
            Store::Memory(map) => map.iter().map(|(k, t)| (k.clone(), (t.dims().to_vec(), t.dtype()))).collect(),
            Store::Shapes(map) => map.clone(),
            Store::Dry(_) => BTreeMap::new(),
        }
    }

    /// A checkpoint without tensors that accepts every key, answers each read with zeros and
    /// records it: loading a model from it lists the model's keys and shapes (see
    /// [`Checkpoint::read_keys`]), e.g. to make random-weight checkpoints with the real key names.
    pub fn dry(dtype: DType, device: &Device) -> Checkpoint {
        Checkpoint {
            path: PathBuf::from("(dry run)"),
            store: Store::Dry(Mutex::default()),
            keys: BTreeSet::new(),
            dtype,
            device: device.clone(),
        }
    }

    /// A checkpoint made of tensors already in memory (random weights for benchmarks).
    pub fn from_tensors(name: &str, tensors: BTreeMap<String, Tensor>, dtype: DType, device: &Device) -> Checkpoint {
        let keys = tensors.keys().cloned().collect();
        Checkpoint { path: PathBuf::from(name), store: Store::Memory(tensors), keys, dtype, device: device.clone() }
    }

    /// The keys and shapes read from a [`Checkpoint::dry`] checkpoint, in reading order.
    pub fn read_keys(&self) -> Vec<(String, Vec<usize>)> {
        match &self.store {
            Store::Dry(read) => read.lock().map(|r| r.clone()).unwrap_or_default(),
            _ => Vec::new(),
        }
    }

    /// Whether reads return the stored values (false for [`Checkpoint::open_shapes`] and
    /// [`Checkpoint::dry`], whose reads are zeros).
    pub fn has_values(&self) -> bool {
        !matches!(self.store, Store::Shapes(_) | Store::Dry(_))
    }

    /// Every key in the checkpoint.
    pub fn keys(&self) -> &BTreeSet<String> {
        &self.keys
    }

    /// Check the checkpoint against the keys a model needs: every missing key, and every key
    /// not needed and not under one of the `ignored` prefixes, named in one error.
    pub fn check(&self, needed: &BTreeSet<String>, ignored: &[&str]) -> Result<(), WeightsError> {
        if matches!(self.store, Store::Dry(_)) {
            return Ok(());
        }
        let missing: Vec<String> = needed.difference(&self.keys).cloned().collect();
        let unexpected: Vec<String> =
            self.keys.difference(needed).filter(|k| !ignored.iter().any(|p| k.starts_with(p))).cloned().collect();
        if missing.is_empty() && unexpected.is_empty() {
            return Ok(());
        }
        Err(WeightsError::Keys { path: self.path.clone(), missing, unexpected })
    }

    /// The tensor `key` with shape `shape`, in the checkpoint's dtype converted to `self.dtype`.
    pub fn get(&self, key: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        let err =
            |source| WeightsError::Tensor { path: self.path.clone(), key: key.to_string(), source: Box::new(source) };
        let missing =
            || WeightsError::Keys { path: self.path.clone(), missing: vec![key.to_string()], unexpected: Vec::new() };
        let t = match &self.store {
            Store::Dry(read) => {
                // A poisoned lock only means another loader panicked; the list is still usable.
                read.lock().unwrap_or_else(|p| p.into_inner()).push((key.to_string(), shape.to_vec()));
                // A broadcast zero: no memory, even for the shapes of a 10B model.
                return Tensor::zeros((), self.dtype, &self.device).and_then(|z| z.broadcast_as(shape)).map_err(err);
            }
            Store::Safetensors(st) => st.load(key, &self.device).map_err(err)?,
            Store::Pth(pth) => pth.get(key).map_err(err)?.ok_or_else(missing)?.to_device(&self.device).map_err(err)?,
            Store::Memory(map) => map.get(key).ok_or_else(missing)?.to_device(&self.device).map_err(err)?,
            Store::Shapes(map) => {
                let (stored, _) = map.get(key).ok_or_else(missing)?;
                Tensor::zeros((), self.dtype, &self.device)
                    .and_then(|z| z.broadcast_as(stored.as_slice()))
                    .map_err(err)?
            }
        };
        if t.dims() != shape {
            return Err(WeightsError::Shape {
                path: self.path.clone(),
                key: key.to_string(),
                found: t.dims().to_vec(),
                expected: shape.to_vec(),
            });
        }
        t.to_dtype(self.dtype).map_err(err)
    }
}

impl Checkpoint {
    /// A view of the whole checkpoint that records the keys a model reads while it is built.
    pub fn weights(&self) -> Weights<'_> {
        Weights { checkpoint: self, prefix: String::new(), read: Rc::default(), lora: None }
    }
}

/// A checkpoint seen under a key prefix (`w.pp("encoder").pp(0)` reads `encoder.0.*`) that records
/// every key read, so that [`Weights::finish`] names every missing and unexpected key in one error
/// for models whose key list is easiest to derive by building them. Missing keys load as zeros
/// until then, so building goes on. A view may carry a LoRA adapter merged into every tensor it
/// reads (see [`Weights::with_lora`]).
#[derive(Clone)]
pub struct Weights<'a> {
    checkpoint: &'a Checkpoint,
    prefix: String,
    read: Rc<RefCell<BTreeSet<String>>>,
    lora: Option<&'a Lora<'a>>,
}

impl<'a> Weights<'a> {
    /// The view one level down, under `prefix.name`.
    pub fn pp(&self, name: impl Display) -> Self {
        let prefix = if self.prefix.is_empty() { name.to_string() } else { format!("{}.{name}", self.prefix) };
        Weights { checkpoint: self.checkpoint, prefix, read: self.read.clone(), lora: self.lora }
    }

    /// The same view with `lora` (when given) applied to every tensor read through it and the
    /// views below it, by full key (see [`Lora::apply`]).
    pub fn with_lora(self, lora: Option<&'a Lora<'a>>) -> Self {
        Weights { lora, ..self }
    }

    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// Whether the checkpoint holds `name` under this prefix (for optional tensors).
    pub fn contains(&self, name: &str) -> bool {
        self.checkpoint.keys.contains(&self.key(name))
    }

    /// The tensor `name` under this prefix with shape `shape` (zeros, recorded as missing, when
    /// the checkpoint lacks it), with the view's LoRA adapter applied if it has one.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, WeightsError> {
        let key = self.key(name);
        self.read.borrow_mut().insert(key.clone());
        let c = self.checkpoint;
        let t = if !c.keys.contains(&key) && !matches!(c.store, Store::Dry(_)) {
            Tensor::zeros(shape, c.dtype, &c.device).map_err(|source| WeightsError::Tensor {
                path: c.path.clone(),
                key: key.clone(),
                source: Box::new(source),
            })?
        } else {
            c.get(&key, shape)?
        };
        match self.lora {
            Some(lora) => lora.apply(&key, t),
            None => Ok(t),
        }
    }

    /// A tensor error while preparing `name` under this prefix (e.g. re-laying a weight out).
    pub fn error(&self, name: &str, source: candle_core::Error) -> WeightsError {
        WeightsError::Tensor { path: self.checkpoint.path.clone(), key: self.key(name), source: Box::new(source) }
    }

    /// Check that every key read exists and that every key of the checkpoint was read or lies
    /// under one of the `ignored` prefixes.
    pub fn finish(self, ignored: &[&str]) -> Result<(), WeightsError> {
        let read = self.read.borrow();
        self.checkpoint.check(&read, ignored)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_err(path: &Path) -> String {
        match Checkpoint::open(path, DType::F32, &Device::Cpu) {
            Ok(_) => panic!("{} opened", path.display()),
            Err(e) => e.to_string(),
        }
    }

    /// A truncated or garbled checkpoint, or an index naming a missing shard, is one error that
    /// names the file, never a panic.
    #[test]
    fn damaged_checkpoints_are_one_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let good =
            std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/wan_dit/weights.safetensors")).unwrap();
        let truncated = dir.path().join("model.safetensors");
        std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
        let e = open_err(&truncated);
        assert!(e.starts_with(&format!("cannot read checkpoint {}", truncated.display())), "{e}");

        let pt = dir.path().join("dit.pt");
        std::fs::write(&pt, b"PK\x03\x04 not really a zip of pickles").unwrap();
        let e = open_err(&pt);
        assert!(e.starts_with(&format!("cannot read checkpoint {}", pt.display())), "{e}");

        let sharded = dir.path().join("t5");
        std::fs::create_dir(&sharded).unwrap();
        std::fs::write(sharded.join("model-00001-of-00002.safetensors"), &good).unwrap();
        std::fs::write(
            sharded.join("model.safetensors.index.json"),
            r#"{"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}"#,
        )
        .unwrap();
        let e = open_err(&sharded);
        assert!(
            e.contains("names the shard") && e.contains("model-00002-of-00002.safetensors, which is missing"),
            "{e}"
        );
    }
}

//! What the model stages share: where a model runs (device, dtype, the thread of its calls),
//! which size preset a checkpoint has (the sizes themselves are `models::presets`'), checkpoint
//! and load errors, tensor payload conversion, and the cancellation check of model loops.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use models::presets::Preset;
use models::weights::{Checkpoint, WeightsError};
use pipeline::{BuildError, Job, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Where a model runs and in which precision, resolved once from a stage's `device` and `dtype`
/// keys: the stage's weights and its inputs must share one device handle (two CUDA handles on the
/// same GPU are different devices to candle).
#[derive(Debug, Clone)]
pub struct Placement {
    /// The device.
    pub device: Device,
    /// Precision of weights and activations.
    pub dtype: DType,
    /// Where the model calls of this placement run.
    pub thread: ModelThread,
}

/// Where a stage runs its model calls. On a GPU, one long-lived thread per placement: cuDNN's
/// state (its handle, the convolution algorithms found by timing the candidates, the workspace)
/// lives per thread in `kernels`, so calls handed to whichever pool thread is free paid the search
/// again on every new thread (on the H200 a 720p VAE encode took ~4 s in a run against 2.6 s
/// warm). On the CPU, the rayon pool, whose threads candle's CPU kernels share anyway.
#[derive(Debug, Clone)]
pub enum ModelThread {
    /// The CPU pool, as [`StageContext::cpu`].
    Pool,
    /// The placement's own thread; it ends when the last sender is dropped.
    Own(std::sync::mpsc::Sender<Job>),
}

impl ModelThread {
    /// The thread for models on `device`: the pool on the CPU, a new own thread on a GPU.
    fn for_device(device: &Device) -> Result<ModelThread, BuildError> {
        if device.is_cpu() {
            return Ok(ModelThread::Pool);
        }
        ModelThread::spawn(&format!("mugflow-model-{:?}", device.location()))
    }

    /// A new own thread called `name` (in stack traces and `top -H`).
    pub(crate) fn spawn(name: &str) -> Result<ModelThread, BuildError> {
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || rx.into_iter().for_each(|job| job()))
            .map_err(|e| BuildError::new("cannot start the model thread").with_source(e))?;
        Ok(ModelThread::Own(tx))
    }

    /// Hand `job` to this thread (the pool's: any free pool thread) without waiting for it; a
    /// job sent to a thread that is gone is dropped unrun.
    pub fn send(&self, job: Job) {
        match self {
            ModelThread::Pool => rayon::spawn(job),
            ModelThread::Own(tx) => drop(tx.send(job)),
        }
    }

    /// Run `f` (a model call) on this thread and await it, with the item's cancellation token and
    /// panics as item errors, as [`StageContext::cpu`] does. The models' block loops check the
    /// token ([`models::interrupt`]), so a cancelled call ends within one block.
    pub async fn run<R: Send + 'static>(
        &self,
        ctx: &StageContext,
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, StageError> {
        let f = move || models::interrupt::scope(pipeline::cancel::cancelled, f);
        // A send fails only when the thread is gone; the dropped job then reads as that.
        ctx.run_on(|job| self.send(job), f).await
    }
}

/// The default of every model stage's `device` key.
pub fn default_device() -> String {
    "cpu".into()
}

/// Floating-point precision of a model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// 32-bit float.
    #[default]
    F32,
    /// bfloat16.
    Bf16,
    /// IEEE half.
    F16,
}

impl Placement {
    /// The device named by `device` ("cpu", "cuda", "cuda:N") with `precision`, or why it cannot
    /// be used in this build.
    pub fn new(device: &str, precision: Precision) -> Result<Placement, BuildError> {
        let device = match device {
            "cpu" => Device::Cpu,
            d if d == "cuda" || d.starts_with("cuda:") => {
                let ordinal = d.strip_prefix("cuda:").map_or(Ok(0), str::parse::<usize>).map_err(|_| {
                    BuildError::new(format!("device `{d}`: expected \"cuda:N\" with N a GPU number, e.g. \"cuda:0\""))
                })?;
                models::device::cuda(ordinal).map_err(|e| {
                    BuildError::new(format!(
                        "device `{d}` is not available; use device = \"cpu\" or a CUDA build of mugflow"
                    ))
                    .with_source(e)
                })?
            }
            d => return Err(format!("unknown device `{d}`: use \"cpu\", \"cuda\" or \"cuda:N\"").into()),
        };
        let dtype = match precision {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        };
        if device.is_cpu() && dtype != DType::F32 {
            // candle's CPU backend has no bf16/f16 matrix products.
            let name = if dtype == DType::BF16 { "bf16" } else { "f16" };
            return Err(format!("dtype \"{name}\" runs on GPUs only; on device \"cpu\" use dtype = \"f32\"").into());
        }
        let thread = ModelThread::for_device(&device)?;
        Ok(Placement { device, dtype, thread })
    }

    /// Open the checkpoint that `stage`'s config key `key` names onto this placement; an error
    /// names the stage and the key.
    pub fn open(&self, stage: &str, key: &str, path: &Path) -> Result<Checkpoint, BuildError> {
        if !path.exists() {
            return Err(BuildError::new(format!(
                "{stage} `{key}`: {} does not exist (point it at the checkpoint, or write random weights \
                 with `mugflow models init-random DIR --preset real|tiny`)",
                path.display()
            ))
            .with_key(key));
        }
        Checkpoint::open(path, self.dtype, &self.device).map_err(load_error(stage, key))
    }

    /// Open the checkpoint of `stage`'s key `key` and `load` a model from it: the one way a model
    /// stage reads weights, so every failure names the stage and the key.
    pub fn load<T>(
        &self,
        stage: &str,
        key: &str,
        path: &Path,
        load: impl FnOnce(&Checkpoint) -> Result<T, WeightsError>,
    ) -> Result<T, BuildError> {
        load(&self.open(stage, key, path)?).map_err(load_error(stage, key))
    }
}

/// The error of a model (or tokenizer) that could not be read from the file `stage`'s config key
/// `key` names; the weights error stays its cause.
pub fn load_error(stage: &str, key: &str) -> impl Fn(WeightsError) -> BuildError {
    let (stage, key) = (stage.to_string(), key.to_string());
    move |e| BuildError::new(format!("{stage} `{key}`: cannot load the file it names")).with_key(&key).with_source(e)
}

/// Size presets: the released models, or the tiny random ones of `mugflow models init-tiny`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ModelPreset {
    /// The released model's sizes (MUG-V VideoVAE, T5-v1.1-XXL, CLIP ViT-L/14).
    #[default]
    Real,
    /// The tiny test sizes, for plumbing only: random weights produce meaningless numbers.
    Tiny,
}

impl ModelPreset {
    /// The model sizes of this preset.
    pub fn sizes(self) -> Preset {
        match self {
            ModelPreset::Real => Preset::Real,
            ModelPreset::Tiny => Preset::Tiny,
        }
    }
}

/// A candle tensor as an f32 item payload (what datasets and trainers read).
pub fn to_payload(t: &Tensor) -> Result<pipeline::Tensor, candle_core::Error> {
    let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
    let bytes: Vec<u8> = t.flatten_all()?.to_vec1::<f32>()?.iter().flat_map(|v| v.to_le_bytes()).collect();
    pipeline::Tensor::new(pipeline::DType::F32, t.dims().to_vec(), bytes.into())
        .ok_or_else(|| candle_core::Error::Msg("payload size does not match its shape".into()))
}

/// The progress callback of a model loop (sampling steps, decoded chunks): an error once the
/// item whose work runs on this thread was cancelled (it timed out), which ends the loop, so a
/// timed-out item frees its thread within one step instead of running to the end.
pub fn stop_if_cancelled(_part: &str) -> candle_core::Result<()> {
    pipeline::cancel::check().map_err(candle_core::Error::wrap)
}

/// Test support shared by the model stages' tests.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::Arc;
    use std::time::Duration;

    use pipeline::{Item, Stage, StageContext};

    /// A stage context for one test item, with its own token.
    pub(crate) fn context() -> StageContext {
        StageContext {
            scratch: std::env::temp_dir(),
            attempt: "test".into(),
            cancel: Default::default(),
            drops: Default::default(),
        }
    }

    /// Run `item` through `stage` (whose work would take far longer than a minute), trip the
    /// item's token once the work runs, and assert that the work stops with a cancellation error
    /// within a generous minute (an unchecked loop would run on to its end).
    pub(crate) fn stops_when_cancelled(stage: Arc<dyn Stage>, item: Item) {
        let ctx = context();
        let token = ctx.cancel.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            let _ = tx.send(rt.block_on(stage.process(item, &ctx)).map(|_| ()));
        });
        // Long enough for the work to be inside its model loop (the tiny models load in ms).
        std::thread::sleep(Duration::from_millis(500));
        token.cancel();
        let result =
            rx.recv_timeout(Duration::from_secs(60)).expect("the work did not stop within 60 s of its cancellation");
        let err = result.expect_err("the work cannot have finished its steps");
        assert!(err.causes.iter().any(|c| c.contains("cancelled")), "{err:?}");
    }
}

#[cfg(test)]
mod tests {
    use super::testing::context;
    use super::*;

    #[tokio::test]
    async fn model_calls_run_on_one_thread_and_a_panic_is_an_item_error() {
        let thread = ModelThread::spawn("test-model").unwrap();
        let ctx = context();
        let mut ids = Vec::new();
        for _ in 0..8 {
            ids.push(thread.run(&ctx, || std::thread::current().id()).await.unwrap());
        }
        assert!(ids.iter().all(|id| *id == ids[0]), "every call on the same thread: {ids:?}");
        assert_ne!(ids[0], std::thread::current().id());
        let e = thread.run(&ctx, || -> u8 { panic!("boom") }).await.unwrap_err();
        assert!(e.to_string().contains("panic") && e.to_string().contains("boom"), "{e}");
        assert_eq!(thread.run(&ctx, || 7).await.unwrap(), 7, "the thread outlives a panicking call");
    }

    #[tokio::test]
    async fn a_cancelled_item_never_starts_its_model_call() {
        let thread = ModelThread::spawn("test-model").unwrap();
        let ctx = context();
        ctx.cancel.cancel();
        let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = ran.clone();
        assert!(thread.run(&ctx, move || flag.store(true, std::sync::atomic::Ordering::SeqCst)).await.is_err());
        assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    }
}

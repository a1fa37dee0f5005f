//! What a stage is: a typed config (validated, documented) that builds a runnable operator.
//!
//! A stage's config struct is the single source of truth: serde reads it, schemars describes it
//! for the validator and for `mugflow stages`, and `build()` turns it into the runtime stage.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::cancel::Cancel;
use crate::{BuildError, ErrorRecord, Field, Item, PipelineError, StageError};

/// A transform: takes one item, returns zero (filtered), one, or many (fan-out) items.
#[async_trait]
pub trait Stage: Send + Sync {
    /// Process one item. An `Err` becomes an error record for this item; the run continues.
    async fn process(&self, item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError>;
}

/// The last stage: receives every surviving item of a shard and stages its output files.
pub trait Sink: Send + Sync {
    /// Start writing one shard; files go into `target.dir` (local scratch) until the shard
    /// commits, under output names from `target` (unique to this run attempt).
    fn open_shard(&self, target: &ShardTarget) -> Result<Box<dyn ShardSink>, PipelineError>;

    /// Files that describe the whole dataset for its readers (e.g. a trainer's sample list),
    /// rebuilt from the committed shards' journal entries and written next to index.json after
    /// every commit: `(name relative to the output location, bytes)`.
    fn dataset_files(&self, _shards: &[crate::journal::ShardEntry]) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }
}

/// The writer of one shard.
pub trait ShardSink: Send {
    /// Add an item (its tensors may be spooled to disk right away to free memory).
    fn add(&mut self, item: Item) -> Result<(), StageError>;
    /// Finish the shard: write the error table too and return every file to publish.
    fn finish(self: Box<Self>, errors: &[ErrorRecord]) -> Result<ShardFiles, PipelineError>;
}

/// Where one shard's files go: a local scratch folder until the commit, and output names that
/// contain the run attempt, so that no attempt ever overwrites a file another one committed.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    /// Shard index within the run's plan.
    pub shard: usize,
    /// Local scratch folder of the shard.
    pub dir: PathBuf,
    /// The run attempt (see [`crate::names::attempt_id`]).
    pub attempt: String,
}

impl ShardTarget {
    /// Output folder of the shard's tables and tensor file: `shards/<attempt>`.
    pub fn prefix(&self) -> String {
        format!("shards/{}", self.attempt)
    }

    /// Output name of a per-item file, see [`crate::names::item_file`].
    pub fn item_file(&self, folder: &str, id: &str, suffix: &str) -> String {
        crate::names::item_file(folder, &self.attempt, id, suffix)
    }
}

/// A shard's finished files, staged locally, and what they contain.
#[derive(Debug, Default)]
pub struct ShardFiles {
    /// (local path, name relative to the output location) of each file to publish.
    pub files: Vec<(PathBuf, String)>,
    /// The metadata table's output name.
    pub table: String,
    /// The tensors file's output name, if any item had tensors.
    pub tensor_file: Option<String>,
    /// The error table's output name, if any item failed.
    pub error_file: Option<String>,
    /// (row id, output name) of every per-item file.
    pub row_files: Vec<(String, String)>,
    /// Metadata fields the shard's table holds, with their types.
    pub fields: Vec<(String, crate::FieldType)>,
    /// Tensor names (without the item id prefix) present in the shard.
    pub tensors: Vec<String>,
    /// Items written.
    pub items: usize,
}

/// What `build()` returns: a transform or the sink.
pub enum Runnable {
    /// A stage that maps items to items.
    Transform(Arc<dyn Stage>),
    /// The writer at the end of the pipeline.
    Sink(Arc<dyn Sink>),
}

/// What a stage may use while processing: its scratch directory, the run attempt (for the names
/// of files it publishes), the item's cancellation token and the CPU pool.
#[derive(Debug, Clone)]
pub struct StageContext {
    /// A local directory for temporary files (downloads, spools), removed after the run.
    pub scratch: PathBuf,
    /// The run attempt (see [`crate::names::attempt_id`]).
    pub attempt: String,
    /// Tripped when the item being processed times out; the executor gives every item its own
    /// (see [`crate::cancel`]), and [`StageContext::cpu`] makes it the work's current token.
    pub cancel: Cancel,
    /// Where [`StageContext::dropped`] counts; the executor gives each stage its own.
    pub drops: crate::report::DropCounts,
}

impl StageContext {
    /// Record why this stage drops an item (or one of the clips it would have made), for the
    /// run report's funnel: a short reason in the user's words, e.g. "too short" or "static",
    /// and where a frame of it is, so that the report can show a few.
    pub fn dropped(&self, reason: &str, example: Option<crate::report::DroppedExample>) {
        self.drops.add(reason, example);
    }

    /// Output name of a per-item file this stage publishes, see [`crate::names::item_file`].
    pub fn item_file(&self, folder: &str, id: &str, suffix: &str) -> String {
        crate::names::item_file(folder, &self.attempt, id, suffix)
    }

    /// Run CPU-heavy work on the rayon pool and await it; a panic becomes an item error. The work
    /// runs with the item's token as its current one ([`crate::cancel::check`]), and does not
    /// start at all when the item was cancelled while it waited for a thread.
    pub async fn cpu<R: Send + 'static>(&self, f: impl FnOnce() -> R + Send + 'static) -> Result<R, StageError> {
        self.run_on(rayon::spawn, f).await
    }

    /// [`StageContext::cpu`] on a thread of the caller's choice: `spawn` hands the job to it (a
    /// stage's own long-lived GPU thread, for example). A job `spawn` drops is "the worker thread
    /// stopped".
    pub async fn run_on<R: Send + 'static>(
        &self,
        spawn: impl FnOnce(Job),
        f: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, StageError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let cancel = self.cancel.clone();
        spawn(Box::new(move || {
            if cancel.is_cancelled() {
                return;
            }
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cancel.scope(f)));
            // The receiver is gone only if the item timed out; the result is then not needed.
            let _ = tx.send(r);
        }));
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(panic)) => Err(StageError::msg(panic_error(panic.as_ref()))),
            Err(_) if self.cancel.is_cancelled() => Err(crate::cancel::Cancelled.into()),
            Err(_) => Err(StageError::msg("the worker thread stopped")),
        }
    }
}

/// The item error for a panic caught in a stage's work: "internal error (panic): " and the
/// panic's message (a `&str` or `String` payload; empty for any other).
pub fn panic_error(payload: &(dyn std::any::Any + Send)) -> String {
    let msg =
        payload.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| payload.downcast_ref::<String>().cloned());
    format!("internal error (panic): {}", msg.unwrap_or_default())
}

/// Work handed to a thread by [`StageContext::run_on`].
pub type Job = Box<dyn FnOnce() + Send>;

/// Settings given to `build()`.
#[derive(Debug, Clone)]
pub struct BuildContext {
    /// The job name.
    pub job_name: String,
}

/// A stage's config struct. Implement this, register it, and the stage exists everywhere:
/// manifests, `mugflow validate`, `mugflow stages`, and runs.
pub trait StageConfig: DeserializeOwned + Serialize + JsonSchema + Send + Sync + 'static {
    /// The name users write in `kind = "..."`.
    const KIND: &'static str;
    /// A complete `[[stage]]` example for the docs (tested to validate).
    const EXAMPLE: &'static str;
    /// True for the writer that ends a pipeline.
    const SINK: bool = false;
    /// Fields this stage reads from each item.
    fn reads(&self) -> Vec<Field>;
    /// Fields this stage adds to each item.
    fn adds(&self) -> Vec<Field>;
    /// Items processed concurrently when the manifest sets no `parallelism`.
    fn default_parallelism(&self) -> usize {
        1
    }
    /// Checks that involve several parameters at once; each string is one problem.
    fn check(&self) -> Vec<String> {
        Vec::new()
    }
    /// Model checkpoints the stage reads (files or folders); index.json records each one's path
    /// and sha256 so a dataset says exactly which weights made it.
    fn checkpoints(&self) -> Vec<PathBuf> {
        Vec::new()
    }
    /// True when the stage turns every item into exactly one item with the same id (or an
    /// error), its outputs being its `adds()`: then a later run may carry those outputs over from
    /// the previous dataset version instead of running the stage again (see
    /// `executor::reuse`). A stage that filters or fans out must leave this false.
    fn reusable(&self) -> bool {
        false
    }
    /// The runtime stage; a failure names what failed, the key to blame and its cause.
    fn build(&self, ctx: &BuildContext) -> Result<Runnable, BuildError>;
}

/// A config after validation, with its type erased so the plan can hold any stage.
pub trait ConfiguredStage: Send + Sync {
    /// All parameters, defaults filled in.
    fn params(&self) -> serde_json::Value;
    /// Fields read.
    fn reads(&self) -> Vec<Field>;
    /// Fields added.
    fn adds(&self) -> Vec<Field>;
    /// Default concurrency.
    fn default_parallelism(&self) -> usize;
    /// True for the writer that ends a pipeline.
    fn is_sink(&self) -> bool;
    /// Multi-parameter checks.
    fn check(&self) -> Vec<String>;
    /// Model checkpoints read.
    fn checkpoints(&self) -> Vec<PathBuf>;
    /// Whether its outputs may be carried over from a previous version.
    fn reusable(&self) -> bool;
    /// Build the runtime stage.
    fn build(&self, ctx: &BuildContext) -> Result<Runnable, BuildError>;
}

impl<C: StageConfig> ConfiguredStage for C {
    fn params(&self) -> serde_json::Value {
        // Config structs hold only plain data, which always serializes.
        serde_json::to_value(self).expect("stage configs serialize")
    }
    fn reads(&self) -> Vec<Field> {
        StageConfig::reads(self)
    }
    fn adds(&self) -> Vec<Field> {
        StageConfig::adds(self)
    }
    fn default_parallelism(&self) -> usize {
        StageConfig::default_parallelism(self)
    }
    fn is_sink(&self) -> bool {
        C::SINK
    }
    fn check(&self) -> Vec<String> {
        StageConfig::check(self)
    }
    fn checkpoints(&self) -> Vec<PathBuf> {
        StageConfig::checkpoints(self)
    }
    fn reusable(&self) -> bool {
        StageConfig::reusable(self)
    }
    fn build(&self, ctx: &BuildContext) -> Result<Runnable, BuildError> {
        StageConfig::build(self, ctx)
    }
}

/// A registered stage kind, type-erased: name, docs, schema, and a way to read its config.
pub trait StageKind: Send + Sync {
    /// `kind = "..."` name.
    fn name(&self) -> &'static str;
    /// JSON schema of the config (keys, types, defaults, docs).
    fn schema(&self) -> serde_json::Value;
    /// A `[[stage]]` example.
    fn example(&self) -> &'static str;
    /// Deserialize validated parameters into the config.
    fn configure(&self, params: serde_json::Value) -> Result<Box<dyn ConfiguredStage>, String>;
}

struct Kind<C>(std::marker::PhantomData<fn() -> C>);

impl<C: StageConfig> StageKind for Kind<C> {
    fn name(&self) -> &'static str {
        C::KIND
    }
    fn schema(&self) -> serde_json::Value {
        schemars::schema_for!(C).to_value()
    }
    fn example(&self) -> &'static str {
        C::EXAMPLE
    }
    fn configure(&self, params: serde_json::Value) -> Result<Box<dyn ConfiguredStage>, String> {
        serde_json::from_value::<C>(params).map(|c| Box::new(c) as Box<dyn ConfiguredStage>).map_err(|e| e.to_string())
    }
}

/// Every stage kind a manifest may name.
#[derive(Default)]
pub struct Registry {
    kinds: Vec<Box<dyn StageKind>>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Add a stage kind.
    pub fn register<C: StageConfig>(&mut self) -> &mut Self {
        self.kinds.push(Box::new(Kind::<C>(std::marker::PhantomData)));
        self
    }

    /// Look a kind up by name.
    pub fn get(&self, name: &str) -> Option<&dyn StageKind> {
        self.kinds.iter().find(|k| k.name() == name).map(|k| &**k)
    }

    /// All kinds, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &dyn StageKind> {
        self.kinds.iter().map(|k| &**k)
    }
}

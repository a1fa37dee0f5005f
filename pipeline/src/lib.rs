//! The mugflow engine: manifests, plans, a streaming executor, shards, journal and reports.
//!
//! This crate moves items through stages; it knows nothing about video or models. Stages live
//! in the `stages` crate and register their config types in a [`Registry`].

pub mod attempt;
pub mod budget;
pub mod cancel;
pub mod cluster;
pub mod confine;
mod error;
pub mod executor;
pub mod format;
pub mod input;
pub mod inspect;
pub mod io;
mod item;
pub mod journal;
pub mod lease;
pub mod manifest;
pub mod names;
pub mod plan;
pub mod repair;
pub mod report;
pub mod stage;
pub mod torch_pt;
pub mod upload;
pub mod vacuum;
pub mod version;

pub use error::{BuildError, ErrorRecord, PipelineError, StageError};
pub use executor::{run, RunOptions};
pub use item::{DType, Field, FieldType, Item, MissingField, Tensor, Value};
pub use plan::Plan;
pub use stage::{
    panic_error, BuildContext, Job, Registry, Runnable, ShardFiles, ShardSink, ShardTarget, Sink, Stage, StageConfig,
    StageContext,
};

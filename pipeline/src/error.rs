//! Errors of the engine (job-level) and of stages (item-level).

use std::fmt;

use crate::manifest::Diagnostics;

/// A job-level failure: the run cannot start or must stop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The manifest is invalid; every problem found is listed with its position.
    #[error("{0}")]
    Manifest(#[from] Diagnostics),
    /// An output or input location could not be opened, read or written.
    #[error("storage error at {location}")]
    Storage {
        /// The path or URL involved.
        location: String,
        /// What object_store reported.
        #[source]
        source: object_store::Error,
    },
    /// The input listing could not be read or is inconsistent.
    #[error("cannot list the job's inputs: {0}")]
    Input(String),
    /// A dataset version that was asked for (`--version`, `--diff`, a reused base) is not there.
    #[error("{location} has no version {version}")]
    NoVersion {
        /// The dataset's location.
        location: String,
        /// The version asked for.
        version: u64,
    },
    /// A local file operation failed.
    #[error("{context}")]
    Io {
        /// What we were doing.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A journal entry or version file is unreadable, or disagrees with this job.
    #[error("the journal at {location} does not match this job: {detail}")]
    JournalMismatch {
        /// Output location.
        location: String,
        /// What differs.
        detail: String,
    },
    /// A shard lease file that cannot be read (a truncated write, a disk error).
    #[error("the lease file {location} is unreadable: {detail}")]
    CorruptLease {
        /// The lease file.
        location: String,
        /// The output location it belongs to (for the fix: `mugflow repair OUTPUT`).
        output: String,
        /// Why it cannot be read.
        detail: String,
    },
    /// Another run committed the version this run was about to commit.
    #[error("version {version} of the dataset was committed by another run first ({location})")]
    VersionConflict {
        /// The version file.
        location: String,
        /// The version number both runs built.
        version: u64,
    },
    /// A stage could not be built (model missing, bad device, ...); the causes follow as the
    /// error's source chain.
    #[error(
        "stage {position} (`{kind}`{}) could not start",
        message.key.as_deref().map(|k| format!(", key `{k}`")).unwrap_or_default()
    )]
    Build {
        /// 1-based position in the manifest.
        position: usize,
        /// Stage kind.
        kind: String,
        /// What went wrong, with the manifest key to blame and the underlying cause.
        #[source]
        message: BuildError,
    },
    /// Writing a shard's files failed.
    #[error("cannot write shard {shard}: {message}")]
    Write {
        /// Shard index.
        shard: usize,
        /// What went wrong.
        message: String,
    },
    /// Too many items failed.
    #[error(
        "aborted: {failed} of {finished} finished items failed ({:.1}%), above job.max_error_rate = {max_rate}",
        100.0 * *failed as f64 / *finished as f64
    )]
    ErrorRate {
        /// Items that became error records.
        failed: u64,
        /// Items finished (written, filtered or failed).
        finished: u64,
        /// The configured limit.
        max_rate: f64,
    },
    /// Ctrl-C or SIGTERM: intake stopped, unfinished shards left uncommitted.
    #[error("interrupted by {0}; {1} shard(s) committed, unfinished shards discarded")]
    Interrupted(&'static str, usize),
}

impl PipelineError {
    /// A hint for the user, printed after the error and its causes.
    pub fn hint(&self) -> Option<String> {
        match self {
            PipelineError::ErrorRate { .. } => Some(
                "look at the error tables (`mugflow inspect <output>`); raise job.max_error_rate if failures are expected".into(),
            ),
            PipelineError::Interrupted(..) => Some("run the same command again to resume".into()),
            PipelineError::NoVersion { location, .. } => {
                Some(format!("`mugflow inspect {location}` lists the versions there are"))
            }
            PipelineError::JournalMismatch { .. } => {
                Some("a damaged journal or version file: the message says which file and what to do".into())
            }
            PipelineError::CorruptLease { output, .. } => Some(format!(
                "run `mugflow repair {output}`: it moves the lease aside and its shard is claimed afresh; no committed data is lost"
            )),
            PipelineError::VersionConflict { .. } => Some(
                "two runs wrote to the same output at once; run again: the next run builds on the new version and redoes only what changed".into(),
            ),
            PipelineError::Storage { .. } => Some(
                "check the path or URL; cloud credentials are read from the environment (AWS_*, GOOGLE_*, AZURE_*)".into(),
            ),
            _ => None,
        }
    }

    /// A storage error with its location.
    pub fn storage(location: impl fmt::Display, source: object_store::Error) -> Self {
        PipelineError::Storage { location: location.to_string(), source }
    }

    /// A local I/O error with what we were doing.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        PipelineError::Io { context: context.into(), source }
    }
}

/// Why a stage's `build()` failed (a checkpoint missing, a device not available, a model that does
/// not fit its weights): what failed in the user's words, the manifest key to blame when there is
/// one, and the underlying error kept as a cause rather than flattened into the text.
#[derive(Debug)]
pub struct BuildError {
    /// The stage's manifest key that holds the bad value (`checkpoint`, `device`), when one does.
    pub key: Option<String>,
    /// What failed.
    pub message: String,
    /// The underlying error, rendered as the next link of the cause chain.
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl BuildError {
    /// An error with a message and no key or cause yet.
    pub fn new(message: impl Into<String>) -> Self {
        BuildError { key: None, message: message.into(), source: None }
    }

    /// Name the manifest key whose value is to blame.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Keep `source` as the cause of this error.
    pub fn with_source(mut self, source: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        self.source = Some(source.into());
        self
    }
}

impl From<String> for BuildError {
    fn from(message: String) -> Self {
        BuildError::new(message)
    }
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BuildError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Why one item failed in one stage; becomes a row in the shard's error table.
#[derive(Debug, Clone)]
pub struct StageError {
    /// The top-level message.
    pub message: String,
    /// The cause chain, outermost first.
    pub causes: Vec<String>,
}

impl StageError {
    /// An error from a plain message.
    pub fn msg(message: impl Into<String>) -> Self {
        StageError { message: message.into(), causes: Vec::new() }
    }

    /// Prefix the message with context, keeping the old message as the first cause.
    pub fn context(self, message: impl Into<String>) -> Self {
        let mut causes = vec![self.message];
        causes.extend(self.causes);
        StageError { message: message.into(), causes }
    }
}

impl<E: std::error::Error> From<E> for StageError {
    fn from(e: E) -> Self {
        let mut causes = Vec::new();
        let mut next = e.source();
        while let Some(c) = next {
            causes.push(c.to_string());
            next = c.source();
        }
        StageError { message: e.to_string(), causes }
    }
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

/// One failed item as recorded in the shard's error table.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ErrorRecord {
    /// Id of the item that failed.
    pub item_id: String,
    /// The item's source path or URL.
    pub uri: String,
    /// Stage position and kind, e.g. "2:probe".
    pub stage: String,
    /// The error message.
    pub message: String,
    /// The cause chain joined with " <- ".
    pub causes: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A build failure names the stage, its kind and the key, and keeps every cause as a link of
    /// the chain the CLI prints under `Caused by:`.
    #[test]
    fn build_errors_keep_the_stage_the_key_and_the_cause_chain() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = PipelineError::Build {
            position: 3,
            kind: "vae_encode".into(),
            message: BuildError::new("vae_encode `checkpoint`: cannot load the file it names")
                .with_key("checkpoint")
                .with_source(cause),
        };
        assert_eq!(e.to_string(), "stage 3 (`vae_encode`, key `checkpoint`) could not start");
        let mut chain = Vec::new();
        let mut next = std::error::Error::source(&e);
        while let Some(c) = next {
            chain.push(c.to_string());
            next = c.source();
        }
        assert_eq!(chain, ["vae_encode `checkpoint`: cannot load the file it names", "no such file"]);
        let keyless = PipelineError::Build { position: 1, kind: "probe".into(), message: "bad".to_string().into() };
        assert_eq!(keyless.to_string(), "stage 1 (`probe`) could not start");
    }
}

//! Dataset versions: `_versions/v00001.json`, `v00002.json`, ... each one the complete
//! [`DatasetIndex`] of the dataset after one run (which shards, which tables and files).
//!
//! A version is committed with one conditional create, so of two runs that build on the same
//! version only one can commit the next; a crash leaves either the old or the new version.
//! Versions never change once written; `index.json` at the root mirrors the latest one for
//! readers that only want "the dataset". `mugflow vacuum` deletes old versions and the files
//! that no kept version names.

use object_store::{PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::format::DatasetIndex;
use crate::io::Location;
use crate::PipelineError;

/// Folder of the versions under the output location.
pub const VERSIONS_DIR: &str = "_versions";

/// What a run changed relative to the version it built on, counted in input items.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    /// Ids the previous version did not hold (or held only as failures).
    pub new: usize,
    /// Ids whose content key changed (input fields, input bytes or the pipeline).
    pub changed: usize,
    /// Ids carried over from the previous version without recomputation.
    pub unchanged: usize,
    /// Ids of the previous version absent from the input, dropped from this version.
    pub removed: usize,
    /// Ids absent from the input but kept (`job.on_removed = "keep"`).
    pub kept: usize,
}

impl Changes {
    /// True when the run would produce the same dataset as the previous version.
    pub fn is_empty(&self) -> bool {
        self.new == 0 && self.changed == 0 && self.removed == 0
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} new, {} changed, {} unchanged (carried over), {} removed",
            self.new, self.changed, self.unchanged, self.removed
        )?;
        if self.kept > 0 {
            write!(f, ", {} absent but kept (job.on_removed = \"keep\")", self.kept)?;
        }
        Ok(())
    }
}

/// Name of a version's file.
pub fn version_name(version: u64) -> String {
    format!("{VERSIONS_DIR}/v{version:05}.json")
}

/// Every committed version number, ascending.
pub async fn list(out: &Location) -> Result<Vec<u64>, PipelineError> {
    let mut versions: Vec<u64> = out
        .list(VERSIONS_DIR)
        .await?
        .iter()
        .filter_map(|n| n.strip_prefix(&format!("{VERSIONS_DIR}/v"))?.strip_suffix(".json")?.parse().ok())
        .collect();
    versions.sort_unstable();
    Ok(versions)
}

/// One version's index.
pub async fn load(out: &Location, version: u64) -> Result<DatasetIndex, PipelineError> {
    let name = version_name(version);
    let bytes = out.read_opt(&name).await?.ok_or_else(|| {
        PipelineError::Input(format!("{} has no version {version} (see `mugflow inspect {}`)", out.url, out.url))
    })?;
    serde_json::from_slice(&bytes).map_err(|e| PipelineError::JournalMismatch {
        location: out.url_of(&name),
        detail: format!(
            "unreadable version file ({e}); restore it from a backup or delete it to fall back to the version before"
        ),
    })
}

/// The latest committed version, if the output holds one.
pub async fn latest(out: &Location) -> Result<Option<DatasetIndex>, PipelineError> {
    match list(out).await?.last() {
        Some(v) => Ok(Some(load(out, *v).await?)),
        None => Ok(None),
    }
}

/// Outcome of [`commit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// This call created the version.
    Committed,
    /// The same plan was already committed as this version (another worker of the run did it).
    AlreadyCommitted,
}

/// Commit `index` as version `index.version`: one conditional create. Fails with
/// [`PipelineError::VersionConflict`] when another run committed that version number first.
pub async fn commit(out: &Location, index: &DatasetIndex) -> Result<Commit, PipelineError> {
    let name = version_name(index.version);
    // Plain data always serializes.
    let body = serde_json::to_vec_pretty(index).expect("versions serialize");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match out.store.put_opts(&out.key(&name), body.into(), opts).await {
        Ok(_) => Ok(Commit::Committed),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = load(out, index.version).await?;
            if existing.plan == index.plan {
                Ok(Commit::AlreadyCommitted)
            } else {
                Err(PipelineError::VersionConflict { location: out.url_of(&name), version: index.version })
            }
        }
        Err(e) => Err(PipelineError::storage(out.url_of(&name), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(version: u64, plan: &str) -> DatasetIndex {
        let mut i = DatasetIndex::new("t", Vec::new(), Vec::new());
        i.version = version;
        i.plan = plan.into();
        i
    }

    #[tokio::test]
    async fn one_run_commits_each_version_number() {
        let dir = tempfile::tempdir().unwrap();
        let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert!(latest(&out).await.unwrap().is_none());
        assert_eq!(commit(&out, &index(1, "a")).await.unwrap(), Commit::Committed);
        assert_eq!(commit(&out, &index(1, "a")).await.unwrap(), Commit::AlreadyCommitted);
        assert!(matches!(commit(&out, &index(1, "b")).await, Err(PipelineError::VersionConflict { version: 1, .. })));
        assert_eq!(commit(&out, &index(2, "b")).await.unwrap(), Commit::Committed);
        assert_eq!(list(&out).await.unwrap(), [1, 2]);
        assert_eq!(latest(&out).await.unwrap().unwrap().plan, "b");
    }

    #[test]
    fn changes_read_as_a_sentence() {
        let c = Changes { new: 2, changed: 2, unchanged: 4, removed: 1, kept: 0 };
        assert_eq!(c.to_string(), "2 new, 2 changed, 4 unchanged (carried over), 1 removed");
        assert!(!c.is_empty());
        assert!(Changes { unchanged: 3, ..Default::default() }.is_empty());
    }
}

//! The job journal: one entry per committed shard, created with a conditional put.
//!
//! A shard is committed when its entry exists under `_journal/`. Entries are created with
//! `PutMode::Create`, so the commit point is a single atomic, exclusive write on every backend.

use std::collections::BTreeMap;

use object_store::{PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::Location;
use crate::{FieldType, PipelineError};

/// Folder of the journal under the output location.
pub const JOURNAL_DIR: &str = "_journal";

/// The record of one committed shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// Shard index.
    pub shard: usize,
    /// Hash of the shard's input ids; a re-run with different inputs is detected by it.
    pub fingerprint: String,
    /// Input items in the shard.
    pub inputs: usize,
    /// Items written (after fan-out and filters).
    pub items: usize,
    /// Items that became error records.
    pub errors: usize,
    /// Files of the shard, relative to the output location.
    pub files: Vec<String>,
    /// Metadata fields in the shard's table.
    pub fields: Vec<(String, FieldType)>,
    /// Tensor names in the shard.
    pub tensors: Vec<String>,
    /// When it was committed (RFC 3339, UTC).
    pub committed_at: String,
}

/// Name of a shard's journal entry.
pub fn entry_name(shard: usize) -> String {
    format!("{JOURNAL_DIR}/shard-{shard:05}.json")
}

/// Hash of the ordered input ids of a shard.
pub fn fingerprint<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

/// Every committed shard's entry, by shard index.
pub async fn load(out: &Location) -> Result<BTreeMap<usize, ShardEntry>, PipelineError> {
    let mut entries = BTreeMap::new();
    for name in out.list(JOURNAL_DIR).await? {
        if !name.ends_with(".json") {
            continue;
        }
        let bytes = out.read(&name).await?;
        let entry: ShardEntry = serde_json::from_slice(&bytes).map_err(|e| PipelineError::JournalMismatch {
            location: out.url_of(&name),
            detail: format!("unreadable journal entry: {e}"),
        })?;
        entries.insert(entry.shard, entry);
    }
    Ok(entries)
}

/// Outcome of [`commit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// This call created the entry.
    Committed,
    /// An entry for the same shard and inputs already existed (another worker won the race).
    AlreadyCommitted,
}

/// Record a shard as committed; exactly one caller can create a shard's entry.
pub async fn commit(out: &Location, entry: &ShardEntry) -> Result<Commit, PipelineError> {
    let name = entry_name(entry.shard);
    // Plain data always serializes.
    let body = serde_json::to_vec_pretty(entry).expect("journal entries serialize");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match out.store.put_opts(&out.key(&name), body.into(), opts).await {
        Ok(_) => Ok(Commit::Committed),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing: ShardEntry =
                serde_json::from_slice(&out.read(&name).await?).map_err(|e| PipelineError::JournalMismatch {
                    location: out.url_of(&name),
                    detail: format!("unreadable journal entry: {e}"),
                })?;
            if existing.fingerprint == entry.fingerprint {
                Ok(Commit::AlreadyCommitted)
            } else {
                Err(PipelineError::JournalMismatch {
                    location: out.url_of(&name),
                    detail: format!("shard {} was committed with other inputs", entry.shard),
                })
            }
        }
        Err(e) => Err(PipelineError::storage(out.url_of(&name), e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(shard: usize, fp: &str) -> ShardEntry {
        ShardEntry {
            shard,
            fingerprint: fp.into(),
            inputs: 2,
            items: 2,
            errors: 0,
            files: vec![format!("shard-{shard:05}.parquet")],
            fields: vec![("id".into(), FieldType::Str)],
            tensors: vec![],
            committed_at: "2026-11-24T00:00:00Z".into(),
        }
    }

    /// The same conformance checks on every backend we can run here.
    async fn conformance(out: Location) {
        assert!(load(&out).await.unwrap().is_empty());
        assert_eq!(commit(&out, &entry(1, "aa")).await.unwrap(), Commit::Committed);
        assert_eq!(commit(&out, &entry(1, "aa")).await.unwrap(), Commit::AlreadyCommitted);
        assert!(matches!(commit(&out, &entry(1, "bb")).await, Err(PipelineError::JournalMismatch { .. })));
        assert_eq!(commit(&out, &entry(0, "cc")).await.unwrap(), Commit::Committed);
        let all = load(&out).await.unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(all[&1], entry(1, "aa"));
    }

    #[tokio::test]
    async fn journal_on_memory_store() {
        conformance(Location::parse("memory://journal-test/ds").unwrap()).await;
    }

    #[tokio::test]
    async fn journal_on_local_disk() {
        let dir = tempfile::tempdir().unwrap();
        conformance(Location::parse(dir.path().to_str().unwrap()).unwrap()).await;
    }

    #[test]
    fn fingerprints_depend_on_ids_and_order() {
        assert_eq!(fingerprint(["a", "b"]), fingerprint(["a", "b"]));
        assert_ne!(fingerprint(["a", "b"]), fingerprint(["b", "a"]));
        assert_ne!(fingerprint(["ab"]), fingerprint(["a", "b"]));
    }
}

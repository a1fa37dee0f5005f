//! The job journal: one entry per committed shard of a plan, created with a conditional put.
//!
//! A run works through a *plan* (the new and changed items of one incremental run, cut into
//! shards; see [`crate::executor`]). A shard of a plan is committed when its entry exists under
//! `_journal/<plan>/`. Entries are created with `PutMode::Create`, so the commit point is a single
//! atomic, exclusive write on every backend, and the entry names every file it commits: files
//! that no entry names (a losing or killed attempt's) are never read.

use std::collections::BTreeMap;

use object_store::{PutMode, PutOptions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::Location;
use crate::{FieldType, PipelineError};

/// Folder of the journal under the output location.
pub const JOURNAL_DIR: &str = "_journal";

/// An input item that finished without an error in a committed shard: what it was made from and
/// what it became. The next incremental run carries it over when its content key is unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Done {
    /// The input item's id.
    pub id: String,
    /// Its content key when it was processed (see `executor::incremental`).
    pub key: String,
    /// Its source key: the content key without the pipeline (id, input fields, input bytes).
    /// A later run with other parameters for a late stage carries the outputs of the stages
    /// before it when this is unchanged (see `executor::reuse`). Absent in versions written
    /// before it existed: their items are recomputed whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Ids of the rows it produced; absent when it produced exactly one row with its own id
    /// (the common case, kept short), empty when every row was filtered out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<String>>,
    /// Per-item files of its rows (videos, clips, latents), relative to the output location.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

impl Done {
    /// Ids of the rows this input produced.
    pub fn row_ids(&self) -> Vec<&str> {
        match &self.rows {
            Some(rows) => rows.iter().map(String::as_str).collect(),
            None => vec![self.id.as_str()],
        }
    }
}

/// The record of one committed shard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The plan this shard belongs to.
    pub plan: String,
    /// Shard index within the plan.
    pub shard: usize,
    /// The run attempt that wrote the files (their names contain it).
    pub attempt: String,
    /// Hash of the shard's input ids and content keys.
    pub fingerprint: String,
    /// Input items in the shard.
    pub inputs: usize,
    /// Rows written (after fan-out and filters).
    pub items: usize,
    /// Items that became error records.
    pub errors: usize,
    /// The metadata table (Parquet), relative to the output location.
    pub table: String,
    /// The tensors file (safetensors), if any item had tensors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensor_file: Option<String>,
    /// The error table, if any item failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_file: Option<String>,
    /// Every file of the shard, relative to the output location.
    pub files: Vec<String>,
    /// Metadata fields in the shard's table.
    pub fields: Vec<(String, FieldType)>,
    /// Tensor names in the shard.
    pub tensors: Vec<String>,
    /// When it was committed (RFC 3339, UTC).
    pub committed_at: String,
    /// The input items that finished without an error, with their rows and files.
    pub done: Vec<Done>,
}

/// Name of a shard's journal entry.
pub fn entry_name(plan: &str, shard: usize) -> String {
    format!("{JOURNAL_DIR}/{plan}/shard-{shard:05}.json")
}

/// Hash of the ordered (id, content key) pairs of a shard's inputs.
pub fn fingerprint<'a>(items: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = Sha256::new();
    for (id, key) in items {
        h.update(id.as_bytes());
        h.update([0u8]);
        h.update(key.as_bytes());
        h.update([0u8]);
    }
    hex::encode(&h.finalize()[..16])
}

fn parse(out: &Location, name: &str, bytes: &[u8]) -> Result<ShardEntry, PipelineError> {
    serde_json::from_slice(bytes).map_err(|e| PipelineError::JournalMismatch {
        location: out.url_of(name),
        detail: format!(
            "unreadable journal entry ({e}); run `mugflow repair {}` to move it aside (its shard is redone)",
            out.url
        ),
    })
}

/// Every committed shard's entry of one plan, by shard index.
pub async fn load(out: &Location, plan: &str) -> Result<BTreeMap<usize, ShardEntry>, PipelineError> {
    let mut entries = BTreeMap::new();
    for name in out.list(&format!("{JOURNAL_DIR}/{plan}")).await? {
        if !name.ends_with(".json") {
            continue;
        }
        let entry = parse(out, &name, &out.read(&name).await?)?;
        entries.insert(entry.shard, entry);
    }
    Ok(entries)
}

/// Outcome of [`commit`].
#[derive(Debug, PartialEq, Eq)]
pub enum Commit {
    /// This call created the entry.
    Committed,
    /// Another attempt committed the same shard first; this attempt's files are not used.
    AlreadyCommitted,
}

/// Record a shard as committed; exactly one caller can create a shard's entry. An entry equal to
/// `entry` already there is this commit's own: a put the store applied but whose reply was lost,
/// and which the client retried (its files are the committed ones and must stay).
pub async fn commit(out: &Location, entry: &ShardEntry) -> Result<Commit, PipelineError> {
    let name = entry_name(&entry.plan, entry.shard);
    // Plain data always serializes.
    let body = serde_json::to_vec_pretty(entry).expect("journal entries serialize");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match out.store.put_opts(&out.key(&name), body.into(), opts).await {
        Ok(_) => Ok(Commit::Committed),
        Err(object_store::Error::AlreadyExists { .. }) => {
            let existing = parse(out, &name, &out.read(&name).await?)?;
            if existing == *entry {
                Ok(Commit::Committed)
            } else if existing.fingerprint == entry.fingerprint {
                Ok(Commit::AlreadyCommitted)
            } else {
                Err(PipelineError::JournalMismatch {
                    location: out.url_of(&name),
                    detail: format!("shard {} of plan {} was committed with other inputs", entry.shard, entry.plan),
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
            plan: "p1".into(),
            shard,
            attempt: "a1".into(),
            fingerprint: fp.into(),
            inputs: 2,
            items: 2,
            errors: 0,
            table: format!("shards/a1/shard-{shard:05}.parquet"),
            tensor_file: None,
            error_file: None,
            files: vec![format!("shards/a1/shard-{shard:05}.parquet")],
            fields: vec![("id".into(), FieldType::Str)],
            tensors: vec![],
            committed_at: "2026-11-24T00:00:00Z".into(),
            done: vec![Done { id: "x".into(), key: "k".into(), source: None, rows: None, files: vec![] }],
        }
    }

    /// The same conformance checks on every backend we can run here.
    async fn conformance(out: Location) {
        assert!(load(&out, "p1").await.unwrap().is_empty());
        assert_eq!(commit(&out, &entry(1, "aa")).await.unwrap(), Commit::Committed);
        let other_attempt = ShardEntry { attempt: "a2".into(), ..entry(1, "aa") };
        assert_eq!(commit(&out, &other_attempt).await.unwrap(), Commit::AlreadyCommitted);
        // The same entry again: a put applied whose reply was lost, retried by the client. It is
        // the commit that stands, so its files must not be deleted as a loser's.
        assert_eq!(commit(&out, &entry(1, "aa")).await.unwrap(), Commit::Committed);
        assert!(matches!(commit(&out, &entry(1, "bb")).await, Err(PipelineError::JournalMismatch { .. })));
        assert_eq!(commit(&out, &entry(0, "cc")).await.unwrap(), Commit::Committed);
        let all = load(&out, "p1").await.unwrap();
        assert_eq!(all.keys().copied().collect::<Vec<_>>(), [0, 1]);
        assert_eq!(all[&1], entry(1, "aa"));
        assert!(load(&out, "p2").await.unwrap().is_empty(), "plans do not see each other's shards");
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

    /// A damaged entry (a truncated write, a disk error) stops the load with the file's path and
    /// the fix, instead of being skipped (its shard would look undone) or retried.
    #[tokio::test]
    async fn a_damaged_entry_is_an_error_naming_it_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
        assert_eq!(commit(&out, &entry(0, "aa")).await.unwrap(), Commit::Committed);
        let name = entry_name("p1", 1);
        out.write(&name, &b"{\"plan\": \"p1\", \"sha"[..]).await.unwrap();
        let err = load(&out, "p1").await.unwrap_err().to_string();
        assert!(err.contains(&out.url_of(&name)) && err.contains(&format!("mugflow repair {}", out.url)), "{err}");
    }

    #[test]
    fn fingerprints_depend_on_ids_keys_and_order() {
        assert_eq!(fingerprint([("a", "1"), ("b", "2")]), fingerprint([("a", "1"), ("b", "2")]));
        assert_ne!(fingerprint([("a", "1"), ("b", "2")]), fingerprint([("b", "2"), ("a", "1")]));
        assert_ne!(fingerprint([("a", "1")]), fingerprint([("a", "2")]));
    }

    #[test]
    fn a_single_row_input_is_stored_short() {
        let d = Done { id: "x".into(), key: "k".into(), source: None, rows: None, files: vec![] };
        assert_eq!(serde_json::to_string(&d).unwrap(), r#"{"id":"x","key":"k"}"#);
        assert_eq!(d.row_ids(), ["x"]);
    }
}

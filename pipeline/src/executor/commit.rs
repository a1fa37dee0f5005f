//! The commit protocol: how a shard and a dataset version become durable, and why nothing
//! committed is ever overwritten.
//!
//! 1. **Names.** Every file a run publishes has the run's attempt id in its name
//!    (`shards/<attempt>/shard-00003.parquet`, `videos/<attempt>/<id>.mp4`), so two attempts at
//!    the same shard (a worker that lost its lease, a requeued task) never write the same name.
//! 2. **Shard commit.** The shard's files are finished in local scratch, each uploaded with an
//!    atomic put (a large one to an object store: a multipart upload on record, see
//!    [`crate::upload`]; on local disk, fsynced with their folders), then the journal entry `_journal/<plan>/shard-XXXXX.json` is created with a
//!    conditional put. The entry names its files and the input items it finished. An attempt
//!    that loses the race deletes its own uploads; files no entry names are never read (and
//!    `mugflow vacuum` removes what a killed attempt left).
//! 3. **Version commit.** Once every shard of the plan has an entry, the worker that sees it
//!    writes the new version `_versions/vNNNNN.json` with one conditional create: the shards
//!    carried over from the previous version (a carried shard that lost rows to removed or
//!    changed items points at a filtered copy of its table, written under this attempt's name)
//!    followed by the plan's shards. Of two runs building on the same version only one commits;
//!    a crash leaves the old version or the new one, never a mix.
//! 4. **Publish.** `index.json` and the sink's dataset files (e.g. `train.csv`) are rewritten
//!    from the committed version: they are views, the version file is the record.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::incremental::{Planned, WorkItem};
use super::tracker::ShardOutcome;
use crate::format::{filter_table, DatasetIndex, Lineage};
use crate::io::Location;
use crate::journal::{self, Done, ShardEntry};
use crate::stage::{ShardSink, Sink};
use crate::upload::Uploader;
use crate::version;
use crate::PipelineError;

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Finish a shard's files, publish each, then create its journal entry. `None` when another
/// attempt committed the shard first (this attempt's uploads are deleted again).
pub(super) async fn commit_shard(
    out: &Location,
    writer: Box<dyn ShardSink>,
    (plan, shard, uploader): (&str, usize, &Uploader),
    items: &[WorkItem],
    outcome: ShardOutcome,
) -> Result<Option<ShardEntry>, PipelineError> {
    let files = tokio::task::block_in_place(|| writer.finish(&outcome.errors))?;
    for (local, name) in &files.files {
        out.upload(local, name, uploader).await?;
    }
    let names: Vec<String> = files.files.iter().map(|(_, n)| n.clone()).collect();
    tokio::task::block_in_place(|| out.sync(&names))?;
    let mut row_files: HashMap<&str, Vec<String>> = HashMap::new();
    for (row, name) in &files.row_files {
        row_files.entry(row.as_str()).or_default().push(name.clone());
    }
    let done = items
        .iter()
        .filter(|w| !outcome.failed.contains(w.input.id.as_str()))
        .map(|w| {
            let rows = outcome.rows.get(w.input.id.as_str()).cloned().unwrap_or_default();
            let files = rows.iter().flat_map(|r| row_files.get(r.as_str()).cloned().unwrap_or_default()).collect();
            let rows = (rows.len() != 1 || rows[0] != w.input.id).then_some(rows);
            Done { id: w.input.id.clone(), key: w.key.clone(), source: Some(w.source.to_string()), rows, files }
        })
        .collect();
    let entry = ShardEntry {
        plan: plan.to_string(),
        shard,
        attempt: uploader.attempt.clone(),
        fingerprint: journal::fingerprint(items.iter().map(|w| (w.input.id.as_str(), w.key.as_str()))),
        inputs: items.len(),
        items: files.items,
        errors: outcome.errors.len(),
        table: files.table,
        tensor_file: files.tensor_file,
        error_file: files.error_file,
        files: files.files.iter().map(|(_, n)| n.clone()).collect(),
        fields: files.fields,
        tensors: files.tensors,
        committed_at: now(),
        done,
    };
    match journal::commit(out, &entry).await? {
        journal::Commit::Committed => {
            tokio::task::block_in_place(|| out.sync(&[journal::entry_name(plan, shard)]))?;
            Ok(Some(entry))
        }
        journal::Commit::AlreadyCommitted => {
            for f in &entry.files {
                out.delete(f).await?;
            }
            Ok(None)
        }
    }
}

/// A shard of the previous version as the new version holds it: only the rows of the inputs
/// `keep` flags (one per entry of `shard.done`), no error table (failed items are redone).
/// Writes a filtered copy of the table (under this attempt's name, in `scratch` first) when
/// rows are dropped.
async fn carry(
    out: &Location,
    shard: &ShardEntry,
    keep: &[bool],
    uploader: &Uploader,
    scratch: &Path,
) -> Result<(ShardEntry, Option<String>), PipelineError> {
    let kept: Vec<Done> = shard.done.iter().zip(keep).filter(|(_, k)| **k).map(|(d, _)| d.clone()).collect();
    let rows: usize = kept.iter().map(|d| d.row_ids().len()).sum();
    let error_file = shard.error_file.as_deref();
    let mut files: Vec<String> = shard.files.iter().filter(|f| Some(f.as_str()) != error_file).cloned().collect();
    let mut carried = ShardEntry { errors: 0, error_file: None, ..shard.clone() };
    if kept.len() == shard.done.len() && rows == shard.items {
        carried.files = files;
        return Ok((carried, None));
    }
    let keep_rows: HashSet<&str> = kept.iter().flat_map(|d| d.row_ids()).collect();
    let keep_files: HashSet<&str> = kept.iter().flat_map(|d| d.files.iter().map(String::as_str)).collect();
    let dropped_files: HashSet<&str> = shard
        .done
        .iter()
        .flat_map(|d| d.files.iter().map(String::as_str))
        .filter(|f| !keep_files.contains(f))
        .collect();
    let table = format!("shards/{}/carried-{}-{:05}.parquet", uploader.attempt, shard.plan, shard.shard);
    let local = scratch.join(table.replace('/', "__"));
    let bytes = out.read(&shard.table).await?;
    let written = {
        let (local, keep) = (local.clone(), keep_rows);
        tokio::task::block_in_place(|| filter_table(bytes, &keep, &local))?
    };
    out.upload(&local, &table, uploader).await?;
    tokio::task::block_in_place(|| out.sync(std::slice::from_ref(&table)))?;
    let _ = std::fs::remove_file(&local);
    files.retain(|f| *f != shard.table && !dropped_files.contains(f.as_str()));
    files.insert(0, table.clone());
    carried.items = written;
    carried.table = table.clone();
    carried.files = files;
    carried.done = kept;
    Ok((carried, Some(table)))
}

/// Commit the plan's version if every shard of the plan is committed; `None` while other
/// workers still have shards to do. Returns the version that now stands.
pub(super) async fn commit_version(
    out: &Location,
    job: &str,
    lineage: &Lineage,
    planned: &Planned,
    shards_total: usize,
    uploader: &Uploader,
    scratch: &Path,
) -> Result<Option<DatasetIndex>, PipelineError> {
    let entries = journal::load(out, &planned.plan).await?;
    if entries.len() < shards_total {
        return Ok(None);
    }
    let mut shards = Vec::new();
    let mut copies = Vec::new();
    // Planning kept only the base version's keys; its shards are read again here, once.
    let base = match planned.base_version {
        Some(v) if !planned.carried.is_empty() => version::load(out, v).await?.shards,
        _ => Vec::new(),
    };
    for (s, keep) in &planned.carried {
        let shard = base.get(*s).ok_or_else(|| PipelineError::JournalMismatch {
            location: out.url_of(&version::version_name(planned.base_version.unwrap_or(0))),
            detail: format!("the version changed while the run planned on it (it has no shard {s} any more)"),
        })?;
        let (carried, copy) = carry(out, shard, keep, uploader, scratch).await?;
        shards.push(carried);
        copies.extend(copy);
    }
    drop(base);
    shards.extend(entries.into_values());
    let mut index = DatasetIndex::new(job, shards, lineage.pipeline.clone());
    index.derived_from = lineage.derived_from.clone();
    index.parent = planned.base_version;
    index.version = index.parent.unwrap_or(0) + 1;
    index.plan = planned.plan.clone();
    index.created_at = now();
    index.changes = planned.changes;
    match version::commit(out, &index).await? {
        version::Commit::Committed => {
            tokio::task::block_in_place(|| out.sync(&[version::version_name(index.version)]))?;
            Ok(Some(index))
        }
        version::Commit::AlreadyCommitted => {
            // Another worker of this run committed it; our filtered copies are not named by it.
            for c in &copies {
                out.delete(c).await?;
            }
            Ok(Some(version::load(out, index.version).await?))
        }
    }
}

/// Rewrite `index.json` and the sink's dataset files from a committed version.
pub(super) async fn publish(out: &Location, index: &DatasetIndex, sink: &dyn Sink) -> Result<(), PipelineError> {
    for (name, bytes) in sink.dataset_files(&index.shards) {
        out.write(&name, bytes).await?;
    }
    // Plain data always serializes.
    out.write("index.json", serde_json::to_vec_pretty(index).expect("index serializes")).await
}

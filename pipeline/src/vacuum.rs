//! `mugflow vacuum`: delete old dataset versions and every file that no kept version (and no
//! run that can still commit) names.
//!
//! Kept: the newest `keep` versions and every file their shards name; the journal entries,
//! leases and files of plans built on the latest version (a run in progress or interrupted,
//! which can still commit the next version); anything younger than `older_than` (a file being
//! written right now); the root files (`index.json`, `report.json`, `report.html`, `train.csv`);
//! the files `mugflow repair` moved aside (`_quarantine/`, for a person to look at); the records
//! of multipart uploads (`_uploads/`: deleted only with their upload aborted).
//! Deleted, in this order so that nothing kept ever names a missing file: the versions beyond
//! `keep`, the journal entries and leases of plans that can no longer commit, then the files.

use std::collections::HashSet;
use std::time::Duration;

use crate::executor::incremental::plan_base;
use crate::io::Location;
use crate::journal::{ShardEntry, JOURNAL_DIR};
use crate::lease::LEASE_DIR;
use crate::repair::QUARANTINE_DIR;
use crate::upload::UPLOADS_DIR;
use crate::version::{self, VERSIONS_DIR};
use crate::PipelineError;

/// What a vacuum removed (or, with `dry_run`, would remove).
#[derive(Debug, Default)]
pub struct VacuumReport {
    /// Versions kept.
    pub kept_versions: Vec<u64>,
    /// Versions deleted.
    pub deleted_versions: Vec<u64>,
    /// Other objects deleted (journal entries, leases, data files).
    pub deleted_files: Vec<String>,
    /// Bytes of the deleted objects.
    pub deleted_bytes: u64,
}

fn files_of(shard: &ShardEntry) -> impl Iterator<Item = &String> {
    shard.files.iter().chain(std::iter::once(&shard.table)).chain(&shard.tensor_file).chain(&shard.error_file)
}

/// Delete versions beyond the newest `keep` and the files nothing kept names (see the module docs).
pub async fn vacuum(
    out: &Location,
    keep: usize,
    older_than: Duration,
    dry_run: bool,
) -> Result<VacuumReport, PipelineError> {
    let keep = keep.max(1);
    let versions = version::list(out).await?;
    let latest = versions.last().copied().unwrap_or(0);
    let split = versions.len().saturating_sub(keep);
    let mut report = VacuumReport {
        kept_versions: versions[split..].to_vec(),
        deleted_versions: versions[..split].to_vec(),
        ..Default::default()
    };
    let mut named: HashSet<String> = HashSet::new();
    let mut live_plans: HashSet<String> = HashSet::new();
    for v in &report.kept_versions {
        let index = version::load(out, *v).await?;
        live_plans.insert(index.plan.clone());
        for s in &index.shards {
            live_plans.insert(s.plan.clone());
            named.extend(files_of(s).cloned());
        }
    }
    let objects = out.list_meta("").await?;
    let now = std::time::SystemTime::now();
    let old = |m: &object_store::ObjectMeta| {
        let modified: std::time::SystemTime = m.last_modified.into();
        now.duration_since(modified).unwrap_or_default() >= older_than
    };
    let plan_of = |name: &str| name.split('/').nth(1).map(str::to_string);
    let versioned = live_plans.clone();
    // Plans on the latest version may still commit the next one: their entries and files stay.
    // (The entries of plans a kept version holds stay too, but their files only as far as the
    // version names them: a carried shard may have dropped some.)
    for (name, _) in objects.iter().filter(|(n, _)| n.starts_with(&format!("{JOURNAL_DIR}/"))) {
        let Some(plan) = plan_of(name) else { continue };
        if !versioned.contains(&plan) && plan_base(&plan).is_some_and(|b| b >= latest) {
            live_plans.insert(plan);
            let entry: Result<ShardEntry, _> = serde_json::from_slice(&out.read(name).await?);
            if let Ok(entry) = entry {
                named.extend(files_of(&entry).cloned());
            }
        }
    }
    let mut doomed: Vec<(u8, &str, u64)> = Vec::new();
    for (name, meta) in &objects {
        let first = name.split('/').next().unwrap_or("");
        let rank = match first {
            _ if !name.contains('/') => continue,
            // An upload record is deleted with its upload aborted, never alone (crate::upload).
            QUARANTINE_DIR | UPLOADS_DIR => continue,
            VERSIONS_DIR => {
                let v = name.strip_prefix(&format!("{VERSIONS_DIR}/v")).and_then(|n| n.strip_suffix(".json"));
                match v.and_then(|v| v.parse::<u64>().ok()) {
                    Some(v) if report.deleted_versions.contains(&v) => 0,
                    _ => continue,
                }
            }
            JOURNAL_DIR | LEASE_DIR => match plan_of(name) {
                Some(p) if !live_plans.contains(&p) && old(meta) => 1,
                _ => continue,
            },
            _ if named.contains(name) || !old(meta) => continue,
            _ => 2,
        };
        doomed.push((rank, name, meta.size));
    }
    doomed.sort();
    for (_, name, size) in doomed {
        if !dry_run {
            out.delete(name).await?;
        }
        if !name.starts_with(&format!("{VERSIONS_DIR}/")) {
            report.deleted_files.push(name.to_string());
        }
        report.deleted_bytes += size;
    }
    Ok(report)
}

//! `mugflow repair`: find the stuck states a run stops at (a damaged lease, journal entry or
//! version file) and the leftovers of dead writers (an upload staging file, an abandoned
//! multipart upload) and end them without touching committed data.
//!
//! A damaged file is never deleted: it is moved to `_quarantine/<repair id>/<its name>`, where
//! nothing reads it and `mugflow vacuum` leaves it, so a person can still look at it. A damaged
//! journal entry moved aside makes its shard uncommitted (the next run redoes it); a damaged
//! lease, a shard claimed afresh; a damaged version, the dataset falls back to the version
//! before. Valid files are never changed. Staging files are partial copies of files that were
//! never published: those of dead writers are deleted; so are their multipart uploads, aborted.

use object_store::ObjectStoreExt;

use crate::io::Location;
use crate::journal::{ShardEntry, JOURNAL_DIR};
use crate::lease::{Lease, LEASE_DIR};
use crate::upload::{self, Intent};
use crate::version;
use crate::PipelineError;

/// Folder of the files `mugflow repair` moved aside, under the output location.
pub const QUARANTINE_DIR: &str = "_quarantine";

/// What repair does about one stuck state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fix {
    /// Move the file to this name under [`QUARANTINE_DIR`] (nothing is deleted).
    Quarantine(String),
    /// Delete the file: a dead writer's staging file, a partial copy never published.
    Delete,
    /// Abort the multipart upload this record (the finding's file) names, then delete the
    /// record: its uploader is gone (see [`crate::upload`]).
    AbortUpload(Intent),
}

/// One stuck state: the object (relative to the output), what is wrong, and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The object's name relative to the output location.
    pub name: String,
    /// What is wrong with it.
    pub problem: String,
    /// What repair does (or, in a dry run, would do).
    pub fix: Fix,
}

/// Find every stuck state of the output at `out` and, unless `dry_run`, fix it (see the module
/// docs). Returns what was found, in the order fixed.
pub async fn repair(out: &Location, dry_run: bool) -> Result<Vec<Finding>, PipelineError> {
    let id = crate::names::attempt_id();
    let mut findings = Vec::new();
    let quarantine = |name: &str, problem: String| Finding {
        name: name.to_string(),
        problem,
        fix: Fix::Quarantine(format!("{QUARANTINE_DIR}/{id}/{name}")),
    };
    for name in out.list(LEASE_DIR).await?.iter().filter(|n| n.ends_with(".json")) {
        if let Err(e) = serde_json::from_slice::<Lease>(&out.read(name).await?) {
            findings.push(quarantine(name, format!("unreadable lease ({e})")));
        }
    }
    for name in out.list(JOURNAL_DIR).await?.iter().filter(|n| n.ends_with(".json")) {
        if let Err(e) = serde_json::from_slice::<ShardEntry>(&out.read(name).await?) {
            findings.push(quarantine(name, format!("unreadable journal entry ({e}); its shard is redone")));
        }
    }
    for v in version::list(out).await? {
        // Streamed: a version of a million rows is checked without holding it.
        match version::scan(out, v, (), |_, _, _, _| {}).await {
            Ok(_) => {}
            Err(PipelineError::JournalMismatch { .. }) => findings.push(quarantine(
                &version::version_name(v),
                "unreadable version file; the dataset falls back to the version before".into(),
            )),
            Err(e) => return Err(e),
        }
    }
    if let Some(dir) = out.local_dir.clone() {
        let mut staging = Vec::new();
        out.remove_local_staging_files(|name, age| {
            let dead = crate::attempt::staging_file_dead(&dir, name, age);
            if dead {
                staging.push(name.to_string());
            }
            dead && !dry_run
        })?;
        findings.extend(staging.into_iter().map(|name| Finding {
            name,
            problem: "upload staging file of a writer that is gone".into(),
            fix: Fix::Delete,
        }));
    }
    if let Some(store) = &out.multipart {
        for (record, intent) in upload::abandoned(out).await? {
            let problem = format!("multipart upload of {} abandoned (its uploader is gone)", intent.name);
            findings.push(Finding { name: record, problem, fix: Fix::AbortUpload(intent) });
        }
        if !dry_run {
            for f in &findings {
                if let Fix::AbortUpload(intent) = &f.fix {
                    upload::abort(out, store, &f.name, intent).await?;
                }
            }
        }
    }
    if !dry_run {
        for f in &findings {
            if let Fix::Quarantine(to) = &f.fix {
                move_aside(out, &f.name, to).await?;
            }
        }
    }
    Ok(findings)
}

/// Copy `from` to `to`, then delete `from`: a crash in between leaves both, never neither.
async fn move_aside(out: &Location, from: &str, to: &str) -> Result<(), PipelineError> {
    out.store.copy(&out.key(from), &out.key(to)).await.map_err(|e| PipelineError::storage(out.url_of(from), e))?;
    out.delete(from).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::{commit, entry_name, load};

    fn entry(shard: usize) -> ShardEntry {
        let table = format!("shards/a1/shard-{shard:05}.parquet");
        ShardEntry {
            plan: "p1".into(),
            shard,
            attempt: "a1".into(),
            fingerprint: format!("f{shard}"),
            inputs: 1,
            items: 1,
            errors: 0,
            table: table.clone(),
            tensor_file: None,
            error_file: None,
            files: vec![table],
            fields: vec![],
            tensors: vec![],
            committed_at: "2026-11-24T00:00:00Z".into(),
            done: vec![],
        }
    }

    /// Damaged lease, journal and version files are moved aside byte for byte, valid ones stay,
    /// and a dry run changes nothing; afterwards the journal loads and the shard can be claimed.
    #[tokio::test]
    async fn damaged_files_are_quarantined_and_valid_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        for out in [
            Location::parse("memory://repair-test/ds").unwrap(),
            Location::parse(dir.path().to_str().unwrap()).unwrap(),
        ] {
            commit(&out, &entry(0)).await.unwrap();
            let good_entry = out.read(&entry_name("p1", 0)).await.unwrap();
            let (bad_entry, bad_lease) = (entry_name("p1", 1), "_leases/p1/shard-00002/gen-000000.json");
            out.write(&bad_entry, &b"{\"plan\": \"p1\", \"sha"[..]).await.unwrap();
            out.write(bad_lease, &b"{ half a lease"[..]).await.unwrap();
            out.write(&version::version_name(1), &b"{\"version\": 1, \"shards\": ["[..]).await.unwrap();
            let leases = crate::lease::Leases::new(out.clone(), "p1", "w".into(), std::time::Duration::from_secs(60));
            assert!(load(&out, "p1").await.is_err() && leases.try_claim(2).await.is_err());

            let before = out.list("").await.unwrap();
            let found = repair(&out, true).await.unwrap();
            let names: Vec<&str> = found.iter().map(|f| f.name.as_str()).collect();
            assert_eq!(names, [bad_lease, bad_entry.as_str(), "_versions/v00001.json"]);
            assert_eq!(out.list("").await.unwrap(), before, "a dry run changes nothing");

            let fixed = repair(&out, false).await.unwrap();
            assert_eq!(fixed.len(), 3);
            for f in &fixed {
                let Fix::Quarantine(to) = &f.fix else { panic!("{f:?}") };
                assert!(to.starts_with(QUARANTINE_DIR) && to.ends_with(&f.name), "{to}");
                assert!(out.read_opt(&f.name).await.unwrap().is_none(), "{} moved away", f.name);
            }
            let Fix::Quarantine(kept) = &fixed[1].fix else { unreachable!() };
            assert_eq!(&out.read(kept).await.unwrap()[..], b"{\"plan\": \"p1\", \"sha", "kept byte for byte");
            assert_eq!(out.read(&entry_name("p1", 0)).await.unwrap(), good_entry, "a valid entry is untouched");
            assert_eq!(load(&out, "p1").await.unwrap().keys().copied().collect::<Vec<_>>(), [0]);
            assert!(leases.try_claim(2).await.unwrap().is_some(), "the shard is claimed afresh");
            assert!(version::list(&out).await.unwrap().is_empty());
            assert!(repair(&out, false).await.unwrap().is_empty(), "nothing left to repair");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_uploads_are_aborted() {
        let out = Location::parse("memory://repair-uploads/ds").unwrap();
        let store = out.multipart.clone().unwrap();
        let gone = upload::Uploader {
            attempt: "20261129T093012-3fa2c1".into(),
            host: crate::attempt::hostname(),
            pid: 1 << 40,
            lease_owner: None,
            ttl_ms: 0,
        };
        let (record, intent) = upload::begin(&out, &store, "shards/x.parquet", &gone).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let found = repair(&out, true).await.unwrap();
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].name.as_str(), &found[0].fix), (record.as_str(), &Fix::AbortUpload(intent.clone())));
        assert!(out.read_opt(&record).await.unwrap().is_some(), "a dry run aborts nothing");
        assert_eq!(repair(&out, false).await.unwrap(), found);
        assert!(out.read_opt(&record).await.unwrap().is_none());
        let part = store.put_part(&out.key(&intent.name), &intent.upload_id, 0, vec![0u8; 8].into()).await;
        assert!(part.is_err(), "the upload is aborted");
    }

    #[tokio::test]
    async fn staging_files_of_dead_writers_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
        // An attempt whose process is gone: a pid above Linux's pid_max is never alive.
        let attempt = "20261129T093012-3fa2c1";
        let record = serde_json::json!({ "host": crate::attempt::hostname(), "pid": 1u64 << 40 });
        out.write(&format!("_attempts/{attempt}.json"), serde_json::to_vec(&record).unwrap()).await.unwrap();
        let staging = dir.path().join(format!("shards/{attempt}/shard-00000.parquet#7"));
        std::fs::create_dir_all(staging.parent().unwrap()).unwrap();
        std::fs::write(&staging, b"partial").unwrap();
        let young = dir.path().join("index.json#3");
        std::fs::write(&young, b"partial").unwrap();

        let found = repair(&out, true).await.unwrap();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].name.as_str(), &found[0].fix),
            ("shards/20261129T093012-3fa2c1/shard-00000.parquet#7", &Fix::Delete)
        );
        assert!(staging.exists(), "a dry run deletes nothing");
        assert_eq!(repair(&out, false).await.unwrap(), found);
        assert!(!staging.exists());
        assert!(young.exists(), "a staging file that may be a live writer's stays");
    }
}

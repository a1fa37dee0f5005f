//! Large uploads to object stores: multipart uploads with an intent on record, so that an upload
//! a killed worker abandoned is aborted later instead of keeping its parts (and their cost) forever.
//!
//! object_store cannot list a bucket's multipart uploads, so a writer records each one right
//! after creating it and before sending a part: `_uploads/<attempt>/<hash>.json` names the
//! object, the upload id and the writer (host, process, lease owner, lease TTL). The writer
//! deletes the record once the upload is completed or aborted. At its start a run (and `mugflow
//! repair`) aborts the uploads whose writer is gone (see [`Intent::uploader_gone`]). A kill between
//! creating an upload and recording it (one request's time) still leaks that upload; an S3
//! lifecycle rule `AbortIncompleteMultipartUpload` catches those.

use std::collections::HashSet;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::{StreamExt, TryStreamExt};
use object_store::multipart::MultipartStore;
use object_store::{PutMode, PutOptions, PutPayload};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::io::Location;
use crate::PipelineError;

/// Folder of the upload intents under the output location.
pub const UPLOADS_DIR: &str = "_uploads";

/// Files larger than this go up as multipart uploads (object_store's buffered writer switches at
/// the same size).
pub const MULTIPART_THRESHOLD: u64 = 10 << 20;

/// Smallest part; S3 wants at least 5 MiB for every part but the last.
const MIN_PART: u64 = 8 << 20;

/// S3's limit on the parts of one upload.
const MAX_PARTS: u64 = 10_000;

/// Parts in flight at once per upload.
const PARTS_IN_FLIGHT: usize = 4;

/// Another host's writer that balances without leases is taken for dead after this long.
const OTHER_HOST_GRACE: Duration = Duration::from_secs(24 * 3600);

/// Who uploads: recorded in each intent so that a later run can tell a dead writer from a live one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Uploader {
    /// The run attempt.
    pub attempt: String,
    /// Its host.
    pub host: String,
    /// Its process id on that host.
    pub pid: u64,
    /// Its lease owner name when its run balances with leases (renewed while it works).
    pub lease_owner: Option<String>,
    /// Its job's lease TTL in milliseconds: an intent younger than this is never judged.
    pub ttl_ms: u64,
}

/// The record of one multipart upload in progress.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    /// The object being uploaded, relative to the output location.
    pub name: String,
    /// The store's id of the upload.
    pub upload_id: String,
    /// Who uploads it.
    pub uploader: Uploader,
    /// When the upload was created, milliseconds since the Unix epoch.
    pub started_at_ms: u64,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Intent {
    /// Whether the upload's writer is gone, at `now_ms` on host `host`: never before the
    /// writer's lease TTL has passed; then, on this host, when its process is gone; on another
    /// host, when none of the leases `live_owners` lists is its own (a run balancing with
    /// leases renews them while it works), or without leases after a day.
    pub fn uploader_gone(&self, now_ms: u64, host: &str, live_owners: &HashSet<String>) -> bool {
        let age = now_ms.saturating_sub(self.started_at_ms);
        if age <= self.uploader.ttl_ms {
            return false;
        }
        if self.uploader.host == host {
            return crate::attempt::process_gone(self.uploader.pid);
        }
        match &self.uploader.lease_owner {
            Some(owner) => !live_owners.contains(owner),
            None => age > OTHER_HOST_GRACE.as_millis() as u64,
        }
    }
}

/// Create a multipart upload of `name` and record its intent (the first two steps of
/// [`upload`], public so that tests can abandon an upload the way a killed writer does).
pub async fn begin(
    out: &Location,
    store: &Arc<dyn MultipartStore>,
    name: &str,
    uploader: &Uploader,
) -> Result<(String, Intent), PipelineError> {
    let key = out.key(name);
    let upload_id = store.create_multipart(&key).await.map_err(|e| PipelineError::storage(out.url_of(name), e))?;
    let intent = Intent { name: name.to_string(), upload_id, uploader: uploader.clone(), started_at_ms: now_ms() };
    let digest = Sha256::digest(format!("{name}\0{}", intent.upload_id));
    let record = format!("{UPLOADS_DIR}/{}/{}.json", uploader.attempt, hex::encode(&digest[..8]));
    // Plain data always serializes.
    let body = serde_json::to_vec_pretty(&intent).expect("intents serialize");
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    if let Err(e) = out.store.put_opts(&out.key(&record), body.into(), opts).await {
        // Not on record: abort it now, or nothing ever will.
        let _ = store.abort_multipart(&key, &intent.upload_id).await;
        return Err(PipelineError::storage(out.url_of(&record), e));
    }
    Ok((record, intent))
}

/// Upload the local file `local` (`size` bytes) to `name` as a multipart upload on record:
/// begin it, send its parts a few at a time, complete it, delete the record. On an error the
/// upload is aborted and the record deleted.
pub(crate) async fn upload(
    out: &Location,
    store: &Arc<dyn MultipartStore>,
    local: &Path,
    name: &str,
    size: u64,
    uploader: &Uploader,
) -> Result<u64, PipelineError> {
    let file = std::fs::File::open(local)
        .map_err(|e| PipelineError::io(format!("cannot open {}", local.display()), e))
        .map(Arc::new)?;
    let (record, intent) = begin(out, store, name, uploader).await?;
    let key = out.key(name);
    let part = MIN_PART.max(size.div_ceil(MAX_PARTS));
    let parts = size.div_ceil(part).max(1);
    let sent: Result<Vec<_>, PipelineError> = futures::stream::iter(0..parts)
        .map(|i| {
            let (file, store, key, id) = (file.clone(), store.clone(), key.clone(), intent.upload_id.clone());
            async move {
                let (offset, len) = (i * part, part.min(size - i * part));
                let bytes = tokio::task::spawn_blocking(move || {
                    let mut buf = vec![0u8; len as usize];
                    file.read_exact_at(&mut buf, offset).map(|()| buf)
                })
                .await
                .map_err(|e| PipelineError::Input(format!("reading {} stopped: {e}", local.display())))?
                .map_err(|e| PipelineError::io(format!("cannot read {}", local.display()), e))?;
                store
                    .put_part(&key, &id, i as usize, PutPayload::from(bytes))
                    .await
                    .map_err(|e| PipelineError::storage(out.url_of(name), e))
            }
        })
        .buffered(PARTS_IN_FLIGHT)
        .try_collect()
        .await;
    let done = match sent {
        Ok(ids) => store
            .complete_multipart(&key, &intent.upload_id, ids)
            .await
            .map(|_| ())
            .map_err(|e| PipelineError::storage(out.url_of(name), e)),
        Err(e) => Err(e),
    };
    if done.is_err() {
        // Best effort: an upload we cannot abort now stays on record for the next run.
        if store.abort_multipart(&key, &intent.upload_id).await.is_err() {
            return done.map(|()| size);
        }
    }
    out.delete(&record).await?;
    done.map(|()| size)
}

/// Every recorded upload of `out` whose writer is gone (see [`Intent::uploader_gone`]), with the
/// name of its record. A record that cannot be parsed is skipped: nothing guesses at an upload id.
pub async fn abandoned(out: &Location) -> Result<Vec<(String, Intent)>, PipelineError> {
    let (now, host) = (now_ms(), crate::attempt::hostname());
    let mut intents = Vec::new();
    for name in out.list(UPLOADS_DIR).await? {
        let Some(bytes) = out.read_opt(&name).await? else { continue };
        if let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) {
            intents.push((name, intent));
        }
    }
    // The leases are read only when another host's leased writer is to be judged.
    let leased_elsewhere = intents.iter().any(|(_, i)| i.uploader.host != host && i.uploader.lease_owner.is_some());
    let live = if leased_elsewhere { crate::lease::live_owners(out).await? } else { HashSet::new() };
    intents.retain(|(_, i)| i.uploader_gone(now, &host, &live));
    Ok(intents)
}

/// Abort the upload `intent` records and delete its record `record`. An upload the store no
/// longer knows (completed or aborted before its record was deleted) only loses its record.
pub async fn abort(
    out: &Location,
    store: &Arc<dyn MultipartStore>,
    record: &str,
    intent: &Intent,
) -> Result<(), PipelineError> {
    match store.abort_multipart(&out.key(&intent.name), &intent.upload_id).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => out.delete(record).await,
        Err(e) => Err(PipelineError::storage(out.url_of(&intent.name), e)),
    }
}

/// Abort every abandoned upload of `out` (a run does this at its start), best effort: an upload
/// that cannot be aborted now stays on record for the next run or `mugflow repair`. Returns how
/// many were aborted.
pub async fn abort_abandoned(out: &Location) -> usize {
    let Some(store) = &out.multipart else { return 0 };
    let Ok(found) = abandoned(out).await else { return 0 };
    let mut aborted = 0;
    for (record, intent) in &found {
        aborted += usize::from(abort(out, store, record, intent).await.is_ok());
    }
    aborted
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uploader(pid: u64, ttl_ms: u64) -> Uploader {
        Uploader {
            attempt: "20261129T093012-3fa2c1".into(),
            host: crate::attempt::hostname(),
            pid,
            lease_owner: None,
            ttl_ms,
        }
    }

    /// A pid above Linux's pid_max: never a live process.
    const DEAD_PID: u64 = 1 << 40;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn uploads_go_up_whole_and_leave_no_record() {
        let out = Location::parse("memory://upload-whole/ds").unwrap();
        let store = out.multipart.clone().expect("memory stores do multipart uploads");
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..(20u32 << 20) + 7).map(|i| (i % 251) as u8).collect();
        std::fs::write(dir.path().join("big.bin"), &big).unwrap();
        let n = upload(&out, &store, &dir.path().join("big.bin"), "big.bin", big.len() as u64, &uploader(1, 0)).await;
        assert_eq!(n.unwrap(), big.len() as u64);
        assert!(out.read("big.bin").await.unwrap() == big);
        assert!(out.list(UPLOADS_DIR).await.unwrap().is_empty(), "the record is deleted once complete");
    }

    /// A writer killed mid-upload leaves its upload and record; once the writer is gone (its
    /// process dead, its TTL passed) the upload is aborted and the record deleted; a live
    /// writer's upload is left alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn abandoned_uploads_are_aborted_and_live_ones_kept() {
        let out = Location::parse("memory://upload-abandoned/ds").unwrap();
        let store = out.multipart.clone().unwrap();
        let (_, dead) = begin(&out, &store, "shards/a/dead.parquet", &uploader(DEAD_PID, 0)).await.unwrap();
        let key = out.key(&dead.name);
        store.put_part(&key, &dead.upload_id, 0, vec![1u8; 1024].into()).await.unwrap();
        let live = uploader(u64::from(std::process::id()), 0);
        let (_, alive) = begin(&out, &store, "shards/a/live.parquet", &live).await.unwrap();
        let young = begin(&out, &store, "shards/a/young.parquet", &uploader(DEAD_PID, 3_600_000)).await.unwrap();

        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(abort_abandoned(&out).await, 1);
        assert!(
            store.put_part(&key, &dead.upload_id, 1, vec![1u8; 8].into()).await.is_err(),
            "the abandoned upload is gone"
        );
        let left = out.list(UPLOADS_DIR).await.unwrap();
        assert_eq!(left.len(), 2, "{left:?}");
        assert!(left.contains(&young.0));
        store.put_part(&out.key(&alive.name), &alive.upload_id, 0, vec![1u8; 8].into()).await.unwrap();
        assert_eq!(abort_abandoned(&out).await, 0, "nothing else is abandoned");
    }

    #[test]
    fn another_hosts_uploader_is_judged_by_its_leases_or_after_a_day() {
        let mut w = uploader(DEAD_PID, 1000);
        w.host = "elsewhere".into();
        let intent = Intent { name: "x".into(), upload_id: "1".into(), uploader: w, started_at_ms: 0 };
        let none = &HashSet::new();
        assert!(!intent.uploader_gone(500, "here", none), "younger than its TTL");
        assert!(!intent.uploader_gone(3_600_000, "here", none), "no leases: an hour is not enough");
        assert!(intent.uploader_gone(25 * 3_600_000, "here", none));
        let leased = Intent {
            uploader: Uploader { lease_owner: Some("elsewhere:9:0".into()), ..intent.uploader.clone() },
            ..intent
        };
        let holds = &HashSet::from(["elsewhere:9:0".to_string()]);
        assert!(!leased.uploader_gone(3_600_000, "here", holds), "its lease is live");
        assert!(leased.uploader_gone(2000, "here", none), "its lease is gone");
    }
}

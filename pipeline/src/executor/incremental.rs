//! Incremental runs: every input item gets a content key, and a run computes only the items
//! whose key the latest dataset version does not hold.
//!
//! The content key of an item is the sha256 (first 16 bytes, hex) of:
//! - the pipeline fingerprint: each stage's kind and parameters (not `parallelism` or `name`,
//!   which cannot change an output) and the sha256 of every checkpoint it reads;
//! - the item's id and all of its input fields (the catalog row, the listing's columns, `uri`);
//! - the identity of the bytes at `uri`: size and modification time (nanoseconds) for a local
//!   file, size and ETag (or, where the store gives none, last-modified time) for an object.
//!
//! Not in it: job settings that do not change an item's output (`shard_size`, `parallelism`,
//! `memory_budget`, `queue_depth`, timeouts, balancing), the progress display, the output
//! location. Files a stage reads besides `uri` and the checkpoints (`t5_encode`'s `captions`
//! table, for one) are not in it.
//!
//! Each item also gets a *source key*: the same hash without the pipeline fingerprint. Finished
//! inputs record it, so a run whose content keys changed only through the pipeline can carry
//! the outputs of unchanged early stages over (see `executor/reuse.rs`).

use std::collections::HashMap;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::format::Lineage;
use crate::input::InputItem;
use crate::io::Location;
use crate::manifest::OnRemoved;
use crate::version::{self, Changes};
use crate::PipelineError;

/// An input item to compute in this run, with its content key.
#[derive(Debug, Clone)]
pub struct WorkItem {
    /// The input item.
    pub input: InputItem,
    /// Its content key.
    pub key: String,
    /// Its source key (id, fields and bytes; no pipeline).
    pub source: ContentKey,
    /// The base version's shard (position) that holds this item's previous outputs, when its
    /// source key is unchanged: only the pipeline changed, so stages whose outputs the change
    /// cannot touch may be carried from there (see `executor::reuse`).
    pub prior: Option<usize>,
}

/// What an incremental run does: the version it builds on, what it computes, what it carries.
pub struct Planned {
    /// The latest version when the run started.
    pub base_version: Option<u64>,
    /// Id of the plan: `v<base version>-<hash of the pipeline and the (id, key) list of the work>`.
    pub plan: String,
    /// New and changed items (and items that failed before), sorted by id.
    pub work: Vec<WorkItem>,
    /// The shards of the base version the new version keeps, by position in the base version,
    /// each with a flag per entry of its `done` list: whether that input is carried over.
    pub carried: Vec<(usize, Vec<bool>)>,
    /// The counts printed before the run and recorded in the version.
    pub changes: Changes,
    /// The base version's pipeline and shards (each with an empty `done` list).
    pub base: version::Outline,
}

/// A content key: the first 16 bytes of the sha256 described in the module docs. Journals and
/// versions write it as 32 hex digits; planning compares the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentKey(pub [u8; 16]);

impl ContentKey {
    /// The key written as `text` (32 hex digits), if it is one.
    pub fn parse(text: &str) -> Option<Self> {
        let mut key = [0u8; 16];
        hex::decode_to_slice(text, &mut key).ok().map(|()| ContentKey(key))
    }
}

impl std::fmt::Display for ContentKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// Hash of how the dataset is made: stage kinds, parameters and checkpoint digests.
pub fn pipeline_fingerprint(lineage: &Lineage) -> String {
    // serde_json's maps are sorted, so the text is canonical.
    let text = serde_json::to_string(&lineage.pipeline).expect("lineage serializes");
    hex::encode(&Sha256::digest(text.as_bytes())[..16])
}

/// The identity of the bytes at `uri` (see the module docs), or why it could not be read.
async fn identity(uri: &str) -> String {
    if !uri.contains("://") || uri.starts_with("file://") {
        let path = uri.strip_prefix("file://").unwrap_or(uri).to_string();
        return tokio::task::spawn_blocking(move || match std::fs::metadata(&path) {
            Ok(m) => {
                let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
                format!("size={} mtime_ns={}", m.len(), mtime.map_or(0, |d| d.as_nanos()))
            }
            Err(e) => format!("unreadable: {}", e.kind()),
        })
        .await
        .unwrap_or_default();
    }
    let (dir, name) = uri.rsplit_once('/').unwrap_or((uri, ""));
    let meta = match Location::parse(dir) {
        Ok(loc) => loc.head(name).await,
        Err(e) => Err(e),
    };
    match meta {
        Ok(m) => match m.e_tag {
            Some(etag) => format!("size={} etag={etag}", m.size),
            None => format!("size={} modified={}", m.size, m.last_modified.to_rfc3339()),
        },
        Err(e) => format!("unreadable: {e}"),
    }
}

/// Content keys of `items` (in order) under the pipeline fingerprint `pipeline`, each with the
/// item's source key: the same hash without the pipeline.
pub async fn content_keys(items: &[InputItem], pipeline: &str) -> Vec<(ContentKey, ContentKey)> {
    // Many rows often share a file (one product image, one video cut into clips): ask once.
    let mut uris: Vec<&str> = items.iter().filter_map(|i| i.fields.get("uri").and_then(|v| v.as_str())).collect();
    uris.sort_unstable();
    uris.dedup();
    let identities: HashMap<&str, String> =
        futures::stream::iter(uris).map(|u| async move { (u, identity(u).await) }).buffer_unordered(32).collect().await;
    let finish = |h: Sha256| {
        let mut key = [0u8; 16];
        key.copy_from_slice(&h.finalize()[..16]);
        ContentKey(key)
    };
    items
        .iter()
        .map(|item| {
            // Field maps are sorted by name, so the JSON text is canonical.
            let fields = serde_json::to_string(&item.fields).expect("fields serialize");
            let identity = identities.get(item.fields.uri()).map_or("", String::as_str);
            let text = [item.id.as_str(), "\0", &fields, "\0", identity].concat();
            let source = Sha256::new_with_prefix(text.as_bytes());
            // The content key hashes the same text led by the pipeline.
            let mut key = Sha256::new_with_prefix(pipeline.as_bytes());
            key.update([0]);
            key.update(text.as_bytes());
            (finish(key), finish(source))
        })
        .collect()
}

/// The base version a plan id names (0: none).
pub fn plan_base(plan: &str) -> Option<u64> {
    plan.strip_prefix('v')?.split_once('-')?.0.parse().ok()
}

/// A finished input of the base version, as planning keeps it.
struct Held {
    id: Box<str>,
    shard: u32,
    position: u32,
    /// `None` when the version holds no key this run could have made.
    key: Option<ContentKey>,
    /// The source key it was made from, if the version records it.
    source: Option<ContentKey>,
}

/// Plan a run over `inputs` on top of the output's latest version.
pub async fn plan(
    out: &Location,
    inputs: Vec<InputItem>,
    lineage: &Lineage,
    shard_size: u64,
    on_removed: OnRemoved,
) -> Result<Planned, PipelineError> {
    let pipeline = pipeline_fingerprint(lineage);
    let keys = content_keys(&inputs, &pipeline).await;
    let base_version = version::list(out).await?.last().copied();
    // Every finished input of the base version, sorted by id (for a repeated id, the last one
    // listed stands), read as a stream: the version's file and index are never held whole.
    let (mut held, done_lengths, base) = match base_version {
        None => (Vec::new(), Vec::new(), version::Outline::default()),
        Some(v) => {
            let acc = (Vec::new(), Vec::new());
            let each = |(held, lengths): &mut (Vec<Held>, Vec<u32>), s: usize, d: usize, done: crate::journal::Done| {
                if lengths.len() <= s {
                    lengths.resize(s + 1, 0);
                }
                lengths[s] = d as u32 + 1;
                let (key, source) = (ContentKey::parse(&done.key), done.source.as_deref().and_then(ContentKey::parse));
                held.push(Held { id: done.id.into_boxed_str(), shard: s as u32, position: d as u32, key, source });
            };
            let (outline, (held, mut lengths)) = version::scan(out, v, acc, each).await?;
            lengths.resize(outline.shards.len(), 0);
            (held, lengths, outline)
        }
    };
    held.sort_unstable_by(|a, b| a.id.cmp(&b.id).then((b.shard, b.position).cmp(&(a.shard, a.position))));
    held.dedup_by(|later, first| later.id == first.id);
    // Per shard of the base version, which of its finished inputs the new version keeps.
    let mut keep: Vec<Vec<bool>> = done_lengths.iter().map(|n| vec![false; *n as usize]).collect();
    // Which held ids the input still lists.
    let mut seen = vec![false; held.len()];
    let mut changes = Changes::default();
    let mut work = Vec::new();
    for (input, (key, source)) in inputs.into_iter().zip(keys) {
        let mut prior = None;
        match held.binary_search_by(|h| (*h.id).cmp(input.id.as_str())) {
            Ok(i) => {
                seen[i] = true;
                let h = &held[i];
                if h.key == Some(key) && input.error.is_none() {
                    changes.unchanged += 1;
                    keep[h.shard as usize][h.position as usize] = true;
                    continue;
                }
                changes.changed += 1;
                prior = (h.source == Some(source)).then_some(h.shard as usize);
            }
            Err(_) => changes.new += 1,
        }
        work.push(WorkItem { input, key: key.to_string(), source, prior });
    }
    for (h, seen) in held.iter().zip(seen) {
        match (seen, on_removed) {
            (true, _) => {}
            (false, OnRemoved::Drop) => changes.removed += 1,
            (false, OnRemoved::Keep) => {
                changes.kept += 1;
                keep[h.shard as usize][h.position as usize] = true;
            }
        }
    }
    let carried = keep.into_iter().enumerate().filter(|(_, k)| k.contains(&true)).collect();
    let mut h = Sha256::new();
    h.update(format!("base={base_version:?} pipeline={pipeline} shard_size={shard_size} on_removed={on_removed:?}\n"));
    for w in &work {
        h.update(w.input.id.as_bytes());
        h.update([0]);
        h.update(w.key.as_bytes());
        h.update([0]);
    }
    // The base version leads the name: `mugflow vacuum` tells plans that can still be committed
    // (built on the latest version) from abandoned ones.
    let plan = format!("v{:05}-{}", base_version.unwrap_or(0), hex::encode(&h.finalize()[..8]));
    Ok(Planned { base_version, plan, work, carried, changes, base })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::Value;

    fn item(id: &str, uri: &str, prompt: &str) -> InputItem {
        let fields = BTreeMap::from([
            ("uri".to_string(), Value::Str(uri.into())),
            ("prompt".to_string(), Value::Str(prompt.into())),
        ]);
        InputItem { id: id.into(), fields: fields.into(), error: None }
    }

    #[tokio::test]
    async fn keys_follow_fields_bytes_and_pipeline() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.png");
        std::fs::write(&img, b"one").unwrap();
        let uri = img.to_str().unwrap();
        let base = content_keys(&[item("a", uri, "red")], "p").await;
        assert_eq!(base, content_keys(&[item("a", uri, "red")], "p").await, "stable");
        assert_ne!(base, content_keys(&[item("a", uri, "blue")], "p").await, "a field");
        let other_pipeline = content_keys(&[item("a", uri, "red")], "q").await;
        assert_ne!(base[0].0, other_pipeline[0].0, "the pipeline changes the content key");
        assert_eq!(base[0].1, other_pipeline[0].1, "but not the source key");
        assert_ne!(base, content_keys(&[item("b", uri, "red")], "p").await, "the id");
        std::fs::write(&img, b"two!").unwrap();
        assert_ne!(base, content_keys(&[item("a", uri, "red")], "p").await, "the bytes");
    }
}

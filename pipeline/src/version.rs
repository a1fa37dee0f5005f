//! Dataset versions: `_versions/v00001.json`, `v00002.json`, ... each one the complete
//! [`DatasetIndex`] of the dataset after one run (which shards, which tables and files).
//!
//! A version is committed with one conditional create, so of two runs that build on the same
//! version only one can commit the next; a crash leaves either the old or the new version.
//! Versions never change once written; `index.json` at the root mirrors the latest one for
//! readers that only want "the dataset". `mugflow vacuum` deletes old versions and the files
//! that no kept version names.

use std::io::Read;

use object_store::{PutMode, PutOptions};
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

use crate::format::DatasetIndex;
use crate::io::Location;
use crate::journal::{Done, ShardEntry};
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

fn missing(out: &Location, version: u64) -> PipelineError {
    PipelineError::NoVersion { location: out.url.clone(), version }
}

fn unreadable(out: &Location, version: u64, e: serde_json::Error) -> PipelineError {
    PipelineError::JournalMismatch {
        location: out.url_of(&version_name(version)),
        detail: format!(
            "unreadable version file ({e}); restore it from a backup, or run `mugflow repair {}` to move it aside (the dataset falls back to the version before)",
            out.url
        ),
    }
}

/// One version's index.
pub async fn load(out: &Location, version: u64) -> Result<DatasetIndex, PipelineError> {
    let bytes = out.read_opt(&version_name(version)).await?.ok_or_else(|| missing(out, version))?;
    serde_json::from_slice(&bytes).map_err(|e| unreadable(out, version, e))
}

/// A version as [`scan`] gives it: its number, pipeline and shards, each shard with an empty
/// `done` list (the finished inputs went to the scan's callback instead).
#[derive(Debug, Default)]
pub struct Outline {
    /// The version number.
    pub version: u64,
    /// The stages that made it, as [`DatasetIndex::pipeline`] records them.
    pub pipeline: Vec<serde_json::Value>,
    /// Its shards, `done` left empty.
    pub shards: Vec<ShardEntry>,
}

/// Read one version as a stream, never holding its file or its whole index: every finished
/// input (the bulk of a large version: one per input item) is handed to `each` as
/// `each(&mut acc, shard position, position in the shard's done list, done)`, which keeps what
/// it needs in `acc`. Planning a run over a million-row version keeps 40 bytes per row this way
/// instead of the parsed index and the file text (docs/PERFORMANCE.md).
pub async fn scan<T, F>(out: &Location, version: u64, acc: T, each: F) -> Result<(Outline, T), PipelineError>
where
    T: Send + 'static,
    F: FnMut(&mut T, usize, usize, Done) + Send + 'static,
{
    let name = version_name(version);
    let size = match out.head(&name).await {
        Ok(meta) => meta.size,
        Err(PipelineError::Storage { source: object_store::Error::NotFound { .. }, .. }) => {
            return Err(missing(out, version))
        }
        Err(e) => return Err(e),
    };
    let reader = RangeReader { out: out.clone(), name, size, pos: 0, runtime: tokio::runtime::Handle::current() };
    let loc = out.clone();
    tokio::task::spawn_blocking(move || {
        let (mut acc, mut each) = (acc, each);
        let mut de = serde_json::Deserializer::from_reader(std::io::BufReader::with_capacity(SCAN_CHUNK, reader));
        let seed = IndexSeed { each: &mut |s: usize, d: usize, done: Done| each(&mut acc, s, d, done) };
        let outline = seed.deserialize(&mut de).and_then(|o| de.end().map(|()| o));
        match outline {
            Ok(o) => Ok((o, acc)),
            // A read error of the store is reported as itself, not as a damaged file.
            Err(e) if e.is_io() => {
                let io = std::io::Error::from(e);
                match io.into_inner().map(|inner| inner.downcast::<PipelineError>()) {
                    Some(Ok(pe)) => Err(*pe),
                    Some(Err(other)) => Err(PipelineError::Input(format!("cannot read {}: {other}", loc.url))),
                    None => Err(PipelineError::Input(format!("cannot read {}", loc.url))),
                }
            }
            Err(e) => Err(unreadable(&loc, version, e)),
        }
    })
    .await
    .map_err(|e| PipelineError::Input(format!("reading version {version} of {} stopped: {e}", out.url)))?
}

/// Bytes read from the store per request while scanning a version.
const SCAN_CHUNK: usize = 8 << 20;

/// A blocking reader of one object, a ranged get at a time (runs off the async runtime).
struct RangeReader {
    out: Location,
    name: String,
    size: u64,
    pos: u64,
    runtime: tokio::runtime::Handle,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        let end = (self.pos + buf.len() as u64).min(self.size);
        let bytes =
            self.runtime.block_on(self.out.read_range(&self.name, self.pos..end)).map_err(std::io::Error::other)?;
        let n = bytes.len().min(buf.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        self.pos += n as u64;
        Ok(n)
    }
}

/// Callback of the streamed reader: (shard position, position in its done list, done).
type EachDone<'a> = &'a mut dyn FnMut(usize, usize, Done);

/// The version's top-level object: keeps `version`, `pipeline` and the shards, skips the rest.
struct IndexSeed<'a> {
    each: EachDone<'a>,
}

impl<'de> DeserializeSeed<'de> for IndexSeed<'_> {
    type Value = Outline;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Outline, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for IndexSeed<'_> {
    type Value = Outline;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a dataset version")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Outline, A::Error> {
        let mut outline = Outline::default();
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "version" => outline.version = map.next_value()?,
                "pipeline" => outline.pipeline = map.next_value()?,
                "shards" => outline.shards = map.next_value_seed(ShardsSeed { each: &mut *self.each })?,
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(outline)
    }
}

/// The `shards` list: each shard read whole but for its `done` list, which is streamed.
struct ShardsSeed<'a> {
    each: EachDone<'a>,
}

impl<'de> DeserializeSeed<'de> for ShardsSeed<'_> {
    type Value = Vec<ShardEntry>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<ShardEntry>, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ShardsSeed<'_> {
    type Value = Vec<ShardEntry>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of shards")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<ShardEntry>, A::Error> {
        let mut shards = Vec::new();
        loop {
            let seed = ShardSeed { each: &mut *self.each, shard: shards.len() };
            match seq.next_element_seed(seed)? {
                Some(s) => shards.push(s),
                None => return Ok(shards),
            }
        }
    }
}

/// One shard: its small fields collected as they come (in any order), its `done` list streamed.
struct ShardSeed<'a> {
    each: EachDone<'a>,
    shard: usize,
}

impl<'de> DeserializeSeed<'de> for ShardSeed<'_> {
    type Value = ShardEntry;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<ShardEntry, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ShardSeed<'_> {
    type Value = ShardEntry;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a shard")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ShardEntry, A::Error> {
        let mut rest = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == "done" {
                map.next_value_seed(DoneSeed { each: &mut *self.each, shard: self.shard })?;
                rest.insert(key, serde_json::Value::Array(Vec::new()));
            } else {
                rest.insert(key, map.next_value()?);
            }
        }
        serde_json::from_value(serde_json::Value::Object(rest)).map_err(serde::de::Error::custom)
    }
}

/// A shard's `done` list, each entry handed to the callback as it is read.
struct DoneSeed<'a> {
    each: EachDone<'a>,
    shard: usize,
}

impl<'de> DeserializeSeed<'de> for DoneSeed<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for DoneSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a list of finished inputs")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut position = 0;
        while let Some(done) = seq.next_element::<Done>()? {
            (self.each)(self.shard, position, done);
            position += 1;
        }
        Ok(())
    }
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
/// [`PipelineError::VersionConflict`] when another run committed that version number first. A
/// version file holding exactly `index` is this commit's own (a put the store applied but whose
/// reply was lost, retried by the client), so the files only it names must stay.
pub async fn commit(out: &Location, index: &DatasetIndex) -> Result<Commit, PipelineError> {
    let name = version_name(index.version);
    // Plain data always serializes.
    let body = bytes::Bytes::from(serde_json::to_vec_pretty(index).expect("versions serialize"));
    let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
    match out.store.put_opts(&out.key(&name), body.clone().into(), opts).await {
        Ok(_) => Ok(Commit::Committed),
        Err(object_store::Error::AlreadyExists { .. }) => {
            if out.read(&name).await? == body {
                return Ok(Commit::Committed);
            }
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
        let other_worker = DatasetIndex { created_at: "later".into(), ..index(1, "a") };
        assert_eq!(commit(&out, &other_worker).await.unwrap(), Commit::AlreadyCommitted);
        // The same index again: a put applied whose reply was lost, retried by the client.
        assert_eq!(commit(&out, &index(1, "a")).await.unwrap(), Commit::Committed);
        assert!(matches!(commit(&out, &index(1, "b")).await, Err(PipelineError::VersionConflict { version: 1, .. })));
        assert_eq!(commit(&out, &index(2, "b")).await.unwrap(), Commit::Committed);
        assert_eq!(list(&out).await.unwrap(), [1, 2]);
        assert_eq!(latest(&out).await.unwrap().unwrap().plan, "b");
    }

    #[tokio::test]
    async fn a_scan_streams_what_load_reads_whole() {
        let dir = tempfile::tempdir().unwrap();
        let out = Location::parse(dir.path().to_str().unwrap()).unwrap();
        let done = |id: &str| Done {
            id: id.into(),
            key: format!("k-{id}"),
            source: None,
            rows: None,
            files: vec![format!("v/{id}")],
        };
        let shard = |k: usize, ids: &[&str]| ShardEntry {
            plan: "p".into(),
            shard: k,
            attempt: "a".into(),
            fingerprint: String::new(),
            inputs: ids.len(),
            items: ids.len(),
            errors: 0,
            table: format!("shards/a/shard-{k:05}.parquet"),
            tensor_file: None,
            error_file: None,
            files: Vec::new(),
            fields: Vec::new(),
            tensors: Vec::new(),
            committed_at: String::new(),
            done: ids.iter().map(|i| done(i)).collect(),
        };
        let mut v = DatasetIndex::new(
            "t",
            vec![shard(0, &["a", "b"]), shard(1, &["c"])],
            vec![serde_json::json!({"kind": "x"})],
        );
        v.version = 3;
        commit(&out, &v).await.unwrap();
        let (outline, seen) =
            scan(&out, 3, Vec::new(), |seen: &mut Vec<(usize, usize, Done)>, s, d, done| seen.push((s, d, done)))
                .await
                .unwrap();
        assert_eq!((outline.version, outline.pipeline.len(), outline.shards.len()), (3, 1, 2));
        assert_eq!(outline.shards[1], ShardEntry { done: Vec::new(), ..v.shards[1].clone() });
        assert_eq!(seen, [(0, 0, done("a")), (0, 1, done("b")), (1, 0, done("c"))]);
        assert!(matches!(scan(&out, 4, (), |_, _, _, _| {}).await, Err(PipelineError::NoVersion { version: 4, .. })));
        out.write(&version_name(5), b"{\"version\": 5, \"shards\": [{\"done\": 3}]}".to_vec()).await.unwrap();
        assert!(matches!(scan(&out, 5, (), |_, _, _, _| {}).await, Err(PipelineError::JournalMismatch { .. })));
    }

    #[test]
    fn changes_read_as_a_sentence() {
        let c = Changes { new: 2, changed: 2, unchanged: 4, removed: 1, kept: 0 };
        assert_eq!(c.to_string(), "2 new, 2 changed, 4 unchanged (carried over), 1 removed");
        assert!(!c.is_empty());
        assert!(Changes { unchanged: 3, ..Default::default() }.is_empty());
    }
}

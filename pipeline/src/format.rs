//! The native dataset format: per shard a Parquet table (one row per item) and a safetensors
//! file (tensors keyed `<item_id>/<name>`), an error table, and a dataset-level `index.json`.
//!
//! Tables are written with polars, tensors with the safetensors crate, so Python's polars,
//! pyarrow and safetensors read them without conversion.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use polars::prelude::*;
use serde::{Deserialize, Serialize};

use crate::journal::ShardEntry;
use crate::stage::{ShardFiles, ShardSink, ShardTarget};
use crate::version::Changes;
use crate::{DType, ErrorRecord, FieldType, Item, PipelineError, StageError, Value};

/// Name of a shard's metadata table under `prefix` (the attempt's folder, see [`ShardTarget`]).
pub fn table_name(prefix: &str, shard: usize) -> String {
    format!("{prefix}/shard-{shard:05}.parquet")
}

/// Name of a shard's tensor file under `prefix`.
pub fn tensors_name(prefix: &str, shard: usize) -> String {
    format!("{prefix}/shard-{shard:05}.safetensors")
}

/// Name of a shard's error table under `prefix`.
pub fn errors_name(prefix: &str, shard: usize) -> String {
    format!("{prefix}/shard-{shard:05}.errors.parquet")
}

/// Writes one shard in the native format; tensors are spooled to disk as items arrive.
pub struct NativeShardWriter {
    shard: usize,
    dir: PathBuf,
    prefix: String,
    rows: Vec<(String, BTreeMap<String, Value>)>,
    spool: BufWriter<File>,
    spool_path: PathBuf,
    spooled: Vec<(String, DType, Vec<usize>, usize, usize)>,
    offset: usize,
    /// Items' files to publish with the shard: (local path, output name, row id).
    files: Vec<(PathBuf, String, String)>,
}

impl NativeShardWriter {
    /// Start a shard in its local scratch directory.
    pub fn new(target: &ShardTarget) -> Result<Self, PipelineError> {
        let (shard, dir) = (target.shard, target.dir.as_path());
        let spool_path = dir.join(format!("shard-{shard:05}.spool"));
        let spool = File::create(&spool_path)
            .map_err(|e| PipelineError::io(format!("cannot create {}", spool_path.display()), e))?;
        Ok(NativeShardWriter {
            shard,
            dir: dir.to_path_buf(),
            prefix: target.prefix(),
            rows: Vec::new(),
            spool: BufWriter::new(spool),
            spool_path,
            spooled: Vec::new(),
            offset: 0,
            files: Vec::new(),
        })
    }

    fn write_tensors(&mut self, path: &Path) -> Result<(), PipelineError> {
        let io = |e| PipelineError::io(format!("cannot write {}", path.display()), e);
        self.spool.flush().map_err(io)?;
        let file = File::open(&self.spool_path).map_err(io)?;
        // SAFETY: the spool file is private to this writer and no longer written to.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .spooled
            .iter()
            .map(|(key, dtype, shape, start, end)| {
                let view = safetensors::tensor::TensorView::new(st_dtype(*dtype), shape.clone(), &map[*start..*end])
                    .map_err(|e| PipelineError::Write { shard: self.shard, message: format!("tensor `{key}`: {e}") })?;
                Ok((key.clone(), view))
            })
            .collect::<Result<_, PipelineError>>()?;
        let meta = std::collections::HashMap::from([
            ("format".to_string(), "mugflow".to_string()),
            ("shard".to_string(), self.shard.to_string()),
        ]);
        safetensors::serialize_to_file(views, Some(meta), path)
            .map_err(|e| PipelineError::Write { shard: self.shard, message: e.to_string() })
    }
}

fn st_dtype(d: DType) -> safetensors::Dtype {
    match d {
        DType::U8 => safetensors::Dtype::U8,
        DType::Bool => safetensors::Dtype::BOOL,
        DType::I64 => safetensors::Dtype::I64,
        DType::F16 => safetensors::Dtype::F16,
        DType::BF16 => safetensors::Dtype::BF16,
        DType::F32 => safetensors::Dtype::F32,
    }
}

impl ShardSink for NativeShardWriter {
    fn add(&mut self, item: Item) -> Result<(), StageError> {
        for (name, t) in &item.tensors {
            self.spool.write_all(&t.data)?;
            let end = self.offset + t.data.len();
            self.spooled.push((format!("{}/{name}", item.id), t.dtype, t.shape.clone(), self.offset, end));
            self.offset = end;
        }
        self.files.extend(item.files.into_iter().map(|(name, local)| (local, name, item.id.clone())));
        self.rows.push((item.id, item.fields));
        Ok(())
    }

    fn finish(mut self: Box<Self>, errors: &[ErrorRecord]) -> Result<ShardFiles, PipelineError> {
        let mut out = ShardFiles { items: self.rows.len(), ..Default::default() };
        // Workers finish items in any order; sorting makes a shard's table the same on every run.
        self.rows.sort_by(|a, b| a.0.cmp(&b.0));
        let table_file = table_name(&self.prefix, self.shard);
        let table = self.dir.join(local_name(&table_file));
        let (mut df, fields) =
            rows_frame(&self.rows).map_err(|e| PipelineError::Write { shard: self.shard, message: e.to_string() })?;
        write_parquet(&mut df, &table, self.shard)?;
        out.files.push((table, table_file.clone()));
        out.table = table_file;
        out.fields = fields;
        if !self.spooled.is_empty() {
            let name = tensors_name(&self.prefix, self.shard);
            let path = self.dir.join(local_name(&name));
            self.write_tensors(&path)?;
            out.files.push((path, name.clone()));
            out.tensor_file = Some(name);
            let mut names: Vec<String> =
                self.spooled.iter().filter_map(|(k, ..)| k.rsplit_once('/').map(|(_, n)| n.to_string())).collect();
            names.sort();
            names.dedup();
            out.tensors = names;
        }
        if let Some(f) = write_error_table(errors, &self.dir, &errors_name(&self.prefix, self.shard), self.shard)? {
            out.error_file = Some(f.1.clone());
            out.files.push(f);
        }
        self.files.sort_by(|a, b| a.1.cmp(&b.1));
        for (local, name, row) in self.files {
            out.row_files.push((row, name.clone()));
            out.files.push((local, name));
        }
        let _ = std::fs::remove_file(&self.spool_path);
        Ok(out)
    }
}

/// The local scratch file name of an output name (folders flattened).
fn local_name(name: &str) -> String {
    name.replace('/', "__")
}

/// Write the shard's error records under the output name `name` (staged in `dir`); `None` when
/// there are none.
pub fn write_error_table(
    errors: &[ErrorRecord],
    dir: &Path,
    name: &str,
    shard: usize,
) -> Result<Option<(PathBuf, String)>, PipelineError> {
    if errors.is_empty() {
        return Ok(None);
    }
    // Failures arrive in completion order; sorting keeps the table the same on every run.
    let mut errors = errors.to_vec();
    errors.sort_by(|a, b| a.item_id.cmp(&b.item_id));
    let col =
        |name: &str, f: fn(&ErrorRecord) -> &str| Column::new(name.into(), errors.iter().map(f).collect::<Vec<_>>());
    let mut df = DataFrame::new(
        errors.len(),
        vec![
            col("item_id", |e| &e.item_id),
            col("uri", |e| &e.uri),
            col("stage", |e| &e.stage),
            col("message", |e| &e.message),
            col("causes", |e| &e.causes),
        ],
    )
    .map_err(|e| PipelineError::Write { shard, message: e.to_string() })?;
    let path = dir.join(local_name(name));
    write_parquet(&mut df, &path, shard)?;
    Ok(Some((path, name.to_string())))
}

fn write_parquet(df: &mut DataFrame, path: &Path, shard: usize) -> Result<(), PipelineError> {
    let file = File::create(path).map_err(|e| PipelineError::io(format!("cannot create {}", path.display()), e))?;
    ParquetWriter::new(file)
        .with_compression(ParquetCompression::Snappy)
        .finish(df)
        .map_err(|e| PipelineError::Write { shard, message: format!("{}: {e}", path.display()) })?;
    Ok(())
}

/// Write the rows of the Parquet table `bytes` whose `id` is in `keep` to `path` (a table carried
/// into a new dataset version without the rows of removed or changed items); returns the rows.
pub fn filter_table(
    bytes: bytes::Bytes,
    keep: &std::collections::HashSet<&str>,
    path: &Path,
) -> Result<usize, PipelineError> {
    let bad = |e: PolarsError| PipelineError::Write { shard: 0, message: format!("{}: {e}", path.display()) };
    let df = ParquetReader::new(std::io::Cursor::new(bytes)).finish().map_err(bad)?;
    let mask: BooleanChunked =
        df.column("id").map_err(bad)?.str().map_err(bad)?.iter().map(|v| v.is_some_and(|s| keep.contains(s))).collect();
    let mut kept = df.filter(&mask).map_err(bad)?;
    write_parquet(&mut kept, path, 0)?;
    Ok(kept.height())
}

/// Build a frame with an `id` column and one column per field (the union over all rows).
///
/// A column's type is its values' type; integers mixed with floats widen to float, any other
/// mix is written as text. Rows without the field get null.
pub fn rows_frame(rows: &[(String, BTreeMap<String, Value>)]) -> PolarsResult<(DataFrame, Vec<(String, FieldType)>)> {
    let mut types: BTreeMap<&str, Option<FieldType>> = BTreeMap::new();
    for (_, fields) in rows {
        for (name, v) in fields {
            let t = types.entry(name).or_insert(None);
            *t = match (*t, v.field_type()) {
                (None, x) | (x, None) => x,
                (Some(a), Some(b)) if a == b => Some(a),
                (Some(FieldType::Int), Some(FieldType::Float)) | (Some(FieldType::Float), Some(FieldType::Int)) => {
                    Some(FieldType::Float)
                }
                _ => Some(FieldType::Str),
            };
        }
    }
    let mut cols = vec![Column::new("id".into(), rows.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())];
    let mut schema = vec![("id".to_string(), FieldType::Str)];
    for (name, ty) in types {
        let ty = ty.unwrap_or(FieldType::Str);
        fn get<'r>(r: &'r (String, BTreeMap<String, Value>), name: &str) -> Option<&'r Value> {
            r.1.get(name).filter(|v| **v != Value::Null)
        }
        let col = match ty {
            FieldType::Bool => Column::new(
                name.into(),
                rows.iter()
                    .map(|r| get(r, name).and_then(|v| if let Value::Bool(b) = v { Some(*b) } else { None }))
                    .collect::<Vec<_>>(),
            ),
            FieldType::Int => {
                Column::new(name.into(), rows.iter().map(|r| get(r, name).and_then(Value::as_i64)).collect::<Vec<_>>())
            }
            FieldType::Float => {
                Column::new(name.into(), rows.iter().map(|r| get(r, name).and_then(Value::as_f64)).collect::<Vec<_>>())
            }
            FieldType::Str | FieldType::Tensor => {
                Column::new(name.into(), rows.iter().map(|r| get(r, name).map(|v| v.to_string())).collect::<Vec<_>>())
            }
        };
        cols.push(col);
        schema.push((name.to_string(), ty));
    }
    Ok((DataFrame::new(rows.len(), cols)?, schema))
}

/// One version of a dataset: what a reader needs to find every row of it. Stored as
/// `_versions/vNNNNN.json` and mirrored as the root `index.json` for the latest version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatasetIndex {
    /// Always "mugflow".
    pub format: String,
    /// Version of this layout (2: versioned datasets with attempt-unique file names).
    pub format_version: u32,
    /// The job that wrote it.
    pub job: String,
    /// Dataset version, 1 for the first run's.
    #[serde(default)]
    pub version: u64,
    /// The version this one was built on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    /// The plan (new and changed items of the run) that made it.
    #[serde(default)]
    pub plan: String,
    /// When it was committed (RFC 3339, UTC).
    #[serde(default)]
    pub created_at: String,
    /// What changed relative to the parent, in input items.
    #[serde(default)]
    pub changes: Changes,
    /// The shards holding this version's rows: each one's table lists exactly the rows of this
    /// version (shards carried over with some rows dropped point at a filtered copy).
    pub shards: Vec<ShardEntry>,
    /// Total items written.
    pub items: usize,
    /// Total error records.
    pub errors: usize,
    /// Metadata fields across shards.
    pub fields: Vec<(String, FieldType)>,
    /// Tensor names across shards.
    pub tensors: Vec<String>,
    /// The stages that produced the data, with all parameters and the sha256 of every
    /// checkpoint they read.
    pub pipeline: Vec<serde_json::Value>,
    /// When the input was another mugflow dataset: its location and its `pipeline`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub derived_from: Option<serde_json::Value>,
}

/// How a dataset was made, as index.json records it.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    /// Each stage's kind, parameters and checkpoint identities.
    pub pipeline: Vec<serde_json::Value>,
    /// The input dataset's location and pipeline, when the job read one.
    pub derived_from: Option<serde_json::Value>,
}

/// A checkpoint's identity: its path and the sha256 of its bytes (of each file's name and
/// digest, in name order, for a folder of shards). Every run needs it (it is part of each item's
/// content key), so a file's digest is cached by its path, size and modification time under
/// `$XDG_CACHE_HOME/mugflow/sha256` (or `~/.cache/...`): a 20 GB checkpoint is read once, not
/// every night.
pub fn checkpoint_identity(path: &Path) -> Result<serde_json::Value, PipelineError> {
    use sha2::{Digest, Sha256};
    let io = |e| PipelineError::io(format!("cannot read checkpoint {}", path.display()), e);
    let sha256 = if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .map_err(io)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        // The shards are read side by side (T5-XXL: two files of ~10 GB).
        let digests: Vec<std::io::Result<String>> = std::thread::scope(|scope| {
            let hashing: Vec<_> = files.iter().map(|f| scope.spawn(move || cached_digest(f))).collect();
            hashing
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| Err(std::io::Error::other("hashing panicked"))))
                .collect()
        });
        let mut h = Sha256::new();
        for (f, digest) in files.iter().zip(digests) {
            h.update(f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default().as_bytes());
            h.update(digest.map_err(io)?.as_bytes());
        }
        hex::encode(h.finalize())
    } else {
        cached_digest(path).map_err(io)?
    };
    Ok(serde_json::json!({ "path": path.display().to_string(), "sha256": sha256 }))
}

/// The sha256 of a file, from the digest cache when its path, size and modification time are
/// those it was computed for.
fn cached_digest(p: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let meta = std::fs::metadata(p)?;
    let mtime = meta.modified()?.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let abs = std::fs::canonicalize(p)?;
    let key = format!("{}\0{}\0{mtime}", abs.display(), meta.len());
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .map(|d| d.join("mugflow/sha256").join(hex::encode(&Sha256::digest(key.as_bytes())[..16])));
    if let Some(hit) = cache.as_ref().and_then(|c| std::fs::read_to_string(c).ok()) {
        if hit.len() == 64 && hit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(hit);
        }
    }
    let mut h = Sha256::new();
    // Large reads: a checkpoint is gigabytes, std::io::copy's 8 KiB buffer means a million reads.
    std::io::copy(&mut std::io::BufReader::with_capacity(4 << 20, File::open(p)?), &mut h)?;
    let digest = hex::encode(h.finalize());
    if let Some(c) = cache {
        // Best effort: without a writable cache the digest is computed again next time.
        let _ = c.parent().map(std::fs::create_dir_all);
        let tmp = c.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &digest).is_ok() {
            let _ = std::fs::rename(&tmp, &c);
        }
    }
    Ok(digest)
}

/// Reads single tensors out of committed safetensors files by their byte ranges (a shard's file
/// may hold gigabytes; one item's tensor is a few megabytes). Each file's header is read once.
#[derive(Default)]
pub struct TensorFiles {
    headers: std::sync::Mutex<std::collections::HashMap<String, std::sync::Arc<TensorHeader>>>,
}

/// One tensor's entry in a safetensors header.
#[derive(Debug, Clone, Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: [u64; 2],
}

/// A file's tensor directory: where each tensor's bytes start and end.
struct TensorHeader {
    data_start: u64,
    entries: std::collections::HashMap<String, TensorEntry>,
}

impl TensorFiles {
    /// The tensor `key` (`<item id>/<name>`) of the safetensors file at `url`, byte for byte.
    pub async fn read(&self, url: &str, key: &str) -> Result<crate::Tensor, StageError> {
        let header = self.header(url).await?;
        let (dir, name) = url.rsplit_once('/').unwrap_or((".", url));
        let e = header.entries.get(key).ok_or_else(|| StageError::msg(format!("{url} has no tensor `{key}`")))?;
        let ty = safetensors_dtype(&e.dtype)
            .ok_or_else(|| StageError::msg(format!("`{key}`: unsupported dtype {}", e.dtype)))?;
        let [a, b] = e.data_offsets;
        let bytes =
            crate::io::Location::parse(dir)?.read_range(name, header.data_start + a..header.data_start + b).await?;
        crate::Tensor::new(ty, e.shape.clone(), bytes)
            .ok_or_else(|| StageError::msg(format!("`{key}`: byte length does not match its shape")))
    }

    async fn header(&self, url: &str) -> Result<std::sync::Arc<TensorHeader>, StageError> {
        let poisoned = |_| StageError::msg("tensor header cache poisoned");
        if let Some(h) = self.headers.lock().map_err(poisoned)?.get(url) {
            return Ok(h.clone());
        }
        let (dir, name) = url.rsplit_once('/').unwrap_or((".", url));
        let loc = crate::io::Location::parse(dir)?;
        let len = loc.read_range(name, 0..8).await?;
        let n = u64::from_le_bytes(len[..].try_into().map_err(|_| StageError::msg(format!("{url} is too short")))?);
        let json = loc.read_range(name, 8..8 + n).await?;
        let mut entries: std::collections::HashMap<String, serde_json::Value> = serde_json::from_slice(&json)
            .map_err(|e| StageError::msg(format!("{url}: not a safetensors header: {e}")))?;
        entries.remove("__metadata__");
        let entries = entries
            .into_iter()
            .map(|(k, v)| serde_json::from_value(v).map(|e| (k, e)))
            .collect::<Result<_, _>>()
            .map_err(|e| StageError::msg(format!("{url}: bad tensor entry: {e}")))?;
        let header = std::sync::Arc::new(TensorHeader { data_start: 8 + n, entries });
        self.headers.lock().map_err(poisoned)?.insert(url.to_string(), header.clone());
        Ok(header)
    }
}

/// Our dtype of a safetensors dtype name.
fn safetensors_dtype(name: &str) -> Option<DType> {
    Some(match name {
        "U8" => DType::U8,
        "BOOL" => DType::Bool,
        "I64" => DType::I64,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F32" => DType::F32,
        _ => return None,
    })
}

impl DatasetIndex {
    /// An index over the given committed shards (version fields left for the caller).
    pub fn new(job: &str, shards: Vec<ShardEntry>, pipeline: Vec<serde_json::Value>) -> Self {
        let mut fields: Vec<(String, FieldType)> = Vec::new();
        let mut tensors: Vec<String> = Vec::new();
        for s in &shards {
            for f in &s.fields {
                if !fields.iter().any(|(n, _)| *n == f.0) {
                    fields.push(f.clone());
                }
            }
            tensors.extend(s.tensors.iter().cloned());
        }
        tensors.sort();
        tensors.dedup();
        DatasetIndex {
            format: "mugflow".into(),
            format_version: 2,
            job: job.into(),
            version: 0,
            parent: None,
            plan: String::new(),
            created_at: String::new(),
            changes: Changes::default(),
            items: shards.iter().map(|s| s.items).sum(),
            errors: shards.iter().map(|s| s.errors).sum(),
            shards,
            fields,
            tensors,
            pipeline,
            derived_from: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Tensor, Value};

    #[test]
    fn shard_round_trips_through_parquet_and_safetensors() {
        let dir = tempfile::tempdir().unwrap();
        let target = ShardTarget { shard: 3, dir: dir.path().to_path_buf(), attempt: "a1".into() };
        let mut w: Box<dyn ShardSink> = Box::new(NativeShardWriter::new(&target).unwrap());
        for (i, id) in ["a", "b"].iter().enumerate() {
            let mut item = Item::new(*id);
            item.set("n", i as i64);
            if i == 0 {
                item.set("score", 0.5);
            } else {
                item.set("score", 2i64);
            }
            let data: Vec<u8> = [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect();
            item.tensors.insert("latent".into(), Tensor::new(DType::F32, vec![2], data.into()).unwrap());
            w.add(item).unwrap();
        }
        let errors = vec![ErrorRecord {
            item_id: "c".into(),
            uri: "c.mp4".into(),
            stage: "1:probe".into(),
            message: "bad".into(),
            causes: String::new(),
        }];
        let files = w.finish(&errors).unwrap();
        assert_eq!(
            files.files.iter().map(|f| f.1.as_str()).collect::<Vec<_>>(),
            [
                "shards/a1/shard-00003.parquet",
                "shards/a1/shard-00003.safetensors",
                "shards/a1/shard-00003.errors.parquet"
            ]
        );
        assert_eq!(files.table, "shards/a1/shard-00003.parquet");
        assert_eq!(files.tensor_file.as_deref(), Some("shards/a1/shard-00003.safetensors"));
        assert_eq!(files.error_file.as_deref(), Some("shards/a1/shard-00003.errors.parquet"));
        assert_eq!(
            files.fields,
            [("id".into(), FieldType::Str), ("n".into(), FieldType::Int), ("score".into(), FieldType::Float)]
        );
        assert_eq!(files.tensors, ["latent"]);

        let df = ParquetReader::new(File::open(&files.files[0].0).unwrap()).finish().unwrap();
        assert_eq!(df.height(), 2);
        assert_eq!(df.column("score").unwrap().f64().unwrap().get(1), Some(2.0));
        let bytes = std::fs::read(&files.files[1].0).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let t = st.tensor("b/latent").unwrap();
        assert_eq!(t.shape(), [2]);
        assert_eq!(t.data(), [1.0f32, 2.0].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>());
        let e = ParquetReader::new(File::open(&files.files[2].0).unwrap()).finish().unwrap();
        assert_eq!(e.column("stage").unwrap().str().unwrap().get(0), Some("1:probe"));
        let _ = Value::Null;
    }
}

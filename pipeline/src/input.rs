//! The job's input listing: a glob, a list file, or a CSV/Parquet table read with polars.
//!
//! Every listing yields items with a stable `id` and a `uri`; table listings add their columns.
//! The listing is sorted by id, so sharding is deterministic for the same inputs.
//!
//! Listings of millions of rows are held lean: the rows of one listing share one list of field
//! names ([`Fields`]), each row holds only its values, and a table's columns are moved into rows
//! without an intermediate copy (see docs/PERFORMANCE.md, "Planning").

use std::collections::BTreeMap;
use std::sync::Arc;

use polars::prelude::*;

use crate::io::Location;
use crate::manifest::{InputListing, InputSpec};
use crate::{Field, FieldType, PipelineError, Value};

/// One input item before any stage ran.
#[derive(Debug, Clone, PartialEq)]
pub struct InputItem {
    /// Stable id (from the id column, or derived from the path).
    pub id: String,
    /// Fields: always `uri`, plus the columns of a table listing.
    pub fields: Fields,
    /// Why this input cannot be processed (an empty path, a repeated id): it becomes an error
    /// record of the job instead of stopping it.
    pub error: Option<String>,
}

/// The fields of one listed input: its values, in the order of field names it shares with every
/// other row of its listing (sorted, so the fields read, serialize and hash as a sorted map would).
/// A row of a million-row catalog costs its values and two pointers, not a map of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Fields {
    names: Arc<[String]>,
    values: Box<[Value]>,
}

impl Fields {
    /// Fields from `names` (shared by the rows of a listing, sorted and unique) and one value per
    /// name.
    fn new(names: Arc<[String]>, values: Vec<Value>) -> Self {
        debug_assert!(names.windows(2).all(|w| w[0] < w[1]) && names.len() == values.len());
        Fields { names, values: values.into_boxed_slice() }
    }

    /// A field's value.
    pub fn get(&self, name: &str) -> Option<&Value> {
        self.names.binary_search_by(|n| n.as_str().cmp(name)).ok().map(|i| &self.values[i])
    }

    /// The `uri` field as text ("" when absent or not text).
    pub fn uri(&self) -> &str {
        self.get("uri").and_then(Value::as_str).unwrap_or_default()
    }

    /// (name, value) pairs, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.names.iter().map(String::as_str).zip(self.values.iter())
    }

    /// The fields as the map an [`crate::Item`] holds.
    pub fn into_map(self) -> BTreeMap<String, Value> {
        self.names.iter().cloned().zip(self.values.into_vec()).collect()
    }
}

impl From<BTreeMap<String, Value>> for Fields {
    fn from(map: BTreeMap<String, Value>) -> Self {
        let (names, values): (Vec<String>, Vec<Value>) = map.into_iter().unzip();
        Fields::new(names.into(), values)
    }
}

impl serde::Serialize for Fields {
    /// As a map sorted by name: the same text a `BTreeMap<String, Value>` gives.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

/// All input items of a job and the fields they carry.
#[derive(Debug, Clone)]
pub struct Inputs {
    /// Items sorted by id.
    pub items: Vec<InputItem>,
    /// Fields every item has (`id`, `uri`, table columns).
    pub fields: Vec<Field>,
}

/// Characters that make a path component a glob pattern.
const GLOB_META: &[char] = &['*', '?', '[', '{'];

/// Read the listing a manifest's `job.input` describes.
pub async fn list_inputs(spec: &InputSpec) -> Result<Inputs, PipelineError> {
    let listing = match spec {
        InputSpec::Glob(g) => InputListing { glob: Some(g.clone()), ..InputListing::default() },
        InputSpec::Listing(l) => l.clone(),
    };
    let mut fields = vec![
        Field::new("id", FieldType::Str, "stable item id, derived from the input"),
        Field::new("uri", FieldType::Str, "path or URL of the source"),
    ];
    let mut items = match (&listing.glob, &listing.list, &listing.table, &listing.dataset) {
        (Some(g), None, None, None) => from_paths(glob(g).await?)?,
        (None, Some(l), None, None) => from_paths(list_file(l, listing.encoding).await?)?,
        (None, None, Some(t), None) => {
            let (items, extra) = table(t, &listing).await?;
            fields.extend(extra);
            items
        }
        (None, None, None, Some(d)) => {
            let (items, extra) = dataset(d).await?;
            fields.extend(extra);
            items
        }
        _ => {
            return Err(PipelineError::Input(
                "job.input must name exactly one of `glob`, `list`, `table` or `dataset`".into(),
            ))
        }
    };
    // A stable sort keeps listing order among equal ids: the first one is processed, the
    // repeats become error records.
    items.sort_by(|a, b| a.id.cmp(&b.id));
    for i in 1..items.len() {
        if items[i].id == items[i - 1].id && items[i].error.is_none() {
            let first = items[i - 1].fields.get("uri").map(Value::to_string).unwrap_or_default();
            items[i].error = Some(format!(
                "the id `{}` is used twice (also by {first}); ids must be unique, this one is skipped",
                items[i].id
            ));
        }
    }
    Ok(Inputs { items, fields })
}

/// Expand a glob over a local path or URL into full uris, sorted.
async fn glob(pattern: &str) -> Result<Vec<String>, PipelineError> {
    // The literal directory before the first component with a wildcard is listed recursively.
    let (scheme, path) = match pattern.split_once("://") {
        Some((s, p)) => (Some(s), p),
        None => (None, pattern),
    };
    let comps: Vec<&str> = path.split('/').collect();
    let first_meta = comps.iter().position(|c| c.contains(GLOB_META)).unwrap_or(comps.len().saturating_sub(1));
    let base = comps[..first_meta].join("/");
    let base_text = match scheme {
        Some(s) => format!("{s}://{base}"),
        None if base.is_empty() && !path.starts_with('/') => ".".to_string(),
        None => {
            if base.is_empty() {
                "/".to_string()
            } else {
                base.clone()
            }
        }
    };
    let loc = Location::parse(&base_text)?;
    let rel_pattern = comps[first_meta..].join("/");
    let matcher = globset::GlobBuilder::new(&rel_pattern)
        .literal_separator(true)
        .build()
        .map_err(|e| PipelineError::Input(format!("invalid glob `{pattern}`: {e}")))?
        .compile_matcher();
    let names = loc.list("").await?;
    let uris: Vec<String> = names.into_iter().filter(|n| matcher.is_match(n)).map(|n| loc.url_of(&n)).collect();
    if uris.is_empty() {
        return Err(PipelineError::Input(format!("the glob `{pattern}` matches no files")));
    }
    Ok(uris)
}

/// Read a list file: one path or URL per line; blank lines and `#` comments are skipped.
/// Relative paths are relative to the list file's directory.
async fn list_file(list: &str, encoding: crate::manifest::TextEncoding) -> Result<Vec<String>, PipelineError> {
    let (dir, name) = split_parent(list);
    let raw = Location::parse(dir)?.read(name).await?;
    let text = String::from_utf8(as_utf8(&raw, encoding).into_owned()).map_err(|e| {
        PipelineError::Input(format!(
            "{list} is not UTF-8 text (at byte {}); if it is Latin-1, set `encoding = \"latin-1\"` in job.input",
            e.utf8_error().valid_up_to()
        ))
    })?;
    Ok(text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).map(|l| resolve(dir, l)).collect())
}

/// Read a CSV or Parquet listing with polars; every column becomes an item field.
async fn table(path: &str, listing: &InputListing) -> Result<(Vec<InputItem>, Vec<Field>), PipelineError> {
    let (dir, name) = split_parent(path);
    let bytes = Location::parse(dir)?.read(name).await?;
    parse_table(path, bytes, listing)
}

/// A listing file's bytes with a UTF-8 byte-order mark dropped and, for Latin-1, converted to
/// UTF-8; UTF-8 bytes come back as they are (their callers check them).
fn as_utf8(bytes: &[u8], encoding: crate::manifest::TextEncoding) -> std::borrow::Cow<'_, [u8]> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    match encoding {
        crate::manifest::TextEncoding::Utf8 => std::borrow::Cow::Borrowed(bytes),
        crate::manifest::TextEncoding::Latin1 => {
            std::borrow::Cow::Owned(bytes.iter().map(|&b| char::from(b)).collect::<String>().into_bytes())
        }
    }
}

/// The UTF-8 text of a CSV listing, and the data rows (0-based, header excluded) that were not
/// valid UTF-8, with a message naming the line: those become error records (their bytes are
/// replaced by U+FFFD so the rest of the file parses). A byte-order mark is skipped. A file whose
/// header or most rows are not UTF-8 is in another encoding: one error naming the file and the
/// `encoding` setting. An empty file (no header line) is an error too.
fn decode_csv(
    path: &str,
    raw: &bytes::Bytes,
    encoding: crate::manifest::TextEncoding,
) -> Result<(bytes::Bytes, BTreeMap<usize, String>), PipelineError> {
    let decoded = as_utf8(raw, encoding);
    let bytes = decoded.as_ref();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(PipelineError::Input(format!("{path} is empty: a table needs at least a header line")));
    }
    if std::str::from_utf8(bytes).is_ok() {
        // Valid UTF-8 as read (the common case): the file's own bytes, not a copy of them.
        let text = match &decoded {
            std::borrow::Cow::Borrowed(b) => raw.slice_ref(b),
            std::borrow::Cow::Owned(b) => bytes::Bytes::from(b.clone()),
        };
        return Ok((text, BTreeMap::new()));
    }
    let other = |what: String| {
        PipelineError::Input(format!(
            "{path} is not UTF-8 text ({what}); if it is Latin-1 or Windows-1252, set `encoding = \"latin-1\"` in job.input"
        ))
    };
    let mut reader = csv::ReaderBuilder::new().has_headers(false).flexible(true).from_reader(bytes);
    let (mut bad, mut rows) = (BTreeMap::new(), 0usize);
    for (i, record) in reader.byte_records().enumerate() {
        let Ok(record) = record else { continue };
        rows = i;
        let Some(column) = record.iter().position(|f| std::str::from_utf8(f).is_err()) else { continue };
        if i == 0 {
            return Err(other("the header line is not".into()));
        }
        let line = record.position().map_or(i + 1, |p| p.line() as usize);
        bad.insert(i - 1, format!("{path}:{line}: not UTF-8 text (field {} of the row)", column + 1));
    }
    if bad.len() * 2 > rows {
        return Err(other(format!("{} of {rows} rows are not", bad.len())));
    }
    Ok((String::from_utf8_lossy(bytes).into_owned().into_bytes().into(), bad))
}

/// Data rows of a CSV file (0-based, header excluded) whose field count differs from the
/// header's, with a message naming the line: they become error records, not a failed job.
fn ragged_rows(path: &str, bytes: &[u8]) -> BTreeMap<usize, String> {
    let mut reader = csv::ReaderBuilder::new().has_headers(true).flexible(true).from_reader(bytes);
    let width = reader.headers().map(|h| h.len()).unwrap_or(0);
    let mut bad = BTreeMap::new();
    for (row, record) in reader.records().enumerate() {
        match record {
            Ok(r) if r.len() == width => {}
            Ok(r) => {
                let line = r.position().map_or(row + 2, |p| p.line() as usize);
                bad.insert(row, format!("{path}:{line}: {} fields, the header has {width}", r.len()));
            }
            Err(e) => {
                bad.insert(row, format!("{path}: row {}: {e}", row + 1));
            }
        }
    }
    bad
}

/// Parse the bytes of a CSV or Parquet listing (the kind is taken from `path`'s extension);
/// relative paths in it are resolved against `path`'s directory. A file that cannot be read as a
/// table is an error; a bad row (wrong field count, empty path or id) becomes an item error.
pub fn parse_table(
    path: &str,
    bytes: bytes::Bytes,
    listing: &InputListing,
) -> Result<(Vec<InputItem>, Vec<Field>), PipelineError> {
    let (dir, name) = split_parent(path);
    let bad = |e: PolarsError| PipelineError::Input(format!("cannot read table {path}: {e}"));
    let mut ragged = BTreeMap::new();
    let df = if name.ends_with(".parquet") {
        ParquetReader::new(std::io::Cursor::new(bytes)).finish().map_err(bad)?
    } else if name.ends_with(".csv") {
        // The file's bytes end with this block: only the frame is kept.
        let raw = bytes;
        let (text, not_utf8) = decode_csv(path, &raw, listing.encoding)?;
        ragged = ragged_rows(path, &text);
        ragged.extend(not_utf8);
        CsvReadOptions::default()
            .with_has_header(true)
            .with_parse_options(CsvParseOptions::default().with_truncate_ragged_lines(true))
            .into_reader_with_file_handle(std::io::Cursor::new(text))
            .finish()
            .map_err(bad)?
    } else {
        return Err(PipelineError::Input(format!("{path}: a table listing must be a .csv or .parquet file")));
    };
    let column = |c: &str| {
        df.column(c).map_err(|_| {
            let cols: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
            PipelineError::Input(format!("{path} has no column `{c}`; its columns are: {}", cols.join(", ")))
        })
    };
    column(&listing.path_column)?;
    if let Some(id) = &listing.id_column {
        column(id)?;
    }
    let mut fields = Vec::new();
    let mut cols: Vec<(String, Vec<Value>)> = Vec::new();
    for c in df.columns() {
        let (ty, values) = column_values(c.as_materialized_series()).map_err(bad)?;
        let name = c.name().to_string();
        if name != "id" && name != "uri" {
            fields.push(Field::new(name.clone(), ty, "column of the input table"));
        }
        cols.push((name, values));
    }
    // The values now live in `cols`; the frame's copy of them is not needed any more.
    drop(df);
    let position = |c: &str| cols.iter().position(|(n, _)| n == c);
    let (path_col, id_col) = (position(&listing.path_column), listing.id_column.as_deref().and_then(position));
    let items = into_rows(cols, Some("uri"), |row, values| {
        let path_value = path_col.map(|c| &values[c]);
        let line = row + 2; // 1-based, after the header line
        let raw_path = match path_value {
            Some(Value::Str(p)) if !p.trim().is_empty() => Some(p.trim().to_string()),
            _ => None,
        };
        let mut error = match path_value {
            Some(v @ (Value::Bool(_) | Value::Int(_) | Value::Float(_))) => Some(format!(
                "{path}:{line}: `{}` must be text (a path or URL), not {}",
                listing.path_column,
                v.field_type().map_or("null".into(), |t| t.to_string())
            )),
            _ => raw_path.is_none().then(|| format!("{path}:{line}: empty `{}`", listing.path_column)),
        };
        if let Some(e) = ragged.get(&row) {
            error = Some(e.clone());
        }
        let id = match (&listing.id_column, id_col) {
            (Some(c), Some(i)) => match &values[i] {
                Value::Null => {
                    error = Some(format!("{path}:{line}: empty id in column `{c}`"));
                    format!("{name}:{line}")
                }
                v => v.to_string(),
            },
            _ => raw_path.as_deref().map_or_else(|| format!("{name}:{line}"), derive_id),
        };
        let uri = Value::Str(raw_path.map(|p| resolve(dir, &p)).unwrap_or_default());
        Ok::<_, PipelineError>((id, error, uri))
    })?;
    Ok((items, fields))
}

/// The field naming the tensors file of a dataset item's shard.
pub const DATASET_TENSORS: &str = "dataset_tensors";

/// The rows of a written mugflow dataset (its latest version's index.json, then each shard's table) as items:
/// ids and fields as written, plus [`DATASET_TENSORS`].
async fn dataset(root: &str) -> Result<(Vec<InputItem>, Vec<Field>), PipelineError> {
    let loc = Location::parse(root)?;
    let bad = |what: String| PipelineError::Input(format!("dataset {root}: {what}"));
    let index: crate::format::DatasetIndex = serde_json::from_slice(
        &loc.read_opt("index.json").await?.ok_or_else(|| bad("no index.json: is it a mugflow dataset?".into()))?,
    )
    .map_err(|e| bad(format!("index.json: {e}")))?;
    let mut items = Vec::new();
    let mut fields: Vec<Field> = Vec::new();
    for shard in &index.shards {
        let tensors = shard.tensor_file.as_ref().map(|t| (DATASET_TENSORS, Value::Str(loc.url_of(t))));
        let (rows, types) = shard_rows(&shard.table, loc.read(&shard.table).await?, tensors).map_err(bad)?;
        for field in types {
            if !fields.iter().any(|f| f.name == field.name) {
                fields.push(field);
            }
        }
        items.extend(rows);
    }
    fields.push(Field::new(DATASET_TENSORS, FieldType::Str, "the input dataset's tensors file of this item"));
    Ok((items, fields))
}

/// The rows of a written shard's metadata table (`table` names it in messages) as items, with
/// the table's fields but `id`; `extra`, when given, is one more field every row gets.
pub(crate) fn shard_rows(
    table: &str,
    bytes: bytes::Bytes,
    extra: Option<(&str, Value)>,
) -> Result<(Vec<InputItem>, Vec<Field>), String> {
    let df = ParquetReader::new(std::io::Cursor::new(bytes)).finish().map_err(|e| format!("{table}: {e}"))?;
    let mut cols = Vec::new();
    let mut types = Vec::new();
    for c in df.columns() {
        let (ty, values) = column_values(c.as_materialized_series()).map_err(|e| format!("{table}: {e}"))?;
        if c.name() != "id" {
            types.push(Field::new(c.name().to_string(), ty, "field of the input dataset"));
        }
        cols.push((c.name().to_string(), values));
    }
    drop(df);
    let id_col = cols.iter().position(|(c, _)| c == "id");
    let (extra_name, extra_value) = extra.map_or((None, Value::Null), |(n, v)| (Some(n), v));
    let rows = into_rows(cols, extra_name, |row, values| {
        match id_col.map(|i| std::mem::replace(&mut values[i], Value::Null)) {
            Some(Value::Str(id)) => Ok((id, None, extra_value.clone())),
            _ => Err(format!("{table}: row {row} has no id")),
        }
    })?;
    Ok((rows, types))
}

/// A text column of a CSV or Parquet table keyed by another column (captions by item id).
/// A missing column, an empty key or a duplicate key is an error naming the file and line.
pub async fn read_text_table(
    path: &str,
    key_column: &str,
    text_column: &str,
) -> Result<BTreeMap<String, String>, PipelineError> {
    let (dir, name) = split_parent(path);
    let bytes = Location::parse(dir)?.read(name).await?;
    let bad = |e: PolarsError| PipelineError::Input(format!("cannot read table {path}: {e}"));
    let df = if name.ends_with(".parquet") {
        ParquetReader::new(std::io::Cursor::new(bytes)).finish().map_err(bad)?
    } else if name.ends_with(".csv") {
        CsvReadOptions::default()
            .with_has_header(true)
            .into_reader_with_file_handle(std::io::Cursor::new(bytes))
            .finish()
            .map_err(bad)?
    } else {
        return Err(PipelineError::Input(format!("{path}: a table must be a .csv or .parquet file")));
    };
    let column = |c: &str| -> Result<Vec<Value>, PipelineError> {
        let col = df.column(c).map_err(|_| {
            let cols: Vec<String> = df.get_column_names().iter().map(|s| s.to_string()).collect();
            PipelineError::Input(format!("{path} has no column `{c}`; its columns are: {}", cols.join(", ")))
        })?;
        Ok(column_values(col.as_materialized_series()).map_err(bad)?.1)
    };
    let (keys, texts) = (column(key_column)?, column(text_column)?);
    let mut out = BTreeMap::new();
    for (row, (k, t)) in keys.iter().zip(&texts).enumerate() {
        let line = row + 2;
        if matches!(k, Value::Null) {
            return Err(PipelineError::Input(format!("{path}:{line}: empty `{key_column}`")));
        }
        let text = match t {
            Value::Null => String::new(),
            v => v.to_string(),
        };
        if out.insert(k.to_string(), text).is_some() {
            return Err(PipelineError::Input(format!("{path}:{line}: `{key_column}` {k} appears twice")));
        }
    }
    Ok(out)
}

/// Table columns moved into input items, row by row, without a copy: each item's fields are its
/// row's values of every column but `id`, plus the field `extra` when given (it replaces a column
/// of that name), under one list of names all rows share. `row` sees a row's values in column
/// order and returns the item's id, its error, and the value of `extra`.
fn into_rows<E>(
    cols: Vec<(String, Vec<Value>)>,
    extra: Option<&str>,
    mut row: impl FnMut(usize, &mut [Value]) -> Result<(String, Option<String>, Value), E>,
) -> Result<Vec<InputItem>, E> {
    let height = cols.first().map_or(0, |(_, v)| v.len());
    let mut names: Vec<&str> = cols.iter().map(|(n, _)| n.as_str()).filter(|n| *n != "id").chain(extra).collect();
    names.sort_unstable();
    names.dedup();
    // Where each field's value comes from: a column, or `None` for `extra`.
    let source: Vec<Option<usize>> =
        names.iter().map(|n| if Some(*n) == extra { None } else { cols.iter().position(|(c, _)| c == n) }).collect();
    let names: Arc<[String]> = names.into_iter().map(str::to_string).collect();
    let mut columns: Vec<std::vec::IntoIter<Value>> = cols.into_iter().map(|(_, v)| v.into_iter()).collect();
    let mut values: Vec<Value> = Vec::with_capacity(columns.len());
    let mut items = Vec::with_capacity(height);
    for r in 0..height {
        values.clear();
        values.extend(columns.iter_mut().map(|c| c.next().unwrap_or(Value::Null)));
        let (id, error, extra_value) = row(r, &mut values)?;
        let mut extra_value = Some(extra_value);
        let fields = source
            .iter()
            .map(|s| match s {
                Some(c) => std::mem::replace(&mut values[*c], Value::Null),
                None => extra_value.take().unwrap_or(Value::Null),
            })
            .collect();
        items.push(InputItem { id, fields: Fields::new(names.clone(), fields), error });
    }
    Ok(items)
}

fn column_values(s: &Series) -> PolarsResult<(FieldType, Vec<Value>)> {
    use polars::prelude::DataType as D;
    Ok(match s.dtype() {
        D::Boolean => {
            let ca = s.bool()?;
            (FieldType::Bool, (0..ca.len()).map(|i| ca.get(i).map_or(Value::Null, Value::Bool)).collect())
        }
        d if d.is_integer() => {
            let s = s.cast(&D::Int64)?;
            let ca = s.i64()?;
            (FieldType::Int, (0..ca.len()).map(|i| ca.get(i).map_or(Value::Null, Value::Int)).collect())
        }
        d if d.is_float() => {
            let s = s.cast(&D::Float64)?;
            let ca = s.f64()?;
            (FieldType::Float, (0..ca.len()).map(|i| ca.get(i).map_or(Value::Null, Value::Float)).collect())
        }
        _ => {
            let s = s.cast(&D::String)?;
            let ca = s.str()?;
            (
                FieldType::Str,
                (0..ca.len()).map(|i| ca.get(i).map_or(Value::Null, |x| Value::Str(x.to_string()))).collect(),
            )
        }
    })
}

/// Turn a list of uris into items. Ids are file stems when those are unique in the listing
/// (the common case, and what the MUG-V trainer's `<sample_id>.<ext>` convention expects),
/// else paths below the listing's common directory.
fn from_paths(uris: Vec<String>) -> Result<Vec<InputItem>, PipelineError> {
    let stem = |u: &str| derive_id(u.rsplit('/').next().unwrap_or(u));
    let mut stems: Vec<String> = uris.iter().map(|u| stem(u)).collect();
    stems.sort();
    let unique = stems.windows(2).all(|w| w[0] != w[1]);
    let common = common_dir(&uris);
    let names: Arc<[String]> = vec!["uri".to_string()].into();
    Ok(uris
        .into_iter()
        .map(|uri| {
            let id = if unique { stem(&uri) } else { derive_id(uri[common.len()..].trim_start_matches('/')) };
            InputItem { id, fields: Fields::new(names.clone(), vec![Value::Str(uri)]), error: None }
        })
        .collect())
}

/// An id from a relative path: extension dropped, directories joined with `-`.
pub fn derive_id(rel: &str) -> String {
    let rel = rel.rsplit_once("://").map_or(rel, |(_, p)| p);
    let last = rel.rsplit('/').next().unwrap_or(rel);
    let stem_len = match last.rfind('.') {
        Some(dot) if dot > 0 => rel.len() - (last.len() - dot),
        _ => rel.len(),
    };
    rel[..stem_len].trim_start_matches("./").trim_start_matches('/').replace('/', "-")
}

fn common_dir(uris: &[String]) -> String {
    let Some(first) = uris.first() else {
        return String::new();
    };
    let mut prefix = first.rsplit_once('/').map_or("", |(d, _)| d).to_string();
    for u in &uris[1..] {
        while !(prefix.is_empty() || is_under(u, &prefix)) {
            prefix = prefix.rsplit_once('/').map_or("", |(d, _)| d).to_string();
        }
    }
    prefix
}

/// Whether `path` lies inside directory `dir`.
fn is_under(path: &str, dir: &str) -> bool {
    path.strip_prefix(dir).is_some_and(|rest| rest.starts_with('/'))
}

fn split_parent(path: &str) -> (&str, &str) {
    match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((dir, name)) => (dir, name),
        None => (".", path),
    }
}

/// A path from a listing, made absolute against the listing's own directory.
fn resolve(dir: &str, entry: &str) -> String {
    if entry.contains("://") || entry.starts_with('/') {
        entry.to_string()
    } else if dir.contains("://") {
        format!("{}/{entry}", dir.trim_end_matches('/'))
    } else {
        std::path::absolute(std::path::Path::new(dir).join(entry))
            .map_or_else(|_| entry.to_string(), |p| p.display().to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_come_from_paths() {
        assert_eq!(derive_id("clip_01.mp4"), "clip_01");
        assert_eq!(derive_id("a/b/c.tar.mp4"), "a-b-c.tar");
        assert_eq!(derive_id(".hidden"), ".hidden");
        assert_eq!(common_dir(&["/d/a/x.mp4".into(), "/d/b/y.mp4".into()]), "/d");
    }

    #[tokio::test]
    async fn glob_list_and_table_listings() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for n in ["a.mp4", "b.mp4", "c.txt"] {
            std::fs::write(d.join(n), b"x").unwrap();
        }
        let spec = InputSpec::Glob(format!("{}/*.mp4", d.display()));
        let ids: Vec<String> = list_inputs(&spec).await.unwrap().items.into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "b"]);
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/a.mp4"), b"x").unwrap();
        let spec = InputSpec::Glob(format!("{}/**/*.mp4", d.display()));
        let ids: Vec<String> = list_inputs(&spec).await.unwrap().items.into_iter().map(|i| i.id).collect();
        assert_eq!(ids, ["a", "b", "sub-a"], "stems collide, so ids are relative paths");
        std::fs::remove_dir_all(d.join("sub")).unwrap();

        std::fs::write(d.join("list.txt"), "# inputs\nb.mp4\n\nmissing.mp4\n").unwrap();
        let listing = |list: Option<String>, table: Option<String>, id: Option<&str>| {
            InputSpec::Listing(InputListing { list, table, id_column: id.map(Into::into), ..InputListing::default() })
        };
        let got = list_inputs(&listing(Some(format!("{}/list.txt", d.display())), None, None)).await.unwrap();
        assert_eq!(got.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["b", "missing"]);
        assert_eq!(got.items[1].fields.get("uri").unwrap(), &Value::Str(format!("{}/missing.mp4", d.display())));

        std::fs::write(d.join("t.csv"), "sku,path,score\n7,a.mp4,0.5\n3,b.mp4,\n").unwrap();
        let got = list_inputs(&listing(None, Some(format!("{}/t.csv", d.display())), Some("sku"))).await.unwrap();
        assert_eq!(got.items[0].id, "3");
        assert_eq!(got.items[1].fields.get("score").unwrap(), &Value::Float(0.5));
        assert_eq!(got.items[0].fields.get("score").unwrap(), &Value::Null);
        assert!(got.fields.iter().any(|f| f.name == "score" && f.ty == FieldType::Float));
        let err =
            list_inputs(&listing(None, Some(format!("{}/t.csv", d.display())), Some("sku_id"))).await.unwrap_err();
        assert!(err.to_string().contains("no column `sku_id`"), "{err}");
    }

    fn csv(text: &[u8]) -> Result<Vec<InputItem>, PipelineError> {
        let listing =
            InputListing { id_column: Some("id".into()), path_column: "image".into(), ..InputListing::default() };
        parse_table("/c/catalog.csv", bytes::Bytes::copy_from_slice(text), &listing).map(|(items, _)| items)
    }

    fn errors(items: &[InputItem]) -> Vec<(&str, &str)> {
        items.iter().filter_map(|i| i.error.as_deref().map(|e| (i.id.as_str(), e))).collect()
    }

    #[test]
    fn a_row_that_is_not_utf8_is_an_error_record_naming_its_line() {
        let items = csv(b"id,image,prompt\na,a.png,fine\nb,b.png,caf\xe9 au lait\nc,c.png,also fine\n").unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(errors(&items), [("b", "/c/catalog.csv:3: not UTF-8 text (field 3 of the row)")]);
        assert_eq!(items[2].fields.get("prompt").unwrap(), &Value::Str("also fine".into()));
    }

    #[test]
    fn a_file_in_another_encoding_is_one_error_naming_the_setting() {
        let latin1 = b"id,image,prompt\na,a.png,caf\xe9\nb,b.png,cr\xe8me\n";
        let e = csv(latin1).unwrap_err().to_string();
        assert!(
            e.contains("/c/catalog.csv is not UTF-8 text (2 of 2 rows are not)")
                && e.contains("encoding = \"latin-1\""),
            "{e}"
        );
        let listing = InputListing {
            id_column: Some("id".into()),
            path_column: "image".into(),
            encoding: crate::manifest::TextEncoding::Latin1,
            ..InputListing::default()
        };
        let (items, _) = parse_table("/c/catalog.csv", bytes::Bytes::from_static(latin1), &listing).unwrap();
        assert_eq!(items[0].fields.get("prompt").unwrap(), &Value::Str("café".into()));
    }

    #[test]
    fn bom_crlf_quoted_newlines_and_long_prompts_read_as_written() {
        let long = "x".repeat(10_000);
        let text = format!("\u{feff}id,image,prompt\r\na,a.png,\"two\r\nlines, and a comma\"\r\nb,b.png,{long}\r\n");
        let items = csv(text.as_bytes()).unwrap();
        assert_eq!(errors(&items), Vec::<(&str, &str)>::new());
        assert_eq!(items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(items[0].fields.get("prompt").unwrap(), &Value::Str("two\r\nlines, and a comma".into()));
        assert_eq!(items[1].fields.get("prompt").unwrap(), &Value::Str(long));
        assert_eq!(items[1].fields.get("uri").unwrap(), &Value::Str("/c/b.png".into()));
    }

    #[test]
    fn an_empty_file_is_an_error_and_a_header_alone_lists_nothing() {
        let e = csv(b"").unwrap_err().to_string();
        assert!(e.contains("/c/catalog.csv is empty: a table needs at least a header line"), "{e}");
        assert!(csv(b"id,image,prompt\n").unwrap().is_empty());
    }

    #[test]
    fn a_parquet_path_column_of_the_wrong_type_gives_error_records() {
        let mut df = df!("id" => ["a", "b"], "image" => [1i64, 2], "prompt" => ["p", "q"]).unwrap();
        let mut buf = Vec::new();
        ParquetWriter::new(&mut buf).finish(&mut df).unwrap();
        let listing =
            InputListing { id_column: Some("id".into()), path_column: "image".into(), ..InputListing::default() };
        let (items, _) = parse_table("/c/catalog.parquet", bytes::Bytes::from(buf), &listing).unwrap();
        assert_eq!(
            errors(&items),
            [
                ("a", "/c/catalog.parquet:2: `image` must be text (a path or URL), not int"),
                ("b", "/c/catalog.parquet:3: `image` must be text (a path or URL), not int")
            ]
        );
    }
}

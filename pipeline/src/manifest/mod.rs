//! The TOML manifest: one `[job]` table and an ordered list of `[[stage]]` tables.
//!
//! Loading reads the file, applies `${ENV}` interpolation and `--set` overrides, and keeps the
//! position of every value so that [`crate::plan`] can report problems at file:line:column.

mod node;
mod schema;
mod source;
pub mod units;

use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

pub use node::{Entry, Node, NodeKind};
pub use schema::{type_names, SchemaCheck};
pub use source::{nearest, Diagnostic, Diagnostics, Origin, SourceFile};
pub use units::{ByteSize, Duration, Resolution};

/// Job-wide settings: what to read, where to write, how to shard and when to give up.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// Job name, recorded in index.json and report.json.
    pub name: String,
    /// Items to process: a glob string, or a table naming a `glob`, a `list` file or a CSV/Parquet `table`.
    pub input: InputSpec,
    /// Dataset location: a local path, or a file://, memory://, s3://, gs:// or az:// URL.
    pub output: String,
    /// Items per shard: the unit of commit, resume and distribution.
    #[serde(default = "default_shard_size")]
    #[schemars(range(min = 1))]
    pub shard_size: u32,
    /// Abort when more than this fraction of finished items failed (checked once 20 items finished).
    #[serde(default = "default_max_error_rate")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: f64,
    /// Bytes of item payload (decoded frames, tensors) allowed in flight across all stages.
    #[serde(default = "default_memory_budget")]
    pub memory_budget: ByteSize,
    /// Longest time one item may spend in one stage before it becomes an error record.
    #[serde(default = "default_item_timeout")]
    pub item_timeout: Duration,
    /// Items queued between two stages; a full queue pauses the stage before it (backpressure).
    #[serde(default = "default_queue_depth")]
    #[schemars(range(min = 1))]
    pub queue_depth: u32,
    /// How workers of a distributed job share shards: "static" (shard k to rank k mod world) or
    /// "leases" (claimed dynamically; a lost worker's shards are taken over after `lease_ttl`).
    #[serde(default)]
    pub balance: Balance,
    /// How long a shard lease lasts without renewal (leases are renewed every third of it).
    #[serde(default = "default_lease_ttl")]
    pub lease_ttl: Duration,
    /// Folders and URL prefixes (e.g. "s3://bucket/raw/") the input's paths may name besides the
    /// list or table file's own folder and the glob's base (see the README: Confinement).
    #[serde(default)]
    pub allowed_roots: Vec<String>,
    /// What a new version does with items of the previous version that the input no longer
    /// lists: "drop" them, or "keep" them (carried over as they are).
    #[serde(default)]
    pub on_removed: OnRemoved,
}

/// What happens to items that disappeared from the input since the previous version.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnRemoved {
    /// The new version no longer holds them (earlier versions still do).
    #[default]
    Drop,
    /// The new version keeps them as they were.
    Keep,
}

/// Shard distribution across the workers of a job.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    /// Shard k goes to rank k mod world; no coordination needed.
    #[default]
    Static,
    /// Workers claim shards through lease objects created with conditional puts.
    Leases,
}

fn default_lease_ttl() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}

fn default_shard_size() -> u32 {
    512
}
fn default_max_error_rate() -> f64 {
    0.1
}
fn default_memory_budget() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_item_timeout() -> Duration {
    Duration(std::time::Duration::from_secs(600))
}
fn default_queue_depth() -> u32 {
    16
}

/// Where the items come from: a glob string, or a table for the other listing kinds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum InputSpec {
    /// A glob over a path or URL, e.g. "videos/**/*.mp4" or "s3://raw/fashion/*.mp4".
    Glob(String),
    /// A listing given as a table.
    Listing(InputListing),
}

/// One of `glob`, `list`, `table` or `dataset`, with the columns a table listing uses.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputListing {
    /// A glob over a path or URL.
    pub glob: Option<String>,
    /// A text file with one path or URL per line (blank lines and `#` comments skipped).
    pub list: Option<String>,
    /// A CSV or Parquet file with one row per item; its columns become item fields.
    pub table: Option<String>,
    /// Column of `table` holding the path or URL of each item.
    #[serde(default = "default_path_column")]
    pub path_column: String,
    /// Column of `table` holding stable item ids (default: derived from the path).
    pub id_column: Option<String>,
    /// A mugflow dataset (its folder or URL): one item per written row, with the row's fields
    /// and `dataset_tensors`, the URL of its shard's tensors (see the `load_tensors` stage).
    pub dataset: Option<String>,
    /// Text encoding of a CSV `table` or `list` file: "utf-8" (a UTF-8 byte-order mark is
    /// skipped; a row with bytes that are not UTF-8 becomes an error record naming its line) or
    /// "latin-1" (ISO-8859-1, also right for the ASCII range of Windows-1252).
    #[serde(default)]
    pub encoding: TextEncoding,
}

/// The text encoding of a listing file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum TextEncoding {
    /// UTF-8.
    #[default]
    Utf8,
    /// ISO-8859-1: every byte is the character of the same number.
    #[serde(rename = "latin-1")]
    Latin1,
}

impl Default for InputListing {
    fn default() -> Self {
        InputListing {
            glob: None,
            list: None,
            table: None,
            path_column: default_path_column(),
            id_column: None,
            dataset: None,
            encoding: TextEncoding::Utf8,
        }
    }
}

fn default_path_column() -> String {
    "path".into()
}

/// A `[[stage]]` table as written: its kind, optional name, and the remaining parameters.
#[derive(Debug, Clone)]
pub struct StageDecl {
    /// 1-based position in the manifest.
    pub position: usize,
    /// The table itself (kind, name, parallelism and the stage's own parameters).
    pub node: Node,
}

/// A parsed manifest with positions, after interpolation and overrides, before validation.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The file it was read from.
    pub source: Arc<SourceFile>,
    /// The whole document.
    pub root: Node,
}

/// Keys every `[[stage]]` table accepts besides the stage's own parameters.
pub const COMMON_STAGE_KEYS: [&str; 3] = ["kind", "name", "parallelism"];

impl Manifest {
    /// Read a manifest file, interpolate `${ENV}` and apply `--set key=value` overrides.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Manifest, Diagnostics> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Diagnostics(vec![Diagnostic::new(
                format!("cannot read manifest {}: {e}", path.display()),
                &Origin::Override(String::new()),
            )
            .with_help("check the path; `mugflow validate manifests/demo.toml` shows a working example")])
        })?;
        Self::from_text(path, text, overrides, &|k| std::env::var(k).ok())
    }

    /// Like [`Manifest::load`] on text already in memory, with an explicit environment.
    pub fn from_text(
        path: &Path,
        text: String,
        overrides: &[String],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Manifest, Diagnostics> {
        let source = Arc::new(SourceFile { path: path.to_path_buf(), text });
        let mut root = node::parse(&source).map_err(|d| Diagnostics(vec![d]))?;
        let mut errors = Vec::new();
        node::interpolate_env(&mut root, env, &mut errors);
        for o in overrides {
            if let Err(d) = apply_override(&mut root, o, &source) {
                errors.push(d);
            }
        }
        if errors.is_empty() {
            Ok(Manifest { source, root })
        } else {
            Err(Diagnostics(errors))
        }
    }

    /// The `[[stage]]` tables in order.
    pub fn stages(&self) -> Vec<StageDecl> {
        match self.root.get("stage").map(|n| &n.kind) {
            Some(NodeKind::Array(a)) => {
                a.iter().enumerate().map(|(i, n)| StageDecl { position: i + 1, node: n.clone() }).collect()
            }
            _ => Vec::new(),
        }
    }
}

/// Apply `stage.<sel>.<key>=<value>` or `job.<key>=<value>`; `<sel>` is a 1-based position, a
/// stage `name` or a stage `kind`. The value is read as TOML, or as a plain string if it isn't.
fn apply_override(root: &mut Node, arg: &str, source: &Arc<SourceFile>) -> Result<(), Diagnostic> {
    let origin = Origin::Override(arg.to_string());
    let (path, raw) = arg.split_once('=').ok_or_else(|| {
        Diagnostic::new(format!("`--set {arg}` has no `=`"), &origin)
            .with_help("write --set stage.scene_split.threshold=30")
    })?;
    let value = parse_override_value(raw.trim(), &origin);
    let parts: Vec<&str> = path.trim().split('.').collect();
    let (target, rest): (&mut Node, &[&str]) = match parts.as_slice() {
        ["job", rest @ ..] if !rest.is_empty() => (table_entry(root, "job", source), rest),
        ["stage", sel, rest @ ..] if !rest.is_empty() => (select_stage(root, sel, &origin)?, rest),
        _ => {
            return Err(Diagnostic::new(format!("cannot apply `--set {arg}`"), &origin)
                .with_help("address a key as job.<key> or stage.<position|name|kind>.<key>"))
        }
    };
    let mut node = target;
    for (i, key) in rest.iter().enumerate() {
        if i + 1 == rest.len() {
            set_entry(node, key, value.clone(), &origin);
        } else {
            node = table_entry(node, key, source);
        }
    }
    Ok(())
}

fn parse_override_value(raw: &str, origin: &Origin) -> Node {
    let kind = match raw.parse::<toml_edit::Value>() {
        Ok(toml_edit::Value::Integer(i)) => NodeKind::Int(*i.value()),
        Ok(toml_edit::Value::Float(f)) => NodeKind::Float(*f.value()),
        Ok(toml_edit::Value::Boolean(b)) => NodeKind::Bool(*b.value()),
        Ok(toml_edit::Value::String(s)) => NodeKind::Str(s.value().clone()),
        _ => NodeKind::Str(raw.to_string()),
    };
    Node { kind, origin: origin.clone() }
}

fn select_stage<'a>(root: &'a mut Node, sel: &str, origin: &Origin) -> Result<&'a mut Node, Diagnostic> {
    let NodeKind::Table(entries) = &mut root.kind else {
        return Err(Diagnostic::new("the manifest is not a table", origin));
    };
    let stages = match entries.iter_mut().find(|e| e.key == "stage").map(|e| &mut e.value.kind) {
        Some(NodeKind::Array(a)) => a,
        _ => return Err(Diagnostic::new("the manifest has no [[stage]] tables to override", origin)),
    };
    let label = |n: &Node, key: &str| match n.get(key).map(|v| &v.kind) {
        Some(NodeKind::Str(s)) => Some(s.clone()),
        _ => None,
    };
    let matches: Vec<usize> = match sel.parse::<usize>() {
        Ok(pos) if pos >= 1 && pos <= stages.len() => vec![pos - 1],
        Ok(_) => Vec::new(),
        Err(_) => {
            let by_name: Vec<usize> =
                (0..stages.len()).filter(|&i| label(&stages[i], "name").as_deref() == Some(sel)).collect();
            if by_name.is_empty() {
                (0..stages.len()).filter(|&i| label(&stages[i], "kind").as_deref() == Some(sel)).collect()
            } else {
                by_name
            }
        }
    };
    match matches.as_slice() {
        [i] => Ok(&mut stages[*i]),
        [] => {
            let labels: Vec<String> = stages.iter().filter_map(|s| label(s, "kind")).collect();
            let help = nearest(sel, labels.iter().map(String::as_str))
                .map(|n| format!("did you mean `stage.{n}`?"))
                .unwrap_or_else(|| format!("stages are numbered 1 to {}; kinds: {}", stages.len(), labels.join(", ")));
            Err(Diagnostic::new(format!("no stage matches `{sel}`"), origin).with_help(help))
        }
        many => Err(Diagnostic::new(format!("`{sel}` matches {} stages", many.len()), origin)
            .with_help(format!("use a position instead, e.g. stage.{}.<key>", many[0] + 1))),
    }
}

/// The table at `key` inside `node`, created (empty) if absent.
fn table_entry<'a>(node: &'a mut Node, key: &str, source: &Arc<SourceFile>) -> &'a mut Node {
    let origin = Origin::Manifest(source.clone());
    if node.get(key).is_none() {
        set_entry(node, key, Node { kind: NodeKind::Table(Vec::new()), origin: origin.clone() }, &origin);
    }
    let NodeKind::Table(entries) = &mut node.kind else { unreachable!("set_entry turned the node into a table") };
    // The entry exists: it was found or just inserted above.
    &mut entries.iter_mut().find(|e| e.key == key).expect("entry inserted above").value
}

fn set_entry(node: &mut Node, key: &str, value: Node, origin: &Origin) {
    if !matches!(node.kind, NodeKind::Table(_)) {
        node.kind = NodeKind::Table(Vec::new());
    }
    let NodeKind::Table(entries) = &mut node.kind else {
        return;
    };
    match entries.iter_mut().find(|e| e.key == key) {
        Some(e) => e.value = value,
        None => entries.push(Entry { key: key.to_string(), key_origin: origin.clone(), value }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str, sets: &[&str]) -> Result<Manifest, Diagnostics> {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        Manifest::from_text(Path::new("m.toml"), text.to_string(), &sets, &|k| (k == "OUT").then(|| "/data".into()))
    }

    const TEXT: &str = "[job]\nname = \"x\"\noutput = \"${OUT}/v1\"\n\n[[stage]]\nkind = \"probe\"\n\n[[stage]]\nkind = \"write\"\nname = \"sink\"\n";

    #[test]
    fn env_is_interpolated() {
        let m = load(TEXT, &[]).unwrap();
        assert_eq!(m.root.get("job").unwrap().get("output").unwrap().to_json(), "/data/v1");
    }

    #[test]
    fn overrides_address_job_position_name_and_kind() {
        let m = load(
            TEXT,
            &["job.shard_size=4", "stage.1.parallelism=3", "stage.sink.format=mugflow", "stage.probe.x=true"],
        )
        .unwrap();
        assert_eq!(m.root.get("job").unwrap().get("shard_size").unwrap().to_json(), 4);
        let stages = m.stages();
        assert_eq!(stages[0].node.get("parallelism").unwrap().to_json(), 3);
        assert_eq!(stages[0].node.get("x").unwrap().to_json(), true);
        assert_eq!(stages[1].node.get("format").unwrap().to_json(), "mugflow");
    }

    #[test]
    fn bad_override_target_suggests_a_stage() {
        let e = load(TEXT, &["stage.prbe.x=1"]).unwrap_err();
        assert_eq!(e.0[0].help.as_deref(), Some("did you mean `stage.probe`?"));
    }

    #[test]
    fn toml_syntax_errors_have_positions() {
        let e = load("[job]\nname = \n", &[]).unwrap_err().to_string();
        assert!(e.contains("m.toml:2:"), "{e}");
    }
}

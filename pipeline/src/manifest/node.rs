//! A manifest as a tree of values that remember where they were written.
//!
//! toml_edit gives byte spans; we convert once into this small tree so that `--set` overrides,
//! `${ENV}` interpolation and schema validation all work on one representation and every
//! diagnostic can still point at the file, line and column (or at the `--set` argument).

use std::sync::Arc;

use toml_edit::{Item, Value as TomlValue};

use super::source::{Diagnostic, Origin, SourceFile};

/// A manifest value together with where it came from.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value itself.
    pub kind: NodeKind,
    /// Where it was written.
    pub origin: Origin,
}

/// The TOML value shapes a manifest may contain.
#[derive(Debug, Clone)]
pub enum NodeKind {
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A string (after `${ENV}` interpolation).
    Str(String),
    /// An array of values (also `[[array-of-tables]]`).
    Array(Vec<Node>),
    /// A table; entries keep their order and the origin of their key.
    Table(Vec<Entry>),
}

/// One `key = value` of a table.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The key text.
    pub key: String,
    /// Where the key was written (diagnostics for unknown keys point here).
    pub key_origin: Origin,
    /// The value.
    pub value: Node,
}

impl NodeKind {
    /// The TOML type name, for "expected X, found Y" messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            NodeKind::Bool(_) => "a boolean",
            NodeKind::Int(_) => "an integer",
            NodeKind::Float(_) => "a float",
            NodeKind::Str(_) => "a string",
            NodeKind::Array(_) => "an array",
            NodeKind::Table(_) => "a table",
        }
    }
}

impl Node {
    /// The entries of a table node, or `None` for other shapes.
    pub fn entries(&self) -> Option<&[Entry]> {
        match &self.kind {
            NodeKind::Table(e) => Some(e),
            _ => None,
        }
    }

    /// The value of `key` in a table node.
    pub fn get(&self, key: &str) -> Option<&Node> {
        self.entries()?.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    /// Convert to JSON for serde (origins dropped; validation has already run).
    pub fn to_json(&self) -> serde_json::Value {
        match &self.kind {
            NodeKind::Bool(b) => (*b).into(),
            NodeKind::Int(i) => (*i).into(),
            NodeKind::Float(x) => serde_json::Number::from_f64(*x).map_or(serde_json::Value::Null, Into::into),
            NodeKind::Str(s) => s.clone().into(),
            NodeKind::Array(a) => a.iter().map(Node::to_json).collect(),
            NodeKind::Table(e) => {
                e.iter().map(|e| (e.key.clone(), e.value.to_json())).collect::<serde_json::Map<_, _>>().into()
            }
        }
    }
}

/// Parse TOML text into a [`Node`] tree; a syntax error becomes a positioned diagnostic.
pub fn parse(src: &Arc<SourceFile>) -> Result<Node, Diagnostic> {
    let doc = toml_edit::Document::parse(src.text.clone()).map_err(|e| {
        let range = e.span().unwrap_or(0..0);
        Diagnostic::new(format!("invalid TOML: {}", e.message().trim_end()), &Origin::File(src.clone(), range))
    })?;
    let conv = Converter { src };
    Ok(conv.table(doc.as_table(), 0..0))
}

struct Converter<'a> {
    src: &'a Arc<SourceFile>,
}

impl Converter<'_> {
    fn origin(&self, span: Option<std::ops::Range<usize>>) -> Origin {
        match span {
            Some(r) => Origin::File(self.src.clone(), r),
            None => Origin::Manifest(self.src.clone()),
        }
    }

    fn table(&self, t: &toml_edit::Table, fallback: std::ops::Range<usize>) -> Node {
        let entries = t
            .iter()
            .map(|(k, item)| {
                let key_span = t.key(k).and_then(|k| k.span());
                let value = self.item(item, key_span.clone());
                Entry { key: k.to_string(), key_origin: self.origin(key_span), value }
            })
            .collect();
        Node { kind: NodeKind::Table(entries), origin: self.origin(t.span().or(Some(fallback))) }
    }

    fn item(&self, item: &Item, key_span: Option<std::ops::Range<usize>>) -> Node {
        match item {
            Item::Value(v) => self.value(v),
            Item::Table(t) => self.table(t, key_span.unwrap_or(0..0)),
            Item::ArrayOfTables(a) => Node {
                kind: NodeKind::Array(a.iter().map(|t| self.table(t, key_span.clone().unwrap_or(0..0))).collect()),
                origin: self.origin(a.span().or(key_span)),
            },
            Item::None => Node { kind: NodeKind::Table(Vec::new()), origin: self.origin(key_span) },
        }
    }

    fn value(&self, v: &TomlValue) -> Node {
        let kind = match v {
            TomlValue::String(s) => NodeKind::Str(s.value().clone()),
            TomlValue::Integer(i) => NodeKind::Int(*i.value()),
            TomlValue::Float(x) => NodeKind::Float(*x.value()),
            TomlValue::Boolean(b) => NodeKind::Bool(*b.value()),
            // No parameter takes a date; keep it as text so the schema reports a clear type error.
            TomlValue::Datetime(d) => NodeKind::Str(d.value().to_string()),
            TomlValue::Array(a) => NodeKind::Array(a.iter().map(|v| self.value(v)).collect()),
            TomlValue::InlineTable(t) => NodeKind::Table(
                t.iter()
                    .map(|(k, v)| Entry {
                        key: k.to_string(),
                        key_origin: self.origin(t.key(k).and_then(|k| k.span())),
                        value: self.value(v),
                    })
                    .collect(),
            ),
        };
        Node { kind, origin: self.origin(v.span()) }
    }
}

/// Replace `${NAME}` and `${NAME:-default}` in every string with the environment's value.
///
/// `$${` writes a literal `${`. An unset variable without a default is an error at its position.
pub fn interpolate_env(node: &mut Node, env: &dyn Fn(&str) -> Option<String>, errors: &mut Vec<Diagnostic>) {
    match &mut node.kind {
        NodeKind::Str(s) if s.contains("${") => match expand(s, env) {
            Ok(v) => *s = v,
            Err(msg) => errors.push(
                Diagnostic::new(msg, &node.origin)
                    .with_help("export the variable, or give a default with ${NAME:-default}"),
            ),
        },
        NodeKind::Array(a) => a.iter_mut().for_each(|n| interpolate_env(n, env, errors)),
        NodeKind::Table(t) => t.iter_mut().for_each(|e| interpolate_env(&mut e.value, env, errors)),
        _ => {}
    }
}

fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find("${") {
        if rest[..pos].ends_with('$') {
            // `$${` is an escaped literal `${`.
            out.push_str(&rest[..pos - 1]);
            out.push_str("${");
            rest = &rest[pos + 2..];
            continue;
        }
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 2..];
        let end = after.find('}').ok_or_else(|| format!("unterminated `${{` in \"{s}\""))?;
        let spec = &after[..end];
        let (name, default) = match spec.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (spec, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("`${{{spec}}}` is not a valid environment variable reference"));
        }
        match env(name).or_else(|| default.map(str::to_string)) {
            Some(v) => out.push_str(&v),
            None => return Err(format!("environment variable `{name}` is not set")),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        (name == "BUCKET").then(|| "raw".to_string())
    }

    #[test]
    fn expands_variables_defaults_and_escapes() {
        assert_eq!(expand("s3://${BUCKET}/x", &env).unwrap(), "s3://raw/x");
        assert_eq!(expand("${NOPE:-local}/x", &env).unwrap(), "local/x");
        assert_eq!(expand("$${BUCKET}", &env).unwrap(), "${BUCKET}");
        assert!(expand("${NOPE}", &env).unwrap_err().contains("`NOPE` is not set"));
        assert!(expand("${BUCKET", &env).unwrap_err().contains("unterminated"));
    }
}

//! Validate a [`Node`] tree against the JSON schema derived (schemars) from a config struct.
//!
//! The config structs are the single source of truth: serde turns a validated tree into the
//! struct, schemars gives this checker the keys, types, enums, units and defaults, and
//! `mugflow stages` prints documentation from the same schema.

use serde_json::Value as Json;

use super::node::{Node, NodeKind};
use super::source::{nearest, Diagnostic};
use super::units::check_format;

/// Checks manifest values against one root schema (which holds the `$defs` that `$ref`s name).
pub struct SchemaCheck<'a> {
    root: &'a Json,
}

impl<'a> SchemaCheck<'a> {
    /// A checker for the schema of one config struct.
    pub fn new(root: &'a Json) -> Self {
        SchemaCheck { root }
    }

    /// Follow `$ref` (and single-element `allOf`) to the schema that describes a value.
    pub fn resolve(&self, mut schema: &'a Json) -> &'a Json {
        loop {
            if let Some(r) = schema.get("$ref").and_then(Json::as_str) {
                let name = r.rsplit('/').next().unwrap_or(r);
                match self.root.get("$defs").and_then(|d| d.get(name)) {
                    Some(s) => schema = s,
                    None => return schema,
                }
            } else if let Some([one]) = schema.get("allOf").and_then(Json::as_array).map(Vec::as_slice) {
                schema = one;
            } else {
                return schema;
            }
        }
    }

    /// Check a table node against an object schema; `context` names it in messages ("stage 2 (probe)").
    pub fn check_table(&self, schema: &Json, node: &Node, context: &str, skip: &[&str], errors: &mut Vec<Diagnostic>) {
        let schema = self.resolve(schema);
        let Some(entries) = node.entries() else {
            errors.push(Diagnostic::new(
                format!("{context} must be a table, found {}", node.kind.type_name()),
                &node.origin,
            ));
            return;
        };
        let props = schema.get("properties").and_then(Json::as_object);
        let known = || props.into_iter().flat_map(|p| p.keys().map(String::as_str)).chain(skip.iter().copied());
        for e in entries {
            if skip.contains(&e.key.as_str()) {
                continue;
            }
            match props.and_then(|p| p.get(&e.key)) {
                Some(prop) => self.check_value(prop, &e.value, &format!("`{}` in {context}", e.key), errors),
                None => {
                    let help = match nearest(&e.key, known()) {
                        Some(n) => format!("did you mean `{n}`?"),
                        None => {
                            format!("valid keys: {}", known().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))
                        }
                    };
                    errors.push(
                        Diagnostic::new(format!("unknown key `{}` in {context}", e.key), &e.key_origin).with_help(help),
                    );
                }
            }
        }
        for req in schema.get("required").and_then(Json::as_array).into_iter().flatten().filter_map(Json::as_str) {
            if node.get(req).is_none() {
                let doc = props.and_then(|p| p.get(req)).and_then(|p| self.description(p));
                errors.push(
                    Diagnostic::new(format!("missing required key `{req}` in {context}"), &node.origin)
                        .with_help_opt(doc.map(|d| format!("add `{req} = ...`: {d}"))),
                );
            }
        }
    }

    /// The doc comment of a property, following `$ref`s.
    pub fn description(&self, schema: &'a Json) -> Option<&'a str> {
        schema.get("description").or_else(|| self.resolve(schema).get("description")).and_then(Json::as_str)
    }

    fn check_value(&self, schema: &Json, node: &Node, what: &str, errors: &mut Vec<Diagnostic>) {
        let schema = self.resolve(schema);
        if let Some(branches) = schema.get("anyOf").or_else(|| schema.get("oneOf")).and_then(Json::as_array) {
            return self.check_branches(branches, node, what, errors);
        }
        if let Some(values) = schema.get("enum").and_then(Json::as_array) {
            return self.check_enum(values, node, what, errors);
        }
        if let Some(c) = schema.get("const") {
            return self.check_enum(std::slice::from_ref(c), node, what, errors);
        }
        let types = type_names(schema);
        let ok = match &node.kind {
            NodeKind::Bool(_) => types.contains(&"boolean"),
            NodeKind::Int(_) => types.contains(&"integer") || types.contains(&"number"),
            NodeKind::Float(_) => types.contains(&"number"),
            NodeKind::Str(_) => types.contains(&"string"),
            NodeKind::Array(_) => types.contains(&"array"),
            NodeKind::Table(_) => types.contains(&"object"),
        };
        if !ok && !types.is_empty() {
            let expected = describe_types(&types);
            let mut d =
                Diagnostic::new(format!("{what} must be {expected}, found {}", node.kind.type_name()), &node.origin);
            if let NodeKind::Str(s) = &node.kind {
                if s.trim().parse::<f64>().is_ok() && (types.contains(&"number") || types.contains(&"integer")) {
                    d = d.with_help(format!("write the number without quotes: {}", s.trim()));
                }
            }
            if let Some(ex) = schema.get("examples").and_then(|e| e.get(0)) {
                d = d.with_help(format!("for example {ex}"));
            }
            errors.push(d);
            return;
        }
        match &node.kind {
            NodeKind::Int(i) => self.check_range(schema, *i as f64, node, what, errors),
            NodeKind::Float(x) => self.check_range(schema, *x, node, what, errors),
            NodeKind::Str(s) => {
                if let Some(format) = schema.get("format").and_then(Json::as_str) {
                    if let Err(msg) = check_format(format, s) {
                        errors.push(Diagnostic::new(format!("{what}: {msg}"), &node.origin));
                    }
                }
            }
            NodeKind::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, n) in items.iter().enumerate() {
                        self.check_value(item_schema, n, &format!("{what}[{i}]"), errors);
                    }
                }
            }
            NodeKind::Table(_) => self.check_table(schema, node, what, &[], errors),
            NodeKind::Bool(_) => {}
        }
    }

    fn check_range(&self, schema: &Json, x: f64, node: &Node, what: &str, errors: &mut Vec<Diagnostic>) {
        let min = schema.get("minimum").and_then(Json::as_f64);
        let max = schema.get("maximum").and_then(Json::as_f64);
        let fmt_range = || match (min, max) {
            (Some(a), Some(b)) => format!("between {a} and {b}"),
            (Some(a), None) => format!("at least {a}"),
            (None, Some(b)) => format!("at most {b}"),
            (None, None) => String::new(),
        };
        if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
            errors.push(Diagnostic::new(format!("{what} must be {}, found {x}", fmt_range()), &node.origin));
        }
    }

    fn check_enum(&self, values: &[Json], node: &Node, what: &str, errors: &mut Vec<Diagnostic>) {
        let json = node.to_json();
        if values.contains(&json) {
            return;
        }
        let names: Vec<&str> = values.iter().filter_map(Json::as_str).collect();
        let found = match &node.kind {
            NodeKind::Str(s) => format!("`{s}`"),
            other => other.type_name().to_string(),
        };
        let help = match &node.kind {
            NodeKind::Str(s) => nearest(s, names.iter().copied()).map(|n| format!("did you mean \"{n}\"?")),
            _ => None,
        }
        .unwrap_or_else(|| {
            format!("one of: {}", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "))
        });
        errors.push(Diagnostic::new(format!("{what} has an invalid value {found}"), &node.origin).with_help(help));
    }

    fn check_branches(&self, branches: &[Json], node: &Node, what: &str, errors: &mut Vec<Diagnostic>) {
        let resolved: Vec<&Json> = branches.iter().map(|b| self.resolve(b)).collect();
        // An enum whose variants carry docs is a oneOf of string consts.
        let consts: Vec<Json> = resolved.iter().filter_map(|b| b.get("const").cloned()).collect();
        if consts.len() == resolved.len() {
            return self.check_enum(&consts, node, what, errors);
        }
        // Otherwise pick the branch whose type fits the value (e.g. a glob string or an input table).
        let fits = |b: &&Json| {
            let t = type_names(b);
            matches!(
                (&node.kind, t.as_slice()),
                (NodeKind::Str(_), t) if t.contains(&"string")
            ) || matches!((&node.kind, t.as_slice()), (NodeKind::Table(_), t) if t.contains(&"object"))
                || matches!((&node.kind, t.as_slice()), (NodeKind::Int(_), t) if t.contains(&"integer") || t.contains(&"number"))
                || matches!((&node.kind, t.as_slice()), (NodeKind::Float(_), t) if t.contains(&"number"))
                || matches!((&node.kind, t.as_slice()), (NodeKind::Bool(_), t) if t.contains(&"boolean"))
                || matches!((&node.kind, t.as_slice()), (NodeKind::Array(_), t) if t.contains(&"array"))
        };
        match resolved.iter().find(|b| fits(b)) {
            Some(b) => self.check_value(b, node, what, errors),
            None => {
                let mut all: Vec<&str> = resolved.iter().flat_map(|b| type_names(b)).filter(|t| *t != "null").collect();
                all.dedup();
                errors.push(Diagnostic::new(
                    format!("{what} must be {}, found {}", describe_types(&all), node.kind.type_name()),
                    &node.origin,
                ));
            }
        }
    }
}

/// The `type` names of a schema (a string or an array of strings).
pub fn type_names(schema: &Json) -> Vec<&str> {
    match schema.get("type") {
        Some(Json::String(s)) => vec![s.as_str()],
        Some(Json::Array(a)) => a.iter().filter_map(Json::as_str).collect(),
        _ => Vec::new(),
    }
}

fn describe_types(types: &[&str]) -> String {
    let words: Vec<&str> = types
        .iter()
        .filter(|t| **t != "null")
        .map(|t| match *t {
            "integer" => "an integer",
            "number" => "a number",
            "string" => "a string",
            "boolean" => "a boolean (true or false)",
            "array" => "an array",
            "object" => "a table",
            other => other,
        })
        .collect();
    words.join(" or ")
}

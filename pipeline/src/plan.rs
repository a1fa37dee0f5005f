//! From a manifest to a validated plan: job settings, configured stages, checked field contracts.

use std::fmt::Write as _;
use std::sync::Arc;

use crate::input::Inputs;
use crate::manifest::{
    Diagnostic, Diagnostics, InputSpec, JobConfig, Manifest, NodeKind, Origin, SchemaCheck, SourceFile,
    COMMON_STAGE_KEYS,
};
use crate::stage::{ConfiguredStage, Registry};
use crate::{Field, FieldType};

/// A manifest after validation: everything needed to run, with defaults filled in.
pub struct Plan {
    /// The manifest file.
    pub source: Arc<SourceFile>,
    /// Job settings.
    pub job: JobConfig,
    /// Stages in order; the last one is the sink.
    pub stages: Vec<PlannedStage>,
}

/// One configured stage of a plan.
pub struct PlannedStage {
    /// 1-based position in the manifest.
    pub position: usize,
    /// Its kind.
    pub kind: &'static str,
    /// Optional name given in the manifest (for `--set stage.<name>.key=...`).
    pub name: Option<String>,
    /// Items processed concurrently.
    pub parallelism: usize,
    /// The typed config.
    pub config: Box<dyn ConfiguredStage>,
    /// Keys the manifest set explicitly (others are defaults).
    pub explicit: Vec<String>,
    origin: Origin,
}

impl PlannedStage {
    /// "2:probe", the label used in error records and reports.
    pub fn label(&self) -> String {
        format!("{}:{}", self.position, self.kind)
    }
}

impl Plan {
    /// Validate a manifest against the registry, collecting every problem before failing.
    pub fn from_manifest(m: &Manifest, registry: &Registry) -> Result<Plan, Diagnostics> {
        let mut errors = Vec::new();
        let root_origin = Origin::Manifest(m.source.clone());
        for e in m.root.entries().unwrap_or_default() {
            if e.key != "job" && e.key != "stage" {
                let help = crate::manifest::nearest(&e.key, ["job", "stage"])
                    .map(|n| format!("did you mean `{n}`?"))
                    .unwrap_or_else(|| "a manifest has one [job] table and [[stage]] tables".into());
                errors
                    .push(Diagnostic::new(format!("unknown top-level key `{}`", e.key), &e.key_origin).with_help(help));
            }
        }
        let job = match m.root.get("job") {
            None => {
                errors.push(Diagnostic::new("the manifest has no [job] table", &root_origin).with_help(
                    "start with:\n[job]\nname = \"my-job\"\ninput = \"videos/*.mp4\"\noutput = \"out/my-job\"",
                ));
                None
            }
            Some(node) => {
                let schema = schemars::schema_for!(JobConfig).to_value();
                let before = errors.len();
                SchemaCheck::new(&schema).check_table(&schema, node, "[job]", &[], &mut errors);
                if errors.len() > before {
                    None
                } else {
                    match serde_json::from_value::<JobConfig>(node.to_json()) {
                        Ok(job) => {
                            if let (InputSpec::Listing(l), Some(input)) = (&job.input, node.get("input")) {
                                let n = [&l.glob, &l.list, &l.table, &l.dataset].iter().filter(|x| x.is_some()).count();
                                if n != 1 {
                                    errors.push(
                                        Diagnostic::new(
                                            "`input` must name exactly one of `glob`, `list`, `table` or `dataset`",
                                            &input.origin,
                                        )
                                        .with_help("e.g. input = { list = \"inputs.txt\" }"),
                                    );
                                }
                            }
                            Some(job)
                        }
                        Err(e) => {
                            errors.push(Diagnostic::new(format!("invalid [job]: {e}"), &node.origin));
                            None
                        }
                    }
                }
            }
        };
        let decls = m.stages();
        if decls.is_empty() {
            errors.push(Diagnostic::new("the manifest has no [[stage]] tables", &root_origin).with_help(
                "add stages, ending with a writer:\n[[stage]]\nkind = \"probe\"\n\n[[stage]]\nkind = \"write\"",
            ));
        }
        let mut stages = Vec::new();
        for decl in &decls {
            if let Some(s) = plan_stage(decl.position, &decl.node, registry, &mut errors) {
                stages.push(s);
            }
        }
        if stages.len() == decls.len() && !stages.is_empty() {
            for s in &stages[..stages.len() - 1] {
                if s.config.is_sink() {
                    errors.push(Diagnostic::new(
                        format!("stage {} (`{}`) writes output and must be the last stage", s.position, s.kind),
                        &s.origin,
                    ));
                }
            }
            let last = &stages[stages.len() - 1];
            if !last.config.is_sink() {
                errors.push(
                    Diagnostic::new(format!("the last stage (`{}`) does not write anything", last.kind), &last.origin)
                        .with_help("end the manifest with:\n[[stage]]\nkind = \"write\""),
                );
            }
        }
        match job {
            Some(job) if errors.is_empty() => Ok(Plan { source: m.source.clone(), job, stages }),
            _ => Err(Diagnostics(errors)),
        }
    }

    /// Check that every field a stage reads is provided by the input or an earlier stage.
    pub fn check_fields(&self, input: &[Field], registry: &Registry) -> Result<(), Diagnostics> {
        let mut available: Vec<Field> = input.to_vec();
        let mut errors = Vec::new();
        for s in &self.stages {
            for r in s.config.reads() {
                match available.iter().find(|f| f.name == r.name) {
                    Some(f) if f.ty == r.ty || (r.ty == FieldType::Float && f.ty == FieldType::Int) => {}
                    Some(f) => errors.push(Diagnostic::new(
                        format!(
                            "stage {} (`{}`) reads `{}` as {}, but it is {} here",
                            s.position, s.kind, r.name, r.ty, f.ty
                        ),
                        &s.origin,
                    )),
                    None => {
                        let providers: Vec<&str> = registry
                            .kinds()
                            .filter(|k| {
                                k.configure(serde_json::json!({}))
                                    .is_ok_and(|c| c.adds().iter().any(|a| a.name == r.name))
                            })
                            .map(|k| k.name())
                            .collect();
                        let help = if providers.is_empty() {
                            "provide it as a column of the input table".to_string()
                        } else {
                            format!("add a `{}` stage before this one", providers.join("` or `"))
                        };
                        errors.push(
                            Diagnostic::new(
                                format!(
                                    "stage {} (`{}`) reads `{}`, which neither the input nor an earlier stage provides",
                                    s.position, s.kind, r.name
                                ),
                                &s.origin,
                            )
                            .with_help(help),
                        );
                    }
                }
            }
            for a in s.config.adds() {
                available.retain(|f| f.name != a.name);
                available.push(a);
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Diagnostics(errors))
        }
    }

    /// The resolved plan as text, for `mugflow validate`.
    pub fn render(&self, inputs: Option<&Inputs>) -> String {
        let mut out = String::new();
        let job = serde_json::to_value(&self.job).unwrap_or_default();
        let _ = writeln!(out, "manifest  {}", self.source.path.display());
        let _ = writeln!(out, "job       {}", self.job.name);
        render_params(&mut out, &job, &[], "  ", false);
        if let Some(inputs) = inputs {
            let shards = inputs.items.len().div_ceil(self.job.shard_size as usize);
            let _ = writeln!(
                out,
                "  inputs: {} items in {} shard(s) of up to {}",
                inputs.items.len(),
                shards,
                self.job.shard_size
            );
        }
        let _ = writeln!(out, "\nstages");
        for s in &self.stages {
            let role = if s.config.is_sink() { "sink".to_string() } else { format!("parallelism {}", s.parallelism) };
            let name = s.name.as_ref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
            let _ = writeln!(out, "  [{}] {}{name}  ({role})", s.position, s.kind);
            render_params(&mut out, &s.config.params(), &s.explicit, "      ", true);
            let list = |fields: Vec<Field>| {
                if fields.is_empty() {
                    "-".to_string()
                } else {
                    fields.iter().map(|f| format!("{}: {}", f.name, f.ty)).collect::<Vec<_>>().join(", ")
                }
            };
            let _ = writeln!(out, "      reads  {}", list(s.config.reads()));
            let _ = writeln!(out, "      adds   {}", list(s.config.adds()));
        }
        out
    }
}

fn render_params(out: &mut String, params: &serde_json::Value, explicit: &[String], indent: &str, mark_defaults: bool) {
    if let Some(map) = params.as_object() {
        for (k, v) in map {
            if v.is_null() {
                continue;
            }
            let mark = if mark_defaults && !explicit.iter().any(|e| e == k) { "  (default)" } else { "" };
            let _ = writeln!(out, "{indent}{k} = {v}{mark}");
        }
    }
}

fn plan_stage(
    position: usize,
    node: &crate::manifest::Node,
    registry: &Registry,
    errors: &mut Vec<Diagnostic>,
) -> Option<PlannedStage> {
    let kind_node = match node.get("kind") {
        Some(k) => k,
        None => {
            let kinds: Vec<&str> = registry.kinds().map(|k| k.name()).collect();
            errors.push(
                Diagnostic::new(format!("stage {position} has no `kind`"), &node.origin)
                    .with_help(format!("one of: {}", kinds.join(", "))),
            );
            return None;
        }
    };
    let NodeKind::Str(kind_name) = &kind_node.kind else {
        errors.push(Diagnostic::new(format!("`kind` of stage {position} must be a string"), &kind_node.origin));
        return None;
    };
    let Some(kind) = registry.get(kind_name) else {
        let kinds: Vec<&str> = registry.kinds().map(|k| k.name()).collect();
        let help = crate::manifest::nearest(kind_name, kinds.iter().copied())
            .map(|n| format!("did you mean \"{n}\"?"))
            .unwrap_or_else(|| format!("known stages: {} (see `mugflow stages`)", kinds.join(", ")));
        errors.push(Diagnostic::new(format!("unknown stage kind `{kind_name}`"), &kind_node.origin).with_help(help));
        return None;
    };
    let context = format!("stage {position} (`{kind_name}`)");
    let before = errors.len();
    let name = match node.get("name").map(|n| (&n.kind, &n.origin)) {
        Some((NodeKind::Str(s), _)) => Some(s.clone()),
        Some((other, origin)) => {
            errors.push(Diagnostic::new(
                format!("`name` in {context} must be a string, found {}", other.type_name()),
                origin,
            ));
            None
        }
        None => None,
    };
    let parallelism = match node.get("parallelism").map(|n| (&n.kind, &n.origin)) {
        Some((NodeKind::Int(i), _)) if *i >= 1 => Some(*i as usize),
        Some((_, origin)) => {
            errors
                .push(Diagnostic::new(format!("`parallelism` in {context} must be an integer of at least 1"), origin));
            None
        }
        None => None,
    };
    let schema = kind.schema();
    SchemaCheck::new(&schema).check_table(&schema, node, &context, &COMMON_STAGE_KEYS, errors);
    if errors.len() > before {
        return None;
    }
    let mut params = node.to_json();
    let explicit: Vec<String> = node.entries().unwrap_or_default().iter().map(|e| e.key.clone()).collect();
    if let Some(map) = params.as_object_mut() {
        for k in COMMON_STAGE_KEYS {
            map.remove(k);
        }
    }
    let config = match kind.configure(params) {
        Ok(c) => c,
        Err(e) => {
            errors.push(Diagnostic::new(format!("invalid {context}: {e}"), &node.origin));
            return None;
        }
    };
    for problem in config.check() {
        errors.push(Diagnostic::new(format!("{context}: {problem}"), &kind_node.origin));
    }
    let parallelism = parallelism.unwrap_or_else(|| config.default_parallelism()).max(1);
    Some(PlannedStage {
        position,
        kind: kind.name(),
        name,
        parallelism,
        config,
        explicit,
        origin: kind_node.origin.clone(),
    })
}

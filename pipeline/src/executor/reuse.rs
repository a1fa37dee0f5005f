//! Per-stage reuse: when an item's content key changed only because the pipeline changed (a new
//! VAE checkpoint, another parameter of a late stage), the outputs of the stages before the
//! change are carried over from the previous version instead of computed again.
//!
//! Stages declare which fields they read and add, but not everything that shapes their output
//! (a caption looked up by the item's id or its `source_id`, the clip range a VAE decodes), so
//! which stages are independent of one another cannot be known. The rule is therefore a
//! conservative prefix rule. A stage's outputs for a row are carried when
//! 1. the stage is *reusable* (`StageConfig::reusable`: one item in, the same item out);
//! 2. this stage and every stage before it have the same fingerprint (kind, parameters,
//!    checkpoint digests) in the previous version as in this run, and the previous version has
//!    the same stages after it (same kinds; their parameters may differ);
//! 3. no later stage of this run adds a field this stage adds (its value in the previous
//!    version's row would be the later stage's);
//! 4. the item's source key (id, input fields, input bytes) is the one the previous version
//!    recorded for it, and the previous version wrote a row with this row's id, holding every
//!    field and tensor the stage adds.
//!
//! Then the stage does not run for the row: its fields are read from the previous shard's table
//! and its tensors, byte for byte, from the previous shard's tensor file. Anything unreadable
//! makes the stage compute the row, as without reuse. So the order of stages matters: put the
//! stages whose models change most often last (the curation manifest encodes captions with T5
//! before it encodes clips with the VAE, so a new VAE checkpoint carries the text features).

use std::collections::HashMap;
use std::sync::Arc;

use super::incremental::{Planned, WorkItem};
use crate::format::{Lineage, TensorFiles};
use crate::input::Fields;
use crate::io::Location;
use crate::plan::Plan;
use crate::{Field, FieldType, Item};

/// Base shards whose rows are kept in memory at once.
const CACHED_SHARDS: usize = 8;

/// What this run may carry over from the base version, and the readers that do it.
pub(super) struct Reuse {
    out: Location,
    /// Per stage of the plan: the fields to carry when the stage's outputs may be carried.
    stages: Vec<Option<Vec<Field>>>,
    /// Input id -> position of the base version's shard holding its previous rows.
    priors: HashMap<String, usize>,
    /// The base version's shards (`done` lists empty).
    shards: Vec<crate::journal::ShardEntry>,
    /// Rows of the last base shards read, by shard position and row id (a few at a time:
    /// items arrive in shard order, and their previous rows mostly share shards).
    rows: tokio::sync::Mutex<HashMap<usize, Arc<HashMap<String, Fields>>>>,
    tensors: TensorFiles,
}

impl Reuse {
    /// The reuse this run allows (see the module docs); `None` when no stage qualifies or no
    /// item has previous outputs.
    pub(super) fn new(plan: &Plan, lineage: &Lineage, planned: &Planned, out: &Location) -> Option<Arc<Reuse>> {
        let (now, before) = (&lineage.pipeline, &planned.base.pipeline);
        let kind = |s: &serde_json::Value| s.get("kind").cloned();
        if now.len() != before.len() || now.iter().zip(before).any(|(a, b)| kind(a) != kind(b)) {
            return None;
        }
        let same_prefix = now.iter().zip(before).take_while(|(a, b)| a == b).count();
        let adds: Vec<Vec<Field>> = plan.stages.iter().map(|s| s.config.adds()).collect();
        let stages: Vec<Option<Vec<Field>>> = plan
            .stages
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let later = adds[i + 1..].iter().flatten().any(|l| adds[i].iter().any(|f| f.name == l.name));
                (i < same_prefix && s.config.reusable() && !later).then(|| adds[i].clone())
            })
            .collect();
        let priors: HashMap<String, usize> = planned
            .work
            .iter()
            .filter_map(|WorkItem { input, prior, .. }| prior.map(|p| (input.id.clone(), p)))
            .collect();
        if stages.iter().all(Option::is_none) || priors.is_empty() {
            return None;
        }
        Some(Arc::new(Reuse {
            out: out.clone(),
            stages,
            priors,
            shards: planned.base.shards.clone(),
            rows: Default::default(),
            tensors: TensorFiles::default(),
        }))
    }

    /// Give `item` the outputs stage `stage` wrote for it in the base version; false (and the
    /// item untouched) when they cannot be carried, so the stage computes them.
    pub(super) async fn carry(&self, stage: usize, item: &mut Item) -> bool {
        let Some(Some(adds)) = self.stages.get(stage) else { return false };
        let input = item.input.as_deref().unwrap_or(&item.id);
        let Some(&s) = self.priors.get(input) else { return false };
        let shard = &self.shards[s];
        let has = |f: &Field| match f.ty {
            FieldType::Tensor => shard.tensors.contains(&f.name),
            _ => shard.fields.iter().any(|(n, _)| *n == f.name),
        };
        if !adds.iter().all(has) {
            return false;
        }
        let Some(rows) = self.rows_of(s).await else { return false };
        let Some(row) = rows.get(&item.id) else { return false };
        let mut fields = Vec::new();
        let mut tensors = Vec::new();
        for f in adds {
            if f.ty == FieldType::Tensor {
                let Some(file) = &shard.tensor_file else { return false };
                match self.tensors.read(&self.out.url_of(file), &format!("{}/{}", item.id, f.name)).await {
                    Ok(t) => tensors.push((f.name.clone(), t)),
                    Err(_) => return false,
                }
            } else {
                let Some(v) = row.get(&f.name) else { return false };
                fields.push((f.name.clone(), v.clone()));
            }
        }
        item.fields.extend(fields);
        item.tensors.extend(tensors);
        true
    }

    /// The rows of base shard `s` by id, read once; `None` when its table cannot be read.
    async fn rows_of(&self, s: usize) -> Option<Arc<HashMap<String, Fields>>> {
        let mut cache = self.rows.lock().await;
        if let Some(rows) = cache.get(&s) {
            return Some(rows.clone());
        }
        let table = &self.shards[s].table;
        let bytes = self.out.read(table).await.ok()?;
        let (items, _) = crate::input::shard_rows(table, bytes, None).ok()?;
        let rows: Arc<HashMap<String, Fields>> = Arc::new(items.into_iter().map(|i| (i.id, i.fields)).collect());
        if cache.len() >= CACHED_SHARDS {
            cache.clear();
        }
        cache.insert(s, rows.clone());
        Some(rows)
    }
}

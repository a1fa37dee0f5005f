//! One worker of one stage: takes items from the stage's queue, runs the stage under the item
//! timeout, and passes the results on (or records the failure).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::reuse::Reuse;
use super::tracker::Tracker;
use crate::budget::MemoryBudget;
use crate::cancel::Cancel;
use crate::report::StageCounters;
use crate::stage::{Stage, StageContext};
use crate::{ErrorRecord, Field, FieldType, Item, StageError};

/// An error record of item `id` (from `uri`) failing in `stage`.
pub(super) fn record(id: &str, uri: &str, stage: &str, e: StageError) -> ErrorRecord {
    ErrorRecord {
        item_id: id.to_string(),
        uri: uri.to_string(),
        stage: stage.to_string(),
        message: e.message,
        causes: e.causes.join(" <- "),
    }
}

/// The input item an item came from (items made by a stage without [`Item::child`] belong to
/// the item they were made from, see [`Worker::run`]).
pub(super) fn input_of(item: &Item) -> Arc<str> {
    item.input.clone().unwrap_or_else(|| Arc::from(item.id.as_str()))
}

/// Check an item leaving a stage against the fields the stage declares it adds: each must be
/// there with its declared type (null is allowed; an integer may stand for a float). `adds()` is
/// what validation and `mugflow stages` show, so a stage whose code drifted from it is caught
/// here, on every item, in debug and release builds alike.
pub(super) fn check_contract(item: &Item, adds: &[Field]) -> Result<(), String> {
    for f in adds {
        let found = if f.ty == FieldType::Tensor {
            item.tensors.contains_key(&f.name).then_some(FieldType::Tensor)
        } else {
            item.fields.get(&f.name).map(|v| v.field_type().unwrap_or(f.ty))
        };
        match found {
            None => {
                return Err(format!("declares that it adds `{}` ({}), but the item has no `{}`", f.name, f.ty, f.name))
            }
            Some(t) if t == f.ty || (t == FieldType::Int && f.ty == FieldType::Float) => {}
            Some(t) => return Err(format!("declares `{}` as {}, but the item's `{}` is {t}", f.name, f.ty, f.name)),
        }
    }
    Ok(())
}

/// One worker of one stage.
pub(super) struct Worker {
    pub(super) stage: Arc<dyn Stage>,
    pub(super) label: String,
    /// The fields the stage declares in `adds()`, checked on every item it emits.
    pub(super) adds: Arc<Vec<Field>>,
    pub(super) rx: async_channel::Receiver<Item>,
    pub(super) tx: async_channel::Sender<Item>,
    pub(super) tracker: Arc<Tracker>,
    pub(super) counters: Arc<StageCounters>,
    pub(super) budget: MemoryBudget,
    pub(super) ctx: StageContext,
    pub(super) timeout: Duration,
    /// The stage's position in the plan and what the run may carry over from the previous
    /// version (see [`super::reuse`]).
    pub(super) reuse: Option<(usize, Arc<Reuse>)>,
}

impl Worker {
    pub(super) async fn run(self) {
        while let Ok(mut item) = self.rx.recv().await {
            self.counters.items_in.fetch_add(1, Ordering::Relaxed);
            let (id, shard, input) = (item.id.clone(), item.shard, input_of(&item));
            let uri = item.get("uri").map(ToString::to_string).unwrap_or_default();
            let carried = match &self.reuse {
                Some((position, reuse)) => reuse.carry(*position, &mut item).await,
                None => false,
            };
            let result = if carried {
                self.counters.carried.fetch_add(1, Ordering::Relaxed);
                Ok(vec![item])
            } else {
                self.counters.computed.fetch_add(1, Ordering::Relaxed);
                let t0 = Instant::now();
                // The item's own token: tripped on timeout, so that its work still queued or
                // running on the CPU pool stops at its next check instead of holding a core.
                let ctx = StageContext {
                    cancel: Cancel::default(),
                    drops: self.counters.dropped.clone(),
                    ..self.ctx.clone()
                };
                let result = match tokio::time::timeout(self.timeout, self.stage.process(item, &ctx)).await {
                    Ok(r) => r,
                    Err(_) => {
                        ctx.cancel.cancel();
                        Err(StageError::msg(format!(
                            "timed out after {} (job.item_timeout)",
                            humantime::format_duration(self.timeout)
                        )))
                    }
                };
                self.counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                result
            };
            match result {
                Ok(children) if children.is_empty() => self.tracker.finish(shard, 1),
                Ok(children) => {
                    self.counters.items_out.fetch_add(children.len() as u64, Ordering::Relaxed);
                    self.tracker.add(shard, children.len() - 1);
                    for mut child in children {
                        if let Err(broken) = check_contract(&child, &self.adds) {
                            let e = StageError::msg(format!("stage {} {broken} (a bug in the stage)", self.label));
                            self.counters.errors.fetch_add(1, Ordering::Relaxed);
                            self.tracker.fail(shard, input.clone(), record(&child.id, &uri, &self.label, e));
                            continue;
                        }
                        child.shard = shard;
                        child.input = Some(input.clone());
                        self.budget.reserve(&mut child).await;
                        if self.tx.send(child).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.tracker.fail(shard, input, record(&id, &uri, &self.label, e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_must_carry_what_its_stage_declares() {
        let adds = [Field::new("score", FieldType::Float, ""), Field::new("latent", FieldType::Tensor, "")];
        let mut item = Item::new("a");
        assert_eq!(
            check_contract(&item, &adds).unwrap_err(),
            "declares that it adds `score` (float), but the item has no `score`"
        );
        item.set("score", "high");
        assert_eq!(
            check_contract(&item, &adds).unwrap_err(),
            "declares `score` as float, but the item's `score` is str"
        );
        item.set("score", 3i64);
        assert!(check_contract(&item, &adds).unwrap_err().contains("no `latent`"), "an int may stand for a float");
        item.tensors.insert("latent".into(), crate::Tensor::new(crate::DType::U8, vec![1], vec![0u8].into()).unwrap());
        assert_eq!(check_contract(&item, &adds), Ok(()));
    }
}

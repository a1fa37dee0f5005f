//! Progress events and the final run report (`report.json` and the summary table).
//!
//! The engine only emits events through [`Reporter`]; the CLI decides how to draw them
//! (bars on a terminal, plain lines in logs, nothing).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::version::Changes;

/// Live counters of one stage, updated by its workers.
#[derive(Debug, Default)]
pub struct StageCounters {
    /// Items received.
    pub items_in: AtomicU64,
    /// Items emitted (after fan-out and filtering).
    pub items_out: AtomicU64,
    /// Items that failed here.
    pub errors: AtomicU64,
    /// Nanoseconds spent processing, summed over workers.
    pub busy_ns: AtomicU64,
    /// Items the stage processed.
    pub computed: AtomicU64,
    /// Items whose outputs were carried over from the previous version instead.
    pub carried: AtomicU64,
    /// Items the stage dropped, by the reason it gave (see [`DropCounts`]).
    pub dropped: DropCounts,
}

/// Counts of the items a filter dropped, by reason ("too short", "static", "below min_score"),
/// and a few examples of each, so that the run report can say where the clips went and show
/// them. Shared by a stage's workers through [`crate::StageContext::dropped`].
#[derive(Debug, Clone, Default)]
pub struct DropCounts(Arc<Mutex<Drops>>);

#[derive(Debug, Default)]
struct Drops {
    counts: BTreeMap<String, u64>,
    /// Per reason, the examples with the smallest id hashes: the same ones whatever the order
    /// the workers finish in.
    examples: BTreeMap<String, Vec<(u64, DroppedExample)>>,
}

/// Examples kept per drop reason.
pub const DROPPED_EXAMPLES: usize = 6;

/// A dropped item the report can show a frame of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DroppedExample {
    /// The item's (or the clip's) id.
    pub id: String,
    /// Path or URL of its video.
    pub uri: String,
    /// A frame that shows it, 0-based in that video.
    pub frame: usize,
}

impl DropCounts {
    /// Count one dropped item under `reason`, with an example to show if the stage has one.
    pub fn add(&self, reason: &str, example: Option<DroppedExample>) {
        // A poisoned lock only means another worker panicked mid-update: keep counting.
        let mut drops = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        *drops.counts.entry(reason.to_string()).or_default() += 1;
        if let Some(example) = example {
            let kept = drops.examples.entry(reason.to_string()).or_default();
            kept.push((id_hash(&example.id), example));
            kept.sort_by(|a, b| (a.0, &a.1.id).cmp(&(b.0, &b.1.id)));
            kept.truncate(DROPPED_EXAMPLES);
        }
    }

    /// The counts so far.
    pub fn counts(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).counts.clone()
    }

    /// The examples so far, by reason.
    pub fn examples(&self) -> BTreeMap<String, Vec<DroppedExample>> {
        let drops = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        drops.examples.iter().map(|(r, e)| (r.clone(), e.iter().map(|(_, x)| x.clone()).collect())).collect()
    }
}

/// A hash of an id that is the same in every process of the same binary (for samples that do
/// not depend on the order items finish in).
pub fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

impl StageCounters {
    /// A consistent-enough copy for display.
    pub fn snapshot(&self, label: &str) -> StageSnapshot {
        StageSnapshot {
            stage: label.to_string(),
            items_in: self.items_in.load(Ordering::Relaxed),
            items_out: self.items_out.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            busy_s: self.busy_ns.load(Ordering::Relaxed) as f64 * 1e-9,
            computed: self.computed.load(Ordering::Relaxed),
            carried: self.carried.load(Ordering::Relaxed),
            dropped: self.dropped.counts(),
        }
    }
}

/// A stage's counters at one moment.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageSnapshot {
    /// "position:kind".
    pub stage: String,
    /// Items received.
    pub items_in: u64,
    /// Items emitted.
    pub items_out: u64,
    /// Items failed.
    pub errors: u64,
    /// Seconds of processing, summed over workers.
    pub busy_s: f64,
    /// Items the stage processed (for a transform: those not carried over).
    #[serde(default)]
    pub computed: u64,
    /// Items whose outputs this stage did not compute but carried over from the previous
    /// dataset version (per-stage reuse, see `executor::reuse`).
    #[serde(default)]
    pub carried: u64,
    /// Items the stage dropped, by reason (filters that say why; empty for the others).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped: BTreeMap<String, u64>,
}

/// What the run is about to do, sent once before the first item.
#[derive(Debug, Clone)]
pub struct RunStart {
    /// Stage labels in order.
    pub stages: Vec<String>,
    /// Input items in the shards this run processes.
    pub pending_items: u64,
    /// Shards to process now.
    pub pending_shards: usize,
    /// Shards already committed by earlier runs.
    pub skipped_shards: usize,
    /// What the input changed relative to the latest version (printed before the work starts).
    pub changes: Changes,
    /// The latest version of the output, which this run builds on.
    pub base_version: Option<u64>,
}

/// Receives progress events; implemented by the CLI.
pub trait Reporter: Send + Sync {
    /// The run starts.
    fn start(&self, start: &RunStart);
    /// Periodic counters of every stage (a few times per second).
    fn progress(&self, stages: &[StageSnapshot], elapsed: Duration);
    /// A shard was committed.
    fn shard_committed(&self, shard: usize, items: usize, errors: usize);
    /// The run ended (successfully or not).
    fn finish(&self, report: &RunReport);
}

/// A reporter that shows nothing (`--progress none`, tests).
pub struct Silent;

impl Reporter for Silent {
    fn start(&self, _: &RunStart) {}
    fn progress(&self, _: &[StageSnapshot], _: Duration) {}
    fn shard_committed(&self, _: usize, _: usize, _: usize) {}
    fn finish(&self, _: &RunReport) {}
}

/// One stage's line of the final report.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StageReport {
    /// Counters at the end.
    #[serde(flatten)]
    pub counters: StageSnapshot,
    /// Items received per second of busy time (per-worker throughput).
    pub items_per_busy_s: f64,
    /// A few of the items dropped for each reason (see [`DropCounts`]), for the HTML report.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped_examples: BTreeMap<String, Vec<DroppedExample>>,
}

/// The report of one run, written to `report.json` in the output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunReport {
    /// Job name.
    pub job: String,
    /// Output location.
    pub output: String,
    /// "completed", "nothing to do", "interrupted" or "aborted".
    pub status: String,
    /// Wall-clock seconds.
    pub wall_s: f64,
    /// Input items of the whole job.
    pub input_items: usize,
    /// Shards of the whole job.
    pub shards_total: usize,
    /// Shards committed by this run.
    pub shards_committed: usize,
    /// Shards of this worker skipped because an earlier run committed them.
    pub shards_skipped: usize,
    /// Shards left to the other workers of a distributed job.
    pub shards_other_workers: usize,
    /// This worker's rank and world ("rank 0 of 1 (single)").
    pub worker: String,
    /// Items written by this run.
    pub items_written: u64,
    /// Error records written by this run.
    pub errors: u64,
    /// Per-stage counters.
    pub stages: Vec<StageReport>,
    /// What the input changed relative to the version the run built on.
    #[serde(default)]
    pub changes: Changes,
    /// The version the run built on, if the output held one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_version: Option<u64>,
    /// The version this run committed (in a distributed run: the worker that finished last).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u64>,
}

impl RunReport {
    /// The summary table printed on stderr at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if self.stages.is_empty() {
            match self.base_version {
                Some(v) if self.shards_total == 0 && self.version.is_none() => {
                    let _ =
                        write!(out, "nothing to do: version {v} of {} already holds this job's output", self.output);
                }
                _ => {
                    let mine = self.shards_total - self.shards_other_workers;
                    let _ = write!(
                        out,
                        "nothing to do: all {mine} shard(s) of {} for {} are committed",
                        self.output, self.worker
                    );
                    if let Some(v) = self.version {
                        let _ = write!(out, "\nversion {v} committed ({})", self.changes);
                    }
                }
            }
            return out;
        }
        let _ =
            writeln!(out, "{:<22} {:>9} {:>9} {:>7} {:>9} {:>10}", "stage", "in", "out", "errors", "busy s", "items/s");
        for s in &self.stages {
            let c = &s.counters;
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>9} {:>7} {:>9.2} {:>10.1}",
                c.stage, c.items_in, c.items_out, c.errors, c.busy_s, s.items_per_busy_s
            );
        }
        let _ = write!(
            out,
            "{}: {} shard(s) committed, {} skipped (of {}); {} item(s) written, {} error record(s); {:.1}s",
            self.status,
            self.shards_committed,
            self.shards_skipped,
            self.shards_total,
            self.items_written,
            self.errors,
            self.wall_s
        );
        if self.shards_other_workers > 0 {
            let _ = write!(out, "\n{}: {} shard(s) belong to other workers", self.worker, self.shards_other_workers);
        }
        if let Some(v) = self.version {
            let _ = write!(out, "\nversion {v} committed ({})", self.changes);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(id: &str) -> Option<DroppedExample> {
        Some(DroppedExample { id: id.into(), uri: "v.mp4".into(), frame: 3 })
    }

    #[test]
    fn drops_are_counted_by_reason_with_the_same_examples_in_any_order() {
        let ids: Vec<String> = (0..20).map(|i| format!("clip-{i}")).collect();
        let (a, b) = (DropCounts::default(), DropCounts::default());
        for id in &ids {
            a.add("static", example(id));
        }
        for id in ids.iter().rev() {
            b.add("static", example(id));
        }
        a.add("too short", None);
        assert_eq!(a.counts(), BTreeMap::from([("static".to_string(), 20), ("too short".to_string(), 1)]));
        assert_eq!(a.examples()["static"].len(), DROPPED_EXAMPLES);
        assert_eq!(a.examples()["static"], b.examples()["static"], "the sample does not depend on the order");
        assert!(!a.examples().contains_key("too short"));
    }

    #[test]
    fn a_stage_report_without_drops_reads_and_writes_as_before() {
        let old = r#"{"stage":"1:probe","items_in":3,"items_out":3,"errors":0,"busy_s":0.5,"items_per_busy_s":6.0}"#;
        let r: StageReport = serde_json::from_str(old).unwrap();
        assert!(r.counters.dropped.is_empty() && r.dropped_examples.is_empty());
        let json = serde_json::to_string(&r).unwrap();
        assert!(!json.contains("dropped"), "{json}");
    }
}

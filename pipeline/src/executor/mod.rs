//! The streaming executor: input shards flow through stages over bounded channels into the sink,
//! which commits each shard once all of its items are written, filtered or failed; when every
//! shard of the run's plan is committed, the run commits a new version of the dataset.
//!
//! - [`incremental`]: content keys and the plan (only new and changed items are computed).
//! - [`source`]: feeds this worker's shards (claiming them under leases).
//! - [`worker`]: the workers of each stage (`parallelism` each, on tokio; CPU work on rayon).
//! - [`tracker`]: what each shard's items became.
//! - [`commit`]: the commit protocol (shards, versions, and why nothing is overwritten).
//! - [`reuse`]: per-stage reuse (outputs of unchanged early stages carried from the previous
//!   version when only a later stage changed).
//!
//! Channels are bounded (`job.queue_depth`) and payload bytes are capped by the memory budget,
//! so a slow stage pauses the ones before it instead of filling memory.

pub mod incremental;

mod commit;
mod reuse;
mod source;
mod tracker;
mod worker;

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use self::incremental::{Planned, WorkItem};
use self::source::Source;
use self::tracker::{Event, Tracker};
use self::worker::{input_of, record, Worker};
use crate::attempt;
use crate::budget::MemoryBudget;
use crate::cluster::Cluster;
use crate::format::{checkpoint_identity, DatasetIndex, Lineage};
use crate::input::list_inputs;
use crate::io::Location;
use crate::journal;
use crate::lease::{Lease, Leases};
use crate::manifest::Balance;
use crate::plan::Plan;
use crate::report::{Reporter, RunReport, RunStart, StageCounters, StageReport};
use crate::stage::{BuildContext, Registry, Runnable, ShardSink, ShardTarget, Sink, Stage, StageContext};
use crate::PipelineError;

pub use self::tracker::ERROR_RATE_MIN_ITEMS;

/// How a run is observed, stopped, and which part of the job it takes.
pub struct RunOptions<S> {
    /// Receives progress events.
    pub reporter: Arc<dyn Reporter>,
    /// This worker's rank and world; it takes the shards `k` with `k % world == rank`.
    pub cluster: Cluster,
    /// Completes with the signal's name when the user asks to stop (Ctrl-C, SIGTERM).
    pub stop: S,
}

/// Run a validated plan to completion (or until stopped): compute the items the output's latest
/// version does not hold, resuming the plan's committed shards, and commit the next version.
pub async fn run<S>(plan: &Plan, registry: &Registry, opts: RunOptions<S>) -> Result<RunReport, PipelineError>
where
    S: Future<Output = &'static str> + Send,
{
    let started = Instant::now();
    let job = &plan.job;
    let out = Location::parse(&job.output)?;
    let mut inputs = list_inputs(&job.input).await?;
    plan.check_fields(&inputs.fields, registry)?;
    let roots = crate::confine::Roots::for_job(&job.input, &job.allowed_roots);
    // Many rows name one file (a product image, a video cut into clips): check each path once.
    let mut verdicts: HashMap<String, Result<(), String>> = HashMap::new();
    for item in inputs.items.iter_mut().filter(|i| i.error.is_none()) {
        let uri = item.fields.get("uri").and_then(|v| v.as_str()).unwrap_or_default();
        if !verdicts.contains_key(uri) {
            verdicts.insert(uri.to_string(), roots.check(uri));
        }
        if let Err(why) = &verdicts[uri] {
            item.error = Some(why.clone());
        }
    }
    let input_items = inputs.items.len();
    let lineage = lineage(plan).await?;
    let planned = incremental::plan(&out, inputs.items, &lineage, u64::from(job.shard_size), job.on_removed).await?;
    let shards: Vec<&[WorkItem]> = planned.work.chunks(job.shard_size as usize).collect();
    let committed = journal::load(&out, &planned.plan).await?;
    let attempt = crate::names::attempt_id();
    remove_dead_staging_files(&out);
    crate::upload::abort_abandoned(&out).await;
    let host = attempt::hostname();
    let lease_owner =
        (job.balance == Balance::Leases).then(|| format!("{host}:{}:{}", std::process::id(), opts.cluster.rank));
    let leases = lease_owner.clone().map(|owner| Leases::new(out.clone(), &planned.plan, owner, job.lease_ttl.0));
    let uploader = crate::upload::Uploader {
        attempt: attempt.clone(),
        host,
        pid: u64::from(std::process::id()),
        lease_owner,
        ttl_ms: job.lease_ttl.0.as_millis() as u64,
    };
    // With leases every shard is a candidate; each worker starts with the ones static sharding
    // would give it, so that workers rarely contend for the same shard.
    let mut mine: Vec<usize> = (0..shards.len()).filter(|k| opts.cluster.owns(*k)).collect();
    if leases.is_some() {
        mine.extend((0..shards.len()).filter(|k| !opts.cluster.owns(*k)));
    }
    let pending: Vec<usize> = mine.iter().copied().filter(|k| !committed.contains_key(k)).collect();
    let skipped = mine.len() - pending.len();
    let labels: Vec<String> = plan.stages.iter().map(|s| s.label()).collect();
    let counters: Vec<Arc<StageCounters>> = plan.stages.iter().map(|_| Arc::default()).collect();
    let mut report = RunReport {
        job: job.name.clone(),
        output: out.url.clone(),
        status: "nothing to do".into(),
        wall_s: 0.0,
        input_items,
        shards_total: shards.len(),
        shards_committed: 0,
        shards_skipped: skipped,
        shards_other_workers: shards.len() - mine.len(),
        worker: opts.cluster.to_string(),
        items_written: 0,
        errors: 0,
        stages: Vec::new(),
        changes: planned.changes,
        base_version: planned.base_version,
        version: None,
    };
    opts.reporter.start(&RunStart {
        stages: labels.clone(),
        pending_items: pending.iter().map(|k| shards[*k].len() as u64).sum(),
        pending_shards: pending.len(),
        skipped_shards: skipped,
        changes: planned.changes,
        base_version: report.base_version,
    });
    if planned.changes.is_empty() && planned.base_version.is_some() {
        // The latest version already is this job's output: nothing is read, nothing is written.
        report.wall_s = started.elapsed().as_secs_f64();
        opts.reporter.finish(&report);
        return Ok(report);
    }

    let ctx = BuildContext { job_name: job.name.clone() };
    let mut transforms: Vec<(usize, Arc<dyn Stage>)> = Vec::new();
    let mut sink: Option<Arc<dyn Sink>> = None;
    for (i, s) in plan.stages.iter().enumerate() {
        match s.config.build(&ctx).map_err(|message| PipelineError::Build {
            position: s.position,
            kind: s.kind.into(),
            message,
        })? {
            Runnable::Transform(t) => transforms.push((i, t)),
            Runnable::Sink(k) => sink = Some(k),
        }
    }
    // Plan validation guarantees the last stage is a sink.
    let sink = sink.expect("a validated plan ends with a sink");
    remove_stale_scratch();
    let scratch = tempfile::Builder::new()
        .prefix(&format!("{SCRATCH_PREFIX}{}-", std::process::id()))
        .tempdir()
        .map_err(|e| PipelineError::io("cannot create a scratch directory", e))?;
    if pending.is_empty() {
        // Every shard of the plan is committed (by an earlier, interrupted run or by the other
        // workers): only the version may be missing.
        let outcome =
            finish_version(&out, job, &lineage, &planned, shards.len(), &uploader, scratch.path(), sink.as_ref()).await;
        report.version = outcome?;
        report.wall_s = started.elapsed().as_secs_f64();
        opts.reporter.finish(&report);
        return Ok(report);
    }
    attempt::record(&out, &attempt, &opts.cluster).await?;
    let stage_ctx = StageContext {
        scratch: scratch.path().to_path_buf(),
        attempt: attempt.clone(),
        cancel: Default::default(),
        drops: Default::default(),
    };
    let budget = MemoryBudget::new(job.memory_budget.0);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tracker = Arc::new(Tracker::new(done_tx, job.max_error_rate));

    let held: Arc<Mutex<HashMap<usize, Lease>>> = Arc::default();
    let held_elsewhere = Arc::new(AtomicUsize::new(0));
    let mut expected: Option<usize> = None;
    let depth = job.queue_depth as usize;
    let (first_tx, mut rx) = async_channel::bounded(depth);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let tracker = tracker.clone();
        let items: Vec<(usize, Vec<WorkItem>)> = pending.iter().map(|k| (*k, shards[*k].to_vec())).collect();
        let source = Source {
            tracker,
            tx: first_tx,
            leases: leases.clone(),
            held: held.clone(),
            out: out.clone(),
            plan: planned.plan.clone(),
        };
        let (elsewhere, poll) =
            (held_elsewhere.clone(), (job.lease_ttl.0 / 10).clamp(Duration::from_millis(200), Duration::from_secs(10)));
        tasks.spawn(source.run(items, elsewhere, poll));
    }
    if let Some(leases) = leases.clone() {
        let held = held.clone();
        let every = job.lease_ttl.0 / 3;
        tasks.spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let current: Vec<Lease> = held.lock().expect("lease lock").values().cloned().collect();
                for lease in current {
                    // A lost lease only costs duplicate work: the journal still commits the shard once.
                    if let Ok(renewed) = leases.renew(&lease).await {
                        let mut held = held.lock().expect("lease lock");
                        match renewed {
                            Some(r) if held.contains_key(&r.shard) => held.insert(r.shard, r),
                            _ => held.remove(&lease.shard),
                        };
                    }
                }
            }
        });
    }
    let reuse = reuse::Reuse::new(plan, &lineage, &planned, &out);
    for (i, stage) in &transforms {
        let (tx, next_rx) = async_channel::bounded(depth);
        let ps = &plan.stages[*i];
        let adds = Arc::new(ps.config.adds());
        for _ in 0..ps.parallelism {
            let w = Worker {
                stage: stage.clone(),
                label: ps.label(),
                adds: adds.clone(),
                rx: rx.clone(),
                tx: tx.clone(),
                tracker: tracker.clone(),
                counters: counters[*i].clone(),
                budget: budget.clone(),
                ctx: stage_ctx.clone(),
                timeout: job.item_timeout.0,
                reuse: reuse.clone().map(|r| (*i, r)),
            };
            tasks.spawn(w.run());
        }
        rx = next_rx;
    }
    {
        let reporter = opts.reporter.clone();
        let (counters, labels) = (counters.clone(), labels.clone());
        tasks.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(250));
            loop {
                tick.tick().await;
                let snaps: Vec<_> = counters.iter().zip(&labels).map(|(c, l)| c.snapshot(l)).collect();
                reporter.progress(&snaps, started.elapsed());
            }
        });
    }

    let sink_counters = counters[plan.stages.len() - 1].clone();
    let sink_label = labels[labels.len() - 1].clone();
    let mut open: BTreeMap<usize, Box<dyn ShardSink>> = BTreeMap::new();
    // A shard's writer stages its files in its own scratch folder.
    let open_shard = |k: usize| -> Result<Box<dyn ShardSink>, PipelineError> {
        let dir = scratch.path().join(format!("shard-{k:05}"));
        std::fs::create_dir_all(&dir).map_err(|e| PipelineError::io(format!("cannot create {}", dir.display()), e))?;
        sink.open_shard(&ShardTarget { shard: k, dir, attempt: attempt.clone() })
    };
    let stop = opts.stop;
    tokio::pin!(stop);
    let outcome: Result<(), PipelineError> = loop {
        tokio::select! {
            biased;
            signal = &mut stop => break Err(PipelineError::Interrupted(signal, report.shards_committed)),
            _ = tracker.abort.notified() => {
                let (failed, finished) = tracker.aborted_at();
                break Err(PipelineError::ErrorRate { failed, finished, max_rate: job.max_error_rate });
            }
            Some(event) = done_rx.recv() => {
                let k = match event {
                    Event::SourceFinished(fed) => {
                        expected = Some(fed);
                        if report.shards_committed == fed {
                            break Ok(());
                        }
                        continue;
                    }
                    Event::SourceFailed(e) => break Err(e),
                    Event::ShardDone(k) => k,
                };
                let writer = match open.remove(&k) {
                    Some(w) => w,
                    None => match open_shard(k) { Ok(w) => w, Err(e) => break Err(e) },
                };
                let which = (planned.plan.as_str(), k, &uploader);
                let entry = match commit::commit_shard(&out, writer, which, shards[k], tracker.take(k)).await {
                    Ok(e) => e,
                    Err(e) => break Err(e),
                };
                let _ = std::fs::remove_dir_all(scratch.path().join(format!("shard-{k:05}")));
                if let Some(leases) = &leases {
                    held.lock().expect("lease lock").remove(&k);
                    // Leftover lease files are harmless: a committed shard is never claimed again.
                    let _ = leases.release(k).await;
                }
                report.shards_committed += 1;
                if let Some(entry) = entry {
                    report.items_written += entry.items as u64;
                    opts.reporter.shard_committed(k, entry.items, entry.errors);
                }
                if expected == Some(report.shards_committed) {
                    break Ok(());
                }
            }
            Ok(item) = rx.recv() => {
                sink_counters.items_in.fetch_add(1, Ordering::Relaxed);
                sink_counters.computed.fetch_add(1, Ordering::Relaxed);
                let k = item.shard;
                let writer = match open.entry(k) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => match open_shard(k) {
                        Ok(w) => v.insert(w),
                        Err(e) => break Err(e),
                    },
                };
                let (id, input) = (item.id.clone(), input_of(&item));
                let uri = item.get("uri").map(ToString::to_string).unwrap_or_default();
                let t0 = Instant::now();
                let added = tokio::task::block_in_place(|| writer.add(item));
                sink_counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match added {
                    Ok(()) => {
                        sink_counters.items_out.fetch_add(1, Ordering::Relaxed);
                        tracker.written(k, input, id);
                    }
                    Err(e) => {
                        sink_counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracker.fail(k, input, record(&id, &uri, &sink_label, e));
                    }
                }
            }
        }
    };
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drop(open);
    report.stages = counters
        .iter()
        .zip(&labels)
        .map(|(c, l)| {
            let counters = c.snapshot(l);
            let items_per_busy_s = if counters.busy_s > 0.0 { counters.items_in as f64 / counters.busy_s } else { 0.0 };
            StageReport { counters, items_per_busy_s, dropped_examples: c.dropped.examples() }
        })
        .collect();
    // Every failed item, including input rows rejected before the first stage.
    report.errors = tracker.outcomes.lock().expect("tracker lock").failed;
    if leases.is_some() {
        report.shards_other_workers = held_elsewhere.load(Ordering::Relaxed);
    }
    let outcome = match outcome {
        Ok(()) => finish_version(&out, job, &lineage, &planned, shards.len(), &uploader, scratch.path(), sink.as_ref())
            .await
            .map(|v| report.version = v),
        Err(e) => Err(e),
    };
    report.wall_s = started.elapsed().as_secs_f64();
    report.status = match &outcome {
        Ok(()) => "completed",
        Err(PipelineError::Interrupted(..)) => "interrupted",
        Err(_) => "aborted",
    }
    .into();
    // The report is one atomic object; an interrupted run still says what it did.
    let report_name = if opts.cluster.world == 1 {
        "report.json".to_string()
    } else {
        format!("report-rank-{:05}.json", opts.cluster.rank)
    };
    let written = out.write(&report_name, serde_json::to_vec_pretty(&report).expect("report serializes")).await;
    opts.reporter.finish(&report);
    outcome?;
    written?;
    Ok(report)
}

/// Commit the plan's version if all of its shards are committed, and publish it; the version
/// number that stands, if any.
#[allow(clippy::too_many_arguments)]
async fn finish_version(
    out: &Location,
    job: &crate::manifest::JobConfig,
    lineage: &Lineage,
    planned: &Planned,
    shards_total: usize,
    uploader: &crate::upload::Uploader,
    scratch: &std::path::Path,
    sink: &dyn Sink,
) -> Result<Option<u64>, PipelineError> {
    match commit::commit_version(out, &job.name, lineage, planned, shards_total, uploader, scratch).await? {
        Some(index) => {
            commit::publish(out, &index, sink).await?;
            Ok(Some(index.version))
        }
        None => Ok(None),
    }
}

/// Remove the upload staging files that dead attempts left in a local output
/// ([`attempt::staging_file_dead`]); live workers' files stay.
fn remove_dead_staging_files(out: &Location) {
    let Some(dir) = out.local_dir.clone() else { return };
    // Best effort: a file we cannot remove is one more for `mugflow repair`.
    let _ = out.remove_local_staging_files(|name, age| attempt::staging_file_dead(&dir, name, age));
}

/// How the job's dataset is made: each stage's parameters with the identity (path, sha256) of
/// every checkpoint it reads, and the input dataset's own pipeline when the job reads one.
async fn lineage(plan: &Plan) -> Result<Lineage, PipelineError> {
    // Every checkpoint hashed at once (a fresh node reads each file once, ~1 s per GB), then
    // gathered in stage order.
    let hashing: Vec<Vec<_>> = plan
        .stages
        .iter()
        .map(|s| {
            let paths = s.config.checkpoints().into_iter();
            paths.map(|path| tokio::task::spawn_blocking(move || checkpoint_identity(&path))).collect()
        })
        .collect();
    let mut pipeline = Vec::new();
    for (s, tasks) in plan.stages.iter().zip(hashing) {
        let mut checkpoints = Vec::new();
        for task in tasks {
            let id = task.await.map_err(|e| PipelineError::Input(format!("checkpoint hashing stopped: {e}")))??;
            checkpoints.push(id);
        }
        pipeline.push(serde_json::json!({ "kind": s.kind, "params": s.config.params(), "checkpoints": checkpoints }));
    }
    let derived_from = match &plan.job.input {
        crate::manifest::InputSpec::Listing(crate::manifest::InputListing { dataset: Some(d), .. }) => {
            let source: DatasetIndex = serde_json::from_slice(&Location::parse(d)?.read("index.json").await?)
                .map_err(|e| PipelineError::Input(format!("dataset {d}: index.json: {e}")))?;
            Some(serde_json::json!({ "dataset": d, "job": source.job, "pipeline": source.pipeline }))
        }
        _ => None,
    };
    Ok(Lineage { pipeline, derived_from })
}

/// Scratch directories are named `mugflow-<pid>-<random>` in the system temp directory.
const SCRATCH_PREFIX: &str = "mugflow-";

/// Remove scratch directories of mugflow processes that no longer exist (killed runs).
fn remove_stale_scratch() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(pid) =
            name.strip_prefix(SCRATCH_PREFIX).and_then(|r| r.split_once('-')).and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            // Best effort: another user's directory or a race with its owner is not our problem.
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use async_trait::async_trait;
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    use super::*;
    use crate::format::NativeShardWriter;
    use crate::stage::StageConfig;
    use crate::{DType, Field, FieldType, Item, StageError, Tensor};

    /// Splits each item into `n` children carrying a 16 KiB tensor; ids ending in `drop` are
    /// filtered out and ids ending in `bad` fail.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct SplitConfig {
        /// Children per item.
        n: usize,
        /// Leave out the declared `part` field (a stage whose code drifted from its `adds()`).
        #[serde(default)]
        forget_part: bool,
    }

    struct Split(usize, bool);

    #[async_trait]
    impl Stage for Split {
        async fn process(&self, item: Item, _: &StageContext) -> Result<Vec<Item>, StageError> {
            if item.id.ends_with("bad") {
                return Err(StageError::msg("bad input").context("split failed"));
            }
            if item.id.ends_with("drop") {
                return Ok(Vec::new());
            }
            Ok((0..self.0)
                .map(|i| {
                    let mut c = item.child(format!("{}#{i}", item.id));
                    if !self.1 {
                        c.set("part", i as i64);
                    }
                    c.tensors.insert(
                        "x".into(),
                        Tensor::new(DType::U8, vec![16 << 10], vec![i as u8; 16 << 10].into()).unwrap(),
                    );
                    c
                })
                .collect())
        }
    }

    impl StageConfig for SplitConfig {
        const KIND: &'static str = "split";
        const EXAMPLE: &'static str = "";
        fn reads(&self) -> Vec<Field> {
            vec![Field::new("uri", FieldType::Str, "")]
        }
        fn adds(&self) -> Vec<Field> {
            vec![Field::new("part", FieldType::Int, "")]
        }
        fn build(&self, _: &BuildContext) -> Result<Runnable, crate::BuildError> {
            Ok(Runnable::Transform(Arc::new(Split(self.n, self.forget_part))))
        }
    }

    /// The native writer as a sink.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct SinkConfig {}

    struct Native;

    impl Sink for Native {
        fn open_shard(&self, target: &ShardTarget) -> Result<Box<dyn ShardSink>, PipelineError> {
            Ok(Box::new(NativeShardWriter::new(target)?))
        }
    }

    impl StageConfig for SinkConfig {
        const KIND: &'static str = "sink";
        const EXAMPLE: &'static str = "";
        const SINK: bool = true;
        fn reads(&self) -> Vec<Field> {
            Vec::new()
        }
        fn adds(&self) -> Vec<Field> {
            Vec::new()
        }
        fn build(&self, _: &BuildContext) -> Result<Runnable, crate::BuildError> {
            Ok(Runnable::Sink(Arc::new(Native)))
        }
    }

    /// Run the split job (shards of 3) over `names` into `out`, with `job` settings and `stage`
    /// parameters of the split stage added.
    async fn split_job(dir: &Path, out: &str, names: &[&str], job: &str, stage: &str) -> RunReport {
        std::fs::write(dir.join("in.txt"), names.iter().map(|n| format!("{n}.mp4\n")).collect::<String>()).unwrap();
        let text = format!(
            "[job]\nname = \"t\"\ninput = {{ list = \"{}/in.txt\" }}\noutput = \"{out}\"\nshard_size = 3\n{job}\n\
             [[stage]]\nkind = \"split\"\n{stage}\n\n[[stage]]\nkind = \"sink\"\n",
            dir.display()
        );
        let mut reg = Registry::new();
        reg.register::<SplitConfig>().register::<SinkConfig>();
        let m = crate::manifest::Manifest::from_text(Path::new("t.toml"), text, &[], &|_| None).unwrap();
        let plan = Plan::from_manifest(&m, &reg).unwrap();
        let opts = RunOptions {
            reporter: Arc::new(crate::report::Silent),
            cluster: crate::cluster::Cluster::single(),
            stop: std::future::pending(),
        };
        run(&plan, &reg, opts).await.unwrap()
    }

    /// [`split_job`] with 3 children per item.
    async fn split_run(dir: &Path, out: &str, names: &[&str], job: &str) -> RunReport {
        split_job(dir, out, names, job, "n = 3").await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_filters_and_failures_under_a_tight_budget_commit_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a", "b", "c_drop", "d_bad", "e", "f", "g"];
        let job = "memory_budget = \"64KiB\"\nqueue_depth = 1";
        let report = split_job(dir.path(), "memory://executor-test/out", &names, job, "n = 3\nparallelism = 2").await;
        assert_eq!((report.shards_committed, report.items_written, report.errors), (3, 15, 1));
        assert_eq!(report.stages[0].counters.items_out, 15);
        assert_eq!((report.changes.new, report.version), (7, Some(1)));

        let out = Location::parse("memory://executor-test/out").unwrap();
        let index = crate::version::latest(&out).await.unwrap().unwrap();
        let per_shard: Vec<(usize, usize)> = index.shards.iter().map(|e| (e.items, e.errors)).collect();
        // Shards hold [a b c_drop], [d_bad e f], [g].
        assert_eq!(per_shard, [(6, 0), (6, 1), (3, 0)]);
        assert_eq!(index.shards[1].tensors, ["x"]);
        let done: Vec<&str> = index.shards.iter().flat_map(|s| s.done.iter().map(|d| d.id.as_str())).collect();
        assert_eq!(done, ["a", "b", "c_drop", "e", "f", "g"], "a failed item is not done");
        assert_eq!(index.shards[0].done[2].row_ids(), Vec::<&str>::new(), "filtered out: done with no rows");
        let errors =
            crate::inspect::read_table_summary(&out, index.shards[1].error_file.as_ref().unwrap()).await.unwrap();
        assert_eq!(errors.rows[0]["item_id"], "d_bad");
        assert_eq!(errors.rows[0]["stage"], "1:split");
        assert_eq!(errors.rows[0]["causes"], "bad input");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_missing_a_declared_field_is_an_error_record_naming_stage_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let url = "memory://executor-contract/out";
        let report = split_job(dir.path(), url, &["a", "b"], "", "n = 1\nforget_part = true").await;
        assert_eq!((report.items_written, report.errors), (0, 2));
        let out = Location::parse("memory://executor-contract/out").unwrap();
        let index = crate::version::latest(&out).await.unwrap().unwrap();
        let errors =
            crate::inspect::read_table_summary(&out, index.shards[0].error_file.as_ref().unwrap()).await.unwrap();
        assert_eq!(errors.rows[0]["stage"], "1:split");
        assert_eq!(
            errors.rows[0]["message"],
            "stage 1:split declares that it adds `part` (int), but the item has no `part` (a bug in the stage)"
        );
    }

    /// The ids of a version's rows, read from its tables.
    async fn version_rows(out: &Location, version: u64) -> Vec<String> {
        let mut ids = Vec::new();
        for s in crate::version::load(out, version).await.unwrap().shards {
            ids.extend(
                crate::inspect::read_table_summary(out, &s.table)
                    .await
                    .unwrap()
                    .rows
                    .into_iter()
                    .map(|r| r["id"].clone()),
            );
        }
        ids.sort();
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_second_run_computes_only_new_items_and_carries_the_rest_into_a_new_version() {
        let dir = tempfile::tempdir().unwrap();
        let url = "memory://executor-incremental/out";
        let first = split_run(dir.path(), url, &["a", "b", "c_drop", "d_bad", "e", "f", "g"], "").await;
        assert_eq!(first.version, Some(1));
        // f and c_drop leave, h arrives; d_bad failed last time and is tried again.
        let second = split_run(dir.path(), url, &["a", "b", "d_bad", "e", "g", "h"], "").await;
        assert_eq!(
            (second.changes.new, second.changes.changed, second.changes.unchanged, second.changes.removed),
            (2, 0, 4, 2)
        );
        assert_eq!((second.base_version, second.version), (Some(1), Some(2)));
        assert_eq!(second.stages[0].counters.items_in, 2, "only h and d_bad are computed");
        let out = Location::parse(url).unwrap();
        let parts = |ids: &[&str]| -> Vec<String> {
            let mut v: Vec<String> = ids.iter().flat_map(|i| (0..3).map(move |k| format!("{i}#{k}"))).collect();
            v.sort();
            v
        };
        assert_eq!(version_rows(&out, 1).await, parts(&["a", "b", "e", "f", "g"]));
        assert_eq!(version_rows(&out, 2).await, parts(&["a", "b", "e", "g", "h"]), "f's rows are filtered out");
        let v2 = crate::version::load(&out, 2).await.unwrap();
        assert_eq!(v2.items, 15);
        assert_eq!(v2.errors, 1, "d_bad failed again, once");
        // The same input again: only the failed item is tried again.
        let third = split_run(dir.path(), url, &["a", "b", "d_bad", "e", "g", "h"], "").await;
        assert_eq!((third.status.as_str(), third.version), ("completed", Some(3)), "d_bad is retried each run");
        let fourth = split_run(dir.path(), url, &["a", "b", "e", "g", "h"], "").await;
        assert_eq!((fourth.status.as_str(), fourth.changes.removed), ("nothing to do", 0), "d_bad never finished");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn removed_items_are_kept_when_the_job_says_so() {
        let dir = tempfile::tempdir().unwrap();
        let url = "memory://executor-keep/out";
        split_run(dir.path(), url, &["a", "b", "c"], "").await;
        let second = split_run(dir.path(), url, &["a", "d"], "on_removed = \"keep\"").await;
        assert_eq!(
            (second.changes.new, second.changes.removed, second.changes.kept, second.changes.unchanged),
            (1, 0, 2, 1)
        );
        let out = Location::parse(url).unwrap();
        let kept = ["a#0", "a#1", "a#2", "b#0", "b#1", "b#2", "c#0", "c#1", "c#2", "d#0", "d#1", "d#2"];
        assert_eq!(version_rows(&out, second.version.unwrap()).await, kept);
        let third = split_run(dir.path(), url, &["a", "d"], "").await;
        assert_eq!(third.changes.removed, 2);
        assert_eq!(version_rows(&out, third.version.unwrap()).await, ["a#0", "a#1", "a#2", "d#0", "d#1", "d#2"]);
    }
}

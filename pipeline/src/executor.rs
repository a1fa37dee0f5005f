//! The streaming executor: input shards flow through stages over bounded channels into the sink,
//! which commits each shard once all of its items are written, filtered or failed.
//!
//! - Every stage runs `parallelism` workers on tokio; CPU work inside stages goes to rayon.
//! - Channels are bounded (`job.queue_depth`), and payload bytes are capped by the memory
//!   budget, so a slow stage pauses the ones before it instead of filling memory.
//! - A shard commits in three steps: files staged in local scratch, each published with an
//!   atomic put, then the journal entry created exclusively. Killing the process at any point
//!   leaves either a committed shard or one that the next run redoes from scratch.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Notify};

use crate::budget::MemoryBudget;
use crate::cluster::Cluster;
use crate::format::{checkpoint_identity, DatasetIndex, Lineage};
use crate::input::{list_inputs, InputItem};
use crate::io::Location;
use crate::journal::{self, ShardEntry};
use crate::lease::{Lease, Leases};
use crate::manifest::Balance;
use crate::plan::Plan;
use crate::report::{Reporter, RunReport, RunStart, StageCounters, StageReport};
use crate::stage::{BuildContext, Registry, Runnable, ShardSink, Sink, Stage, StageContext};
use crate::{ErrorRecord, Item, PipelineError, StageError};

/// Error rates are only judged once this many items have finished.
pub const ERROR_RATE_MIN_ITEMS: u64 = 20;

/// How a run is observed, stopped, and which part of the job it takes.
pub struct RunOptions<S> {
    /// Receives progress events.
    pub reporter: Arc<dyn Reporter>,
    /// This worker's rank and world; it takes the shards `k` with `k % world == rank`.
    pub cluster: Cluster,
    /// Completes with the signal's name when the user asks to stop (Ctrl-C, SIGTERM).
    pub stop: S,
}

/// Per-shard bookkeeping: how many items are still alive, and the errors recorded so far.
struct Tracker {
    shards: Mutex<HashMap<usize, ShardState>>,
    done: mpsc::UnboundedSender<Event>,
    outcomes: Mutex<Outcomes>,
    max_error_rate: f64,
    abort: Notify,
}

/// Items finished and failed so far, and the counts when the error rate was first exceeded.
#[derive(Default)]
struct Outcomes {
    finished: u64,
    failed: u64,
    aborted_at: Option<(u64, u64)>,
}

/// What the sink waits for besides items.
enum Event {
    /// Every item of this shard is written, filtered or failed.
    ShardDone(usize),
    /// The source has fed all the shards it will feed (this many).
    SourceFinished(usize),
}

#[derive(Default)]
struct ShardState {
    live: usize,
    source_done: bool,
    errors: Vec<ErrorRecord>,
}

impl Tracker {
    fn open(&self, shard: usize, items: usize) {
        self.shards.lock().expect("tracker lock").insert(shard, ShardState { live: items, ..Default::default() });
    }

    /// Fan-out: `n` more items of `shard` are alive.
    fn add(&self, shard: usize, n: usize) {
        self.shards.lock().expect("tracker lock").entry(shard).or_default().live += n;
    }

    /// `n` items of `shard` finished (written or filtered out).
    fn finish(&self, shard: usize, n: usize) {
        self.outcomes.lock().expect("tracker lock").finished += n as u64;
        self.settle(shard, n, None);
    }

    /// One item of `shard` failed.
    fn fail(&self, shard: usize, record: ErrorRecord) {
        let crossed = {
            let mut o = self.outcomes.lock().expect("tracker lock");
            o.finished += 1;
            o.failed += 1;
            let over = o.finished >= ERROR_RATE_MIN_ITEMS && o.failed as f64 > self.max_error_rate * o.finished as f64;
            if over && o.aborted_at.is_none() {
                o.aborted_at = Some((o.failed, o.finished));
                true
            } else {
                false
            }
        };
        self.settle(shard, 1, Some(record));
        if crossed {
            self.abort.notify_one();
        }
    }

    /// (failed, finished) when the error rate was first exceeded.
    fn aborted_at(&self) -> (u64, u64) {
        let o = self.outcomes.lock().expect("tracker lock");
        o.aborted_at.unwrap_or((o.failed, o.finished))
    }

    fn source_done(&self, shard: usize) {
        let mut shards = self.shards.lock().expect("tracker lock");
        let s = shards.entry(shard).or_default();
        s.source_done = true;
        if s.live == 0 {
            let _ = self.done.send(Event::ShardDone(shard));
        }
    }

    fn settle(&self, shard: usize, n: usize, record: Option<ErrorRecord>) {
        let mut shards = self.shards.lock().expect("tracker lock");
        let s = shards.entry(shard).or_default();
        s.errors.extend(record);
        s.live = s.live.saturating_sub(n);
        if s.live == 0 && s.source_done {
            // The receiver lives as long as the run; after it is gone nothing is committed anyway.
            let _ = self.done.send(Event::ShardDone(shard));
        }
    }

    fn take_errors(&self, shard: usize) -> Vec<ErrorRecord> {
        self.shards.lock().expect("tracker lock").remove(&shard).map(|s| s.errors).unwrap_or_default()
    }
}

/// Run a validated plan to completion (or until stopped), resuming from the output's journal.
pub async fn run<S>(plan: &Plan, registry: &Registry, opts: RunOptions<S>) -> Result<RunReport, PipelineError>
where
    S: Future<Output = &'static str> + Send,
{
    let started = Instant::now();
    let job = &plan.job;
    let out = Location::parse(&job.output)?;
    let inputs = list_inputs(&job.input).await?;
    plan.check_fields(&inputs.fields, registry)?;
    let shards: Vec<&[InputItem]> = inputs.items.chunks(job.shard_size as usize).collect();
    let fingerprints: Vec<String> =
        shards.iter().map(|s| journal::fingerprint(s.iter().map(|i| i.id.as_str()))).collect();

    let mut committed = journal::load(&out).await?;
    for (k, e) in &committed {
        if fingerprints.get(*k) != Some(&e.fingerprint) {
            return Err(PipelineError::JournalMismatch {
                location: out.url.clone(),
                detail: format!("shard {k} was committed with other input items than this job lists now"),
            });
        }
    }
    out.remove_local_staging_files()?;
    let leases = (job.balance == Balance::Leases).then(|| {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        Leases::new(out.clone(), format!("{host}:{}:{}", std::process::id(), opts.cluster.rank), job.lease_ttl.0)
    });
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
        input_items: inputs.items.len(),
        shards_total: shards.len(),
        shards_committed: 0,
        shards_skipped: skipped,
        shards_other_workers: shards.len() - mine.len(),
        worker: opts.cluster.to_string(),
        items_written: 0,
        errors: 0,
        stages: Vec::new(),
    };
    opts.reporter.start(&RunStart {
        stages: labels.clone(),
        pending_items: pending.iter().map(|k| shards[*k].len() as u64).sum(),
        pending_shards: pending.len(),
        skipped_shards: skipped,
    });
    if pending.is_empty() {
        // A finished job: nothing is read, nothing is written.
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
    let stage_ctx = StageContext { scratch: scratch.path().to_path_buf() };
    let budget = MemoryBudget::new(job.memory_budget.0);
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let tracker = Arc::new(Tracker {
        shards: Mutex::default(),
        done: done_tx,
        outcomes: Mutex::default(),
        max_error_rate: job.max_error_rate,
        abort: Notify::new(),
    });

    let held: Arc<Mutex<HashMap<usize, Lease>>> = Arc::default();
    let held_elsewhere = Arc::new(AtomicUsize::new(0));
    let mut expected: Option<usize> = None;
    let depth = job.queue_depth as usize;
    let (first_tx, mut rx) = async_channel::bounded::<Item>(depth);
    let mut tasks = tokio::task::JoinSet::new();
    {
        let tracker = tracker.clone();
        let items: Vec<(usize, Vec<InputItem>)> = pending.iter().map(|k| (*k, shards[*k].to_vec())).collect();
        let source = Source { tracker, tx: first_tx, leases: leases.clone(), held: held.clone(), out: out.clone() };
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
    for (i, stage) in &transforms {
        let (tx, next_rx) = async_channel::bounded::<Item>(depth);
        let ps = &plan.stages[*i];
        for _ in 0..ps.parallelism {
            let w = Worker {
                stage: stage.clone(),
                label: ps.label(),
                rx: rx.clone(),
                tx: tx.clone(),
                tracker: tracker.clone(),
                counters: counters[*i].clone(),
                budget: budget.clone(),
                ctx: stage_ctx.clone(),
                timeout: job.item_timeout.0,
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
    let lineage = lineage(plan).await?;
    let mut open: BTreeMap<usize, Box<dyn ShardSink>> = BTreeMap::new();
    // A shard's writer stages its files in its own scratch folder.
    let open_shard = |k: usize| -> Result<Box<dyn ShardSink>, PipelineError> {
        let d = scratch.path().join(format!("shard-{k:05}"));
        std::fs::create_dir_all(&d).map_err(|e| PipelineError::io(format!("cannot create {}", d.display()), e))?;
        sink.open_shard(k, &d)
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
                    Event::ShardDone(k) => k,
                };
                let writer = match open.remove(&k) {
                    Some(w) => w,
                    None => match open_shard(k) { Ok(w) => w, Err(e) => break Err(e) },
                };
                let entry = match commit_shard(&out, writer, k, &fingerprints[k], shards[k].len(), tracker.take_errors(k)).await {
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
                report.items_written += entry.items as u64;
                opts.reporter.shard_committed(k, entry.items, entry.errors);
                committed.insert(k, entry);
                if let Err(e) = write_index(&out, &job.name, &lineage, sink.as_ref(), committed.values().cloned().collect()).await {
                    break Err(e);
                }
                if expected == Some(report.shards_committed) {
                    break Ok(());
                }
            }
            Ok(item) = rx.recv() => {
                sink_counters.items_in.fetch_add(1, Ordering::Relaxed);
                let k = item.shard;
                let writer = match open.entry(k) {
                    std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::btree_map::Entry::Vacant(v) => match open_shard(k) {
                        Ok(w) => v.insert(w),
                        Err(e) => break Err(e),
                    },
                };
                let (id, uri) = (item.id.clone(), item.get("uri").map(ToString::to_string).unwrap_or_default());
                let t0 = Instant::now();
                let added = tokio::task::block_in_place(|| writer.add(item));
                sink_counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
                match added {
                    Ok(()) => {
                        sink_counters.items_out.fetch_add(1, Ordering::Relaxed);
                        tracker.finish(k, 1);
                    }
                    Err(e) => {
                        sink_counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracker.fail(k, record(&id, &uri, &sink_label, e));
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
            StageReport { counters, items_per_busy_s }
        })
        .collect();
    // Every failed item, including input rows rejected before the first stage.
    report.errors = tracker.outcomes.lock().expect("tracker lock").failed;
    if leases.is_some() {
        report.shards_other_workers = held_elsewhere.load(Ordering::Relaxed);
    }
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
    let mut written = out.write(&report_name, serde_json::to_vec_pretty(&report).expect("report serializes")).await;
    if outcome.is_ok() && (opts.cluster.world > 1 || leases.is_some()) && written.is_ok() {
        written = publish_index(&out, &job.name, &lineage, sink.as_ref()).await;
    }
    opts.reporter.finish(&report);
    outcome?;
    written?;
    Ok(report)
}

/// Feeds the items of this worker's shards into the first stage.
struct Source {
    tracker: Arc<Tracker>,
    tx: async_channel::Sender<Item>,
    leases: Option<Leases>,
    held: Arc<Mutex<HashMap<usize, Lease>>>,
    out: Location,
}

/// Outcome of trying to take a shard under leases.
enum Claim {
    /// We hold it now.
    Claimed,
    /// Another worker committed it.
    Committed,
    /// Another worker holds a live lease (or the store could not be asked).
    Held,
}

impl Source {
    /// Feed every shard; with leases, keep retrying shards other workers hold until each is
    /// committed or taken over from a worker whose lease expired.
    async fn run(self, shards: Vec<(usize, Vec<InputItem>)>, elsewhere: Arc<AtomicUsize>, poll: Duration) {
        let mut fed = 0;
        let mut waiting = Vec::new();
        for (k, items) in shards {
            match self.claim(k).await {
                Claim::Claimed => {}
                Claim::Committed => continue,
                Claim::Held => {
                    waiting.push((k, items));
                    continue;
                }
            }
            if !self.feed(k, items).await {
                return;
            }
            fed += 1;
        }
        while !waiting.is_empty() {
            tokio::time::sleep(poll).await;
            let mut still = Vec::new();
            for (k, items) in waiting {
                match self.claim(k).await {
                    Claim::Claimed => {
                        if !self.feed(k, items).await {
                            return;
                        }
                        fed += 1;
                    }
                    Claim::Committed => {
                        elsewhere.fetch_add(1, Ordering::Relaxed);
                    }
                    Claim::Held => still.push((k, items)),
                }
            }
            waiting = still;
        }
        let _ = self.tracker.done.send(Event::SourceFinished(fed));
    }

    async fn claim(&self, k: usize) -> Claim {
        let Some(leases) = &self.leases else { return Claim::Claimed };
        match self.out.read_opt(&journal::entry_name(k)).await {
            Ok(Some(_)) => return Claim::Committed,
            Ok(None) => {}
            Err(_) => return Claim::Held,
        }
        match leases.try_claim(k).await {
            Ok(Some(lease)) => {
                self.held.lock().expect("lease lock").insert(k, lease);
                Claim::Claimed
            }
            Ok(None) | Err(_) => Claim::Held,
        }
    }

    /// Send a shard's items; false when the pipeline is shutting down.
    async fn feed(&self, k: usize, items: Vec<InputItem>) -> bool {
        self.tracker.open(k, items.len());
        for input in items {
            if let Some(message) = input.error {
                let uri = input.fields.get("uri").map(|v| v.to_string()).unwrap_or_default();
                self.tracker.fail(k, record(&input.id, &uri, "0:input", StageError::msg(message)));
                continue;
            }
            let mut item = Item::new(input.id);
            item.fields = input.fields;
            item.shard = k;
            if self.tx.send(item).await.is_err() {
                return false;
            }
        }
        self.tracker.source_done(k);
        true
    }
}

/// How the job's dataset is made: each stage's parameters with the identity (path, sha256) of
/// every checkpoint it reads, and the input dataset's own pipeline when the job reads one.
async fn lineage(plan: &Plan) -> Result<Lineage, PipelineError> {
    let mut pipeline = Vec::new();
    for s in &plan.stages {
        let mut checkpoints = Vec::new();
        for path in s.config.checkpoints() {
            let id = tokio::task::spawn_blocking(move || checkpoint_identity(&path))
                .await
                .map_err(|e| PipelineError::Input(format!("checkpoint hashing stopped: {e}")))??;
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

/// Write index.json and the sink's dataset-level files for the given committed shards.
async fn write_index(
    out: &Location,
    job: &str,
    lineage: &Lineage,
    sink: &dyn Sink,
    entries: Vec<journal::ShardEntry>,
) -> Result<(), PipelineError> {
    for (name, bytes) in sink.dataset_files(&entries) {
        out.write(&name, bytes).await?;
    }
    let mut index = DatasetIndex::new(job, entries, lineage.pipeline.clone());
    index.derived_from = lineage.derived_from.clone();
    // Plain data always serializes.
    out.write("index.json", serde_json::to_vec_pretty(&index).expect("index serializes")).await
}

/// Rewrite index.json (and the sink's dataset files) from the journal until a re-read of the
/// journal matches what was written.
///
/// Workers of a distributed job all rewrite the index; each one checks after its own write that
/// no commit was missed, so the last write always lists every committed shard.
async fn publish_index(out: &Location, job: &str, lineage: &Lineage, sink: &dyn Sink) -> Result<(), PipelineError> {
    let mut entries = journal::load(out).await?;
    loop {
        write_index(out, job, lineage, sink, entries.values().cloned().collect()).await?;
        let again = journal::load(out).await?;
        if again.keys().eq(entries.keys()) {
            return Ok(());
        }
        entries = again;
    }
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

/// Finish a shard's files, publish each with an atomic put, then create its journal entry.
async fn commit_shard(
    out: &Location,
    writer: Box<dyn ShardSink>,
    shard: usize,
    fingerprint: &str,
    inputs: usize,
    errors: Vec<ErrorRecord>,
) -> Result<ShardEntry, PipelineError> {
    let files = tokio::task::block_in_place(|| writer.finish(&errors))?;
    for (local, name) in &files.files {
        out.upload(local, name).await?;
    }
    let entry = ShardEntry {
        shard,
        fingerprint: fingerprint.to_string(),
        inputs,
        items: files.items,
        errors: errors.len(),
        files: files.files.iter().map(|(_, n)| n.clone()).collect(),
        fields: files.fields,
        tensors: files.tensors,
        committed_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    };
    journal::commit(out, &entry).await?;
    Ok(entry)
}

fn record(id: &str, uri: &str, stage: &str, e: StageError) -> ErrorRecord {
    ErrorRecord {
        item_id: id.to_string(),
        uri: uri.to_string(),
        stage: stage.to_string(),
        message: e.message,
        causes: e.causes.join(" <- "),
    }
}

/// One worker of one stage.
struct Worker {
    stage: Arc<dyn Stage>,
    label: String,
    rx: async_channel::Receiver<Item>,
    tx: async_channel::Sender<Item>,
    tracker: Arc<Tracker>,
    counters: Arc<StageCounters>,
    budget: MemoryBudget,
    ctx: StageContext,
    timeout: Duration,
}

impl Worker {
    async fn run(self) {
        while let Ok(item) = self.rx.recv().await {
            self.counters.items_in.fetch_add(1, Ordering::Relaxed);
            let (id, shard) = (item.id.clone(), item.shard);
            let uri = item.get("uri").map(ToString::to_string).unwrap_or_default();
            let t0 = Instant::now();
            let result = match tokio::time::timeout(self.timeout, self.stage.process(item, &self.ctx)).await {
                Ok(r) => r,
                Err(_) => Err(StageError::msg(format!(
                    "timed out after {} (job.item_timeout)",
                    humantime::format_duration(self.timeout)
                ))),
            };
            self.counters.busy_ns.fetch_add(t0.elapsed().as_nanos() as u64, Ordering::Relaxed);
            match result {
                Ok(children) if children.is_empty() => self.tracker.finish(shard, 1),
                Ok(children) => {
                    self.counters.items_out.fetch_add(children.len() as u64, Ordering::Relaxed);
                    self.tracker.add(shard, children.len() - 1);
                    for mut child in children {
                        child.shard = shard;
                        self.budget.reserve(&mut child).await;
                        if self.tx.send(child).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    self.tracker.fail(shard, record(&id, &uri, &self.label, e));
                }
            }
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
    use crate::{DType, Field, FieldType, Tensor};

    /// Splits each item into `n` children carrying a 16 KiB tensor; ids ending in `drop` are
    /// filtered out and ids ending in `bad` fail.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct SplitConfig {
        /// Children per item.
        n: usize,
    }

    struct Split(usize);

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
                    c.set("part", i as i64);
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
        fn build(&self, _: &BuildContext) -> Result<Runnable, String> {
            Ok(Runnable::Transform(Arc::new(Split(self.n))))
        }
    }

    /// The native writer as a sink.
    #[derive(Serialize, Deserialize, JsonSchema)]
    #[serde(deny_unknown_fields)]
    struct SinkConfig {}

    struct Native;

    impl Sink for Native {
        fn open_shard(&self, shard: usize, dir: &Path) -> Result<Box<dyn ShardSink>, PipelineError> {
            Ok(Box::new(NativeShardWriter::new(shard, dir)?))
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
        fn build(&self, _: &BuildContext) -> Result<Runnable, String> {
            Ok(Runnable::Sink(Arc::new(Native)))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fan_out_filters_and_failures_under_a_tight_budget_commit_every_shard() {
        let dir = tempfile::tempdir().unwrap();
        let names = ["a", "b", "c_drop", "d_bad", "e", "f", "g"];
        std::fs::write(dir.path().join("in.txt"), names.map(|n| format!("{n}.mp4\n")).concat()).unwrap();
        let text = format!(
            "[job]\nname = \"t\"\ninput = {{ list = \"{}/in.txt\" }}\noutput = \"memory://executor-test/out\"\nshard_size = 3\n\
             memory_budget = \"64KiB\"\nqueue_depth = 1\n\n[[stage]]\nkind = \"split\"\nn = 3\nparallelism = 2\n\n[[stage]]\nkind = \"sink\"\n",
            dir.path().display()
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
        let report = run(&plan, &reg, opts).await.unwrap();
        assert_eq!((report.shards_committed, report.items_written, report.errors), (3, 15, 1));
        assert_eq!(report.stages[0].counters.items_out, 15);

        let out = Location::parse("memory://executor-test/out").unwrap();
        let entries = journal::load(&out).await.unwrap();
        let per_shard: Vec<(usize, usize)> = entries.values().map(|e| (e.items, e.errors)).collect();
        // Shards hold [a b c_drop], [d_bad e f], [g].
        assert_eq!(per_shard, [(6, 0), (6, 1), (3, 0)]);
        assert_eq!(entries[&1].tensors, ["x"]);
        let errors = crate::inspect::read_table_summary(&out, "shard-00001.errors.parquet").await.unwrap();
        assert_eq!(errors.rows[0]["item_id"], "d_bad");
        assert_eq!(errors.rows[0]["stage"], "1:split");
        assert_eq!(errors.rows[0]["causes"], "bad input");
    }
}

//! Per-shard bookkeeping: how many items of each shard are still alive, which input items
//! produced which rows, and which failed; the error rate of the whole run.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};

use crate::ErrorRecord;

/// Error rates are only judged once this many items have finished.
pub const ERROR_RATE_MIN_ITEMS: u64 = 20;

/// What the sink waits for besides items.
pub(super) enum Event {
    /// Every item of this shard is written, filtered or failed.
    ShardDone(usize),
    /// The source has fed all the shards it will feed (this many).
    SourceFinished(usize),
    /// The source cannot go on (a shard can never be claimed): the run stops with this error.
    SourceFailed(crate::PipelineError),
}

/// Items finished and failed so far, and the counts when the error rate was first exceeded.
#[derive(Default)]
pub(super) struct Outcomes {
    pub(super) finished: u64,
    pub(super) failed: u64,
    aborted_at: Option<(u64, u64)>,
}

/// What one shard's items became, handed to the commit.
#[derive(Default)]
pub(super) struct ShardOutcome {
    /// Error records of the shard.
    pub(super) errors: Vec<ErrorRecord>,
    /// Row ids written per input item.
    pub(super) rows: HashMap<Arc<str>, Vec<String>>,
    /// Input items with at least one error record.
    pub(super) failed: HashSet<Arc<str>>,
}

#[derive(Default)]
struct ShardState {
    live: usize,
    source_done: bool,
    outcome: ShardOutcome,
}

/// Shared by the source, the stage workers and the sink.
pub(super) struct Tracker {
    shards: Mutex<HashMap<usize, ShardState>>,
    done: mpsc::UnboundedSender<Event>,
    pub(super) outcomes: Mutex<Outcomes>,
    max_error_rate: f64,
    pub(super) abort: Notify,
}

impl Tracker {
    pub(super) fn new(done: mpsc::UnboundedSender<Event>, max_error_rate: f64) -> Self {
        Tracker { shards: Mutex::default(), done, outcomes: Mutex::default(), max_error_rate, abort: Notify::new() }
    }

    /// The source tells that it fed every shard it will feed.
    pub(super) fn source_finished(&self, fed: usize) {
        // The receiver lives as long as the run; after it is gone nothing is committed anyway.
        let _ = self.done.send(Event::SourceFinished(fed));
    }

    /// The source stops the run with an error.
    pub(super) fn source_failed(&self, e: crate::PipelineError) {
        let _ = self.done.send(Event::SourceFailed(e));
    }

    pub(super) fn open(&self, shard: usize, items: usize) {
        self.shards.lock().expect("tracker lock").insert(shard, ShardState { live: items, ..Default::default() });
    }

    /// Fan-out: `n` more items of `shard` are alive.
    pub(super) fn add(&self, shard: usize, n: usize) {
        self.shards.lock().expect("tracker lock").entry(shard).or_default().live += n;
    }

    /// `n` items of `shard` finished without a row (filtered out).
    pub(super) fn finish(&self, shard: usize, n: usize) {
        self.outcomes.lock().expect("tracker lock").finished += n as u64;
        self.settle(shard, n, |_| {});
    }

    /// One item of `shard` was written as row `row` of input item `input`.
    pub(super) fn written(&self, shard: usize, input: Arc<str>, row: String) {
        self.outcomes.lock().expect("tracker lock").finished += 1;
        self.settle(shard, 1, |o| o.rows.entry(input).or_default().push(row));
    }

    /// One item of `shard`, from input item `input`, failed.
    pub(super) fn fail(&self, shard: usize, input: Arc<str>, record: ErrorRecord) {
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
        self.settle(shard, 1, |o| {
            o.failed.insert(input);
            o.errors.push(record);
        });
        if crossed {
            self.abort.notify_one();
        }
    }

    /// (failed, finished) when the error rate was first exceeded.
    pub(super) fn aborted_at(&self) -> (u64, u64) {
        let o = self.outcomes.lock().expect("tracker lock");
        o.aborted_at.unwrap_or((o.failed, o.finished))
    }

    pub(super) fn source_done(&self, shard: usize) {
        let mut shards = self.shards.lock().expect("tracker lock");
        let s = shards.entry(shard).or_default();
        s.source_done = true;
        if s.live == 0 {
            let _ = self.done.send(Event::ShardDone(shard));
        }
    }

    fn settle(&self, shard: usize, n: usize, record: impl FnOnce(&mut ShardOutcome)) {
        let mut shards = self.shards.lock().expect("tracker lock");
        let s = shards.entry(shard).or_default();
        record(&mut s.outcome);
        s.live = s.live.saturating_sub(n);
        if s.live == 0 && s.source_done {
            let _ = self.done.send(Event::ShardDone(shard));
        }
    }

    /// What the items of a finished shard became.
    pub(super) fn take(&self, shard: usize) -> ShardOutcome {
        self.shards.lock().expect("tracker lock").remove(&shard).map(|s| s.outcome).unwrap_or_default()
    }
}

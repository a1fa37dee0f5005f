//! The source: feeds the input items of this worker's shards into the first stage, claiming
//! each shard first when the job balances with leases.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::incremental::WorkItem;
use super::tracker::Tracker;
use super::worker::record;
use crate::io::Location;
use crate::journal;
use crate::lease::{Lease, Leases};
use crate::{Item, PipelineError, StageError};

/// Feeds the items of this worker's shards into the first stage.
pub(super) struct Source {
    pub(super) tracker: Arc<Tracker>,
    pub(super) tx: async_channel::Sender<Item>,
    pub(super) leases: Option<Leases>,
    pub(super) held: Arc<Mutex<HashMap<usize, Lease>>>,
    pub(super) out: Location,
    pub(super) plan: String,
}

/// Outcome of trying to take a shard under leases.
enum Claim {
    /// We hold it now.
    Claimed,
    /// Another worker committed it.
    Committed,
    /// Another worker holds a live lease (or the store could not be asked this time).
    Held,
    /// The shard can never be claimed as things are (a corrupt lease file): the run stops.
    Broken(PipelineError),
}

impl Source {
    /// Feed every shard; with leases, keep retrying shards other workers hold until each is
    /// committed or taken over from a worker whose lease expired.
    pub(super) async fn run(self, shards: Vec<(usize, Vec<WorkItem>)>, elsewhere: Arc<AtomicUsize>, poll: Duration) {
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
                Claim::Broken(e) => return self.tracker.source_failed(e),
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
                    Claim::Broken(e) => return self.tracker.source_failed(e),
                }
            }
            waiting = still;
        }
        self.tracker.source_finished(fed);
    }

    async fn claim(&self, k: usize) -> Claim {
        let Some(leases) = &self.leases else { return Claim::Claimed };
        match self.out.read_opt(&journal::entry_name(&self.plan, k)).await {
            Ok(Some(_)) => return Claim::Committed,
            Ok(None) => {}
            Err(_) => return Claim::Held,
        }
        match leases.try_claim(k).await {
            Ok(Some(lease)) => {
                self.held.lock().expect("lease lock").insert(k, lease);
                Claim::Claimed
            }
            Err(e @ PipelineError::CorruptLease { .. }) => Claim::Broken(e),
            Ok(None) | Err(_) => Claim::Held,
        }
    }

    /// Send a shard's items; false when the pipeline is shutting down.
    async fn feed(&self, k: usize, items: Vec<WorkItem>) -> bool {
        self.tracker.open(k, items.len());
        for WorkItem { input, .. } in items {
            let id: Arc<str> = Arc::from(input.id.as_str());
            if let Some(message) = input.error {
                let uri = input.fields.get("uri").map(|v| v.to_string()).unwrap_or_default();
                self.tracker.fail(k, id, record(&input.id, &uri, "0:input", StageError::msg(message)));
                continue;
            }
            let mut item = Item::new(input.id);
            item.fields = input.fields.into_map();
            item.shard = k;
            item.input = Some(id);
            if self.tx.send(item).await.is_err() {
                return false;
            }
        }
        self.tracker.source_done(k);
        true
    }
}

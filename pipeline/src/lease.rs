//! Dynamic shard balancing through leases stored next to the output (`job.balance = "leases"`).
//!
//! A worker claims a shard of a plan by creating `_leases/<plan>/shard-XXXXX/gen-NNNNNN.json` with a conditional
//! put (create only if absent), so exactly one worker wins each generation. A lease expires after
//! `job.lease_ttl`; the holder renews it by creating the next generation itself, and a worker that
//! finds the newest generation expired takes the shard over by creating the next one. Clocks of
//! the workers are assumed to agree to well within the TTL. Whatever the leases say, a shard is
//! committed once: the journal entry is a conditional create too.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::{PutMode, PutOptions};
use serde::{Deserialize, Serialize};

use crate::io::Location;
use crate::PipelineError;

/// Folder of the leases under the output location.
pub const LEASE_DIR: &str = "_leases";

/// The content of one lease generation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    /// Shard index.
    pub shard: usize,
    /// Generation; each claim or renewal creates the next one.
    pub generation: u64,
    /// Who holds it ("host:pid:rank").
    pub owner: String,
    /// Expiry, milliseconds since the Unix epoch.
    pub expires_at_ms: u64,
}

/// Claims, renews and releases shard leases for one worker.
#[derive(Clone, Debug)]
pub struct Leases {
    out: Location,
    /// `_leases/<plan>`: shards of different plans are different shards.
    dir: String,
    owner: String,
    ttl: Duration,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Leases {
    /// A lease client for `owner` on the shards of `plan`, with leases lasting `ttl`.
    pub fn new(out: Location, plan: &str, owner: String, ttl: Duration) -> Self {
        Leases { out, dir: format!("{LEASE_DIR}/{plan}"), owner, ttl }
    }

    fn shard_dir(&self, shard: usize) -> String {
        format!("{}/shard-{shard:05}", self.dir)
    }

    /// The newest lease generation of a shard, if any. A lease file that cannot be read is an
    /// error naming it and the fix (no claim could ever succeed past it).
    pub async fn newest(&self, shard: usize) -> Result<Option<Lease>, PipelineError> {
        let names = self.out.list(&self.shard_dir(shard)).await?;
        let Some(last) = names.iter().filter(|n| n.ends_with(".json")).max() else { return Ok(None) };
        self.read(last).await
    }

    /// The lease generation stored as `name`, if it exists; an error naming it if it is corrupt.
    async fn read(&self, name: &str) -> Result<Option<Lease>, PipelineError> {
        match self.out.read_opt(name).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| PipelineError::CorruptLease {
                location: self.out.url_of(name),
                output: self.out.url.clone(),
                detail: e.to_string(),
            }),
            None => Ok(None),
        }
    }

    /// Try to take a shard: succeeds if nobody holds a live lease and we win the conditional create.
    pub async fn try_claim(&self, shard: usize) -> Result<Option<Lease>, PipelineError> {
        let generation = match self.newest(shard).await? {
            None => 0,
            Some(l) if l.expires_at_ms <= now_ms() => l.generation + 1,
            Some(_) => return Ok(None),
        };
        self.create(shard, generation).await
    }

    /// Extend a held lease by creating its next generation; `None` if another worker took it over.
    pub async fn renew(&self, lease: &Lease) -> Result<Option<Lease>, PipelineError> {
        self.create(lease.shard, lease.generation + 1).await
    }

    /// Remove a shard's leases once it is committed.
    pub async fn release(&self, shard: usize) -> Result<(), PipelineError> {
        for name in self.out.list(&self.shard_dir(shard)).await? {
            self.out.delete(&name).await?;
        }
        Ok(())
    }

    async fn create(&self, shard: usize, generation: u64) -> Result<Option<Lease>, PipelineError> {
        let lease = Lease {
            shard,
            generation,
            owner: self.owner.clone(),
            expires_at_ms: now_ms() + self.ttl.as_millis() as u64,
        };
        let name = format!("{}/gen-{generation:06}.json", self.shard_dir(shard));
        // Plain data always serializes.
        let body = serde_json::to_vec(&lease).expect("leases serialize");
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.out.store.put_opts(&self.out.key(&name), body.into(), opts).await {
            Ok(_) => Ok(Some(lease)),
            // Ours when the store applied our put but lost its reply and the client retried it.
            Err(object_store::Error::AlreadyExists { .. }) => match self.read(&name).await? {
                Some(held) if held.owner == self.owner => Ok(Some(held)),
                _ => Ok(None),
            },
            Err(e) => Err(PipelineError::storage(self.out.url_of(&name), e)),
        }
    }
}

/// The owners of every live lease under `out` (any plan): the workers known to be alive.
pub async fn live_owners(out: &Location) -> Result<std::collections::HashSet<String>, PipelineError> {
    let mut newest: std::collections::BTreeMap<String, String> = std::collections::BTreeMap::new();
    for name in out.list(LEASE_DIR).await?.into_iter().filter(|n| n.ends_with(".json")) {
        let shard = name.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
        // Generations are zero-padded: the greatest name is the newest.
        if newest.get(&shard).is_none_or(|n| *n < name) {
            newest.insert(shard, name);
        }
    }
    let now = now_ms();
    let mut owners = std::collections::HashSet::new();
    for name in newest.values() {
        // A damaged lease names no owner; `mugflow repair` deals with it.
        let lease = out.read_opt(name).await?.and_then(|b| serde_json::from_slice::<Lease>(&b).ok());
        owners.extend(lease.filter(|l| l.expires_at_ms > now).map(|l| l.owner));
    }
    Ok(owners)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn racing_claims_have_one_winner_and_expired_leases_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        for out in
            [Location::parse("memory://lease-test/ds").unwrap(), Location::parse(dir.path().to_str().unwrap()).unwrap()]
        {
            let workers: Vec<Leases> =
                (0..8).map(|i| Leases::new(out.clone(), "p1", format!("w{i}"), Duration::from_millis(300))).collect();
            let claims = futures::future::join_all(workers.iter().map(|w| w.try_claim(0))).await;
            let winners: Vec<Lease> = claims.into_iter().filter_map(Result::unwrap).collect();
            assert_eq!(winners.len(), 1, "exactly one of 8 racing workers holds shard 0");
            let holder = &workers.iter().find(|w| w.owner == winners[0].owner).unwrap();
            let other = workers.iter().find(|w| w.owner != winners[0].owner).unwrap();
            assert!(other.try_claim(0).await.unwrap().is_none(), "a live lease is respected");
            // A claim whose put was applied but whose reply was lost is retried and finds its own
            // lease: it holds the shard (the retry of the create is its own).
            let again = holder.create(0, winners[0].generation).await.unwrap();
            assert_eq!(again.as_ref().map(|l| l.owner.as_str()), Some(holder.owner.as_str()));
            assert!(other.create(0, winners[0].generation).await.unwrap().is_none(), "not someone else's");
            let renewed = holder.renew(&winners[0]).await.unwrap().unwrap();
            assert_eq!(renewed.generation, 1);
            tokio::time::sleep(Duration::from_millis(350)).await;
            let taken = other.try_claim(0).await.unwrap().expect("an expired lease is taken over");
            assert_eq!((taken.generation, taken.owner.as_str()), (2, other.owner.as_str()));
            assert!(holder.renew(&renewed).await.unwrap().is_none(), "the old holder learns it lost the shard");
            assert_eq!(live_owners(&out).await.unwrap(), [other.owner.clone()].into());
            other.release(0).await.unwrap();
            assert!(other.newest(0).await.unwrap().is_none());
        }
    }

    #[tokio::test]
    async fn a_corrupt_lease_file_is_an_error_naming_it() {
        let out = Location::parse("memory://lease-corrupt/ds").unwrap();
        let w = Leases::new(out.clone(), "p1", "w".into(), Duration::from_secs(60));
        out.write("_leases/p1/shard-00003/gen-000000.json", b"{ half a lease".to_vec()).await.unwrap();
        let e = w.try_claim(3).await.unwrap_err();
        assert!(matches!(e, PipelineError::CorruptLease { .. }), "{e}");
        assert!(e.to_string().contains("_leases/p1/shard-00003/gen-000000.json"), "{e}");
        assert!(e.hint().unwrap().contains("mugflow repair memory://lease-corrupt/ds"), "{e:?}");
    }
}

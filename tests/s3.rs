//! The same job against a real S3-compatible server (moto, started here on loopback): the
//! output matches a local run, resume works, and the journal's conditional create holds.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A moto S3 server on a free loopback port, stopped on drop.
struct S3Server {
    child: Child,
    endpoint: String,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server() -> S3Server {
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
    let server = S3Server { child, endpoint: format!("http://127.0.0.1:{port}") };
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(60), "moto did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Create the bucket with a bare S3 CreateBucket request (moto accepts it unsigned).
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "PUT /mugflow HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    server
}

fn s3_env(server: &S3Server) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", server.endpoint.clone()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ALLOW_HTTP", "true".into()),
    ]
}

fn run_with(env: &[(&'static str, String)], args: &[&str]) -> (i32, String, String) {
    let out = common::mugflow(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_job_writes_to_s3_with_the_same_results_as_to_disk() {
    let server = start_server();
    let env = s3_env(&server);
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

    for (k, v) in &env {
        // Only this test in this binary reads the environment; tests here do not run concurrently with it.
        std::env::set_var(k, v);
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use pipeline::io::Location;
        use pipeline::journal::{commit, load, Commit};
        let s3 = Location::parse("s3://mugflow/datasets/demo").unwrap();
        let local = Location::parse(disk.to_str().unwrap()).unwrap();
        let names = |v: Vec<String>| v.into_iter().filter(|n| n != "report.json").collect::<Vec<_>>();
        assert_eq!(names(s3.list("").await.unwrap()), names(local.list("").await.unwrap()));
        for name in ["shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"] {
            let a = pipeline::inspect::read_table_summary(&s3, name).await.unwrap();
            let b = pipeline::inspect::read_table_summary(&local, name).await.unwrap();
            assert_eq!(a.rows, b.rows, "{name}");
        }
        // The commit point is a conditional create on S3 too: a second commit of a shard is refused.
        let entry = load(&s3).await.unwrap().remove(&0).unwrap();
        assert_eq!(commit(&s3, &entry).await.unwrap(), Commit::AlreadyCommitted);
    });
}

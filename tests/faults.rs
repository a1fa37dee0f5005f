//! Fault injection: an S3 endpoint that answers 503, stalls, drops connections or loses the reply
//! to a request it applied (a proxy in front of a real moto server), and a local output on a full
//! disk.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::Moto;

/// Counts of what the proxy did.
#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    errors: AtomicU64,
    stalls: AtomicU64,
    drops: AtomicU64,
    lost_replies: AtomicU64,
}

/// The run seed of the proxy's fault decisions: `MUGFLOW_FAULT_SEED`, else a fixed one; printed so
/// that a failing run can be replayed.
fn fault_seed() -> u64 {
    let seed = std::env::var("MUGFLOW_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x0ddf_a175);
    println!("fault seed {seed} (MUGFLOW_FAULT_SEED replays it)");
    seed
}

/// splitmix64: the seed of connection `n` from the run seed, so that each connection draws its
/// own sequence and the same run seed gives every connection the same faults again.
fn connection_seed(run: u64, n: u64) -> u64 {
    let mut z = run.wrapping_add(n.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) | 1 // xorshift needs a non-zero state
}

/// A proxy on a free port: each request is answered 503 (20%), dropped before it reaches the
/// server (10%), stalled for 1 s before being forwarded (10%), applied by the server with its
/// reply lost (10%: the client retries a request that already happened), or forwarded.
/// Connection `n` (in accept order) draws its decisions from `connection_seed(seed, n)`.
fn start_proxy(upstream: u16, faults: Arc<Faults>, seed: u64) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().flatten().enumerate() {
            let faults = faults.clone();
            let mut rng = connection_seed(seed, n as u64);
            std::thread::spawn(move || {
                let _ = serve(conn, upstream, &faults, &mut rng);
            });
        }
    });
    port
}

fn serve(client: TcpStream, upstream: u16, faults: &Faults, rng: &mut u64) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut client = client;
    loop {
        // Read one request: head lines, then Content-Length bytes of body.
        let mut head = Vec::new();
        let mut len = 0usize;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if line.to_ascii_lowercase().starts_with("connection:") {
                continue;
            }
            if line == "\r\n" {
                head.extend_from_slice(b"Connection: close\r\n\r\n");
                break;
            }
            head.extend_from_slice(line.as_bytes());
        }
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        faults.requests.fetch_add(1, Ordering::Relaxed);
        // xorshift64 over this connection's own state.
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        let fault = *rng % 100;
        match fault {
            0..20 => {
                faults.errors.fetch_add(1, Ordering::Relaxed);
                client.write_all(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n")?;
                continue;
            }
            20..30 => {
                faults.drops.fetch_add(1, Ordering::Relaxed);
                return Ok(()); // the connection closes with no answer
            }
            30..40 => {
                faults.stalls.fetch_add(1, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1000));
            }
            _ => {}
        }
        let mut up = TcpStream::connect(("127.0.0.1", upstream))?;
        up.write_all(&head)?;
        up.write_all(&body)?;
        let mut response = Vec::new();
        up.read_to_end(&mut response)?;
        if (40..50).contains(&fault) {
            faults.lost_replies.fetch_add(1, Ordering::Relaxed);
            return Ok(()); // the server applied the request; its answer never arrives
        }
        client.write_all(&response)?;
        // The upstream answer said `Connection: close`; close ours too.
        return Ok(());
    }
}

#[test]
fn flaky_object_store_requests_are_retried_and_nothing_is_lost() {
    let server = Moto::start();
    let faults = Arc::new(Faults::default());
    let proxy = start_proxy(server.port, faults.clone(), fault_seed());
    let env = server.env(proxy);
    let run = |set: &str| {
        common::mugflow(&[
            "run",
            "manifests/demo.toml",
            "--set",
            set,
            "--set",
            "job.shard_size=1",
            "--progress",
            "none",
        ])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap()
    };
    let out = run("job.output=s3://mugflow/flaky");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let again = run("job.output=s3://mugflow/flaky");
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("nothing to do"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let load = |n: &AtomicU64| n.load(Ordering::Relaxed);
    let (requests, errors, drops, stalls, lost) = (
        load(&faults.requests),
        load(&faults.errors),
        load(&faults.drops),
        load(&faults.stalls),
        load(&faults.lost_replies),
    );
    println!("faults injected: {errors} errors, {drops} drops, {stalls} stalls, {lost} lost replies of {requests}");
    assert!(
        errors > 0 && drops > 0 && stalls > 0 && lost > 0,
        "faults injected: {errors} errors, {drops} drops, {stalls} stalls, {lost} lost replies of {requests}"
    );

    // Read back through the server directly: every video exactly once.
    for (k, v) in &env[1..] {
        std::env::set_var(k, v);
    }
    std::env::set_var("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", server.port));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut ids = rt.block_on(async {
        let loc = pipeline::io::Location::parse("s3://mugflow/flaky").unwrap();
        let mut ids = Vec::new();
        for e in pipeline::version::latest(&loc).await.unwrap().unwrap().shards {
            let t = pipeline::inspect::read_table_summary(&loc, &e.table).await.unwrap();
            ids.extend(t.rows.into_iter().map(|r| r["id"].clone()));
        }
        ids
    });
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (10, 10));
}

#[test]
fn a_full_disk_fails_the_shard_cleanly_and_a_later_run_completes_it() {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let status = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&mnt).status().unwrap();
    assert!(status.success(), "cannot mount a 1 MiB tmpfs (the test needs root)");
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }
    let _guard = Unmount(mnt.clone());
    // Leave ~24 KiB free: the first shard fits, a later one does not.
    let filler = mnt.join("filler");
    std::fs::write(&filler, vec![0u8; 1024 * 1024 - 24 * 1024]).unwrap_or(());
    let out = mnt.join("out");
    let set = format!("job.output={}", out.display());
    let args = ["run", "manifests/demo.toml", "--set", &set, "--set", "job.shard_size=1", "--progress", "none"];
    let (code, _, err) = common::run(&args);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("No space left on device") || err.contains("storage error"), "{err}");
    let committed = common::written_ids(&out);
    assert!(committed.len() < 10, "the disk was never full");
    // Whatever was committed is whole; free the space and finish the job.
    std::fs::remove_file(&filler).unwrap();
    let (code, _, err) = common::run(&args);
    assert_eq!(code, 0, "{err}");
    let mut ids = common::written_ids(&out);
    ids.sort();
    let n = ids.len();
    ids.dedup();
    assert_eq!((n, ids.len()), (10, 10));
}

/// Four inputs that hang (FIFOs with a writer that never writes) among 20 good ones, on a CPU
/// pool of 2 threads with `item_timeout = "2s"`: each hung item becomes a timeout error record
/// and its FFmpeg read is interrupted, so the pool's threads are free again and every good item
/// is written. Measured: 4.3 s; with FFmpeg's blocking read instead, the first two hung reads held
/// both threads for good, every other item timed out and none was written (20.3 s).
///
/// What is covered: a read that waits for data that never comes (the writer end is held open).
/// A FIFO nobody writes to at all is not a hang: it is opened without blocking and reads as empty.
/// A job probing the rows of `dir/listing.csv` (`id,path`) on 2 workers with `item_timeout`.
fn probe_listing_job(dir: &Path, item_timeout: &str) -> PathBuf {
    common::manifest(
        dir,
        "job.toml",
        &format!(
            "[job]\nname = \"t\"\ninput = {{ table = \"{d}/listing.csv\", id_column = \"id\" }}\noutput = \"{d}/out\"\n\
             shard_size = 8\nitem_timeout = \"{item_timeout}\"\nmax_error_rate = 0.5\n{}\n\n[[stage]]\nkind = \"probe\"\nparallelism = 2\n\n\
             [[stage]]\nkind = \"write\"\n",
            common::allowed_videos(),
            d = dir.display()
        ),
    )
}

#[test]
fn a_fifo_nobody_writes_to_is_an_error_record_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("nobody.mp4");
    assert!(Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let video = std::fs::read_dir(common::videos()).unwrap().next().unwrap().unwrap().path();
    let csv = format!("id,path\na-fifo,{}\nb-good,{}\n", fifo.display(), video.display());
    std::fs::write(dir.path().join("listing.csv"), csv).unwrap();
    let job = probe_listing_job(dir.path(), "60s");
    let t0 = std::time::Instant::now();
    let out = common::mugflow(&["run", job.to_str().unwrap(), "--progress", "none"]).output().unwrap();
    let wall = t0.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(common::written_ids(&dir.path().join("out")), ["b-good"], "{stderr}");
    let errors = common::error_rows(&dir.path().join("out"));
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "a-fifo");
    assert!(!errors[0].2.contains("timed out"), "read as empty, not waited on: {errors:?}");
    // No wait for a writer: far below the 60 s item timeout.
    assert!(wall < Duration::from_secs(30), "took {wall:?}\n{stderr}");
}

#[test]
fn hung_inputs_time_out_and_free_their_threads() {
    let dir = tempfile::tempdir().unwrap();
    let mut csv = String::from("id,path\n");
    // Held open read-write (Linux never blocks on that), so a reader finds a writer and waits.
    // Ids sort the hung inputs first, so that they reach the pool before the good ones.
    let mut writers = Vec::new();
    for i in 0..4 {
        let fifo = dir.path().join(format!("hung{i}.mp4"));
        let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
        assert!(made.success());
        writers.push(std::fs::OpenOptions::new().read(true).write(true).open(&fifo).unwrap());
        csv.push_str(&format!("a-hung{i},{}\n", fifo.display()));
    }
    let videos: Vec<_> = std::fs::read_dir(common::videos()).unwrap().map(|e| e.unwrap().path()).collect();
    for i in 0..20 {
        csv.push_str(&format!("b-good{i:02},{}\n", videos[i % videos.len()].display()));
    }
    std::fs::write(dir.path().join("listing.csv"), csv).unwrap();
    let job = probe_listing_job(dir.path(), "2s");
    let t0 = std::time::Instant::now();
    let out = common::mugflow(&["run", job.to_str().unwrap(), "--progress", "none"])
        .env("RAYON_NUM_THREADS", "2")
        .output()
        .unwrap();
    let wall = t0.elapsed();
    println!("4 hung + 20 good inputs, 2 threads, item_timeout 2s: {:.1} s", wall.as_secs_f64());
    drop(writers);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut written = common::written_ids(&dir.path().join("out"));
    written.sort();
    assert_eq!(written, (0..20).map(|i| format!("b-good{i:02}")).collect::<Vec<_>>(), "{stderr}");
    let errors = common::error_rows(&dir.path().join("out"));
    assert_eq!(errors.iter().map(|e| e.0.as_str()).collect::<Vec<_>>(), ["a-hung0", "a-hung1", "a-hung2", "a-hung3"]);
    assert!(errors.iter().all(|e| e.2.contains("timed out after 2s")), "{errors:?}");
    // Two rounds of two timeouts plus the good items; a pool held by hung reads would instead
    // time out every item (2 s each, 2 at a time: over 24 s).
    assert!(wall < Duration::from_secs(20), "took {wall:?}\n{stderr}");
}

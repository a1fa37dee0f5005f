//! `--gpus`: one worker process per GPU on this machine, each a copy of the same command with its
//! own `--rank`/`--world` (static sharding: disjoint shards) and only its GPU visible.

use std::process::Command;

/// The GPUs named by `--gpus`: "all" (every GPU of `CUDA_VISIBLE_DEVICES`, else of
/// `nvidia-smi`), or a comma-separated list of GPU numbers (a number twice runs two workers on
/// that GPU).
pub fn parse(spec: &str) -> anyhow::Result<Vec<String>> {
    if spec != "all" {
        let gpus: Vec<String> = spec.split(',').map(|s| s.trim().to_string()).collect();
        if let Some(bad) = gpus.iter().find(|g| g.parse::<u32>().is_err()) {
            anyhow::bail!("--gpus: `{bad}` is not a GPU number; write `all` or a list like `0,1,2`");
        }
        return Ok(gpus);
    }
    if let Ok(visible) = std::env::var("CUDA_VISIBLE_DEVICES") {
        let gpus: Vec<String> = visible.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
        if !gpus.is_empty() {
            return Ok(gpus);
        }
    }
    let listed = Command::new("nvidia-smi").args(["--query-gpu=index", "--format=csv,noheader"]).output();
    let gpus: Vec<String> = match listed {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(String::from)
            .collect(),
        _ => Vec::new(),
    };
    if gpus.is_empty() {
        anyhow::bail!("--gpus all: no GPU found (nvidia-smi lists none); run without --gpus to use the CPU");
    }
    Ok(gpus)
}

extern "C" {
    /// POSIX kill(2): forwards a signal to a worker process.
    fn kill(pid: i32, sig: i32) -> i32;
}

/// Signals a scheduler sends to stop a job (Ctrl-C, Slurm's preemption and `--signal`, Kubernetes'
/// termination), with the names the interruption error reports.
const FORWARDED: [(i32, &str); 3] = [(2, "Ctrl-C"), (15, "SIGTERM"), (10, "SIGUSR1")];

/// Forward SIGINT, SIGTERM and SIGUSR1 received by this process to every worker; returns the
/// last signal received (0: none) as the workers wind down.
fn forward_signals(pids: Vec<i32>) -> anyhow::Result<std::sync::Arc<std::sync::atomic::AtomicI32>> {
    use tokio::signal::unix::{signal, SignalKind};
    let got = std::sync::Arc::new(std::sync::atomic::AtomicI32::new(0));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut streams = Vec::new();
    for (sig, _) in FORWARDED {
        // Registered before the thread starts, so no signal between here and there is lost.
        streams.push((sig, rt.block_on(async { signal(SignalKind::from_raw(sig)) })?));
    }
    let seen = got.clone();
    let [(a, mut sa), (b, mut sb), (c, mut sc)]: [_; 3] = streams.try_into().expect("three signals");
    std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                let sig = tokio::select! {
                    _ = sa.recv() => a,
                    _ = sb.recv() => b,
                    _ = sc.recv() => c,
                };
                seen.store(sig, std::sync::atomic::Ordering::SeqCst);
                for pid in &pids {
                    // SAFETY: kill(2) with the pid of a child of ours; one that exited is harmless.
                    unsafe { kill(*pid, sig) };
                }
            }
        });
    });
    Ok(got)
}

/// A `--gpus` worker that did not succeed; the parent exits with the worker's own exit code
/// (1 failed, 2 invalid manifest, 130/143 interrupted; 128 + N when signal N killed it), so a
/// scheduler sees what the worker saw.
#[derive(Debug)]
pub struct WorkerFailed {
    /// The worker's rank.
    pub rank: usize,
    /// The GPU it ran on.
    pub gpu: String,
    /// Its exit code.
    pub code: u8,
}

impl std::fmt::Display for WorkerFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "worker {} (GPU {}) exited with code {}; run the same command again to resume",
            self.rank, self.gpu, self.code
        )
    }
}

impl std::error::Error for WorkerFailed {}

/// The exit code of a finished worker, shells' way: its own code, else 128 + the signal that
/// killed it.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => 128u8.saturating_add(sig as u8),
        (None, None) => 1,
    }
}

/// Run `args` (this binary's command line without `--gpus`) once per GPU, in parallel, with
/// `--rank i --world n` appended, `CUDA_VISIBLE_DEVICES` set to that GPU and `MUGFLOW_DEVICE=cuda`
/// (which the bundled manifests read); fails with the first failing worker's exit code
/// ([`WorkerFailed`]). A stop signal (Ctrl-C, SIGTERM, SIGUSR1) is passed on to every worker;
/// once they have stopped, the parent exits as an interrupted run does (130, 143).
pub fn per_gpu(gpus: &[String], args: &[String]) -> anyhow::Result<()> {
    let exe = std::env::current_exe()?;
    let world = gpus.len();
    eprintln!("starting {world} worker(s), one per GPU: {}", gpus.join(", "));
    let mut children = Vec::new();
    for (rank, gpu) in gpus.iter().enumerate() {
        let child = Command::new(&exe)
            .args(args)
            .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
            .env("CUDA_VISIBLE_DEVICES", gpu)
            .env("MUGFLOW_DEVICE", "cuda")
            .spawn()?;
        children.push((rank, gpu, child));
    }
    let signalled = forward_signals(children.iter().map(|(_, _, c)| c.id() as i32).collect())?;
    let mut failed = None;
    for (rank, gpu, mut child) in children {
        let status = child.wait()?;
        if !status.success() && failed.is_none() {
            failed = Some(WorkerFailed { rank, gpu: gpu.clone(), code: exit_code(status) });
        }
    }
    let sig = signalled.load(std::sync::atomic::Ordering::SeqCst);
    let interrupted = FORWARDED.iter().find(|(s, _)| *s == sig).map(|(_, name)| *name);
    match (failed, interrupted) {
        (None, _) => Ok(()),
        // The workers stopped on the forwarded signal: report it as this process's interruption.
        (Some(f), Some(name)) if matches!(f.code, 130 | 143) => {
            Err(pipeline::PipelineError::Interrupted(name, 0).into())
        }
        (Some(f), _) => Err(f.into()),
    }
}

/// This process's command line without `--gpus X` / `--gpus=X`, and the progress mode forced to
/// plain lines (several workers cannot share one terminal's bars).
pub fn child_args() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--gpus" || a == "--progress" {
            args.next();
        } else if !a.starts_with("--gpus=") && !a.starts_with("--progress=") {
            out.push(a);
        }
    }
    out.extend(["--progress".to_string(), "plain".to_string()]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_are_gpu_numbers() {
        assert_eq!(parse("0,1, 3").unwrap(), ["0", "1", "3"]);
        assert_eq!(parse("0,0").unwrap(), ["0", "0"]);
        assert!(parse("0,x").unwrap_err().to_string().contains("`x` is not a GPU number"));
    }
}

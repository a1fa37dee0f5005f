//! `mugflow run`: execute a manifest with progress, signal handling and a final summary.

use std::sync::Arc;

use pipeline::cluster::Cluster;

use super::{gpus, load_plan, progress, runtime, ManifestArgs, ProgressMode, WorkerArgs};

/// Run this worker's shards of the manifest to completion, resuming from the output's journal;
/// with `--gpus`, one worker process per GPU.
pub fn run(args: &ManifestArgs, worker: &WorkerArgs, mode: ProgressMode) -> anyhow::Result<()> {
    if let Some(spec) = &worker.gpus {
        return gpus::per_gpu(&gpus::parse(spec)?, &gpus::child_args());
    }
    let registry = stages::registry();
    let plan = load_plan(args, &registry)?;
    execute(&plan, &registry, worker, mode)
}

/// Run this worker's part of a validated plan with progress and signal handling.
pub fn execute(
    plan: &pipeline::Plan,
    registry: &pipeline::Registry,
    worker: &WorkerArgs,
    mode: ProgressMode,
) -> anyhow::Result<()> {
    let cluster = Cluster::detect(worker.rank, worker.world, &|k| std::env::var(k).ok())?;
    let reporter: Arc<dyn pipeline::report::Reporter> = progress::reporter(mode);
    let rt = runtime()?;
    let report =
        rt.block_on(pipeline::run(plan, registry, pipeline::RunOptions { reporter, cluster, stop: stop_signal() }))?;
    super::report::after_run(&rt, &report);
    Ok(())
}

/// Completes with the name of the first stop request: Ctrl-C (SIGINT), SIGTERM (Slurm
/// preemption, `scancel`, Kubernetes) or SIGUSR1 (Slurm's `--signal=B:USR1@<seconds>` warning).
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut usr1)) = (signal(SignalKind::terminate()), signal(SignalKind::user_defined1())) else {
        // Without these handlers, Ctrl-C still works.
        let _ = tokio::signal::ctrl_c().await;
        return "Ctrl-C";
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
        _ = usr1.recv() => "SIGUSR1",
    }
}

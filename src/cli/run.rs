//! `mugflow run`: execute a manifest with progress, Ctrl-C/SIGTERM handling and a final summary.

use std::sync::Arc;

use super::{load_plan, progress, runtime, ManifestArgs, ProgressMode};

/// Run the manifest to completion, resuming from the output's journal.
pub fn run(args: &ManifestArgs, mode: ProgressMode) -> anyhow::Result<()> {
    let registry = stages::registry();
    let plan = load_plan(args, &registry)?;
    let reporter: Arc<dyn pipeline::report::Reporter> = progress::reporter(mode);
    let rt = runtime()?;
    rt.block_on(pipeline::run(&plan, &registry, pipeline::RunOptions { reporter, stop: stop_signal() }))?;
    Ok(())
}

/// Completes with the name of the first Ctrl-C (SIGINT) or SIGTERM received.
async fn stop_signal() -> &'static str {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            // Without a SIGTERM handler, Ctrl-C still works.
            let _ = tokio::signal::ctrl_c().await;
            return "Ctrl-C";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = term.recv() => "SIGTERM",
    }
}

//! The GPU benchmarks of `mugflow bench gpu` as a models-only program: it needs no FFmpeg, so it
//! runs on GPU machines that lack it (scripts/build-cuda.sh packs it, scripts/gpu-check.sh runs
//! it). Same arguments, same code (`models::bench`).
//!
//!   cargo run --release --features cuda --example gpu_bench -- --steps 2
//!   gpu_bench --preset tiny --device cpu --dtype f32 --height 48 --width 64 --frames 17
//!   gpu_bench --bench dit --iters 2

use std::error::Error;
use std::process::ExitCode;

use clap::Parser;
use models::bench::{gpu_bench, GpuBenchArgs};

/// MUG-V image-to-video on random weights, timed.
#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: GpuBenchArgs,
}

fn main() -> ExitCode {
    let Err(e) = gpu_bench(&Cli::parse().args) else { return ExitCode::SUCCESS };
    eprintln!("error: {e}");
    let mut cause = e.source();
    while let Some(c) = cause {
        eprintln!("  caused by: {c}");
        cause = c.source();
    }
    ExitCode::FAILURE
}

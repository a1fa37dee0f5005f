//! Command-line interface: argument parsing, error rendering and exit codes.

mod bench;
mod generate;
mod gpus;
mod inspect;
mod model_sets;
mod progress;
mod report;
mod run;
mod scenes;
mod stages;
mod validate;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// Prepare training data for video generation models and run catalog-scale video generation.
///
/// A manifest (TOML) names the inputs, the output and a chain of stages; `mugflow run` executes
/// it streaming, shard by shard, and resumes where it stopped when run again.
#[derive(Parser)]
#[command(name = "mugflow", version, about, long_about = None, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a manifest: process every uncommitted shard and write the dataset.
    Run {
        #[command(flatten)]
        manifest: ManifestArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        /// How to show progress: bars on a terminal, plain lines for logs, or nothing.
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
    },
    /// Check a manifest and print the resolved plan (parameters, defaults, fields, inputs).
    Validate {
        #[command(flatten)]
        manifest: ManifestArgs,
        /// Do not list the inputs (skip reading the input location).
        #[arg(long)]
        offline: bool,
        /// Show which shards each of N workers takes (static sharding: shard k -> rank k mod N).
        #[arg(long, value_name = "N")]
        world: Option<usize>,
    },
    /// List every stage with its parameters, types, defaults and docs.
    Stages {
        /// Show only this stage.
        kind: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value_t = stages::Format::Text)]
        format: stages::Format,
    },
    /// Detect the shots of one video and print one row per scene (0-based start frame,
    /// exclusive end frame, times in seconds): the `scene_split` stage's code on a single file.
    Scenes {
        /// A local video file.
        video: PathBuf,
        /// Shot detector.
        #[arg(long, value_enum, default_value_t = scenes::DetectorArg::Content)]
        detector: scenes::DetectorArg,
        /// Cut threshold (content: HSV change 0-255, default 27; adaptive: ratio, default 3).
        #[arg(long)]
        threshold: Option<f64>,
        /// Shortest shot, e.g. "0.6s" or "500ms".
        #[arg(long, default_value = "0.6s")]
        min_scene_len: String,
        /// Output format.
        #[arg(long, value_enum, default_value_t = scenes::Format::Csv)]
        format: scenes::Format,
    },
    /// Measure throughput; results belong in docs/PERFORMANCE.md.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Summarise a dataset (its latest version and the list of versions), a shard table or a
    /// tensor file: rows, fields, tensors, errors.
    Inspect {
        /// Dataset directory or URL, or a `.parquet` / `.safetensors` file.
        path: String,
        /// Show which input items were added, removed and changed between two versions.
        #[arg(long, num_args = 2, value_names = ["A", "B"])]
        diff: Option<Vec<u64>>,
    },
    /// Write one self-contained HTML page about a dataset version: the stage funnel and why
    /// items were dropped, histograms, a contact sheet of kept clips, a card per generated video,
    /// the errors grouped by cause. `run` and `generate` write it to <output>/report.html.
    // `--version` picks the dataset version here, not mugflow's.
    #[command(disable_version_flag = true)]
    Report {
        /// Dataset directory or URL.
        output: String,
        /// The version (default: the latest).
        #[arg(long, value_name = "N")]
        version: Option<u64>,
        /// Where to write the page (default: report.html in the output, or report-vN.html with
        /// --version).
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Delete old versions of a dataset and the files no kept version names (files a killed
    /// or losing run attempt left included).
    Vacuum {
        /// Dataset directory or URL.
        output: String,
        /// Versions to keep (the newest ones).
        #[arg(long, default_value_t = 1)]
        keep: usize,
        /// Only delete files at least this old, so a run writing right now is never touched.
        #[arg(long, default_value = "1h")]
        older_than: String,
        /// Print what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fix what stops a run: damaged lease, journal and version files are moved aside to
    /// `_quarantine/` (never deleted; a damaged journal entry's shard is redone), staging files
    /// and multipart uploads of dead writers are deleted or aborted. Valid committed files are
    /// never touched.
    Repair {
        /// Dataset directory or URL.
        output: String,
        /// Print what would be fixed, change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Generate one MP4 per row of a product catalog (id, image, prompt; optional seed, aspect,
    /// length) with MUG-V image-to-video, using the bundled manifests/catalog-generate.toml.
    Generate {
        #[command(flatten)]
        args: generate::GenerateArgs,
        #[command(flatten)]
        worker: WorkerArgs,
        /// How to show progress: bars on a terminal, plain lines for logs, or nothing.
        #[arg(long, value_enum, default_value_t = ProgressMode::Auto)]
        progress: ProgressMode,
    },
    /// Model checkpoints.
    #[command(subcommand)]
    Models(model_sets::ModelsCommand),
}

/// The benchmarks.
#[derive(Subcommand)]
enum BenchCommand {
    /// Frames/s and frames per CPU-second of decoding alone and of decoding + shot detection,
    /// per video and for all videos in parallel, next to PySceneDetect's ContentDetector.
    Scenes {
        /// Local video files.
        #[arg(required = true)]
        videos: Vec<PathBuf>,
        /// A Python with `scenedetect` and `opencv-python-headless` installed, to run PySceneDetect on the same files.
        #[arg(long)]
        pyscenedetect: Option<PathBuf>,
    },
    /// MUG-V on this machine's GPU with random weights (no checkpoint files): end-to-end
    /// image-to-video generation, or with `--bench` one part (dit, attention, vae-encode,
    /// vae-decode, wan-vae-encode, wan-vae-decode, t5, umt5, aesthetic, enhance) at MUG-V's 720p x
    /// 105-frame sizes, printing the rows of docs/PERFORMANCE.md. Needs a CUDA build (`--features
    /// cuda`); `--preset tiny --device cpu --dtype f32` smoke-tests it anywhere.
    Gpu(models::bench::GpuBenchArgs),
}

/// Arguments shared by commands that read a manifest.
#[derive(clap::Args)]
struct ManifestArgs {
    /// The manifest file (TOML).
    manifest: PathBuf,
    /// Override a value: `stage.<position|name|kind>.<key>=<value>` or `job.<key>=<value>`.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Which part of a distributed job this process takes; by default read from the launcher's
/// environment (Slurm, Kubernetes indexed Jobs, torchrun variables).
#[derive(clap::Args)]
struct WorkerArgs {
    /// This worker's 0-based rank (with --world).
    #[arg(long)]
    rank: Option<usize>,
    /// Number of workers (with --rank; or the completions of a Kubernetes indexed Job).
    #[arg(long)]
    world: Option<usize>,
    /// One worker process per GPU of this machine over disjoint shards: `all`, or GPU numbers
    /// like `0,1` (a number twice puts two workers on that GPU).
    #[arg(long, value_name = "all|0,1,...", conflicts_with_all = ["rank", "world"])]
    gpus: Option<String>,
}

/// Progress display modes.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    /// Bars when stderr is a terminal, plain lines otherwise.
    Auto,
    /// indicatif bars per stage.
    Bars,
    /// A status line every few seconds.
    Plain,
    /// Nothing but the final summary.
    None,
}

/// Exit code for an invalid manifest or usage.
const EXIT_USAGE: u8 = 2;
/// Exit code after Ctrl-C (128 + SIGINT), as shells expect.
const EXIT_INTERRUPTED: u8 = 130;
/// Exit code after SIGTERM or SIGUSR1 (128 + SIGTERM): preemption; a requeued task resumes.
const EXIT_TERMINATED: u8 = 143;

/// Parse arguments, run the command, render errors.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run { manifest, worker, progress } => run::run(&manifest, &worker, progress),
        Command::Validate { manifest, offline, world } => validate::validate(&manifest, offline, world),
        Command::Stages { kind, format } => stages::stages(kind.as_deref(), format),
        Command::Inspect { path, diff } => match diff.as_deref() {
            Some([a, b]) => inspect::diff(&path, *a, *b),
            _ => inspect::inspect(&path),
        },
        Command::Report { output, version, out } => report::report(&output, version, out.as_deref()),
        Command::Vacuum { output, keep, older_than, dry_run } => inspect::vacuum(&output, keep, &older_than, dry_run),
        Command::Repair { output, dry_run } => inspect::repair(&output, dry_run),
        Command::Generate { args, worker, progress } => generate::generate(&args, &worker, progress),
        Command::Models(command) => model_sets::models(command),
        Command::Bench(BenchCommand::Scenes { videos, pyscenedetect }) => {
            bench::scenes(&videos, pyscenedetect.as_deref())
        }
        Command::Bench(BenchCommand::Gpu(args)) => models::bench::gpu_bench(&args).map_err(Into::into),
        Command::Scenes { video, detector, threshold, min_scene_len, format } => {
            scenes::scenes(&video, detector, threshold, &min_scene_len, format)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            render_error(&e);
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &anyhow::Error) -> u8 {
    if let Some(worker) = e.downcast_ref::<gpus::WorkerFailed>() {
        return worker.code;
    }
    match e.downcast_ref::<pipeline::PipelineError>() {
        Some(pipeline::PipelineError::Manifest(_)) => EXIT_USAGE,
        Some(pipeline::PipelineError::Interrupted("Ctrl-C", _)) => EXIT_INTERRUPTED,
        Some(pipeline::PipelineError::Interrupted(..)) => EXIT_TERMINATED,
        _ => 1,
    }
}

/// uv-style: `error:` line, `Caused by:` chain, then a `hint:`. Manifest diagnostics render themselves.
fn render_error(e: &anyhow::Error) {
    if let Some(pipeline::PipelineError::Manifest(d)) = e.downcast_ref::<pipeline::PipelineError>() {
        eprintln!("{d}");
        return;
    }
    eprintln!("error: {e}");
    let causes: Vec<String> = e.chain().skip(1).map(ToString::to_string).collect();
    if !causes.is_empty() {
        eprintln!("\nCaused by:");
        for c in causes {
            eprintln!("  {c}");
        }
    }
    if let Some(hint) = e.downcast_ref::<pipeline::PipelineError>().and_then(pipeline::PipelineError::hint) {
        eprintln!("\nhint: {hint}");
    }
}

/// A multi-threaded tokio runtime for commands that do I/O.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Load and validate a manifest into a plan.
fn load_plan(args: &ManifestArgs, registry: &pipeline::Registry) -> Result<pipeline::Plan, pipeline::PipelineError> {
    let m = pipeline::manifest::Manifest::load(&args.manifest, &args.set)?;
    Ok(pipeline::Plan::from_manifest(&m, registry)?)
}

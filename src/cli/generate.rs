//! `mugflow generate`: the bundled catalog-generation manifest with its inputs, output and model
//! folder given as flags, for the common case of one catalog and one output folder.

use std::path::{Path, PathBuf};

use models::tiny;

use super::{gpus, run::execute, ProgressMode, WorkerArgs};

/// The bundled manifest (also in the repository as manifests/catalog-generate.toml).
const MANIFEST: &str = include_str!("../../manifests/catalog-generate.toml");

/// What to generate and where.
#[derive(clap::Args)]
pub struct GenerateArgs {
    /// The catalog: a CSV or Parquet table with columns id, image, prompt (and optional seed,
    /// aspect, length); image paths are relative to the catalog's folder.
    #[arg(long)]
    catalog: String,
    /// Output folder or URL: videos/<id>.mp4, the results table and the error table.
    #[arg(long)]
    out: String,
    /// Folder with MUG-V-inference/{dit.pt,vae.pt} and t5-v1_1-xxl/ (with tokenizer.json); with
    /// --enhance also MUG-V-inference/enhancer/ and Wan2.1-T2V-1.3B/.
    #[arg(long, default_value = "checkpoints")]
    models: PathBuf,
    /// Device of the DiT and the VAE without --gpus: "cuda", "cuda:N" or "cpu" (f32, slow).
    #[arg(long, default_value = "cuda")]
    device: String,
    /// Also run MUG-V's WAN-2.1 enhancer on every video (needs MUG-V-inference/enhancer/ and
    /// Wan2.1-T2V-1.3B/ in --models; see the manifest).
    #[arg(long)]
    enhance: bool,
    /// Use the tiny random checkpoints `mugflow models init-tiny` wrote into --models (e.g.
    /// `--models checkpoints/tiny`) at 64x48 and 17 frames: tries the whole chain on any machine in
    /// seconds; the videos are noise.
    #[arg(long)]
    tiny: bool,
    /// Override a manifest value, e.g. `stage.i2v_generate.steps=50` (see `mugflow validate`).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
}

/// Run the catalog manifest (one worker per GPU with `--gpus`).
pub fn generate(args: &GenerateArgs, worker: &WorkerArgs, mode: ProgressMode) -> anyhow::Result<()> {
    if let Some(spec) = &worker.gpus {
        return gpus::per_gpu(&gpus::parse(spec)?, &gpus::child_args());
    }
    // Workers started by --gpus get MUGFLOW_DEVICE=cuda with their one GPU visible.
    let device = std::env::var("MUGFLOW_DEVICE").unwrap_or_else(|_| args.device.clone());
    let dtype = if device == "cpu" { "f32" } else { "bf16" };
    let models = args.models.display().to_string();
    let env = |k: &str| match k {
        "MUGFLOW_CATALOG" => Some(args.catalog.clone()),
        "MUGFLOW_OUT" => Some(args.out.clone()),
        "MUGFLOW_MODELS" => Some(models.clone()),
        "MUGFLOW_DEVICE" => Some(device.clone()),
        "MUGFLOW_DTYPE" => Some(dtype.to_string()),
        "MUGFLOW_ENHANCE" if args.enhance => Some("true".to_string()),
        _ => std::env::var(k).ok(),
    };
    let mut sets = if args.tiny { tiny_sets(&models) } else { Vec::new() };
    sets.extend(args.set.iter().cloned());
    let manifest = pipeline::manifest::Manifest::from_text(
        Path::new("catalog-generate.toml (built in)"),
        MANIFEST.to_string(),
        &sets,
        &env,
    )
    .map_err(pipeline::PipelineError::from)?;
    let registry = stages::registry();
    let plan = pipeline::Plan::from_manifest(&manifest, &registry).map_err(pipeline::PipelineError::from)?;
    execute(&plan, &registry, worker, mode)
}

/// Manifest overrides for `--tiny`: the layout `mugflow models init-tiny` writes in `m`, tiny
/// presets, small frames and 2 sampling steps (user `--set`s come after and win).
fn tiny_sets(m: &str) -> Vec<String> {
    let mut sets: Vec<String> = [
        "stage.load_image.size=64x48",
        "stage.load_image.frames=17",
        "stage.i2v_generate.preset=tiny",
        "stage.i2v_generate.steps=2",
        "stage.vae_decode.preset=tiny",
        "stage.enhance.preset=tiny",
    ]
    .map(String::from)
    .to_vec();
    for (key, file) in [
        ("i2v_generate.dit", tiny::DIT),
        ("i2v_generate.vae", tiny::VAE),
        ("i2v_generate.t5", tiny::T5),
        ("i2v_generate.tokenizer", tiny::T5_TOKENIZER),
        ("vae_decode.checkpoint", tiny::VAE),
        ("enhance.dit", tiny::ENHANCER_DIT),
        ("enhance.lora", tiny::ENHANCER_LORA),
        ("enhance.vae", tiny::ENHANCER_VAE),
        ("enhance.umt5", tiny::ENHANCER_UMT5),
        ("enhance.tokenizer", tiny::T5_TOKENIZER),
    ] {
        sets.push(format!("stage.{key}={m}/{file}"));
    }
    sets
}

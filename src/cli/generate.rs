//! `mugflow generate`: the bundled catalog-generation manifest with its inputs, output and model
//! folder given as flags, for the common case of one catalog and one output folder.

use std::path::{Path, PathBuf};

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
    let manifest = pipeline::manifest::Manifest::from_text(
        Path::new("catalog-generate.toml (built in)"),
        MANIFEST.to_string(),
        &args.set,
        &env,
    )?;
    let registry = stages::registry();
    let plan = pipeline::Plan::from_manifest(&manifest, &registry)?;
    execute(&plan, &registry, worker, mode)
}

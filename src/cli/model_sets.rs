//! `mugflow models`: random-weight checkpoint sets with the real key names, so that manifests run
//! without downloading the released weights.

use std::path::{Path, PathBuf};
use std::time::Instant;

use clap::{Subcommand, ValueEnum};
use models::checkpoint_files::Fill;
use models::presets::{init_random, Part, Preset};

/// Checkpoint helpers.
#[derive(Subcommand)]
pub enum ModelsCommand {
    /// Write tiny random-weight checkpoints with the real key names (VideoVAE, T5 + tokenizer,
    /// CLIP, aesthetic head, MUG-DiT, the enhancer's models) for the demo and plumbing tests: the
    /// same as `init-random DIR --preset tiny`. Their outputs mean nothing.
    InitTiny {
        /// Folder to write them into.
        #[arg(default_value = "checkpoints/tiny")]
        dir: PathBuf,
    },
    /// Write random weights with the real key names: at the released sizes, file layout,
    /// formats and dtypes (`--preset real`, 62.5 GB for all models; the bundled manifests run
    /// against them with MUGFLOW_MODELS=DIR), or at the tiny test sizes. For benchmarks and
    /// end-to-end runs without downloads; the outputs mean nothing.
    InitRandom {
        /// Folder to write them into (real: MUG-V-inference/, Wan2.1-T2V-1.3B/, t5-v1_1-xxl/, ...).
        dir: PathBuf,
        /// Model sizes.
        #[arg(long, value_enum, default_value_t = PresetArg::Real)]
        preset: PresetArg,
        /// Only these models, comma-separated: dit, vae, t5, clip, aesthetic, enhancer-dit,
        /// enhancer-lora, enhancer-vae, umt5 (all by default).
        #[arg(long, value_delimiter = ',')]
        models: Vec<Part>,
        /// Seed of the random values (the same seed writes the same bytes).
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// `--preset`.
#[derive(Clone, Copy, ValueEnum)]
pub enum PresetArg {
    /// The released sizes (MUG-DiT-10B, T5-XXL, ...).
    Real,
    /// The tiny test sizes.
    Tiny,
}

/// Run a `mugflow models` command.
pub fn models(command: ModelsCommand) -> anyhow::Result<()> {
    match command {
        ModelsCommand::InitTiny { dir } => write_set(&dir, Preset::Tiny, &Part::ALL, 0),
        ModelsCommand::InitRandom { dir, preset, models, seed } => {
            let preset = match preset {
                PresetArg::Real => Preset::Real,
                PresetArg::Tiny => Preset::Tiny,
            };
            let parts = if models.is_empty() { Part::ALL.to_vec() } else { models };
            write_set(&dir, preset, &parts, seed)
        }
    }
}

/// Write the set, printing each file as it is done and the write speed at the end.
fn write_set(dir: &Path, preset: Preset, parts: &[Part], seed: u64) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut total = 0u64;
    init_random(dir, preset, parts, Fill::Random { seed }, |path| {
        let bytes = file_size(path);
        total += bytes;
        println!("wrote {} ({:.2} GB)", path.display(), bytes as f64 / 1e9);
    })?;
    let seconds = start.elapsed().as_secs_f64();
    println!("{:.2} GB in {seconds:.1} s ({:.2} GB/s)", total as f64 / 1e9, total as f64 / 1e9 / seconds.max(1e-9));
    match preset {
        Preset::Tiny => println!("tiny random weights, for plumbing only: manifests use them with preset = \"tiny\""),
        Preset::Real => println!(
            "real-size random weights: manifests with preset = \"real\" run against them (MUGFLOW_MODELS={}); \
             their outputs mean nothing",
            dir.display()
        ),
    }
    Ok(())
}

/// The size of a written file (0 if it cannot be read back).
fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

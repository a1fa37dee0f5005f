//! The GPU benchmarks of MUG-V image-to-video, behind `mugflow bench gpu` and the `gpu_bench`
//! example (one function, the same arguments): random weights made on the device (no checkpoint
//! files), then T5, sampling and chunked VAE decoding, each timed, with the peak GPU memory
//! nvidia-smi reports; the decoded video is written as raw `.y4m` (any player or `ffmpeg -i`
//! reads it). The example exists because it needs no FFmpeg, so it runs on GPU machines that
//! lack it.
//!
//! Besides end-to-end generation (the default), `--bench` times one part at the sizes of
//! docs/PERFORMANCE.md: `dit` (MUG-DiT-10B forward, 720p x 105 frames, CFG batch 2), `attention`
//! (one self-attention layer at that size, fused kernel), `vae-encode` / `vae-decode` (the
//! VideoVAE on a `--frames` 1280x720 clip, 105 by default), `wan-vae-encode` / `wan-vae-decode`
//! (the Wan VAE likewise), `t5` / `umt5` (T5-XXL / UMT5-XXL over 64 x 300 tokens), `aesthetic`
//! (CLIP ViT-L/14 and the LAION head on `--frames` 224x224 images in one call, in frames/s: the
//! model side of the aesthetic stage), `enhance` (the WAN enhancer on one such video), with TFLOP/s
//! where the count is well defined.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor};

use crate::aesthetic::{AestheticConfig, AestheticMlp, AestheticScorer};
use crate::clip::ClipVision;
use crate::enhancer::WanEnhancer;
use crate::i2v::{decode_video, generate, I2vModels, I2vPlacement, I2vSettings, Video};
use crate::mugdit::{DitInput, MugDit, MugDitConfig};
use crate::mugvae::{MugVae, MugVaeConfig};
use crate::presets::Preset;
use crate::random::{model_keys, random_checkpoint};
use crate::rflow::ShiftPrecision;
use crate::t5::{T5Config, T5Encoder, T5Tokenizer};
use crate::umt5::{Umt5Config, Umt5Encoder};
use crate::wan_dit::{WanDit, WanDitConfig};
use crate::wan_flow::Enhancer;
use crate::wan_vae::{WanVae, WanVaeConfig};
use crate::weights::{Checkpoint, WeightsError};

/// MUG-V image-to-video on random weights, timed (the arguments of `mugflow bench gpu` and of
/// the `gpu_bench` example).
#[derive(Debug, Clone, clap::Args)]
pub struct GpuBenchArgs {
    /// "real" (MUG-DiT-10B, VideoVAE, T5-XXL) or "tiny".
    #[arg(long, default_value = "real")]
    pub preset: String,
    /// Frame height (MUG-V 16:9 is 1280 high, 720 wide).
    #[arg(long, default_value_t = 1280)]
    pub height: usize,
    /// Frame width.
    #[arg(long, default_value_t = 720)]
    pub width: usize,
    /// Frames (MUG-V: 73 or 105).
    #[arg(long, default_value_t = 105)]
    pub frames: usize,
    /// Sampling steps (MUG-V: 25).
    #[arg(long, default_value_t = 2)]
    pub steps: usize,
    /// Device of the DiT and the VAE: "cuda", "cuda:N" or "cpu" (with --dtype f32, for smoke
    /// tests at the tiny preset).
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// Their precision: "bf16" or "f32".
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Device of T5 (f32): "cpu" keeps its 19 GB off the GPU.
    #[arg(long, default_value = "cpu")]
    pub t5_device: String,
    /// The T5 tokenizer (default: the T5 vocabulary built into mugflow).
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// Folder for the decoded video (`bench.y4m`).
    #[arg(long, default_value = "out/gpu-bench")]
    pub out: PathBuf,
    /// Time one part instead of generating: dit, attention, vae-encode, vae-decode,
    /// wan-vae-encode, wan-vae-decode, t5, umt5, aesthetic or enhance.
    #[arg(long)]
    pub bench: Option<String>,
    /// Timed runs of `--bench` (after one warm-up run).
    #[arg(long, default_value_t = 3)]
    pub iters: usize,
}

/// Why a benchmark could not run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A CUDA device was asked of a build without CUDA.
    #[error(
        "`{0}` needs CUDA, which this build lacks: build with the `cuda` feature (`cargo build \
         --release --features cuda`, see scripts/build-cuda.sh), or smoke-test on the CPU with \
         `--preset tiny --device cpu --dtype f32`"
    )]
    NoCuda(
        /// The argument that asked for it (`--device cuda`).
        String,
    ),
    /// An argument has a value the benchmarks do not know.
    #[error("{0}")]
    Usage(String),
    /// A model could not be made or loaded.
    #[error(transparent)]
    Weights(#[from] WeightsError),
    /// A tensor operation failed (out of GPU memory, say).
    #[error(transparent)]
    Tensor(#[from] candle_core::Error),
    /// The decoded video could not be written.
    #[error("cannot write {}", path.display())]
    Write {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
}

/// Warm-up once, then the mean seconds of `iters` synchronised runs and the peak GPU memory.
fn time_runs(
    dev: &Device,
    iters: usize,
    mut f: impl FnMut() -> candle_core::Result<()>,
) -> Result<(f64, Peak), BenchError> {
    f()?;
    dev.synchronize()?;
    profiler(dev, true);
    let (r, peak) = with_peak_memory(dev, || -> candle_core::Result<f64> {
        let t = Instant::now();
        for _ in 0..iters {
            f()?;
        }
        dev.synchronize()?;
        Ok(t.elapsed().as_secs_f64() / iters as f64)
    });
    profiler(dev, false);
    Ok((r?, peak))
}

/// Starts or stops the CUDA profiler around the timed runs, so that `ncu --profile-from-start off`
/// sees them and not the warm-up (model making, cuDNN's algorithm search).
fn profiler(dev: &Device, on: bool) {
    #[cfg(feature = "cuda")]
    if dev.is_cuda() {
        use candle_core::cuda_backend::cudarc::driver::sys;
        // SAFETY: plain driver calls on the current context; a failure (no profiler attached)
        // changes nothing, so the result is ignored.
        let _ = unsafe {
            if on {
                sys::cuProfilerStart()
            } else {
                sys::cuProfilerStop()
            }
        };
    }
    let _ = (dev, on);
}

/// A standard-normal tensor made on `dev` in `dtype`.
fn randn(shape: &[usize], dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
    Tensor::randn(0f32, 1f32, shape, dev)?.to_dtype(dtype)
}

/// A model with random weights: its keys from a dry load, then a load of random tensors of those
/// shapes made on `make` and served on `device`.
fn random_model<T>(
    load: impl Fn(&Checkpoint) -> Result<T, WeightsError>,
    dtype: DType,
    make: &Device,
    device: &Device,
) -> Result<T, BenchError> {
    let keys = model_keys(&load)?;
    Ok(load(&random_checkpoint(&keys, dtype, make, device)?)?)
}

/// `--bench enhance`: MUG-V's enhancer on one 105-frame 1280x720 video with random bf16 weights
/// (Wan DiT 1.3B, Wan VAE; random text features stand in for UMT5's), through the stage's own
/// [`WanEnhancer`]: VAE encode, the one CFG step, chunked decode. One warm-up run (cuDNN's
/// algorithm searches and plans, once per shape and process, as a long-running stage pays them
/// once), then each part's mean over `iters` runs, synchronised at the part's end.
fn bench_enhance(p: &I2vPlacement, iters: usize) -> Result<(), BenchError> {
    const PARTS: [&str; 3] = ["vae encode", "dit", "vae decode"];
    let (dev, dtype) = (&p.device, p.dtype);
    let (dit_c, vae_c) = (WanDitConfig::wan_1_3b(), WanVaeConfig::wan21());
    let enhancer = WanEnhancer {
        dit: random_model(|k| WanDit::load(k, &dit_c, None), dtype, dev, dev)?,
        vae: random_model(|k| WanVae::load(k, &vae_c), dtype, dev, dev)?,
        sampler: Enhancer::mugv(),
        device: dev.clone(),
        dtype,
    };
    let video = Tensor::rand(-1f32, 1f32, (1, 3, 105, 720, 1280), dev)?.to_dtype(dtype)?;
    let (pos, neg) = (randn(&[60, dit_c.text_dim], dtype, dev)?, randn(&[40, dit_c.text_dim], dtype, dev)?);
    // One run, adding each part's seconds to `laps` (in PARTS order); the frames decoded.
    let run = |laps: &mut [f64; 3]| -> candle_core::Result<usize> {
        dev.synchronize()?;
        let frames = std::cell::Cell::new(0);
        let mut lap = Instant::now();
        let mut progress = |part: &str| {
            if let Some(k) = PARTS.iter().position(|p| *p == part) {
                dev.synchronize()?;
                laps[k] += lap.elapsed().as_secs_f64();
                lap = Instant::now();
            }
            Ok(()) // steps and chunks: the parts' times are enough
        };
        enhancer.enhance(&video, &pos, &neg, 42, &mut progress, &mut |chunk| {
            frames.set(frames.get() + chunk.dim(2)?);
            Ok(())
        })?;
        Ok(frames.get())
    };
    let mut warm = [0.0; 3];
    run(&mut warm)?;
    let iters = iters.max(1);
    let (r, peak) = with_peak_memory(dev, || -> candle_core::Result<([f64; 3], usize)> {
        let mut laps = [0.0; 3];
        let mut frames = 0;
        for _ in 0..iters {
            frames = run(&mut laps)?;
        }
        Ok((laps, frames))
    });
    let (laps, frames) = r?;
    let latent = [1, vae_c.z_dim, vae_c.latent_frames(105), 90, 160];
    let details = [format!("latent {latent:?}"), "(1 step x CFG 2)".into(), format!("({frames} frames)")];
    for ((part, secs), detail) in PARTS.iter().zip(laps).zip(details) {
        println!("enhance {part:<10} {:>8.2} s   {detail}", secs / iters as f64);
    }
    let (total, total_warm) = (laps.iter().sum::<f64>() / iters as f64, warm.iter().sum::<f64>());
    println!("enhance total      {total:>8.2} s   (mean of {iters} after a warm-up run of {total_warm:.2} s)");
    println!("enhance            {peak}");
    Ok(())
}

/// `--bench`: one part of the pipeline at MUG-V's 720p x 5 s sizes, on random weights.
fn bench(a: &GpuBenchArgs, what: &str, p: &I2vPlacement) -> Result<(), BenchError> {
    let (dev, dtype) = (&p.device, p.dtype);
    // 720p (1280 x 720), 105 frames: 14 x 90 x 160 latents, 50,400 tokens + start/end.
    let (t, h, w) = (14, 90, 160);
    let (secs, peak, flops) = match what {
        "dit" => {
            let c = MugDitConfig::mugv_10b();
            let dit = random_model(|k| MugDit::load(k, &c), dtype, dev, dev)?;
            let x = randn(&[2, c.in_channels, t, h, w], dtype, dev)?;
            let y = randn(&[2, 1, 300, c.text_dim], dtype, dev)?;
            let x_mask = vec![(0..t).map(|i| i > 0).collect::<Vec<_>>(); 2];
            let frames: Vec<usize> = (0..t + 2).collect();
            let input = DitInput {
                x: &x,
                timestep: &[500.0, 500.0],
                y: &y,
                text_lens: &[120, 40],
                x_mask: &x_mask,
                fps: 30.0,
                frame_indices: &frames,
            };
            let (secs, peak) = time_runs(dev, a.iters, || dit.forward(&input).map(|_| ()))?;
            let (n, d) = ((t * (h / 2) * (w / 2) + 2) as f64, c.hidden_size as f64);
            let per_block = 2.0 * 14.0 * d * d * n + 4.0 * n * n * d + 4.0 * n * 160.0 * d;
            (secs, peak, Some(2.0 * c.depth as f64 * per_block))
        }
        #[cfg(feature = "cuda")]
        "attention" => {
            let (n, heads, hd) = (t * (h / 2) * (w / 2) + 2, 48, 72);
            let q = randn(&[2, n, heads, hd], dtype, dev)?;
            let k = randn(&[2, n, heads, hd], dtype, dev)?;
            let v = randn(&[2, n, heads, hd], dtype, dev)?;
            let scale = 1.0 / (hd as f32).sqrt();
            let (secs, peak) =
                time_runs(dev, a.iters, || kernels::flash_attention(&q, &k, &v, None, scale).map(|_| ()))?;
            (secs, peak, Some(4.0 * 2.0 * heads as f64 * (n * n) as f64 * hd as f64))
        }
        "vae-encode" | "vae-decode" => {
            let c = MugVaeConfig::mugv();
            let vae = random_model(|k| MugVae::load(k, &c), dtype, dev, dev)?;
            let (secs, peak) = if what == "vae-encode" {
                let video = randn(&[1, 3, a.frames, 720, 1280], dtype, dev)?;
                time_runs(dev, a.iters, || vae.encode(&video, None).map(|_| ()))?
            } else {
                let (n, h, w) = c.latent_size(a.frames, 720, 1280);
                let z = randn(&[1, c.temporal.latent_channels, n, h, w], dtype, dev)?;
                time_runs(dev, a.iters, || vae.decode_chunks(&z, a.frames, &mut |_| Ok(())))?
            };
            (secs, peak, None)
        }
        "wan-vae-encode" | "wan-vae-decode" => {
            let c = WanVaeConfig::wan21();
            let vae = random_model(|k| WanVae::load(k, &c), dtype, dev, dev)?;
            let (secs, peak) = if what == "wan-vae-encode" {
                let video = Tensor::rand(-1f32, 1f32, (1, 3, a.frames, 720, 1280), dev)?.to_dtype(dtype)?;
                time_runs(dev, a.iters, || vae.encode(&video).map(|_| ()))?
            } else {
                let z = randn(&[1, c.z_dim, c.latent_frames(a.frames), 90, 160], dtype, dev)?;
                time_runs(dev, a.iters, || vae.decode_chunks(&z, &mut |_, _| {}, &mut |_| Ok(())))?
            };
            (secs, peak, None)
        }
        "t5" | "umt5" => {
            // 64 texts of 300 tokens (MUG-V's caption length), no padding, for both encoders.
            let ids: Vec<i64> = (0..64 * 300).map(|i| (i * 7919 + 13) % 32000).collect();
            let ids = Tensor::from_vec(ids, (64, 300), dev)?;
            let mask = Tensor::ones((64, 300), DType::I64, dev)?;
            let (secs, peak) = if what == "t5" {
                let t5 = random_model(|k| T5Encoder::load(k, &T5Config::xxl()), dtype, dev, dev)?;
                time_runs(dev, a.iters, || t5.forward(&ids, &mask).map(|_| ()))?
            } else {
                let umt5 = random_model(|k| Umt5Encoder::load(k, &Umt5Config::xxl()), dtype, dev, dev)?;
                time_runs(dev, a.iters, || umt5.forward(&ids, &mask).map(|_| ()))?
            };
            println!("{what:<18} {:.0} tokens/s", 64.0 * 300.0 / secs);
            (secs, peak, None)
        }
        "aesthetic" => {
            let c = AestheticConfig::vit_l_14();
            let scorer = AestheticScorer {
                clip: random_model(|k| ClipVision::load(k, &c.clip), dtype, dev, dev)?,
                mlp: random_model(|k| AestheticMlp::load(k, &c), dtype, dev, dev)?,
            };
            let size = c.clip.image_size;
            let images = randn(&[a.frames, 3, size, size], dtype, dev)?;
            let (secs, peak) = time_runs(dev, a.iters, || scorer.score(&images).map(|_| ()))?;
            println!("aesthetic          {:.0} frames/s ({} frames per call)", a.frames as f64 / secs, a.frames);
            (secs, peak, None)
        }
        "enhance" => return bench_enhance(p, a.iters),
        #[cfg(not(feature = "cuda"))]
        "attention" => return Err(BenchError::NoCuda("--bench attention".into())),
        other => {
            let known =
                "dit, attention, vae-encode, vae-decode, wan-vae-encode, wan-vae-decode, t5, umt5, aesthetic, enhance";
            return Err(BenchError::Usage(format!("--bench {other}: not one of {known}")));
        }
    };
    let tflops = flops.map_or(String::new(), |f| format!("   {:.1} TFLOP/s", f / secs / 1e12));
    println!("{what:<18} {secs:>8.3} s   {peak}{tflops}   ({:?}, mean of {})", dtype, a.iters);
    Ok(())
}

/// The device `name` names ("cpu", "cuda", "cuda:N"); a CUDA one in a build without CUDA is
/// [`BenchError::NoCuda`].
fn device(name: &str) -> Result<Device, BenchError> {
    match name {
        "cpu" => Ok(Device::Cpu),
        d if d == "cuda" || d.starts_with("cuda:") => {
            if !cfg!(feature = "cuda") {
                return Err(BenchError::NoCuda(format!("--device {d}")));
            }
            let ordinal = d
                .strip_prefix("cuda:")
                .map_or(Ok(0), str::parse::<usize>)
                .map_err(|_| BenchError::Usage(format!("device `{d}`: expected \"cuda:N\" with N a GPU number")))?;
            Ok(crate::device::cuda(ordinal)?)
        }
        d => Err(BenchError::Usage(format!("unknown device `{d}`: use \"cpu\", \"cuda\" or \"cuda:N\""))),
    }
}

/// The GPU memory a measured call took at most.
#[derive(Debug, Clone, Copy, Default)]
struct Peak {
    /// nvidia-smi's largest `memory.used` of GPU 0 (MiB): the whole GPU, CUDA context and the
    /// pool's free blocks included; `None` without nvidia-smi.
    smi: Option<u64>,
    /// The high-water mark of the device's memory pool (bytes): tensors and workspaces only, the
    /// figure to set against PyTorch's `max_memory_allocated`; `None` on the CPU.
    allocated: Option<u64>,
}

impl std::fmt::Display for Peak {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.smi {
            Some(v) => write!(f, "peak GPU {v} MiB")?,
            None => write!(f, "peak GPU n/a")?,
        }
        match self.allocated {
            Some(b) => write!(f, " (allocated {:.2} GB)", b as f64 / 1e9),
            None => Ok(()),
        }
    }
}

/// The pool's high-water mark on `dev` since the last reset (`None` on the CPU or on failure).
fn allocated_peak(dev: &Device) -> Option<u64> {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        return kernels::allocated_peak(d).ok();
    }
    let _ = dev;
    None
}

/// Starts a new high-water mark of the pool on `dev` (nothing on the CPU).
fn reset_allocated_peak(dev: &Device) {
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = dev {
        // A failed reset only leaves an older, higher mark: the figure stays an upper bound.
        let _ = kernels::reset_allocated_peak(d);
    }
    let _ = dev;
}

/// `f()` with the GPU memory it took at most: the largest `memory.used` nvidia-smi reported for
/// GPU 0 meanwhile (polled every 100 ms) and the high-water mark of `dev`'s memory pool.
fn with_peak_memory<R>(dev: &Device, f: impl FnOnce() -> R) -> (R, Peak) {
    reset_allocated_peak(dev);
    let (stop, peak, seen) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let poller = {
        let (stop, peak, seen) = (stop.clone(), peak.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("nvidia-smi")
                    .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"])
                    .output();
                if let Some(v) = out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<u64>().ok()) {
                    seen.store(true, Ordering::Relaxed);
                    peak.fetch_max(v, Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    let smi = seen.load(Ordering::Relaxed).then(|| peak.load(Ordering::Relaxed));
    (r, Peak { smi, allocated: allocated_peak(dev) })
}

/// Run the benchmark `a` asks for (end-to-end generation without `--bench`), printing one line
/// per measurement.
pub fn gpu_bench(a: &GpuBenchArgs) -> Result<(), BenchError> {
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => return Err(BenchError::Usage(format!("--dtype {other}: use \"bf16\" or \"f32\""))),
    };
    if a.device == "cpu" && dtype != DType::F32 {
        // candle's CPU backend has no bf16 matrix products.
        return Err(BenchError::Usage("--dtype bf16 runs on GPUs only; with --device cpu use --dtype f32".into()));
    }
    let p = I2vPlacement { device: device(&a.device)?, dtype, t5_device: device(&a.t5_device)? };
    if let Some(what) = &a.bench {
        return bench(a, what, &p);
    }
    let preset = match a.preset.as_str() {
        "real" => Preset::Real,
        "tiny" => Preset::Tiny,
        other => return Err(BenchError::Usage(format!("--preset {other}: use \"real\" or \"tiny\""))),
    };
    let (dit_c, vae_c, t5_c) = (preset.dit(), preset.vae(), preset.t5());
    let sync = || p.device.synchronize();

    let t = Instant::now();
    let (models, peak) = with_peak_memory(&p.device, || -> Result<I2vModels, BenchError> {
        let dit = random_model(|c| MugDit::load(c, &dit_c), dtype, &p.device, &p.device)?;
        let vae = random_model(|c| MugVae::load(c, &vae_c), dtype, &p.device, &p.device)?;
        // Made on the GPU (a fast generator), served to T5 on its own device.
        let t5 = random_model(|c| T5Encoder::load(c, &t5_c), DType::F32, &p.device, &p.t5_device)?;
        let tokenizer = match &a.tokenizer {
            Some(path) => T5Tokenizer::from_file(path, t5_c.max_length)?,
            None => T5Tokenizer::bundled(t5_c.max_length),
        };
        sync()?;
        Ok(I2vModels::new(dit, vae, t5, tokenizer))
    });
    let models = models?;
    println!("random models      {:>8.1} s   {peak}", t.elapsed().as_secs_f64());

    let prompt = "A glass vase on a marble table; the camera slowly arcs around it. aesthetic score: 6.0.";
    let (h, w, frames) = (a.height, a.width, a.frames);
    let image: Vec<u8> = (0..h * w).flat_map(|i| [(i % w * 255 / w) as u8, (i / w * 255 / h) as u8, 128]).collect();
    let settings = I2vSettings {
        steps: a.steps,
        cfg_scale: 4.0,
        aes_score: Some(6.0),
        fps: 30.0,
        shift: ShiftPrecision::PipelineBf16,
    };
    let t = Instant::now();
    let (latent, peak) = with_peak_memory(&p.device, || {
        let started = Instant::now();
        // Timestamps as each part ends (synchronised, so they are the GPU's times too).
        let mut progress = |what: &str| {
            let _ = p.device.synchronize();
            println!("  {what:<16} at {:>8.1} s", started.elapsed().as_secs_f64());
            Ok(())
        };
        let l = generate(&models, &settings, &p, prompt, &image, (frames, h, w), 42, &mut progress);
        sync().and(l)
    });
    let latent = latent?;
    let tokens = latent.dim(1)? * latent.dim(2)?.div_ceil(2) * latent.dim(3)?.div_ceil(2);
    println!(
        "generate           {:>8.1} s   {peak}   ({} steps x CFG 2 over {tokens} tokens, T5 and reference latent included)",
        t.elapsed().as_secs_f64(),
        a.steps
    );

    let t = Instant::now();
    let (video, peak) = with_peak_memory(&p.device, || {
        decode_video(&models.vae, &latent, &image, w, frames, &p.device, dtype, &mut |_| Ok(()))
    });
    let video = video?;
    println!("vae decode         {:>8.1} s   {peak}   ({frames} frames)", t.elapsed().as_secs_f64());

    let path = a.out.join("bench.y4m");
    let write_error = |source| BenchError::Write { path: path.clone(), source };
    std::fs::create_dir_all(&a.out).map_err(write_error)?;
    write_y4m(&path, &video).map_err(write_error)?;
    let n = video.width * video.height;
    println!(
        "video              {} frames {}x{} -> {}",
        video.bytes.len() / (3 * n),
        video.width,
        video.height,
        path.display()
    );
    Ok(())
}

/// `video` as a YUV4MPEG2 file (4:4:4, BT.601 full range, 20 fps).
fn write_y4m(path: &Path, video: &Video) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    writeln!(f, "YUV4MPEG2 W{} H{} F20:1 Ip A1:1 C444", video.width, video.height)?;
    let n = video.width * video.height;
    for frame in video.bytes.chunks_exact(3 * n) {
        f.write_all(b"FRAME\n")?;
        // BT.601 full-range planes.
        let px = |i: usize| (f32::from(frame[3 * i]), f32::from(frame[3 * i + 1]), f32::from(frame[3 * i + 2]));
        let y: Vec<u8> = (0..n)
            .map(|i| {
                let (r, g, b) = px(i);
                (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
            })
            .collect();
        let u: Vec<u8> = (0..n)
            .map(|i| {
                let (r, g, b) = px(i);
                (128.0 - 0.168736 * r - 0.331264 * g + 0.5 * b).round().clamp(0.0, 255.0) as u8
            })
            .collect();
        let v: Vec<u8> = (0..n)
            .map(|i| {
                let (r, g, b) = px(i);
                (128.0 + 0.5 * r - 0.418688 * g - 0.081312 * b).round().clamp(0.0, 255.0) as u8
            })
            .collect();
        f.write_all(&y)?;
        f.write_all(&u)?;
        f.write_all(&v)?;
    }
    f.flush()
}

//! `mugflow bench`: throughput measurements (never assertions; results go to docs/PERFORMANCE.md).

use std::path::{Path, PathBuf};
use std::time::Instant;

use stages::video::decode::VideoReader;
use stages::video::scenes::{Detector, Scores};

/// Seconds of CPU this process has used (user + system, all threads), from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may contain spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    // utime and stime are fields 14 and 15 of the line, in clock ticks (USER_HZ = 100 on Linux).
    (f.get(11).copied().unwrap_or(0.0) + f.get(12).copied().unwrap_or(0.0)) / 100.0
}

/// (frames, wall seconds, CPU seconds) of running `f`.
fn measure(f: impl FnOnce() -> anyhow::Result<usize>) -> anyhow::Result<(usize, f64, f64)> {
    let (c0, t0) = (cpu_seconds(), Instant::now());
    let frames = f()?;
    Ok((frames, t0.elapsed().as_secs_f64(), cpu_seconds() - c0))
}

/// PySceneDetect's ContentDetector (default downscale) on one file, timed inside its own process.
fn pyscenedetect(python: &Path, video: &Path) -> anyhow::Result<(usize, f64, f64)> {
    const SCRIPT: &str = r#"
import sys, time, json
from scenedetect import open_video, SceneManager, ContentDetector
video = open_video(sys.argv[1])
manager = SceneManager()
manager.add_detector(ContentDetector())
c0, t0 = time.process_time(), time.perf_counter()
manager.detect_scenes(video)
print(json.dumps([video.frame_number, time.perf_counter() - t0, time.process_time() - c0]))
"#;
    let out = std::process::Command::new(python).arg("-c").arg(SCRIPT).arg(video).output()?;
    anyhow::ensure!(
        out.status.success(),
        "PySceneDetect failed on {}: {}",
        video.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let (frames, wall, cpu): (usize, f64, f64) = serde_json::from_slice(&out.stdout)?;
    Ok((frames, wall, cpu))
}

/// Decoding alone, decoding + shot detection, and (with `python`) PySceneDetect, per video; then
/// all videos at once on every core.
pub fn scenes(videos: &[PathBuf], python: Option<&Path>) -> anyhow::Result<()> {
    let rate = |(frames, wall, cpu): (usize, f64, f64)| (frames as f64 / wall, frames as f64 / cpu.max(1e-9));
    println!(
        "{:<34} {:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>6}",
        "video", "frames", "dec f/s", "dec f/cpu", "det f/s", "det f/cpu", "psd f/s", "psd f/cpu", "ratio"
    );
    let content = Detector::Content { threshold: 27.0 };
    for v in videos {
        let decode = measure(|| Ok(VideoReader::open(v, 1)?.count_frames()?))?;
        let detect = measure(|| {
            let scores = Scores::of_file(v, 1)?;
            Ok(scores.detect(content, 0.6).frames)
        })?;
        let (df, dc) = rate(decode);
        let (tf, tc) = rate(detect);
        let name = v.file_name().map_or_else(String::new, |n| n.to_string_lossy().to_string());
        let psd = python.map(|p| pyscenedetect(p, v)).transpose()?;
        match psd.map(rate) {
            Some((pf, pc)) => println!(
                "{name:<34} {:>6} | {df:>9.0} {dc:>9.0} | {tf:>9.0} {tc:>9.0} | {pf:>9.0} {pc:>9.0} | {:>6.2}",
                detect.0,
                tc / pc
            ),
            None => println!("{name:<34} {:>6} | {df:>9.0} {dc:>9.0} | {tf:>9.0} {tc:>9.0} |", detect.0),
        }
    }
    // Many videos: one per rayon thread, as the scene_split stage runs them.
    let all = measure(|| {
        use rayon::prelude::*;
        let frames: anyhow::Result<Vec<usize>> =
            videos.par_iter().map(|v| Ok(Scores::of_file(v, 1)?.detect(content, 0.6).frames)).collect();
        Ok(frames?.iter().sum())
    })?;
    let (f, c) = rate(all);
    println!(
        "all {} videos in parallel on {} threads: {} frames, {f:.0} frames/s, {c:.0} frames per CPU-second",
        videos.len(),
        rayon::current_num_threads(),
        all.0
    );
    Ok(())
}

/// Settings of `mugflow bench generate`.
pub struct GenerateBench {
    /// Model sizes.
    pub preset: stages::checkpoints::Preset,
    /// Frame (height, width) and frame count.
    pub size: (usize, usize, usize),
    /// Sampling steps.
    pub steps: usize,
    /// Device and precision of the DiT and the VAE.
    pub placement: stages::checkpoints::Placement,
    /// Device of T5.
    pub t5_device: String,
    /// Where the MP4 goes.
    pub out: PathBuf,
}

/// The largest `memory.used` (MiB) nvidia-smi reported for GPU 0 while `f` ran, polled every
/// 200 ms; `None` without nvidia-smi.
fn peak_gpu_memory<R>(f: impl FnOnce() -> R) -> (R, Option<u64>) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let (stop, peak) = (std::sync::Arc::new(AtomicBool::new(false)), std::sync::Arc::new(AtomicU64::new(0)));
    let seen = std::sync::Arc::new(AtomicBool::new(false));
    let poller = {
        let (stop, peak, seen) = (stop.clone(), peak.clone(), seen.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = std::process::Command::new("nvidia-smi")
                    .args(["--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"])
                    .output();
                if let Ok(o) = out {
                    if let Ok(v) = String::from_utf8_lossy(&o.stdout).trim().parse::<u64>() {
                        seen.store(true, Ordering::Relaxed);
                        peak.fetch_max(v, Ordering::Relaxed);
                    }
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        })
    };
    let r = f();
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    (r, seen.load(Ordering::Relaxed).then(|| peak.load(Ordering::Relaxed)))
}

/// One catalog-style generation with random weights made on the devices: model creation, T5 +
/// reference latent + sampling, chunked VAE decode, MP4 encode, each timed; peak GPU memory.
pub fn generate(b: &GenerateBench) -> anyhow::Result<()> {
    use stages::i2v_generate::{Generator, I2vGenerateConfig};
    let (frames, height, width) = b.size;
    let t0 = Instant::now();
    let ((models, created), peak_init) = peak_gpu_memory(|| {
        let m = stages::checkpoints::random_models(b.preset, &b.placement, &b.t5_device);
        (m, t0.elapsed().as_secs_f64())
    });
    let models = models.map_err(anyhow::Error::msg)?;
    let config = I2vGenerateConfig {
        dit: PathBuf::new(),
        vae: PathBuf::new(),
        t5: PathBuf::new(),
        tokenizer: PathBuf::new(),
        preset: b.preset,
        steps: b.steps,
        cfg_scale: 4.0,
        aes_score: Some(6.0),
        fps: 30.0,
        seed: 42,
        shift: stages::i2v_generate::Shift::PipelineBf16,
        device: b.placement.device.clone(),
        dtype: b.placement.dtype,
        t5_device: b.t5_device.clone(),
    };
    let generator = Generator::new(&config, models).map_err(anyhow::Error::msg)?;
    // A smooth colour gradient as the reference image.
    let image: Vec<u8> = (0..height * width)
        .flat_map(|p| [(p % width * 255 / width) as u8, (p / width * 255 / height) as u8, 128])
        .collect();
    let t1 = Instant::now();
    let (latent, peak_gen) =
        peak_gpu_memory(|| generator.generate("A product rotates slowly on a table.", &image, b.size, 42));
    let latent = latent.map_err(|e| anyhow::anyhow!("{e}"))?;
    let generated = t1.elapsed().as_secs_f64();
    let t2 = Instant::now();
    let (video, peak_dec) = peak_gpu_memory(|| {
        let device = b.placement.device().map_err(anyhow::Error::msg)?;
        let vae = &generator.models().vae;
        stages::vae_decode::decode_video(vae, &latent, &image, width, frames, &device, b.placement.dtype())
            .map_err(|e| anyhow::anyhow!("{e}"))
    });
    let video = video?;
    let decoded = t2.elapsed().as_secs_f64();
    let t3 = Instant::now();
    std::fs::create_dir_all(&b.out)?;
    let path = b.out.join("bench.mp4");
    let options =
        stages::video::encode::EncodeOptions { codec: "libx264".into(), fps: 20.0, crf: 17, preset: "medium".into() };
    let mut writer = stages::video::encode::Mp4Writer::create(&path, video.width, video.height, &options)?;
    for frame in video.bytes.chunks_exact(3 * video.width * video.height) {
        writer.write(&stages::video::decode::Image {
            width: video.width,
            height: video.height,
            data: frame.to_vec(),
        })?;
    }
    let written = writer.finish()?;
    let encoded = t3.elapsed().as_secs_f64();
    let mib = |p: Option<u64>| p.map_or("n/a".to_string(), |v| format!("{v} MiB"));
    println!(
        "preset {:?}, {width}x{height} x {frames} frames, {} steps, {} {:?}, T5 on {}",
        b.preset, b.steps, b.placement.device, b.placement.dtype, b.t5_device
    );
    println!("random models     {created:>8.1} s   peak GPU {}", mib(peak_init));
    println!(
        "generate          {generated:>8.1} s   peak GPU {}   (T5, reference latent, {} DiT steps x CFG 2)",
        mib(peak_gen),
        b.steps
    );
    println!("vae decode        {decoded:>8.1} s   peak GPU {}", mib(peak_dec));
    println!("encode mp4        {encoded:>8.1} s   {written} frames -> {}", path.display());
    Ok(())
}

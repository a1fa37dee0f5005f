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

/// Seconds of CPU the whole machine has been busy (all processes, all cores), from /proc/stat.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).map(|x| x.parse().unwrap_or(0.0)).collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait are busy.
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| !matches!(i, 3 | 4)).map(|(_, t)| t).sum();
    busy / 100.0
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

/// Decoding alone, decoding + shot detection, and (with `python`) PySceneDetect, per video on one
/// decoder thread; then all videos at once on every core as the stage runs them (automatic
/// threads: a video splits into parts when cores are idle), next to what the cores would do at
/// the one-thread rate with none idle, and how many cores this process and others kept busy.
pub fn scenes(videos: &[PathBuf], python: Option<&Path>) -> anyhow::Result<()> {
    let rate = |(frames, wall, cpu): (usize, f64, f64)| (frames as f64 / wall, frames as f64 / cpu.max(1e-9));
    println!(
        "{:<34} {:>6} | {:>9} {:>9} | {:>9} {:>9} | {:>9} {:>9} | {:>6}",
        "video", "frames", "dec f/s", "dec f/cpu", "det f/s", "det f/cpu", "psd f/s", "psd f/cpu", "ratio"
    );
    let content = Detector::Content { threshold: 27.0 };
    let (mut one_thread_frames, mut one_thread_s) = (0, 0.0);
    for v in videos {
        let decode = measure(|| Ok(VideoReader::open(v, 1)?.count_frames()?))?;
        let detect = measure(|| {
            let scores = Scores::of_file(v, 1)?;
            Ok(scores.detect(content, 0.6).frames)
        })?;
        (one_thread_frames, one_thread_s) = (one_thread_frames + detect.0, one_thread_s + detect.1);
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
    // Many videos: one per rayon thread, as the scene_split stage runs them (automatic threads).
    let busy_before = machine_busy_seconds();
    let all = measure(|| {
        use rayon::prelude::*;
        let frames: anyhow::Result<Vec<usize>> =
            videos.par_iter().map(|v| Ok(Scores::of_file(v, 0)?.detect(content, 0.6).frames)).collect();
        Ok(frames?.iter().sum())
    })?;
    let busy = machine_busy_seconds() - busy_before;
    let (f, c) = rate(all);
    let threads = rayon::current_num_threads();
    let ideal = threads as f64 * one_thread_frames as f64 / one_thread_s.max(1e-9);
    println!(
        "all {} videos in parallel on {threads} threads: {} frames, {f:.0} frames/s ({:.0}% of {threads} x the \
         one-thread rate, {ideal:.0}), {c:.0} frames per CPU-second; cores busy meanwhile: this process {:.2}, \
         others {:.2}",
        videos.len(),
        all.0,
        100.0 * f / ideal,
        all.2 / all.1,
        (busy - all.2).max(0.0) / all.1
    );
    Ok(())
}

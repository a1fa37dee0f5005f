//! `mugflow scenes`: the shot detector on one file, printing one row per scene, like
//! PySceneDetect's `list-scenes`; it runs the same code as the `scene_split` stage.

use std::path::Path;

use clap::ValueEnum;
use stages::scene_split::{DetectorKind, SceneSplitConfig};

/// The detectors, as command-line values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DetectorArg {
    /// HSV change between frames above a threshold (PySceneDetect's detect-content).
    Content,
    /// HSV change relative to neighbouring frames (PySceneDetect's detect-adaptive).
    Adaptive,
}

/// Output formats of `mugflow scenes`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `scene,start_frame,end_frame,start_time,end_time` rows.
    Csv,
    /// One JSON document with the frame count, frame rate, cuts and scenes.
    Json,
}

/// Detect the shots of one local video and print them.
pub fn scenes(
    video: &Path,
    detector: DetectorArg,
    threshold: Option<f64>,
    min_scene_len: &str,
    format: Format,
) -> anyhow::Result<()> {
    let min_scene_len = min_scene_len.parse().map_err(|e: String| anyhow::anyhow!("--min-scene-len: {e}"))?;
    let detector = match detector {
        DetectorArg::Content => DetectorKind::Content,
        DetectorArg::Adaptive => DetectorKind::Adaptive,
    };
    let config = SceneSplitConfig { detector, threshold, min_scene_len, ..Default::default() };
    let list = config
        .detect_file(video)
        .map_err(|e| anyhow::Error::new(e).context(format!("cannot detect scenes in {}", video.display())))?;
    let rows: Vec<serde_json::Value> = list
        .scenes()
        .iter()
        .enumerate()
        .map(|(i, s)| {
            serde_json::json!({
                "scene": i + 1,
                "start_frame": s.start,
                "end_frame": s.end,
                "start_time": s.start as f64 / list.fps,
                "end_time": s.end as f64 / list.fps,
            })
        })
        .collect();
    match format {
        Format::Json => {
            let doc = serde_json::json!({ "frames": list.frames, "fps": list.fps, "cuts": list.cuts, "scenes": rows });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        Format::Csv => {
            println!("scene,start_frame,end_frame,start_time,end_time");
            for r in rows {
                println!(
                    "{},{},{},{:.3},{:.3}",
                    r["scene"],
                    r["start_frame"],
                    r["end_frame"],
                    r["start_time"].as_f64().unwrap_or(0.0),
                    r["end_time"].as_f64().unwrap_or(0.0)
                );
            }
        }
    }
    Ok(())
}

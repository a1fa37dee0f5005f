//! `scene_split`: detect shot boundaries in each source video and emit one clip item per shot.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pipeline::io::fetch_local;
use pipeline::manifest::Duration;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::probe::DecodeError;
use crate::video::scenes::{Detector, SceneList, Scores};

/// Detect shot boundaries with PySceneDetect's content or adaptive detector (same cuts within a
/// frame) and emit one clip item per shot, with id `<source id>#<start frame>-<end frame>`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SceneSplitConfig {
    /// "content": cut where the HSV change between frames reaches `threshold`; "adaptive": cut
    /// where a frame's change is `threshold` times that of its neighbours (handles camera motion).
    #[serde(default)]
    pub detector: DetectorKind,
    /// Cut threshold: an HSV change score 0-255 for "content" (default 27), a ratio for
    /// "adaptive" (default 3).
    pub threshold: Option<f64>,
    /// Shortest shot; closer cuts are merged ("content") or skipped ("adaptive").
    #[serde(default = "default_min_scene_len")]
    pub min_scene_len: Duration,
    /// "adaptive": frames on each side the change is compared with.
    #[serde(default = "default_window")]
    #[schemars(range(min = 1))]
    pub window_width: u32,
    /// "adaptive": a cut frame's own change score must reach this too.
    #[serde(default = "default_min_content")]
    pub min_content_val: f64,
    /// FFmpeg decoder threads per video; 0 (the default) shares the cores among the videos being
    /// detected: one thread each, and a video splits into parts at keyframes whenever cores are
    /// idle (frame threads at the start for one that cannot be split, such as a pipe).
    #[serde(default = "default_threads")]
    pub decoder_threads: u32,
}

/// The shot detectors.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// Frame-to-frame HSV change above a threshold (PySceneDetect's ContentDetector).
    #[default]
    Content,
    /// HSV change relative to a rolling average of neighbours (PySceneDetect's AdaptiveDetector).
    Adaptive,
}

fn default_min_scene_len() -> Duration {
    Duration(std::time::Duration::from_millis(600))
}
fn default_window() -> u32 {
    2
}
fn default_min_content() -> f64 {
    15.0
}
fn default_threads() -> u32 {
    0
}

impl Default for SceneSplitConfig {
    fn default() -> Self {
        SceneSplitConfig {
            detector: DetectorKind::Content,
            threshold: None,
            min_scene_len: default_min_scene_len(),
            window_width: default_window(),
            min_content_val: default_min_content(),
            decoder_threads: default_threads(),
        }
    }
}

impl SceneSplitConfig {
    /// The detector these parameters describe.
    pub fn detector(&self) -> Detector {
        match self.detector {
            DetectorKind::Content => Detector::Content { threshold: self.threshold.unwrap_or(27.0) },
            DetectorKind::Adaptive => Detector::Adaptive {
                threshold: self.threshold.unwrap_or(3.0),
                window: self.window_width as usize,
                min_content: self.min_content_val,
            },
        }
    }

    /// Decode a local video and find its shots: the code path of both the stage and `mugflow scenes`.
    pub fn detect_file(&self, path: &Path) -> Result<SceneList, DecodeError> {
        let scores = Scores::of_file(path, self.decoder_threads as usize)?;
        Ok(scores.detect(self.detector(), self.min_scene_len.as_secs_f64()))
    }
}

struct SceneSplit(SceneSplitConfig);

#[async_trait]
impl Stage for SceneSplit {
    async fn process(&self, item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let local = fetch_local(item.uri()?, &ctx.scratch)
            .await
            .map_err(|e| StageError::from(e).context("cannot fetch the input"))?;
        let (path, config) = (local.path().to_path_buf(), self.0.clone());
        let list = ctx.cpu(move || config.detect_file(&path)).await??;
        Ok(list
            .scenes()
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut clip = item.child(format!("{}#{}-{}", item.id, s.start, s.end));
                clip.set("source_id", item.id.as_str());
                clip.set("scene_index", i as i64);
                clip.set("clip_start_frame", s.start as i64);
                clip.set("clip_end_frame", s.end as i64);
                clip.set("clip_frames", (s.end - s.start) as i64);
                clip.set("clip_start_s", s.start as f64 / list.fps);
                clip.set("clip_end_s", s.end as f64 / list.fps);
                clip.set("clip_fps", list.fps);
                clip
            })
            .collect())
    }
}

impl StageConfig for SceneSplitConfig {
    const KIND: &'static str = "scene_split";
    const EXAMPLE: &'static str =
        "[[stage]]\nkind = \"scene_split\"\ndetector = \"content\"\nthreshold = 27.0\nmin_scene_len = \"0.6s\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new("uri", FieldType::Str, "path or URL of the video")]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("source_id", FieldType::Str, "id of the video the clip comes from"),
            Field::new("scene_index", FieldType::Int, "0-based position of the shot in its video"),
            Field::new("clip_start_frame", FieldType::Int, "first frame of the shot (0-based)"),
            Field::new("clip_end_frame", FieldType::Int, "one past the last frame of the shot"),
            Field::new("clip_frames", FieldType::Int, "frames in the shot"),
            Field::new("clip_start_s", FieldType::Float, "start time, seconds"),
            Field::new("clip_end_s", FieldType::Float, "end time (start of the next frame), seconds"),
            Field::new("clip_fps", FieldType::Float, "frame rate of the source, frames per second"),
        ]
    }

    fn check(&self) -> Vec<String> {
        match self.threshold {
            Some(t) if t <= 0.0 => vec![format!("threshold must be positive, found {t}")],
            _ => Vec::new(),
        }
    }

    fn default_parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Ok(Runnable::Transform(Arc::new(SceneSplit(self.clone()))))
    }
}

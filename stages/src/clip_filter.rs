//! `clip_filter`: keep the clips a training set wants. Shot edges are trimmed, long shots are
//! cut into windows, and clips outside the duration, size, aspect-ratio, frame-rate and motion
//! bounds are dropped, as are static and black clips.

use std::sync::Arc;

use async_trait::async_trait;
use pipeline::io::fetch_local;
use pipeline::manifest::Duration;
use pipeline::report::DroppedExample;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::decode::VideoReader;
use crate::video::motion::{clip_stats, ClipStats};
use crate::video::probe::DecodeError;

/// Trim shot edges, split long shots into windows, and drop clips outside the bounds, static
/// clips and black clips. Unset bounds are not checked. Motion and brightness are measured (by
/// decoding the clip) only when a motion bound or a static/black rejection is on. Dropped clips
/// are counted in the run report by reason ("too short", "black", "static", ...), not written.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClipFilterConfig {
    /// Cut this much from both ends of every shot (transitions and fades live there).
    #[serde(default = "zero")]
    pub trim: Duration,
    /// Shortest clip kept (after trimming and splitting).
    pub min_duration: Option<Duration>,
    /// Longest clip: longer shots are split into windows of this length.
    pub max_duration: Option<Duration>,
    /// Overlap of consecutive windows of a long shot.
    #[serde(default = "zero")]
    pub overlap: Duration,
    /// Smallest displayed width kept, pixels.
    pub min_width: Option<u32>,
    /// Smallest displayed height kept, pixels.
    pub min_height: Option<u32>,
    /// Smallest width/height ratio kept (e.g. 0.5 for 9:16 and wider).
    pub min_aspect: Option<f64>,
    /// Largest width/height ratio kept (e.g. 2.0 for up to 2:1).
    pub max_aspect: Option<f64>,
    /// Lowest frame rate kept, frames per second.
    pub min_fps: Option<f64>,
    /// Highest frame rate kept, frames per second.
    pub max_fps: Option<f64>,
    /// Lowest motion score kept: mean grey-level change (0-255) between consecutive frames shrunk
    /// to a 64-pixel long side; about 1-3 for a talking head, 10+ for fast action.
    pub min_motion: Option<f64>,
    /// Highest motion score kept (drops shaking, flashing and cut-heavy clips).
    pub max_motion: Option<f64>,
    /// Drop static clips: motion score below 0.15 (frozen frames, slides, title cards).
    #[serde(default = "yes")]
    pub reject_static: bool,
    /// Drop black clips: even the brightest measured frame has a mean grey level below 16.
    #[serde(default = "yes")]
    pub reject_black: bool,
    /// Frame pairs per second of clip that the motion score measures.
    #[serde(default = "default_motion_fps")]
    pub motion_fps: f64,
}

fn yes() -> bool {
    true
}
fn default_motion_fps() -> f64 {
    4.0
}

/// Motion score under which `reject_static` drops a clip.
pub const STATIC_MOTION: f64 = 0.15;
/// Brightness under which `reject_black` drops a clip.
pub const BLACK_LEVEL: f64 = 16.0;

fn zero() -> Duration {
    Duration(std::time::Duration::ZERO)
}

/// Clip ranges (start, end exclusive) that survive trimming, splitting and the duration bounds.
///
/// Frames counts come from durations by rounding to whole frames. Windows of a long shot start
/// every `max - overlap`; the last one ends at the shot's (trimmed) end and is kept only if it is
/// long enough.
pub fn clip_ranges(start: usize, end: usize, fps: f64, c: &ClipFilterConfig) -> Vec<(usize, usize)> {
    let frames = |d: &Duration| (d.as_secs_f64() * fps).round() as usize;
    let trim = frames(&c.trim);
    let (s, e) = (start + trim, end.saturating_sub(trim));
    if e <= s {
        return Vec::new();
    }
    let min = c.min_duration.as_ref().map_or(1, frames).max(1);
    let mut out = Vec::new();
    match c.max_duration.as_ref().map(frames).map(|m| m.max(1)) {
        Some(max) if e - s > max => {
            let step = max.saturating_sub(frames(&c.overlap)).max(1);
            let mut p = s;
            loop {
                let q = (p + max).min(e);
                out.push((p, q));
                if q == e {
                    break;
                }
                p += step;
            }
        }
        _ => out.push((s, e)),
    }
    out.retain(|(a, b)| b - a >= min);
    out
}

impl ClipFilterConfig {
    /// Why a clip's source fails the size, aspect and frame-rate bounds, if it does: the
    /// reason the run report counts.
    fn rejects(&self, width: f64, height: f64, fps: f64) -> Option<&'static str> {
        let aspect = width / height.max(1.0);
        let below = |v: f64, b: Option<f64>| b.is_some_and(|b| v < b);
        let above = |v: f64, b: Option<f64>| b.is_some_and(|b| v > b);
        if below(width, self.min_width.map(f64::from)) || below(height, self.min_height.map(f64::from)) {
            return Some("too small");
        }
        if below(aspect, self.min_aspect) || above(aspect, self.max_aspect) {
            return Some("aspect out of bounds");
        }
        if below(fps, self.min_fps) || above(fps, self.max_fps) {
            return Some("fps out of bounds");
        }
        None
    }

    /// Whether any check needs the clip's pixels.
    fn measures(&self) -> bool {
        self.min_motion.is_some() || self.max_motion.is_some() || self.reject_static || self.reject_black
    }

    /// Why a measured clip fails the motion, static and black checks, if it does.
    fn drops(&self, stats: &ClipStats) -> Option<&'static str> {
        let m = stats.motion;
        if self.reject_black && stats.brightness < BLACK_LEVEL {
            Some("black")
        } else if self.reject_static && m < STATIC_MOTION {
            Some("static")
        } else if self.min_motion.is_some_and(|b| m < b) {
            Some("below min_motion")
        } else if self.max_motion.is_some_and(|b| m > b) {
            Some("above max_motion")
        } else {
            None
        }
    }
}

struct ClipFilter(ClipFilterConfig);

#[async_trait]
impl Stage for ClipFilter {
    async fn process(&self, item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let num = |name: &str| {
            item.get(name)
                .and_then(pipeline::Value::as_f64)
                .ok_or_else(|| StageError::msg(format!("item has no number `{name}`")))
        };
        let (width, height, fps) = (num("width")?, num("height")?, num("clip_fps")?);
        let (start, end) = (num("clip_start_frame")? as usize, num("clip_end_frame")? as usize);
        let uri = item.get("uri").and_then(pipeline::Value::as_str).unwrap_or_default().to_string();
        let example = |id: &str, a: usize, b: usize| {
            let frame = (a + b.max(a + 1) - 1) / 2;
            Some(DroppedExample { id: id.to_string(), uri: uri.clone(), frame }).filter(|e| !e.uri.is_empty())
        };
        if let Some(reason) = self.0.rejects(width, height, fps) {
            ctx.dropped(reason, example(&item.id, start, end));
            return Ok(Vec::new());
        }
        let source = item.get("source_id").and_then(pipeline::Value::as_str).unwrap_or(&item.id).to_string();
        let ranges = clip_ranges(start, end, fps, &self.0);
        if ranges.is_empty() {
            ctx.dropped("too short", example(&item.id, start, end));
        }
        let stats = if self.0.measures() && !ranges.is_empty() {
            let local = fetch_local(item.uri()?, &ctx.scratch)
                .await
                .map_err(|e| StageError::from(e).context("cannot fetch the source video"))?;
            let (path, ranges, sample_fps) = (local.path().to_path_buf(), ranges.clone(), self.0.motion_fps);
            let stats = ctx
                .cpu(move || -> Result<Vec<ClipStats>, DecodeError> {
                    let mut reader = VideoReader::open(&path, 1)?;
                    ranges.iter().map(|&(a, b)| clip_stats(&mut reader, a, b, sample_fps)).collect()
                })
                .await??;
            Some(stats)
        } else {
            None
        };
        let mut clips = Vec::new();
        for (k, (a, b)) in ranges.into_iter().enumerate() {
            let mut clip = item.child(format!("{source}#{a}-{b}"));
            if let Some(s) = stats.as_ref().map(|s| s[k]) {
                if let Some(reason) = self.0.drops(&s) {
                    ctx.dropped(reason, example(&clip.id, a, b));
                    continue;
                }
                clip.set("motion", s.motion);
                clip.set("brightness", s.brightness);
            }
            clip.set("clip_start_frame", a as i64);
            clip.set("clip_end_frame", b as i64);
            clip.set("clip_frames", (b - a) as i64);
            clip.set("clip_start_s", a as f64 / fps);
            clip.set("clip_end_s", b as f64 / fps);
            clips.push(clip);
        }
        Ok(clips)
    }
}

impl StageConfig for ClipFilterConfig {
    const KIND: &'static str = "clip_filter";
    const EXAMPLE: &'static str =
        "[[stage]]\nkind = \"clip_filter\"\ntrim = \"0.2s\"\nmin_duration = \"2s\"\nmax_duration = \"12s\"\nmin_height = 360\n";

    fn reads(&self) -> Vec<Field> {
        let mut fields = vec![
            Field::new("width", FieldType::Int, "displayed width, pixels"),
            Field::new("height", FieldType::Int, "displayed height, pixels"),
            Field::new("clip_start_frame", FieldType::Int, "first frame of the shot"),
            Field::new("clip_end_frame", FieldType::Int, "one past the last frame of the shot"),
            Field::new("clip_fps", FieldType::Float, "frame rate, frames per second"),
        ];
        if self.measures() {
            fields.push(Field::new("uri", FieldType::Str, "path or URL of the source video"));
        }
        fields
    }

    fn adds(&self) -> Vec<Field> {
        let mut fields = vec![
            Field::new("clip_start_frame", FieldType::Int, "first frame of the clip"),
            Field::new("clip_end_frame", FieldType::Int, "one past the last frame of the clip"),
            Field::new("clip_frames", FieldType::Int, "frames in the clip"),
            Field::new("clip_start_s", FieldType::Float, "start time, seconds"),
            Field::new("clip_end_s", FieldType::Float, "end time, seconds"),
        ];
        if self.measures() {
            fields.push(Field::new("motion", FieldType::Float, "mean grey-level change between consecutive frames"));
            fields.push(Field::new("brightness", FieldType::Float, "mean grey level of the brightest measured frame"));
        }
        fields
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let (Some(min), Some(max)) = (&self.min_duration, &self.max_duration) {
            if min > max {
                problems.push(format!("min_duration ({min}) is longer than max_duration ({max})"));
            }
        }
        if let Some(max) = &self.max_duration {
            if self.overlap >= *max {
                problems.push(format!("overlap ({}) must be shorter than max_duration ({max})", self.overlap));
            }
        }
        if self.motion_fps <= 0.0 {
            problems.push(format!("motion_fps must be positive, found {}", self.motion_fps));
        }
        if let (Some(a), Some(b)) = (self.min_aspect, self.max_aspect) {
            if a > b {
                problems.push(format!("min_aspect ({a}) is larger than max_aspect ({b})"));
            }
        }
        problems
    }

    fn default_parallelism(&self) -> usize {
        2
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Ok(Runnable::Transform(Arc::new(ClipFilter(self.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(trim: f64, min: Option<f64>, max: Option<f64>, overlap: f64) -> ClipFilterConfig {
        let d = |s: f64| Duration(std::time::Duration::from_secs_f64(s));
        ClipFilterConfig {
            trim: d(trim),
            min_duration: min.map(d),
            max_duration: max.map(d),
            overlap: d(overlap),
            min_width: None,
            min_height: None,
            min_aspect: None,
            max_aspect: None,
            min_fps: None,
            max_fps: None,
            min_motion: None,
            max_motion: None,
            reject_static: true,
            reject_black: true,
            motion_fps: 4.0,
        }
    }

    #[test]
    fn windows_trim_and_bounds() {
        let c = config(0.5, Some(2.0), Some(4.0), 0.0);
        // A 10 s shot at 10 fps: trimmed to 5..95, windows of 40 frames, the 10-frame tail is too short.
        assert_eq!(clip_ranges(0, 100, 10.0, &c), [(5, 45), (45, 85)]);
        let c = config(0.0, None, Some(4.0), 1.0);
        assert_eq!(clip_ranges(0, 100, 10.0, &c), [(0, 40), (30, 70), (60, 100)]);
        assert!(clip_ranges(0, 8, 10.0, &config(0.5, None, None, 0.0)).is_empty());
    }

    /// Over a grid of shots and settings: clips stay inside the (trimmed) shot, respect the
    /// bounds, and without overlap never overlap each other.
    #[test]
    fn clip_ranges_properties() {
        for fps in [12.0, 23.976, 25.0, 30.0, 60.0] {
            for (start, len) in [(0, 1), (3, 17), (10, 100), (7, 999), (0, 3000)] {
                for trim in [0.0, 0.1, 0.5] {
                    for (min, max) in [(None, None), (Some(1.0), None), (Some(2.0), Some(5.0)), (None, Some(0.5))] {
                        let c = config(trim, min, max, 0.0);
                        let end = start + len;
                        let f = |s: f64| (s * fps).round() as usize;
                        let clips = clip_ranges(start, end, fps, &c);
                        for w in clips.windows(2) {
                            assert!(w[0].1 <= w[1].0, "overlap: {clips:?}");
                        }
                        for &(a, b) in &clips {
                            assert!(start + f(trim) <= a && a < b && b + f(trim) <= end, "outside: {clips:?}");
                            assert!(min.is_none_or(|m| b - a >= f(m).max(1)), "too short: {clips:?}");
                            assert!(max.is_none_or(|m| b - a <= f(m).max(1)), "too long: {clips:?}");
                        }
                    }
                }
            }
        }
    }
}

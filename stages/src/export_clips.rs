//! `export_clips`: each clip as its own MP4 (H.264 through libx264), published with the shard
//! next to its metadata row, for users who want clips rather than latents.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use pipeline::io::fetch_local;
use pipeline::manifest::Resolution;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::decode::{nearest_bucket, uniform_indices, FrameFormat, VideoReader};
use crate::video::encode::{EncodeError, EncodeOptions, Mp4Writer, X264Preset};
use crate::video::pixel::Layout;

/// Encode each clip (frames `clip_start_frame..clip_end_frame` of its source) as an MP4 file
/// `clips/<clip id>.mp4` in the output, optionally at another frame rate and resized to fill a
/// size or the nearest aspect-ratio bucket (bicubic, centre crop). The row gets `clip_file`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ExportClipsConfig {
    /// Frame rate of the exported clips (uniform frame selection); unset keeps the source's.
    pub fps: Option<f64>,
    /// Resize to cover this size, then crop the centre; unset keeps the source size.
    pub size: Option<Resolution>,
    /// Aspect-ratio buckets, e.g. ["1280x720", "720x1280", "960x960"]: each clip fills the bucket
    /// nearest its aspect ratio. Takes precedence over `size`.
    #[serde(default)]
    pub buckets: Vec<Resolution>,
    /// x264 constant rate factor: 0 lossless .. 51 worst; 18 looks lossless, 23 is x264's default.
    #[serde(default = "default_crf")]
    #[schemars(range(min = 0, max = 51))]
    pub crf: u32,
    /// x264 speed/size trade-off: slower presets make smaller files at the same quality.
    #[serde(default)]
    pub preset: X264Preset,
    /// FFmpeg encoder; libx264 unless your FFmpeg has a reason to use another.
    #[serde(default = "default_codec")]
    pub codec: String,
}

fn default_crf() -> u32 {
    18
}
fn default_codec() -> String {
    "libx264".into()
}

/// What encoding one clip produced.
struct Exported {
    width: usize,
    height: usize,
    fps: f64,
    frames: i64,
}

impl ExportClipsConfig {
    /// Decode frames `start..end` of `source` and encode them into `target`.
    fn export(&self, source: &Path, start: usize, end: usize, target: &Path) -> Result<Exported, StageError> {
        let mut reader = VideoReader::open(source, 0)?;
        let (w, h) = reader.size();
        let buckets: Vec<(u32, u32)> = self.buckets.iter().map(|r| (r.width, r.height)).collect();
        let fill = nearest_bucket(w, h, &buckets).or(self.size.as_ref().map(|r| (r.width, r.height)));
        let fps = self.fps.unwrap_or(reader.fps);
        let indices = uniform_indices(start, end, reader.fps, self.fps);
        let options = EncodeOptions { codec: self.codec.clone(), fps, crf: self.crf, preset: self.preset.name() };
        let mut writer: Option<Mp4Writer> = None;
        let mut failure: Option<EncodeError> = None;
        let format = FrameFormat { layout: Layout::Rgb, fill };
        reader.frames_at(&indices, format, |_, image| {
            let step = match &mut writer {
                Some(wr) => wr.write(&image),
                None => Mp4Writer::create(target, image.width, image.height, &options).and_then(|mut wr| {
                    let r = wr.write(&image);
                    writer = Some(wr);
                    r
                }),
            };
            step.map_err(|e| failure = Some(e)).is_ok()
        })?;
        if let Some(e) = failure {
            return Err(e.into());
        }
        let writer =
            writer.ok_or_else(|| StageError::msg(format!("frames {start}..{end} are past the video's end")))?;
        let (width, height) = writer.size();
        Ok(Exported { width: width as usize, height: height as usize, fps, frames: writer.finish()? })
    }
}

struct ExportClips(ExportClipsConfig);

#[async_trait]
impl Stage for ExportClips {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let frame = |name: &str| {
            item.get(name)
                .and_then(pipeline::Value::as_i64)
                .map(|v| v.max(0) as usize)
                .ok_or_else(|| StageError::msg(format!("item has no frame number `{name}`")))
        };
        let (start, end) = (frame("clip_start_frame")?, frame("clip_end_frame")?);
        let local = fetch_local(item.uri()?, &ctx.scratch)
            .await
            .map_err(|e| StageError::from(e).context("cannot fetch the source video"))?;
        let name = ctx.item_file("clips", &item.id, ".mp4");
        let target: PathBuf = ctx.scratch.join(name.replace('/', "_"));
        let (source, config, out) = (local.path().to_path_buf(), self.0.clone(), target.clone());
        let done = ctx.cpu(move || config.export(&source, start, end, &out)).await??;
        item.set("clip_file", name.as_str());
        item.set("export_width", done.width as i64);
        item.set("export_height", done.height as i64);
        item.set("export_fps", done.fps);
        item.set("export_frames", done.frames);
        item.files.insert(name, target);
        Ok(vec![item])
    }
}

impl StageConfig for ExportClipsConfig {
    const KIND: &'static str = "export_clips";
    const EXAMPLE: &'static str =
        "[[stage]]\nkind = \"export_clips\"\nfps = 24\nbuckets = [\"1280x720\", \"720x1280\", \"960x960\"]\ncrf = 18\n";

    fn reads(&self) -> Vec<Field> {
        vec![
            Field::new("uri", FieldType::Str, "path or URL of the source video"),
            Field::new("clip_start_frame", FieldType::Int, "first frame of the clip"),
            Field::new("clip_end_frame", FieldType::Int, "one past the last frame of the clip"),
        ]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("clip_file", FieldType::Str, "the clip's MP4, relative to the output location"),
            Field::new("export_width", FieldType::Int, "width of the exported clip, pixels"),
            Field::new("export_height", FieldType::Int, "height of the exported clip, pixels"),
            Field::new("export_fps", FieldType::Float, "frame rate of the exported clip"),
            Field::new("export_frames", FieldType::Int, "frames in the exported clip"),
        ]
    }

    fn check(&self) -> Vec<String> {
        match self.fps {
            Some(f) if f <= 0.0 => vec![format!("fps must be positive, found {f}")],
            _ => Vec::new(),
        }
    }

    fn default_parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Mp4Writer::encoder(&self.codec).map_err(|e| pipeline::BuildError::new(e.to_string()).with_key("codec"))?;
        Ok(Runnable::Transform(Arc::new(ExportClips(self.clone()))))
    }
}

//! `probe`: container and stream metadata through FFmpeg, without decoding any frame.

use async_trait::async_trait;
use pipeline::{io::fetch_local, Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::probe::{probe_file, DecodeError};

/// Read container and stream metadata with FFmpeg: duration, frame rates, frame count, size,
/// rotation, codec, pixel format, bit rate and audio presence. No frame is decoded.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProbeConfig {
    /// Record an error for files without a video stream (audio-only, images, subtitles).
    #[serde(default = "yes")]
    pub require_video: bool,
}

fn yes() -> bool {
    true
}

struct Probe {
    require_video: bool,
}

#[async_trait]
impl Stage for Probe {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let local = fetch_local(item.uri()?, &ctx.scratch)
            .await
            .map_err(|e| StageError::from(e).context("cannot fetch the input"))?;
        let path = local.path().to_path_buf();
        match ctx.cpu(move || probe_file(&path)).await? {
            Ok(info) => {
                item.set("container", info.container);
                item.set("duration_s", info.duration_s);
                item.set("fps", info.fps);
                item.set("fps_real", info.fps_real);
                item.set("frame_count", info.frame_count);
                item.set("frame_count_exact", info.frame_count_exact);
                item.set("width", info.width);
                item.set("height", info.height);
                item.set("rotation", info.rotation);
                item.set("codec", info.codec);
                item.set("pix_fmt", info.pix_fmt);
                item.set("bit_rate", info.bit_rate);
                item.set("has_audio", info.has_audio);
                Ok(vec![item])
            }
            Err(DecodeError::NoVideo) if !self.require_video => Ok(vec![item]),
            Err(e) => Err(e.into()),
        }
    }
}

impl StageConfig for ProbeConfig {
    const KIND: &'static str = "probe";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"probe\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new("uri", FieldType::Str, "path or URL of the media file")]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("container", FieldType::Str, "container format name"),
            Field::new("duration_s", FieldType::Float, "duration, seconds"),
            Field::new("fps", FieldType::Float, "average frame rate, frames per second"),
            Field::new("fps_real", FieldType::Float, "real base frame rate (r_frame_rate)"),
            Field::new("frame_count", FieldType::Int, "frames in the video stream"),
            Field::new("frame_count_exact", FieldType::Bool, "frame_count read from the container, not estimated"),
            Field::new("width", FieldType::Int, "displayed width after rotation, pixels"),
            Field::new("height", FieldType::Int, "displayed height after rotation, pixels"),
            Field::new("rotation", FieldType::Int, "clockwise display rotation, degrees"),
            Field::new("codec", FieldType::Str, "video codec name"),
            Field::new("pix_fmt", FieldType::Str, "pixel format"),
            Field::new("bit_rate", FieldType::Int, "overall bit rate, bits per second"),
            Field::new("has_audio", FieldType::Bool, "whether an audio stream exists"),
        ]
    }

    fn default_parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Ok(Runnable::Transform(std::sync::Arc::new(Probe { require_video: self.require_video })))
    }
}

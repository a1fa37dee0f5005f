//! `probe`: container and stream metadata through FFmpeg, without decoding any frame.

use std::path::Path;

use async_trait::async_trait;
use ffmpeg_next as ffmpeg;
use pipeline::{io::fetch_local, Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::decode::DecodeError;

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

/// Metadata of one media file, as `probe` records it.
#[derive(Debug, Clone, PartialEq)]
pub struct MediaInfo {
    /// Container format name(s), as FFmpeg names them ("mov,mp4,m4a,3gp,3g2,mj2").
    pub container: String,
    /// Duration in seconds (container duration, else the video stream's).
    pub duration_s: f64,
    /// Average frame rate of the video stream (frames / duration).
    pub fps: f64,
    /// "Real" base frame rate (r_frame_rate), the lowest rate that represents all timestamps.
    pub fps_real: f64,
    /// Frames in the video stream: the container's count when it has one, else duration x fps.
    pub frame_count: i64,
    /// Whether `frame_count` comes from the container rather than an estimate.
    pub frame_count_exact: bool,
    /// Width as displayed (after rotation), pixels.
    pub width: u32,
    /// Height as displayed (after rotation), pixels.
    pub height: u32,
    /// Clockwise rotation a player applies to the stored frames, degrees (0, 90, 180, 270).
    pub rotation: i64,
    /// Video codec name ("h264", "hevc", "vp9", "av1", ...).
    pub codec: String,
    /// Pixel format of the decoded frames ("yuv420p", ...).
    pub pix_fmt: String,
    /// Overall bit rate, bits per second (0 when unknown).
    pub bit_rate: i64,
    /// Whether the file has an audio stream.
    pub has_audio: bool,
}

/// Probe a local media file. Errors name what FFmpeg could not read.
pub fn probe_file(path: &Path) -> Result<MediaInfo, DecodeError> {
    crate::ffmpeg_init();
    let ictx = ffmpeg::format::input(&path).map_err(|e| DecodeError::Open(path.display().to_string(), e))?;
    let stream = ictx.streams().best(ffmpeg::media::Type::Video).ok_or(DecodeError::NoVideo)?;
    let params = stream.parameters();
    let codec = params.id().name().to_string();
    let decoder = ffmpeg::codec::Context::from_parameters(params)
        .and_then(|c| c.decoder().video())
        .map_err(DecodeError::Decoder)?;
    let (coded_w, coded_h) = (decoder.width(), decoder.height());
    if coded_w == 0 || coded_h == 0 {
        return Err(DecodeError::NoSize);
    }
    let pix_fmt = pixel_format_name(decoder.format());
    let rational = |r: ffmpeg::Rational| {
        if r.denominator() != 0 {
            f64::from(r)
        } else {
            0.0
        }
    };
    let fps = rational(stream.avg_frame_rate());
    let fps_real = rational(stream.rate());
    let tb = rational(stream.time_base());
    let duration_s = if ictx.duration() > 0 {
        ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE)
    } else {
        stream.duration().max(0) as f64 * tb
    };
    let (frame_count, frame_count_exact) = match stream.frames() {
        n if n > 0 => (n, true),
        _ => ((duration_s * fps).round() as i64, false),
    };
    let rotation = display_rotation(&stream);
    let (width, height) = if rotation % 180 == 90 { (coded_h, coded_w) } else { (coded_w, coded_h) };
    Ok(MediaInfo {
        container: ictx.format().name().to_string(),
        duration_s,
        fps,
        fps_real,
        frame_count,
        frame_count_exact,
        width,
        height,
        rotation,
        codec,
        pix_fmt,
        bit_rate: ictx.bit_rate(),
        has_audio: ictx.streams().best(ffmpeg::media::Type::Audio).is_some(),
    })
}

/// Clockwise display rotation in degrees from the stream's display matrix (or legacy `rotate` tag).
pub(crate) fn display_rotation(stream: &ffmpeg::format::stream::Stream) -> i64 {
    for sd in stream.side_data() {
        if sd.kind() == ffmpeg::codec::packet::side_data::Type::DisplayMatrix && sd.data().len() >= 36 {
            // The display matrix is nine native-endian i32 values (16.16 fixed point).
            let m: Vec<i32> =
                sd.data().chunks_exact(4).take(9).map(|c| i32::from_ne_bytes([c[0], c[1], c[2], c[3]])).collect();
            // SAFETY: `m` holds the nine values av_display_rotation_get reads.
            let ccw = unsafe { ffmpeg::ffi::av_display_rotation_get(m.as_ptr()) };
            if ccw.is_nan() {
                return 0;
            }
            // FFmpeg reports counter-clockwise degrees; players rotate clockwise by the negation.
            return (-ccw).round().rem_euclid(360.0) as i64;
        }
    }
    stream.metadata().get("rotate").and_then(|r| r.parse::<i64>().ok()).map_or(0, |r| r.rem_euclid(360))
}

fn pixel_format_name(f: ffmpeg::format::Pixel) -> String {
    let desc: Option<ffmpeg::util::format::pixel::Descriptor> = f.descriptor();
    desc.map_or_else(|| "unknown".to_string(), |d| d.name().to_string())
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

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, String> {
        Ok(Runnable::Transform(std::sync::Arc::new(Probe { require_video: self.require_video })))
    }
}

//! What FFmpeg tells about a media file without decoding a frame: container and stream metadata
//! (the `probe` stage's fields), the display rotation that the decoder applies too, and the error
//! every FFmpeg reader of a file shares.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg_next as ffmpeg;

/// Why a video could not be probed or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The container could not be opened.
    #[error("cannot open {0} as a media file")]
    Open(String, #[source] ffmpeg::Error),
    /// A pipe or device could not be opened for reading.
    #[error("cannot open {0} for reading")]
    OpenPipe(String, #[source] std::io::Error),
    /// The item was cancelled (it timed out) while its video was being read.
    #[error(transparent)]
    Cancelled(#[from] pipeline::cancel::Cancelled),
    /// There is no video stream.
    #[error("no video stream")]
    NoVideo,
    /// The decoder could not be set up.
    #[error("cannot set up the video decoder")]
    Decoder(#[source] ffmpeg::Error),
    /// The pixel converter could not be set up for this format.
    #[error("cannot convert {0:?} frames to RGB")]
    Convert(Pixel, #[source] ffmpeg::Error),
    /// Not a single frame could be decoded.
    #[error("no frame could be decoded")]
    NoFrames,
    /// The video stream declares no frame size.
    #[error("the video stream has no frame size")]
    NoSize,
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
    let ictx = open_input(path)?;
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
pub fn display_rotation(stream: &ffmpeg::format::stream::Stream) -> i64 {
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

/// An FFmpeg demuxer opened by [`open_input`], with the pipe it reads from when the input is not
/// a regular file (fields drop in order: the demuxer before the pipe it may use).
pub(crate) struct Demuxer {
    input: ffmpeg_next::format::context::Input,
    _pipe: Option<std::fs::File>,
}

impl std::ops::Deref for Demuxer {
    type Target = ffmpeg_next::format::context::Input;
    fn deref(&self) -> &Self::Target {
        &self.input
    }
}

impl std::ops::DerefMut for Demuxer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.input
    }
}

/// Open a media file for demuxing so that a read which waits for data gives up once the item
/// being processed is cancelled (it timed out): FFmpeg's interrupt callback reports
/// [`pipeline::cancel::cancelled`], and its read loop then returns "immediate exit requested".
///
/// A FIFO, socket or device is opened here without blocking and handed to FFmpeg as a pipe:
/// opened normally, open(2) would wait for a writer and FFmpeg's blocking read(2) would wait for
/// data without ever asking the callback; non-blocking, FFmpeg retries and asks in between.
pub(crate) fn open_input(path: &std::path::Path) -> Result<Demuxer, DecodeError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    super::ffmpeg_init();
    let name = || path.display().to_string();
    let pipe = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| DecodeError::OpenPipe(name(), e))?,
        ),
        _ => None,
    };
    let url = match &pipe {
        Some(f) => std::path::PathBuf::from(format!("pipe:{}", f.as_raw_fd())),
        None => path.to_path_buf(),
    };
    let input = ffmpeg_next::format::input_with_interrupt(&url, pipeline::cancel::cancelled)
        .map_err(|e| DecodeError::Open(name(), e))?;
    Ok(Demuxer { input, _pipe: pipe })
}

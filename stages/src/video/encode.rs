//! MP4 writing with FFmpeg (ffmpeg-next): packed RGB frames in, H.264 (libx264, constant rate
//! factor) or any other FFmpeg encoder out, yuv420p so every player shows it.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::decode::Image;

/// Why a video could not be written.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// The FFmpeg build has no encoder of this name.
    #[error("FFmpeg has no encoder `{0}` (is it built with it? `ffmpeg -encoders` lists them)")]
    NoEncoder(String),
    /// FFmpeg refused a step; the text says which.
    #[error("cannot {0}")]
    Ffmpeg(&'static str, #[source] ffmpeg::Error),
    /// A frame's size differs from the first frame's.
    #[error("frame of {0}x{1} in a {2}x{3} video")]
    Size(usize, usize, u32, u32),
}

/// Encoder settings.
#[derive(Debug, Clone)]
pub struct EncodeOptions {
    /// FFmpeg encoder name ("libx264", "mpeg4", ...).
    pub codec: String,
    /// Frames per second.
    pub fps: f64,
    /// Constant rate factor (libx264: 0 lossless .. 51 worst; 18 looks lossless, 23 is x264's default).
    pub crf: u32,
    /// libx264 speed/size trade-off ("ultrafast" .. "veryslow").
    pub preset: String,
}

/// libx264's presets, fastest first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum X264Preset {
    /// Fastest, largest files.
    Ultrafast,
    /// Next to fastest.
    Superfast,
    /// Fast, good for previews.
    Veryfast,
    /// Faster than the default.
    Faster,
    /// Slightly faster than the default.
    Fast,
    /// x264's default.
    #[default]
    Medium,
    /// Smaller files, slower.
    Slow,
    /// Smaller still.
    Slower,
    /// Smallest files, slowest.
    Veryslow,
}

impl X264Preset {
    /// The name libx264 knows it by.
    pub(crate) fn name(self) -> String {
        serde_json::to_value(self).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
    }
}

/// A video file being written frame by frame; `finish` completes it.
pub struct Mp4Writer {
    output: ffmpeg::format::context::Output,
    encoder: ffmpeg::encoder::Video,
    scaler: scaling::Context,
    width: u32,
    height: u32,
    time_base: ffmpeg::Rational,
    next_pts: i64,
}

fn ff(what: &'static str) -> impl FnOnce(ffmpeg::Error) -> EncodeError {
    move |e| EncodeError::Ffmpeg(what, e)
}

impl Mp4Writer {
    /// Create `path` for `width x height` frames (odd sizes lose their last column or row, as
    /// 4:2:0 video needs even sizes).
    /// This FFmpeg's `codec` encoder; stages call it at build time to fail before any work.
    pub fn encoder(codec: &str) -> Result<ffmpeg::Codec, EncodeError> {
        super::ffmpeg_init();
        ffmpeg::encoder::find_by_name(codec).ok_or_else(|| EncodeError::NoEncoder(codec.to_string()))
    }

    pub fn create(path: &Path, width: usize, height: usize, options: &EncodeOptions) -> Result<Mp4Writer, EncodeError> {
        let (width, height) = ((width as u32 & !1).max(2), (height as u32 & !1).max(2));
        let codec = Mp4Writer::encoder(&options.codec)?;
        let mut output = ffmpeg::format::output(&path).map_err(ff("create the output file"))?;
        let global_header = output.format().flags().contains(ffmpeg::format::Flags::GLOBAL_HEADER);
        let rate = ffmpeg::Rational::from(options.fps);
        let time_base = rate.invert();
        let mut ctx = ffmpeg::codec::context::Context::new_with_codec(codec)
            .encoder()
            .video()
            .map_err(ff("set up the encoder"))?;
        ctx.set_width(width);
        ctx.set_height(height);
        ctx.set_format(Pixel::YUV420P);
        ctx.set_time_base(time_base);
        ctx.set_frame_rate(Some(rate));
        let mut flags = ffmpeg::codec::Flags::empty();
        if global_header {
            flags |= ffmpeg::codec::Flags::GLOBAL_HEADER;
        }
        let mut opts = ffmpeg::Dictionary::new();
        if options.codec.starts_with("libx26") {
            opts.set("crf", &options.crf.to_string());
            opts.set("preset", &options.preset);
        } else {
            // Encoders without a rate factor take a fixed quantiser instead.
            ctx.set_global_quality(options.crf.clamp(1, 31) as i32 * ffmpeg::ffi::FF_QP2LAMBDA);
            flags |= ffmpeg::codec::Flags::QSCALE;
        }
        ctx.set_flags(flags);
        let encoder = ctx.open_with(opts).map_err(ff("open the encoder"))?;
        let mut stream = output.add_stream(codec).map_err(ff("add a video stream"))?;
        stream.set_parameters(&encoder);
        stream.set_time_base(time_base);
        stream.set_avg_frame_rate(rate);
        output.write_header().map_err(ff("write the file header"))?;
        let scaler =
            scaling::Context::get(Pixel::RGB24, width, height, Pixel::YUV420P, width, height, scaling::Flags::BICUBIC)
                .map_err(ff("set up RGB to YUV conversion"))?;
        Ok(Mp4Writer { output, encoder, scaler, width, height, time_base, next_pts: 0 })
    }

    /// Size of the video's frames (the created size rounded down to even numbers).
    pub fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// Append one packed RGB frame of the writer's size (or one pixel larger, see `create`).
    pub fn write(&mut self, image: &Image) -> Result<(), EncodeError> {
        let (w, h) = (self.width as usize, self.height as usize);
        if image.width & !1 != w || image.height & !1 != h {
            return Err(EncodeError::Size(image.width, image.height, self.width, self.height));
        }
        let mut rgb = ffmpeg::frame::Video::new(Pixel::RGB24, self.width, self.height);
        let stride = rgb.stride(0);
        let dst = rgb.data_mut(0);
        for y in 0..h {
            let src = 3 * y * image.width;
            dst[y * stride..y * stride + 3 * w].copy_from_slice(&image.data[src..src + 3 * w]);
        }
        let mut yuv = ffmpeg::frame::Video::empty();
        self.scaler.run(&rgb, &mut yuv).map_err(ff("convert RGB to YUV"))?;
        yuv.set_pts(Some(self.next_pts));
        self.next_pts += 1;
        self.encoder.send_frame(&yuv).map_err(ff("encode a frame"))?;
        self.drain()
    }

    /// Flush the encoder and write the file's trailer; returns the number of frames written.
    pub fn finish(mut self) -> Result<i64, EncodeError> {
        self.encoder.send_eof().map_err(ff("flush the encoder"))?;
        self.drain()?;
        self.output.write_trailer().map_err(ff("write the file trailer"))?;
        Ok(self.next_pts)
    }

    fn drain(&mut self) -> Result<(), EncodeError> {
        let stream_tb = self.output.stream(0).map(|s| s.time_base()).unwrap_or(self.time_base);
        let mut packet = ffmpeg::Packet::empty();
        while self.encoder.receive_packet(&mut packet).is_ok() {
            packet.set_stream(0);
            packet.rescale_ts(self.time_base, stream_tb);
            packet.write_interleaved(&mut self.output).map_err(ff("write a packet"))?;
        }
        Ok(())
    }
}

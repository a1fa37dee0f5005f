//! Decoding with FFmpeg (ffmpeg-next): frames in presentation order, converted to packed BGR or
//! RGB, with the display rotation applied, for stages that need pixels.

use std::path::Path;

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

/// One decoded picture, packed 8-bit, 3 channels, rows without padding.
#[derive(Debug, Clone)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `width * height * 3` bytes, row-major.
    pub data: Vec<u8>,
}

impl Image {
    /// Rotate clockwise by 90, 180 or 270 degrees (other angles leave the image as it is).
    pub fn rotated(self, clockwise: i64) -> Image {
        let (w, h) = (self.width, self.height);
        let px = |x: usize, y: usize| 3 * (y * w + x);
        let mut out = vec![0u8; self.data.len()];
        let (nw, nh) = match clockwise.rem_euclid(360) {
            90 | 270 => (h, w),
            180 => (w, h),
            _ => return self,
        };
        for y in 0..nh {
            for x in 0..nw {
                // The source pixel that lands on (x, y) of the rotated image.
                let (sx, sy) = match clockwise.rem_euclid(360) {
                    90 => (y, h - 1 - x),
                    180 => (w - 1 - x, h - 1 - y),
                    _ => (w - 1 - y, x),
                };
                let d = 3 * (y * nw + x);
                out[d..d + 3].copy_from_slice(&self.data[px(sx, sy)..px(sx, sy) + 3]);
            }
        }
        Image { width: nw, height: nh, data: out }
    }
}

/// Packed pixel layouts the reader can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Blue, green, red (what OpenCV and PySceneDetect work on).
    Bgr,
    /// Red, green, blue (what the models take).
    Rgb,
}

/// An open video stream.
pub struct VideoReader {
    input: ffmpeg::format::context::Input,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    /// Average frame rate, frames per second.
    pub fps: f64,
    /// Clockwise display rotation, degrees.
    pub rotation: i64,
}

/// Why a video could not be probed or decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The container could not be opened.
    #[error("cannot open {0} as a media file")]
    Open(String, #[source] ffmpeg::Error),
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

impl VideoReader {
    /// Open the best video stream of a file; `threads` decoder threads (0 lets FFmpeg choose).
    pub fn open(path: &Path, threads: usize) -> Result<VideoReader, DecodeError> {
        crate::ffmpeg_init();
        let input = ffmpeg::format::input(&path).map_err(|e| DecodeError::Open(path.display().to_string(), e))?;
        let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or(DecodeError::NoVideo)?;
        let r = stream.avg_frame_rate();
        let fps = if r.denominator() != 0 && r.numerator() != 0 { f64::from(r) } else { f64::from(stream.rate()) };
        let rotation = crate::probe::display_rotation(&stream);
        let mut ctx = ffmpeg::codec::Context::from_parameters(stream.parameters()).map_err(DecodeError::Decoder)?;
        ctx.set_threading(ffmpeg::codec::threading::Config {
            kind: ffmpeg::codec::threading::Type::Frame,
            count: threads,
            safe: true,
        });
        let decoder = ctx.decoder().video().map_err(DecodeError::Decoder)?;
        Ok(VideoReader { stream: stream.index(), input, decoder, fps, rotation })
    }

    /// Decode every frame in presentation order, converted to `layout` at full size with the
    /// display rotation applied, and hand each to `f` with its 0-based index. Stops early when
    /// `f` returns false. Packets the decoder rejects are skipped, as players do. Returns the
    /// number of frames decoded.
    pub fn for_each_frame(
        &mut self,
        layout: Layout,
        mut f: impl FnMut(usize, Image) -> bool,
    ) -> Result<usize, DecodeError> {
        let mut converter: Option<(scaling::Context, Pixel, u32, u32)> = None;
        let target = match layout {
            Layout::Bgr => Pixel::BGR24,
            Layout::Rgb => Pixel::RGB24,
        };
        let rotation = self.rotation;
        self.decode(|index, decoded| {
            let (fmt, w, h) = (decoded.format(), decoded.width(), decoded.height());
            if converter.as_ref().is_none_or(|c| (c.1, c.2, c.3) != (fmt, w, h)) {
                let mut ctx = scaling::Context::get(fmt, w, h, target, w, h, scaling::Flags::BICUBIC)
                    .map_err(|e| DecodeError::Convert(fmt, e))?;
                set_colorspace(&mut ctx, decoded);
                converter = Some((ctx, fmt, w, h));
            }
            let conv = &mut converter.as_mut().expect("set above").0;
            let mut out = ffmpeg::frame::Video::empty();
            conv.run(decoded, &mut out).map_err(|e| DecodeError::Convert(fmt, e))?;
            let image = Image { width: w as usize, height: h as usize, data: packed(&out) }.rotated(rotation);
            Ok(f(index, image))
        })
    }

    /// Decode every frame without converting it (what "decoding alone" costs); returns the count.
    pub fn count_frames(&mut self) -> Result<usize, DecodeError> {
        self.decode(|_, _| Ok(true))
    }

    /// The decoding loop: every frame of the stream in presentation order, then the decoder's
    /// buffered frames at the end. `on_frame` returns false to stop early.
    fn decode(
        &mut self,
        mut on_frame: impl FnMut(usize, &ffmpeg::frame::Video) -> Result<bool, DecodeError>,
    ) -> Result<usize, DecodeError> {
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut count = 0usize;
        let mut packets = self.input.packets();
        let mut ended = false;
        loop {
            if !ended {
                match packets.next() {
                    Some((stream, packet)) => {
                        if stream.index() != self.stream || self.decoder.send_packet(&packet).is_err() {
                            continue;
                        }
                    }
                    None => {
                        ended = true;
                        let _ = self.decoder.send_eof();
                    }
                }
            }
            let mut received = false;
            while self.decoder.receive_frame(&mut decoded).is_ok() {
                received = true;
                let go_on = on_frame(count, &decoded)?;
                count += 1;
                if !go_on {
                    return Ok(count);
                }
            }
            if ended && !received {
                break;
            }
        }
        if count == 0 {
            return Err(DecodeError::NoFrames);
        }
        Ok(count)
    }
}

/// Convert with the frame's own colour matrix and range (BT.709 when tagged, BT.601 otherwise),
/// as OpenCV and PyAV do; swscale would otherwise assume BT.601 limited range for everything.
fn set_colorspace(ctx: &mut scaling::Context, frame: &ffmpeg::frame::Video) {
    use ffmpeg::ffi;
    use ffmpeg::util::color::{Range, Space};
    let cs = match frame.color_space() {
        Space::BT709 => ffi::SWS_CS_ITU709,
        Space::FCC => ffi::SWS_CS_FCC,
        Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        Space::BT2020NCL | Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_DEFAULT,
    };
    let full = i32::from(
        frame.color_range() == Range::JPEG
            || matches!(frame.format(), Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P),
    );
    // SAFETY: the context is valid and the coefficient tables are static FFmpeg data.
    unsafe {
        let coefs = ffi::sws_getCoefficients(cs);
        let dst = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT);
        ffi::sws_setColorspaceDetails(ctx.as_mut_ptr(), coefs, full, dst, 1, 0, 1 << 16, 1 << 16);
    }
}

/// Copy a packed 3-byte-per-pixel frame without its row padding.
fn packed(frame: &ffmpeg::frame::Video) -> Vec<u8> {
    let (w, h, stride) = (frame.width() as usize, frame.height() as usize, frame.stride(0));
    let data = frame.data(0);
    let mut out = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        out.extend_from_slice(&data[y * stride..y * stride + w * 3]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_moves_pixels_clockwise() {
        // 2x1 image: left pixel 1, right pixel 2.
        let img = Image { width: 2, height: 1, data: vec![1, 1, 1, 2, 2, 2] };
        let r = img.clone().rotated(90);
        assert_eq!((r.width, r.height), (1, 2));
        assert_eq!(r.data, vec![1, 1, 1, 2, 2, 2], "left goes to top after a clockwise turn");
        let r = img.clone().rotated(270);
        assert_eq!(r.data, vec![2, 2, 2, 1, 1, 1]);
        assert_eq!(img.clone().rotated(180).data, vec![2, 2, 2, 1, 1, 1]);
    }
}

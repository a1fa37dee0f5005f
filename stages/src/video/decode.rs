//! The decoding core every pixel stage shares (FFmpeg through ffmpeg-next): frames in
//! presentation order or at chosen indices (frame-accurate seek), converted to packed BGR or RGB,
//! display rotation applied, optionally resized to fill a target size and centre-cropped
//! (bicubic); plus uniform frame selection for a target fps and aspect-ratio buckets.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::pixel::Layout;
use super::probe::{display_rotation, open_input, DecodeError, Demuxer};
use super::yuv::{coefficients, colorspace, set_colorspace, target, Target, YuvToRgb};

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

/// A borrowed packed 3-channel image whose rows may be padded (`stride` bytes apart), as the
/// converter hands out frames without copying them.
#[derive(Debug, Clone, Copy)]
pub struct ImageRef<'a> {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Bytes from one row's start to the next's (at least `width * 3`).
    pub stride: usize,
    /// The rows.
    pub data: &'a [u8],
}

impl ImageRef<'_> {
    /// Row `y`'s `width * 3` bytes.
    pub fn row(&self, y: usize) -> &[u8] {
        &self.data[y * self.stride..y * self.stride + 3 * self.width]
    }

    /// An owned copy without row padding.
    pub fn to_image(&self) -> Image {
        let mut data = Vec::with_capacity(3 * self.width * self.height);
        (0..self.height).for_each(|y| data.extend_from_slice(self.row(y)));
        Image { width: self.width, height: self.height, data }
    }

    /// This image rotated clockwise by 0, 90, 180 or 270 degrees (other angles count as 0), into
    /// `out`, whose buffer is reused: one strided copy.
    pub fn rotate_into(&self, clockwise: i64, out: &mut Image) {
        let (w, h, s) = (self.width as isize, self.height as isize, self.stride as isize);
        // Byte offset of rotated pixel (0, 0), and the steps to the next pixel and the next row.
        let (origin, dx, dy) = match clockwise.rem_euclid(360) {
            90 => ((h - 1) * s, -s, 3),
            180 => ((h - 1) * s + 3 * (w - 1), -3, -s),
            270 => (3 * (w - 1), s, -3),
            _ => (0, 3, s),
        };
        let quarter = clockwise.rem_euclid(180) == 90;
        let (nw, nh) = if quarter { (self.height, self.width) } else { (self.width, self.height) };
        (out.width, out.height) = (nw, nh);
        out.data.resize(3 * nw * nh, 0);
        for (y, row) in out.data.chunks_exact_mut(3 * nw).enumerate() {
            let mut o = origin + y as isize * dy;
            for px in row.chunks_exact_mut(3) {
                // In bounds: o walks a row or column of the source inside its w x h pixels.
                let at = o as usize;
                px.copy_from_slice(&self.data[at..at + 3]);
                o += dx;
            }
        }
    }
}

impl Image {
    /// A borrowed view of the image.
    pub fn view(&self) -> ImageRef<'_> {
        ImageRef { width: self.width, height: self.height, stride: 3 * self.width, data: &self.data }
    }

    /// Rotate clockwise by 90, 180 or 270 degrees (other angles leave the image as it is).
    pub fn rotated(self, clockwise: i64) -> Image {
        if !matches!(clockwise.rem_euclid(360), 90 | 180 | 270) {
            return self;
        }
        let mut out = Image { width: 0, height: 0, data: Vec::new() };
        self.view().rotate_into(clockwise, &mut out);
        out
    }

    /// The `width x height` window whose top-left corner is `(x, y)`; it must lie inside.
    pub fn cropped(self, x: usize, y: usize, width: usize, height: usize) -> Image {
        if (x, y, width, height) == (0, 0, self.width, self.height) {
            return self;
        }
        let mut data = Vec::with_capacity(width * height * 3);
        for row in y..y + height {
            let start = 3 * (row * self.width + x);
            data.extend_from_slice(&self.data[start..start + 3 * width]);
        }
        Image { width, height, data }
    }
}

/// How decoded frames are handed out: pixel layout and, optionally, a size to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameFormat {
    /// Channel order.
    pub layout: Layout,
    /// `(width, height)` as displayed: the rotated frame is resized (bicubic) until it covers this
    /// size, keeping its aspect ratio, then centre-cropped to it. `None` keeps the full frame.
    pub fill: Option<(u32, u32)>,
}

impl FrameFormat {
    /// Full-size frames in `layout`.
    pub fn full(layout: Layout) -> FrameFormat {
        FrameFormat { layout, fill: None }
    }
}

/// The pixels of each displayed frame (after rotation) that a consumer's result depends on, so
/// that conversion can skip the rest; pixels outside them may then hold any bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PixelsRead {
    /// Per displayed row, whether it is read.
    pub rows: Vec<bool>,
    /// Per displayed column, whether it is read.
    pub columns: Vec<bool>,
    /// Hand out only the pixels read, packed into an image of the read columns by the read rows
    /// of the frame as stored, instead of the full frame: for a consumer that reads a grid of
    /// pixels and nothing else (a resize that samples one source pixel per output pixel).
    pub packed: bool,
}

/// Frames compared where two parts of a video meet ([`VideoReader::for_each_frame_in_parts`]).
pub const OVERLAP: usize = 4;

/// The fewest frames (estimated from the time span) worth a part of its own: a part costs an
/// open, a seek and [`OVERLAP`] frames decoded twice.
const MIN_PART_FRAMES: f64 = 32.0;

/// A consumer of one part of a video's frames, in presentation order
/// ([`VideoReader::for_each_frame_in_parts`]).
pub trait PartConsumer: Send {
    /// What it gives back for its part.
    type Output: Send;
    /// The next frame of its part, as stored (the display rotation not applied).
    fn frame(&mut self, image: ImageRef<'_>);
    /// Its result once the part is decoded.
    fn finish(self) -> Self::Output;
}

/// The frames at the edges of a decoded part, to check that consecutive parts meet exactly.
struct PartEdges {
    /// Its first frames (up to [`OVERLAP`]; none for the first part).
    head: Vec<ffmpeg::frame::Video>,
    /// Up to [`OVERLAP`] frames decoded past its end.
    tail: Vec<ffmpeg::frame::Video>,
    /// Every frame had a timestamp above the one before (and a later part's first frame is its
    /// keyframe).
    rising: bool,
}

impl PartEdges {
    /// Whether the part `next`, decoded from its keyframe, starts with the very frames this part
    /// (decoded up to that keyframe) went on to decode past its end.
    fn meets(&self, next: &PartEdges) -> bool {
        let n = self.tail.len().min(next.head.len());
        self.rising && next.rising && n > 0 && self.tail[..n].iter().zip(&next.head[..n]).all(|(a, b)| same_frame(a, b))
    }
}

/// A decoded part: its keyframe's timestamp, and what its consumer gave with its edges.
type DecodedPart<O> = (i64, Result<(O, PartEdges), DecodeError>);

/// What splitting a video into parts shares among the parts' threads
/// ([`VideoReader::for_each_frame_in_parts`]).
struct Splitter<'a, C: PartConsumer> {
    path: PathBuf,
    /// Frames per stream tick.
    frames_per_tick: f64,
    /// Where the stream ends (estimated), stream ticks.
    stream_end: i64,
    layout: Layout,
    reads: &'a (dyn Fn(usize, usize) -> PixelsRead + Sync),
    more_parts: &'a (dyn Fn() -> usize + Sync),
    consumer: &'a (dyn Fn() -> C + Sync),
    stop: &'a AtomicBool,
    /// The item's cancellation token, for the parts' threads.
    token: Option<pipeline::cancel::Cancel>,
    /// The parts decoded on threads of their own, as they end.
    parts: std::sync::Mutex<Vec<DecodedPart<C::Output>>>,
}

impl<'a, C: PartConsumer> Splitter<'a, C> {
    /// Decode the first part of the video on this thread (the others start on threads of
    /// `scope` as it, or they, split).
    fn first_part<'scope>(
        &'scope self,
        reader: &mut VideoReader,
        scope: &'scope std::thread::Scope<'scope, '_>,
    ) -> Result<(C::Output, PartEdges), DecodeError> {
        let (mut first, mut end) = ((self.consumer)(), i64::MAX);
        let converter = self.converter(reader);
        let edges = reader
            .decode_part(converter, None, &mut end, &mut first, self.stop, |pts, end| self.split(scope, pts, end));
        // The other parts stop early once the first has failed.
        self.stop.store(edges.is_err(), Ordering::Relaxed);
        Ok((first.finish(), edges?))
    }

    /// A converter for a part read by `reader`.
    fn converter(&self, reader: &VideoReader) -> Converter<'a> {
        Converter::new(FrameFormat::full(self.layout), reader.rotation, Some(self.reads))
    }

    /// The outputs of all parts in order, the first given, once every part has ended: `None`
    /// when a part failed or two parts do not meet exactly (the video must then be decoded
    /// again in one part).
    fn outputs(
        &self,
        first: Result<(C::Output, PartEdges), DecodeError>,
    ) -> Result<Option<Vec<C::Output>>, DecodeError> {
        let (output, mut before) = first?;
        let mut outputs = vec![output];
        let mut parts = std::mem::take(&mut *self.parts.lock().unwrap_or_else(|e| e.into_inner()));
        parts.sort_by_key(|(start, _)| *start);
        for (_, part) in parts {
            match part {
                Ok((output, edges)) if before.meets(&edges) => {
                    outputs.push(output);
                    before = edges;
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(outputs))
    }

    /// Split the part now at `pts` and ending at `end` when cores are idle: lower `end` to the
    /// first new part's keyframe and start the new parts. False when it should not be asked
    /// again (its keyframes are too far apart).
    fn split<'scope>(&'scope self, scope: &'scope std::thread::Scope<'scope, '_>, pts: i64, end: &mut i64) -> bool {
        let wanted = (self.more_parts)();
        if wanted == 0 {
            return true;
        }
        let last = if *end == i64::MAX { self.stream_end } else { *end };
        let span = last.saturating_sub(pts);
        let most = (span as f64 * self.frames_per_tick / MIN_PART_FRAMES) as usize;
        let n = wanted.min(most.saturating_sub(1));
        let mut starts: Vec<(VideoReader, i64)> = Vec::new();
        for j in 1..=n as i64 {
            let target = pts + (span as i128 * j as i128 / (n as i128 + 1)) as i64;
            let after = starts.last().map_or(pts, |s| s.1);
            if let Ok(Some((reader, keyframe))) = VideoReader::open_at_keyframe(&self.path, target) {
                if keyframe > after && keyframe < last {
                    starts.push((reader, keyframe));
                }
            }
        }
        if starts.is_empty() {
            // Too short, or no keyframe in reach: the rest only gets shorter.
            return false;
        }
        let ends: Vec<i64> = starts.iter().skip(1).map(|s| s.1).chain([*end]).collect();
        *end = starts[0].1;
        for ((mut reader, start), mut part_end) in starts.into_iter().zip(ends) {
            let mut part = (self.consumer)();
            scope.spawn(move || {
                let run = || {
                    let converter = self.converter(&reader);
                    let split = |pts, end: &mut i64| self.split(scope, pts, end);
                    let edges =
                        reader.decode_part(converter, Some(start), &mut part_end, &mut part, self.stop, split)?;
                    Ok((part.finish(), edges))
                };
                let decoded = match &self.token {
                    Some(token) => token.scope(run),
                    None => run(),
                };
                self.parts.lock().unwrap_or_else(|e| e.into_inner()).push((start, decoded));
            });
        }
        true
    }
}

/// Whether two decoded frames have the same timestamp, format, size and bytes.
fn same_frame(a: &ffmpeg::frame::Video, b: &ffmpeg::frame::Video) -> bool {
    if (a.timestamp(), a.format(), a.width(), a.height(), a.planes())
        != (b.timestamp(), b.format(), b.width(), b.height(), b.planes())
    {
        return false;
    }
    (0..a.planes()).all(|p| {
        // SAFETY: plain arithmetic on the pixel format's descriptor.
        let bytes = unsafe { ffmpeg::ffi::av_image_get_linesize(a.format().into(), a.width() as i32, p as i32) };
        let (bytes, rows) = (bytes.max(0) as usize, a.plane_height(p) as usize);
        (0..rows).all(|y| a.data(p)[y * a.stride(p)..][..bytes] == b.data(p)[y * b.stride(p)..][..bytes])
    })
}

/// An open video stream.
pub struct VideoReader {
    path: PathBuf,
    threads: usize,
    input: Demuxer,
    stream: usize,
    decoder: ffmpeg::decoder::Video,
    /// Seconds per tick of the stream's timestamps.
    time_base: f64,
    /// Timestamp of the stream's first frame, in stream ticks.
    start_pts: i64,
    /// Nothing decoded or sought yet: sequential decoding starts at frame 0.
    fresh: bool,
    /// A packet read ahead (the keyframe a part starts at), decoded first.
    pending: Option<ffmpeg::Packet>,
    /// Average frame rate, frames per second.
    pub fps: f64,
    /// Clockwise display rotation, degrees.
    pub rotation: i64,
}

impl VideoReader {
    /// Open the best video stream of a file; `threads` decoder threads (0 lets FFmpeg choose).
    pub fn open(path: &Path, threads: usize) -> Result<VideoReader, DecodeError> {
        let input = open_input(path)?;
        let stream = input.streams().best(ffmpeg::media::Type::Video).ok_or(DecodeError::NoVideo)?;
        let r = stream.avg_frame_rate();
        let fps = if r.denominator() != 0 && r.numerator() != 0 { f64::from(r) } else { f64::from(stream.rate()) };
        let rotation = display_rotation(&stream);
        let mut ctx = ffmpeg::codec::Context::from_parameters(stream.parameters()).map_err(DecodeError::Decoder)?;
        ctx.set_threading(ffmpeg::codec::threading::Config {
            kind: ffmpeg::codec::threading::Type::Frame,
            count: threads,
            safe: true,
        });
        let decoder = ctx.decoder().video().map_err(DecodeError::Decoder)?;
        let time_base = f64::from(stream.time_base());
        let start_pts = Some(stream.start_time()).filter(|&t| t != ffmpeg::ffi::AV_NOPTS_VALUE).unwrap_or(0);
        Ok(VideoReader {
            path: path.to_path_buf(),
            threads,
            stream: stream.index(),
            input,
            decoder,
            time_base,
            start_pts,
            fresh: true,
            pending: None,
            fps,
            rotation,
        })
    }

    /// Frame size as displayed (after rotation), pixels.
    pub fn size(&self) -> (u32, u32) {
        let (w, h) = (self.decoder.width(), self.decoder.height());
        if self.rotation.rem_euclid(180) == 90 {
            (h, w)
        } else {
            (w, h)
        }
    }

    /// Decode every frame in presentation order, converted to `format` with the display rotation
    /// applied, and lend each to `f` with its 0-based index (one buffer serves every frame). Stops
    /// early when `f` returns false. Packets the decoder rejects are skipped, as players do.
    /// Returns the number of frames decoded.
    pub fn for_each_frame(
        &mut self,
        format: FrameFormat,
        mut f: impl FnMut(usize, ImageRef<'_>) -> bool,
    ) -> Result<usize, DecodeError> {
        self.rewind()?;
        let mut converter = Converter::new(format, self.rotation, None);
        self.decode(|index, decoded| Ok(f(index, converter.convert(decoded)?)))
    }

    /// [`Self::for_each_frame`] at full size for a consumer that reads only part of each frame and
    /// applies the display rotation itself ([`Self::rotation`]): frames are handed out as stored,
    /// `reads` says which part of the displayed `width x height` frame is read (asked again if the
    /// stream changes size), and only the source rows holding it are converted. What a shot
    /// detector that shrinks frames needs: with a 5:1 resize it reads a fifth of the rows, and it
    /// can shrink a rotated frame without copying it upright first.
    ///
    /// The video may be decoded in parts on several threads: `more_parts` is asked before each
    /// frame of each part (until it says 0 or a split of that part fails), and when it says `n`,
    /// the rest of that part is split at keyframes into up to `n + 1` parts, each decoded by its
    /// own reader (one decoder thread) on its own thread, fed to its own consumer from
    /// `consumer` (called on the splitting thread). Returns the consumers' outputs in the order
    /// of their parts.
    ///
    /// A part decoded from its keyframe gives the frames sequential decoding gives from there
    /// when the keyframe is a clean random access point; that is checked, not assumed: where two
    /// parts meet, the first decodes [`OVERLAP`] frames past its end and they must equal the
    /// second's first frames byte for byte, and every part's timestamps must rise. If any check
    /// fails, the video is decoded again in one part, so the outputs are always those of
    /// sequential decoding. Only regular files of a known duration are split.
    pub fn for_each_frame_in_parts<C: PartConsumer>(
        &mut self,
        layout: Layout,
        reads: &(dyn Fn(usize, usize) -> PixelsRead + Sync),
        more_parts: &(dyn Fn() -> usize + Sync),
        consumer: &(dyn Fn() -> C + Sync),
    ) -> Result<Vec<C::Output>, DecodeError> {
        self.rewind()?;
        let stop = AtomicBool::new(false);
        if let Some(stream_end) = self.split_end() {
            let splitter = Splitter {
                path: self.path.clone(),
                frames_per_tick: self.time_base * self.fps,
                stream_end,
                layout,
                reads,
                more_parts,
                consumer,
                stop: &stop,
                token: pipeline::cancel::current(),
                parts: std::sync::Mutex::new(Vec::new()),
            };
            // Every part's thread has ended when the scope does.
            let first = std::thread::scope(|scope| splitter.first_part(self, scope));
            if let Some(outputs) = splitter.outputs(first)? {
                return Ok(outputs);
            }
            stop.store(false, Ordering::Relaxed);
            self.rewind()?;
        }
        let (mut whole, mut end) = (consumer(), i64::MAX);
        let converter = Converter::new(FrameFormat::full(layout), self.rotation, Some(reads));
        self.decode_part(converter, None, &mut end, &mut whole, &stop, |_, _| false)?;
        Ok(vec![whole.finish()])
    }

    /// Decode the frames of one part, from the keyframe at `start` (or the stream's start) to
    /// before `end`, handing each to `part` as `converter` converts it; stops early once `stop`
    /// is set. `split` may lower
    /// `end`: it is asked before each frame while the timestamps have risen, until it returns
    /// false.
    fn decode_part<C: PartConsumer>(
        &mut self,
        mut converter: Converter<'_>,
        start: Option<i64>,
        end: &mut i64,
        part: &mut C,
        stop: &AtomicBool,
        mut split: impl FnMut(i64, &mut i64) -> bool,
    ) -> Result<PartEdges, DecodeError> {
        let mut splittable = true;
        let mut edges = PartEdges { head: Vec::new(), tail: Vec::new(), rising: true };
        let mut last = None;
        self.decode(|_, decoded| {
            if stop.load(Ordering::Relaxed) {
                return Ok(false);
            }
            let pts = decoded.timestamp().filter(|&pts| last.is_none_or(|last| pts > last));
            let Some(pts) = pts.filter(|_| edges.rising) else {
                edges.rising = false;
                // A bounded part is of no use any more (the video will be decoded again in one
                // part); the first part of an unsplit video goes on, unsplit.
                if start.is_some() || *end != i64::MAX {
                    return Ok(false);
                }
                part.frame(converter.convert(decoded)?);
                return Ok(true);
            };
            last = Some(pts);
            if let Some(start) = start {
                if pts < start {
                    // A leading frame of an open GOP: it belongs to the part before.
                    return Ok(true);
                }
                if edges.head.is_empty() && pts != start {
                    edges.rising = false;
                    return Ok(false);
                }
            }
            if pts >= *end {
                edges.tail.push(frame_ref(decoded)?);
                return Ok(edges.tail.len() < OVERLAP);
            }
            if start.is_some() && edges.head.len() < OVERLAP {
                edges.head.push(frame_ref(decoded)?);
            }
            if splittable {
                splittable = split(pts, end);
            }
            part.frame(converter.convert(decoded)?);
            Ok(true)
        })?;
        Ok(edges)
    }

    /// Decode the frames at `indices` (ascending; repeats allowed) and hand each to `f` with its
    /// position in `indices`; stops early when `f` returns false. Seeks to the keyframe before
    /// the first index and counts frames by timestamp from there, so a clip in the middle of a
    /// long video costs only its own GOPs; when timestamps cannot be trusted it decodes from the
    /// start instead. Returns how many frames were handed out (fewer than asked when the video
    /// ends first).
    pub fn frames_at(
        &mut self,
        indices: &[usize],
        format: FrameFormat,
        mut f: impl FnMut(usize, Image) -> bool,
    ) -> Result<usize, DecodeError> {
        let Some(&first) = indices.first() else { return Ok(0) };
        debug_assert!(indices.windows(2).all(|w| w[0] <= w[1]), "indices must be ascending");
        let mut converter = Converter::new(format, self.rotation, None);
        let mut handed = 0usize;
        let mut emit = |index: usize, decoded: &ffmpeg::frame::Video, handed: &mut usize| {
            let mut image: Option<Image> = None;
            while *handed < indices.len() && indices[*handed] <= index {
                let img = match &image {
                    Some(i) => i.clone(),
                    None => image.insert(converter.convert(decoded)?.to_image()).clone(),
                };
                *handed += 1;
                if !f(*handed - 1, img) {
                    return Ok(false);
                }
            }
            Ok(*handed < indices.len())
        };
        if first > 0 && self.seek_before(first) {
            let (tb, start, fps) = (self.time_base, self.start_pts, self.fps);
            // Frame index from a timestamp: ticks since the first frame, in frames.
            let index_of = move |t: i64| ((t - start) as f64 * tb * fps).round() as i64;
            // No index asks for the frame (before the first, between and after the asked ones).
            let unwanted = |t: i64| usize::try_from(index_of(t)).map_or(true, |i| indices.binary_search(&i).is_err());
            let mut trusted = true;
            let result = self.decode_skipping(unwanted, |count, decoded| {
                let index = decoded.timestamp().map(index_of);
                match index {
                    Some(i) if count > 0 || i <= first as i64 => {
                        if i < first as i64 {
                            return Ok(true);
                        }
                        emit(i as usize, decoded, &mut handed)
                    }
                    // No timestamp, or the seek landed after the first wanted frame.
                    _ => {
                        trusted = false;
                        Ok(false)
                    }
                }
            });
            match result {
                Ok(_) if trusted => return Ok(handed),
                Err(DecodeError::NoFrames) | Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        self.rewind()?;
        self.decode(|index, decoded| emit(index, decoded, &mut handed))?;
        Ok(handed)
    }

    /// Make sequential decoding start at frame 0 again (by reopening: not every container seeks
    /// back reliably, and reopening is cheap next to decoding).
    fn rewind(&mut self) -> Result<(), DecodeError> {
        if !self.fresh {
            *self = VideoReader::open(&self.path.clone(), self.threads)?;
        }
        Ok(())
    }

    /// Seek to the last keyframe at or before frame `index`; false when the container cannot seek.
    fn seek_before(&mut self, index: usize) -> bool {
        // Aim half a frame late so rounding never skips a keyframe sitting exactly on `index`.
        let seconds = self.start_pts as f64 * self.time_base + (index as f64 + 0.5) / self.fps;
        let ts = (seconds * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        self.fresh = false;
        if self.input.seek(ts, ..ts).is_err() {
            return false;
        }
        self.decoder.flush();
        true
    }

    /// Whether [`Self::for_each_frame_in_parts`] may split this video: a regular file (a pipe
    /// cannot be read twice) whose duration is known.
    pub fn can_split(&self) -> bool {
        self.split_end().is_some()
    }

    /// Where the stream ends, in stream ticks (its start plus its duration, or the container's),
    /// when the file says and can be split.
    fn split_end(&self) -> Option<i64> {
        if !self.path.is_file() {
            return None;
        }
        let stream = self.input.stream(self.stream)?;
        let known = |t: i64| Some(t).filter(|&t| t != ffmpeg::ffi::AV_NOPTS_VALUE && t > 0);
        let container = || {
            let seconds = known(self.input.duration())? as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE);
            Some((seconds / self.time_base) as i64)
        };
        Some(self.start_pts + known(stream.duration()).or_else(container)?)
    }

    /// A new reader (one decoder thread) of the file at `path`, positioned at the last keyframe
    /// at or before `target` (stream ticks), with that keyframe's timestamp; `None` when the file
    /// cannot seek there or the keyframe has no timestamp.
    fn open_at_keyframe(path: &Path, target: i64) -> Result<Option<(VideoReader, i64)>, DecodeError> {
        let mut reader = VideoReader::open(path, 1)?;
        reader.fresh = false;
        let ts = (target as f64 * reader.time_base * f64::from(ffmpeg::ffi::AV_TIME_BASE)) as i64;
        if reader.input.seek(ts, ..ts).is_err() {
            return Ok(None);
        }
        // The demuxer lands on a keyframe; skip anything before it (a bounded search).
        for _ in 0..256 {
            let mut packet = ffmpeg::Packet::empty();
            match packet.read(&mut reader.input) {
                Ok(()) if packet.stream() == reader.stream && packet.is_key() => {
                    let Some(pts) = packet.pts() else { return Ok(None) };
                    reader.pending = Some(packet);
                    return Ok(Some((reader, pts)));
                }
                Err(ffmpeg::Error::Eof) => return Ok(None),
                _ => {}
            }
        }
        Ok(None)
    }

    /// Decode every frame without converting it (what "decoding alone" costs); returns the count.
    pub fn count_frames(&mut self) -> Result<usize, DecodeError> {
        self.rewind()?;
        self.decode(|_, _| Ok(true))
    }

    /// The decoding loop: every frame of the stream in presentation order, then the decoder's
    /// buffered frames at the end. `on_frame` returns false to stop early. Packets that cannot
    /// be read are skipped; the loop ends early with [`DecodeError::Cancelled`] once the item is
    /// cancelled (checked before every packet and frame).
    fn decode(
        &mut self,
        on_frame: impl FnMut(usize, &ffmpeg::frame::Video) -> Result<bool, DecodeError>,
    ) -> Result<usize, DecodeError> {
        self.decode_skipping(|_| false, on_frame)
    }

    /// [`Self::decode`], letting the decoder drop the packets of non-reference frames (B-frames
    /// no other frame is predicted from) whose timestamp `unwanted` names: they would be decoded
    /// only to be thrown away, and dropping them changes no other frame. A packet without a
    /// timestamp is always decoded; decoders that cannot tell (VP8, AV1) decode everything.
    fn decode_skipping(
        &mut self,
        unwanted: impl Fn(i64) -> bool,
        mut on_frame: impl FnMut(usize, &ffmpeg::frame::Video) -> Result<bool, DecodeError>,
    ) -> Result<usize, DecodeError> {
        self.fresh = false;
        let mut decoded = ffmpeg::frame::Video::empty();
        let mut count = 0usize;
        let mut ended = false;
        loop {
            pipeline::cancel::check()?;
            if !ended {
                let mut packet = ffmpeg::Packet::empty();
                let read = match self.pending.take() {
                    Some(pending) => {
                        packet = pending;
                        Ok(())
                    }
                    None => packet.read(&mut self.input),
                };
                match read {
                    Ok(()) => {
                        if packet.stream() != self.stream {
                            continue;
                        }
                        let discard = if packet.pts().is_some_and(&unwanted) {
                            ffmpeg::ffi::AVDiscard::AVDISCARD_NONREF
                        } else {
                            ffmpeg::ffi::AVDiscard::AVDISCARD_DEFAULT
                        };
                        // SAFETY: the decoder's codec context is open and owned by this reader;
                        // `skip_frame` is a plain field the decoder reads as each frame starts.
                        unsafe { (*self.decoder.as_mut_ptr()).skip_frame = discard };
                        if self.decoder.send_packet(&packet).is_err() {
                            continue;
                        }
                    }
                    Err(ffmpeg::Error::Eof) => {
                        ended = true;
                        let _ = self.decoder.send_eof();
                    }
                    Err(_) => continue,
                }
            }
            let mut received = false;
            while self.decoder.receive_frame(&mut decoded).is_ok() {
                pipeline::cancel::check()?;
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

/// Converts decoded frames to packed images of one [`FrameFormat`], rebuilding its conversion
/// when the stream changes size or pixel format mid-way.
struct Converter<'r> {
    format: FrameFormat,
    rotation: i64,
    /// What the consumer reads (full-size frames, handed out unrotated).
    reads: Option<&'r dyn Fn(usize, usize) -> PixelsRead>,
    /// The conversion and the (format, width, height) of the frames it was built for.
    conversion: Option<(Conversion, Pixel, u32, u32)>,
    /// The stored rows and columns read, when the consumer wants them packed
    /// ([`PixelsRead::packed`]).
    grid: Option<Grid>,
    /// Scaled size before rotation, and the crop window after it.
    scaled: (u32, u32),
    crop: (usize, usize, usize, usize),
    /// The conversion's output frame and the rotated/cropped image, reused from frame to frame:
    /// fresh megabyte buffers per frame cost more in page faults than the conversion itself.
    out: ffmpeg::frame::Video,
    image: Image,
}

/// The stored rows and the stored columns of the pixels a consumer wants packed, ascending.
type Grid = (Vec<usize>, Vec<usize>);

/// How one stream's frames are converted.
enum Conversion {
    /// By swscale: whole frames, or only the output row slices `(first, count)` listed.
    Swscale(scaling::Context, Option<Vec<(u32, u32)>>),
    /// At full size by our bit-exact copy of swscale's arithmetic (8-bit 4:4:4 and 4:2:0), only
    /// the source rows marked and, when listed, only the columns listed: swscale's general
    /// path, which 4:4:4 and odd-height 4:2:0 take, cannot skip rows cheaply, and its direct
    /// 4:2:0 converter converts whole rows in pairs. The rows ours leaves to swscale
    /// ([`YuvToRgb::own_rows`]) come from the scaler, as the output slices listed, when any is
    /// read.
    Own(YuvToRgb, Vec<bool>, Option<Vec<usize>>, Option<(scaling::Context, Vec<(u32, u32)>)>),
}

impl<'r> Converter<'r> {
    fn new(format: FrameFormat, rotation: i64, reads: Option<&'r dyn Fn(usize, usize) -> PixelsRead>) -> Self {
        Converter {
            format,
            rotation,
            reads: reads.filter(|_| format.fill.is_none()),
            conversion: None,
            grid: None,
            scaled: (0, 0),
            crop: (0, 0, 0, 0),
            out: ffmpeg::frame::Video::empty(),
            image: Image { width: 0, height: 0, data: Vec::new() },
        }
    }

    /// The conversion for frames like `decoded`, scaled to `self.scaled`, and the stored rows and
    /// columns read when the consumer wants them packed.
    fn build(&self, decoded: &ffmpeg::frame::Video) -> Result<(Conversion, Option<Grid>), DecodeError> {
        let (fmt, w, h) = (decoded.format(), decoded.width(), decoded.height());
        let (matrix, full_range) = colorspace(decoded);
        let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, matrix, full_range);
        let quarter = self.rotation.rem_euclid(180) == 90;
        let (dw, dh) = if quarter { (h, w) } else { (w, h) };
        let read = self.reads.map(|reads| reads(dw as usize, dh as usize));
        let rows = read.as_ref().map(|read| source_rows(read, self.rotation, h as usize));
        let all_columns = read.as_ref().map(|read| source_columns(read, self.rotation, w as usize));
        let listed = |marked: &[bool]| (0..marked.len()).filter(|&i| marked[i]).collect::<Vec<usize>>();
        let grid = match (&read, &rows, &all_columns) {
            (Some(read), Some(rows), Some(columns)) if read.packed => Some((listed(rows), listed(columns))),
            _ => None,
        };
        // The stored columns read, listed when they are few (a 5:1 shrink reads one in five):
        // converting just those pixels then beats converting whole rows.
        let columns = all_columns.map(|columns| listed(&columns)).filter(|listed| 4 * listed.len() <= w as usize);
        // Our 4:4:4 and odd-height 4:2:0 rows vectorise and beat swscale's general path; our
        // even-height 4:2:0 conversion is per pixel and beats swscale's SIMD rows only on few
        // columns.
        let worth_it = match fmt {
            Pixel::YUV444P | Pixel::YUVJ444P => true,
            Pixel::YUV420P | Pixel::YUVJ420P => columns.is_some() || h % 2 == 1,
            _ => false,
        };
        let (sw, sh) = self.scaled;
        let scaler = || {
            let mut ctx = scaling::Context::get(fmt, w, h, target(self.format.layout), sw, sh, scaling::Flags::BICUBIC)
                .map_err(|e| DecodeError::Convert(fmt, e))?;
            configure(&mut ctx);
            Ok::<_, DecodeError>(ctx)
        };
        if worth_it && self.scaled == (w, h) {
            let (table, layout) = (coefficients(matrix), self.format.layout);
            if let Some(own) = YuvToRgb::matching_swscale(fmt, (w, h), table, full_range, layout, configure) {
                let rows = rows.unwrap_or_else(|| vec![true; h as usize]);
                let columns = columns.filter(|_| !matches!(own, YuvToRgb::General420(..)));
                // The rows ours leaves to swscale (the last two at most), when any is read.
                let left = own.own_rows(h as usize);
                let tail = match rows[left..].contains(&true) {
                    true => Some((scaler()?, vec![(left as u32, h - left as u32)])),
                    false => None,
                };
                return Ok((Conversion::Own(own, rows, columns, tail), grid));
            }
        }
        let mut ctx = scaler()?;
        // SAFETY: the context is valid.
        let align = unsafe { ffmpeg::ffi::sws_receive_slice_alignment(ctx.as_mut_ptr()) } as usize;
        // Only swscale's direct YUV -> RGB converter (the one that asks for slices of 2 rows)
        // converts rows independently; its general path re-filters the chroma lines around every
        // slice's start, which costs more than the skipped rows save (measured: 10% slower on
        // the odd-height MPEG-2 video).
        let slices = rows.filter(|_| align > 1).and_then(|rows| row_slices(&rows, align));
        Ok((Conversion::Swscale(ctx, slices), grid))
    }

    /// Convert one decoded frame; the image is valid until the next call. Upright full frames are
    /// lent straight from the conversion's output, without a copy.
    fn convert(&mut self, decoded: &ffmpeg::frame::Video) -> Result<ImageRef<'_>, DecodeError> {
        let (fmt, w, h) = (decoded.format(), decoded.width(), decoded.height());
        if self.conversion.as_ref().is_none_or(|c| (c.1, c.2, c.3) != (fmt, w, h)) {
            let quarter = self.rotation.rem_euclid(180) == 90;
            let (dw, dh) = if quarter { (h, w) } else { (w, h) };
            let (rw, rh, crop) = fill_plan(dw, dh, self.format.fill);
            self.scaled = if quarter { (rh, rw) } else { (rw, rh) };
            self.crop = crop;
            let (conversion, grid) = self.build(decoded)?;
            (self.conversion, self.grid) = (Some((conversion, fmt, w, h)), grid);
            self.out = ffmpeg::frame::Video::new(target(self.format.layout), self.scaled.0, self.scaled.1);
        }
        let stride = self.out.stride(0);
        // Our conversion of listed columns writes a wanted grid packed; the others write it in
        // place, to be gathered below.
        let mut packed = false;
        match &mut self.conversion.as_mut().expect("set above").0 {
            Conversion::Swscale(ctx, None) => ctx.run(decoded, &mut self.out),
            Conversion::Swscale(ctx, Some(slices)) => convert_slices(ctx, decoded, &mut self.out, slices),
            Conversion::Own(own, rows, columns, tail) => {
                packed = self.grid.is_some() && columns.is_some();
                let target = Target { layout: self.format.layout, packed, out: self.out.data_mut(0), stride };
                own.convert_rows(decoded, rows, columns.as_deref(), target);
                match tail {
                    Some((ctx, slices)) => convert_slices(ctx, decoded, &mut self.out, slices),
                    None => Ok(()),
                }
            }
        }
        .map_err(|e| DecodeError::Convert(fmt, e))?;
        let (width, height) = (self.scaled.0 as usize, self.scaled.1 as usize);
        let whole = ImageRef { width, height, stride, data: self.out.data(0) };
        if let Some((rows, columns)) = &self.grid {
            if packed {
                return Ok(ImageRef { width: columns.len(), height: rows.len(), stride, data: self.out.data(0) });
            }
            let image = &mut self.image;
            (image.width, image.height) = (columns.len(), rows.len());
            image.data.clear();
            for &y in rows {
                let row = whole.row(y);
                image.data.extend(columns.iter().flat_map(|&x| [row[3 * x], row[3 * x + 1], row[3 * x + 2]]));
            }
            return Ok(self.image.view());
        }
        let (x, y, cw, ch) = self.crop;
        // A consumer that says what it reads gets frames as stored (and full size: no crop).
        if self.reads.is_some() || (self.rotation.rem_euclid(360) == 0 && (x, y, cw, ch) == (0, 0, width, height)) {
            return Ok(whole);
        }
        whole.rotate_into(self.rotation, &mut self.image);
        if (x, y, cw, ch) != (0, 0, self.image.width, self.image.height) {
            self.image = std::mem::replace(&mut self.image, Image { width: 0, height: 0, data: Vec::new() })
                .cropped(x, y, cw, ch);
        }
        Ok(self.image.view())
    }
}

/// A new reference to a decoded frame's buffers (no copy), to hand it to another thread while the
/// decoder goes on with its own.
fn frame_ref(frame: &ffmpeg::frame::Video) -> Result<ffmpeg::frame::Video, DecodeError> {
    let mut copy = ffmpeg::frame::Video::empty();
    // SAFETY: both frames are valid; av_frame_ref takes a reference to the source's
    // reference-counted buffers (or copies them when they are not reference-counted).
    match unsafe { ffmpeg::ffi::av_frame_ref(copy.as_mut_ptr(), frame.as_ptr()) } {
        0.. => Ok(copy),
        status => Err(DecodeError::Decoder(ffmpeg::Error::from(status))),
    }
}

/// Which rows of the unrotated `height`-row frame hold the displayed pixels in `read`: the
/// displayed rows themselves, or with a quarter turn the displayed columns.
fn source_rows(read: &PixelsRead, clockwise: i64, height: usize) -> Vec<bool> {
    match clockwise.rem_euclid(360) {
        // Displayed (x, y) comes from source row h - 1 - x (90), h - 1 - y (180) or x (270).
        90 => (0..height).map(|r| read.columns[height - 1 - r]).collect(),
        180 => (0..height).map(|r| read.rows[height - 1 - r]).collect(),
        270 => read.columns.clone(),
        _ => read.rows.clone(),
    }
}

/// Which columns of the unrotated `width`-column frame hold the displayed pixels in `read`: the
/// displayed columns themselves, or with a quarter turn the displayed rows.
fn source_columns(read: &PixelsRead, clockwise: i64, width: usize) -> Vec<bool> {
    match clockwise.rem_euclid(360) {
        // Displayed (x, y) comes from source column y (90), w - 1 - x (180) or w - 1 - y (270).
        90 => read.rows.clone(),
        180 => (0..width).map(|c| read.columns[width - 1 - c]).collect(),
        270 => (0..width).map(|c| read.rows[width - 1 - c]).collect(),
        _ => read.columns.clone(),
    }
}

/// The output slices `(first row, rows)` that cover the marked rows, with starts and lengths
/// multiples of `align` (the scaler's requirement; the last slice may end at the frame's end);
/// `None` when that is every row.
fn row_slices(read: &[bool], align: usize) -> Option<Vec<(u32, u32)>> {
    let height = read.len();
    let mut slices: Vec<(usize, usize)> = Vec::new();
    let mut y = 0;
    while y < height {
        if !read[y] {
            y += 1;
            continue;
        }
        let start = y / align * align;
        while y < height && read[y] {
            y += 1;
        }
        let end = y.div_ceil(align).saturating_mul(align).min(height);
        match slices.last_mut() {
            Some(last) if last.1 >= start => last.1 = end,
            _ => slices.push((start, end)),
        }
        y = end;
    }
    if slices == [(0, height)] {
        return None;
    }
    Some(slices.into_iter().map(|(a, b)| (a as u32, (b - a) as u32)).collect())
}

/// Convert only the output rows in `slices` (swscale's slice API: every input row is available,
/// the named output rows are computed). The other rows of `out` keep what they held.
fn convert_slices(
    ctx: &mut scaling::Context,
    decoded: &ffmpeg::frame::Video,
    out: &mut ffmpeg::frame::Video,
    slices: &[(u32, u32)],
) -> Result<(), ffmpeg::Error> {
    use ffmpeg::ffi;
    // SAFETY: the context was built for this frame's format and size and `out` was allocated
    // (reference-counted) at its output format and size; both frames outlive the calls, and
    // `sws_frame_end` drops the context's references to them before returning.
    unsafe {
        let c = ctx.as_mut_ptr();
        let mut status = ffi::sws_frame_start(c, out.as_mut_ptr(), decoded.as_ptr());
        if status >= 0 {
            status = ffi::sws_send_slice(c, 0, decoded.height());
        }
        for &(start, rows) in slices {
            if status >= 0 {
                status = ffi::sws_receive_slice(c, start, rows);
            }
        }
        ffi::sws_frame_end(c);
        if status < 0 {
            return Err(ffmpeg::Error::from(status));
        }
    }
    Ok(())
}

/// For a displayed `w x h` frame and an optional size to fill: the resized displayed size (the
/// smallest that covers the target at the frame's aspect ratio) and the centred crop window.
fn fill_plan(w: u32, h: u32, fill: Option<(u32, u32)>) -> (u32, u32, (usize, usize, usize, usize)) {
    let Some((tw, th)) = fill else { return (w, h, (0, 0, w as usize, h as usize)) };
    let scale = (f64::from(tw) / f64::from(w)).max(f64::from(th) / f64::from(h));
    let rw = ((f64::from(w) * scale).round() as u32).max(tw);
    let rh = ((f64::from(h) * scale).round() as u32).max(th);
    (rw, rh, (((rw - tw) / 2) as usize, ((rh - th) / 2) as usize, tw as usize, th as usize))
}

/// Indices of the frames to take from `start..end` of a `source_fps` video to play it at
/// `target_fps`: uniform selection, dropping frames when slowing the rate and repeating them when
/// raising it. `None` (or the source rate) keeps every frame.
pub fn uniform_indices(start: usize, end: usize, source_fps: f64, target_fps: Option<f64>) -> Vec<usize> {
    let Some(target) = target_fps.filter(|t| *t > 0.0 && (t - source_fps).abs() > 1e-6 * source_fps) else {
        return (start..end).collect();
    };
    let step = source_fps / target;
    let n = ((end.saturating_sub(start)) as f64 / step + 1e-6).floor() as usize;
    (0..n).map(|k| start + ((k as f64) * step + 1e-6).floor() as usize).collect()
}

/// The bucket (width, height) whose aspect ratio is nearest to `width / height` (by ratio, so
/// 2:1 is as far from 1:1 as 1:2 is); the first one wins a tie. `None` for no buckets.
pub fn nearest_bucket(width: u32, height: u32, buckets: &[(u32, u32)]) -> Option<(u32, u32)> {
    let aspect = (f64::from(width) / f64::from(height.max(1))).ln();
    let distance = |&(w, h): &(u32, u32)| (aspect - (f64::from(w) / f64::from(h.max(1))).ln()).abs();
    buckets.iter().copied().reduce(|best, b| if distance(&b) < distance(&best) { b } else { best })
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

    #[test]
    fn row_slices_cover_the_rows_read_at_the_scaler_alignment() {
        let read = |rows: &[usize], h: usize| (0..h).map(|y| rows.contains(&y)).collect::<Vec<_>>();
        // Rows 2, 7, 12 of 15 in pairs: (2, 3), (6, 7), (12, 13).
        assert_eq!(row_slices(&read(&[2, 7, 12], 15), 2), Some(vec![(2, 2), (6, 2), (12, 2)]));
        // Touching pairs merge; the last slice may end at an odd height.
        assert_eq!(row_slices(&read(&[1, 2, 14], 15), 2), Some(vec![(0, 4), (14, 1)]));
        assert_eq!(row_slices(&read(&[3], 5), 1), Some(vec![(3, 1)]));
        assert_eq!(row_slices(&read(&[0, 2, 3], 4), 2), None, "every row");
        // Source rows of a quarter turn are the displayed columns.
        let cols = PixelsRead { rows: vec![true; 2], columns: vec![true, false, false], packed: false };
        assert_eq!(source_rows(&cols, 90, 3), [false, false, true]);
        assert_eq!(source_rows(&cols, 270, 3), [true, false, false]);
        // And the source columns of a quarter turn are the displayed rows.
        let rows = PixelsRead { rows: vec![true, false], columns: vec![true; 3], packed: false };
        assert_eq!(source_columns(&rows, 90, 2), [true, false]);
        assert_eq!(source_columns(&rows, 270, 2), [false, true]);
        assert_eq!(source_columns(&cols, 180, 3), [false, false, true]);
    }

    #[test]
    fn fill_covers_then_crops_the_centre() {
        // 16:9 into a square: height fills, the sides are cut.
        assert_eq!(fill_plan(1280, 720, Some((256, 256))), (455, 256, (99, 0, 256, 256)));
        // Portrait into landscape: width fills, top and bottom are cut.
        assert_eq!(fill_plan(720, 1280, Some((640, 360))), (640, 1138, (0, 389, 640, 360)));
        assert_eq!(fill_plan(64, 48, None), (64, 48, (0, 0, 64, 48)));
    }

    #[test]
    fn uniform_selection_drops_or_repeats_evenly() {
        assert_eq!(uniform_indices(10, 22, 30.0, Some(10.0)), [10, 13, 16, 19]);
        assert_eq!(uniform_indices(0, 4, 24.0, None), [0, 1, 2, 3]);
        assert_eq!(uniform_indices(0, 3, 12.0, Some(24.0)), [0, 0, 1, 1, 2, 2]);
        // 25 -> 24 fps drops one frame in 25.
        let picked = uniform_indices(0, 50, 25.0, Some(24.0));
        assert_eq!(picked.len(), 48);
        assert!(picked.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn buckets_by_aspect() {
        let buckets = [(1280, 720), (720, 1280), (960, 960)];
        assert_eq!(nearest_bucket(1920, 1080, &buckets), Some((1280, 720)));
        assert_eq!(nearest_bucket(360, 640, &buckets), Some((720, 1280)));
        assert_eq!(nearest_bucket(640, 600, &buckets), Some((960, 960)));
        assert_eq!(nearest_bucket(640, 600, &[]), None);
    }
}

//! Shot-boundary detection with PySceneDetect's ContentDetector and AdaptiveDetector semantics.
//!
//! Each frame is downscaled so its long side is 256 pixels (OpenCV linear resize), converted to
//! HSV, and scored by the mean absolute change of H, S and V against the previous frame. The
//! content detector cuts where the score reaches a threshold (with PySceneDetect's flash filter);
//! the adaptive detector cuts where a frame's score stands out against its neighbours.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Serialize;

use super::decode::{ImageRef, PartConsumer, PixelsRead, VideoReader};
use super::opencv::{bgr_to_hsv_planes, resize_linear, resize_linear_quarter, resize_reads, Planar};
use super::pixel::{with_simd, Layout};
use super::probe::DecodeError;

/// PySceneDetect's working width: frames are shrunk until their long side is this.
pub const DETECT_SIZE: usize = 256;

/// Which detector to run, with its parameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Detector {
    /// Cut where the HSV change score reaches `threshold`.
    Content {
        /// Score (0..255) at which a cut is made.
        threshold: f64,
    },
    /// Cut where a frame's score is `threshold` times the mean of its `window` neighbours on each side.
    Adaptive {
        /// Ratio of the frame's score to its neighbours' mean.
        threshold: f64,
        /// Neighbours on each side.
        window: usize,
        /// A frame's own score must reach this as well.
        min_content: f64,
    },
}

/// Detection result of one video.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SceneList {
    /// Frames decoded.
    pub frames: usize,
    /// Frame rate used for times, frames per second.
    pub fps: f64,
    /// First frame of each new shot (0-based), ascending.
    pub cuts: Vec<usize>,
}

/// One shot: frames `start..end` (end exclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Scene {
    /// First frame (0-based).
    pub start: usize,
    /// One past the last frame.
    pub end: usize,
}

impl SceneList {
    /// The shots between the cuts; a video without cuts is one shot.
    pub fn scenes(&self) -> Vec<Scene> {
        let mut bounds = vec![0];
        bounds.extend(self.cuts.iter().copied().filter(|&c| c > 0 && c < self.frames));
        bounds.push(self.frames);
        bounds.windows(2).filter(|w| w[1] > w[0]).map(|w| Scene { start: w[0], end: w[1] }).collect()
    }
}

/// The size PySceneDetect shrinks a `w x h` frame to (long side 256; round half to even).
pub fn detect_size(w: usize, h: usize) -> (usize, usize) {
    let long = w.max(h);
    if long <= DETECT_SIZE {
        return (w, h);
    }
    let f = long as f64 / DETECT_SIZE as f64;
    (((w as f64 / f).round_ties_even() as usize).max(1), ((h as f64 / f).round_ties_even() as usize).max(1))
}

/// PySceneDetect's frame score between two HSV frames: mean |Δ| of H, S and V, averaged.
#[inline(always)]
pub fn content_score(a: &[Vec<u8>; 3], b: &[Vec<u8>; 3]) -> f64 {
    let n = a[0].len() as f64;
    // Sums in u32 lanes (vectorised), over blocks small enough that 255 per byte cannot overflow.
    let delta = |x: &[u8], y: &[u8]| {
        let block = |(p, q): (&[u8], &[u8])| {
            p.iter().zip(q).fold(0u32, |acc, (p, q)| acc.wrapping_add(u32::from(p.abs_diff(*q))))
        };
        x.chunks(1 << 16).zip(y.chunks(1 << 16)).map(|pq| u64::from(block(pq))).sum::<u64>() as f64 / n
    };
    (delta(&a[0], &b[0]) + delta(&a[1], &b[1]) + delta(&a[2], &b[2])) / 3.0
}

/// Scores of every frame (the first is 0) of a decoded stream, at the detection size.
pub struct Scorer {
    prev: Option<[Vec<u8>; 3]>,
}

impl Scorer {
    /// A scorer with no frame seen yet.
    pub fn new() -> Self {
        Scorer { prev: None }
    }

    /// The pixels of a displayed `width x height` frame that scoring reads: those the resize to
    /// the detection size weighs (the decoder converts only these), or all when none is needed.
    pub fn reads(width: usize, height: usize) -> PixelsRead {
        let (w, h) = detect_size(width, height);
        if (w, h) == (width, height) {
            return PixelsRead { rows: vec![true; height], columns: vec![true; width], packed: false };
        }
        resize_reads(width, height, w, h)
    }

    /// Score the next frame, stored rotated by `clockwise` degrees from how it is displayed (0,
    /// 90, 180 or 270), against the previous one.
    pub fn push(&mut self, frame: ImageRef<'_>, clockwise: i64) -> f64 {
        let (score, hsv) = with_simd(FrameScore { frame, clockwise, prev: self.prev.as_ref() });
        self.prev = Some(hsv);
        score
    }
}

/// One frame's work (resize, HSV, score against the previous frame's HSV planes), as an
/// operation [`with_simd`] compiles for the CPU's widest SIMD: everything it calls is inlined.
struct FrameScore<'a> {
    frame: ImageRef<'a>,
    clockwise: i64,
    prev: Option<&'a [Vec<u8>; 3]>,
}

impl pulp::WithSimd for FrameScore<'_> {
    type Output = (f64, [Vec<u8>; 3]);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) -> Self::Output {
        let (frame, clockwise) = (self.frame, self.clockwise.rem_euclid(360));
        let quarter = clockwise % 180 == 90;
        let (dw, dh) = if quarter { (frame.height, frame.width) } else { (frame.width, frame.height) };
        let (w, h) = detect_size(dw, dh);
        let small = if quarter && (w, h) != (dw, dh) && (dw, dh) != (2 * w, 2 * h) {
            resize_linear_quarter(frame, clockwise, w, h)
        } else {
            // Upright, or rarer: upside down, or a quarter turn with no resize or an area one.
            let upright;
            let frame = if clockwise == 0 {
                frame
            } else {
                upright = frame.to_image().rotated(clockwise);
                upright.view()
            };
            if (w, h) == (dw, dh) {
                Planar::from_packed(frame)
            } else {
                resize_linear(frame, w, h)
            }
        };
        let hsv = bgr_to_hsv_planes(&small);
        (self.prev.map_or(0.0, |p| content_score(p, &hsv)), hsv)
    }
}

impl Default for Scorer {
    fn default() -> Self {
        Self::new()
    }
}

/// Cuts from per-frame scores. `min_len` is the minimum shot length in frames (0 disables it).
pub fn cuts_from_scores(scores: &[f64], detector: Detector, min_len: usize) -> Vec<usize> {
    match detector {
        Detector::Content { threshold } => {
            let mut filter = FlashFilter::new(min_len);
            scores.iter().enumerate().filter_map(|(t, s)| filter.push(t, *s >= threshold)).collect()
        }
        Detector::Adaptive { threshold, window, min_content } => {
            adaptive_cuts(scores, threshold, window, min_content, min_len)
        }
    }
}

/// PySceneDetect's flash filter in its default MERGE mode: a cut closer than `min_len` frames
/// to the previous one is merged into a single cut at the last frame above the threshold.
struct FlashFilter {
    min_len: usize,
    last_above: usize,
    merge_enabled: bool,
    merge_triggered: bool,
    merge_start: usize,
}

impl FlashFilter {
    fn new(min_len: usize) -> Self {
        FlashFilter { min_len, last_above: 0, merge_enabled: false, merge_triggered: false, merge_start: 0 }
    }

    fn push(&mut self, t: usize, above: bool) -> Option<usize> {
        if self.min_len == 0 {
            return above.then_some(t);
        }
        let met = t - self.last_above >= self.min_len;
        if above {
            self.last_above = t;
        }
        if self.merge_triggered {
            if met && !above && self.last_above - self.merge_start >= self.min_len {
                self.merge_triggered = false;
                return Some(self.last_above);
            }
            return None;
        }
        if !above {
            return None;
        }
        if met {
            self.merge_enabled = true;
            Some(t)
        } else {
            if self.merge_enabled {
                self.merge_triggered = true;
                self.merge_start = t;
            }
            None
        }
    }
}

fn adaptive_cuts(scores: &[f64], threshold: f64, window: usize, min_content: f64, min_len: usize) -> Vec<usize> {
    let span = 2 * window + 1;
    let mut last_cut = 0usize;
    let mut cuts = Vec::new();
    for end in span..=scores.len() {
        let buf = &scores[end - span..end];
        let target_idx = end - 1 - window;
        let target = buf[window];
        // Python sums the neighbours left to right.
        let avg =
            buf.iter().enumerate().filter(|(i, _)| *i != window).fold(0.0, |acc, (_, s)| acc + s) / (2 * window) as f64;
        let ratio = if avg.abs() >= 1e-5 {
            (target / avg).min(255.0)
        } else if target >= min_content {
            255.0
        } else {
            0.0
        };
        if ratio >= threshold && target >= min_content && target_idx - last_cut >= min_len {
            last_cut = target_idx;
            cuts.push(target_idx);
        }
    }
    cuts
}

/// Minimum shot length as PySceneDetect's CLI resolves its "0.6s" default: round(0.6 x fps) frames.
pub fn frames_for(seconds: f64, fps: f64) -> usize {
    (seconds * fps).round_ties_even().max(0.0) as usize
}

/// Per-frame change scores of a whole video, with its frame rate.
#[derive(Debug, Clone)]
pub struct Scores {
    /// One score per decoded frame (the first is 0).
    pub scores: Vec<f64>,
    /// Average frame rate, frames per second.
    pub fps: f64,
}

/// Parts of videos being scored in this process now: automatic decoder threads and splitting
/// share the cores among them.
static SCORING: AtomicUsize = AtomicUsize::new(0);

/// One part of a video counted in [`SCORING`] while it lives.
struct Scoring;

impl Scoring {
    /// Count a part.
    fn start() -> Scoring {
        SCORING.fetch_add(1, Ordering::SeqCst);
        Scoring
    }
}

impl Drop for Scoring {
    fn drop(&mut self) {
        SCORING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Decoder threads for a video that starts while `videos` are being scored (itself included) on
/// `cores` cores: its share of the cores, at least one. One video alone gets FFmpeg frame
/// threads on every core; as many videos as cores get one thread each, since frame threads cost
/// CPU time (10-20% more per frame) that only idle cores should pay.
pub fn shared_threads(cores: usize, videos: usize) -> usize {
    (cores / videos.max(1)).max(1)
}

/// The scoring of one part of a video: its scores (the first against nothing, 0) and the HSV
/// planes of its first and last frames, to score where it meets its neighbours.
struct PartScores {
    scorer: Scorer,
    rotation: i64,
    scores: Vec<f64>,
    first: Option<[Vec<u8>; 3]>,
    _scoring: Scoring,
}

impl PartConsumer for PartScores {
    type Output = (Vec<f64>, Option<[Vec<u8>; 3]>, Option<[Vec<u8>; 3]>);

    fn frame(&mut self, image: ImageRef<'_>) {
        self.scores.push(self.scorer.push(image, self.rotation));
        if self.first.is_none() {
            self.first.clone_from(&self.scorer.prev);
        }
    }

    fn finish(self) -> Self::Output {
        (self.scores, self.first, self.scorer.prev)
    }
}

impl Scores {
    /// Decode a video and score every frame, with `threads` decoder threads. 0 shares the cores
    /// among the videos this process is scoring: a video that can be split
    /// ([`VideoReader::for_each_frame_in_parts`]) gets one thread, and splits into parts on
    /// other threads whenever a core is idle (a lone video at once, the last of a batch when the
    /// others are done); one that cannot gets its share of the cores as frame threads at the
    /// start ([`shared_threads`]).
    pub fn of_file(path: &Path, threads: usize) -> Result<Scores, DecodeError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let auto = threads == 0;
        let mut reader = VideoReader::open(path, threads.max(1))?;
        if auto && !reader.can_split() {
            let videos = SCORING.load(Ordering::SeqCst) + 1;
            reader = VideoReader::open(path, shared_threads(cores, videos))?;
        }
        let idle_cores = || if auto { cores.saturating_sub(SCORING.load(Ordering::SeqCst)) } else { 0 };
        Scores::in_parts(&mut reader, &idle_cores)
    }

    /// Score every frame of `reader`'s video, in parts when `more_parts` asks
    /// ([`VideoReader::for_each_frame_in_parts`]).
    fn in_parts(reader: &mut VideoReader, more_parts: &(dyn Fn() -> usize + Sync)) -> Result<Scores, DecodeError> {
        let rotation = reader.rotation;
        let part = || PartScores {
            scorer: Scorer::new(),
            rotation,
            scores: Vec::new(),
            first: None,
            _scoring: Scoring::start(),
        };
        let parts = reader.for_each_frame_in_parts(Layout::Bgr, &Scorer::reads, more_parts, &part)?;
        // Each part's first frame is scored against the last of the part before.
        let mut scores = Vec::new();
        let mut before: Option<[Vec<u8>; 3]> = None;
        for (mut part, first, last) in parts {
            if let (Some(before), Some(first), Some(score)) = (&before, &first, part.first_mut()) {
                *score = content_score(before, first);
            }
            scores.append(&mut part);
            before = last.or(before);
        }
        Ok(Scores { scores, fps: reader.fps })
    }

    /// The shots `detector` finds; `min_len_s` is the minimum shot length in seconds.
    pub fn detect(&self, detector: Detector, min_len_s: f64) -> SceneList {
        let cuts = cuts_from_scores(&self.scores, detector, frames_for(min_len_s, self.fps));
        SceneList { frames: self.scores.len(), fps: self.fps, cuts }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONTENT: Detector = Detector::Content { threshold: 27.0 };

    #[test]
    fn detection_size_follows_the_long_side() {
        assert_eq!(detect_size(1280, 720), (256, 144));
        assert_eq!(detect_size(720, 1280), (144, 256));
        assert_eq!(detect_size(560, 320), (256, 146));
        assert_eq!(detect_size(200, 100), (200, 100));
    }

    #[test]
    fn content_cuts_respect_the_minimum_length_and_merge_flashes() {
        let mut s = vec![0.0; 60];
        s[20] = 40.0;
        s[25] = 40.0; // too close to 20: merged, not a second cut
        s[45] = 50.0;
        assert_eq!(cuts_from_scores(&s, CONTENT, 10), vec![20, 45]);
        // Without the filter every frame above the threshold is a cut.
        assert_eq!(cuts_from_scores(&s, CONTENT, 0), vec![20, 25, 45]);
        // A cut sooner than min_len after the first frame is dropped.
        let mut early = vec![0.0; 30];
        early[3] = 90.0;
        assert!(cuts_from_scores(&early, CONTENT, 10).is_empty());
    }

    #[test]
    fn adaptive_cuts_are_reported_at_the_standout_frame() {
        let mut s = vec![2.0; 40];
        s[0] = 0.0;
        s[20] = 30.0;
        let d = Detector::Adaptive { threshold: 3.0, window: 2, min_content: 15.0 };
        assert_eq!(cuts_from_scores(&s, d, 10), vec![20]);
        s[20] = 10.0; // stands out, but below min_content
        assert!(cuts_from_scores(&s, d, 10).is_empty());
    }

    #[test]
    fn decoder_threads_share_the_cores() {
        assert_eq!(shared_threads(16, 1), 16);
        assert_eq!(shared_threads(16, 3), 5);
        assert_eq!(shared_threads(2, 2), 1);
        assert_eq!(shared_threads(2, 7), 1);
    }

    #[test]
    fn scores_in_parts_are_those_of_one_decode() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/videos");
        let bits = |s: &Scores| s.scores.iter().map(|s| s.to_bits()).collect::<Vec<_>>();
        for name in ["bbb_trailer_moviepy.mp4", "cockatoo_rot90.mov", "kivy_cityCC0.mpg"] {
            let path = dir.join(name);
            let one = Scores::of_file(&path, 1).unwrap();
            // Three more parts at the first frame, none later.
            let asked = AtomicUsize::new(0);
            let more_parts = || if asked.fetch_add(1, Ordering::SeqCst) == 0 { 3 } else { 0 };
            let parts = Scores::in_parts(&mut VideoReader::open(&path, 1).unwrap(), &more_parts).unwrap();
            assert_eq!(bits(&parts), bits(&one), "{name}");
        }
    }

    #[test]
    fn scenes_span_the_video_between_cuts() {
        let l = SceneList { frames: 100, fps: 25.0, cuts: vec![30, 70] };
        assert_eq!(
            l.scenes(),
            [Scene { start: 0, end: 30 }, Scene { start: 30, end: 70 }, Scene { start: 70, end: 100 }]
        );
        assert_eq!(SceneList { frames: 10, fps: 25.0, cuts: vec![] }.scenes(), [Scene { start: 0, end: 10 }]);
        assert_eq!(frames_for(0.6, 24.0), 14);
        assert_eq!(frames_for(0.6, 25.0), 15);
    }
}

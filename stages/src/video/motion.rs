//! Clip statistics for filtering: a motion score and the brightness of the brightest frame, both
//! on small grey images so they cost little beyond decoding.
//!
//! Motion is the mean absolute difference of grey levels (0-255) between a frame and the next
//! one, on frames shrunk to a long side of [`STATS_SIZE`] pixels, averaged over frame pairs taken
//! `sample_fps` times per second. A frozen or slide-show clip scores near 0, a talking head about
//! 1-3, fast action 10 and more.

use serde::Serialize;

use super::decode::{FrameFormat, Image, VideoReader};
use super::pixel::Layout;
use super::probe::DecodeError;

/// Long side, in pixels, of the grey images the statistics are computed on.
pub const STATS_SIZE: u32 = 64;

/// Motion and brightness of one clip.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ClipStats {
    /// Mean absolute grey-level change between consecutive frames (0-255).
    pub motion: f64,
    /// Mean grey level of the brightest sampled frame (0-255); near 0 means a black clip.
    pub brightness: f64,
    /// Frame pairs measured.
    pub pairs: usize,
}

/// Grey levels of an RGB image (BT.601 luma weights).
fn grey(image: &Image) -> Vec<u8> {
    image
        .data
        .chunks_exact(3)
        .map(|p| ((77 * u32::from(p[0]) + 150 * u32::from(p[1]) + 29 * u32::from(p[2]) + 128) >> 8) as u8)
        .collect()
}

/// The small size statistics use for a `width x height` frame: long side [`STATS_SIZE`].
fn stats_size(width: u32, height: u32) -> (u32, u32) {
    let long = width.max(height).max(1);
    let scale = f64::from(STATS_SIZE.min(long)) / f64::from(long);
    let side = |v: u32| ((f64::from(v) * scale).round() as u32).max(1);
    (side(width), side(height))
}

/// Measure frames `start..end` of an open video: one pair of consecutive frames every
/// `1 / sample_fps` seconds (at least one pair when the clip has two frames).
pub fn clip_stats(
    reader: &mut VideoReader,
    start: usize,
    end: usize,
    sample_fps: f64,
) -> Result<ClipStats, DecodeError> {
    let step = ((reader.fps / sample_fps).round() as usize).max(1);
    let mut indices = Vec::new();
    let mut i = start;
    while i + 1 < end {
        indices.extend([i, i + 1]);
        i += step;
    }
    if indices.is_empty() && end > start {
        indices.push(start);
    }
    let (w, h) = reader.size();
    let format = FrameFormat { layout: Layout::Rgb, fill: Some(stats_size(w, h)) };
    let (mut previous, mut motion, mut pairs, mut brightness) = (None::<Vec<u8>>, 0.0, 0usize, 0.0f64);
    reader.frames_at(&indices, format, |position, image| {
        let g = grey(&image);
        brightness = brightness.max(g.iter().map(|&v| f64::from(v)).sum::<f64>() / g.len() as f64);
        if position % 2 == 1 {
            if let Some(p) = &previous {
                let diff: u64 = p.iter().zip(&g).map(|(&a, &b)| u64::from(a.abs_diff(b))).sum();
                motion += diff as f64 / g.len() as f64;
                pairs += 1;
            }
        }
        previous = Some(g);
        true
    })?;
    Ok(ClipStats { motion: if pairs > 0 { motion / pairs as f64 } else { 0.0 }, brightness, pairs })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grey_and_size() {
        let img = Image { width: 2, height: 1, data: vec![255, 255, 255, 0, 0, 0] };
        assert_eq!(grey(&img), [255, 0]);
        assert_eq!(stats_size(1280, 720), (64, 36));
        assert_eq!(stats_size(360, 640), (36, 64));
        assert_eq!(stats_size(32, 16), (32, 16));
    }
}

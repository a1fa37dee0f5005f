//! Thumbnails: frames decoded with the pipeline's FFmpeg reader, scaled down and encoded as
//! JPEG data URIs, so the page needs no file beside it.

use std::collections::HashMap;
use std::path::Path;

use base64::Engine as _;
use image::codecs::jpeg::JpegEncoder;
use pipeline::io::{fetch_local, LocalFile, Location};
use rayon::prelude::*;
use stages::video::decode::{FrameFormat, Image, VideoReader};
use stages::video::pixel::Layout;

use super::collect::Dataset;

/// Longer side of a contact-sheet thumbnail, pixels.
const CLIP_SIZE: u32 = 192;
/// Longer side of a frame on a video card, pixels (three per card: small keeps the page small).
const CARD_SIZE: u32 = 160;
/// JPEG quality: small files that still show what is in the frame.
const QUALITY: u8 = 75;

/// A thumbnail, or why there is none (shown in its place).
pub type Thumb = Result<String, String>;

/// The decoded thumbnails of a page.
pub struct Thumbs {
    /// Contact sheet (kept and dropped clips), by clip id.
    pub clips: HashMap<String, Thumb>,
    /// First, middle and last frame of each card, by row id.
    pub cards: HashMap<String, Vec<Thumb>>,
}

/// One video to take thumbnails from.
struct Job {
    /// Clip or card id.
    key: String,
    /// A card's three frames, or a contact-sheet clip's one.
    card: bool,
    /// The video on local disk, or why it is not there.
    file: Result<LocalFile, String>,
    /// Frame indices, ascending.
    indices: Vec<usize>,
    /// Longer side of the thumbnails, pixels.
    size: u32,
}

/// Decode every thumbnail the page shows (videos fetched first, then decoded in parallel).
pub async fn render(loc: &Location, data: &Dataset) -> anyhow::Result<Thumbs> {
    let scratch = tempfile::tempdir()?;
    let mut jobs = Vec::new();
    for c in data.sample.iter().chain(data.dropped.iter().flat_map(|d| &d.examples)) {
        let file = local(&c.uri, scratch.path()).await;
        jobs.push(Job { key: c.id.clone(), card: false, file, indices: vec![c.frame], size: CLIP_SIZE });
    }
    for c in &data.cards {
        let file = local(&loc.url_of(&c.video_file), scratch.path()).await;
        let indices = vec![0, c.frames / 2, c.frames - 1];
        jobs.push(Job { key: c.id.clone(), card: true, file, indices, size: CARD_SIZE });
    }
    let decoded: Vec<(String, bool, Vec<Thumb>)> = tokio::task::spawn_blocking(move || {
        jobs.into_par_iter()
            .map(|j| {
                let decoded = j.file.and_then(|f| frames(f.path(), &j.indices, j.size).map_err(|e| e.to_string()));
                let thumbs = decoded.unwrap_or_else(|why| vec![Err(why); j.indices.len()]);
                (j.key, j.card, thumbs)
            })
            .collect()
    })
    .await?;
    let mut thumbs = Thumbs { clips: HashMap::new(), cards: HashMap::new() };
    for (key, card, t) in decoded {
        if card {
            thumbs.cards.insert(key, t);
        } else if let Some(first) = t.into_iter().next() {
            thumbs.clips.insert(key, first);
        }
    }
    Ok(thumbs)
}

async fn local(uri: &str, scratch: &Path) -> Result<LocalFile, String> {
    fetch_local(uri, scratch).await.map_err(|e| e.to_string())
}

/// The frames at `indices` (ascending) of one video, scaled to `size` pixels on the longer side,
/// as JPEG data URIs; frames past the end of the video are reported missing.
fn frames(path: &Path, indices: &[usize], size: u32) -> Result<Vec<Thumb>, stages::video::probe::DecodeError> {
    let mut reader = VideoReader::open(path, 1)?;
    let (w, h) = reader.size();
    let scale = f64::from(size) / f64::from(w.max(h).max(1));
    let even = |v: u32| ((f64::from(v) * scale).round() as u32).max(2) & !1;
    let format = FrameFormat { layout: Layout::Rgb, fill: Some((even(w), even(h))) };
    let mut out: Vec<Thumb> = vec![Err(format!("{} has no such frame", path.display())); indices.len()];
    reader.frames_at(indices, format, |k, image| {
        out[k] = jpeg_data_uri(&image);
        true
    })?;
    Ok(out)
}

/// Encode an RGB image as a `data:image/jpeg;base64,...` URI.
fn jpeg_data_uri(image: &Image) -> Thumb {
    let mut jpeg = Vec::new();
    JpegEncoder::new_with_quality(&mut jpeg, QUALITY)
        .encode(&image.data, image.width as u32, image.height as u32, image::ExtendedColorType::Rgb8)
        .map_err(|e| format!("cannot encode a JPEG: {e}"))?;
    Ok(format!("data:image/jpeg;base64,{}", base64::engine::general_purpose::STANDARD.encode(jpeg)))
}

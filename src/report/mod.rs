//! The HTML run report (`mugflow report`, and `report.html` after every run): one self-contained
//! page per dataset version with the curation funnel and why items were dropped, histograms of
//! the clips' measurements, a contact sheet of kept clips, a card per generated video and the
//! errors grouped by cause. People judge a run by looking at it; `report.json` is for programs.

mod charts;
mod collect;
mod frames;
mod html;

use pipeline::io::Location;

/// Kept clips shown as thumbnails on the contact sheet (the rest is aggregated in histograms).
const CLIP_SAMPLE: usize = 48;
/// Video cards on the generation page (new and changed rows first); the rest are counted. Each
/// costs a decode of its whole video (first, middle and last frame) and ~15 KB of page.
const MAX_CARDS: usize = 60;

/// Build the page of `version` (default: the latest) of the dataset at `loc`. `media_base` is
/// put before an output-relative file name (a video) to reach it from where the page will lie.
pub async fn build(loc: &Location, version: Option<u64>, media_base: &str) -> anyhow::Result<String> {
    let data = collect::collect(loc, version).await?;
    let thumbs = frames::render(loc, &data).await?;
    Ok(html::page(&data, &thumbs, media_base))
}

/// Write the latest version's page to `report.html` in the output, through the same store the
/// run wrote the dataset with (local disk or an object store).
pub async fn write_beside(loc: &Location) -> anyhow::Result<()> {
    let page = build(loc, None, "").await?;
    loc.write("report.html", page.into_bytes()).await?;
    Ok(())
}

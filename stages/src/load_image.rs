//! `load_image`: a catalog row's reference image, checked and prepared as MUG-V's pipeline does
//! (resize to fill the frame size of the row's aspect ratio with Pillow's bicubic, centre crop).

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use pipeline::io::fetch_local;
use pipeline::manifest::Resolution;
use pipeline::{DType, Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError, Tensor};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::decode::{FrameFormat, Image, VideoReader};
use crate::video::pillow::resize_to_fill;
use crate::video::pixel::Layout;

/// MUG-V's 720p frame sizes as (height, width) per "height:width" aspect ratio
/// (`mug_v/utils.py`; "16:9" is a portrait 1280-high frame).
pub const ASPECT_RATIOS: [(&str, (usize, usize)); 5] =
    [("9:16", (720, 1280)), ("3:4", (832, 1110)), ("1:1", (960, 960)), ("4:3", (1108, 832)), ("16:9", (1280, 720))];

/// MUG-V's video lengths: frames per length name.
pub const LENGTHS: [(&str, usize); 2] = [("3s", 73), ("5s", 105)];

/// Read each row's reference image (`uri`; PNG, JPEG, WebP, ... through FFmpeg), turn it upright
/// by its EXIF orientation, and resize it to fill the frame of the row's `aspect` (MUG-V's 720p
/// sizes, or `size` for every row), centre-cropped: the `ref_image` tensor `[H, W, 3]` (u8).
/// Also checks the row's `prompt` and `length`, so a bad row fails here, before any GPU work.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadImageConfig {
    /// Aspect ratio ("height:width": 9:16, 3:4, 1:1, 4:3, 16:9) of rows whose `aspect` is empty.
    #[serde(default = "default_aspect")]
    pub aspect: String,
    /// Length ("3s" = 73 frames, "5s" = 105) of rows whose `length` is empty.
    #[serde(default = "default_length")]
    pub length: String,
    /// One frame size for every row instead of the aspect table (small sizes for tests).
    pub size: Option<Resolution>,
    /// Frames for every row instead of the length table (1 + a multiple of 8 suits the VAE).
    pub frames: Option<usize>,
    /// Turn images upright by their EXIF orientation. MUG-V's reference ignores it (PIL's loader
    /// does not apply it), so a rotated phone photo comes out sideways there; false reproduces that.
    #[serde(default = "yes")]
    pub exif_orientation: bool,
}

fn default_aspect() -> String {
    "16:9".into()
}
fn default_length() -> String {
    "5s".into()
}
fn yes() -> bool {
    true
}

/// A row's text field, `None` when empty.
fn text<'a>(item: &'a Item, name: &str) -> Option<&'a str> {
    item.get(name).and_then(pipeline::Value::as_str).map(str::trim).filter(|s| !s.is_empty())
}

/// The EXIF orientation tag (1..8) of an image file, 1 when absent.
fn exif_orientation(path: &Path) -> u32 {
    let Ok(file) = std::fs::File::open(path) else { return 1 };
    let Ok(exif) = exif::Reader::new().read_from_container(&mut std::io::BufReader::new(file)) else { return 1 };
    exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY).and_then(|f| f.value.get_uint(0)).unwrap_or(1)
}

/// The image mirrored left to right.
fn mirrored(img: Image) -> Image {
    let mut data = Vec::with_capacity(img.data.len());
    for row in img.data.chunks_exact(3 * img.width) {
        data.extend(row.chunks_exact(3).rev().flatten());
    }
    Image { data, ..img }
}

/// The image as a viewer honouring EXIF `orientation` shows it.
fn upright(img: Image, orientation: u32) -> Image {
    match orientation {
        2 => mirrored(img),
        3 => img.rotated(180),
        4 => mirrored(img.rotated(180)),
        5 => mirrored(img.rotated(90)),
        6 => img.rotated(90),
        7 => mirrored(img.rotated(270)),
        8 => img.rotated(270),
        _ => img,
    }
}

/// Decode the first picture of an image file in RGB.
pub fn read_image(path: &Path, exif: bool) -> Result<Image, StageError> {
    let mut reader = VideoReader::open(path, 1)?;
    let mut first = None;
    reader.for_each_frame(FrameFormat::full(Layout::Rgb), |_, image| {
        first = Some(image.to_image());
        false
    })?;
    let image = first.ok_or_else(|| StageError::msg("the file holds no picture"))?;
    Ok(if exif { upright(image, exif_orientation(path)) } else { image })
}

struct LoadImage(LoadImageConfig);

impl LoadImage {
    /// Frame (height, width) and frame count of a row.
    fn geometry(&self, item: &Item) -> Result<(String, usize, usize, String, usize), StageError> {
        let aspect = text(item, "aspect").unwrap_or(&self.0.aspect).to_string();
        let length = text(item, "length").unwrap_or(&self.0.length).to_string();
        let (h, w) = match &self.0.size {
            Some(r) => (r.height as usize, r.width as usize),
            None => ASPECT_RATIOS.iter().find(|(a, _)| *a == aspect).map(|(_, s)| *s).ok_or_else(|| {
                StageError::msg(format!("unknown aspect `{aspect}`: use 9:16, 3:4, 1:1, 4:3 or 16:9 (height:width)"))
            })?,
        };
        let frames = match self.0.frames {
            Some(f) => f,
            None => LENGTHS
                .iter()
                .find(|(l, _)| *l == length)
                .map(|(_, f)| *f)
                .ok_or_else(|| StageError::msg(format!("unknown length `{length}`: use 3s or 5s")))?,
        };
        Ok((aspect, h, w, length, frames))
    }
}

#[async_trait]
impl Stage for LoadImage {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        if text(&item, "prompt").is_none() {
            return Err(StageError::msg("the row's `prompt` is empty"));
        }
        let (aspect, height, width, length, frames) = self.geometry(&item)?;
        let uri = item.uri()?.to_string();
        if uri.is_empty() {
            return Err(StageError::msg("the row names no image"));
        }
        let local =
            fetch_local(&uri, &ctx.scratch).await.map_err(|e| StageError::from(e).context("cannot read the image"))?;
        if !local.path().exists() {
            return Err(StageError::msg(format!("cannot read the image: {uri} does not exist")));
        }
        let (path, exif) = (local.path().to_path_buf(), self.0.exif_orientation);
        let image = ctx
            .cpu(move || -> Result<Image, StageError> {
                let image = read_image(&path, exif).map_err(|e| e.context("not a readable image"))?;
                Ok(resize_to_fill(image.view(), width, height))
            })
            .await??;
        let tensor = Tensor::new(DType::U8, vec![height, width, 3], image.data.into())
            .ok_or_else(|| StageError::msg("image size mismatch"))?;
        item.tensors.insert("ref_image".into(), tensor);
        item.set("aspect", aspect);
        item.set("length", length);
        item.set("frame_height", height as i64);
        item.set("frame_width", width as i64);
        item.set("num_frames", frames as i64);
        Ok(vec![item])
    }
}

impl StageConfig for LoadImageConfig {
    const KIND: &'static str = "load_image";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"load_image\"\naspect = \"16:9\"\nlength = \"5s\"\n";

    fn reads(&self) -> Vec<Field> {
        vec![
            Field::new("uri", FieldType::Str, "path or URL of the reference image"),
            Field::new("prompt", FieldType::Str, "what the video should show"),
        ]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("ref_image", FieldType::Tensor, "reference image [H, W, 3], u8, resized to fill and cropped"),
            Field::new("aspect", FieldType::Str, "aspect ratio used (height:width)"),
            Field::new("length", FieldType::Str, "length used"),
            Field::new("frame_height", FieldType::Int, "video height, pixels"),
            Field::new("frame_width", FieldType::Int, "video width, pixels"),
            Field::new("num_frames", FieldType::Int, "video frames, the reference image included"),
        ]
    }

    fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.size.is_none() && !ASPECT_RATIOS.iter().any(|(a, _)| *a == self.aspect) {
            problems.push(format!("unknown aspect `{}`: use 9:16, 3:4, 1:1, 4:3 or 16:9", self.aspect));
        }
        if self.frames.is_none() && !LENGTHS.iter().any(|(l, _)| *l == self.length) {
            problems.push(format!("unknown length `{}`: use 3s or 5s", self.length));
        }
        if self.frames.is_some_and(|f| f < 2) {
            problems.push("frames must be at least 2 (the reference image and one generated frame)".into());
        }
        problems
    }

    fn default_parallelism(&self) -> usize {
        std::thread::available_parallelism().map_or(2, |n| n.get())
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Ok(Runnable::Transform(Arc::new(LoadImage(self.clone()))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientations_turn_a_2x1_image_upright() {
        // Pixels: A at (0,0), B at (1,0).
        let img = || Image { width: 2, height: 1, data: vec![1, 1, 1, 2, 2, 2] };
        assert_eq!(upright(img(), 1).data, [1, 1, 1, 2, 2, 2]);
        assert_eq!(upright(img(), 2).data, [2, 2, 2, 1, 1, 1]);
        let r = upright(img(), 6);
        assert_eq!((r.width, r.height, r.data), (1, 2, vec![1, 1, 1, 2, 2, 2]));
        let r = upright(img(), 8);
        assert_eq!((r.width, r.height, r.data), (1, 2, vec![2, 2, 2, 1, 1, 1]));
    }
}

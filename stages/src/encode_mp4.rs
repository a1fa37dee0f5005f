//! `encode_mp4`: each row's decoded `video` as an H.264 MP4 `videos/<id>.mp4`, published with the
//! shard next to the row that describes it.

use std::sync::Arc;

use async_trait::async_trait;
use pipeline::{Field, FieldType, Item, Runnable, Stage, StageConfig, StageContext, StageError};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::video::decode::Image;
use crate::video::encode::{EncodeOptions, Mp4Writer, X264Preset};

/// Encode the `video` tensor `[T, H, W, 3]` (u8 RGB) of each row as `videos/<id>.mp4` (ids made
/// file-safe) with libx264 at `fps` and `crf`; MUG-V saves at 20 fps, CRF 17. The row gets
/// `video_file` and the file's frame count, size and rate; the tensor is dropped.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EncodeMp4Config {
    /// Frame rate of the file.
    #[serde(default = "default_fps")]
    pub fps: f64,
    /// x264 constant rate factor: 0 lossless .. 51 worst.
    #[serde(default = "default_crf")]
    #[schemars(range(min = 0, max = 51))]
    pub crf: u32,
    /// x264 speed/size trade-off.
    #[serde(default)]
    pub preset: X264Preset,
    /// FFmpeg encoder.
    #[serde(default = "default_codec")]
    pub codec: String,
}

fn default_fps() -> f64 {
    20.0
}
fn default_crf() -> u32 {
    17
}
fn default_codec() -> String {
    "libx264".into()
}

struct EncodeMp4(EncodeMp4Config);

#[async_trait]
impl Stage for EncodeMp4 {
    async fn process(&self, mut item: Item, ctx: &StageContext) -> Result<Vec<Item>, StageError> {
        let video = item.tensors.remove("video").ok_or_else(|| StageError::msg("no `video`: put vae_decode first"))?;
        let [t, h, w, 3] = video.shape[..] else {
            return Err(StageError::msg(format!("`video` has shape {:?}, expected [T, H, W, 3]", video.shape)));
        };
        let name = ctx.item_file("videos", &item.id, ".mp4");
        let target = ctx.scratch.join(name.replace('/', "_"));
        let c = &self.0;
        let options = EncodeOptions { codec: c.codec.clone(), fps: c.fps, crf: c.crf, preset: c.preset.name() };
        let out = target.clone();
        let (frames, width, height) = ctx
            .cpu(move || -> Result<_, StageError> {
                let mut writer = Mp4Writer::create(&out, w, h, &options)?;
                for frame in video.data.chunks_exact(h * w * 3).take(t) {
                    writer.write(&Image { width: w, height: h, data: frame.to_vec() })?;
                }
                let (width, height) = writer.size();
                Ok((writer.finish()?, width, height))
            })
            .await??;
        item.set("video_file", name.as_str());
        item.set("video_frames", frames);
        item.set("video_width", i64::from(width));
        item.set("video_height", i64::from(height));
        item.set("video_fps", c.fps);
        item.files.insert(name, target);
        Ok(vec![item])
    }
}

impl StageConfig for EncodeMp4Config {
    const KIND: &'static str = "encode_mp4";
    const EXAMPLE: &'static str = "[[stage]]\nkind = \"encode_mp4\"\nfps = 20\ncrf = 17\n";

    fn reads(&self) -> Vec<Field> {
        vec![Field::new("video", FieldType::Tensor, "decoded video [T, H, W, 3], u8")]
    }

    fn adds(&self) -> Vec<Field> {
        vec![
            Field::new("video_file", FieldType::Str, "the MP4, relative to the output location"),
            Field::new("video_frames", FieldType::Int, "frames in the MP4"),
            Field::new("video_width", FieldType::Int, "width of the MP4, pixels (even)"),
            Field::new("video_height", FieldType::Int, "height of the MP4, pixels (even)"),
            Field::new("video_fps", FieldType::Float, "frame rate of the MP4"),
        ]
    }

    fn check(&self) -> Vec<String> {
        if self.fps <= 0.0 {
            vec![format!("fps must be positive, found {}", self.fps)]
        } else {
            Vec::new()
        }
    }

    fn default_parallelism(&self) -> usize {
        2
    }

    fn build(&self, _: &pipeline::BuildContext) -> Result<Runnable, pipeline::BuildError> {
        Mp4Writer::encoder(&self.codec).map_err(|e| pipeline::BuildError::new(e.to_string()).with_key("codec"))?;
        Ok(Runnable::Transform(Arc::new(EncodeMp4(self.clone()))))
    }
}

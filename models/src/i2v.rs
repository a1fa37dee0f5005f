//! MUG-V image-to-video over the models, as `infer_pipeline.py` composes them: the prompt (with
//! the aesthetic suffix) and the negative prompt through T5, the reference image through the VAE
//! into latent frame 0, rectified-flow sampling with the DiT, and chunked decoding with the
//! reference image as frame 0. Stages and GPU benchmarks share it.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::mugdit::MugDit;
use crate::mugvae::MugVae;
use crate::random::{noise_stream, standard_normal};
use crate::rflow::{Conditioning, RFlow, ShiftPrecision, NEGATIVE_PROMPT};
use crate::t5::{T5Encoder, T5Tokenizer};

/// The models of one worker, and the negative prompt's T5 states once computed (every video
/// uses the same ones).
pub struct I2vModels {
    /// The denoiser.
    pub dit: MugDit,
    /// The VideoVAE.
    pub vae: MugVae,
    /// The text encoder.
    pub t5: T5Encoder,
    /// Its tokenizer.
    pub tokenizer: T5Tokenizer,
    /// T5 states `[1, L, d]` of [`NEGATIVE_PROMPT`] and its valid length.
    negative: OnceLock<(Tensor, usize)>,
}

impl I2vModels {
    /// The models of one worker.
    pub fn new(dit: MugDit, vae: MugVae, t5: T5Encoder, tokenizer: T5Tokenizer) -> I2vModels {
        I2vModels { dit, vae, t5, tokenizer, negative: OnceLock::new() }
    }

    /// T5 states `[1, L, d]` of one text (on T5's device) and its valid length.
    fn encode_text(&self, text: &str, device: &Device) -> candle_core::Result<(Tensor, usize)> {
        let (ids, mask) =
            self.tokenizer.encode(text).map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))?;
        let valid = mask.iter().filter(|&&v| v == 1).count();
        let l = ids.len();
        let ids = Tensor::from_vec(ids, (1, l), device)?;
        let mask = Tensor::from_vec(mask, (1, l), device)?;
        Ok((self.t5.forward(&ids, &mask)?, valid))
    }
}

/// Sampling settings (MUG-V: 25 steps, guidance 4, aesthetic 6.0, fps 30, bf16 shift).
#[derive(Debug, Clone, PartialEq)]
pub struct I2vSettings {
    /// Euler steps.
    pub steps: usize,
    /// Classifier-free guidance scale.
    pub cfg_scale: f32,
    /// Score appended as `" aesthetic score: X.X."`; `None` appends nothing.
    pub aes_score: Option<f64>,
    /// Frame rate the DiT is conditioned on.
    pub fps: f32,
    /// Timestep shift arithmetic.
    pub shift: ShiftPrecision,
}

/// Where the models run: the DiT and the VAE on `device` in `dtype`, T5 in f32 on `t5_device`.
#[derive(Debug, Clone)]
pub struct I2vPlacement {
    /// Device of the DiT and the VAE.
    pub device: Device,
    /// Their precision.
    pub dtype: DType,
    /// Device of T5.
    pub t5_device: Device,
}

/// `[-1, 1]` values to bytes as MUG-V saves videos: clamp, map to [0, 1], `* 255 + 0.5`, truncate.
pub fn to_u8(v: f32) -> u8 {
    ((v.clamp(-1.0, 1.0) + 1.0) / 2.0 * 255.0 + 0.5).clamp(0.0, 255.0) as u8
}

/// T5 states `[2, 1, L, d]` on `p.device` and valid lengths of `prompt` and the negative prompt
/// (each row is encoded on its own, as in the reference's padded batch; the negative prompt's
/// states are computed once per worker).
pub fn encode_prompt(m: &I2vModels, p: &I2vPlacement, prompt: &str) -> candle_core::Result<(Tensor, Vec<usize>)> {
    let (y, len) = m.encode_text(prompt, &p.t5_device)?;
    let (neg, neg_len) = match m.negative.get() {
        Some(n) => n.clone(),
        None => {
            let n = m.encode_text(NEGATIVE_PROMPT, &p.t5_device)?;
            // Two workers racing here compute the same value; either one is kept.
            m.negative.get_or_init(|| n).clone()
        }
    };
    let y = Tensor::cat(&[y, neg], 0)?;
    Ok((y.unsqueeze(1)?.to_device(&p.device)?.to_dtype(p.dtype)?, vec![len, neg_len]))
}

/// Latents `[24, T', H/8, W/8]` (f32) of one video: `prompt`, the reference `image` (`[H, W, 3]`
/// RGB bytes), `size` = (frames, height, width), every noise drawn from `seed`. `progress` hears
/// "text", "reference" and "step i" as each part finishes; an error it returns ends the
/// generation there (how a timed-out item stops within one sampling step).
#[allow(clippy::too_many_arguments)]
pub fn generate(
    m: &I2vModels,
    s: &I2vSettings,
    p: &I2vPlacement,
    prompt: &str,
    image: &[u8],
    size: (usize, usize, usize),
    seed: u64,
    progress: &mut dyn FnMut(&str) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let (frames, height, width) = size;
    let prompt = match s.aes_score {
        Some(score) => format!("{prompt} aesthetic score: {score:.1}."),
        None => prompt.to_string(),
    };
    let (y, lens) = encode_prompt(m, p, &prompt)?;
    progress("text")?;
    let vae = m.vae.config();
    let (lt, lh, lw) = vae.latent_size(frames, height, width);
    let channels = vae.temporal.latent_channels;
    // The reference image, [-1, 1], repeated over 8 frames: one latent frame.
    let values: Vec<f32> =
        (0..3).flat_map(|ch| image.iter().skip(ch).step_by(3).map(|&u| (f32::from(u) / 255.0 - 0.5) / 0.5)).collect();
    let img = Tensor::from_vec(values, (1, 3, 1, height, width), &p.device)?.to_dtype(p.dtype)?;
    // Noise streams: 0 the reference latent's posterior, 1 the initial noise, 2.. the sampler's steps.
    let eps = standard_normal(&[1, channels, 1, lh, lw], noise_stream(seed, 0))?.to_device(&p.device)?;
    let reference = m.vae.encode(&img.repeat((1, 1, 8, 1, 1))?, Some(&eps.to_dtype(p.dtype)?))?.to_dtype(DType::F32)?;
    progress("reference")?;
    let z = Tensor::cat(&[reference, Tensor::zeros((1, channels, lt - 1, lh, lw), DType::F32, &p.device)?], 2)?;
    let sampler = RFlow { steps: s.steps, guidance: s.cfg_scale };
    let timesteps = sampler.timesteps(height, width, lt, s.shift);
    let mut mask = vec![1.0f32; lt];
    mask[0] = 0.0;
    let frame_indices: Vec<usize> = (0..lt + 2).collect();
    let cond = Conditioning { y: &y, text_lens: &lens, mask: &[mask], fps: s.fps, frame_indices: &frame_indices };
    let shape = [1, channels, lt, lh, lw];
    let mut noise = |k: usize| standard_normal(&shape, noise_stream(seed, 1 + k as u64))?.to_device(&p.device);
    sampler
        .sample(&m.dit, &z, &cond, &timesteps, &mut noise, &mut |step| progress(&format!("step {}", step.index)))?
        .squeeze(0)
}

/// A decoded video: `[T, H, W, 3]` RGB bytes.
pub struct Video {
    /// The frames, row-major.
    pub bytes: Vec<u8>,
    /// Frame height, pixels.
    pub height: usize,
    /// Frame width, pixels.
    pub width: usize,
}

/// Decode latents `[24, T', h, w]` except latent frame 0 into `frames - 1` frames, chunk by chunk
/// on `device` in `dtype`, behind the `reference` image (`[H, W, 3]` bytes, `width` wide, cropped
/// to the decoded size where the VAE's 8-pixel grid cuts the frame). `progress` hears "chunk"
/// after each decoded chunk; an error it returns ends the decoding there.
#[allow(clippy::too_many_arguments)]
pub fn decode_video(
    vae: &MugVae,
    latent: &Tensor,
    reference: &[u8],
    width: usize,
    frames: usize,
    device: &Device,
    dtype: DType,
    progress: &mut dyn FnMut(&str) -> candle_core::Result<()>,
) -> candle_core::Result<Video> {
    let mut bytes: Vec<u8> = Vec::new();
    let mut size = (0, 0);
    let z = latent.to_device(device)?.to_dtype(dtype)?.unsqueeze(0)?;
    let n = z.dim(2)?;
    vae.decode_chunks(&z.narrow(2, 1, n - 1)?, frames - 1, &mut |chunk| {
        let chunk = chunk.squeeze(0)?.to_dtype(DType::F32)?.permute((1, 2, 3, 0))?.to_device(&Device::Cpu)?;
        let (_, h, w, _) = chunk.dims4()?;
        if bytes.is_empty() {
            size = (h, w);
            for row in reference.chunks_exact(3 * width).take(h) {
                bytes.extend_from_slice(&row[..3 * w]);
            }
        }
        bytes.extend(chunk.flatten_all()?.to_vec1::<f32>()?.into_iter().map(to_u8));
        progress("chunk")
    })?;
    Ok(Video { bytes, height: size.0, width: size.1 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_like_the_reference() {
        assert_eq!([to_u8(-2.0), to_u8(-1.0), to_u8(0.0), to_u8(1.0), to_u8(3.0)], [0, 0, 128, 255, 255]);
        // 0.5 -> (1.5 / 2) * 255 + 0.5 = 191.75 -> 191.
        assert_eq!(to_u8(0.5), 191);
    }
}

//! MUG-V's video enhancer over the models, as `mug_enhancer`'s `predict.py` composes them: the
//! prompt and a fixed negative prompt through UMT5, the frames through the Wan2.1 VAE, the latent
//! mixed with seeded noise at the schedule's first sigma, guided flow-matching steps of the
//! LoRA-merged Wan DiT, and the Wan VAE back to frames. Stages and GPU benchmarks share it.

use std::sync::OnceLock;

use candle_core::{DType, Device, Tensor};

use crate::random::{noise_stream, standard_normal};
use crate::t5::T5Tokenizer;
use crate::umt5::Umt5Encoder;
use crate::wan_dit::WanDit;
use crate::wan_flow::{EnhancePoint, Enhancer};
use crate::wan_vae::{to_frames_u8, WanVae};

/// The noise stream of the enhancer, apart from the generator's streams of the same seed.
const NOISE_STREAM: u64 = 0x0065_6e68_616e_6365; // "enhance" in ASCII

/// The Wan DiT (LoRA merged) and the Wan VAE on `device` in `dtype`, with how they sample: the
/// enhancement of a video given text features. Apart from the text encoder so that the GPU
/// benchmark can run it on random features instead of UMT5-XXL's.
pub struct WanEnhancer {
    /// The denoiser, its LoRA merged.
    pub dit: WanDit,
    /// The Wan2.1 VAE.
    pub vae: WanVae,
    /// The schedule, steps and guidance.
    pub sampler: Enhancer,
    /// Device of the DiT and the VAE.
    pub device: Device,
    /// Their precision.
    pub dtype: DType,
}

impl WanEnhancer {
    /// Enhance `video` `[1, 3, 1 + 4k, H, W]` in [-1, 1] between the text features `positive`
    /// and `negative` (`[L, text_dim]` each, on `device`), the noise drawn from `seed`: `sink`
    /// receives the decoded frames chunk by chunk (`[1, 3, t, H, W]` in [-1, 1], on `device`);
    /// `progress` hears "vae encode", "step i", "dit", "chunk" (after each decoded chunk) and "vae
    /// decode" as each part finishes; an error it returns ends the enhancement there (how a
    /// timed-out item stops within one step or chunk).
    pub fn enhance(
        &self,
        video: &Tensor,
        positive: &Tensor,
        negative: &Tensor,
        seed: u64,
        progress: &mut dyn FnMut(&str) -> candle_core::Result<()>,
        sink: &mut dyn FnMut(Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        let x = video.to_device(&self.device)?.to_dtype(self.dtype)?;
        let origin = self.vae.encode(&x)?.to_dtype(DType::F32)?;
        drop(x);
        progress("vae encode")?;
        let noise = standard_normal(origin.dims(), noise_stream(seed, NOISE_STREAM))?.to_device(&self.device)?;
        let latents =
            self.sampler.enhance(&self.dit, &origin, &noise, positive, negative, &mut |point, _| match point {
                EnhancePoint::DitInput(i) => progress(&format!("step {i}")),
                _ => Ok(()),
            })?;
        progress("dit")?;
        self.vae.decode_chunks(&latents, &mut |_, _| {}, &mut |chunk| {
            sink(chunk)?;
            progress("chunk")
        })?;
        progress("vae decode")
    }
}

/// UMT5 and its tokenizer on their own device, with the negative prompt of the guidance and its
/// features once computed (every video uses the same ones).
pub struct PromptEncoder {
    /// The text encoder.
    umt5: Umt5Encoder,
    /// Its tokenizer.
    tokenizer: T5Tokenizer,
    /// Device of UMT5.
    device: Device,
    /// The negative prompt (MUG-V's: [`crate::wan_flow::NEGATIVE_PROMPT`]).
    negative_prompt: String,
    /// Its features, computed at first use.
    negative: OnceLock<Tensor>,
}

impl PromptEncoder {
    /// The text side of one worker's enhancer: UMT5 with its tokenizer on `device`, and the
    /// negative prompt of the guidance.
    pub fn new(umt5: Umt5Encoder, tokenizer: T5Tokenizer, device: Device, negative_prompt: String) -> PromptEncoder {
        PromptEncoder { umt5, tokenizer, device, negative_prompt, negative: OnceLock::new() }
    }

    /// UMT5 features `[L, dim]` (f32, on `to`) of a text's valid tokens, the text cleaned as
    /// Wan's prompter does up to its whitespace collapse.
    fn encode(&self, text: &str, to: &Device) -> candle_core::Result<Tensor> {
        let clean = text.split_whitespace().collect::<Vec<_>>().join(" ");
        let (ids, mask) =
            self.tokenizer.encode(&clean).map_err(|e| candle_core::Error::Msg(format!("tokenizer: {e}")))?;
        let len = ids.len();
        let ids = Tensor::from_vec(ids, (1, len), &self.device)?;
        let mask = Tensor::from_vec(mask, (1, len), &self.device)?;
        let states = self.umt5.encode(&ids, &mask)?.remove(0);
        states.to_dtype(DType::F32)?.to_device(to)
    }

    /// Features of `prompt` and of the negative prompt, on `to`.
    pub fn prompts(&self, prompt: &str, to: &Device) -> candle_core::Result<(Tensor, Tensor)> {
        let positive = self.encode(prompt, to)?;
        let negative = match self.negative.get() {
            Some(t) => t.clone(),
            None => {
                let t = self.encode(&self.negative_prompt, to)?;
                // Two workers racing here compute the same value; either one is kept.
                self.negative.get_or_init(|| t).clone()
            }
        };
        Ok((positive, negative))
    }
}

/// The models of one worker's enhancer: prompt and frames in, enhanced frames out.
pub struct EnhancerModels {
    /// DiT, VAE and sampling.
    pub wan: WanEnhancer,
    /// UMT5 and the negative prompt.
    pub text: PromptEncoder,
}

impl EnhancerModels {
    /// Enhance `video` `[1, 3, 1 + 4k, H, W]` (f32 in [-1, 1], any device) for `prompt` with the
    /// noise of `seed`: the frames `[1 + 4k, H, W, 3]` as 8-bit RGB bytes, truncated as the
    /// reference writes them. `progress` is [`WanEnhancer::enhance`]'s.
    pub fn enhance(
        &self,
        video: &Tensor,
        prompt: &str,
        seed: u64,
        progress: &mut dyn FnMut(&str) -> candle_core::Result<()>,
    ) -> candle_core::Result<Vec<u8>> {
        let (positive, negative) = self.text.prompts(prompt, &self.wan.device)?;
        let mut bytes = Vec::with_capacity(video.elem_count());
        self.wan.enhance(video, &positive, &negative, seed, progress, &mut |chunk| {
            let frames = to_frames_u8(&chunk.squeeze(0)?)?.to_device(&Device::Cpu)?;
            bytes.extend(frames.flatten_all()?.to_vec1::<u8>()?);
            Ok(())
        })?;
        Ok(bytes)
    }
}

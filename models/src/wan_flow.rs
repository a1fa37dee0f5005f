//! The MUG-V enhancer's sampling around the Wan DiT: DiffSynth's flow-matching schedule as the
//! enhancer configures it (one step from sigma 0.3 to 0), and the enhancement of a video latent:
//! partial noising, classifier-free guidance between the prompt and a fixed negative prompt,
//! Euler steps, with latent frame 0 kept clean throughout.

use candle_core::Tensor;

use crate::wan_dit::{WanDit, WanDitInput};

/// The negative prompt the enhancer pairs with every prompt.
pub const NEGATIVE_PROMPT: &str = "色调艳丽，过曝，静态，细节模糊不清，字幕，风格，作品，画作，画面，静止，整体发灰，最差质量，低质量，JPEG压缩残留，丑陋的，残缺的，多余的手指，画得不好的手部，画得不好的脸部，畸形的，毁容的，形态畸形的肢体，手指融合，静止不动的画面，杂乱的背景，三条腿，背景人很多，倒着走";

/// A flow-matching noise schedule (DiffSynth's `FlowMatchScheduler` at denoising strength 1).
#[derive(Debug, Clone, PartialEq)]
pub struct FlowMatchSchedule {
    /// Timesteps per unit of sigma (1000).
    pub num_train_timesteps: f32,
    /// Shift `s` of `s σ / (1 + (s - 1) σ)`.
    pub shift: f32,
    /// Sigma of the first step.
    pub sigma_max: f32,
    /// Sigma the steps head for.
    pub sigma_min: f32,
    /// Space `steps + 1` sigmas and drop the last, so the last step ends at `sigma_min`.
    pub extra_one_step: bool,
}

impl FlowMatchSchedule {
    /// The enhancer's: shift 1, sigmas from 0.3 to 0, one extra step.
    pub fn enhancer() -> FlowMatchSchedule {
        FlowMatchSchedule {
            num_train_timesteps: 1000.0,
            shift: 1.0,
            sigma_max: 0.3,
            sigma_min: 0.0,
            extra_one_step: true,
        }
    }

    /// The sigmas of `steps` steps: evenly spaced from `sigma_max` towards `sigma_min` (as
    /// `torch.linspace` computes them in f32), then shifted.
    pub fn sigmas(&self, steps: usize) -> Vec<f32> {
        let n = if self.extra_one_step { steps + 1 } else { steps };
        let (start, end) = (self.sigma_max, self.sigma_min);
        let step = if n > 1 { (end - start) / (n - 1) as f32 } else { 0.0 };
        let linspace =
            (0..n).map(|i| if i < n / 2 { start + step * i as f32 } else { end - step * (n - 1 - i) as f32 });
        linspace.take(steps).map(|s| self.shift * s / (1.0 + (self.shift - 1.0) * s)).collect()
    }

    /// The DiT timesteps of the sigmas, `sigma * num_train_timesteps`.
    pub fn timesteps(&self, sigmas: &[f32]) -> Vec<f32> {
        sigmas.iter().map(|s| s * self.num_train_timesteps).collect()
    }
}

/// How the enhancer samples.
#[derive(Debug, Clone, PartialEq)]
pub struct Enhancer {
    /// The noise schedule.
    pub schedule: FlowMatchSchedule,
    /// Denoising steps (MUG-V: 1).
    pub steps: usize,
    /// Classifier-free guidance scale (MUG-V: 2).
    pub cfg_scale: f32,
}

/// Intermediate values of an enhancement, `[B, C, T, h, w]` each, for parity tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnhancePoint {
    /// The clean latent noised to the first sigma (frame 0 not yet restored).
    Noisy,
    /// The DiT input of step `i` (frame 0 clean).
    DitInput(usize),
    /// The DiT's velocity for the prompt at step `i`.
    Positive(usize),
    /// The DiT's velocity for the negative prompt at step `i`.
    Negative(usize),
    /// The guided velocity of step `i`.
    Guided(usize),
}

/// `x` with latent frame 0 taken from `origin`.
fn keep_first_frame(x: &Tensor, origin: &Tensor) -> candle_core::Result<Tensor> {
    let t = x.dim(2)?;
    if t == 1 {
        return Ok(origin.clone());
    }
    Tensor::cat(&[&origin.narrow(2, 0, 1)?, &x.narrow(2, 1, t - 1)?], 2)
}

impl Enhancer {
    /// MUG-V's settings (`run.sh`, `predict.py`): one step from sigma 0.3, guidance 2.
    pub fn mugv() -> Enhancer {
        Enhancer { schedule: FlowMatchSchedule::enhancer(), steps: 1, cfg_scale: 2.0 }
    }

    /// Enhance the clean video latent `origin` `[1, C, T, h, w]` (the VAE's normalised encoding):
    /// noise it with standard-normal `noise` to the first sigma, then per step run the DiT on the
    /// prompt's and the negative prompt's text features (`[L, text_dim]` each, valid tokens only)
    /// with `origin` as its clean latent and first-frame mode on, guide, and take an Euler step;
    /// latent frame 0 stays `origin`'s. `hook` sees the values named by [`EnhancePoint`]; an
    /// error it returns ends the enhancement there (a cancelled item stops within one step).
    pub fn enhance(
        &self,
        dit: &WanDit,
        origin: &Tensor,
        noise: &Tensor,
        positive: &Tensor,
        negative: &Tensor,
        hook: &mut dyn FnMut(EnhancePoint, &Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let sigmas = self.schedule.sigmas(self.steps);
        let timesteps = self.schedule.timesteps(&sigmas);
        let first = *sigmas.first().ok_or_else(|| candle_core::Error::Msg("the enhancer needs a step".into()))?;
        let mut latents = ((origin * f64::from(1.0 - first))? + (noise * f64::from(first))?)?;
        hook(EnhancePoint::Noisy, &latents)?;
        let b = origin.dim(0)?;
        for (i, (&sigma, &timestep)) in sigmas.iter().zip(&timesteps).enumerate() {
            latents = keep_first_frame(&latents, origin)?;
            hook(EnhancePoint::DitInput(i), &latents)?;
            let velocity = |text: &Tensor| {
                dit.forward(&WanDitInput {
                    x: &latents,
                    y: Some(origin),
                    timestep: &vec![timestep; b],
                    first_frame_clean: true,
                    context: &vec![text.clone(); b],
                })
            };
            // Two passes, not one batch of 2: measured on the H200 the batch was no faster (the
            // DiT's 97,200 tokens fill the GPU either way) and held 1.5 GB more.
            let (pos, neg) = (velocity(positive)?, velocity(negative)?);
            hook(EnhancePoint::Positive(i), &pos)?;
            hook(EnhancePoint::Negative(i), &neg)?;
            let guided = (&neg + ((&pos - &neg)? * f64::from(self.cfg_scale))?)?;
            hook(EnhancePoint::Guided(i), &guided)?;
            let next = sigmas.get(i + 1).copied().unwrap_or(0.0);
            let step = (guided * f64::from(next - sigma))?.to_dtype(latents.dtype())?;
            latents = keep_first_frame(&(&latents + step)?, origin)?;
        }
        Ok(latents)
    }
}

//! MUG-V's rectified-flow sampler: a resolution- and length-shifted timestep schedule, Euler steps
//! on the velocity the DiT predicts, classifier-free guidance against a fixed negative prompt, and
//! conditioning frames (the reference-image latent) kept clean throughout.

use candle_core::{DType, Tensor};
use half::bf16;

use crate::mugdit::{DitInput, MugDit};

/// The negative prompt MUG-V's sampler pairs with every prompt.
pub const NEGATIVE_PROMPT: &str = "ugly, blurry, lowres, bad anatomy, bad hands, text, error, missing fingers, extra digit, fewer digits, cropped, worst quality, low quality, normal quality, jpeg artifacts, signature, watermark, username, blurry";

/// Pixels of the base resolution the timestep shift is relative to (512 x 512).
const BASE_RESOLUTION: f32 = 262_144.0;

/// How the timestep shift factor is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShiftPrecision {
    /// In f32 throughout.
    F32,
    /// As the shipped MUG-V pipeline does it: height, width and frame count are bf16 tensors, so
    /// the factor is rounded to bf16 at every step (needed to reproduce official outputs).
    PipelineBf16,
}

/// The sampler's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RFlow {
    /// Euler steps (MUG-V: 25).
    pub steps: usize,
    /// Classifier-free guidance scale (MUG-V: 4.0).
    pub guidance: f32,
}

/// The shift factor `sqrt(h * w / 512^2) * sqrt(frames)`.
fn shift_ratio(height_px: usize, width_px: usize, latent_frames: usize, precision: ShiftPrecision) -> f32 {
    match precision {
        ShiftPrecision::F32 => {
            let space = (height_px as f32 * width_px as f32 / BASE_RESOLUTION).sqrt();
            let time = (latent_frames as f32 / 1.0).sqrt();
            space * time * 1.0
        }
        ShiftPrecision::PipelineBf16 => {
            let b = |v: f32| bf16::from_f32(v).to_f32();
            let (h, w, n) = (b(height_px as f32), b(width_px as f32), b(latent_frames as f32));
            let space = b(b(b(h * w) / BASE_RESOLUTION).sqrt());
            let time = b(b(n / 1.0).sqrt());
            b(b(space * time) * 1.0)
        }
    }
}

/// Output of one sampling step, for tests and progress.
pub struct Step<'a> {
    /// Step index.
    pub index: usize,
    /// The DiT's raw output for `[cond; uncond]`, all `2C` channels.
    pub model_out: &'a Tensor,
    /// The guided velocity.
    pub velocity: &'a Tensor,
    /// The latent after the update, conditioning frames restored.
    pub latent: &'a Tensor,
}

/// What the DiT is conditioned on besides the latent.
pub struct Conditioning<'a> {
    /// Text features of the `n` prompts followed by `n` negative prompts, `[2n, 1, L, d]`.
    pub y: &'a Tensor,
    /// Valid tokens of each of the `2n` rows.
    pub text_lens: &'a [usize],
    /// Per prompt and latent frame: 1 = generate, 0 = conditioning frame (kept as given).
    pub mask: &'a [Vec<f32>],
    /// Frame rate fed to the DiT (the pipeline uses 30).
    pub fps: f32,
    /// Frame positions `0..T+2` (start token, frames, end token).
    pub frame_indices: &'a [usize],
}

impl RFlow {
    /// The timesteps on the 0..1000 scale: `(1 - i/steps) * 1000` shifted by
    /// `r * u / (1 + (r - 1) * u)` with `u = tau / 1000` and `r` the resolution/length factor.
    pub fn timesteps(
        &self,
        height_px: usize,
        width_px: usize,
        latent_frames: usize,
        precision: ShiftPrecision,
    ) -> Vec<f32> {
        let r = shift_ratio(height_px, width_px, latent_frames, precision);
        // In the pipeline `r - 1` stays in r's dtype; the products with u are f32 either way.
        let r1 = match precision {
            ShiftPrecision::F32 => r - 1.0,
            ShiftPrecision::PipelineBf16 => bf16::from_f32(r - 1.0).to_f32(),
        };
        (0..self.steps)
            .map(|i| {
                let tau = ((1.0 - i as f64 / self.steps as f64) * 1000.0) as f32;
                let u = tau / 1000.0;
                r * u / (1.0 + r1 * u) * 1000.0
            })
            .collect()
    }

    /// Sample latents `[n, C, T, H, W]` from `z` (whose conditioning frames hold the reference
    /// latents): `noise(0)` gives the initial noise, `noise(i + 1)` the noise of step `i` when a
    /// frame starts being generated mid-way (never with a 0/1 mask). `step` sees every step; an
    /// error it returns ends the sampling there (a cancelled item stops within one step).
    pub fn sample(
        &self,
        model: &MugDit,
        z: &Tensor,
        cond: &Conditioning,
        timesteps: &[f32],
        noise: &mut dyn FnMut(usize) -> candle_core::Result<Tensor>,
        step: &mut dyn FnMut(&Step) -> candle_core::Result<()>,
    ) -> candle_core::Result<Tensor> {
        let (n, _, t, _, _) = z.dims5()?;
        let channels = z.dim(1)?;
        if cond.mask.len() != n || cond.mask.iter().any(|m| m.len() != t) {
            candle_core::bail!("the mask needs {n} rows of {t} frames");
        }
        let dev = z.device();
        let frames = |pick: &dyn Fn(f32) -> bool| -> candle_core::Result<Tensor> {
            let v: Vec<u8> = cond.mask.iter().flat_map(|m| m.iter().map(|&x| u8::from(pick(x)))).collect();
            Tensor::from_vec(v, (n, 1, t, 1, 1), dev)?.broadcast_as(z.shape())
        };
        // add_noise at tau: (1 - tau/1000) * x0 + (tau/1000) * eps.
        let add_noise = |x0: &Tensor, eps: &Tensor, tau: f32| -> candle_core::Result<Tensor> {
            let keep = 1.0 - tau / 1000.0;
            (x0 * f64::from(keep))? + (eps * f64::from(1.0 - keep))?
        };
        let mut z = z.to_dtype(DType::F32)?;
        let first = *timesteps.first().ok_or_else(|| candle_core::Error::Msg("no timesteps".into()))?;
        let eps0 = noise(0)?;
        z = frames(&|m| m != 0.0)?.where_cond(&add_noise(&z, &eps0, first)?, &z)?;
        let mut noise_added: Vec<Vec<bool>> = cond.mask.iter().map(|m| m.iter().map(|&x| x == 1.0).collect()).collect();
        for (i, &tau) in timesteps.iter().enumerate() {
            let x0 = z.clone();
            let upper: Vec<Vec<bool>> =
                cond.mask.iter().map(|m| m.iter().map(|&x| x * 1000.0 >= tau).collect()).collect();
            let add: Vec<bool> =
                upper.iter().zip(&noise_added).flat_map(|(u, a)| u.iter().zip(a).map(|(u, a)| *u && !a)).collect();
            if add.iter().any(|&a| a) {
                let v: Vec<u8> = add.iter().map(|&a| u8::from(a)).collect();
                let sel = Tensor::from_vec(v, (n, 1, t, 1, 1), dev)?.broadcast_as(z.shape())?;
                z = sel.where_cond(&add_noise(&x0, &noise(i + 1)?, tau)?, &x0)?;
            }
            noise_added = upper.clone();

            let z_in = Tensor::cat(&[&z, &z], 0)?;
            let x_mask: Vec<Vec<bool>> = upper.iter().chain(&upper).cloned().collect();
            let out = model.forward(&DitInput {
                x: &z_in,
                timestep: &vec![tau; 2 * n],
                y: cond.y,
                text_lens: cond.text_lens,
                x_mask: &x_mask,
                fps: cond.fps,
                frame_indices: cond.frame_indices,
            })?;
            let pred = out.narrow(1, 0, channels)?;
            let (c, u) = (pred.narrow(0, 0, n)?, pred.narrow(0, n, n)?);
            let v = (&u + ((&c - &u)? * f64::from(self.guidance))?)?;
            let dt = match timesteps.get(i + 1) {
                Some(next) => (tau - next) / 1000.0,
                None => tau / 1000.0,
            };
            z = (&z + (&v * f64::from(dt))?)?;
            let keep: Vec<u8> = upper.iter().flat_map(|r| r.iter().map(|&u| u8::from(u))).collect();
            z = Tensor::from_vec(keep, (n, 1, t, 1, 1), dev)?.broadcast_as(z.shape())?.where_cond(&z, &x0)?;
            step(&Step { index: i, model_out: &out, velocity: &v, latent: &z })?;
        }
        Ok(z)
    }
}

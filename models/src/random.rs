//! Random-weight checkpoints with a model's real key names and shapes, for plumbing tests, demos
//! and benchmarks: the same loader that reads a real checkpoint reads these.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

use crate::weights::{Checkpoint, WeightsError};

/// Every `(key, shape)` a model's loader reads, found by loading it from a dry checkpoint.
pub fn model_keys<T>(
    load: impl FnOnce(&Checkpoint) -> Result<T, WeightsError>,
) -> Result<Vec<(String, Vec<usize>)>, WeightsError> {
    let dry = Checkpoint::dry(DType::F32, &Device::Cpu);
    load(&dry)?;
    Ok(dry.read_keys())
}

/// How one tensor of a random checkpoint is drawn: a constant, or values of mean `mean` and
/// standard deviation `std`. One rule for every random checkpoint, in memory or on disk.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Init {
    /// Every value the same.
    Const(f32),
    /// Values of this mean and standard deviation.
    Spread {
        /// The mean.
        mean: f32,
        /// The standard deviation.
        std: f32,
    },
}

/// The rule for the tensor `key` of `shape`: matrices and kernels spread `1/sqrt(fan_in)`, norm
/// weights around 1, other vectors (biases, embeddings of one vector) near 0, and the latent
/// `scale`/`shift` buffers 1 and 0, so that a forward pass stays finite.
pub fn init_rule(key: &str, shape: &[usize]) -> Init {
    if key.ends_with("scale") {
        Init::Const(1.0)
    } else if key.ends_with("shift") {
        Init::Const(0.0)
    } else if shape.len() <= 1 {
        let is_norm = key.ends_with(".weight") && (key.contains("norm") || key.contains("layrnorm"));
        if is_norm {
            Init::Spread { mean: 1.0, std: 0.05 }
        } else {
            Init::Spread { mean: 0.0, std: 0.02 }
        }
    } else {
        let fan_in: usize = shape[1..].iter().product();
        Init::Spread { mean: 0.0, std: 1.0 / (fan_in.max(1) as f32).sqrt() }
    }
}

impl Init {
    /// Fill `out` with values of this rule, uniform for a spread (bounded, and cheap enough to
    /// write a 10B model at disk speed), from a generator seeded with `seed`: the same seed gives
    /// the same values on every machine and with any number of threads.
    pub fn fill(self, seed: u64, out: &mut [f32]) {
        match self {
            Init::Const(v) => out.fill(v),
            Init::Spread { mean, std } => {
                // A uniform on [-a, a) has standard deviation a / sqrt(3).
                let a = std * 3f32.sqrt();
                let mut state = seed;
                for pair in out.chunks_mut(2) {
                    let bits = splitmix64(&mut state);
                    for (v, half) in pair.iter_mut().zip([bits as u32, (bits >> 32) as u32]) {
                        // 24 random bits -> [-1, 1).
                        let u = (half >> 8) as f32 * (2.0 / (1u32 << 24) as f32) - 1.0;
                        *v = mean + a * u;
                    }
                }
            }
        }
    }
}

/// The SplitMix64 generator: one step of `state`, a well-mixed 64-bit output. Fast, and good
/// enough for weights that only have to be random-looking.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A checkpoint of random tensors for `keys` in `dtype`, made on `make` with the rule of
/// [`init_rule`] (normal values from that device's generator) and served on `device`: how
/// benchmarks get a 10B model without a 20 GB file (a GPU makes T5-XXL's 19 GB for the CPU in
/// seconds).
pub fn random_checkpoint(
    keys: &[(String, Vec<usize>)],
    dtype: DType,
    make: &Device,
    device: &Device,
) -> candle_core::Result<Checkpoint> {
    let mut tensors = BTreeMap::new();
    for (key, shape) in keys {
        let t = match init_rule(key, shape) {
            Init::Const(v) => Tensor::full(v, shape.as_slice(), make)?,
            Init::Spread { mean, std } => Tensor::randn(mean, std, shape.as_slice(), make)?,
        };
        tensors.insert(key.clone(), t.to_dtype(dtype)?);
    }
    Ok(Checkpoint::from_tensors("(random weights)", tensors, dtype, device))
}

/// The seed of noise stream `k` of a video seeded `seed`: independent streams (posterior sample,
/// initial noise, sampler steps, enhancer) from one per-row seed.
pub fn noise_stream(seed: u64, k: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(k)
}

/// Seeded standard-normal noise of `shape` (f32, CPU), e.g. to sample a VAE posterior
/// reproducibly.
pub fn standard_normal(shape: &[usize], seed: u64) -> candle_core::Result<Tensor> {
    let mut rng = StdRng::seed_from_u64(seed);
    let n: usize = shape.iter().product();
    let values: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
}

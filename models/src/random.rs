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

/// Seeded random tensors for `keys`: matrices and kernels `N(0, 1/fan_in)`, vectors (norm
/// weights and biases) near their neutral values, and the latent `scale`/`shift` buffers 1 and 0
/// so that normalisation stays finite.
pub fn random_weights(keys: &[(String, Vec<usize>)], seed: u64) -> candle_core::Result<BTreeMap<String, Tensor>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = BTreeMap::new();
    for (key, shape) in keys {
        let n: usize = shape.iter().product();
        let mut normal = |std: f32, mean: f32| -> Vec<f32> {
            (0..n).map(|_| mean + std * rng.sample::<f32, _>(StandardNormal)).collect()
        };
        let values = if key.ends_with("scale") {
            vec![1.0; n]
        } else if key.ends_with("shift") {
            vec![0.0; n]
        } else if shape.len() <= 1 {
            // Norm weights around 1, everything else (biases, embeddings of one vector) near 0.
            let is_norm = key.ends_with(".weight") && (key.contains("norm") || key.contains("layrnorm"));
            if is_norm {
                normal(0.05, 1.0)
            } else {
                normal(0.02, 0.0)
            }
        } else {
            let fan_in: usize = shape[1..].iter().product();
            normal(1.0 / (fan_in.max(1) as f32).sqrt(), 0.0)
        };
        out.insert(key.clone(), Tensor::from_vec(values, shape.as_slice(), &Device::Cpu)?);
    }
    Ok(out)
}

/// A checkpoint of random tensors for `keys` in `dtype`, made on `make` with the same scheme as
/// [`random_weights`] (but that device's generator) and served on `device`: how benchmarks get a
/// 10B model without a 20 GB file (a GPU makes T5-XXL's 19 GB for the CPU in seconds).
pub fn random_checkpoint(
    keys: &[(String, Vec<usize>)],
    dtype: DType,
    make: &Device,
    device: &Device,
) -> candle_core::Result<Checkpoint> {
    let mut tensors = BTreeMap::new();
    for (key, shape) in keys {
        let t = if key.ends_with("scale") {
            Tensor::ones(shape.as_slice(), DType::F32, make)?
        } else if key.ends_with("shift") {
            Tensor::zeros(shape.as_slice(), DType::F32, make)?
        } else if shape.len() <= 1 {
            let is_norm = key.ends_with(".weight") && (key.contains("norm") || key.contains("layrnorm"));
            if is_norm {
                Tensor::randn(1f32, 0.05, shape.as_slice(), make)?
            } else {
                Tensor::randn(0f32, 0.02, shape.as_slice(), make)?
            }
        } else {
            let fan_in: usize = shape[1..].iter().product();
            Tensor::randn(0f32, 1.0 / (fan_in.max(1) as f32).sqrt(), shape.as_slice(), make)?
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

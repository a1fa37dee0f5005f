//! Layers several models load alike: a linear map or a LayerNorm read from `{weight, bias}` under
//! a key, so each model file names its keys and not the tensors' shapes again.

use candle_nn::{LayerNorm, Linear};

use crate::weights::{Weights, WeightsError};

/// A linear layer from `weight` `[cout, cin]` and `bias` `[cout]` under `w`.
pub(crate) fn linear(w: &Weights, cin: usize, cout: usize) -> Result<Linear, WeightsError> {
    Ok(Linear::new(w.get("weight", &[cout, cin])?, Some(w.get("bias", &[cout])?)))
}

/// A linear layer from `weight` `[cout, cin]` under `w`, without a bias (T5-style models).
pub(crate) fn linear_no_bias(w: &Weights, cin: usize, cout: usize) -> Result<Linear, WeightsError> {
    Ok(Linear::new(w.get("weight", &[cout, cin])?, None))
}

/// A LayerNorm from `weight` and `bias` `[dim]` under `w`.
pub(crate) fn layer_norm(w: &Weights, dim: usize, eps: f64) -> Result<LayerNorm, WeightsError> {
    Ok(LayerNorm::new(w.get("weight", &[dim])?, w.get("bias", &[dim])?, eps))
}

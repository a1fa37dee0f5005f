//! Helpers shared by the parity tests: golden files and the relative L2 error.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// A file of the goldens copied into tests/data/<folder>.
pub fn data(folder: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(folder).join(name)
}

/// The tensors of a golden case file.
pub fn case(folder: &str, name: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(data(folder, name), &Device::Cpu).unwrap()
}

/// `||a - b|| / ||b||` in f32.
pub fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    norm(&(a - b).unwrap()) / norm(b)
}

/// Assert the same shape and `rel_l2 < 1e-4`, the goldens' tolerance.
pub fn assert_close(what: &str, ours: &Tensor, reference: &Tensor) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let err = rel_l2(ours, reference);
    assert!(err < 1e-4, "{what}: rel-L2 {err}");
}

/// Assert the same shape and `rel_l2 < tolerance`, print the error (`--nocapture` lists the
/// measured parity) and return it.
pub fn assert_within(what: &str, ours: &Tensor, reference: &Tensor, tolerance: f32) -> f32 {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let err = rel_l2(ours, reference);
    eprintln!("{what}: rel-L2 {err:.3e}");
    assert!(err < tolerance, "{what}: rel-L2 {err} (tolerance {tolerance})");
    err
}

/// The JSON document of a golden folder's file (e.g. its `config.json`).
pub fn json(folder: &str, name: &str) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(data(folder, name)).unwrap()).unwrap()
}

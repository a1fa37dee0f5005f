//! Helpers shared by the parity tests: golden files and the relative L2 error.

#![allow(dead_code)] // each test binary uses a different subset

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};

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

/// The non-tensor inputs of a MUG-DiT golden case: timesteps, valid text lengths, per-frame
/// noisy flags, frame positions and fps.
pub struct DitCase {
    pub timestep: Vec<f32>,
    pub text_lens: Vec<usize>,
    pub x_mask: Vec<Vec<bool>>,
    pub frames: Vec<usize>,
    pub fps: f32,
}

impl DitCase {
    /// The DiT's input: these settings with the latents `x` and the text features `y`.
    pub fn input<'a>(&'a self, x: &'a Tensor, y: &'a Tensor) -> models::mugdit::DitInput<'a> {
        models::mugdit::DitInput {
            x,
            timestep: &self.timestep,
            y,
            text_lens: &self.text_lens,
            x_mask: &self.x_mask,
            fps: self.fps,
            frame_indices: &self.frames,
        }
    }
}

/// Reads [`DitCase`] from a case's `in_*` and `mid_text_lens` tensors.
pub fn dit_case(c: &HashMap<String, Tensor>) -> DitCase {
    let ints = |t: &Tensor| -> Vec<i64> { t.flatten_all().unwrap().to_dtype(DType::I64).unwrap().to_vec1().unwrap() };
    let t = c["in_x"].dim(2).unwrap();
    DitCase {
        timestep: c["in_timestep"].to_vec1().unwrap(),
        text_lens: ints(&c["mid_text_lens"]).iter().map(|&v| v as usize).collect(),
        x_mask: ints(&c["in_x_mask"]).chunks(t).map(|r| r.iter().map(|&v| v == 1).collect()).collect(),
        frames: ints(&c["in_frame_indice"]).iter().map(|&v| v as usize).collect(),
        fps: c["in_fps"].to_vec1::<f32>().unwrap()[0],
    }
}

/// Check that `forward` stops between its blocks when its caller says so: counted with a stop
/// check that never stops, the forward checks `at_least` times or more and gives the same
/// result as without a check; told to stop at the k-th check (the first, and the last), it
/// returns [`models::interrupt::Interrupted`]'s error at exactly that check, computing no more.
pub fn stops_at_the_check_that_says_stop(at_least: usize, forward: impl Fn() -> candle_core::Result<Tensor>) {
    use std::cell::Cell;
    use std::rc::Rc;
    let counting = |stop_at: usize| {
        let calls = Rc::new(Cell::new(0usize));
        let c = calls.clone();
        let out = models::interrupt::scope(
            move || {
                c.set(c.get() + 1);
                c.get() == stop_at
            },
            &forward,
        );
        (out, calls.get())
    };
    let (out, checks) = counting(0);
    assert!(checks >= at_least, "{checks} checks, expected at least {at_least}");
    assert_eq!(rel_l2(&out.unwrap(), &forward().unwrap()), 0.0, "a check that never stops changes nothing");
    for k in [1, checks] {
        let (out, calls) = counting(k);
        let err = out.expect_err("a forward told to stop finishes anyway");
        assert_eq!(calls, k, "it went on checking after it was told to stop at check {k}");
        // candle keeps a wrapped error as text only: the message is what says which it was.
        assert!(err.to_string().contains("stopped between blocks: the work was cancelled"), "{err}");
    }
}

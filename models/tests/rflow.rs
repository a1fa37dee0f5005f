//! The rectified-flow sampler against the goldens of the PyTorch reference (tests/data/rflow):
//! the real 720p timestep lists (f32 and the shipped pipeline's bf16 arithmetic) and a 5-step
//! image-to-video sampling run with the tiny MUG-DiT and the reference's stored noises.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use models::mugdit::{MugDit, MugDitConfig};
use models::rflow::{Conditioning, RFlow, ShiftPrecision, NEGATIVE_PROMPT};
use models::weights::Checkpoint;

mod common;

use common::{assert_close, data};

#[test]
fn real_timestep_lists_match_both_ways() {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("rflow", "timesteps_720p_25steps.json")).unwrap()).unwrap();
    let sampler = RFlow { steps: 25, guidance: 4.0 };
    let configs = doc["configs"].as_object().unwrap();
    assert_eq!(configs.len(), 10);
    for (name, c) in configs {
        let (h, w, t) =
            (c["height_px"].as_u64().unwrap(), c["width_px"].as_u64().unwrap(), c["latent_frames"].as_u64().unwrap());
        for (key, precision) in [("fp32", ShiftPrecision::F32), ("pipeline_bf16", ShiftPrecision::PipelineBf16)] {
            let ours = sampler.timesteps(h as usize, w as usize, t as usize, precision);
            let reference: Vec<f64> = c[key].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
            for (i, (a, b)) in ours.iter().zip(&reference).enumerate() {
                assert!(((f64::from(*a) - b) / b).abs() < 1e-6, "{name} {key} step {i}: {a} vs {b}");
            }
        }
    }
}

#[test]
fn image_to_video_sampling_matches_the_reference() {
    let ckpt = Checkpoint::open(&data("mugdit", "weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = MugDit::load(&ckpt, &MugDitConfig::golden()).unwrap();
    let c: HashMap<String, Tensor> =
        candle_core::safetensors::load(data("rflow", "case_sample_i2v.safetensors"), &Device::Cpu).unwrap();
    let sampler = RFlow { steps: 5, guidance: 4.0 };
    let timesteps = sampler.timesteps(720, 1280, 5, ShiftPrecision::F32);
    assert_close("timesteps", &Tensor::new(timesteps.as_slice(), &Device::Cpu).unwrap(), &c["timesteps"]);

    let lens: Vec<usize> = c["in_text_mask"]
        .to_dtype(DType::F32)
        .unwrap()
        .sum(1)
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .iter()
        .map(|&v| v as usize)
        .collect();
    let mask: Vec<f32> = c["in_cond_mask"].flatten_all().unwrap().to_vec1().unwrap();
    let cond = Conditioning {
        y: &c["in_text_y"],
        text_lens: &lens,
        mask: &[mask],
        fps: 30.0,
        frame_indices: &[0, 1, 2, 3, 4, 5, 6],
    };
    let mut noise = |k: usize| -> candle_core::Result<Tensor> {
        Ok(if k == 0 { c["in_noise_initial"].clone() } else { c[&format!("in_noise_step{}", k - 1)].clone() })
    };
    let mut steps = 0;
    let out = sampler
        .sample(&model, &c["in_z"], &cond, &timesteps, &mut noise, &mut |s| {
            let i = s.index;
            assert_close(&format!("step {i} model_out"), s.model_out, &c[&format!("step{i}_model_out")]);
            assert_close(&format!("step {i} v_pred"), s.velocity, &c[&format!("step{i}_v_pred")]);
            assert_close(&format!("step {i} latent"), s.latent, &c[&format!("step{i}_latent_after")]);
            steps += 1;
            Ok(())
        })
        .unwrap();
    assert_eq!(steps, 5);
    assert_close("final latent", &out, &c["out_final_latent"]);
    // The reference latent (frame 0) comes back bit for bit.
    let frame0 = |t: &Tensor| t.narrow(2, 0, 1).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(frame0(&out), frame0(&c["in_z"]));

    let prompts: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("rflow", "prompt_strings.json")).unwrap()).unwrap();
    assert_eq!(prompts["negative_prompt"], NEGATIVE_PROMPT);
}

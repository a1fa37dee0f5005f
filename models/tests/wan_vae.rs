//! The Wan2.1 video VAE against the goldens of the PyTorch reference (tests/data/wan_vae): the
//! chunked causal encoding and decoding chunk by chunk, and the VAE halves of the MUG-V
//! enhancement step (tests/data/wan_dit).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::wan_vae::{to_frames_u8, WanVae, WanVaeConfig, WanVaePoint};
use models::weights::{Checkpoint, WeightsError};

mod common;

use common::assert_within;

/// The README's tolerance.
const TOLERANCE: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    common::data("wan_vae", name)
}

fn vae() -> WanVae {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    WanVae::load(&ckpt, &WanVaeConfig::golden()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

#[test]
fn presets_match_the_reference_configs() {
    let doc = common::json("wan_vae", "config.json");
    for (config, name) in [(WanVaeConfig::golden(), "tiny"), (WanVaeConfig::wan21(), "real")] {
        let c = &doc[name];
        assert_eq!(config.dim as u64, c["dim"].as_u64().unwrap(), "{name}");
        assert_eq!(config.z_dim as u64, c["z_dim"].as_u64().unwrap());
        assert_eq!(serde_json::json!(config.dim_mult), c["dim_mult"]);
        assert_eq!(config.num_res_blocks as u64, c["num_res_blocks"].as_u64().unwrap());
        assert_eq!(serde_json::json!(config.temporal_downsample), c["temperal_downsample"]);
        assert_eq!(c["attn_scales"], serde_json::json!([]), "no attention outside the middle blocks");
        assert_eq!(config.latent_mean, floats(&doc["latent_mean"]));
        assert_eq!(config.latent_std, floats(&doc["latent_std"]));
    }
    let c = common::case("wan_vae", "case_encode.safetensors");
    assert_eq!(WanVaeConfig::wan21().latent_mean, c["latent_mean"].to_vec1::<f32>().unwrap());
    assert_eq!(WanVaeConfig::wan21().latent_std, c["latent_std"].to_vec1::<f32>().unwrap());
}

#[test]
fn encoding_matches_the_reference_chunk_by_chunk() {
    let c = common::case("wan_vae", "case_encode.safetensors");
    let mut seen = HashMap::new();
    let latent = vae()
        .encode_with(&c["video"], &mut |p, x| {
            seen.insert(p, x.clone());
        })
        .unwrap();
    for i in 0..3 {
        let name = format!("encoder_chunk{i}_out");
        assert_within(&name, &seen[&WanVaePoint::EncoderChunk(i)], &c[&name], TOLERANCE);
    }
    assert_within("mu_raw", &seen[&WanVaePoint::Mean], &c["mu_raw"], TOLERANCE);
    assert_within("logvar_raw_unused", &seen[&WanVaePoint::LogVariance], &c["logvar_raw_unused"], TOLERANCE);
    assert_within("latent", &latent, &c["latent"], TOLERANCE);
}

#[test]
fn decoding_matches_the_reference_chunk_by_chunk() {
    let c = common::case("wan_vae", "case_decode.safetensors");
    let vae = vae();
    let mut seen = HashMap::new();
    let mut chunks = Vec::new();
    vae.decode_chunks(
        &c["latent"],
        &mut |p, x| {
            seen.insert(p, x.clone());
        },
        &mut |chunk| {
            chunks.push(chunk);
            Ok(())
        },
    )
    .unwrap();
    assert_within("z_denorm", &seen[&WanVaePoint::Denormalised], &c["z_denorm"], TOLERANCE);
    assert_within("conv2_out", &seen[&WanVaePoint::Conv2], &c["conv2_out"], TOLERANCE);
    for i in 0..4 {
        let name = format!("decoder_chunk{i}_out");
        assert_within(&name, &seen[&WanVaePoint::DecoderChunk(i)], &c[&name], TOLERANCE);
    }
    let unclamped: Vec<Tensor> = (0..4).map(|i| seen[&WanVaePoint::DecoderChunk(i)].clone()).collect();
    assert_within("video_unclamped", &Tensor::cat(&unclamped, 2).unwrap(), &c["video_unclamped"], TOLERANCE);
    assert_within("video (chunks)", &Tensor::cat(&chunks, 2).unwrap(), &c["video"], TOLERANCE);
    assert_within("video", &vae.decode(&c["latent"]).unwrap(), &c["video"], TOLERANCE);
}

/// The enhancement step's VAE halves: the clean latent of the input video, and the output video
/// and its 8-bit frames from the enhanced latent.
#[test]
fn enhancement_step_encoding_and_decoding_match_the_reference() {
    let c = common::case("wan_dit", "case_enhance_step.safetensors");
    let vae = vae();
    assert_within("latents_origin", &vae.encode(&c["video_in"]).unwrap(), &c["latents_origin"], TOLERANCE);
    let frames = vae.decode(&c["latents_out"]).unwrap();
    assert_within("frames", &frames, &c["frames"], TOLERANCE);
    // Truncation at integer boundaries may move a few pixels by one level.
    let ours = to_frames_u8(&frames.squeeze(0).unwrap()).unwrap().to_dtype(DType::F32).unwrap();
    let reference = c["frames_uint8"].to_dtype(DType::F32).unwrap();
    assert_eq!(ours.dims(), reference.dims());
    let diff: Vec<f32> = (ours - reference).unwrap().abs().unwrap().flatten_all().unwrap().to_vec1().unwrap();
    let off = diff.iter().filter(|&&d| d > 0.0).count();
    assert!(diff.iter().all(|&d| d <= 1.0), "a pixel differs by more than one level");
    assert!(off * 1000 < diff.len(), "{off} of {} pixels differ", diff.len());
    eprintln!("frames_uint8: {off} of {} values differ by one level", diff.len());
}

#[test]
fn frame_counts_that_are_not_one_plus_four_k_are_refused() {
    let c = common::case("wan_vae", "case_encode.safetensors");
    let err = vae().encode(&c["video"].narrow(2, 0, 7).unwrap()).unwrap_err().to_string();
    assert!(err.contains("the Wan VAE encodes 1 + 4k frames, not 7"), "{err}");
}

#[test]
fn a_checkpoint_with_wrong_keys_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("decoder.upsamples.7.time_conv.bias");
    tensors.insert("model.conv1.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("vae.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    match WanVae::load(&ckpt, &WanVaeConfig::golden()) {
        Err(WeightsError::Keys { missing, unexpected, .. }) => {
            assert_eq!(missing, ["decoder.upsamples.7.time_conv.bias"]);
            assert_eq!(unexpected, ["model.conv1.weight"]);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a checkpoint with a missing key was accepted"),
    }
}

/// The real preset reads exactly the README's key table (`Wan2.1_VAE.pth`).
#[test]
fn the_real_preset_reads_the_real_keys_and_shapes() {
    let dry = Checkpoint::dry(DType::F32, &Device::Cpu);
    WanVae::load(&dry, &WanVaeConfig::wan21()).unwrap();
    let keys: HashMap<String, Vec<usize>> = dry.read_keys().into_iter().collect();
    let tiny = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    assert_eq!(keys.len(), tiny.len(), "the same module tree as the golden's 194 tensors");
    for (key, shape) in [
        ("encoder.conv1.weight", vec![96, 3, 3, 3, 3]),
        ("encoder.downsamples.2.resample.1.weight", vec![96, 96, 3, 3]),
        ("encoder.downsamples.3.shortcut.weight", vec![192, 96, 1, 1, 1]),
        ("encoder.downsamples.5.time_conv.weight", vec![192, 192, 3, 1, 1]),
        ("encoder.downsamples.8.time_conv.weight", vec![384, 384, 3, 1, 1]),
        ("encoder.middle.1.norm.gamma", vec![384, 1, 1]),
        ("encoder.middle.1.to_qkv.weight", vec![1152, 384, 1, 1]),
        ("encoder.head.0.gamma", vec![384, 1, 1, 1]),
        ("encoder.head.2.weight", vec![32, 384, 3, 3, 3]),
        ("conv1.weight", vec![32, 32, 1, 1, 1]),
        ("conv2.weight", vec![16, 16, 1, 1, 1]),
        ("decoder.conv1.weight", vec![384, 16, 3, 3, 3]),
        ("decoder.upsamples.3.resample.1.weight", vec![192, 384, 3, 3]),
        ("decoder.upsamples.3.time_conv.weight", vec![768, 384, 3, 1, 1]),
        ("decoder.upsamples.4.shortcut.weight", vec![384, 192, 1, 1, 1]),
        ("decoder.upsamples.7.time_conv.weight", vec![768, 384, 3, 1, 1]),
        ("decoder.upsamples.11.resample.1.weight", vec![96, 192, 3, 3]),
        ("decoder.upsamples.14.residual.6.weight", vec![96, 96, 3, 3, 3]),
        ("decoder.head.2.weight", vec![3, 96, 3, 3, 3]),
    ] {
        assert_eq!(keys.get(key), Some(&shape), "{key}");
    }
}

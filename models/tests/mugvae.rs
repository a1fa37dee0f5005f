//! MUG-V VideoVAE against the goldens of the PyTorch reference (tests/data/mugvae): the 2D part,
//! the temporal part, the whole encode/decode with its time handling, and the latent sizes.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::mugvae::{MugVae, MugVaeConfig};
use models::weights::{Checkpoint, WeightsError};

mod common;

use common::assert_close;

fn data(name: &str) -> PathBuf {
    common::data("mugvae", name)
}

fn case(name: &str) -> HashMap<String, Tensor> {
    common::case("mugvae", name)
}

fn vae() -> MugVae {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    MugVae::load(&ckpt, &MugVaeConfig::golden()).unwrap()
}

#[test]
fn spatial_part_matches_the_reference() {
    let (vae, c) = (vae(), case("case_spatial.safetensors"));
    let feat = vae.spatial_encode(&c["x"]).unwrap();
    assert_close("feat", &feat, &c["feat"]);
    assert_close("rec", &vae.spatial_decode(&c["feat"]).unwrap(), &c["rec"]);
    // Sizes that are not multiples of 8 floor on the way down: 36x46 -> 4x5 -> 32x40.
    assert_close("feat_odd", &vae.spatial_encode(&c["x_odd"]).unwrap(), &c["feat_odd"]);
    assert_close("rec_odd", &vae.spatial_decode(&c["feat_odd"]).unwrap(), &c["rec_odd"]);
}

#[test]
fn temporal_part_matches_the_reference() {
    let (vae, c) = (vae(), case("case_temporal.safetensors"));
    let p = vae.temporal_posterior(&c["x_z"]).unwrap();
    assert_close("post_mean", &p.mean, &c["post_mean"]);
    assert_close("post_std", &p.std, &c["post_std"]);
    let z = (&p.mean + (&p.std * &c["noise"]).unwrap()).unwrap();
    assert_close("z_sample", &z, &c["z_sample"]);
    assert_close("rec", &vae.temporal_decode(&c["z_sample"], 21).unwrap(), &c["rec"]);
    let one = c["z_sample"].narrow(2, 0, 1).unwrap();
    assert_close("rec_1frame", &vae.temporal_decode(&one, 1).unwrap(), &c["rec_1frame"]);
}

#[test]
fn whole_pipeline_matches_the_reference() {
    let (vae, c) = (vae(), case("case_full.safetensors"));
    let x_z = vae.spatial_encode(&c["video"]).unwrap();
    assert_close("x_z", &x_z, &c["x_z"]);
    assert_close("x_z_padded", &vae.replicate_first_frame(&x_z).unwrap(), &c["x_z_padded"]);
    let p = vae.posterior(&c["video"]).unwrap();
    assert_close("post_mean", &p.mean, &c["post_mean"]);
    assert_close("post_std", &p.std, &c["post_std"]);
    let z = vae.encode(&c["video"], Some(&c["noise"])).unwrap();
    assert_close("z", &z, &c["z"]);

    assert_close("dec_x_z", &vae.decode_features(&c["z"], 57).unwrap(), &c["dec_x_z"]);
    assert_close("x_rec", &vae.decode(&c["z"], 57).unwrap(), &c["x_rec"]);
    // The image-to-video pipeline drops latent frame 0 and decodes one frame fewer.
    let rest = c["z"].narrow(2, 1, 7).unwrap();
    assert_close("i2v_dec_x_z", &vae.decode_features(&rest, 56).unwrap(), &c["i2v_dec_x_z"]);
    assert_close("x_rec_i2v", &vae.decode(&rest, 56).unwrap(), &c["x_rec_i2v"]);

    // Without noise, encoding gives the normalised posterior mean.
    let mean = vae.encode(&c["video"], None).unwrap();
    let shift = Tensor::new(&[-0.019_409_18_f32], &Device::Cpu).unwrap();
    let expected0 = (c["post_mean"].narrow(1, 0, 1).unwrap().broadcast_sub(&shift).unwrap() / 0.8817).unwrap();
    assert_close("mean channel 0", &mean.narrow(1, 0, 1).unwrap(), &expected0);
}

#[test]
fn reference_image_latent_matches_the_reference() {
    // The pipeline's conditioning: the image repeated 8 times in time, one latent frame.
    let (vae, c) = (vae(), case("case_refimage.safetensors"));
    let video = c["image"].unsqueeze(0).unwrap().repeat((1, 1, 8, 1, 1)).unwrap();
    let z = vae.encode(&video, Some(&c["noise"])).unwrap();
    assert_close("ref_latent", &z.squeeze(0).unwrap(), &c["ref_latent"]);
}

#[test]
fn decode_refuses_a_frame_count_that_does_not_fit_the_latents() {
    let (vae, c) = (vae(), case("case_full.safetensors"));
    let err = vae.decode(&c["z"], 40).unwrap_err().to_string();
    assert!(err.contains("40 frames have 5 latent frames, the latents hold 8"), "{err}");
}

#[test]
fn latent_sizes_match_the_reference() {
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(data("latent_sizes.json")).unwrap()).unwrap();
    let config = MugVaeConfig::mugv();
    let mut checked = 0;
    for case in doc["cases"].as_array().unwrap() {
        let dims = |k: &str| -> Vec<Option<usize>> {
            case[k].as_array().unwrap().iter().map(|v| v.as_u64().map(|n| n as usize)).collect()
        };
        let (input, latent) = (dims("input_size"), dims("latent_size"));
        // Cases without a frame count (images) only exercise the reference's `None` passthrough.
        let Some(frames) = input[0] else { continue };
        let (t, h, w) = config.latent_size(frames, input[1].unwrap(), input[2].unwrap());
        assert_eq!([Some(t), Some(h), Some(w)].to_vec(), latent, "input {input:?}");
        checked += 1;
    }
    assert!(checked >= 90, "only {checked} cases");
}

#[test]
fn a_checkpoint_with_wrong_keys_is_refused_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("temporal_vae.decoder.conv_out.conv.bias");
    tensors.insert("temporal_vae.decoder.extra.weight".into(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("vae.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    match MugVae::load(&ckpt, &MugVaeConfig::golden()) {
        Err(WeightsError::Keys { missing, unexpected, .. }) => {
            assert_eq!(missing, ["temporal_vae.decoder.conv_out.conv.bias"]);
            assert_eq!(unexpected, ["temporal_vae.decoder.extra.weight"]);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a checkpoint with a missing key was accepted"),
    }
    // The real-size config on the tiny weights fails on the first shape, naming the key.
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let err = MugVae::load(&ckpt, &MugVaeConfig::mugv()).err().unwrap().to_string();
    assert!(err.contains("`spatial_vae.module.encoder.") && err.contains("the model expects [128]"), "{err}");
}

/// The same weights saved by PyTorch (`torch.save` of the state dict, as the official `vae.pt`)
/// and as a sharded safetensors folder with an index load to the same model; bf16 loading works.
#[test]
fn the_vae_loads_from_pytorch_pt_and_sharded_safetensors() {
    let python = std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with torch and safetensors (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let script = r#"
import json, sys, torch
from safetensors.torch import load_file, save_file
src, out = sys.argv[1], sys.argv[2]
sd = load_file(src)
torch.save(sd, f"{out}/vae.pt")
keys = sorted(sd)
half = len(keys) // 2
shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
import os
os.makedirs(f"{out}/sharded")
for name, ks in shards.items():
    save_file({k: sd[k].contiguous() for k in ks}, f"{out}/sharded/{name}")
index = {"metadata": {}, "weight_map": {k: n for n, ks in shards.items() for k in ks}}
json.dump(index, open(f"{out}/sharded/model.safetensors.index.json", "w"))
"#;
    let status = std::process::Command::new(python)
        .args(["-c", script, data("weights.safetensors").to_str().unwrap(), dir.path().to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
    let c = case("case_spatial.safetensors");
    for path in [dir.path().join("vae.pt"), dir.path().join("sharded")] {
        let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
        let vae = MugVae::load(&ckpt, &MugVaeConfig::golden()).unwrap();
        assert_close(&path.display().to_string(), &vae.spatial_encode(&c["x"]).unwrap(), &c["feat"]);
    }
    // bf16 checkpoints load (candle's CPU backend cannot multiply bf16, so they run on GPUs).
    let ckpt = Checkpoint::open(&dir.path().join("vae.pt"), DType::BF16, &Device::Cpu).unwrap();
    assert!(MugVae::load(&ckpt, &MugVaeConfig::golden()).is_ok());
}

/// A cancelled caller stops the encoder and the decoder between their blocks.
#[test]
fn encode_and_decode_stop_between_blocks_when_their_caller_says_so() {
    let (vae, c) = (vae(), case("case_full.safetensors"));
    common::stops_at_the_check_that_says_stop(4, || vae.encode(&c["video"], Some(&c["noise"])));
    common::stops_at_the_check_that_says_stop(4, || vae.decode(&c["z"], 57));
}

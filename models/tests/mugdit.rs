//! MUG-DiT against the goldens of the PyTorch reference (tests/data/mugdit): text-to-video,
//! image-to-video (clean frame 0) and odd latent sizes, intermediate by intermediate.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::mugdit::{DitInput, DitPoint, MugDit, MugDitConfig};
use models::weights::Checkpoint;

mod common;

use common::assert_close;

fn data(name: &str) -> PathBuf {
    common::data("mugdit", name)
}

fn case(name: &str) -> HashMap<String, Tensor> {
    common::case("mugdit", name)
}

#[test]
fn every_case_matches_the_reference_step_by_step() {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = MugDit::load(&ckpt, &MugDitConfig::golden()).unwrap();
    for name in ["case_t2v.safetensors", "case_i2v.safetensors", "case_pad.safetensors"] {
        let c = case(name);
        let b = c["in_x"].dim(0).unwrap();
        let d = common::dit_case(&c);
        let input = d.input(&c["in_x"], &c["in_y"]);
        let mut seen = HashMap::new();
        let out = model
            .forward_with(&input, &mut |p, x| {
                seen.insert(p, x.clone());
            })
            .unwrap();
        assert_close(&format!("{name} patch"), &seen[&DitPoint::PatchTokens], &c["mid_patch_tokens"]);
        assert_close(&format!("{name} t_emb"), &seen[&DitPoint::TimestepEmbedding], &c["mid_t_emb"]);
        assert_close(&format!("{name} text"), &seen[&DitPoint::TextTokens], &c["mid_text_tokens_packed"]);
        assert_close(&format!("{name} blocks input"), &seen[&DitPoint::BlocksInput], &c["mid_blocks_input"]);
        for i in 0..3 {
            assert_close(&format!("{name} block {i}"), &seen[&DitPoint::Block(i)], &c[&format!("mid_block{i}_out")]);
        }
        assert_close(&format!("{name} final layer"), &seen[&DitPoint::FinalLayer], &c["mid_final_layer_out"]);
        assert_close(&format!("{name} out"), &out, &c["out"]);

        // The RoPE table: (cos, sin) per token and frequency.
        let (h2, w2) = (c["in_x"].dim(3).unwrap().div_ceil(2), c["in_x"].dim(4).unwrap().div_ceil(2));
        let (cos, sin) = model.rope(b, (d.x_mask[0].len(), h2, w2), &d.frames, &Device::Cpu).unwrap();
        let table = Tensor::stack(&[cos, sin], 3).unwrap();
        assert_close(&format!("{name} rope"), &table, &c["mid_rope_freqs_cis"]);
    }
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = MugDit::load(&ckpt, &MugDitConfig::golden()).unwrap();
    let c = case("case_pad.safetensors");
    let input = DitInput {
        x: &c["in_x"],
        timestep: &[655.0],
        y: &c["in_y"],
        text_lens: &[5],
        x_mask: &[vec![false, true, true]],
        fps: 30.0,
        frame_indices: &[0, 1, 2],
    };
    let err = model.forward(&input).unwrap_err().to_string();
    assert!(err.contains("frame indices: 3 given, 5 needed"), "{err}");
}

/// A cancelled caller stops the forward between its blocks (one check per block).
#[test]
fn a_forward_stops_between_blocks_when_its_caller_says_so() {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let model = MugDit::load(&ckpt, &MugDitConfig::golden()).unwrap();
    let c = case("case_i2v.safetensors");
    let d = common::dit_case(&c);
    let input = d.input(&c["in_x"], &c["in_y"]);
    common::stops_at_the_check_that_says_stop(3, || model.forward(&input));
}

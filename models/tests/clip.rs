//! CLIP image tower and aesthetic scorer against the goldens of the PyTorch reference
//! (tests/data/aesthetic): every intermediate of two images, and clip scores over frame stacks.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::aesthetic::{l2_normalize, AestheticConfig, AestheticMlp, AestheticScorer};
use models::clip::{ClipPoint, ClipVision, ClipVisionConfig};
use models::weights::Checkpoint;

mod common;

use common::rel_l2;

fn data(name: &str) -> PathBuf {
    common::data("aesthetic", name)
}

fn case(name: &str) -> HashMap<String, Tensor> {
    common::case("aesthetic", name)
}

fn scorer() -> AestheticScorer {
    let clip = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let mlp = Checkpoint::open(&data("mlp_weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    AestheticScorer::load(&clip, &mlp, &AestheticConfig::golden()).unwrap()
}

#[test]
fn tower_and_score_match_the_reference_step_by_step() {
    let c = case("case_two_images.safetensors");
    let model = scorer();
    let mut seen = HashMap::new();
    let embeds = model
        .clip
        .forward_with(&c["pixel_values"], &mut |point, x| {
            let name = match point {
                ClipPoint::Embeddings => "embeddings",
                ClipPoint::AfterPreLayrnorm => "after_pre_layrnorm",
                ClipPoint::AfterLayer(0) => "after_layer0",
                ClipPoint::AfterLayer(1) => "last_hidden_state",
                ClipPoint::Pooled => "pooled_after_post_layernorm",
                ClipPoint::AfterLayer(_) => unreachable!("the golden tower has 2 layers"),
            };
            seen.insert(name, x.clone());
        })
        .unwrap();
    seen.insert("image_embeds", embeds.clone());
    let normalized = l2_normalize(&embeds).unwrap();
    seen.insert("image_embeds_normalized", normalized.clone());
    let score = model
        .mlp
        .forward_with(&normalized, &mut |k, x| {
            if k == 0 {
                seen.insert("mlp_layer0_out", x.clone());
            }
        })
        .unwrap();
    seen.insert("score", score);
    assert_eq!(seen.len(), 9);
    for (name, x) in &seen {
        let err = rel_l2(x, &c[*name]);
        assert!(err < 1e-5, "{name}: rel-L2 {err}");
    }
    let err = rel_l2(&model.score(&c["pixel_values"]).unwrap(), &c["score"].squeeze(1).unwrap());
    assert!(err < 1e-5, "score: rel-L2 {err}");
}

#[test]
fn clip_score_is_the_mean_of_the_frame_scores() {
    let c = case("case_frame_stack.safetensors");
    let model = scorer();
    let images = &c["images"];
    let embeds = model.clip.forward(&images.flatten(0, 1).unwrap()).unwrap();
    let want = c["image_embeds"].flatten(0, 1).unwrap();
    let err = rel_l2(&embeds, &want);
    assert!(err < 1e-5, "image_embeds: rel-L2 {err}");
    let err = rel_l2(&l2_normalize(&embeds).unwrap(), &c["image_embeds_normalized"].flatten(0, 1).unwrap());
    assert!(err < 1e-5, "image_embeds_normalized: rel-L2 {err}");
    for (name, got) in
        [("per_frame_score", model.frame_scores(images).unwrap()), ("mean_score", model.clip_scores(images).unwrap())]
    {
        assert_eq!(got.dims(), c[name].dims(), "{name}");
        let err = rel_l2(&got, &c[name]);
        assert!(err < 1e-5, "{name}: rel-L2 {err}");
    }
}

#[test]
fn a_checkpoint_with_wrong_keys_names_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = || Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("vision_model.encoder.layers.1.self_attn.k_proj.bias");
    tensors.insert("vision_model.encoder.layers.2.mlp.fc1.weight".into(), zeros());
    // What a whole CLIPModel file holds besides the tower is ignored.
    for extra in ["text_model.embeddings.token_embedding.weight", "text_projection.weight", "logit_scale"] {
        tensors.insert(extra.into(), zeros());
    }
    let path = dir.path().join("broken_clip.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    let err = ClipVision::load(&ckpt, &ClipVisionConfig::golden()).err().unwrap().to_string();
    assert!(err.contains("broken_clip.safetensors"), "{err}");
    assert!(err.contains("1 missing key(s): vision_model.encoder.layers.1.self_attn.k_proj.bias"), "{err}");
    assert!(err.contains("1 unexpected key(s): vision_model.encoder.layers.2.mlp.fc1.weight"), "{err}");

    let mut tensors = candle_core::safetensors::load(data("mlp_weights.safetensors"), &Device::Cpu).unwrap();
    tensors.insert("layers.1.weight".into(), zeros());
    let path = dir.path().join("broken_mlp.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let clip = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let mlp = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    let err = AestheticScorer::load(&clip, &mlp, &AestheticConfig::golden()).err().unwrap().to_string();
    assert!(err.contains("broken_mlp.safetensors") && err.contains("1 unexpected key(s): layers.1.weight"), "{err}");

    // The golden MLP read with the real input width fails on the first shape, naming it.
    let mlp = Checkpoint::open(&data("mlp_weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let config = AestheticConfig { clip: ClipVisionConfig { projection_dim: 768, ..ClipVisionConfig::golden() } };
    let err = AestheticMlp::load(&mlp, &config).err().unwrap().to_string();
    assert!(err.contains("`layers.0.weight` has shape [1024, 64], the model expects [1024, 768]"), "{err}");
}

//! T5-v1.1 encoder and tokenizer against the goldens of the PyTorch reference (tests/data/t5).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::t5::{relative_position_bucket, T5Config, T5Encoder, T5Tokenizer};
use models::weights::Checkpoint;

mod common;

use common::rel_l2;

fn data(name: &str) -> PathBuf {
    common::data("t5", name)
}

fn case(name: &str) -> HashMap<String, Tensor> {
    common::case("t5", name)
}

#[test]
fn encoder_matches_the_reference_block_by_block() {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let config = T5Config::golden();
    let model = T5Encoder::load(&ckpt, &config).unwrap();
    for name in ["case_batch2_padded.safetensors", "case_full_length_no_pad.safetensors"] {
        let c = case(name);
        let buckets: Vec<i64> = c["relative_position_bucket"].flatten_all().unwrap().to_vec1().unwrap();
        let len = config.max_length;
        for (n, &b) in buckets.iter().enumerate() {
            assert_eq!(
                relative_position_bucket(n / len, n % len, 32, 128) as i64,
                b,
                "{name}: bucket ({}, {})",
                n / len,
                n % len
            );
        }
        let mut blocks = Vec::new();
        let y =
            model.forward_with(&c["input_ids"], &c["attention_mask_in"], &mut |_, x| blocks.push(x.clone())).unwrap();
        for (k, x) in blocks.iter().enumerate() {
            let err = rel_l2(x, &c[&format!("block{k}_out")]);
            assert!(err < 1e-5, "{name}: block {k} rel-L2 {err}");
        }
        let err = rel_l2(&y, &c["y"].squeeze(1).unwrap());
        assert!(err < 1e-5, "{name}: y rel-L2 {err}");
    }
}

#[test]
fn tokenizer_matches_the_reference_ids_and_masks() {
    let tok = T5Tokenizer::from_file(&data("t5_tokenizer.json"), 300).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(data("tokenization.json")).unwrap()).unwrap();
    let c = case("case_tokenization.safetensors");
    let ids: Vec<Vec<i64>> = c["input_ids"].to_vec2().unwrap();
    let masks: Vec<Vec<i64>> = c["attention_mask"].to_vec2().unwrap();
    let cases = doc["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 7);
    for (row, case) in cases.iter().enumerate() {
        let (got_ids, got_mask) = tok.encode(case["text"].as_str().unwrap()).unwrap();
        let name = case["name"].as_str().unwrap();
        assert_eq!(got_ids.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), ids[row], "{name}: ids");
        assert_eq!(got_mask.iter().map(|&v| i64::from(v)).collect::<Vec<_>>(), masks[row], "{name}: mask");
    }
}

#[test]
fn a_checkpoint_with_wrong_keys_names_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("encoder.block.1.layer.0.SelfAttention.q.weight");
    tensors.remove("encoder.final_layer_norm.weight");
    tensors.insert("encoder.block.9.extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    tensors.insert("decoder.block.0.whatever".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    let err = T5Encoder::load(&ckpt, &T5Config::golden()).err().unwrap().to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(err.contains("2 missing key(s)"), "{err}");
    assert!(err.contains("encoder.block.1.layer.0.SelfAttention.q.weight"), "{err}");
    assert!(err.contains("encoder.final_layer_norm.weight"), "{err}");
    assert!(err.contains("1 unexpected key(s): encoder.block.9.extra.weight"), "decoder keys are ignored: {err}");
    // Loading the golden with the XXL sizes fails on the first shape.
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let err = T5Encoder::load(&ckpt, &T5Config { num_layers: 3, ..T5Config::xxl() }).err().unwrap().to_string();
    assert!(err.contains("has shape") && err.contains("expects"), "{err}");
}

/// A cancelled caller stops the encoder between its layers.
#[test]
fn the_encoder_stops_between_layers_when_its_caller_says_so() {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let config = T5Config::golden();
    let model = T5Encoder::load(&ckpt, &config).unwrap();
    let c = case("case_batch2_padded.safetensors");
    common::stops_at_the_check_that_says_stop(config.num_layers, || {
        model.forward(&c["input_ids"], &c["attention_mask_in"])
    });
}

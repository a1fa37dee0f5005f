//! UMT5 encoder against the goldens of the PyTorch reference (tests/data/umt5): relative
//! position buckets, per-block position biases, and every stored intermediate.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::umt5::{Umt5Config, Umt5Encoder, Umt5Point};
use models::weights::Checkpoint;

mod common;

use common::assert_within;

/// The README's tolerance.
const TOLERANCE: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    common::data("umt5", name)
}

fn encoder() -> Umt5Encoder {
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    Umt5Encoder::load(&ckpt, &Umt5Config::golden()).unwrap()
}

#[test]
fn presets_match_the_reference_configs() {
    let doc = common::json("umt5", "config.json");
    for (config, name) in [(Umt5Config::golden(), "tiny"), (Umt5Config::xxl(), "real")] {
        let c = &doc[name];
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        assert_eq!(
            (config.vocab, config.dim, config.dim_attn, config.dim_ffn),
            (n("vocab"), n("dim"), n("dim_attn"), n("dim_ffn")),
            "{name}"
        );
        assert_eq!(
            (config.num_heads, config.num_layers, config.num_buckets),
            (n("num_heads"), n("num_layers"), n("num_buckets"))
        );
        assert!(!c["shared_pos"].as_bool().unwrap(), "{name}: one position table per block");
        assert_eq!(config.max_distance as u64, doc["max_dist"].as_u64().unwrap());
        assert_eq!(config.eps, doc["eps"].as_f64().unwrap());
    }
    assert_eq!(models::umt5::TEXT_LEN as u64, doc["text_len"].as_u64().unwrap());
}

#[test]
fn encoder_matches_the_reference_intermediate_by_intermediate() {
    let model = encoder();
    let c = common::case("umt5", "case_encode.safetensors");
    let len = c["input_ids"].dim(1).unwrap();
    let buckets = model.buckets(len, &Device::Cpu).unwrap().to_dtype(DType::I64).unwrap();
    assert_eq!(buckets.to_vec2::<i64>().unwrap(), c["rel_bucket"].to_vec2::<i64>().unwrap(), "buckets");

    let mut seen = HashMap::new();
    let out = model
        .forward_with(&c["input_ids"], &c["attention_mask"], &mut |p, x| {
            seen.insert(p, x.clone());
        })
        .unwrap();
    assert_within("token_embedding_out", &seen[&Umt5Point::TokenEmbedding], &c["token_embedding_out"], TOLERANCE);
    for i in 0..2 {
        let name = format!("block{i}_pos_bias");
        assert_within(&name, &seen[&Umt5Point::PositionBias(i)], &c[&name], TOLERANCE);
        let name = format!("block{i}_out");
        assert_within(&name, &seen[&Umt5Point::Block(i)], &c[&name], TOLERANCE);
    }
    assert_within("block0_attn_out", &seen[&Umt5Point::Attention(0)], &c["block0_attn_out"], TOLERANCE);
    assert_within("block0_ffn_out", &seen[&Umt5Point::FeedForward(0)], &c["block0_ffn_out"], TOLERANCE);
    assert_within("output", &out, &c["output"], TOLERANCE);

    // What the DiT gets: each text cut to its valid tokens.
    let texts = model.encode(&c["input_ids"], &c["attention_mask"]).unwrap();
    let lens: Vec<i64> = c["seq_lens"].to_vec1().unwrap();
    for (b, (text, &n)) in texts.iter().zip(&lens).enumerate() {
        let expected = c["output"].get(b).unwrap().narrow(0, 0, n as usize).unwrap();
        assert_within(&format!("encode {b}"), text, &expected, TOLERANCE);
    }
}

#[test]
fn a_checkpoint_with_wrong_keys_names_every_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("blocks.1.pos_embedding.embedding.weight");
    tensors.insert("blocks.0.attn.extra.weight".into(), Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap());
    let path = dir.path().join("broken.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    let ckpt = Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap();
    let err = Umt5Encoder::load(&ckpt, &Umt5Config::golden()).err().unwrap().to_string();
    assert!(err.contains("broken.safetensors"), "{err}");
    assert!(err.contains("1 missing key(s): blocks.1.pos_embedding.embedding.weight"), "{err}");
    assert!(err.contains("1 unexpected key(s): blocks.0.attn.extra.weight"), "{err}");
    // The XXL sizes on the tiny weights fail on the first shape, naming the key.
    let ckpt = Checkpoint::open(&data("weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let err = Umt5Encoder::load(&ckpt, &Umt5Config::xxl()).err().unwrap().to_string();
    assert!(err.contains("`token_embedding.weight` has shape [100, 32], the model expects [256384, 4096]"), "{err}");
}

/// The XXL preset reads exactly the README's key table (`models_t5_umt5-xxl-enc-bf16.pth`).
#[test]
fn the_real_preset_reads_the_real_keys_and_shapes() {
    let dry = Checkpoint::dry(DType::F32, &Device::Cpu);
    Umt5Encoder::load(&dry, &Umt5Config::xxl()).unwrap();
    let keys: HashMap<String, Vec<usize>> = dry.read_keys().into_iter().collect();
    assert_eq!(keys.len(), 2 + 24 * 10);
    for (key, shape) in [
        ("token_embedding.weight", vec![256_384, 4096]),
        ("blocks.23.norm1.weight", vec![4096]),
        ("blocks.23.attn.o.weight", vec![4096, 4096]),
        ("blocks.23.ffn.gate.0.weight", vec![10240, 4096]),
        ("blocks.23.ffn.fc1.weight", vec![10240, 4096]),
        ("blocks.23.ffn.fc2.weight", vec![4096, 10240]),
        ("blocks.23.pos_embedding.embedding.weight", vec![32, 64]),
        ("norm.weight", vec![4096]),
    ] {
        assert_eq!(keys.get(key), Some(&shape), "{key}");
    }
}

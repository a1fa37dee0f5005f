//! The MUG-V enhancer's Wan DiT, its LoRA and its flow-matching step against the goldens of the
//! PyTorch reference (tests/data/wan_dit): every stored intermediate of a forward pass in
//! first-frame mode, the two other modes, merged LoRA weights, and one enhancement step.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use models::lora::{Lora, LoraConfig};
use models::umt5::{Umt5Config, Umt5Encoder};
use models::wan_dit::{WanDit, WanDitConfig, WanDitInput, WanDitPoint};
use models::wan_flow::{EnhancePoint, Enhancer, FlowMatchSchedule};
use models::weights::{Checkpoint, WeightsError};

mod common;

use common::assert_within;

/// The README's tolerance.
const TOLERANCE: f32 = 1e-4;

fn data(name: &str) -> PathBuf {
    common::data("wan_dit", name)
}

fn case(name: &str) -> HashMap<String, Tensor> {
    common::case("wan_dit", name)
}

fn open(path: PathBuf) -> Checkpoint {
    Checkpoint::open(&path, DType::F32, &Device::Cpu).unwrap()
}

/// The golden DiT, with the golden LoRA merged or not.
fn dit(with_lora: bool) -> WanDit {
    let (base, adapter) = (open(data("weights.safetensors")), open(data("lora.safetensors")));
    let lora = with_lora.then(|| Lora::new(&adapter, &LoraConfig::golden()));
    WanDit::load(&base, &WanDitConfig::golden(), lora).unwrap()
}

/// The forward case's input in first-frame mode with the clean latent, or as the other modes.
fn input<'a>(
    c: &'a HashMap<String, Tensor>,
    y: bool,
    first_frame_clean: bool,
    context: &'a [Tensor],
) -> WanDitInput<'a> {
    WanDitInput { x: &c["x"], y: y.then(|| &c["y"]), timestep: &[300.0], first_frame_clean, context }
}

#[test]
fn presets_match_the_reference_configs() {
    let doc = common::json("wan_dit", "config.json");
    for (config, name) in [(WanDitConfig::golden(), "tiny"), (WanDitConfig::wan_1_3b(), "real")] {
        let c = &doc[name];
        let n = |k: &str| c[k].as_u64().unwrap() as usize;
        assert_eq!(
            [config.in_dim, config.dim, config.ffn_dim, config.freq_dim, config.text_dim, config.out_dim],
            [n("in_dim"), n("dim"), n("ffn_dim"), n("freq_dim"), n("text_dim"), n("out_dim")],
            "{name}"
        );
        assert_eq!(
            [config.num_heads, config.num_layers, config.text_len],
            [n("num_heads"), n("num_layers"), n("text_len")]
        );
        assert_eq!(config.eps, c["eps"].as_f64().unwrap());
        assert_eq!(c["model_type"], "t2v");
        assert_eq!(c["patch_size"], serde_json::json!([1, 2, 2]));
        assert_eq!(c["window_size"], serde_json::json!([-1, -1]), "{name}: global attention");
        assert!(c["qk_norm"].as_bool().unwrap() && c["cross_attn_norm"].as_bool().unwrap());
    }
    for (config, name) in [(LoraConfig::golden(), "lora_tiny"), (LoraConfig::mugv_enhancer(), "lora_real")] {
        let c = &doc[name];
        assert_eq!(config.rank as u64, c["r"].as_u64().unwrap(), "{name}");
        assert_eq!(config.alpha, c["lora_alpha"].as_f64().unwrap(), "{name}");
        assert_eq!(config.prefix, doc["lora_key_prefix_in_file"].as_str().unwrap());
        assert_eq!(c["target_modules"], serde_json::json!(["q", "k", "v", "o", "ffn.0", "ffn.2"]));
    }
    let r = &doc["enhance_recipe_real"];
    let enhancer = Enhancer::mugv();
    assert_eq!(enhancer.steps as u64, r["num_inference_steps"].as_u64().unwrap());
    assert_eq!(f64::from(enhancer.cfg_scale), r["cfg_scale"].as_f64().unwrap());
    let s = &enhancer.schedule;
    assert_eq!(f64::from(s.shift), r["sigma_shift"].as_f64().unwrap());
    assert_eq!(f64::from(s.sigma_max), r["sigma_max"].as_f64().unwrap() as f32 as f64);
    assert_eq!(f64::from(s.sigma_min), r["sigma_min"].as_f64().unwrap());
    assert_eq!(s.extra_one_step, r["extra_one_step"].as_bool().unwrap());
    assert_eq!(f64::from(s.num_train_timesteps), r["num_train_timesteps"].as_f64().unwrap());
    assert_eq!(models::wan_flow::NEGATIVE_PROMPT, r["negative_prompt"].as_str().unwrap());
}

#[test]
fn forward_matches_the_reference_intermediate_by_intermediate() {
    let model = dit(false);
    let c = case("case_forward.safetensors");
    assert_eq!(c["timestep"].to_vec1::<f32>().unwrap(), [300.0], "the timestep `input` passes");
    assert_eq!(c["timestep_t0"].to_vec1::<f32>().unwrap(), [0.0], "first-frame mode's timestep");
    let context = [c["context"].clone()];
    let mut seen = HashMap::new();
    let out = model
        .forward_with(&input(&c, true, true, &context), &mut |p, x| {
            seen.insert(p, x.clone());
        })
        .unwrap();
    let points = [
        (WanDitPoint::Sinusoid { t0: false }, "t_sinusoid"),
        (WanDitPoint::Sinusoid { t0: true }, "t0_sinusoid"),
        (WanDitPoint::TimeEmbedding { t0: false }, "time_embedding_out0"),
        (WanDitPoint::TimeEmbedding { t0: true }, "time_embedding_out1"),
        (WanDitPoint::TimeProjection { t0: false }, "time_projection_out0"),
        (WanDitPoint::TimeProjection { t0: true }, "time_projection_out1"),
        (WanDitPoint::PatchEmbedding, "patch_embedding_out"),
        (WanDitPoint::PatchEmbedding2, "patch_embedding2_out"),
        (WanDitPoint::TextEmbeddingIn, "text_embedding_in"),
        (WanDitPoint::TextEmbedding, "text_embedding_out"),
        (WanDitPoint::SelfAttentionIn(0), "block0_self_attn_in"),
        (WanDitPoint::SelfAttention(0), "block0_self_attn_out"),
        (WanDitPoint::CrossAttention(0), "block0_cross_attn_out"),
        (WanDitPoint::FeedForward(0), "block0_ffn_out"),
        (WanDitPoint::Block(0), "block0_out"),
        (WanDitPoint::Block(1), "block1_out"),
        (WanDitPoint::HeadIn, "head_in"),
        (WanDitPoint::HeadOut, "head_out"),
    ];
    for (point, name) in points {
        assert_within(name, &seen[&point], &c[name], TOLERANCE);
    }
    assert_within("output", &out, &c["output"], TOLERANCE);
    let (cos, sin) = model.rope((3, 3, 4), &Device::Cpu).unwrap();
    assert_within("rope_cos", &cos, &c["rope_cos"], TOLERANCE);
    assert_within("rope_sin", &sin, &c["rope_sin"], TOLERANCE);

    // Every token modulated by the real timestep, and plain Wan2.1 text-to-video.
    let out = model.forward(&input(&c, true, false, &context)).unwrap();
    assert_within("output_no_t0_mode", &out, &c["output_no_t0_mode"], TOLERANCE);
    let out = model.forward(&input(&c, false, false, &context)).unwrap();
    assert_within("output_plain_t2v", &out, &c["output_plain_t2v"], TOLERANCE);
}

#[test]
fn merged_lora_matches_the_reference_adapter() {
    let c = case("case_lora.safetensors");
    let base = open(data("weights.safetensors"));
    let adapter = open(data("lora.safetensors"));
    let lora = Lora::new(&adapter, &LoraConfig::golden());
    assert_eq!(lora.config().scale() as f32, c["scaling"].to_vec1::<f32>().unwrap()[0]);
    for name in [
        "blocks.0.self_attn.q.weight",
        "blocks.0.cross_attn.k.weight",
        "blocks.1.self_attn.o.weight",
        "blocks.1.ffn.0.weight",
        "blocks.1.ffn.2.weight",
    ] {
        let reference = &c[&format!("merged.{name}")];
        let merged = lora.apply(name, base.get(name, reference.dims()).unwrap()).unwrap();
        assert_within(&format!("merged {name}"), &merged, reference, TOLERANCE);
    }

    let model = dit(true);
    let f = case("case_forward.safetensors");
    let context = [f["context"].clone()];
    let mut seen = HashMap::new();
    let out = model
        .forward_with(&input(&f, true, true, &context), &mut |p, x| {
            seen.insert(p, x.clone());
        })
        .unwrap();
    assert_within("lora block0_out", &seen[&WanDitPoint::Block(0)], &c["block0_out"], TOLERANCE);
    assert_within("lora head_out", &seen[&WanDitPoint::HeadOut], &c["head_out"], TOLERANCE);
    // The reference is peft's unmerged forward; merging is exact up to rounding.
    assert_within("output_lora", &out, &c["output_lora"], TOLERANCE);
    assert_within("output_lora_merged_weights", &out, &c["output_lora_merged_weights"], TOLERANCE);
}

#[test]
fn the_schedule_matches_the_reference() {
    let c = case("case_enhance_step.safetensors");
    let schedule = FlowMatchSchedule::enhancer();
    let sigmas = schedule.sigmas(1);
    assert_eq!(sigmas, c["scheduler_sigmas"].to_vec1::<f32>().unwrap());
    assert_eq!(schedule.timesteps(&sigmas), c["scheduler_timesteps"].to_vec1::<f32>().unwrap());
    // More steps: evenly spaced from 0.3 towards 0, the last step ending at 0.
    let four = schedule.sigmas(4);
    let expected = [0.3f32, 0.225, 0.15, 0.075];
    assert!(four.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-7), "{four:?}");
}

/// The enhancement step from the text features on: UMT5 contexts, noising, first-frame
/// restoration, both DiT calls, guidance and the Euler step (the VAE halves are checked in
/// tests/wan_vae.rs).
#[test]
fn enhancement_step_matches_the_reference() {
    let c = case("case_enhance_step.safetensors");
    let umt5 = Checkpoint::open(&common::data("umt5", "weights.safetensors"), DType::F32, &Device::Cpu).unwrap();
    let umt5 = Umt5Encoder::load(&umt5, &Umt5Config::golden()).unwrap();
    let positive = umt5.encode(&c["pos_ids"], &c["pos_mask"]).unwrap().remove(0);
    let negative = umt5.encode(&c["neg_ids"], &c["neg_mask"]).unwrap().remove(0);
    assert_within("context_pos", &positive, &c["context_pos"], TOLERANCE);
    assert_within("context_neg", &negative, &c["context_neg"], TOLERANCE);

    let enhancer = Enhancer { cfg_scale: c["cfg_scale"].to_vec1::<f32>().unwrap()[0], ..Enhancer::mugv() };
    let model = dit(true);
    let mut seen = HashMap::new();
    let out = enhancer
        .enhance(&model, &c["latents_origin"], &c["noise"], &positive, &negative, &mut |p, x| {
            seen.insert(p, x.clone());
            Ok(())
        })
        .unwrap();
    assert_within("latents_noisy", &seen[&EnhancePoint::Noisy], &c["latents_noisy"], TOLERANCE);
    assert_within("latents_dit_in", &seen[&EnhancePoint::DitInput(0)], &c["latents_dit_in"], TOLERANCE);
    assert_within("noise_pred_pos", &seen[&EnhancePoint::Positive(0)], &c["noise_pred_pos"], TOLERANCE);
    assert_within("noise_pred_neg", &seen[&EnhancePoint::Negative(0)], &c["noise_pred_neg"], TOLERANCE);
    assert_within("noise_pred", &seen[&EnhancePoint::Guided(0)], &c["noise_pred"], TOLERANCE);
    // The README's tighter bound, at which the LoRA itself is checked.
    assert_within("latents_out", &out, &c["latents_out"], 1e-5);
}

#[test]
fn checkpoint_and_adapter_key_errors_name_the_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut tensors = candle_core::safetensors::load(data("weights.safetensors"), &Device::Cpu).unwrap();
    tensors.remove("patch_embedding2.weight");
    let path = dir.path().join("plain_wan.safetensors");
    candle_core::safetensors::save(&tensors, &path).unwrap();
    match WanDit::load(&open(path), &WanDitConfig::golden(), None) {
        Err(WeightsError::Keys { missing, unexpected, .. }) => {
            assert_eq!(missing, ["patch_embedding2.weight"]);
            assert!(unexpected.is_empty());
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a checkpoint without patch_embedding2 was accepted"),
    }

    // Adapter keys of other modules are ignored; unknown ones under `pipe.dit.` are named.
    let mut adapter = candle_core::safetensors::load(data("lora.safetensors"), &Device::Cpu).unwrap();
    let zeros = |n: usize| Tensor::zeros(n, DType::F32, &Device::Cpu).unwrap();
    adapter.insert("pipe.vae.decoder.conv1.lora_A.default.weight".into(), zeros(2));
    adapter.insert("pipe.dit.blocks.0.extra.lora_A.default.weight".into(), zeros(2));
    let path = dir.path().join("adapter.safetensors");
    candle_core::safetensors::save(&adapter, &path).unwrap();
    let (base, adapter) = (open(data("weights.safetensors")), open(path));
    match WanDit::load(&base, &WanDitConfig::golden(), Some(Lora::new(&adapter, &LoraConfig::golden()))) {
        Err(WeightsError::Keys { missing, unexpected, .. }) => {
            assert!(missing.is_empty(), "{missing:?}");
            assert_eq!(unexpected, ["pipe.dit.blocks.0.extra.lora_A.default.weight"]);
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("an adapter with an unknown key was accepted"),
    }

    // A rank that is not the file's fails on the first factor's shape.
    let adapter = open(data("lora.safetensors"));
    let lora = Lora::new(&adapter, &LoraConfig { rank: 16, ..LoraConfig::golden() });
    let err = WanDit::load(&base, &WanDitConfig::golden(), Some(lora)).err().unwrap().to_string();
    assert!(err.contains("lora_A.default.weight` has shape [8, 64], the model expects [16, 64]"), "{err}");
}

/// An adapter may also carry base tensors (peft `base_layer` names or plain ones): they replace
/// the checkpoint's before the low-rank update is added.
#[test]
fn adapter_base_tensors_replace_the_checkpoint_ones() {
    let dir = tempfile::tempdir().unwrap();
    let base = open(data("weights.safetensors"));
    let mut adapter = candle_core::safetensors::load(data("lora.safetensors"), &Device::Cpu).unwrap();
    let q = Tensor::ones((64, 64), DType::F32, &Device::Cpu).unwrap();
    let bias = Tensor::full(0.5f32, 64, &Device::Cpu).unwrap();
    adapter.insert("pipe.dit.blocks.0.self_attn.q.base_layer.weight".into(), q.clone());
    adapter.insert("pipe.dit.head.head.bias".into(), bias.clone());
    let path = dir.path().join("adapter.safetensors");
    candle_core::safetensors::save(&adapter, &path).unwrap();
    let adapter = open(path);
    let lora = Lora::new(&adapter, &LoraConfig::golden());
    let plain = Lora::new(&adapter, &LoraConfig { prefix: "none.".into(), ..LoraConfig::golden() });
    let key = "blocks.0.self_attn.q.weight";
    let merged = lora.apply(key, base.get(key, &[64, 64]).unwrap()).unwrap();
    let update = (merged - &q).unwrap().sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(update > 0.0, "the low-rank update is added to the replaced weight");
    assert_eq!(plain.apply(key, q.clone()).unwrap().to_vec2::<f32>().unwrap(), q.to_vec2::<f32>().unwrap());
    let head = lora.apply("head.head.bias", base.get("head.head.bias", &[64]).unwrap()).unwrap();
    assert_eq!(head.to_vec1::<f32>().unwrap(), bias.to_vec1::<f32>().unwrap());
    assert!(WanDit::load(&base, &WanDitConfig::golden(), Some(lora)).is_ok());
}

/// The 1.3B preset reads exactly the README's key table (`dit_i2v.safetensors`: 30 blocks).
#[test]
fn the_real_preset_reads_the_real_keys_and_shapes() {
    let dry = Checkpoint::dry(DType::F32, &Device::Cpu);
    WanDit::load(&dry, &WanDitConfig::wan_1_3b(), None).unwrap();
    let keys: HashMap<String, Vec<usize>> = dry.read_keys().into_iter().collect();
    assert_eq!(keys.len(), 17 + 30 * 27);
    for (key, shape) in [
        ("patch_embedding.weight", vec![1536, 16, 1, 2, 2]),
        ("patch_embedding2.weight", vec![1536, 16, 1, 2, 2]),
        ("text_embedding.0.weight", vec![1536, 4096]),
        ("time_embedding.0.weight", vec![1536, 256]),
        ("time_projection.1.weight", vec![9216, 1536]),
        ("blocks.29.modulation", vec![1, 6, 1536]),
        ("blocks.29.self_attn.norm_q.weight", vec![1536]),
        ("blocks.29.cross_attn.o.bias", vec![1536]),
        ("blocks.29.norm3.bias", vec![1536]),
        ("blocks.29.ffn.0.weight", vec![8960, 1536]),
        ("blocks.29.ffn.2.weight", vec![1536, 8960]),
        ("head.modulation", vec![1, 2, 1536]),
        ("head.head.weight", vec![64, 1536]),
    ] {
        assert_eq!(keys.get(key), Some(&shape), "{key}");
    }
}

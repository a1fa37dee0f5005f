//! Encoder stages end to end with tiny random weights: the MUG-V Megatron export loaded by
//! PyTorch, and re-encoding a dataset with another VAE while reusing its text features.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use common::{run, tiny_models};

/// A job over two test videos: shots, clips, text features and latents, written as `format`
/// (the VAE checkpoint can be swapped with `MUGFLOW_VAE`).
fn encode_job(dir: &Path, models: &Path, format: &str) -> PathBuf {
    encode_job_with(dir, models, format, format, "")
}

/// [`encode_job`] into `dir/<out>` with extra `vae_encode` keys.
fn encode_job_with(dir: &Path, models: &Path, format: &str, out: &str, vae_extra: &str) -> PathBuf {
    let m = models.display();
    common::manifest(
        dir,
        &format!("encode-{out}.toml"),
        &format!(
            r#"[job]
name = "encode"
input = "tests/data/videos/{{hug_lego_movie,kivy_cityCC0}}.*"
output = "{out}"
shard_size = 1

[[stage]]
kind = "probe"

[[stage]]
kind = "scene_split"

[[stage]]
kind = "clip_filter"
min_duration = "1s"
max_duration = "4s"

[[stage]]
kind = "t5_encode"
preset = "tiny"
checkpoint = "{m}/t5.safetensors"
tokenizer = "{m}/t5_tokenizer.json"
captions = "tests/data/captions.csv"

[[stage]]
kind = "vae_encode"
preset = "tiny"
checkpoint = "${{MUGFLOW_VAE:-{m}/vae.safetensors}}"
size = "64x48"
fps = 4
{vae_extra}

[[stage]]
kind = "write"
format = "{format}"
"#,
            out = dir.join(out).display()
        ),
    )
}

fn python() -> String {
    std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with torch, polars and safetensors (scripts/test.sh does)")
}

/// `write` with `format = "mugv-megatron"`: every clip's `.pt` files load in PyTorch with the
/// trainer's shapes and dtypes, and train.csv lists exactly the written samples.
#[test]
fn the_megatron_export_loads_in_pytorch() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    let job = encode_job(dir.path(), &models, "mugv-megatron");
    let (code, _, err) = run(&["run", job.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let out = dir.path().join("mugv-megatron");
    let rows = common::rows(&out);
    assert!(rows.len() >= 4, "{rows:?}");
    let csv = std::fs::read_to_string(out.join("train.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(lines.next(), Some("sample_id,source,latent_path,text_feat_path"));
    let listed: Vec<&str> = lines.collect();
    let mut expected: Vec<String> =
        rows.iter().map(|r| format!("{},real,{},{}", r["sample_id"], r["latent_path"], r["text_feat_path"])).collect();
    expected.sort();
    assert_eq!(listed, expected);

    let script = r#"
import csv, json, sys, torch
root = sys.argv[1]
out = {}
for row in csv.DictReader(open(f"{root}/train.csv")):
    lat = torch.load(f"{root}/{row['latent_path']}", weights_only=True)
    txt = torch.load(f"{root}/{row['text_feat_path']}", weights_only=True)
    out[row["sample_id"]] = {
        "latent": [str(lat.dtype), list(lat.shape), bool(torch.isfinite(lat).all())],
        "keys": list(txt.keys()),
        "y": [str(txt["y"].dtype), list(txt["y"].shape)],
        "mask": [str(txt["mask"].dtype), list(txt["mask"].shape), int(txt["mask"].sum())],
    }
print(json.dumps(out))
"#;
    let output = std::process::Command::new(python()).args(["-c", script, out.to_str().unwrap()]).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let loaded: BTreeMap<String, serde_json::Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(loaded.len(), rows.len());
    for r in &rows {
        let got = &loaded[&r["sample_id"]];
        let lf: usize = r["latent_frames"].parse().unwrap();
        assert_eq!(got["latent"], serde_json::json!(["torch.float32", [24, lf, 6, 8], true]), "{r:?}");
        assert_eq!(got["keys"], serde_json::json!(["y", "mask"]));
        assert_eq!(got["y"], serde_json::json!(["torch.float32", [1, 1, 300, 64]]));
        let tokens: i64 = r["text_tokens"].parse().unwrap();
        assert_eq!(got["mask"], serde_json::json!(["torch.bool", [1, 300], tokens]));
    }
}

/// Every `<id>/<name>` tensor of a native dataset: (dtype, shape, bytes).
fn tensors(out: &Path, name: &str) -> BTreeMap<String, (String, Vec<usize>, Vec<u8>)> {
    let mut all = BTreeMap::new();
    for shard in common::committed_shards(out) {
        let Some(file) = shard.tensor_file else { continue };
        let bytes = std::fs::read(out.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for (key, t) in st.tensors() {
            if let Some(id) = key.strip_suffix(&format!("/{name}")) {
                all.insert(id.to_string(), (format!("{:?}", t.dtype()), t.shape().to_vec(), t.data().to_vec()));
            }
        }
    }
    all
}

/// `manifests/reencode.toml`: a second version with latents from another VAE, the text features
/// copied byte for byte, and both VAEs (path + sha256) recorded in index.json.
#[test]
fn reencoding_reuses_text_features_and_records_both_vaes() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    let job = encode_job(dir.path(), &models, "mugflow");
    let (code, _, err) = run(&["run", job.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let v1 = dir.path().join("mugflow");
    let v2 = dir.path().join("v2");
    // Another VAE with the same architecture: the goldens' tiny weights.
    let new_vae = common::root().join("models/tests/data/mugvae/weights.safetensors");
    let output = common::mugflow(&[
        "run",
        "manifests/reencode.toml",
        "--progress",
        "none",
        "--set",
        "stage.vae_encode.size=64x48",
    ])
    .env("MUGFLOW_SOURCE", &v1)
    .env("MUGFLOW_OUT", &v2)
    .env("MUGFLOW_VAE", &new_vae)
    .output()
    .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));

    assert_eq!(common::written_ids(&v2), common::written_ids(&v1));
    for name in ["text_y", "text_mask"] {
        let (old, new) = (tensors(&v1, name), tensors(&v2, name));
        assert_eq!(old.len(), common::written_ids(&v1).len());
        assert_eq!(old, new, "{name} is copied byte for byte");
    }
    let (old, new) = (tensors(&v1, "latent"), tensors(&v2, "latent"));
    assert_eq!(old.keys().collect::<Vec<_>>(), new.keys().collect::<Vec<_>>());
    for (id, (dtype, shape, bytes)) in &new {
        assert_eq!((dtype, shape), (&old[id].0, &old[id].1), "{id}: same clip, same latent shape");
        assert_ne!(bytes, &old[id].2, "{id}: another VAE gives other latents");
    }

    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(v2.join("index.json")).unwrap()).unwrap();
    let vae = |pipeline: &serde_json::Value| -> serde_json::Value {
        pipeline.as_array().unwrap().iter().find(|s| s["kind"] == "vae_encode").unwrap()["checkpoints"][0].clone()
    };
    let sha = |p: &Path| {
        let out = std::process::Command::new("sha256sum").arg(p).output().unwrap();
        String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
    };
    let new_id = vae(&index["pipeline"]);
    assert_eq!(new_id["path"], new_vae.display().to_string());
    assert_eq!(new_id["sha256"], sha(&new_vae));
    let old_id = vae(&index["derived_from"]["pipeline"]);
    let old_vae = models.join("vae.safetensors");
    assert_eq!(old_id["path"], old_vae.display().to_string());
    assert_eq!(old_id["sha256"], sha(&old_vae));
    assert_eq!(index["derived_from"]["dataset"], v1.display().to_string());
}

/// The same manifest run again after a VAE update: a second version of the same output in which
/// every latent is encoded again and the text features are carried over from the first version,
/// byte for byte, without running T5 (report.json counts carried and computed items per stage);
/// the first version stays readable. A new T5 checkpoint then carries nothing.
#[test]
fn a_new_vae_checkpoint_reencodes_latents_and_carries_text_features() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    let job = encode_job(dir.path(), &models, "mugflow");
    let out = dir.path().join("mugflow");
    let (code, _, err) = run(&["run", job.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let read_report =
        || -> serde_json::Value { serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap() };
    let stage = |report: &serde_json::Value, kind: &str| -> (u64, u64) {
        let s =
            report["stages"].as_array().unwrap().iter().find(|s| s["stage"].as_str().unwrap().ends_with(kind)).unwrap();
        (s["computed"].as_u64().unwrap(), s["carried"].as_u64().unwrap())
    };
    let rows = common::written_ids(&out).len() as u64;
    assert!(rows >= 2, "{rows}");
    assert_eq!(stage(&read_report(), "t5_encode"), (rows, 0), "the first run computes everything");
    let (text_y, text_mask, latents) = (tensors(&out, "text_y"), tensors(&out, "text_mask"), tensors(&out, "latent"));
    let v1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_versions/v00001.json")).unwrap()).unwrap();

    // Another VAE with the same architecture: the goldens' tiny weights.
    let new_vae = common::root().join("models/tests/data/mugvae/weights.safetensors");
    let run_with_new_vae = || {
        let output = common::mugflow(&["run", job.to_str().unwrap(), "--progress", "none"])
            .env("MUGFLOW_VAE", &new_vae)
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        read_report()
    };
    let report = run_with_new_vae();
    assert_eq!(report["version"], 2);
    assert_eq!((report["changes"]["changed"].as_u64(), report["changes"]["unchanged"].as_u64()), (Some(2), Some(0)));
    assert_eq!(stage(&report, "t5_encode"), (0, rows), "no T5 run: every row's text features are carried");
    assert_eq!(stage(&report, "vae_encode"), (rows, 0), "every latent is encoded again");
    assert_eq!(common::written_ids(&out).len() as u64, rows);
    assert_eq!(tensors(&out, "text_y"), text_y, "text_y is carried byte for byte");
    assert_eq!(tensors(&out, "text_mask"), text_mask, "text_mask is carried byte for byte");
    let new_latents = tensors(&out, "latent");
    assert_eq!(new_latents.keys().collect::<Vec<_>>(), latents.keys().collect::<Vec<_>>());
    for (id, (_, _, bytes)) in &new_latents {
        assert_ne!(bytes, &latents[id].2, "{id}: the new VAE gives other latents");
    }
    // The first version is still readable: every file it names is there.
    for shard in v1["shards"].as_array().unwrap() {
        for f in shard["files"].as_array().unwrap() {
            assert!(out.join(f.as_str().unwrap()).is_file(), "{f} of version 1");
        }
    }

    // A new T5 checkpoint (one weight's last byte changed) changes T5 and everything after it:
    // nothing is carried.
    let t5 = models.join("t5.safetensors");
    let mut bytes = std::fs::read(&t5).unwrap();
    *bytes.last_mut().unwrap() ^= 1;
    std::fs::write(&t5, bytes).unwrap();
    let report = run_with_new_vae();
    assert_eq!(report["version"], 3);
    assert_eq!(stage(&report, "t5_encode"), (rows, 0), "T5 changed: its features are computed");
    assert_eq!(stage(&report, "vae_encode"), (rows, 0), "a stage after a changed one is computed");
    assert_eq!(tensors(&out, "latent"), new_latents, "the same VAE on the same clips");
}

/// `vae_encode` with `batch = 4`: same-shape clips go through the VAE together and come out with
/// the latents of one-by-one encoding (up to float rounding), each under its own id.
#[test]
fn batched_vae_encoding_gives_the_same_latents() {
    let dir = tempfile::tempdir().unwrap();
    let models = tiny_models(dir.path());
    for (out, extra) in [("single", ""), ("batched", "batch = 4\nbatch_wait = \"500ms\"\nframes = 4")] {
        let extra = if out == "single" { "frames = 4" } else { extra };
        let job = encode_job_with(dir.path(), &models, "mugflow", out, extra);
        let (code, _, err) = run(&["run", job.to_str().unwrap(), "--progress", "none"]);
        assert_eq!(code, 0, "{err}");
    }
    let (single, batched) =
        (tensors(&dir.path().join("single"), "latent"), tensors(&dir.path().join("batched"), "latent"));
    assert!(single.len() >= 4, "{}", single.len());
    assert_eq!(single.keys().collect::<Vec<_>>(), batched.keys().collect::<Vec<_>>());
    for (id, (dtype, shape, bytes)) in &single {
        let (bd, bs, bb) = &batched[id];
        assert_eq!((dtype, shape), (bd, bs), "{id}");
        let f = |b: &[u8]| b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect::<Vec<_>>();
        let worst = f(bytes).iter().zip(f(bb)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "{id}: latents differ by {worst}");
    }
}

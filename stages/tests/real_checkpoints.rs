//! The bundled manifests run unchanged against `mugflow models init-random DIR --preset real`:
//! with MUGFLOW_MODELS=DIR, every checkpoint and tokenizer a `preset = "real"` stage names is a
//! file or folder of that set. The set is laid out as sparse zeros (no disk space); that each
//! file fits its model at the released sizes is `models/tests/presets.rs`'s check.

use std::path::Path;

use models::checkpoint_files::Fill;
use models::presets::{init_random, Part, Preset};

#[test]
fn bundled_real_manifests_name_files_of_the_real_set() {
    let dir = tempfile::tempdir().unwrap();
    init_random(dir.path(), Preset::Real, &Part::ALL, Fill::Zeros, |_| {}).unwrap();
    let models = dir.path().display().to_string();
    // The enhancer is off by default; on, its five files count too.
    let env = |k: &str| match k {
        "MUGFLOW_MODELS" => Some(models.clone()),
        "MUGFLOW_ENHANCE" => Some("true".to_string()),
        _ => None,
    };
    let registry = stages::registry();
    let manifests = Path::new(env!("CARGO_MANIFEST_DIR")).join("../manifests");
    let mut named = Vec::new();
    for entry in std::fs::read_dir(&manifests).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        let manifest = pipeline::manifest::Manifest::from_text(&path, text, &[], &env).unwrap();
        let plan = pipeline::Plan::from_manifest(&manifest, &registry).unwrap();
        for stage in plan.stages.iter().filter(|s| s.config.params()["preset"] == "real") {
            for checkpoint in stage.config.checkpoints() {
                assert!(
                    checkpoint.exists(),
                    "{}: {} names {}, which the real set lacks",
                    path.display(),
                    stage.kind,
                    checkpoint.display()
                );
                named.push(checkpoint);
            }
        }
    }
    named.sort();
    named.dedup();
    // catalog-generate.toml: the DiT, the VAE, T5 and its tokenizer; the enhancer's DiT, LoRA,
    // VAE, UMT5 and tokenizer.
    assert!(named.len() >= 9, "{named:?}");
}

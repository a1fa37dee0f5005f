//! Every fuzzing seed and every past fuzzing crash (fuzz/corpus, fuzz/regressions) goes through
//! the same code as the fuzz targets on each test run: errors are fine, panics are not.

mod common;

use std::path::Path;

use pipeline::manifest::{InputListing, Manifest, TextEncoding};

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["fuzz/corpus", "fuzz/regressions"] {
        let Ok(entries) = std::fs::read_dir(common::root().join(dir).join(target)) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            out.push((p.display().to_string(), std::fs::read(&p).unwrap()));
        }
    }
    assert!(!out.is_empty(), "no fuzz inputs for {target}");
    out
}

#[test]
fn manifest_inputs_never_panic() {
    let registry = stages::registry();
    for (name, data) in inputs("manifest") {
        let Ok(text) = std::str::from_utf8(&data) else { continue };
        let (first, rest) = text.split_once('\n').unwrap_or(("", text));
        let sets = if first.is_empty() { Vec::new() } else { vec![first.to_string()] };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match Manifest::from_text(Path::new("fuzz.toml"), rest.to_string(), &sets, &|_| None) {
                Ok(m) => match pipeline::Plan::from_manifest(&m, &registry) {
                    Ok(plan) => plan.render(None),
                    Err(d) => d.to_string(),
                },
                Err(d) => d.to_string(),
            }
        }));
        assert!(result.is_ok(), "{name} panics");
    }
}

#[test]
fn listing_inputs_never_panic() {
    for (name, data) in inputs("listing") {
        let Some((&mode, body)) = data.split_first() else { continue };
        let encoding = if mode & 4 == 4 { TextEncoding::Latin1 } else { TextEncoding::Utf8 };
        let listing =
            InputListing { id_column: (mode & 1 == 1).then(|| "id".to_string()), encoding, ..InputListing::default() };
        let file = if mode & 2 == 2 { "/fuzz/listing.parquet" } else { "/fuzz/listing.csv" };
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            pipeline::input::parse_table(file, bytes::Bytes::copy_from_slice(body), &listing).map(|r| r.0.len())
        }));
        assert!(result.is_ok(), "{name} panics");
    }
}

#[test]
fn checkpoint_inputs_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    for (name, data) in inputs("checkpoint") {
        let path = dir.path().join("model.pt");
        std::fs::write(&path, &data).unwrap();
        let result = std::panic::catch_unwind(|| {
            models::weights::Checkpoint::open(&path, candle_core::DType::F32, &candle_core::Device::Cpu)
                .map(|c| c.keys().len())
        });
        assert!(result.is_ok(), "{name} panics");
    }
}

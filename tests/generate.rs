//! Catalog generation end to end with tiny random weights on the CPU: `mugflow generate` over a
//! real catalog with bad rows, MP4s checked by ffprobe, kill-and-resume, and `--gpus` workers.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{error_rows, mugflow, run, written_ids};

/// `mugflow generate --tiny` arguments for `catalog` into `out` on the CPU, with the tiny weights of
/// `mugflow models init-tiny` written next to the catalog, and `sets` as `--set`s.
fn generate_args(catalog: &Path, out: &Path, sets: &[String]) -> Vec<String> {
    let models = common::tiny_models(catalog.parent().unwrap());
    let mut args: Vec<String> = ["generate", "--catalog", catalog.to_str().unwrap(), "--out", out.to_str().unwrap()]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(["--tiny".into(), "--models".into(), models.display().to_string()]);
    args.extend(["--device".into(), "cpu".into(), "--progress".into(), "none".into()]);
    for s in sets {
        args.extend(["--set".to_string(), s.clone()]);
    }
    args
}

/// A catalog CSV next to copies of the bundled test images.
fn catalog(dir: &Path, rows: &str) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    for e in std::fs::read_dir(common::root().join("tests/data/catalog/images")).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, images.join(p.file_name().unwrap())).unwrap();
    }
    std::fs::write(images.join("broken.png"), b"\x89PNG\r\n\x1a\n not really").unwrap();
    let path = dir.join("catalog.csv");
    std::fs::write(&path, format!("id,image,prompt,seed,aspect,length\n{rows}")).unwrap();
    path
}

/// (frames, width, height, rate) of an MP4 as ffprobe reads it.
fn ffprobe(path: &Path) -> (u64, u64, u64, String) {
    let out = std::process::Command::new("ffprobe")
        .args(["-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries"])
        .args(["stream=nb_read_frames,width,height,r_frame_rate", "-of", "json"])
        .arg(path)
        .output()
        .expect("ffprobe (Debian package ffmpeg; scripts/setup.sh installs it)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let s = &v["streams"][0];
    let n = |k: &str| s[k].as_u64().or_else(|| s[k].as_str().and_then(|t| t.parse().ok())).unwrap();
    (n("nb_read_frames"), n("width"), n("height"), s["r_frame_rate"].as_str().unwrap().to_string())
}

#[test]
fn a_catalog_with_bad_rows_gives_videos_and_error_records() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(
        dir.path(),
        "cup,images/coffee.png,A cup of coffee on a table,7,16:9,3s\n\
         cat,images/chelsea.webp,A cat looks up,,,\n\
         cup-exif,images/coffee_exif_orientation6.jpg,A rotated photo of a cup,1,9:16,5s\n\
         gone,images/missing.png,An image that does not exist,,,\n\
         silent,images/rocket.jpg,,,,\n",
    );
    let out = dir.path().join("out");
    let args = generate_args(&cat, &out, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");

    assert_eq!(written_ids(&out), ["cat", "cup", "cup-exif"]);
    let errors = error_rows(&out);
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert_eq!((errors[0].0.as_str(), errors[0].1.as_str()), ("gone", "1:load_image"));
    assert!(errors[0].2.contains("cannot read the image"), "{errors:?}");
    assert_eq!((errors[1].0.as_str(), errors[1].1.as_str()), ("silent", "1:load_image"));
    assert!(errors[1].2.contains("`prompt` is empty"), "{errors:?}");

    for r in common::rows(&out) {
        let video = out.join(&r["video_file"]);
        assert_eq!(ffprobe(&video), (17, 64, 48, "20/1".to_string()), "{}", r["id"]);
        assert_eq!(r["video_frames"], "17");
        let seed = match r["id"].as_str() {
            "cup" => "7",
            "cup-exif" => "1",
            _ => "42",
        };
        assert_eq!(r["seed"], seed, "rows without a seed take the default");
    }

    // Re-running skips every committed row: nothing is generated twice.
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("nothing to do: all 1 shard(s)") && err.contains("are committed"), "{err}");
    assert_eq!(written_ids(&out).len(), 3);
}

/// `--enhance`: generate -> decode -> enhance -> encode on tiny weights; bad rows are still error
/// records, and the enhanced MP4s keep the frame count (17 = 1 + 4k), size and rate.
#[test]
fn generate_with_enhance_writes_enhanced_videos_and_error_records() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(
        dir.path(),
        "cup,images/coffee.png,A cup of coffee on a table,7,16:9,3s\n\
         vase,images/mugv_sample_vase.png,A glass vase on pink marble,,9:16,5s\n\
         gone,images/missing.png,An image that does not exist,,,\n\
         broken,images/broken.png,A file that is not an image,3,,\n\
         silent,images/rocket.jpg,,,,\n",
    );
    let out = dir.path().join("out");
    let mut args = generate_args(&cat, &out, &[]);
    args.push("--enhance".into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    eprintln!("generate --enhance of 5 rows: {:.1} s", started.elapsed().as_secs_f64());

    assert_eq!(written_ids(&out), ["cup", "vase"]);
    let errors = error_rows(&out);
    let failed: Vec<(&str, &str)> = errors.iter().map(|e| (e.0.as_str(), e.1.as_str())).collect();
    assert_eq!(failed, [("broken", "1:load_image"), ("gone", "1:load_image"), ("silent", "1:load_image")]);
    for r in common::rows(&out) {
        assert_eq!(ffprobe(&out.join(&r["video_file"])), (17, 64, 48, "20/1".to_string()), "{}", r["id"]);
        assert_eq!(r["enhance_frames"], "17");
        assert_eq!(r["enhance_steps"], "1");
        assert_eq!(r["enhance_cfg_scale"], "2.0");
        assert_eq!(r["enhance_noise_level"], "0.3");
        assert_eq!(r["enhance_seed"], r["seed"], "the enhancer's noise comes from the row's seed");
    }
    let index = std::fs::read_to_string(out.join("index.json")).unwrap();
    assert!(index.contains("dit_i2v.safetensors") && index.contains("umt5.safetensors"), "{index}");
}

/// Without `--enhance` the bundled manifest's enhance stage passes rows through: no enhancer
/// checkpoint is needed or recorded.
#[test]
fn the_enhance_stage_is_off_by_default() {
    let dir = tempfile::tempdir().unwrap();
    let sets = vec!["stage.enhance.dit=does/not/exist.safetensors".to_string()];
    let cat = catalog(dir.path(), "cup,images/coffee.png,A cup of coffee on a table,7,16:9,3s\n");
    let out = dir.path().join("out");
    let args = generate_args(&cat, &out, &sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let rows = common::rows(&out);
    assert_eq!(rows.len(), 1);
    assert!(!rows[0].contains_key("enhance_frames"), "{:?}", rows[0]);
    assert!(!std::fs::read_to_string(out.join("index.json")).unwrap().contains("dit_i2v"));
}

#[test]
fn a_generation_killed_mid_way_resumes_with_every_row_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let sets = vec!["job.shard_size=1".to_string()];
    let images = ["coffee.png", "chelsea.webp", "rocket.jpg", "astronaut.png", "grace_hopper.jpg"];
    let rows: String =
        (0..16).map(|i| format!("row-{i:02},images/{},Product video {i},{i},,\n", images[i % images.len()])).collect();
    let cat = catalog(dir.path(), &rows);
    let out = dir.path().join("out");
    let args = generate_args(&cat, &out, &sets);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let journal = out.join("_journal");
    let mut child = mugflow(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    let committed = |p: &Path| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    while committed(&journal) < 3 {
        assert!(start.elapsed() < Duration::from_secs(300), "no shard committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(committed(&journal) < 16, "the run finished before it was killed; nothing was tested");

    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let ids = written_ids(&out);
    let expected: Vec<String> = (0..16).map(|i| format!("row-{i:02}")).collect();
    assert_eq!(ids, expected, "every row exactly once");
    let mut videos: Vec<String> = std::fs::read_dir(out.join("videos"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .collect();
    videos.sort();
    assert_eq!(videos, expected.iter().map(|i| format!("{i}.mp4")).collect::<Vec<_>>());
}

/// `--gpus 0,0`: two worker processes (sharing GPU 0; on this CPU-only machine they run on the
/// CPU as the manifest says) split the shards, and together write every row once.
#[test]
fn gpus_runs_one_worker_per_listed_gpu_over_disjoint_shards() {
    let dir = tempfile::tempdir().unwrap();
    let sets: Vec<String> = [
        "job.shard_size=1",
        "stage.i2v_generate.device=cpu",
        "stage.vae_decode.device=cpu",
        "stage.i2v_generate.dtype=f32",
        "stage.vae_decode.dtype=f32",
    ]
    .map(String::from)
    .to_vec();
    let rows: String = (0..4).map(|i| format!("p{i},images/coffee.png,Product {i},,,\n")).collect();
    let cat = catalog(dir.path(), &rows);
    let out = dir.path().join("out");
    let mut args = generate_args(&cat, &out, &sets);
    args.extend(["--gpus".into(), "0,0".into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("starting 2 worker(s), one per GPU: 0, 0"), "{err}");
    assert_eq!(written_ids(&out), ["p0", "p1", "p2", "p3"]);
    let reports: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.starts_with("report-rank-"))
        .collect();
    assert_eq!(reports.len(), 2, "one report per worker: {reports:?}");
}

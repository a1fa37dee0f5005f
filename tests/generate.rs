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
    // The page: a card per video (all new), the two failed rows grouped by cause.
    let page = common::report::check(&out, None);
    assert_eq!(page.cards, ["cat", "cup", "cup-exif"]);
    let groups = common::report::tags(&page.html, "<tr data-stage=\"1:load_image\" data-count=");
    assert_eq!(groups.len(), 2, "{groups:?}");
    assert!(page.html.contains("`prompt` is empty") && page.html.contains("cannot read the image"));
    let failed: Vec<String> =
        common::report::tags(&page.html, "<tr data-id=").iter().map(|t| t["data-id"].clone()).collect();
    assert_eq!(failed, ["gone", "silent"], "the failed rows under the cards");

    // Re-running generates nothing twice: the 3 videos are carried over, only the 2 rows that
    // failed are tried again (and fail again).
    let before = common::tree(&out.join("videos"));
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 new, 0 changed, 3 unchanged (carried over), 0 removed (against version 1)"), "{err}");
    assert_eq!(written_ids(&out).len(), 3);
    assert_eq!(error_rows(&out).len(), 2);
    assert_eq!(common::tree(&out.join("videos")), before);
}

/// The nightly catalog: the next night's catalog has 2 new rows, 1 changed prompt, 1 replaced
/// image (same path, new bytes) and 1 removed row, and a different shard size. Exactly those 4
/// rows are generated into a new version of 7 rows; the other videos are carried over untouched
/// (same bytes, same modification time), and version 1 stays readable.
#[test]
fn the_next_nights_catalog_generates_only_new_and_changed_rows_into_a_new_version() {
    let dir = tempfile::tempdir().unwrap();
    let night1 = "a,images/coffee.png,Product a,1,,\nb,images/chelsea.webp,Product b,2,,\n\
                  c,images/rocket.jpg,Product c,3,,\nd,images/astronaut.png,Product d,4,,\n\
                  e,images/grace_hopper.jpg,Product e,5,,\nf,images/mugv_sample_vase.png,Product f,6,,\n";
    let cat = catalog(dir.path(), night1);
    let out = dir.path().join("out");
    let args = generate_args(&cat, &out, &["job.shard_size=2".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("6 new, 0 changed, 0 unchanged (carried over), 0 removed (new dataset)"), "{err}");
    let v1: std::collections::BTreeMap<String, String> =
        common::rows(&out).into_iter().map(|r| (r["id"].clone(), r["video_file"].clone())).collect();
    assert_eq!(v1.len(), 6);
    let stat = |f: &str| {
        let p = out.join(f);
        (std::fs::read(&p).unwrap(), std::fs::metadata(&p).unwrap().modified().unwrap())
    };
    let before: Vec<_> = v1.values().map(|f| stat(f)).collect();

    // The next night: d's image replaced in place, b's prompt changed, f gone, g and h new.
    std::fs::copy(dir.path().join("images/rocket.jpg"), dir.path().join("images/astronaut.png")).unwrap();
    let night2 = "a,images/coffee.png,Product a,1,,\nb,images/chelsea.webp,Product b in red,2,,\n\
                  c,images/rocket.jpg,Product c,3,,\nd,images/astronaut.png,Product d,4,,\n\
                  e,images/grace_hopper.jpg,Product e,5,,\ng,images/coffee.png,Product g,7,,\n\
                  h,images/chelsea.webp,Product h,8,,\n";
    std::fs::write(&cat, format!("id,image,prompt,seed,aspect,length\n{night2}")).unwrap();
    let args = generate_args(&cat, &out, &["job.shard_size=3".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("2 new, 2 changed, 3 unchanged (carried over), 1 removed (against version 1)"), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["stages"][1]["items_in"], 4, "exactly 4 rows generated: {report}");
    assert_eq!((report["base_version"].as_u64(), report["version"].as_u64()), (Some(1), Some(2)));

    let v2: std::collections::BTreeMap<String, String> =
        common::rows(&out).into_iter().map(|r| (r["id"].clone(), r["video_file"].clone())).collect();
    assert_eq!(v2.keys().collect::<Vec<_>>(), ["a", "b", "c", "d", "e", "g", "h"]);
    for id in ["a", "c", "e"] {
        assert_eq!(v2[id], v1[id], "{id} is carried over");
    }
    for id in ["b", "d"] {
        assert_ne!(v2[id], v1[id], "{id} is generated again, into a new file");
    }
    // Nothing of version 1 was rewritten, and version 1 still reads as it was.
    assert_eq!(v1.values().map(|f| stat(f)).collect::<Vec<_>>(), before);
    let (code, stdout, _) = run(&["inspect", out.to_str().unwrap(), "--diff", "1", "2"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("v1 -> v2: 2 added, 1 removed, 2 changed, 3 unchanged"), "{stdout}");
    assert!(stdout.contains("removed  f") && stdout.contains("changed  d"), "{stdout}");
    let (_, stdout, _) = run(&["inspect", out.to_str().unwrap()]);
    assert!(stdout.contains("v1 ") && stdout.contains("v2 "), "{stdout}");
    let v1_index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("_versions/v00001.json")).unwrap()).unwrap();
    let mut v1_ids = Vec::new();
    for s in v1_index["shards"].as_array().unwrap() {
        let rows = common::table_rows(&out, s["table"].as_str().unwrap());
        v1_ids.extend(rows.into_iter().map(|r| r["id"].clone()));
    }
    v1_ids.sort();
    assert_eq!(v1_ids, ["a", "b", "c", "d", "e", "f"]);

    // Version 2's page shows the new rows, then the changed ones, then the rest; version 1's page,
    // written elsewhere, points at version 1's videos.
    let page = common::report::check(&out, None);
    assert_eq!(page.cards, ["g", "h", "b", "d", "a", "c", "e"]);
    let v1_page = dir.path().join("v1.html");
    let (code, _, err) = run(&["report", out.to_str().unwrap(), "--version", "1", "--out", v1_page.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let page = common::report::check(&out, Some(&v1_page));
    assert_eq!(page.cards, ["a", "b", "c", "d", "e", "f"]);
    assert!(page.html.contains("No run report of this version"));
    let (code, _, err) = run(&["report", out.to_str().unwrap(), "--version", "9"]);
    assert_ne!(code, 0);
    assert!(err.contains("has no version 9") && err.contains("hint: `mugflow inspect"), "{err}");

    // Vacuum keeps version 2's files and deletes f's video and the replaced ones.
    let (code, stdout, err) = run(&["vacuum", out.to_str().unwrap(), "--keep", "1", "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("deleted version(s) [1]"), "{stdout}");
    for id in ["b", "d", "f"] {
        assert!(!out.join(&v1[id]).exists(), "{id}'s old video is vacuumed");
    }
    for f in v2.values() {
        assert!(out.join(f).exists(), "{f} of the kept version stays");
    }
    let mut ids = written_ids(&out);
    ids.sort();
    assert_eq!(ids, ["a", "b", "c", "d", "e", "g", "h"]);
}

/// Two ids that differ only in characters a file name cannot hold get two files.
#[test]
fn ids_that_sanitise_alike_get_two_files() {
    let dir = tempfile::tempdir().unwrap();
    let cat = catalog(dir.path(), "p/1,images/coffee.png,Product one,1,,\np_1,images/rocket.jpg,Product two,2,,\n");
    let out = dir.path().join("out");
    let args = generate_args(&cat, &out, &[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let rows = common::rows(&out);
    assert_eq!(rows.len(), 2);
    assert_ne!(rows[0]["video_file"], rows[1]["video_file"]);
    for r in &rows {
        assert_eq!(ffprobe(&out.join(&r["video_file"])).0, 17, "{r:?}");
    }
    assert_ne!(
        std::fs::read(out.join(&rows[0]["video_file"])).unwrap(),
        std::fs::read(out.join(&rows[1]["video_file"])).unwrap()
    );
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
    let mut child = mugflow(&args).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = Instant::now();
    while common::journal_entries(&out) < 3 {
        assert!(start.elapsed() < Duration::from_secs(300), "no shard committed");
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(common::journal_entries(&out) < 16, "the run finished before it was killed; nothing was tested");

    let (code, _, err) = run(&args);
    assert_eq!(code, 0, "{err}");
    let ids = written_ids(&out);
    let expected: Vec<String> = (0..16).map(|i| format!("row-{i:02}")).collect();
    assert_eq!(ids, expected, "every row exactly once");
    // After a vacuum of what the killed attempt left, exactly one video per row is left.
    let (code, _, err) = run(&["vacuum", out.to_str().unwrap(), "--older-than", "0s"]);
    assert_eq!(code, 0, "{err}");
    let mut videos: Vec<String> = common::tree(&out.join("videos"))
        .into_iter()
        .map(|(name, _)| name.rsplit('/').next().unwrap().to_string())
        .collect();
    videos.sort();
    assert_eq!(videos, expected.iter().map(|i| format!("{i}.mp4")).collect::<Vec<_>>());
}

/// The output folder and the `generate` arguments of a `--gpus 0,0` job over `rows` catalog rows
/// (`p0`, `p1`, ...; one per shard), its stages told to run on the CPU (this machine has no GPU),
/// with `--gpus 0,0` as the last two arguments.
fn gpus_on_this_cpu(dir: &Path, rows: usize) -> (PathBuf, Vec<String>) {
    let sets: Vec<String> = [
        "job.shard_size=1",
        "stage.i2v_generate.device=cpu",
        "stage.vae_decode.device=cpu",
        "stage.i2v_generate.dtype=f32",
        "stage.vae_decode.dtype=f32",
    ]
    .map(String::from)
    .to_vec();
    let rows: String = (0..rows).map(|i| format!("p{i},images/coffee.png,Product {i},,,\n")).collect();
    let cat = catalog(dir, &rows);
    let out = dir.join("out");
    let mut args = generate_args(&cat, &out, &sets);
    args.extend(["--gpus".into(), "0,0".into()]);
    (out, args)
}

/// `--gpus 0,0`: two worker processes (sharing GPU 0; on this CPU-only machine they run on the
/// CPU as the manifest says) split the shards, and together write every row once.
#[test]
fn gpus_runs_one_worker_per_listed_gpu_over_disjoint_shards() {
    let dir = tempfile::tempdir().unwrap();
    let (out, args) = gpus_on_this_cpu(dir.path(), 4);
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

/// The README's "try the whole chain" commands, as written and in order, in a fresh directory
/// holding only the bundled catalog (what a new clone has): they work, and run again they
/// carry every video over.
#[test]
fn the_readme_demo_runs_on_a_fresh_checkout_twice() {
    let readme = std::fs::read_to_string(common::root().join("README.md")).unwrap();
    let commands: Vec<&str> = readme
        .lines()
        .filter(|l| l.starts_with("mugflow models init-tiny") || l.starts_with("mugflow generate --catalog tests/data"))
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("tests/data/catalog");
    std::fs::create_dir_all(catalog.join("images")).unwrap();
    for f in ["catalog.csv", "images"] {
        let from = common::root().join("tests/data/catalog").join(f);
        if from.is_dir() {
            for e in std::fs::read_dir(&from).unwrap() {
                let p = e.unwrap().path();
                std::fs::copy(&p, catalog.join("images").join(p.file_name().unwrap())).unwrap();
            }
        } else {
            std::fs::copy(&from, catalog.join(f)).unwrap();
        }
    }
    for (round, expect) in [(1, "7 new, 0 changed, 0 unchanged"), (2, "0 new, 0 changed, 7 unchanged")] {
        for c in &commands {
            let args: Vec<&str> = c.split_whitespace().skip(1).collect();
            let out = mugflow(&args).current_dir(dir.path()).output().unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "round {round}: {c}: {err}");
            if args[0] == "generate" {
                assert!(err.contains(expect), "round {round}: {err}");
            }
        }
    }
    assert_eq!(written_ids(&dir.path().join("out/demo")).len(), 7);
}

/// `--gpus`: SIGTERM to the parent (Slurm's preemption) reaches every worker; each stops as an
/// interrupted run, and the parent exits with the preemption code; a re-run finishes the job.
#[test]
fn gpus_forwards_sigterm_to_its_workers() {
    let dir = tempfile::tempdir().unwrap();
    let (out, args) = gpus_on_this_cpu(dir.path(), 40);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut parent = mugflow(&args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // Read the workers' progress lines as they come, or a full pipe would stall them.
    let mut stderr = parent.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
        text
    });
    let start = Instant::now();
    while common::journal_entries(&out) < 1 {
        assert!(start.elapsed() < Duration::from_secs(300), "no shard committed");
        if let Some(status) = parent.try_wait().unwrap() {
            panic!("mugflow exited with {status} before any commit: {}", reader.join().unwrap());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    extern "C" {
        fn kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: plain libc call on a child we own.
    assert_eq!(unsafe { kill(parent.id() as i32, 15) }, 0);
    let status = parent.wait().unwrap();
    let err = reader.join().unwrap();
    assert_eq!(status.code(), Some(143), "{err}");
    assert!(err.contains("interrupted by SIGTERM"), "{err}");
    for rank in 0..2 {
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join(format!("report-rank-{rank:05}.json"))).unwrap()).unwrap();
        assert_eq!(report["status"], "interrupted", "worker {rank} stopped on the forwarded signal: {report}");
    }
    let (code, _, err) = run(&args[..args.len() - 2]); // the same job without `--gpus 0,0`
    assert_eq!(code, 0, "{err}");
    assert_eq!(written_ids(&out).len(), 40);
}

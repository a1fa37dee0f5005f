//! Shot detection end to end: `mugflow scenes` on one file and `scene_split` in a manifest.

mod common;

use common::run;

#[test]
fn scenes_prints_the_shots_of_one_video() {
    let (code, out, err) = run(&["scenes", "tests/data/videos/bbb_trailer_moviepy.mp4"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "scene,start_frame,end_frame,start_time,end_time");
    assert_eq!(lines[1], "1,0,240,0.000,10.000");
    assert_eq!(lines.len(), 1 + 10, "9 cuts make 10 scenes");
    assert!(lines[10].ends_with(",1323,51.833,55.125"), "{out}");

    let (code, out, _) =
        run(&["scenes", "tests/data/videos/cockatoo_rot90.mov", "--detector", "adaptive", "--format", "json"]);
    assert_eq!(code, 0);
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((doc["frames"].as_u64(), doc["cuts"].as_array().unwrap().len()), (Some(280), 0));

    let (code, _, err) = run(&["scenes", "tests/data/videos/missing.mp4"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot detect scenes in tests/data/videos/missing.mp4"), "{err}");
    let (code, _, err) = run(&["scenes", "tests/data/videos/hug_lego_movie.mp4", "--min-scene-len", "12"]);
    assert_eq!(code, 1);
    assert!(err.contains("has no unit"), "{err}");
}

/// The whole curation chain (probe -> scene_split -> clip_filter -> aesthetic -> t5_encode ->
/// vae_encode -> write) on the real test videos with tiny weights: the kept clips, their scores,
/// and latents and text features of the documented shapes under each clip's id.
#[test]
fn the_curate_manifest_writes_one_row_per_kept_clip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curate");
    let models = common::tiny_models(dir.path());
    let set = format!("job.output={}", out.display());
    let output = common::mugflow(&["run", "manifests/curate.toml", "--set", &set, "--progress", "none"])
        .env("MUGFLOW_MODELS", &models)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let ids = common::written_ids(&out);
    assert!(ids.contains(&"bbb_trailer_moviepy#0-240".to_string()), "a 10 s shot is kept whole: {ids:?}");
    assert!(ids.contains(&"hug_lego_movie#0-166".to_string()), "{ids:?}");
    // Every kept clip lasts 1-10 s and comes from a source at least 240 pixels high.
    let rows = common::rows(&out);
    assert_eq!(rows.len(), ids.len());
    // Why clip_filter dropped what it dropped, in report.json and on the page.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let dropped = &report["stages"][2]["dropped"];
    assert_eq!(dropped, &serde_json::json!({"too short": 4, "black": 2, "static": 1}), "{report}");
    let page = common::report::check(&out, None);
    assert!(page.html.contains("black 2, static 1, too short 4"));
    assert_eq!(page.clips.len(), 44, "a sample of 48 holds every kept clip");
    assert!(page.clips.iter().all(|c| ids.contains(c)), "{:?}", page.clips);
    // Each dropped clip is shown with its reason (at most 6 per reason: all 7 here).
    let mut dropped = page.dropped.clone();
    dropped.sort();
    let black = ["bbb_295s_av1_360p_noaudio#102-128", "bbb_trailer_moviepy#1244-1323"];
    assert_eq!(dropped.iter().filter(|(_, r)| r == "black").map(|(id, _)| id.as_str()).collect::<Vec<_>>(), black);
    assert_eq!(dropped.iter().filter(|(id, r)| r == "static" && id == "bbb_trailer_moviepy#988-1049").count(), 1);
    assert_eq!(dropped.iter().filter(|(_, r)| r == "too short").count(), 4, "{dropped:?}");
    for r in &rows {
        let (frames, fps): (f64, f64) = (r["clip_frames"].parse().unwrap(), r["clip_fps"].parse().unwrap());
        assert!(frames >= fps.round() && frames <= (10.0 * fps).round(), "{r:?}");
        assert!(r["height"].parse::<i64>().unwrap() >= 240, "{r:?}");
    }
    // 51 shots (one per video plus the 41 content cuts of the reference lists): shots under 1 s
    // are dropped and shots over 10 s split into windows, which leaves 47 clips; of those the
    // trailer's black end card, a fade to black and one near-still shot are dropped.
    assert_eq!(rows.len(), 44);
    for gone in ["bbb_trailer_moviepy#1244-1323", "bbb_295s_av1_360p_noaudio#102-128", "bbb_trailer_moviepy#988-1049"] {
        assert!(!ids.contains(&gone.to_string()), "{gone} is kept");
    }
    for r in &rows {
        let motion: f64 = r["motion"].parse().unwrap();
        assert!(motion >= 0.15 && r["brightness"].parse::<f64>().unwrap() >= 16.0, "{r:?}");
        assert!(r["aesthetic_score"].parse::<f64>().unwrap().is_finite(), "{r:?}");
        // The caption is the source video's, with the score appended as MUG-V's prompts have it.
        assert!(r["caption"].ends_with('.') && r["caption"].contains(" aesthetic score: "), "{r:?}");
        assert_eq!((r["vae_width"].as_str(), r["vae_height"].as_str()), ("128", "72"), "{r:?}");
    }

    // Tensors, keyed `<id>/<name>`, with the shapes the rows announce.
    let mut seen = 0;
    for shard in common::committed_shards(&out) {
        let Some(file) = shard.tensor_file else { continue };
        let bytes = std::fs::read(out.join(file)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        for r in rows.iter().filter(|r| st.names().iter().any(|n| **n == format!("{}/latent", r["id"]))) {
            let id = &r["id"];
            let frames: usize = r["vae_frames"].parse().unwrap();
            // The VAE's latent length: 6 per 48 frames, then one per started 8.
            let latent_frames = 6 * (frames / 48) + (frames % 48).div_ceil(8);
            let latent = st.tensor(&format!("{id}/latent")).unwrap();
            assert_eq!(latent.shape(), [24, latent_frames, 9, 16], "{id}");
            assert_eq!(latent.dtype(), safetensors::Dtype::F32);
            assert_eq!(r["latent_frames"], latent_frames.to_string());
            let y = st.tensor(&format!("{id}/text_y")).unwrap();
            assert_eq!(y.shape(), [300, 64], "{id}");
            let mask = st.tensor(&format!("{id}/text_mask")).unwrap();
            assert_eq!((mask.shape(), mask.dtype()), (&[300][..], safetensors::Dtype::BOOL), "{id}");
            let tokens = mask.data().iter().filter(|&&m| m == 1).count();
            assert_eq!(r["text_tokens"], tokens.to_string(), "{id}");
            assert!(mask.data()[..tokens].iter().all(|&m| m == 1), "{id}: the mask is a prefix");
            seen += 1;
        }
    }
    assert_eq!(seen, 44);
}

/// `export_clips` writes one playable MP4 per kept clip, at the asked frame rate and bucket size,
/// named in the clip's row; broken sources become error records; a re-run changes nothing.
#[test]
fn export_clips_writes_one_mp4_per_clip() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir(&videos).unwrap();
    for name in ["hug_lego_movie.mp4", "cockatoo_rot90.mov"] {
        std::fs::copy(format!("tests/data/videos/{name}"), videos.join(name)).unwrap();
    }
    let real = std::fs::read("tests/data/videos/hug_lego_movie.mp4").unwrap();
    std::fs::write(videos.join("truncated.mp4"), &real[..real.len() / 3]).unwrap();
    let out = dir.path().join("clips");
    let manifest = dir.path().join("export.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"[job]
name = "export"
input = "{}/*"
output = "{}"

[[stage]]
kind = "probe"
[[stage]]
kind = "scene_split"
[[stage]]
kind = "clip_filter"
max_duration = "3s"
[[stage]]
kind = "export_clips"
fps = 10
buckets = ["160x96", "96x160"]
preset = "ultrafast"
[[stage]]
kind = "write"
"#,
            videos.display(),
            out.display()
        ),
    )
    .unwrap();
    let m = manifest.to_str().unwrap();
    let (code, _, err) = run(&["run", m, "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let rows = common::rows(&out);
    assert!(rows.len() >= 4, "{rows:?}");
    for r in &rows {
        let file = out.join(&r["clip_file"]);
        let info = stages::video::probe::probe_file(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(info.codec, "h264");
        let landscape = r["width"].parse::<u32>().unwrap() > r["height"].parse::<u32>().unwrap();
        assert_eq!((info.width, info.height), if landscape { (160, 96) } else { (96, 160) }, "{r:?}");
        assert_eq!(info.fps, 10.0);
        let clip_s: f64 = r["clip_end_s"].parse::<f64>().unwrap() - r["clip_start_s"].parse::<f64>().unwrap();
        assert_eq!(info.frame_count, r["export_frames"].parse::<i64>().unwrap());
        assert!((info.frame_count as f64 - clip_s * 10.0).abs() <= 1.0, "{r:?} {info:?}");
    }
    // clips/<attempt>/<id>.mp4: one attempt folder, one file per row.
    let attempts: Vec<_> = std::fs::read_dir(out.join("clips")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(attempts.len(), 1, "{attempts:?}");
    let clips = std::fs::read_dir(&attempts[0]).unwrap().count();
    assert_eq!(clips, rows.len(), "one file per row");
    let errors = common::error_rows(&out);
    assert!(errors.iter().any(|e| e.0 == "truncated"), "{errors:?}");
    // A second run finds every shard committed and writes nothing.
    let before = std::fs::metadata(out.join(&rows[0]["clip_file"])).unwrap().modified().unwrap();
    let (code, _, err) = run(&["run", m, "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(std::fs::metadata(out.join(&rows[0]["clip_file"])).unwrap().modified().unwrap(), before);
}

/// A video whose reading never finishes (a FIFO nobody writes to) costs `scene_split` one
/// item timeout and one error record; the other video is split as usual.
#[test]
fn a_hung_video_times_out_in_scene_split() {
    let dir = tempfile::tempdir().unwrap();
    let videos = dir.path().join("videos");
    std::fs::create_dir(&videos).unwrap();
    std::fs::copy("tests/data/videos/hug_lego_movie.mp4", videos.join("hug_lego_movie.mp4")).unwrap();
    assert!(std::process::Command::new("mkfifo").arg(videos.join("hung.mp4")).status().unwrap().success());
    // A writer that never writes (held read-write, which does not block): reads wait for data.
    let _writer = std::fs::OpenOptions::new().read(true).write(true).open(videos.join("hung.mp4")).unwrap();
    let list = dir.path().join("videos.txt");
    std::fs::write(&list, format!("{0}/hung.mp4\n{0}/hug_lego_movie.mp4\n", videos.display())).unwrap();
    let (manifest, out) = (dir.path().join("split.toml"), dir.path().join("out"));
    let text = format!(
        "[job]\nname = \"split\"\ninput = {{ list = \"{}\" }}\noutput = \"{}\"\nitem_timeout = \"2s\"\n\n\
         [[stage]]\nkind = \"scene_split\"\n\n[[stage]]\nkind = \"write\"\n",
        list.display(),
        out.display()
    );
    std::fs::write(&manifest, text).unwrap();
    let (code, _, err) = run(&["run", manifest.to_str().unwrap(), "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let errors = common::error_rows(&out);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!((errors[0].0.as_str(), errors[0].1.as_str()), ("hung", "1:scene_split"));
    assert!(errors[0].2.contains("timed out after 2s"), "{errors:?}");
    assert_eq!(common::written_ids(&out), ["hug_lego_movie#0-166"]);
}

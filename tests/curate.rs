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

#[test]
fn the_curate_manifest_writes_one_row_per_kept_clip() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("curate");
    let set = format!("job.output={}", out.display());
    let (code, _, err) = run(&["run", "manifests/curate.toml", "--set", &set, "--progress", "none"]);
    assert_eq!(code, 0, "{err}");
    let ids = common::written_ids(&out);
    assert!(ids.contains(&"bbb_trailer_moviepy#0-240".to_string()), "a 10 s shot is kept whole: {ids:?}");
    assert!(ids.contains(&"hug_lego_movie#0-166".to_string()), "{ids:?}");
    // Every kept clip lasts 1-10 s and comes from a source at least 240 pixels high.
    let rows = common::rows(&out);
    assert_eq!(rows.len(), ids.len());
    for r in &rows {
        let (frames, fps): (f64, f64) = (r["clip_frames"].parse().unwrap(), r["clip_fps"].parse().unwrap());
        assert!(frames >= fps.round() && frames <= (10.0 * fps).round(), "{r:?}");
        assert!(r["height"].parse::<i64>().unwrap() >= 240, "{r:?}");
    }
    // 51 shots (one per video plus the 41 content cuts of the reference lists): shots under 1 s
    // are dropped and shots over 10 s split into windows, which leaves 47 clips.
    assert_eq!(rows.len(), 47);
}

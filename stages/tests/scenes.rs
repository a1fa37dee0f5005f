//! Parity with PySceneDetect 0.7.2: on every test video, the content and adaptive detectors
//! with default parameters find the cuts of the reference lists in tests/data/scenes (made with
//! `scenedetect detect-content|detect-adaptive list-scenes`) within one frame.

use std::path::PathBuf;

use stages::video::scenes::{Detector, Scores};

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

/// (cuts as 0-based first frames of new shots, total frames) from a list-scenes CSV.
fn reference(name: &str) -> (Vec<usize>, usize) {
    let text = std::fs::read_to_string(data().join("scenes").join(name)).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().skip(2).map(|l| l.split(',').collect()).collect();
    let cuts = rows.iter().skip(1).map(|r| r[1].parse::<usize>().unwrap() - 1).collect();
    let frames = rows.last().map_or(0, |r| r[4].parse().unwrap());
    (cuts, frames)
}

#[test]
fn content_and_adaptive_detectors_match_pyscenedetect() {
    let content = Detector::Content { threshold: 27.0 };
    let adaptive = Detector::Adaptive { threshold: 3.0, window: 2, min_content: 15.0 };
    let mut failures = Vec::new();
    let mut checked = 0;
    for entry in std::fs::read_dir(data().join("videos")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let scores = Scores::of_file(&path, 0).unwrap_or_else(|e| panic!("{name}: {e}"));
        for (detector, suffix) in [(content, "content"), (adaptive, "adaptive")] {
            let (want, frames) = reference(&format!("{name}.{suffix}.csv"));
            let got = scores.detect(detector, 0.6);
            let close = got.cuts.len() == want.len() && got.cuts.iter().zip(&want).all(|(a, b)| a.abs_diff(*b) <= 1);
            if !close || got.frames.abs_diff(frames) > 1 {
                failures.push(format!(
                    "{name} ({suffix}): cuts {:?}, want {want:?}; frames {}, want {frames}",
                    got.cuts, got.frames
                ));
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 20);
    assert!(failures.is_empty(), "differs from PySceneDetect:\n{}", failures.join("\n"));
}

#[test]
fn broken_videos_are_errors_or_partial_results_never_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let mkv = std::fs::read(data().join("videos/bbb_160s_hevc_480p.mkv")).unwrap();
    let mp4 = std::fs::read(data().join("videos/hug_lego_movie.mp4")).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    for p in [write("empty.mp4", &[]), write("truncated.mp4", &mp4[..mp4.len() / 2]), write("noise.mkv", &[0x1a; 5000])]
    {
        assert!(Scores::of_file(&p, 0).is_err(), "{}", p.display());
    }
    // A Matroska file cut in the middle still decodes up to the cut.
    let cut = write("cut.mkv", &mkv[..mkv.len() / 3]);
    let scores = Scores::of_file(&cut, 0).unwrap();
    assert!(scores.scores.len() > 50 && scores.scores.len() < 720, "{}", scores.scores.len());
    // Corrupted bytes in the middle of the stream: the decoder skips what it cannot read.
    let mut damaged = mkv.clone();
    for b in &mut damaged[mkv.len() / 2..mkv.len() / 2 + 20_000] {
        *b = 0x55;
    }
    let scores = Scores::of_file(&write("damaged.mkv", &damaged), 0).unwrap();
    assert!(scores.scores.len() > 300, "{}", scores.scores.len());
}

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

//! `probe` against ffprobe's own output on every real test video.

use std::path::PathBuf;

use stages::video::probe::probe_file;
use stages::video::probe::DecodeError;

fn data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/data")
}

fn ratio(s: &str) -> f64 {
    let (n, d) = s.split_once('/').unwrap();
    n.parse::<f64>().unwrap() / d.parse::<f64>().unwrap()
}

#[test]
fn probe_matches_ffprobe_on_every_test_video() {
    let mut seen = 0;
    for entry in std::fs::read_dir(data().join("videos")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(data().join(format!("probe/{name}.json"))).unwrap()).unwrap();
        let streams = json["streams"].as_array().unwrap();
        let v = streams.iter().find(|s| s["codec_type"] == "video").unwrap();
        let info = probe_file(&path).unwrap_or_else(|e| panic!("{name}: {e}"));

        let duration: f64 = json["format"]["duration"].as_str().unwrap().parse().unwrap();
        assert!((info.duration_s - duration).abs() < 1e-3, "{name}: duration {} vs {duration}", info.duration_s);
        assert_eq!(info.fps, ratio(v["avg_frame_rate"].as_str().unwrap()), "{name}: fps");
        assert_eq!(info.fps_real, ratio(v["r_frame_rate"].as_str().unwrap()), "{name}: fps_real");
        assert_eq!(info.codec, v["codec_name"].as_str().unwrap(), "{name}: codec");
        assert_eq!(info.pix_fmt, v["pix_fmt"].as_str().unwrap(), "{name}: pix_fmt");
        let bit_rate: i64 = json["format"]["bit_rate"].as_str().unwrap().parse().unwrap();
        assert_eq!(info.bit_rate, bit_rate, "{name}: bit_rate");
        assert_eq!(info.has_audio, streams.iter().any(|s| s["codec_type"] == "audio"), "{name}: audio");
        match v["nb_frames"].as_str() {
            Some(n) => {
                assert_eq!(info.frame_count, n.parse::<i64>().unwrap(), "{name}: frames");
                assert!(info.frame_count_exact);
            }
            None => assert_eq!(info.frame_count, (duration * info.fps).round() as i64, "{name}: estimated frames"),
        }
        // ffprobe reports the display matrix angle counter-clockwise; we report the clockwise turn.
        let ccw =
            v["side_data_list"].as_array().into_iter().flatten().find_map(|sd| sd["rotation"].as_i64()).unwrap_or(0);
        assert_eq!(info.rotation, (-ccw).rem_euclid(360), "{name}: rotation");
        let (w, h) = (v["width"].as_u64().unwrap() as u32, v["height"].as_u64().unwrap() as u32);
        let shown = if info.rotation % 180 == 90 { (h, w) } else { (w, h) };
        assert_eq!((info.width, info.height), shown, "{name}: displayed size");
        seen += 1;
    }
    assert_eq!(seen, 10);
}

#[test]
fn broken_files_are_errors_not_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let real = std::fs::read(data().join("videos/hug_lego_movie.mp4")).unwrap();
    let cases = [
        ("empty.mp4", Vec::new()),
        ("garbage.mp4", (0..200_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect()),
        // The moov atom of this file sits at the end; cutting it off leaves no index to read.
        ("truncated.mp4", real[..real.len() / 2].to_vec()),
    ];
    for (name, bytes) in cases {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        let err = probe_file(&p).expect_err(name);
        assert!(matches!(err, DecodeError::Open(..) | DecodeError::NoVideo | DecodeError::NoSize), "{name}: {err}");
    }
    assert!(matches!(probe_file(&dir.path().join("missing.mp4")), Err(DecodeError::Open(..))));
}

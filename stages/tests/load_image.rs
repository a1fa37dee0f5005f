//! Reference images for generation: MUG-V's frame sizes and lengths, and EXIF orientation.

use std::path::PathBuf;

use stages::load_image::{read_image, ASPECT_RATIOS, LENGTHS};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn frame_sizes_and_lengths_are_the_references() {
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(root().join("tests/data/preprocess/preprocess.json")).unwrap()).unwrap();
    for (aspect, (h, w)) in ASPECT_RATIOS {
        assert_eq!(doc["frame_sizes_720p"][aspect], serde_json::json!([h, w]), "{aspect}");
    }
    for (length, frames) in LENGTHS {
        assert_eq!(doc["num_frames"][length], frames, "{length}");
    }
}

#[test]
fn exif_orientation_turns_a_rotated_photo_upright_unless_asked_not_to() {
    let images = root().join("../tests/data/catalog/images");
    let upright = read_image(&images.join("coffee.png"), true).unwrap();
    let rotated = read_image(&images.join("coffee_exif_orientation6.jpg"), true).unwrap();
    assert_eq!((rotated.width, rotated.height), (upright.width, upright.height));
    // The same picture, up to JPEG's loss.
    let diff: f64 = rotated.data.iter().zip(&upright.data).map(|(a, b)| f64::from(a.abs_diff(*b))).sum::<f64>()
        / upright.data.len() as f64;
    assert!(diff < 6.0, "mean difference {diff}");
    // As MUG-V's reference loads it (PIL without exif_transpose): sideways.
    let sideways = read_image(&images.join("coffee_exif_orientation6.jpg"), false).unwrap();
    assert_eq!((sideways.width, sideways.height), (upright.height, upright.width));
}

//! Pillow-exact preprocessing against the goldens of the Python references (tests/data): CLIP's
//! bicubic resize, centre crop and normalisation (the aesthetic scorer's input) on two real
//! images, and MUG-V's reference-image resize-to-fill for every aspect ratio it offers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use stages::video::decode::{FrameFormat, Image, VideoReader};
use stages::video::pillow::{clip_crop, clip_pixel_values, reference_image_values, resize_bicubic, resize_to_fill};
use stages::video::pixel::Layout;

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(name)
}

/// The tensors of a safetensors file: shape and raw little-endian bytes (stages has no tensor
/// library, and the format is an 8-byte header length, a JSON header, then the data).
fn tensors(path: &Path) -> HashMap<String, (Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + len]).unwrap();
    let body = &bytes[8 + len..];
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"].as_array().unwrap().iter().map(|d| d.as_u64().unwrap() as usize).collect();
            let at = |i: usize| v["data_offsets"][i].as_u64().unwrap() as usize;
            (k.clone(), (shape, body[at(0)..at(1)].to_vec()))
        })
        .collect()
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()
}

/// An image file decoded to RGB through the project's decoder (FFmpeg reads PNG as one frame).
fn decode(path: &Path) -> Image {
    let mut reader = VideoReader::open(path, 1).unwrap();
    let mut image = None;
    reader
        .for_each_frame(FrameFormat::full(Layout::Rgb), |_, img| {
            image = Some(img.to_image());
            false
        })
        .unwrap();
    image.unwrap()
}

/// `image` has the HWC uint8 `(shape, bytes)` of a golden tensor.
fn assert_pixels(name: &str, image: &Image, (shape, bytes): &(Vec<usize>, Vec<u8>)) {
    assert_eq!(vec![image.height, image.width, 3], *shape, "{name}: shape");
    let differ = image.data.iter().zip(bytes).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{name}: {differ} of {} bytes differ", bytes.len());
}

#[test]
fn clip_preprocessing_matches_pillow_and_torchvision_exactly() {
    let golden = tensors(&data("aesthetic/case_preprocess.safetensors"));
    let chelsea = &golden["skimage_chelsea.image_u8_hwc"];
    let images = [
        ("mugv_sample", decode(&data("preprocess/sample.png")), (56, 99)),
        ("skimage_chelsea", Image { width: chelsea.0[1], height: chelsea.0[0], data: chelsea.1.clone() }, (84, 56)),
    ];
    for (name, image, (w, h)) in images {
        assert_pixels(
            &format!("{name} resized"),
            &resize_bicubic(image.view(), w, h),
            &golden[&format!("{name}.resized_u8_hwc_56")],
        );
        for size in [56, 224] {
            let key = format!("{name}.cropped_u8_hwc_{size}");
            assert_pixels(&key, &clip_crop(image.view(), size), &golden[&key]);
            let key = format!("{name}.pixel_values_{size}");
            assert_eq!(golden[&key].0, vec![3, size, size], "{key}");
            let want = f32s(&golden[&key].1);
            let got = clip_pixel_values(image.view(), size);
            let differ = got.iter().zip(&want).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
            assert_eq!(differ, 0, "{key}: {differ} of {} values differ", want.len());
        }
    }
}

#[test]
fn reference_image_fill_matches_mug_v_exactly() {
    let sample = decode(&data("preprocess/sample.png"));
    assert_eq!((sample.width, sample.height), (704, 1248));
    let golden = tensors(&data("preprocess/case_preprocess.safetensors"));
    for (ratio, (w, h)) in [("16x9", (720, 1280)), ("9x16", (1280, 720))] {
        let want = decode(&data(&format!("preprocess/crop_{ratio}.png")));
        let got = resize_to_fill(sample.view(), w, h);
        assert_pixels(&format!("crop_{ratio}"), &got, &(vec![want.height, want.width, 3], want.data));
        // The reference's normalised tensor at rows 100..116, columns 200..216.
        let values = reference_image_values(sample.view(), w, h);
        let patch: Vec<f32> = (0..3)
            .flat_map(|c| (100..116).flat_map(move |y| (200..216).map(move |x| (c * h + y) * w + x)))
            .map(|i| values[i])
            .collect();
        let want = f32s(&golden[&format!("vae_input_patch_{ratio}")].1);
        assert_eq!(patch.len(), want.len());
        assert!(patch.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "vae_input_patch_{ratio}");
    }
    // The other ratios through the reference's per-channel sums of the uint8 crop.
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(data("preprocess/preprocess.json")).unwrap()).unwrap();
    for (ratio, size) in doc["frame_sizes_720p"].as_object().unwrap() {
        let (h, w) = (size[0].as_u64().unwrap() as usize, size[1].as_u64().unwrap() as usize);
        let crop = resize_to_fill(sample.view(), w, h);
        let mut sums = [0u64; 3];
        crop.data.chunks_exact(3).for_each(|p| (0..3).for_each(|c| sums[c] += u64::from(p[c])));
        let want: Vec<u64> =
            doc["checks"][ratio]["u8_channel_sums"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(sums.to_vec(), want, "{ratio}: channel sums");
    }
}

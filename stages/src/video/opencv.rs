//! Bit-exact re-implementations of the two OpenCV operations PySceneDetect's detectors rest on:
//! 8-bit `resize(INTER_LINEAR)` and 8-bit `cvtColor(BGR2HSV)`. Matching them byte for byte is what
//! makes our cut lists equal PySceneDetect's; the rules were checked against OpenCV 4.14 and 5.0
//! (every colour for HSV, many frame sizes for the resize).

use super::decode::{Image, ImageRef};

/// Fixed-point scale of the interpolation weights.
const COEF_SCALE: f32 = 2048.0;

/// Round half to even, as `cvRound` does.
fn round_even(x: f32) -> i32 {
    x.round_ties_even() as i32
}

/// Source index and weights (w0, w1) of each output position along one axis.
fn axis_coefficients(src: usize, dst: usize) -> Vec<(usize, i32, i32)> {
    let scale = 1.0 / (dst as f64 / src as f64);
    (0..dst)
        .map(|d| {
            let mut f = ((d as f64 + 0.5) * scale - 0.5) as f32;
            let mut s = f.floor() as i64;
            f -= s as f32;
            if s < 0 {
                s = 0;
                f = 0.0;
            }
            if s >= src as i64 - 1 {
                s = src as i64 - 1;
                f = 0.0;
            }
            (s as usize, round_even((1.0 - f) * COEF_SCALE), round_even(f * COEF_SCALE))
        })
        .collect()
}

/// `cv2.resize(img, (width, height), interpolation=INTER_LINEAR)` on a 3-channel 8-bit image.
pub fn resize_linear(img: ImageRef<'_>, width: usize, height: usize) -> Image {
    let (sw, sh) = (img.width, img.height);
    let mut out = vec![0u8; width * height * 3];
    // Exactly half size in both directions: OpenCV takes its INTER_AREA fast path.
    if sw == 2 * width && sh == 2 * height {
        for y in 0..height {
            for x in 0..width {
                for c in 0..3 {
                    let p = |xx: usize, yy: usize| u32::from(img.row(yy)[3 * xx + c]);
                    let sum = p(2 * x, 2 * y) + p(2 * x + 1, 2 * y) + p(2 * x, 2 * y + 1) + p(2 * x + 1, 2 * y + 1);
                    out[3 * (y * width + x) + c] = ((sum + 2) >> 2) as u8;
                }
            }
        }
        return Image { width, height, data: out };
    }
    let xs = axis_coefficients(sw, width);
    let ys = axis_coefficients(sh, height);
    // Horizontal pass of one source row into `t`: exact integers.
    let row = |y: usize, t: &mut Vec<i32>| {
        let line = img.row(y);
        t.resize(3 * width, 0);
        for (tx, &(s, a0, a1)) in t.chunks_exact_mut(3).zip(&xs) {
            if s + 1 < sw {
                let p = &line[3 * s..3 * s + 6];
                tx[0] = i32::from(p[0]) * a0 + i32::from(p[3]) * a1;
                tx[1] = i32::from(p[1]) * a0 + i32::from(p[4]) * a1;
                tx[2] = i32::from(p[2]) * a0 + i32::from(p[5]) * a1;
            } else {
                let p = &line[3 * s..3 * s + 3];
                for c in 0..3 {
                    tx[c] = i32::from(p[c]) * COEF_SCALE as i32;
                }
            }
        }
    };
    let (mut t0, mut t1) = (Vec::with_capacity(3 * width), Vec::with_capacity(3 * width));
    let mut cached: Option<(usize, bool)> = None;
    for (y, &(sy, b0, b1)) in ys.iter().enumerate() {
        // A zero weight contributes exactly nothing, so its row need not be computed.
        let second = b1 != 0;
        if cached != Some((sy, second)) {
            row(sy, &mut t0);
            if second {
                row((sy + 1).min(sh - 1), &mut t1);
            }
            cached = Some((sy, second));
        }
        let dst = &mut out[3 * y * width..3 * (y + 1) * width];
        // OpenCV's SIMD vertical pass (used for every element): 16-bit intermediates.
        let tap = |t: i32, b: i32| ((t >> 4).clamp(i16::MIN as i32, i16::MAX as i32) * b) >> 16;
        if second {
            for ((d, &p), &q) in dst.iter_mut().zip(&t0).zip(&t1) {
                *d = ((tap(p, b0) + tap(q, b1) + 2) >> 2).clamp(0, 255) as u8;
            }
        } else {
            for (d, &p) in dst.iter_mut().zip(&t0) {
                *d = ((tap(p, b0) + 2) >> 2).clamp(0, 255) as u8;
            }
        }
    }
    Image { width, height, data: out }
}

/// Division tables of OpenCV's 8-bit HSV conversion (12-bit fixed point).
struct HsvTables {
    sdiv: [i32; 256],
    hdiv: [i32; 256],
}

fn hsv_tables() -> &'static HsvTables {
    static TABLES: std::sync::OnceLock<HsvTables> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let mut t = HsvTables { sdiv: [0; 256], hdiv: [0; 256] };
        for i in 1..256 {
            t.sdiv[i] = (1044480.0f64 / i as f64).round_ties_even() as i32;
            t.hdiv[i] = (737280.0f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        t
    })
}

/// `cv2.cvtColor(img, COLOR_BGR2HSV)` as three planes H (0..179), S, V.
pub fn bgr_to_hsv_planes(img: ImageRef<'_>) -> [Vec<u8>; 3] {
    let t = hsv_tables();
    let n = img.width * img.height;
    let (mut hp, mut sp, mut vp) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
    let pixels = (0..img.height).flat_map(|y| img.row(y).chunks_exact(3));
    for (((px, ho), so), vo) in pixels.zip(&mut hp).zip(&mut sp).zip(&mut vp) {
        let (b, g, r) = (i32::from(px[0]), i32::from(px[1]), i32::from(px[2]));
        let v = b.max(g).max(r);
        let d = v - b.min(g).min(r);
        let s = (d * t.sdiv[v as usize] + 2048) >> 12;
        let h = if v == r {
            g - b
        } else if v == g {
            b - r + 2 * d
        } else {
            r - g + 4 * d
        };
        let mut h = (h * t.hdiv[d as usize] + 2048) >> 12;
        if h < 0 {
            h += 180;
        }
        (*ho, *so, *vo) = (h as u8, s as u8, v as u8);
    }
    [hp, sp, vp]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hsv(b: u8, g: u8, r: u8) -> (u8, u8, u8) {
        let p = bgr_to_hsv_planes(Image { width: 1, height: 1, data: vec![b, g, r] }.view());
        (p[0][0], p[1][0], p[2][0])
    }

    #[test]
    fn hsv_matches_opencv_on_reference_colours() {
        // Values printed by cv2.cvtColor(np.uint8([[[b, g, r]]]), cv2.COLOR_BGR2HSV).
        assert_eq!(hsv(0, 0, 255), (0, 255, 255));
        assert_eq!(hsv(0, 255, 0), (60, 255, 255));
        assert_eq!(hsv(255, 0, 0), (120, 255, 255));
        assert_eq!(hsv(0, 0, 0), (0, 0, 0));
        assert_eq!(hsv(128, 128, 128), (0, 0, 128));
        assert_eq!(hsv(255, 0, 255), (150, 255, 255));
    }

    #[test]
    fn resize_keeps_flat_images_flat_and_halves_by_averaging() {
        let flat = Image { width: 7, height: 5, data: vec![77; 7 * 5 * 3] };
        assert!(resize_linear(flat.view(), 3, 2).data.iter().all(|&v| v == 77));
        let img = Image { width: 2, height: 2, data: vec![0, 0, 0, 10, 10, 10, 20, 20, 20, 31, 31, 31] };
        assert_eq!(resize_linear(img.view(), 1, 1).data, vec![15, 15, 15], "(0 + 10 + 20 + 31 + 2) >> 2");
    }
}

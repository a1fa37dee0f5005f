//! Bit-exact re-implementations of the Pillow-based preprocessing the models' references run:
//! 8-bit `Image.resize(..., BICUBIC)`, CLIP's resize/centre-crop/normalise transform (the
//! aesthetic scorer's input) and MUG-V's reference-image resize-to-fill (the VAE's input).
//! Matching Pillow byte for byte keeps scores and latents equal to the reference's.

use super::decode::{Image, ImageRef};

/// Fractional bits of Pillow's fixed-point weights: 32 bits less 8 for the pixel value and 2 of
/// headroom for the weights' overshoot.
const PRECISION_BITS: u32 = 32 - 8 - 2;

/// CLIP's per-channel normalisation mean (R, G, B).
pub const CLIP_MEAN: [f32; 3] = [0.48145466, 0.4578275, 0.40821073];

/// CLIP's per-channel normalisation standard deviation (R, G, B).
// The digits as OpenAI publishes them; f32 rounds them exactly as `torch.as_tensor` does.
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.26862954, 0.26130258, 0.27577711];

/// A resampling filter as Pillow (and torchvision's antialiased tensor resize) define it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filter {
    /// Triangle kernel, support 1 (`Image.BILINEAR`).
    Bilinear,
    /// Cubic convolution with a = -0.5, support 2 (`Image.BICUBIC`).
    Bicubic,
}

impl Filter {
    /// Half-width of the kernel at scale 1.
    fn support(self) -> f64 {
        match self {
            Filter::Bilinear => 1.0,
            Filter::Bicubic => 2.0,
        }
    }

    /// The kernel's weight at distance `x`.
    fn weight(self, x: f64) -> f64 {
        const A: f64 = -0.5;
        let x = x.abs();
        match self {
            Filter::Bilinear => (1.0 - x).max(0.0),
            Filter::Bicubic if x < 1.0 => ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0,
            Filter::Bicubic if x < 2.0 => (((x - 5.0) * x + 8.0) * x - 4.0) * A,
            Filter::Bicubic => 0.0,
        }
    }
}

/// For each of `dst` output positions along an axis of `src` pixels: the first source pixel and
/// the weights (summing to 1) of it and the following ones. When shrinking, the kernel is
/// stretched by the scale factor (antialiasing).
fn axis_weights(src: usize, dst: usize, filter: Filter) -> Vec<(usize, Vec<f64>)> {
    let scale = src as f64 / dst as f64;
    let filter_scale = scale.max(1.0);
    let support = filter.support() * filter_scale;
    // Multiplied by the reciprocal, as Pillow does: dividing may differ in the last bit.
    let inv_filter_scale = 1.0 / filter_scale;
    (0..dst)
        .map(|d| {
            let center = (d as f64 + 0.5) * scale;
            // `as` truncates toward zero, as C's int conversion of these bounds does.
            let first = ((center - support + 0.5) as i64).max(0) as usize;
            let end = ((center + support + 0.5) as i64).min(src as i64) as usize;
            let w: Vec<f64> =
                (first..end).map(|x| filter.weight((x as f64 - center + 0.5) * inv_filter_scale)).collect();
            let sum: f64 = w.iter().sum();
            let norm = if sum == 0.0 { 1.0 } else { sum };
            (first, w.iter().map(|v| v / norm).collect())
        })
        .collect()
}

/// [`axis_weights`] in Pillow's fixed point.
fn axis_taps(src: usize, dst: usize, filter: Filter) -> Vec<(usize, Vec<i32>)> {
    let one = f64::from(1u32 << PRECISION_BITS);
    axis_weights(src, dst, filter)
        .into_iter()
        // Round half away from zero to fixed point.
        .map(|(first, w)| (first, w.iter().map(|&v| (v * one + 0.5f64.copysign(v)) as i32).collect()))
        .collect()
}

/// torchvision's antialiased `Resize` of a float image plane (`height x width` values, row-major)
/// to `dst_width x dst_height`: the same separable kernels as Pillow, in float, horizontal pass
/// first, no rounding and no clamping.
pub fn resize_plane(
    plane: &[f32],
    (width, height): (usize, usize),
    (dst_width, dst_height): (usize, usize),
    filter: Filter,
) -> Vec<f32> {
    let xs = axis_weights(width, dst_width, filter);
    let mut horizontal = Vec::with_capacity(dst_width * height);
    for row in plane.chunks_exact(width).take(height) {
        horizontal.extend(
            xs.iter().map(|(first, w)| {
                w.iter().enumerate().map(|(i, &v)| f64::from(row[first + i]) * v).sum::<f64>() as f32
            }),
        );
    }
    let mut out = Vec::with_capacity(dst_width * dst_height);
    for (first, w) in axis_weights(height, dst_height, filter) {
        out.extend((0..dst_width).map(|x| {
            w.iter().enumerate().map(|(i, &v)| f64::from(horizontal[(first + i) * dst_width + x]) * v).sum::<f64>()
                as f32
        }));
    }
    out
}

/// One output value: `src[base + i * step]` weighted by `taps[i]`, rounded, then clamped to 0..=255.
fn convolve(src: &[u8], base: usize, step: usize, taps: &[i32]) -> u8 {
    let mut acc = 1i32 << (PRECISION_BITS - 1);
    for (i, &w) in taps.iter().enumerate() {
        acc += i32::from(src[base + i * step]) * w;
    }
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Pillow's `Image.resize((width, height), Image.BICUBIC)` on a packed 3-channel 8-bit image.
pub fn resize_bicubic(img: ImageRef<'_>, width: usize, height: usize) -> Image {
    resize(img, width, height, Filter::Bicubic)
}

/// Pillow's `Image.resize((width, height), filter)` on a packed 3-channel 8-bit image: a
/// horizontal pass then a vertical pass (each skipped when its size does not change), each
/// rounded to 8 bits.
pub fn resize(img: ImageRef<'_>, width: usize, height: usize, filter: Filter) -> Image {
    let horizontal;
    let src = if width == img.width {
        img
    } else {
        let xs = axis_taps(img.width, width, filter);
        let mut data = Vec::with_capacity(3 * width * img.height);
        for y in 0..img.height {
            let row = img.row(y);
            for (first, taps) in &xs {
                data.extend((0..3).map(|c| convolve(row, 3 * first + c, 3, taps)));
            }
        }
        horizontal = Image { width, height: img.height, data };
        horizontal.view()
    };
    if height == img.height {
        return src.to_image();
    }
    let mut data = Vec::with_capacity(3 * width * height);
    for (first, taps) in axis_taps(img.height, height, filter) {
        data.extend((0..3 * width).map(|j| convolve(src.data, first * src.stride + j, src.stride, &taps)));
    }
    Image { width, height, data }
}

/// Python's `round` of a non-negative value: halves go to the even neighbour.
fn round_half_even(x: f64) -> usize {
    x.round_ties_even() as usize
}

/// Top-left corner of the centred `width x height` window of an image, offsets rounded as
/// torchvision's `CenterCrop` and MUG-V round them.
fn centred(img: &Image, width: usize, height: usize) -> (usize, usize) {
    (round_half_even((img.width - width) as f64 / 2.0), round_half_even((img.height - height) as f64 / 2.0))
}

/// CLIP's geometric transform (`Resize(size, BICUBIC)` then `CenterCrop(size)` on a PIL image):
/// the shorter side resized to `size`, the longer to `size * long / short` truncated, then the
/// centred `size x size` window.
pub fn clip_crop(img: ImageRef<'_>, size: usize) -> Image {
    let (w, h) = (img.width, img.height);
    let (rw, rh) = if w <= h { (size, size * h / w) } else { (size * w / h, size) };
    let resized = resize_bicubic(img, rw, rh);
    let (x, y) = centred(&resized, size, size);
    resized.cropped(x, y, size, size)
}

/// What CLIP's image tower eats: [`clip_crop`] normalised with [`CLIP_MEAN`] and [`CLIP_STD`],
/// `3 x size x size` values in CHW order.
pub fn clip_pixel_values(img: ImageRef<'_>, size: usize) -> Vec<f32> {
    normalized_chw(&clip_crop(img, size), CLIP_MEAN, CLIP_STD)
}

/// MUG-V's reference-image resize-to-fill (`mug_v/utils.py`): scaled by the larger of the height
/// and width ratios so it covers `width x height`, the other side rounded half to even, Pillow
/// bicubic, then the centred window.
pub fn resize_to_fill(img: ImageRef<'_>, width: usize, height: usize) -> Image {
    resize_to_fill_with(img, width, height, Filter::Bicubic)
}

/// [`resize_to_fill`] with another filter (the MUG-V enhancer's video loader uses bilinear).
pub fn resize_to_fill_with(img: ImageRef<'_>, width: usize, height: usize, filter: Filter) -> Image {
    let (w, h) = (img.width as f64, img.height as f64);
    let (rh, rw) = (height as f64 / h, width as f64 / w);
    let (nw, nh) = if rh > rw { (round_half_even(w * rh), height) } else { (width, round_half_even(h * rw)) };
    let resized = resize(img, nw, nh, filter);
    let (x, y) = centred(&resized, width, height);
    resized.cropped(x, y, width, height)
}

/// What MUG-V's VAE encodes for a reference image: [`resize_to_fill`] mapped to [-1, 1]
/// (`(u / 255 - 0.5) / 0.5`), `3 x height x width` values in CHW order.
pub fn reference_image_values(img: ImageRef<'_>, width: usize, height: usize) -> Vec<f32> {
    normalized_chw(&resize_to_fill(img, width, height), [0.5; 3], [0.5; 3])
}

/// torchvision's `ToTensor` then `Normalize(mean, std)` in f32: `(u / 255 - mean) / std` per
/// channel, channel planes one after the other (CHW).
pub fn normalized_chw(img: &Image, mean: [f32; 3], std: [f32; 3]) -> Vec<f32> {
    (0..3)
        .flat_map(|c| img.data.iter().skip(c).step_by(3).map(move |&u| (f32::from(u) / 255.0 - mean[c]) / std[c]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taps_sum_to_one_in_fixed_point_up_to_rounding() {
        for (src, dst) in [(451, 84), (300, 56), (704, 722), (1248, 2269), (10, 3), (3, 10)] {
            for (first, taps) in axis_taps(src, dst, Filter::Bicubic) {
                let sum: i32 = taps.iter().sum();
                assert!((sum - (1 << PRECISION_BITS)).abs() <= taps.len() as i32, "{src}->{dst}: {sum}");
                assert!(first + taps.len() <= src);
            }
        }
    }

    #[test]
    fn a_flat_image_stays_flat() {
        let img = Image { width: 7, height: 5, data: [10u8, 128, 250].repeat(35) };
        let out = resize_bicubic(img.view(), 3, 11);
        assert_eq!((out.width, out.height), (3, 11));
        assert_eq!(out.data, [10u8, 128, 250].repeat(33));
        let out = resize(img.view(), 9, 4, Filter::Bilinear);
        assert_eq!(out.data, [10u8, 128, 250].repeat(36));
        let plane = resize_plane(&[-0.25; 35], (7, 5), (3, 2), Filter::Bicubic);
        assert!(plane.iter().all(|v| (v + 0.25).abs() < 1e-6), "{plane:?}");
    }

    #[test]
    fn bilinear_halving_averages_pixel_pairs() {
        // Shrinking by 2 stretches the triangle over 4 pixels: weights 1/8, 3/8, 3/8, 1/8.
        let plane: Vec<f32> = (0..8).map(|x| x as f32).collect();
        let out = resize_plane(&plane, (8, 1), (4, 1), Filter::Bilinear);
        // The first output's window is clipped at the edge and renormalised.
        assert!((out[1] - 2.5).abs() < 1e-6 && (out[2] - 4.5).abs() < 1e-6, "{out:?}");
    }

    #[test]
    fn offsets_round_half_to_even() {
        assert_eq!(round_half_even(21.5), 22);
        assert_eq!(round_half_even(86.5), 86);
        assert_eq!(round_half_even(774.5), 774);
        assert_eq!(round_half_even(183.5), 184);
    }
}

//! Bit-exact re-implementations of the two OpenCV operations PySceneDetect's detectors rest on:
//! 8-bit `resize(INTER_LINEAR)` and 8-bit `cvtColor(BGR2HSV)`. Matching them byte for byte is what
//! makes our cut lists equal PySceneDetect's; the rules were checked against OpenCV 4.14 and 5.0
//! (every colour for HSV, many frame sizes for the resize).

use super::decode::{ImageRef, PixelsRead};

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

/// Per output position along one axis: the first of the two adjacent source positions it weighs,
/// in memory order, and their two weights, for an axis stored forwards or `reversed` (an axis of a
/// rotated frame). The pair always lies inside the source (a one-position source aside): at the
/// far edge, where the second weight is 0, it is shifted inwards with the weights swapped, which
/// gives the same sum.
fn memory_pairs(src: usize, dst: usize, reversed: bool) -> Vec<(usize, i32, i32)> {
    let pair = |(s, a0, a1): (usize, i32, i32)| match (src, reversed, s + 1 < src) {
        (1, _, _) => (0, a0, a1),
        (_, false, true) => (s, a0, a1),
        (_, false, false) => (s - 1, a1, a0),
        // Reversed, s is stored at src - 1 - s and s + 1 just before it.
        (_, true, true) => (src - 2 - s, a1, a0),
        (_, true, false) => (0, a0, a1),
    };
    axis_coefficients(src, dst).into_iter().map(pair).collect()
}

/// OpenCV's SIMD vertical pass on one element: the high halves of the 16-bit products of the two
/// horizontal-pass values and their weights, rounded. Taps are at most 32655 * 2048 >> 16 =
/// 1020, so the 16-bit sums cannot wrap (wrapping operations spare the overflow checks of debug
/// builds, which would stop vectorisation).
#[inline(always)]
fn vertical_pass(t0: i16, b0: i32, t1: i16, b1: i32) -> u8 {
    let a = (i32::from(t0).wrapping_mul(b0) >> 16) as i16;
    let b = (i32::from(t1).wrapping_mul(b1) >> 16) as i16;
    (a.wrapping_add(b).wrapping_add(2) >> 2).clamp(0, 255) as u8
}

/// The pixels of a `src_width x src_height` image that [`resize_linear`] to `width x height`
/// depends on: the rows and columns with a non-zero weight (it may read others, times zero).
/// When every output pixel weighs one source pixel alone (an odd whole shrink on both axes, such
/// as 1280x720 to 256x144), the resize is exactly that grid of pixels, which is then asked for
/// packed ([`PixelsRead::packed`]): the packed image is the resized one.
pub fn resize_reads(src_width: usize, src_height: usize, width: usize, height: usize) -> PixelsRead {
    if src_width == 2 * width && src_height == 2 * height {
        return PixelsRead { rows: vec![true; src_height], columns: vec![true; src_width], packed: false };
    }
    // Per source position whether it is read, and whether each output takes one of its own.
    let axis = |src: usize, dst: usize| {
        let (mut read, mut sampled) = (vec![false; src], true);
        for (s, w0, w1) in axis_coefficients(src, dst) {
            // A weight of 2048 (1.0) passes a pixel through both passes unchanged: (p * 2048
            // >> 4) * 2048 >> 16 = 4p, and (4p + 2) >> 2 = p.
            sampled &= !read[s] && (w0, w1) == (COEF_SCALE as i32, 0);
            read[s] = true;
            if w1 != 0 && s + 1 < src {
                read[s + 1] = true;
            }
        }
        (read, sampled)
    };
    let ((rows, down), (columns, across)) = (axis(src_height, height), axis(src_width, width));
    PixelsRead { rows, columns, packed: down && across }
}

/// A 3-channel 8-bit image stored one plane per channel (in the source's channel order): the
/// layout the resize writes and the HSV conversion reads, because per-channel loops over
/// contiguous bytes vectorise where loops over packed pixels do not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planar {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// One `width * height` plane per channel, row-major.
    pub planes: [Vec<u8>; 3],
}

impl Planar {
    /// The planes of a packed image.
    #[inline(always)]
    pub fn from_packed(img: ImageRef<'_>) -> Planar {
        let (w, n) = (img.width, img.width * img.height);
        let [mut p0, mut p1, mut p2] = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
        for y in 0..img.height {
            let rows = (&mut p0[y * w..(y + 1) * w], &mut p1[y * w..(y + 1) * w], &mut p2[y * w..(y + 1) * w]);
            for (((px, a), b), c) in img.row(y).chunks_exact(3).zip(rows.0).zip(rows.1).zip(rows.2) {
                (*a, *b, *c) = (px[0], px[1], px[2]);
            }
        }
        Planar { width: img.width, height: img.height, planes: [p0, p1, p2] }
    }
}

/// `cv2.resize(img, (width, height), interpolation=INTER_LINEAR)` on a 3-channel 8-bit image,
/// written as planes.
///
/// Written for speed as well as exactness (it runs on every frame shot detection sees): each
/// source row's horizontal pass is computed once and kept while the next output row needs it, and
/// the vertical pass works on 16-bit lanes as OpenCV's SIMD code does, in a loop the compiler
/// vectorises. Inline so that callers compiled for wider SIMD (see [`super::pixel::with_simd`]) get it too;
/// its per-pixel loops call no closure and no non-inline function, which would be compiled for the
/// SSE2 baseline instead.
#[inline(always)]
pub fn resize_linear(img: ImageRef<'_>, width: usize, height: usize) -> Planar {
    let (sw, sh, n) = (img.width, img.height, width * height);
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    // Exactly half size in both directions: OpenCV takes its INTER_AREA fast path.
    if sw == 2 * width && sh == 2 * height {
        for y in 0..height {
            let (r0, r1) = (img.row(2 * y), img.row(2 * y + 1));
            for (c, plane) in planes.iter_mut().enumerate() {
                for (x, d) in plane[y * width..(y + 1) * width].iter_mut().enumerate() {
                    let (i, j) = (6 * x + c, 6 * x + c + 3);
                    let sum = u32::from(r0[i]) + u32::from(r0[j]) + u32::from(r1[i]) + u32::from(r1[j]);
                    *d = ((sum + 2) >> 2) as u8;
                }
            }
        }
        return Planar { width, height, planes };
    }
    let taps = HorizontalTaps::new(sw, width);
    let mut cache = RowCache::new(width);
    for (y, (sy, b0, b1)) in axis_coefficients(sh, height).into_iter().enumerate() {
        // A zero weight contributes exactly nothing, so its row need not be computed.
        let sy1 = if b1 != 0 { (sy + 1).min(sh - 1) } else { sy };
        let i0 = cache.row(sy, sy1, img, &taps);
        let i1 = cache.row(sy1, sy, img, &taps);
        let (t0, t1) = (&cache.rows[i0].1, &cache.rows[i1].1);
        let (b0, b1) = (i32::from(b0 as i16), i32::from(b1 as i16));
        for (c, plane) in planes.iter_mut().enumerate() {
            let dst = &mut plane[y * width..(y + 1) * width];
            let (t0, t1) = (&t0[c * width..(c + 1) * width], &t1[c * width..(c + 1) * width]);
            for i in 0..width {
                dst[i] = vertical_pass(t0[i], b0, t1[i], b1);
            }
        }
    }
    Planar { width, height, planes }
}

/// [`resize_linear`] of a frame stored a quarter turn from how it is displayed (`clockwise` 90
/// or 270), straight into the displayed `width x height`: the same arithmetic element by element,
/// traversed along the stored axes, so no rotated copy of the frame is made. OpenCV's horizontal
/// pass runs along the displayed rows, which are stored columns: it combines two stored rows
/// element by element (a loop that vectorises); its vertical pass then picks stored columns.
/// Not for an exact half size, which OpenCV resizes by area (rotate and use [`resize_linear`]).
#[inline(always)]
pub fn resize_linear_quarter(img: ImageRef<'_>, clockwise: i64, width: usize, height: usize) -> Planar {
    // 90: displayed (x, y) is stored (column y, row h - 1 - x); 270: (column w - 1 - y, row x).
    let ninety = clockwise.rem_euclid(360) == 90;
    let across = memory_pairs(img.height, width, ninety);
    let down = memory_pairs(img.width, height, !ninety);
    let n = width * height;
    let mut planes = [vec![0u8; n], vec![0u8; n], vec![0u8; n]];
    // One pixel more than a stored row, for a one-column frame's pairs (its weight there is 0).
    let mut t = vec![0i16; 3 * img.width + 3];
    for (x, &(m, a0, a1)) in across.iter().enumerate() {
        let (r0, r1) = (img.row(m), img.row((m + 1).min(img.height - 1)));
        // The exact sum is at most 255 * 2049: after the shift it fits an i16 (as in
        // HorizontalTaps::apply, which this is along the other stored axis).
        for ((t, &p), &q) in t.iter_mut().zip(r0).zip(r1) {
            *t = (i32::from(p).wrapping_mul(a0).wrapping_add(i32::from(q).wrapping_mul(a1)) >> 4) as i16;
        }
        for (y, &(k, b0, b1)) in down.iter().enumerate() {
            for (c, plane) in planes.iter_mut().enumerate() {
                plane[y * width + x] = vertical_pass(t[3 * k + c], b0, t[3 * k + 3 + c], b1);
            }
        }
    }
    Planar { width, height, planes }
}

/// The horizontal passes of the last two source rows (consecutive output rows share rows), and
/// the scratch the pass gathers source pixels into.
struct RowCache {
    rows: [(usize, Vec<i16>); 2],
    gathered: (Vec<u32>, Vec<u32>),
}

impl RowCache {
    #[inline(always)]
    fn new(width: usize) -> Self {
        let pass = || (usize::MAX, vec![0i16; 3 * width]);
        RowCache { rows: [pass(), pass()], gathered: (vec![0; width], vec![0; width]) }
    }

    /// The slot holding source row `y`'s horizontal pass, computed into the slot not holding row
    /// `keep` when it is not cached.
    #[inline(always)]
    fn row(&mut self, y: usize, keep: usize, img: ImageRef<'_>, taps: &HorizontalTaps) -> usize {
        if let Some(i) = self.rows.iter().position(|c| c.0 == y) {
            return i;
        }
        let i = usize::from(self.rows[0].0 == keep);
        taps.apply(img.row(y), &mut self.gathered, &mut self.rows[i].1);
        self.rows[i].0 = y;
        i
    }
}

/// The horizontal resize pass, set up once per frame: per output pixel, the byte offset of its
/// left source pixel (the right one follows it, see [`memory_pairs`]) and the two weights.
struct HorizontalTaps {
    offsets: Vec<usize>,
    left: Vec<i32>,
    right: Vec<i32>,
}

impl HorizontalTaps {
    #[inline(always)]
    fn new(src_width: usize, width: usize) -> Self {
        let mut taps = HorizontalTaps { offsets: Vec::new(), left: Vec::new(), right: Vec::new() };
        for (s, a0, a1) in memory_pairs(src_width, width, false) {
            taps.offsets.push(3 * s);
            taps.left.push(a0);
            taps.right.push(a1);
        }
        taps
    }

    /// One source row's pass into `t` (channel-planar: `width` values per channel), already
    /// shifted right by 4 as OpenCV's vertical pass takes it. Each output pixel's source pair is
    /// first gathered as two 4-byte words (bytes 0-3 and 2-5 of the pair) so that the arithmetic
    /// runs over contiguous words, which vectorises. The exact sum is at most 255 * 2049, so after
    /// the shift it fits an i16 and OpenCV's saturation to 16 bits never applies; the arithmetic
    /// cannot wrap (wrapping operations keep debug builds' overflow checks out of the loop).
    #[inline(always)]
    fn apply(&self, line: &[u8], gathered: &mut (Vec<u32>, Vec<u32>), t: &mut [i16]) {
        // A one-pixel-wide row is padded so that every pair can be read (its right weight is 0).
        let mut padded = [0u8; 6];
        let line = if line.len() == 3 {
            padded[..3].copy_from_slice(line);
            &padded[..]
        } else {
            line
        };
        let w = self.offsets.len();
        let (lo, hi) = (&mut gathered.0[..w], &mut gathered.1[..w]);
        for ((&o, l), h) in self.offsets.iter().zip(lo.iter_mut()).zip(hi.iter_mut()) {
            let pair: &[u8; 6] = line[o..o + 6].try_into().expect("six bytes");
            let (first, last) = (pair.first_chunk::<4>(), pair.last_chunk::<4>());
            (*l, *h) =
                (u32::from_le_bytes(*first.expect("four of six")), u32::from_le_bytes(*last.expect("four of six")));
        }
        let (a0, a1) = (&self.left[..w], &self.right[..w]);
        for (c, tc) in t.chunks_exact_mut(w).enumerate() {
            // Channel c of the left pixel is byte c of `lo`; of the right pixel, byte c + 1 of `hi`.
            let (sl, sh) = (8 * c as u32, 8 * c as u32 + 8);
            for i in 0..w {
                let l = ((lo[i] >> sl) & 0xff) as i32;
                let r = ((hi[i] >> sh) & 0xff) as i32;
                tc[i] = (l.wrapping_mul(a0[i]).wrapping_add(r.wrapping_mul(a1[i])) >> 4) as i16;
            }
        }
    }
}

/// OpenCV's 8-bit HSV division tables, `sdiv[v] = round(255 * 4096 / v)` and
/// `hdiv[d] = round(180 * 4096 / (6 * d))`, computed per pixel instead of looked up: an f32
/// division gives the same integers as OpenCV's f64 table for every 8-bit divisor (a unit test
/// checks all of them), and unlike a table lookup it vectorises. A zero divisor only meets a
/// zero numerator, so it is taken as 1.
#[inline(always)]
fn hsv_divisors(v: u8, d: u8) -> (i32, i32) {
    // Adding 1.5 * 2^23 rounds a value below 2^22 to an integer, ties to even, in the low
    // mantissa bits: `round_ties_even() as i32` without the saturating conversion, which does
    // not vectorise.
    const MAGIC: f32 = 12582912.0;
    let round = |x: f32| ((x + MAGIC).to_bits() as i32).wrapping_sub(MAGIC.to_bits() as i32);
    let (v, d) = (f32::from(v.max(1)), f32::from(d.max(1)));
    (round(1044480.0 / v), round(122880.0 / d))
}

/// `cv2.cvtColor(img, COLOR_BGR2HSV)` on planes B, G, R, as three planes H (0..179), S, V.
/// Branch-free per pixel, and inline for the same reason as [`resize_linear`].
#[inline(always)]
pub fn bgr_to_hsv_planes(img: &Planar) -> [Vec<u8>; 3] {
    let n = img.width * img.height;
    let (mut hp, mut sp, mut vp) = (vec![0u8; n], vec![0u8; n], vec![0u8; n]);
    let [bp, gp, rp] = &img.planes;
    let pixels = bp[..n].iter().zip(&gp[..n]).zip(&rp[..n]);
    for ((((&b, &g), &r), ho), (so, vo)) in pixels.zip(&mut hp).zip(sp.iter_mut().zip(&mut vp)) {
        let (v, min) = (b.max(g).max(r), b.min(g).min(r));
        let d = v.wrapping_sub(min);
        let (sdiv, hdiv) = hsv_divisors(v, d);
        // Bounded (|h| <= 5 * 255, divisors <= 2^20): wrapping operations only keep debug
        // builds' overflow checks out of the loop.
        let s = i32::from(d).wrapping_mul(sdiv).wrapping_add(2048) >> 12;
        let (bi, gi, ri, di) = (i32::from(b), i32::from(g), i32::from(r), i32::from(d));
        let h = if v == r {
            gi.wrapping_sub(bi)
        } else if v == g {
            bi.wrapping_sub(ri).wrapping_add(di << 1)
        } else {
            ri.wrapping_sub(gi).wrapping_add(di << 2)
        };
        let h = h.wrapping_mul(hdiv).wrapping_add(2048) >> 12;
        let h = if h < 0 { h.wrapping_add(180) } else { h };
        (*ho, *so, *vo) = (h as u8, s as u8, v);
    }
    [hp, sp, vp]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::video::decode::Image;

    fn hsv(b: u8, g: u8, r: u8) -> (u8, u8, u8) {
        let p = bgr_to_hsv_planes(&Planar { width: 1, height: 1, planes: [vec![b], vec![g], vec![r]] });
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

    /// A `w x h` image of pseudo-random bytes, continuing the generator state `x`.
    fn noise(w: usize, h: usize, x: &mut u32) -> Image {
        let mut byte = || {
            *x = x.wrapping_mul(1664525).wrapping_add(1013904223);
            (*x >> 24) as u8
        };
        Image { width: w, height: h, data: (0..w * h * 3).map(|_| byte()).collect() }
    }

    #[test]
    fn quarter_turn_resize_equals_resizing_the_turned_frame() {
        let mut x = 7u32;
        for (w, h, dw, dh) in [(37, 64, 40, 11), (360, 640, 256, 144), (21, 1, 1, 8), (1, 9, 3, 1), (50, 30, 7, 49)] {
            let img = noise(w, h, &mut x);
            for clockwise in [90, 270] {
                let upright = img.clone().rotated(clockwise);
                let want = resize_linear(upright.view(), dw, dh);
                assert_eq!(resize_linear_quarter(img.view(), clockwise, dw, dh), want, "{w}x{h} turned {clockwise}");
            }
        }
    }

    #[test]
    fn a_packed_read_grid_is_the_resized_image() {
        let mut x = 11u32;
        for (w, h, dw, dh, packed) in [
            (1280, 720, 256, 144, true),
            (3840, 2160, 256, 144, true),
            (768, 432, 256, 144, true),
            (1280, 720, 128, 72, false),
            (1920, 1080, 256, 144, false),
            (640, 360, 320, 180, false),
            (720, 405, 256, 144, false),
        ] {
            let img = noise(w, h, &mut x);
            let read = resize_reads(w, h, dw, dh);
            assert_eq!(read.packed, packed, "{w}x{h} -> {dw}x{dh}");
            if packed {
                let (mut grid, view) = (Image { width: dw, height: dh, data: Vec::new() }, img.view());
                for y in (0..h).filter(|&y| read.rows[y]) {
                    let row = view.row(y);
                    (0..w)
                        .filter(|&x| read.columns[x])
                        .for_each(|x| grid.data.extend_from_slice(&row[3 * x..3 * x + 3]));
                }
                assert_eq!(Planar::from_packed(grid.view()), resize_linear(img.view(), dw, dh), "{w}x{h}");
            }
        }
    }

    #[test]
    fn hsv_divisors_equal_opencvs_tables() {
        for i in 1..=255u8 {
            let sdiv = (1044480.0f64 / f64::from(i)).round_ties_even() as i32;
            let hdiv = (737280.0f64 / (6.0 * f64::from(i))).round_ties_even() as i32;
            assert_eq!(hsv_divisors(i, i), (sdiv, hdiv), "divisor {i}");
        }
    }

    #[test]
    fn resize_keeps_flat_images_flat_and_halves_by_averaging() {
        let flat = Image { width: 7, height: 5, data: vec![77; 7 * 5 * 3] };
        assert!(resize_linear(flat.view(), 3, 2).planes.iter().flatten().all(|&v| v == 77));
        let img = Image { width: 2, height: 2, data: vec![0, 0, 0, 10, 10, 10, 20, 20, 20, 31, 31, 31] };
        assert_eq!(resize_linear(img.view(), 1, 1).planes, [[15], [15], [15]], "(0 + 10 + 20 + 31 + 2) >> 2");
    }
}

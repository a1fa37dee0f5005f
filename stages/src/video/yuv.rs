//! Bit-exact re-implementations of swscale's conversions of 8-bit YUV to packed BGR or RGB at
//! the same size, so that the decoder can convert only the pixels a consumer reads, in loops that
//! vectorise. Three of swscale's paths are reproduced element for element: the general path that
//! 4:4:4 input takes (identity filters, then its full-chroma per-pixel output, scalar C that
//! converts every row of every frame), the direct converter of 4:2:0 frames of even height (x86
//! SIMD in 16-bit lanes, which converts rows in pairs), and the general path that 4:2:0 frames of
//! odd height take to BGR (its bicubic vertical chroma filter and x86 MMX output in 16-bit lanes,
//! one row at a time). Each is checked against swscale itself before use
//! ([`YuvToRgb::matching_swscale`]), so an FFmpeg build that computes otherwise keeps swscale.

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::pixel::{with_simd, Layout};

/// swscale's integer YUV -> RGB coefficients for one colour matrix and range, as
/// `ff_yuv2rgb_c_init_tables` derives them (neutral brightness, contrast and saturation): the
/// luma offset as the general path's C output (9 fractional bits) and the x86 converters in 16-bit
/// lanes (3 fractional bits) subtract it, and the five multipliers with 13 fractional bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Coefficients {
    y_offset_general: i32,
    y_offset_direct: i16,
    y_coeff: i32,
    v2r: i32,
    v2g: i32,
    u2g: i32,
    u2b: i32,
}

/// swscale's `roundToInt16`: a 16.16 fixed-point value rounded to an integer, saturated to i16.
fn round_to_i16(f: i64) -> i32 {
    ((f + (1 << 15)) >> 16).clamp(-0x8000, 0x7fff) as i32
}

impl Coefficients {
    /// From a matrix as `sws_getCoefficients` gives it, `[crv, cbu, cgu, cgv]`, for limited- or
    /// full-range input.
    pub fn new(table: [i32; 4], full_range: bool) -> Coefficients {
        let [mut crv, mut cbu, mut cgu, mut cgv] = [table[0], table[1], -table[2], -table[3]].map(i64::from);
        let (mut cy, mut oy) = (1i64 << 16, 0i64);
        if full_range {
            // Integer division truncates towards zero, as in C.
            [crv, cbu, cgu, cgv] = [crv, cbu, cgu, cgv].map(|c| c * 224 / 255);
        } else {
            (cy, oy) = (cy * 255 / 219, 16 << 16);
        }
        Coefficients {
            y_offset_general: round_to_i16(oy << 9),
            y_offset_direct: round_to_i16(oy * 8) as i16,
            y_coeff: round_to_i16(cy << 13),
            v2r: round_to_i16(crv << 13),
            v2g: round_to_i16(cgv << 13),
            u2g: round_to_i16(cgu << 13),
            u2b: round_to_i16(cbu << 13),
        }
    }
}

/// A conversion of 8-bit YUV frames to packed BGR or RGB at the same size that gives swscale's
/// bytes, for the three cases whose swscale paths are reproduced here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YuvToRgb {
    /// 4:4:4 through swscale's general path.
    Full444(Coefficients),
    /// 4:2:0 of even height through swscale's direct converter (x86 SIMD).
    Direct420(Coefficients),
    /// 4:2:0 of odd height to BGR through swscale's general path (x86 MMX output), for every
    /// row but the last two ([`YuvToRgb::own_rows`]), which swscale converts with its C
    /// functions and are left to it.
    General420(Coefficients, ChromaFilter),
}

/// swscale's vertical chroma filter for 4:2:0 input of odd height to packed RGB, as its
/// `initFilter` builds it for x86 (taps aligned to pairs): the chroma rows interpolated to every
/// output row with its default bicubic (B = 0, C = 0.6), in 12-bit fixed point.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChromaFilter {
    /// Taps per output row.
    size: usize,
    /// The first chroma row of each output row's taps.
    first: Vec<usize>,
    /// `size` coefficients per output row, summing to 4096.
    coeffs: Vec<i16>,
}

impl ChromaFilter {
    /// The filter for `height` output rows of a frame of that (odd) height, from its
    /// `height.div_ceil(2)` chroma rows; `None` for frames too small for the general filter.
    /// Follows `initFilter` step for step with the values this case gives it: no extra source or
    /// destination filter, the chroma sited as swscale assumes by default (centred between luma
    /// rows in the source, on them in the output), and the same integer and floating-point
    /// operations, so the coefficients are swscale's to the bit.
    pub fn bicubic(height: usize) -> Option<ChromaFilter> {
        let (src, dst) = (height.div_ceil(2) as i64, height as i64);
        if src < 8 {
            return None;
        }
        let inc = ((src << 16) + (dst >> 1)) / dst;
        // `1 << (54 - av_log2(src / dst))`: an upscale divides to 0, whose log is 0.
        let fone = 1i64 << 54;
        // The chroma positions in 1/256 of a row: `get_local_pos` gives 128 for both.
        let (src_pos, dst_pos) = (128i64, 128i64);
        let mut size = 5.min(src - 2).max(1) as usize;
        let (b, c) = (0i64, (0.6 * f64::from(1 << 24)) as i64);
        let mut first = vec![0i64; dst as usize];
        let mut filter = vec![0i64; dst as usize * size];
        let mut at = ((dst_pos * inc) >> 7) - ((src_pos << 16) >> 7);
        for i in 0..dst as usize {
            // C's division truncates towards zero, as Rust's does.
            let xx = (at - (size as i64 - 2) * (1 << 16)) / (1 << 17);
            first[i] = xx;
            for j in 0..size {
                // Tap j sits on chroma row xx + j.
                let d = ((xx + j as i64) * (1 << 17) - at).abs() << 13;
                filter[i * size + j] = if d >= 1 << 31 {
                    0
                } else {
                    let dd = (d * d) >> 30;
                    let ddd = (dd * d) >> 30;
                    if d < 1 << 30 {
                        (12 * (1 << 24) - 9 * b - 6 * c) * ddd
                            + (-18 * (1 << 24) + 12 * b + 6 * c) * dd
                            + (6 * (1 << 24) - 2 * b) * (1 << 30)
                    } else {
                        (-b - 6 * c) * ddd
                            + (6 * b + 30 * c) * dd
                            + (-12 * b - 48 * c) * d
                            + (8 * b + 24 * c) * (1 << 30)
                    }
                };
            }
            at += 2 * inc;
        }
        // Drop near-zero taps: shift each row's filter left past them, then count those on the
        // right; the widest row decides the size.
        let cut_off = 0.002 * fone as f64;
        let mut min_size = 0;
        for i in (0..dst as usize).rev() {
            let row = &mut filter[i * size..][..size];
            let mut sum = 0i64;
            for _ in 0..size {
                sum += row[0].abs();
                if sum as f64 > cut_off || (i + 1 < dst as usize && first[i] >= first[i + 1]) {
                    break;
                }
                row.copy_within(1.., 0);
                row[size - 1] = 0;
                first[i] += 1;
            }
            let (mut kept, mut sum) = (size, 0i64);
            for j in (1..size).rev() {
                sum += row[j].abs();
                if sum as f64 > cut_off {
                    break;
                }
                kept -= 1;
            }
            min_size = min_size.max(kept);
        }
        // Pairs of taps on x86 (MMX), except for a one-tap filter.
        let new_size = if min_size == 1 { 1 } else { min_size.next_multiple_of(2) };
        let mut taps = vec![0i64; dst as usize * new_size];
        for i in 0..dst as usize {
            for j in 0..new_size.min(size) {
                taps[i * new_size + j] = filter[i * size + j];
            }
        }
        size = new_size;
        // Keep every tap inside the frame: fold those above row 0 onto it, and shift a filter
        // that reaches past the last row up, folding what falls off onto the last row.
        for i in 0..dst as usize {
            let row = &mut taps[i * size..][..size];
            if first[i] < 0 {
                for j in 1..size {
                    let to = (j as i64 + first[i]).max(0) as usize;
                    row[to] += row[j];
                    row[j] = 0;
                }
                first[i] = 0;
            }
            if first[i] + size as i64 > src {
                let shift = first[i] + (size as i64 - src).min(0);
                let mut folded = 0;
                for j in (0..size).rev() {
                    if first[i] + j as i64 >= src {
                        folded += row[j];
                        row[j] = 0;
                    }
                }
                for j in (0..size).rev() {
                    row[j] = if (j as i64) < shift { 0 } else { row[j - shift as usize] };
                }
                first[i] -= shift;
                row[(src - 1 - first[i]) as usize] += folded;
            }
        }
        // Normalise to 12 bits, carrying each tap's rounding error into the next.
        let one = 1i64 << 12;
        let mut coeffs = vec![0i16; taps.len()];
        for (row, out) in taps.chunks(size).zip(coeffs.chunks_mut(size)) {
            let sum = match (row.iter().sum::<i64>() + one / 2) / one {
                0 => 1,
                sum => sum,
            };
            let mut error = 0;
            for (&tap, out) in row.iter().zip(out) {
                let v = tap + error;
                let rounded = (if v >= 0 { v + (sum >> 1) } else { v - (sum >> 1) }) / sum;
                // swscale stores an int into its int16_t filter.
                *out = rounded as i16;
                error = v - rounded * sum;
            }
        }
        let first = first.into_iter().map(|f| f as usize).collect();
        Some(ChromaFilter { size, first, coeffs })
    }

    /// The first chroma row and the coefficients of output row `y`'s taps.
    fn taps(&self, y: usize) -> (usize, &[i16]) {
        (self.first[y], &self.coeffs[y * self.size..][..self.size])
    }
}

impl YuvToRgb {
    /// The conversion of `format` frames of `width x height` pixels, with the colour matrix
    /// `table` and range `full_range`, set on swscale by `configure`, when it gives swscale's
    /// bytes exactly on a calibration frame of that width and of the height's parity (swscale
    /// picks its path by both; every luma value, extreme and scattered chroma); `None` for
    /// other formats, or when the bytes differ.
    pub fn matching_swscale(
        format: Pixel,
        (width, height): (u32, u32),
        table: [i32; 4],
        full_range: bool,
        layout: Layout,
        configure: impl Fn(&mut scaling::Context),
    ) -> Option<YuvToRgb> {
        let coefficients = Coefficients::new(table, full_range);
        let conversion = match format {
            Pixel::YUV444P | Pixel::YUVJ444P => YuvToRgb::Full444(coefficients),
            Pixel::YUV420P | Pixel::YUVJ420P if height % 2 == 0 => YuvToRgb::Direct420(coefficients),
            // swscale's general path has MMX output for BGR of even width only (an odd width
            // makes it interpolate chroma horizontally too); its filter depends on the height,
            // so the calibration frame has the frame's own.
            Pixel::YUV420P | Pixel::YUVJ420P if layout == Layout::Bgr && width % 2 == 0 => {
                YuvToRgb::General420(coefficients, ChromaFilter::bicubic(height as usize)?)
            }
            _ => return None,
        };
        let rows = match conversion {
            YuvToRgb::General420(..) => height,
            _ if height <= 64 => height,
            _ => 64 + height % 2,
        };
        let mut frame = ffmpeg::frame::Video::new(format, width, rows);
        let extremes = [0u8, 16, 128, 240, 255];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut scattered = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        };
        for plane in 0..3 {
            let (w, h) = (frame.plane_width(plane) as usize, frame.plane_height(plane) as usize);
            let stride = frame.stride(plane);
            for y in 0..h {
                for x in 0..w {
                    // Luma rows 0-1 count up; chroma rows 0-4 pair the extremes.
                    frame.data_mut(plane)[y * stride + x] = match (plane, y) {
                        (0, 0..2) => x as u8,
                        (1, 0..5) => extremes[y],
                        (2, 0..5) => extremes[x % 5],
                        _ => scattered(),
                    };
                }
            }
        }
        conversion.matches(&frame, layout, configure).then_some(conversion)
    }

    /// Whether converting `frame` (of this conversion's format) gives the bytes swscale gives,
    /// set up by `configure`, on the rows this conversion converts ([`YuvToRgb::own_rows`]).
    pub fn matches(
        &self,
        frame: &ffmpeg::frame::Video,
        layout: Layout,
        configure: impl Fn(&mut scaling::Context),
    ) -> bool {
        let (w, h) = (frame.width(), frame.height());
        let Ok(mut ctx) = scaling::Context::get(frame.format(), w, h, target(layout), w, h, scaling::Flags::BICUBIC)
        else {
            return false;
        };
        configure(&mut ctx);
        let mut want = ffmpeg::frame::Video::empty();
        if ctx.run(frame, &mut want).is_err() {
            return false;
        }
        let mut got = vec![0u8; want.data(0).len()];
        let target = Target { layout, packed: false, out: &mut got, stride: want.stride(0) };
        self.convert_rows(frame, &vec![true; h as usize], None, target);
        let row = 3 * w as usize;
        (0..self.own_rows(h as usize))
            .all(|y| got[y * want.stride(0)..][..row] == want.data(0)[y * want.stride(0)..][..row])
    }

    /// How many rows of a frame of `height` rows this conversion converts, from the top: all, or
    /// for [`YuvToRgb::General420`] all but the last two (swscale's general path converts those
    /// with its C output functions, which compute otherwise; the caller asks swscale for them).
    pub fn own_rows(&self, height: usize) -> usize {
        match self {
            YuvToRgb::General420(..) => height.saturating_sub(2),
            _ => height,
        }
    }

    /// Convert the rows of `frame` marked in `rows` (of [`YuvToRgb::own_rows`]; the others are
    /// skipped) into `target`: whole rows, or only the pixels at `columns` (ascending), which is
    /// what pays when a consumer reads few of them ([`YuvToRgb::General420`] converts whole rows
    /// and packs nothing). The other bytes of the target keep what they held. Compiled for the
    /// CPU's widest SIMD ([`with_simd`]); whole 4:4:4 and general 4:2:0 rows vectorise, the rest
    /// is per pixel.
    pub fn convert_rows(&self, frame: &ffmpeg::frame::Video, rows: &[bool], columns: Option<&[usize]>, target: Target) {
        with_simd(ConvertRows { conversion: self, frame, rows, columns, target });
    }
}

/// Where [`YuvToRgb::convert_rows`] writes.
pub struct Target<'a> {
    /// Channel order.
    pub layout: Layout,
    /// Pack the pixels converted (with `columns` listed): the `i`-th listed column of the
    /// `r`-th marked row goes to pixel `(i, r)`, instead of to its own place.
    pub packed: bool,
    /// The packed 3-byte pixels.
    pub out: &'a mut [u8],
    /// Bytes from one row of `out` to the next.
    pub stride: usize,
}

/// Pixels converted per chunk: the samples sit in (or are gathered into) contiguous arrays, the
/// arithmetic fills one array per channel (a loop that vectorises), then the channels are
/// interleaved into the packed row.
const CHUNK: usize = 64;

/// One 4:4:4 pixel, (R, G, B), as swscale's general path computes it: the 8-bit values scaled
/// to its 15-bit intermediate and on to 9 fractional bits, then `(y - offset) * y_coeff + 2^21`
/// plus the chroma terms in wrapping 32-bit arithmetic (swscale's `int` sums wrap for the
/// brightest inputs of some matrices: a wrapped sum reads as negative and clips to 0, and so it
/// does here), clipped to 30 bits and shifted down by 22.
#[inline(always)]
fn full_444_pixel(c: Coefficients, y: u8, u: u8, v: u8) -> [u8; 3] {
    let yt = (i32::from(y) << 9).wrapping_sub(c.y_offset_general).wrapping_mul(c.y_coeff).wrapping_add(1 << 21);
    let (u, v) = ((i32::from(u) << 9).wrapping_sub(128 << 9), (i32::from(v) << 9).wrapping_sub(128 << 9));
    [
        clip_30_bits(yt.wrapping_add(v.wrapping_mul(c.v2r))),
        clip_30_bits(yt.wrapping_add(v.wrapping_mul(c.v2g)).wrapping_add(u.wrapping_mul(c.u2g))),
        clip_30_bits(yt.wrapping_add(u.wrapping_mul(c.u2b))),
    ]
}

/// swscale's last step of its general RGB output: a value with 22 fractional bits clipped to 30
/// bits (negative to 0), then its integer part.
#[inline(always)]
fn clip_30_bits(x: i32) -> u8 {
    (x.clamp(0, (1 << 30) - 1) >> 22) as u8
}

/// The high half of a signed 16-bit product (`pmulhw`).
#[inline(always)]
fn mul_high(a: i16, b: i16) -> i16 {
    ((i32::from(a) * i32::from(b)) >> 16) as i16
}

/// One 4:2:0 pixel, (R, G, B), as swscale's direct x86 converter computes it in 16-bit lanes:
/// luma and chroma scaled by 8 ([`mmx_pixel`]).
#[inline(always)]
fn direct_420_pixel(c: Coefficients, y: u8, u: u8, v: u8) -> [u8; 3] {
    mmx_pixel(c, i16::from(y) << 3, i16::from(u) << 3, i16::from(v) << 3)
}

/// One pixel, (R, G, B), from luma and chroma scaled by 8, as swscale's x86 converters compute
/// it in 16-bit lanes (the direct one and the general path's MMX output alike): offset
/// (`y - offset`, `u - 1024`), the high halves of their products with the coefficients
/// (`pmulhw`), 16-bit sums, then saturated to 8 bits. Some of swscale's subtractions and sums
/// saturate to 16 bits, others wrap; neither ever applies: the scaled values lie within
/// -400..=2400 (the general path's bicubic overshoot included), within -1500..=2100 once offset,
/// and the coefficients in i16, so each product's high half is within +-1050 and every sum within
/// +-3150 (plain wrapping operations are exact, and cheaper).
#[inline(always)]
fn mmx_pixel(c: Coefficients, y: i16, u: i16, v: i16) -> [u8; 3] {
    // The coefficients are i16 values (`round_to_i16`): as i16 the products are `pmulhw`.
    let k = |coeff: i32| coeff as i16;
    let ym = mul_high(y.wrapping_sub(c.y_offset_direct), k(c.y_coeff));
    let (u, v) = (u.wrapping_sub(1024), v.wrapping_sub(1024));
    let green = mul_high(u, k(c.u2g)).wrapping_add(mul_high(v, k(c.v2g)));
    [mul_high(v, k(c.v2r)), green, mul_high(u, k(c.u2b))].map(|chroma| ym.wrapping_add(chroma).clamp(0, 255) as u8)
}

/// A whole row `y` of a 4:2:0 frame of odd height into packed pixels, as swscale's general path
/// computes it on x86: luma and chroma at 15 bits (`<< 7`, its identity horizontal filters),
/// chroma filtered vertically by `filter` in MMX (the high half of each tap's product with its
/// 12-bit coefficient, summed in 16 bits from a rounding term of 4), luma by its one-tap
/// identity (`8 * y + 4` the same way), then [`mmx_pixel`], two pixels per chroma sample. In
/// chunks whose arithmetic runs over contiguous arrays, so that it vectorises.
///
/// `luma` is the row's Y samples; `chroma` holds the U and V planes' rows, looked up once per frame (a plane row is a few calls
/// into FFmpeg).
#[inline(always)]
fn general_420_row(
    c: Coefficients,
    filter: &ChromaFilter,
    (luma, chroma): (&[u8], &[Vec<&[u8]>; 2]),
    y: usize,
    layout: Layout,
    out: &mut [u8],
) {
    let (first, coeffs) = filter.taps(y);
    const HALF: usize = CHUNK / 2;
    for (chunk, out) in out.chunks_mut(3 * CHUNK).enumerate() {
        let (x0, n) = (chunk * CHUNK, out.len() / 3);
        let mut filtered = [[4i16; HALF]; 2];
        for (rows, sums) in chroma.iter().zip(&mut filtered) {
            for (row, &k) in rows[first..].iter().zip(coeffs) {
                let row = &row[x0 / 2..][..n.div_ceil(2)];
                for (sum, &sample) in sums.iter_mut().zip(row) {
                    *sum = sum.wrapping_add(mul_high(i16::from(sample) << 7, k));
                }
            }
        }
        let mut samples = [[0i16; CHUNK]; 3];
        for (i, &l) in luma[x0..][..n].iter().enumerate() {
            samples[0][i] = (i16::from(l) << 3) + 4;
        }
        for i in 0..HALF {
            for plane in 0..2 {
                samples[plane + 1][2 * i] = filtered[plane][i];
                samples[plane + 1][2 * i + 1] = filtered[plane][i];
            }
        }
        let mut channels = [[0u8; CHUNK]; 3];
        for i in 0..CHUNK {
            [channels[0][i], channels[1][i], channels[2][i]] =
                mmx_pixel(c, samples[0][i], samples[1][i], samples[2][i]);
        }
        if layout == Layout::Bgr {
            channels.swap(0, 2);
        }
        for (i, px) in out.chunks_exact_mut(3).enumerate() {
            (px[0], px[1], px[2]) = (channels[0][i], channels[1][i], channels[2][i]);
        }
    }
}

/// A whole row of 4:4:4 planes Y, U, V (equal lengths) into packed pixels, in chunks that
/// vectorise.
#[inline(always)]
fn full_444_row(c: Coefficients, y: &[u8], u: &[u8], v: &[u8], layout: Layout, out: &mut [u8]) {
    let chunks = y.chunks(CHUNK).zip(u.chunks(CHUNK)).zip(v.chunks(CHUNK)).zip(out.chunks_mut(3 * CHUNK));
    for (((y, u), v), out) in chunks {
        let mut channels = [[0u8; CHUNK]; 3];
        let n = y.len().min(u.len()).min(v.len()).min(CHUNK);
        for i in 0..n {
            [channels[0][i], channels[1][i], channels[2][i]] = full_444_pixel(c, y[i], u[i], v[i]);
        }
        let [r, g, b] = &channels;
        let [c0, c1, c2] = match layout {
            Layout::Bgr => [b, g, r],
            Layout::Rgb => [r, g, b],
        };
        for (i, px) in out.chunks_exact_mut(3).enumerate().take(n) {
            (px[0], px[1], px[2]) = (c0[i], c1[i], c2[i]);
        }
    }
}

/// [`YuvToRgb::convert_rows`] as an operation [`with_simd`] compiles for the CPU's widest SIMD.
struct ConvertRows<'a> {
    conversion: &'a YuvToRgb,
    frame: &'a ffmpeg::frame::Video,
    rows: &'a [bool],
    columns: Option<&'a [usize]>,
    target: Target<'a>,
}

impl pulp::WithSimd for ConvertRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let (frame, width, target) = (self.frame, self.frame.width() as usize, self.target);
        let columns = self.columns.filter(|_| !matches!(self.conversion, YuvToRgb::General420(..)));
        let (layout, packed) = (target.layout, target.packed && columns.is_some());
        let own = self.conversion.own_rows(self.rows.len());
        // The chroma rows the general 4:2:0 filter reads, once per frame.
        let chroma: [Vec<&[u8]>; 2] = match self.conversion {
            YuvToRgb::General420(..) => {
                [1, 2].map(|p| (0..frame.plane_height(p) as usize).map(|r| plane_row(frame, p, r)).collect())
            }
            _ => [Vec::new(), Vec::new()],
        };
        for (r, y) in (0..own).filter(|&y| self.rows[y]).enumerate() {
            let out = &mut target.out[if packed { r } else { y } * target.stride..][..3 * width];
            match (self.conversion, columns) {
                (&YuvToRgb::Full444(c), None) => {
                    let [py, pu, pv] = [0, 1, 2].map(|p| plane_row(frame, p, y));
                    full_444_row(c, py, pu, pv, layout, out);
                }
                (&YuvToRgb::Full444(c), Some(columns)) => {
                    let planes = [0, 1, 2].map(|p| plane_row(frame, p, y));
                    listed_pixels(|y, u, v| full_444_pixel(c, y, u, v), planes, 0, columns, (layout, packed), out);
                }
                (&YuvToRgb::Direct420(c), columns) => {
                    let planes = [(0, y), (1, y / 2), (2, y / 2)].map(|(p, y)| plane_row(frame, p, y));
                    let all: Vec<usize>;
                    let columns = match columns {
                        Some(columns) => columns,
                        None => {
                            all = (0..width).collect();
                            &all
                        }
                    };
                    listed_pixels(|y, u, v| direct_420_pixel(c, y, u, v), planes, 1, columns, (layout, packed), out);
                }
                (YuvToRgb::General420(c, filter), _) => {
                    general_420_row(*c, filter, (plane_row(frame, 0, y), &chroma), y, layout, out)
                }
            }
        }
    }
}

/// The pixels at `columns` of one row of planes `[y, u, v]` (chroma subsampled horizontally by
/// `2^shift`) into the packed row `out`, by `pixel`, each at its own column or, `packed`, one
/// after the other: in chunks whose samples are first gathered into arrays, so that the
/// arithmetic runs over contiguous lanes and vectorises.
#[inline(always)]
fn listed_pixels(
    pixel: impl Fn(u8, u8, u8) -> [u8; 3],
    [py, pu, pv]: [&[u8]; 3],
    shift: u32,
    columns: &[usize],
    (layout, packed): (Layout, bool),
    out: &mut [u8],
) {
    for (chunk, columns) in columns.chunks(CHUNK).enumerate() {
        let mut samples = [[0u8; CHUNK]; 3];
        for (i, &x) in columns.iter().enumerate() {
            [samples[0][i], samples[1][i], samples[2][i]] = [py[x], pu[x >> shift], pv[x >> shift]];
        }
        let mut channels = [[0u8; CHUNK]; 3];
        for i in 0..CHUNK {
            [channels[0][i], channels[1][i], channels[2][i]] = pixel(samples[0][i], samples[1][i], samples[2][i]);
        }
        if layout == Layout::Bgr {
            channels.swap(0, 2);
        }
        for (i, &x) in columns.iter().enumerate() {
            // Both are columns of the row, so 3 * x + 3 cannot wrap (wrapping operations keep
            // debug builds' overflow checks out of the loop).
            let at = if packed { chunk.wrapping_mul(CHUNK).wrapping_add(i) } else { x }.wrapping_mul(3);
            // Three byte stores (a copy from a 3-byte temporary reloads it across the stores,
            // a store-forwarding stall that tripled this loop's time).
            let px = &mut out[at..at.wrapping_add(3)];
            (px[0], px[1], px[2]) = (channels[0][i], channels[1][i], channels[2][i]);
        }
    }
}

/// The packed format swscale writes for `layout`.
pub fn target(layout: Layout) -> Pixel {
    match layout {
        Layout::Bgr => Pixel::BGR24,
        Layout::Rgb => Pixel::RGB24,
    }
}

/// The colour matrix (swscale's `SWS_CS_*`) and whether the range is full, as a frame is
/// converted: with its own matrix and range (BT.709 when tagged, BT.601 otherwise), as OpenCV and
/// PyAV do; swscale would otherwise assume BT.601 limited range for everything.
pub fn colorspace(frame: &ffmpeg::frame::Video) -> (i32, bool) {
    use ffmpeg::ffi;
    use ffmpeg::util::color::{Range, Space};
    let matrix = match frame.color_space() {
        Space::BT709 => ffi::SWS_CS_ITU709,
        Space::FCC => ffi::SWS_CS_FCC,
        Space::SMPTE240M => ffi::SWS_CS_SMPTE240M,
        Space::BT2020NCL | Space::BT2020CL => ffi::SWS_CS_BT2020,
        _ => ffi::SWS_CS_DEFAULT,
    };
    let full = frame.color_range() == Range::JPEG
        || matches!(frame.format(), Pixel::YUVJ420P | Pixel::YUVJ422P | Pixel::YUVJ444P);
    (matrix, full)
}

/// swscale's coefficients `[crv, cbu, cgu, cgv]` of a colour matrix.
pub fn coefficients(matrix: i32) -> [i32; 4] {
    // SAFETY: sws_getCoefficients returns one of FFmpeg's static tables of (at least) four ints
    // for any matrix number (the default one for unknown numbers).
    unsafe { *(ffmpeg::ffi::sws_getCoefficients(matrix) as *const [i32; 4]) }
}

/// Set a scaler to convert from the colour matrix `matrix` and range ([`colorspace`]) to
/// full-range RGB.
pub fn set_colorspace(ctx: &mut scaling::Context, matrix: i32, full_range: bool) {
    use ffmpeg::ffi;
    // SAFETY: the context is valid and the coefficient tables are static FFmpeg data.
    unsafe {
        let coefs = ffi::sws_getCoefficients(matrix);
        let dst = ffi::sws_getCoefficients(ffi::SWS_CS_DEFAULT);
        ffi::sws_setColorspaceDetails(ctx.as_mut_ptr(), coefs, i32::from(full_range), dst, 1, 0, 1 << 16, 1 << 16);
    }
}

/// Row `y` of plane `plane` of a planar 8-bit frame: its bytes.
fn plane_row(frame: &ffmpeg::frame::Video, plane: usize, y: usize) -> &[u8] {
    let w = frame.plane_width(plane) as usize;
    &frame.data(plane)[y * frame.stride(plane)..][..w]
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffmpeg::ffi;

    /// A 4096 x `height` frame of an 8-bit planar format holding, at the height 4096, every (Y, U,
    /// V) at least once: pixel `i` (row-major) of 4:4:4 has the bytes of `i`; in 4:2:0, chroma
    /// block `b` has the (U, V) of `b mod 2^16` and its four pixels the luma values
    /// `4 * (b / 2^16) + 0..4`.
    fn every_colour(format: Pixel, height: u32) -> ffmpeg::frame::Video {
        let mut frame = ffmpeg::frame::Video::new(format, 4096, height);
        let subsampled = frame.plane_width(1) < 4096;
        for plane in 0..3 {
            let (w, h) = (frame.plane_width(plane) as usize, frame.plane_height(plane) as usize);
            let stride = frame.stride(plane);
            let data = frame.data_mut(plane);
            for y in 0..h {
                for (x, v) in data[y * stride..][..w].iter_mut().enumerate() {
                    *v = match (subsampled, plane) {
                        (false, _) => ((y * w + x) >> (8 * plane)) as u8,
                        (true, 0) => {
                            let block = (y / 2) * (w / 2) + x / 2;
                            (4 * (block >> 16) + 2 * (y % 2) + x % 2) as u8
                        }
                        (true, _) => ((y * w + x) >> (8 * (plane - 1))) as u8,
                    };
                }
            }
        }
        frame
    }

    #[test]
    fn every_colour_converts_as_swscale_does() {
        super::super::ffmpeg_init();
        let matrices =
            [ffi::SWS_CS_DEFAULT, ffi::SWS_CS_ITU709, ffi::SWS_CS_FCC, ffi::SWS_CS_SMPTE240M, ffi::SWS_CS_BT2020];
        for (format, conversion) in
            [(Pixel::YUV444P, YuvToRgb::Full444 as fn(Coefficients) -> YuvToRgb), (Pixel::YUV420P, YuvToRgb::Direct420)]
        {
            let frame = every_colour(format, 4096);
            for matrix in matrices {
                for full in [false, true] {
                    let own = conversion(Coefficients::new(coefficients(matrix), full));
                    let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, matrix, full);
                    for layout in [Layout::Bgr, Layout::Rgb] {
                        assert!(own.matches(&frame, layout, configure), "{format:?}, matrix {matrix}, full {full}");
                    }
                    let calibrated = YuvToRgb::matching_swscale(
                        format,
                        (1280, 720),
                        coefficients(matrix),
                        full,
                        Layout::Bgr,
                        configure,
                    );
                    assert_eq!(calibrated, Some(own));
                }
            }
            // Other coefficients are told apart.
            let wrong = conversion(Coefficients::new(coefficients(ffi::SWS_CS_ITU709), false));
            let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, ffi::SWS_CS_DEFAULT, false);
            assert!(!wrong.matches(&frame, Layout::Bgr, configure));
        }
    }

    /// An odd height sends 4:2:0 through swscale's general path, whose vertical chroma filter
    /// depends on the height: ours gives its bytes on (nearly) every colour, on the calibration
    /// frames of other sizes (the extremes and random samples), with every matrix and range, to
    /// BGR; to RGB and at odd widths swscale computes otherwise, and no copy is offered.
    #[test]
    fn odd_height_420_converts_as_swscale_does() {
        super::super::ffmpeg_init();
        let matrices = [ffi::SWS_CS_DEFAULT, ffi::SWS_CS_ITU709, ffi::SWS_CS_BT2020];
        let frame = every_colour(Pixel::YUV420P, 4095);
        for matrix in matrices {
            for full in [false, true] {
                let filter = ChromaFilter::bicubic(4095).expect("a large frame");
                let own = YuvToRgb::General420(Coefficients::new(coefficients(matrix), full), filter);
                let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, matrix, full);
                assert!(own.matches(&frame, Layout::Bgr, configure), "matrix {matrix}, full {full}");
                for size in [(720, 405), (1280, 721), (98, 17), (34, 99), (640, 359)] {
                    let calibrated = YuvToRgb::matching_swscale(
                        Pixel::YUV420P,
                        size,
                        coefficients(matrix),
                        full,
                        Layout::Bgr,
                        configure,
                    );
                    assert!(
                        matches!(calibrated, Some(YuvToRgb::General420(..))),
                        "{size:?}, matrix {matrix}, full {full}"
                    );
                }
            }
        }
        let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, ffi::SWS_CS_DEFAULT, false);
        let table = coefficients(ffi::SWS_CS_DEFAULT);
        assert!(YuvToRgb::matching_swscale(Pixel::YUV420P, (720, 405), table, false, Layout::Rgb, configure).is_none());
        // An odd width, or too few chroma rows for the general filter: swscale's own.
        assert!(YuvToRgb::matching_swscale(Pixel::YUV420P, (33, 99), table, false, Layout::Bgr, configure).is_none());
        assert!(YuvToRgb::matching_swscale(Pixel::YUV420P, (64, 13), table, false, Layout::Bgr, configure).is_none());
    }
}

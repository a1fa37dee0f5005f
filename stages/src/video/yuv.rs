//! Bit-exact re-implementation of swscale's conversion of 8-bit 4:4:4 YUV to packed BGR or RGB
//! at the same size, so that the decoder can convert only the rows a consumer reads, in loops
//! that vectorise. swscale sends 4:4:4 input through its general path (identity filters, then
//! its full-chroma per-pixel output), which converts every row of every frame in scalar C; its
//! arithmetic is reproduced here element for element, and checked against swscale itself before
//! use (see [`Yuv444::matching_swscale`]), so a build of FFmpeg that computes otherwise keeps
//! swscale.

use ffmpeg::format::Pixel;
use ffmpeg::software::scaling;
use ffmpeg_next as ffmpeg;

use super::decode::Layout;
use super::opencv::with_simd;

/// The integer coefficients of swscale's YUV -> RGB output for one colour matrix and range:
/// RGB values carry 22 fractional bits before the final shift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Yuv444 {
    y_offset: i32,
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

impl Yuv444 {
    /// The coefficients swscale derives (`ff_yuv2rgb_c_init_tables`, neutral brightness,
    /// contrast and saturation) from a matrix as `sws_getCoefficients` gives it, `[crv, cbu,
    /// cgu, cgv]`, for limited- or full-range input.
    pub fn new(table: [i32; 4], full_range: bool) -> Yuv444 {
        let [mut crv, mut cbu, mut cgu, mut cgv] = [table[0], table[1], -table[2], -table[3]].map(i64::from);
        let (mut cy, mut oy) = (1i64 << 16, 0i64);
        if full_range {
            // Integer division truncates towards zero, as in C.
            [crv, cbu, cgu, cgv] = [crv, cbu, cgu, cgv].map(|c| c * 224 / 255);
        } else {
            (cy, oy) = (cy * 255 / 219, 16 << 16);
        }
        Yuv444 {
            y_offset: round_to_i16(oy << 9),
            y_coeff: round_to_i16(cy << 13),
            v2r: round_to_i16(crv << 13),
            v2g: round_to_i16(cgv << 13),
            u2g: round_to_i16(cgu << 13),
            u2b: round_to_i16(cbu << 13),
        }
    }

    /// The coefficients for frames of `format` with the colour matrix `table` and range
    /// `full_range`, set on swscale by `configure`, when they give swscale's bytes exactly on a
    /// calibration frame (every luma value against extreme and scattered chroma); `None` for
    /// formats other than 8-bit 4:4:4, or when they differ (another FFmpeg build may compute
    /// otherwise, and swscale stays the reference).
    pub fn matching_swscale(
        format: Pixel,
        table: [i32; 4],
        full_range: bool,
        layout: Layout,
        configure: impl Fn(&mut scaling::Context),
    ) -> Option<Yuv444> {
        if !matches!(format, Pixel::YUV444P | Pixel::YUVJ444P) {
            return None;
        }
        let coefficients = Yuv444::new(table, full_range);
        let mut frame = ffmpeg::frame::Video::new(format, 256, 256);
        let extremes = [0u8, 16, 128, 240, 255];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for y in 0..256 {
            for x in 0..256 {
                // Rows 0-24: the extreme chroma pairs; the rest: scattered (xorshift) chroma.
                let (u, v) = if y < 25 {
                    (extremes[y / 5], extremes[y % 5])
                } else {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state as u8, (state >> 8) as u8)
                };
                for (plane, value) in [(0, x as u8), (1, u), (2, v)] {
                    let stride = frame.stride(plane);
                    frame.data_mut(plane)[y * stride + x] = value;
                }
            }
        }
        coefficients.matches(&frame, layout, configure).then_some(coefficients)
    }

    /// Whether converting `frame` (8-bit 4:4:4) gives the bytes swscale gives, set up by
    /// `configure`.
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
        self.convert_rows(frame, &vec![true; h as usize], layout, &mut got, want.stride(0));
        let row = 3 * w as usize;
        (0..h as usize).all(|y| got[y * want.stride(0)..][..row] == want.data(0)[y * want.stride(0)..][..row])
    }

    /// Convert the rows of `frame` (8-bit 4:4:4) marked in `rows` into `out`, whose rows are
    /// `stride` bytes apart; the other rows of `out` keep what they held. Compiled for the CPU's
    /// widest SIMD ([`with_simd`]).
    pub fn convert_rows(
        &self,
        frame: &ffmpeg::frame::Video,
        rows: &[bool],
        layout: Layout,
        out: &mut [u8],
        stride: usize,
    ) {
        with_simd(ConvertRows { coefficients: *self, frame, rows, layout, out, stride });
    }

    /// Convert one row of planes Y, U, V (equal lengths) into packed pixels in `layout`
    /// (`out` holds 3 bytes per pixel). Per element, as swscale does: the 8-bit values scaled to
    /// its 15-bit intermediate and on to 9 fractional bits, then `(y - offset) * y_coeff + 2^21`
    /// plus the chroma terms in wrapping 32-bit arithmetic (swscale's `int` sums wrap for the
    /// brightest inputs of some matrices: a wrapped sum reads as negative and clips to 0, and so
    /// it does here), clipped to 30 bits and shifted down by 22. Inline so that callers compiled
    /// for wider SIMD (see [`super::opencv::with_simd`]) get it too.
    #[inline(always)]
    pub fn convert_row(&self, y: &[u8], u: &[u8], v: &[u8], layout: Layout, out: &mut [u8]) {
        // In chunks: the arithmetic into one array per channel (a loop that vectorises), then
        // the channels interleaved.
        const CHUNK: usize = 64;
        let c = *self;
        let chunks = y.chunks(CHUNK).zip(u.chunks(CHUNK)).zip(v.chunks(CHUNK)).zip(out.chunks_mut(3 * CHUNK));
        for (((y, u), v), out) in chunks {
            let (mut r, mut g, mut b) = ([0u8; CHUNK], [0u8; CHUNK], [0u8; CHUNK]);
            for i in 0..y.len().min(u.len()).min(v.len()).min(CHUNK) {
                let yt = (i32::from(y[i]) << 9).wrapping_sub(c.y_offset).wrapping_mul(c.y_coeff).wrapping_add(1 << 21);
                let (u, v) = ((i32::from(u[i]) - 128) << 9, (i32::from(v[i]) - 128) << 9);
                r[i] = clip_30_bits(yt.wrapping_add(v.wrapping_mul(c.v2r)));
                g[i] = clip_30_bits(yt.wrapping_add(v.wrapping_mul(c.v2g)).wrapping_add(u.wrapping_mul(c.u2g)));
                b[i] = clip_30_bits(yt.wrapping_add(u.wrapping_mul(c.u2b)));
            }
            let [c0, c1, c2] = match layout {
                Layout::Bgr => [&b, &g, &r],
                Layout::Rgb => [&r, &g, &b],
            };
            for (i, px) in out.chunks_exact_mut(3).enumerate().take(CHUNK) {
                (px[0], px[1], px[2]) = (c0[i], c1[i], c2[i]);
            }
        }
    }
}

/// swscale's last step of its RGB output: a value with 22 fractional bits clipped to 30 bits
/// (negative to 0), then its integer part.
#[inline(always)]
fn clip_30_bits(x: i32) -> u8 {
    (x.clamp(0, (1 << 30) - 1) >> 22) as u8
}

/// [`Yuv444::convert_rows`] as an operation [`with_simd`] compiles for the CPU's widest SIMD.
struct ConvertRows<'a> {
    coefficients: Yuv444,
    frame: &'a ffmpeg::frame::Video,
    rows: &'a [bool],
    layout: Layout,
    out: &'a mut [u8],
    stride: usize,
}

impl pulp::WithSimd for ConvertRows<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _simd: S) {
        let (frame, width) = (self.frame, 3 * self.frame.width() as usize);
        for y in (0..self.rows.len()).filter(|&y| self.rows[y]) {
            let out = &mut self.out[y * self.stride..][..width];
            let planes = [0, 1, 2].map(|p| plane_row(frame, p, y));
            self.coefficients.convert_row(planes[0], planes[1], planes[2], self.layout, out);
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

/// Row `y` of plane `plane` of a planar 8-bit frame: its `width` bytes.
pub fn plane_row(frame: &ffmpeg::frame::Video, plane: usize, y: usize) -> &[u8] {
    let w = frame.width() as usize;
    &frame.data(plane)[y * frame.stride(plane)..][..w]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4096 x 4096 4:4:4 frame holding every 8-bit (Y, U, V) once.
    fn every_colour(format: Pixel) -> ffmpeg::frame::Video {
        let mut frame = ffmpeg::frame::Video::new(format, 4096, 4096);
        for plane in 0..3 {
            let stride = frame.stride(plane);
            let data = frame.data_mut(plane);
            for y in 0..4096 {
                for (x, v) in data[y * stride..][..4096].iter_mut().enumerate() {
                    *v = ((y * 4096 + x) >> (8 * plane)) as u8;
                }
            }
        }
        frame
    }

    #[test]
    fn every_colour_converts_as_swscale_does() {
        use ffmpeg::ffi;
        super::super::ffmpeg_init();
        let matrices =
            [ffi::SWS_CS_DEFAULT, ffi::SWS_CS_ITU709, ffi::SWS_CS_FCC, ffi::SWS_CS_SMPTE240M, ffi::SWS_CS_BT2020];
        let frame = every_colour(Pixel::YUV444P);
        for matrix in matrices {
            for full in [false, true] {
                let own = Yuv444::new(coefficients(matrix), full);
                let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, matrix, full);
                assert!(own.matches(&frame, Layout::Bgr, configure), "matrix {matrix}, full range {full}");
                assert!(Yuv444::matching_swscale(Pixel::YUV444P, coefficients(matrix), full, Layout::Bgr, configure)
                    .is_some());
            }
        }
        let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, ffi::SWS_CS_DEFAULT, true);
        assert!(Yuv444::new(coefficients(ffi::SWS_CS_DEFAULT), true).matches(
            &every_colour(Pixel::YUVJ444P),
            Layout::Rgb,
            configure
        ));
        // Other coefficients are told apart.
        let wrong = Yuv444::new(coefficients(ffi::SWS_CS_ITU709), false);
        let configure = |ctx: &mut scaling::Context| set_colorspace(ctx, ffi::SWS_CS_DEFAULT, false);
        assert!(!wrong.matches(&frame, Layout::Bgr, configure));
    }
}

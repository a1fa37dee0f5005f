//! What the pixel code shares below decoding: the packed channel orders frames come in, and the
//! SIMD dispatch of the pixel loops. Its own module so that decoding, the YUV conversion and the
//! OpenCV-exact operations can all use it without importing one another in a circle.

/// Packed pixel layouts the reader can produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Blue, green, red (what OpenCV and PySceneDetect work on).
    Bgr,
    /// Red, green, blue (what the models take).
    Rgb,
}

/// Run `op` compiled for the widest SIMD instruction set this CPU has (AVX2 and FMA on current
/// x86-64, checked at run time), so the pixel loops it inlines vectorise beyond the SSE2 baseline
/// the crate is built for. The results are the same bytes on every instruction set: the loops
/// are integer arithmetic.
pub fn with_simd<Op: pulp::WithSimd>(op: Op) -> Op::Output {
    pulp::Arch::new().dispatch(op)
}

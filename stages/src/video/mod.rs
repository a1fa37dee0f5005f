//! The video core shared by every stage that looks at pixels: decoding and encoding with FFmpeg,
//! OpenCV- and Pillow-exact image operations, shot-boundary detection and clip statistics.

pub mod decode;
pub mod encode;
pub mod motion;
pub mod opencv;
pub mod pillow;
pub mod scenes;

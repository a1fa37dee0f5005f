//! The video core shared by every stage that looks at pixels: decoding with FFmpeg, OpenCV-exact
//! image operations, and shot-boundary detection.

pub mod decode;
pub mod opencv;
pub mod scenes;

//! The video core shared by every stage that looks at pixels, and the only place that talks to
//! FFmpeg: its process-wide setup, media metadata and display rotation (probe), decoding and
//! encoding; plus OpenCV- and Pillow-exact image operations, shot-boundary detection and clip
//! statistics.

pub mod decode;
pub mod encode;
pub mod motion;
pub mod opencv;
pub mod pillow;
pub mod pixel;
pub mod probe;
pub mod scenes;
pub mod yuv;

/// Initialise FFmpeg once per process and keep its own logging quiet: failures reach the user
/// as error records, not as interleaved stderr lines.
pub(crate) fn ffmpeg_init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        // Initialisation only registers codecs; it cannot fail on supported FFmpeg versions.
        let _ = ffmpeg_next::init();
        ffmpeg_next::util::log::set_level(ffmpeg_next::util::log::Level::Quiet);
    });
}

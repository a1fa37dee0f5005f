//! The video core shared by every stage that looks at pixels, and the only place that talks to
//! FFmpeg: its process-wide setup, media metadata and display rotation (probe), decoding and
//! encoding; plus OpenCV- and Pillow-exact image operations, shot-boundary detection and clip
//! statistics.

pub mod decode;
pub mod encode;
pub mod motion;
pub mod opencv;
pub mod pillow;
pub mod probe;
pub mod scenes;

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

/// An FFmpeg demuxer opened by [`open_input`], with the pipe it reads from when the input is not
/// a regular file (fields drop in order: the demuxer before the pipe it may use).
pub(crate) struct Demuxer {
    input: ffmpeg_next::format::context::Input,
    _pipe: Option<std::fs::File>,
}

impl std::ops::Deref for Demuxer {
    type Target = ffmpeg_next::format::context::Input;
    fn deref(&self) -> &Self::Target {
        &self.input
    }
}

impl std::ops::DerefMut for Demuxer {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.input
    }
}

/// Open a media file for demuxing so that a read which waits for data gives up once the item
/// being processed is cancelled (it timed out): FFmpeg's interrupt callback reports
/// [`pipeline::cancel::cancelled`], and its read loop then returns "immediate exit requested".
///
/// A FIFO, socket or device is opened here without blocking and handed to FFmpeg as a pipe:
/// opened normally, open(2) would wait for a writer and FFmpeg's blocking read(2) would wait for
/// data without ever asking the callback; non-blocking, FFmpeg retries and asks in between.
pub(crate) fn open_input(path: &std::path::Path) -> Result<Demuxer, probe::DecodeError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    ffmpeg_init();
    let name = || path.display().to_string();
    let pipe = match std::fs::metadata(path) {
        Ok(m) if !m.is_file() && !m.is_dir() => Some(
            std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NONBLOCK)
                .open(path)
                .map_err(|e| probe::DecodeError::OpenPipe(name(), e))?,
        ),
        _ => None,
    };
    let url = match &pipe {
        Some(f) => std::path::PathBuf::from(format!("pipe:{}", f.as_raw_fd())),
        None => path.to_path_buf(),
    };
    let input = ffmpeg_next::format::input_with_interrupt(&url, pipeline::cancel::cancelled)
        .map_err(|e| probe::DecodeError::Open(name(), e))?;
    Ok(Demuxer { input, _pipe: pipe })
}

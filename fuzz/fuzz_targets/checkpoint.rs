//! Any bytes given as a `.pt` checkpoint (a PyTorch zip of pickles) open as a checkpoint or give
//! an error naming the file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // `Checkpoint::open` contains panics of the pickle reader it calls (they become errors), so
    // libFuzzer's abort-on-panic hook is replaced by a silent one; a panic that escapes `open`
    // still aborts the run (libfuzzer-sys aborts on any unwinding panic) and is reported.
    static QUIET: std::sync::Once = std::sync::Once::new();
    QUIET.call_once(|| std::panic::set_hook(Box::new(|_| {})));
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("model.pt");
    if std::fs::write(&path, data).is_ok() {
        let _ = models::weights::Checkpoint::open(&path, candle_core::DType::F32, &candle_core::Device::Cpu);
    }
});

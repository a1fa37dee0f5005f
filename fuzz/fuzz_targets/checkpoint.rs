//! Any bytes given as a `.pt` checkpoint (a PyTorch zip of pickles) open as a checkpoint or give
//! an error naming the file; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(dir) = tempfile::tempdir() else { return };
    let path = dir.path().join("model.pt");
    if std::fs::write(&path, data).is_ok() {
        let _ = models::weights::Checkpoint::open(&path, candle_core::DType::F32, &candle_core::Device::Cpu);
    }
});

//! Opening a GPU for the models: one place that sets what every model run on it wants.

use candle_core::Device;

/// The CUDA device `ordinal`, with its memory pool keeping freed blocks for the next call (see
/// `kernels::keep_freed_memory`): a stage that encodes one clip after another reuses the same
/// activations' memory instead of mapping it again for every clip.
pub fn cuda(ordinal: usize) -> candle_core::Result<Device> {
    let device = Device::new_cuda(ordinal)?;
    #[cfg(feature = "cuda")]
    if let Device::Cuda(d) = &device {
        kernels::keep_freed_memory(d)?;
    }
    Ok(device)
}

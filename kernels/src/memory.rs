//! How much GPU memory the models' tensors take: the device's stream-ordered memory pool, which
//! every allocation of candle and of these kernels (cuDNN and cuBLASLt workspaces included) comes
//! from. nvidia-smi's `memory.used` also counts the CUDA context and the pool's free blocks, so
//! it cannot be set against PyTorch's `max_memory_allocated`; the pool's high-water mark can.

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, Result};

/// The default memory pool of `dev`'s GPU (the one `cuMemAllocAsync` draws from).
fn pool(dev: &CudaDevice) -> Result<sys::CUmemoryPool> {
    let mut pool = std::ptr::null_mut();
    let device = dev.cuda_stream().context().cu_device();
    // SAFETY: `pool` is a valid out pointer and `device` a device handle of a live context.
    unsafe { sys::cuDeviceGetDefaultMemPool(&mut pool, device) }.result().w()?;
    if pool.is_null() {
        bail!("the GPU has no default memory pool");
    }
    Ok(pool)
}

/// Bytes handed out by `dev`'s pool at most since the last [`reset_allocated_peak`]: live
/// tensors and workspaces, like PyTorch's `torch.cuda.max_memory_allocated`.
pub fn allocated_peak(dev: &CudaDevice) -> Result<u64> {
    let mut bytes = 0u64;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: USED_MEM_HIGH is a u64 attribute; `bytes` outlives the call.
    unsafe { sys::cuMemPoolGetAttribute(pool(dev)?, attr, (&mut bytes as *mut u64).cast()) }.result().w()?;
    Ok(bytes)
}

/// Starts a new high-water mark for [`allocated_peak`] at what is allocated now (synchronises
/// first, so work still queued counts towards the old mark).
pub fn reset_allocated_peak(dev: &CudaDevice) -> Result<()> {
    dev.cuda_stream().synchronize().w()?;
    let mut zero = 0u64;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH;
    // SAFETY: setting USED_MEM_HIGH takes a u64 that must be zero (a reset).
    unsafe { sys::cuMemPoolSetAttribute(pool(dev)?, attr, (&mut zero as *mut u64).cast()) }.result().w()?;
    Ok(())
}

/// Keeps freed memory in `dev`'s pool instead of handing it back to the driver at every
/// synchronisation (the pool's default release threshold is 0). A model stage synchronises once
/// per item (its output goes to the host), so without this each VAE call re-maps gigabytes of
/// activations; PyTorch's caching allocator keeps its blocks the same way.
pub fn keep_freed_memory(dev: &CudaDevice) -> Result<()> {
    let mut all = u64::MAX;
    let attr = sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD;
    // SAFETY: RELEASE_THRESHOLD is a u64 attribute; `all` outlives the call.
    unsafe { sys::cuMemPoolSetAttribute(pool(dev)?, attr, (&mut all as *mut u64).cast()) }.result().w()?;
    Ok(())
}

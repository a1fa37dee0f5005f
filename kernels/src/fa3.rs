//! Launcher of the FlashAttention-3-style kernel of `fa3.cu` for Hopper (wgmma tensor cores, TMA loads,
//! a producer warpgroup and three consumer warpgroups): self-attention with head dim 72 in bf16, the
//! MUG-DiT's attention. Its PTX targets `sm_90a`, which the driver compiles for devices of compute
//! capability exactly 9.0 (H100, H200) and no other, so [`unsupported`] checks the device as well as
//! the shape. q, k and v are read in place through six TMA tensor maps (two column panels each), so the
//! strided views of a fused qkv projection need no copy.

use candle_core::cuda_backend::cudarc::driver::sys;
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DeviceRepr, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::WrapErr;
use candle_core::{Context, CudaDevice, Result};
use half::bf16;

/// `fa3.cu` compiled for `sm_90a`; empty when the crate was built for another compute capability.
const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fa3.ptx"));
const MODULE: &str = "mugflow_fa3";
const FUNC: &str = "fa3_attention_hd72";

/// The one head dim the kernel is written for.
pub(crate) const HEAD_DIM: usize = 72;
/// Query rows per block (`fa3::BM`, 64 per consumer warpgroup), keys per K/V tile (`fa3::BN`),
/// threads (a producer and three consumer warpgroups).
const BLOCK_ROWS: usize = 192;
const KEY_ROWS: u32 = 128;
const THREADS: u32 = 512;
/// Dynamic shared memory of a block, `fa3::SMEM`: the Q tile and two stages of a K and a V tile
/// (Q and K: a 128-byte-row panel and a 32-byte-row panel; V: two 128-byte-row panels; every panel
/// a multiple of 1024 bytes), 9 mbarriers and the slack to align the base. The kernel traps if it
/// gets less.
const SMEM_BYTES: u32 = {
    let q = BLOCK_ROWS as u32 * (128 + 32);
    let k = KEY_ROWS * (128 + 32);
    let v = KEY_ROWS * 2 * 128;
    q + 2 * (k + v) + 8 * 9 + 1024
};

/// The six tensor maps of a launch (q, k, v; each the columns 0..63 panel, then the one from column
/// 64), passed by value as the kernel's `__grid_constant__ fa3::TmaMaps`.
#[repr(C)]
struct TmaMaps([sys::CUtensorMap; 6]);

// SAFETY: plain bytes with the layout of `fa3::TmaMaps` (6 x 128 bytes); the driver copies them.
unsafe impl DeviceRepr for TmaMaps {}

/// Why the kernel cannot run this self-attention call, `None` when it can: `dims` `(B, H, Lq, Lk, D)`
/// and the `[batch, head, row]` element strides of q, k, v (already checked to be multiples of 8).
pub(crate) fn unsupported(
    dev: &CudaDevice,
    (b, h, lq, lk, d): (usize, usize, usize, usize, usize),
    strides: [[i64; 3]; 3],
) -> Result<Option<&'static str>> {
    let reason = if PTX.is_empty() {
        Some("the crate was built for another compute capability than 9.0 (CUDA_COMPUTE_CAP)")
    } else if d != HEAD_DIM {
        Some("the head dim is not 72")
    } else if lq != lk {
        Some("queries and keys differ in length")
    } else if b > 65_535 || h > 65_535 || lq > i32::MAX as usize {
        Some("the batch, the heads or the tokens exceed the grid")
    } else if strides.iter().flatten().any(|&s| s <= 0 || s >= 1 << 39) {
        // TMA takes byte strides in (0, 2^40).
        Some("a stride is zero, negative or too large for a tensor map")
    } else if dev.cuda_stream().context().compute_capability().w()? != (9, 0) {
        Some("the device's compute capability is not 9.0 (sm_90a code)")
    } else {
        None
    };
    Ok(reason)
}

/// Which columns a tensor map's box covers, and in which shared-memory layout.
#[derive(Clone, Copy, PartialEq)]
enum Panel {
    /// Columns 0..63 in 128-byte swizzle.
    A,
    /// Columns 64..79 in 32-byte swizzle (q and k, the K dimension of Q K^T padded to 80).
    B,
    /// Columns 64..127 in 128-byte swizzle (v: the second 64-column atom of the n72 P V).
    BWide,
}

/// A tensor map over the `[B, N, H, 72]` view at `ptr` with `[batch, head, row]` element `strides`:
/// boxes of `rows` tokens of one head and the columns of `panel` (the kernel loads `Panel::A` from
/// column 0, the others from column 64); TMA fills the columns past 72 and the tokens past N with zeros.
fn tensor_map(
    ptr: sys::CUdeviceptr,
    (b, h, n): (usize, usize, usize),
    strides: [i64; 3],
    rows: u32,
    panel: Panel,
) -> Result<sys::CUtensorMap> {
    use sys::CUtensorMapSwizzle::{CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_SWIZZLE_32B};
    let dims = [HEAD_DIM as u64, h as u64, n as u64, b as u64];
    let bytes = |s: i64| s as u64 * std::mem::size_of::<bf16>() as u64;
    let byte_strides = [bytes(strides[1]), bytes(strides[2]), bytes(strides[0])];
    let sw32 = panel == Panel::B;
    let boxes = [if sw32 { 16 } else { 64 }, 1, rows, 1];
    let element_strides = [1u32; 4];
    let mut map = std::mem::MaybeUninit::<sys::CUtensorMap>::uninit();
    // SAFETY: every array has the rank's (4) or rank - 1 entries; the address is the view's device
    // pointer (16-byte aligned, checked by the caller); the driver only writes the map.
    let status = unsafe {
        sys::cuTensorMapEncodeTiled(
            map.as_mut_ptr(),
            sys::CUtensorMapDataType::CU_TENSOR_MAP_DATA_TYPE_BFLOAT16,
            4,
            ptr as *mut std::ffi::c_void,
            dims.as_ptr(),
            byte_strides.as_ptr(),
            boxes.as_ptr(),
            element_strides.as_ptr(),
            sys::CUtensorMapInterleave::CU_TENSOR_MAP_INTERLEAVE_NONE,
            if sw32 { CU_TENSOR_MAP_SWIZZLE_32B } else { CU_TENSOR_MAP_SWIZZLE_128B },
            sys::CUtensorMapL2promotion::CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
            sys::CUtensorMapFloatOOBfill::CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE,
        )
    };
    status.result().with_context(|| {
        format!("flash_attention (Hopper): cannot encode a tensor map of dims {dims:?}, byte strides {byte_strides:?}")
    })?;
    // SAFETY: the driver wrote the map (success above).
    Ok(unsafe { map.assume_init() })
}

/// `o = softmax(q k^T * scale) v` for `dims` `(B, H, N, D = 72)`, q/k/v `[B, N, H, 72]` with
/// `[batch, head, row]` element `strides`, into the contiguous `[B, N, H, 72]` output `o`. The caller
/// has checked the call with [`unsupported`].
pub(crate) fn forward(
    dev: &CudaDevice,
    (b, h, n): (usize, usize, usize),
    (q, k, v): (&CudaView<'_, bf16>, &CudaView<'_, bf16>, &CudaView<'_, bf16>),
    strides: [[i64; 3]; 3],
    o: &mut CudaSlice<bf16>,
    scale: f32,
) -> Result<()> {
    let stream = dev.cuda_stream();
    let func = dev.get_or_load_custom_func(FUNC, MODULE, PTX)?;
    func.set_attribute(sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, SMEM_BYTES as i32)
        .with_context(|| format!("flash_attention (Hopper): cannot allow {SMEM_BYTES} bytes of shared memory"))?;
    let (qp, _sq) = q.device_ptr(&stream);
    let (kp, _sk) = k.device_ptr(&stream);
    let (vp, _sv) = v.device_ptr(&stream);
    let rows = BLOCK_ROWS as u32;
    let maps = TmaMaps([
        tensor_map(qp, (b, h, n), strides[0], rows, Panel::A)?,
        tensor_map(qp, (b, h, n), strides[0], rows, Panel::B)?,
        tensor_map(kp, (b, h, n), strides[1], KEY_ROWS, Panel::A)?,
        tensor_map(kp, (b, h, n), strides[1], KEY_ROWS, Panel::B)?,
        tensor_map(vp, (b, h, n), strides[2], KEY_ROWS, Panel::A)?,
        tensor_map(vp, (b, h, n), strides[2], KEY_ROWS, Panel::BWide)?,
    ]);
    let (ob, oh, orow) = ((n * h * HEAD_DIM) as i64, HEAD_DIM as i64, (h * HEAD_DIM) as i64);
    let n32 = n as i32;
    let scale_log2 = scale * std::f32::consts::LOG2_E;
    let mut a = func.builder();
    a.arg(&maps);
    a.arg(o);
    a.arg(&ob);
    a.arg(&oh);
    a.arg(&orow);
    a.arg(&n32);
    a.arg(&scale_log2);
    let cfg = LaunchConfig {
        grid_dim: (n.div_ceil(BLOCK_ROWS) as u32, h as u32, b as u32),
        block_dim: (THREADS, 1, 1),
        shared_mem_bytes: SMEM_BYTES,
    };
    // SAFETY: the maps cover exactly the q, k, v views (TMA never reads outside their dims); the
    // kernel writes rows below n of the [B, N, H, 72] output, which `o` holds.
    unsafe { a.launch(cfg) }.w()?;
    static FIRST: std::sync::Once = std::sync::Once::new();
    FIRST.call_once(|| crate::cuda::attention_log("Hopper kernel", &format!("first launch: B {b}, H {h}, N {n}")));
    Ok(())
}

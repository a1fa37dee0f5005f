//! Native 2-D and 3-D convolutions through cuDNN for the VAEs: tensor-op math, the algorithm found
//! by measuring every candidate once per shape (`cudnnFindConvolutionForwardAlgorithmEx`), the
//! descriptors and the chosen algorithm cached per shape, one workspace per device reused by every
//! call, cuDNN's tensor-core kernels fed channels-last copies, and the bias (and a residual) added
//! in the pass that copies the output back. Frames-first activations `(B, T, C, H, W)` (the Wan
//! VAE's) are convolved as `(B, C, T, H, W)` without a layout change ([`ConvLayout::FramesFirst`]).

use std::ffi::c_void;
use std::rc::Rc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{result, sys, CudnnError};
use candle_core::cuda_backend::cudarc::driver::{
    CudaSlice, CudaView, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use crate::cuda::{output, view, Aux, Element, MODULE, PTX};
use crate::cudnn::{with_cudnn, Cudnn};

/// Workspace offered to the algorithm search: candidates needing more (FFT variants on large
/// frames) are not timed.
const FIND_WORKSPACE: usize = 1 << 30;

/// Where the axes of a convolution's input and output lie in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConvLayout {
    /// `(N, C, spatial...)`, as PyTorch lays it out (the input in any strides).
    Standard,
    /// A 3-D convolution over contiguous `(N, D, C, H, W)`: the frames-first layout of the Wan
    /// VAE, whose activations are `(B, T, C, H, W)`; the output is `(N, D', Cout, H', W')`.
    FramesFirst,
}

/// A convolution `y = conv(x, w) + bias + residual` (cross-correlation, as PyTorch's `Conv2d`
/// and `Conv3d`) with `w` `(Cout, Cin, k...)`, symmetric zero `padding` and `stride` per spatial
/// axis, f32 or bf16 (f32 accumulation); `x` and the output in `layout`. `bias` is `[Cout]`;
/// `residual` has the output's shape and is added in the same pass. cuDNN convolves channels-last
/// (NHWC / NDHWC) copies, the layout its tensor-core kernels read, made and undone by batched
/// transposes (the output's fused with the bias and residual); `MUGFLOW_CONV_LAYOUT=strided`
/// hands cuDNN the tensors in place through their strides instead, to measure one against the other.
pub fn conv(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    residual: Option<&Tensor>,
    padding: &[usize],
    stride: &[usize],
    layout: ConvLayout,
) -> Result<Tensor> {
    let channels_last = !strided_only();
    // A channels-last view (a `(B, spatial..., C)` tensor permuted to `(B, C, spatial...)`, such as
    // `group_norm_channels_last` gives) goes to cuDNN as it is; anything else is made contiguous.
    let cl_view =
        layout == ConvLayout::Standard && x.stride() == strides_in_order(x.dims(), &channels_last_order(x.rank()));
    let x = if cl_view || !(channels_last || layout == ConvLayout::FramesFirst) { x.clone() } else { x.contiguous()? };
    let op = Conv {
        bias: bias.cloned(),
        residual: residual.map(Tensor::contiguous).transpose()?,
        padding: padding.to_vec(),
        stride: stride.to_vec(),
        layout,
        channels_last,
    };
    x.apply_op2_no_bwd(w, &op)
}

/// `MUGFLOW_CONV_LAYOUT=strided`: no channels-last copies (see [`conv`]).
fn strided_only() -> bool {
    static STRIDED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *STRIDED.get_or_init(|| std::env::var("MUGFLOW_CONV_LAYOUT").is_ok_and(|v| v == "strided"))
}

/// `MUGFLOW_CONV_LOG=1`: print each new shape's measured candidates to stderr.
fn log_plans() -> bool {
    static LOG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *LOG.get_or_init(|| std::env::var("MUGFLOW_CONV_LOG").is_ok_and(|v| v == "1"))
}

struct Conv {
    bias: Option<Tensor>,
    residual: Option<Tensor>,
    padding: Vec<usize>,
    stride: Vec<usize>,
    layout: ConvLayout,
    channels_last: bool,
}

/// An `i32` for cuDNN's descriptors, or an error naming what overflowed.
fn int(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| candle_core::Error::Msg(format!("conv: {what} {v} exceeds cuDNN's 32-bit sizes")))
}

/// A cuDNN failure of a convolution with what was being done.
fn cudnn_err(what: &str) -> impl Fn(CudnnError) -> candle_core::Error + '_ {
    crate::cudnn::cudnn_err("conv", what)
}

/// The memory order of `(N, C, spatial...)` axes in a channels-last layout, outermost first.
fn channels_last_order(rank: usize) -> Vec<usize> {
    std::iter::once(0).chain(2..rank).chain([1]).collect()
}

/// Row-major strides of `dims` laid out in the memory order `order` (outermost first).
fn strides_in_order(dims: &[usize], order: &[usize]) -> Vec<usize> {
    let mut strides = vec![0; dims.len()];
    let mut s = 1;
    for &axis in order.iter().rev() {
        strides[axis] = s;
        s *= dims[axis];
    }
    strides
}

/// The cached descriptors and measured algorithm of one convolution shape.
pub(crate) struct Plan {
    x: TensorDesc,
    w: FilterDesc,
    conv: ConvDesc,
    y: TensorDesc,
    algo: sys::cudnnConvolutionFwdAlgo_t,
    workspace: usize,
}

/// What identifies a [`Plan`]: dtype, the dims and strides of input and output as cuDNN sees them
/// (`(N, C, spatial...)`), filter dims, padding and stride.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    dtype: DType,
    x_dims: Vec<usize>,
    x_strides: Vec<usize>,
    y_dims: Vec<usize>,
    y_strides: Vec<usize>,
    w_dims: Vec<usize>,
    padding: Vec<usize>,
    stride: Vec<usize>,
}

macro_rules! descriptor {
    ($name:ident, $raw:ty, $create:path, $destroy:path) => {
        /// An owned cuDNN descriptor, destroyed on drop.
        struct $name($raw);
        impl $name {
            fn new() -> Result<Self> {
                Ok($name($create().map_err(cudnn_err(stringify!($create)))?))
            }
        }
        impl Drop for $name {
            fn drop(&mut self) {
                // SAFETY: created by `new` and destroyed only here. A failure cannot be reported
                // from drop; it would leak one descriptor.
                let _ = unsafe { $destroy(self.0) };
            }
        }
    };
}
descriptor!(
    TensorDesc,
    sys::cudnnTensorDescriptor_t,
    result::create_tensor_descriptor,
    result::destroy_tensor_descriptor
);
descriptor!(
    FilterDesc,
    sys::cudnnFilterDescriptor_t,
    result::create_filter_descriptor,
    result::destroy_filter_descriptor
);
descriptor!(
    ConvDesc,
    sys::cudnnConvolutionDescriptor_t,
    result::create_convolution_descriptor,
    result::destroy_convolution_descriptor
);

/// The cuDNN data type of a supported dtype, and the math type its convolutions may use.
fn types(dtype: DType) -> Result<(sys::cudnnDataType_t, sys::cudnnMathType_t)> {
    match dtype {
        // Tensor cores with f32 accumulation (PyTorch's "pseudo bf16" configuration).
        DType::BF16 => Ok((sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16, sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH)),
        // As PyTorch: TF32 allowed on Ampere and later unless NVIDIA_TF32_OVERRIDE=0.
        DType::F32 => Ok((sys::cudnnDataType_t::CUDNN_DATA_FLOAT, sys::cudnnMathType_t::CUDNN_DEFAULT_MATH)),
        dt => bail!("conv: unsupported dtype {dt:?}"),
    }
}

/// Raw pointers of the three operands of a convolution, for the algorithm search and the launch.
struct Operands {
    x: *const c_void,
    w: *const c_void,
    y: *mut c_void,
}

impl Plan {
    /// Builds the descriptors and finds the fastest algorithm by timing the candidates on the
    /// real operands (`y` is overwritten).
    fn find(key: &Key, cudnn: &mut Cudnn, dev: &CudaDevice, ops: &Operands) -> Result<Plan> {
        let (data, math) = types(key.dtype)?;
        let dims = |v: &[usize], what: &str| v.iter().map(|&d| int(d, what)).collect::<Result<Vec<_>>>();
        let (x, w, conv, y) = (TensorDesc::new()?, FilterDesc::new()?, ConvDesc::new()?, TensorDesc::new()?);
        let (xd, xs) = (dims(&key.x_dims, "input size")?, dims(&key.x_strides, "input stride")?);
        let (yd, ys) = (dims(&key.y_dims, "output size")?, dims(&key.y_strides, "output stride")?);
        let wd = dims(&key.w_dims, "filter size")?;
        let (pad, stride) = (dims(&key.padding, "padding")?, dims(&key.stride, "stride")?);
        let dilation = vec![1i32; pad.len()];
        let compute = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        // SAFETY: fresh descriptors; every array holds the number of entries passed with it.
        unsafe {
            result::set_tensornd_descriptor(x.0, data, xd.len() as i32, xd.as_ptr(), xs.as_ptr())
                .map_err(cudnn_err("input descriptor"))?;
            result::set_tensornd_descriptor(y.0, data, yd.len() as i32, yd.as_ptr(), ys.as_ptr())
                .map_err(cudnn_err("output descriptor"))?;
            result::set_filternd_descriptor(
                w.0,
                data,
                sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                wd.len() as i32,
                wd.as_ptr(),
            )
            .map_err(cudnn_err("filter descriptor"))?;
            result::set_convolutionnd_descriptor(
                conv.0,
                pad.len() as i32,
                pad.as_ptr(),
                stride.as_ptr(),
                dilation.as_ptr(),
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                compute,
            )
            .map_err(cudnn_err("convolution descriptor"))?;
            result::set_convolution_math_type(conv.0, math).map_err(cudnn_err("math type"))?;
        }
        let stream = dev.cuda_stream();
        // SAFETY: scratch memory for the search; cuDNN only writes it.
        let mut scratch = unsafe { dev.alloc::<u8>(FIND_WORKSPACE)? };
        let (scratch_ptr, _sync) = scratch.device_ptr_mut(&stream);
        const CANDIDATES: usize = sys::cudnnConvolutionFwdAlgo_t::CUDNN_CONVOLUTION_FWD_ALGO_COUNT as usize;
        // SAFETY: plain-data structs that cuDNN fills; `returned` says how many.
        let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; CANDIDATES] = unsafe { std::mem::zeroed() };
        let mut returned = 0i32;
        // SAFETY: descriptors set above match the operands' dtype, dims and strides (checked by
        // the caller); the scratch buffer holds FIND_WORKSPACE bytes.
        unsafe {
            sys::cudnnFindConvolutionForwardAlgorithmEx(
                cudnn.handle,
                x.0,
                ops.x,
                w.0,
                ops.w,
                conv.0,
                y.0,
                ops.y,
                CANDIDATES as i32,
                &mut returned,
                perf.as_mut_ptr(),
                scratch_ptr as *mut c_void,
                FIND_WORKSPACE,
            )
            .result()
            .map_err(cudnn_err("algorithm search"))?;
        }
        let perf = &perf[..returned.max(0) as usize];
        if log_plans() {
            eprintln!(
                "conv plan {:?} x {:?} {:?} w {:?} -> y {:?} {:?}",
                key.dtype, key.x_dims, key.x_strides, key.w_dims, key.y_dims, key.y_strides
            );
            for p in perf.iter().take(4) {
                let ms = p.time;
                eprintln!("  {:?} {:?} {:?} {ms:.3} ms {} MiB", p.algo, p.mathType, p.status, p.memory >> 20);
            }
        }
        // Results come fastest first; an f32 convolution never takes one that rounds to 16 bits.
        let best = perf
            .iter()
            .find(|p| {
                p.status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS
                    && !(key.dtype == DType::F32
                        && p.mathType == sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION)
            })
            .ok_or_else(|| candle_core::Error::Msg(format!("conv: cuDNN has no algorithm for {key:?}")))?;
        // SAFETY: the descriptor created above.
        unsafe { result::set_convolution_math_type(conv.0, best.mathType) }.map_err(cudnn_err("math type"))?;
        Ok(Plan { x, w, conv, y, algo: best.algo, workspace: best.memory })
    }
}

impl CustomOp2 for Conv {
    fn name(&self) -> &'static str {
        "conv"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        bail!("kernels::conv runs on CUDA only")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        match xs.dtype() {
            DType::F32 => self.launch::<f32>(xs, xl, ws, wl),
            DType::BF16 => self.launch::<bf16>(xs, xl, ws, wl),
            dt => bail!("conv: unsupported dtype {dt:?}"),
        }
    }
}

impl Conv {
    fn launch<T: Element + CudaDType>(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let wd = wl.dims();
        let rank = wd.len();
        let spatial = rank.saturating_sub(2);
        // The input's dims and strides as (N, C, spatial...).
        let frames_first = self.layout == ConvLayout::FramesFirst;
        let to_ncdhw = |v: &[usize]| if frames_first { vec![v[0], v[2], v[1], v[3], v[4]] } else { v.to_vec() };
        if xl.dims().len() != rank || (frames_first && rank != 5) {
            bail!("conv: input {:?} ({:?}) does not fit the filter {wd:?}", xl.dims(), self.layout);
        }
        let (xd, xst) = (to_ncdhw(xl.dims()), to_ncdhw(xl.stride()));
        if !(rank == 4 || rank == 5) || xd[1] != wd[1] || !wl.is_contiguous() {
            bail!("conv: input {xd:?} and contiguous filter {wd:?} must be (N, C, 2 or 3 axes), (Cout, C, k...)");
        }
        if self.padding.len() != spatial || self.stride.len() != spatial || self.stride.contains(&0) {
            bail!(
                "conv: {spatial} spatial axes need as many paddings and strides, got {:?} / {:?}",
                self.padding,
                self.stride
            );
        }
        let mut yd = vec![xd[0], wd[0]];
        for i in 0..spatial {
            let padded = xd[2 + i] + 2 * self.padding[i];
            if padded < wd[2 + i] {
                bail!("conv: axis {} of input {xd:?} is smaller than the filter {wd:?}", 2 + i);
            }
            yd.push((padded - wd[2 + i]) / self.stride[i] + 1);
        }
        let shape = Shape::from(to_ncdhw(&yd));
        if let Some(b) = &self.bias {
            if b.dims() != [wd[0]] || b.dtype() != xs.dtype() {
                bail!("conv: bias {:?} {:?} for {} output channels", b.dims(), b.dtype(), wd[0]);
            }
        }
        if let Some(r) = &self.residual {
            if r.dims() != shape.dims() || r.dtype() != xs.dtype() {
                bail!("conv: residual {:?} for an output of {:?}", r.dims(), shape.dims());
            }
        }
        // Memory order of the axes, outermost first.
        let channels_last = channels_last_order(rank);
        let input_cl = xst == strides_in_order(&xd, &channels_last);
        let model_order: Vec<usize> = if frames_first { vec![0, 2, 1, 3, 4] } else { (0..rank).collect() };
        let (x_strides, y_strides) = if self.channels_last {
            (strides_in_order(&xd, &channels_last), strides_in_order(&yd, &channels_last))
        } else {
            (xst, strides_in_order(&yd, &model_order))
        };
        let key = Key {
            dtype: xs.dtype(),
            x_dims: xd.clone(),
            x_strides,
            y_dims: yd.clone(),
            y_strides,
            w_dims: wd.to_vec(),
            padding: self.padding.clone(),
            stride: self.stride.clone(),
        };
        // Batches of [C, inner] blocks of the model's layout: (batches, inner) of input and output.
        let blocks =
            |d: &[usize]| if frames_first { (d[0] * d[2], d[3] * d[4]) } else { (d[0], d[2..].iter().product()) };
        let dev = xs.device();
        let x = view::<T>(xs, xl)?;
        let w = view::<T>(ws, wl)?;
        let n_out = shape.elem_count();
        if !self.channels_last {
            let mut y = output::<T>(dev, n_out)?;
            self.convolve(dev, &key, &x, &w, &mut y)?;
            if self.bias.is_some() || self.residual.is_some() {
                let (outer, inner) = blocks(&yd);
                self.epilogue::<T>(dev, &mut y, (outer * yd[1], yd[1], inner))?;
            }
            return Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape));
        }
        // SAFETY: written in full by the convolution.
        let mut y_cl = unsafe { dev.alloc::<T>(n_out)? };
        if input_cl {
            self.convolve(dev, &key, &x, &w, &mut y_cl)?;
        } else {
            // SAFETY: written in full by the transpose.
            let mut x_cl = unsafe { dev.alloc::<T>(xl.shape().elem_count())? };
            let (outer, inner) = blocks(&xd);
            transpose::<T>(dev, (&x, &mut x_cl), (None, None), (outer, xd[1], inner), true)?;
            self.convolve(dev, &key, &x_cl.slice(..), &w, &mut y_cl)?;
        }
        let mut y = output::<T>(dev, n_out)?;
        let bias = self.bias.as_ref().map(|b| Aux::new(b, "bias")).transpose()?;
        let residual = self.residual.as_ref().map(|r| Aux::new(r, "residual")).transpose()?;
        let bias = bias.as_ref().map(|b| b.view::<T>()).transpose()?;
        let residual = residual.as_ref().map(|r| r.view::<T>()).transpose()?;
        let (outer, inner) = blocks(&yd);
        transpose::<T>(
            dev,
            (&y_cl.slice(..), &mut y),
            (bias.as_ref(), residual.as_ref()),
            (outer, yd[1], inner),
            false,
        )?;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), shape))
    }

    /// `y = conv(x, w)` with the plan of `key` (found and cached on first use).
    fn convolve<T: Element>(
        &self,
        dev: &CudaDevice,
        key: &Key,
        x: &CudaView<'_, T>,
        w: &CudaView<'_, T>,
        y: &mut CudaSlice<T>,
    ) -> Result<()> {
        let stream = dev.cuda_stream();
        with_cudnn(dev, |cudnn| {
            let (xp, _sx) = x.device_ptr(&stream);
            let (wp, _sw) = w.device_ptr(&stream);
            let (yp, _sy) = y.device_ptr_mut(&stream);
            let ops = Operands { x: xp as *const c_void, w: wp as *const c_void, y: yp as *mut c_void };
            let plan = match cudnn.conv_plans.get(key) {
                Some(p) => p.clone(),
                None => {
                    let p = Rc::new(Plan::find(key, cudnn, dev, &ops)?);
                    cudnn.conv_plans.insert(key.clone(), p.clone());
                    p
                }
            };
            let handle = cudnn.handle;
            let scratch = cudnn.workspace(dev, plan.workspace)?;
            let bytes = scratch.len();
            let (sp, _ss) = scratch.device_ptr_mut(&stream);
            let (alpha, beta) = (1f32, 0f32);
            // SAFETY: the plan's descriptors were made for exactly these dtypes, dims and strides
            // (the key), the buffers hold the elements they describe and the workspace at least
            // the algorithm's bytes; f32 scaling factors for f32 and bf16 data, as cuDNN requires.
            unsafe {
                result::convolution_forward(
                    handle,
                    &alpha as *const f32 as *const c_void,
                    plan.x.0,
                    ops.x,
                    plan.w.0,
                    ops.w,
                    plan.conv.0,
                    plan.algo,
                    sp as *mut c_void,
                    bytes,
                    &beta as *const f32 as *const c_void,
                    plan.y.0,
                    ops.y,
                )
            }
            .map_err(cudnn_err("convolution"))
        })
    }

    /// `y += bias[row % c] + residual` over `rows` rows of `inner` elements, in place.
    fn epilogue<T: Element + CudaDType>(
        &self,
        dev: &CudaDevice,
        y: &mut CudaSlice<T>,
        (rows, c, inner): (usize, usize, usize),
    ) -> Result<()> {
        let bias = self.bias.as_ref().map(|b| Aux::new(b, "bias")).transpose()?;
        let residual = self.residual.as_ref().map(|r| Aux::new(r, "residual")).transpose()?;
        let bias = bias.as_ref().map(|b| b.view::<T>()).transpose()?;
        let residual = residual.as_ref().map(|r| r.view::<T>()).transpose()?;
        let null = 0u64;
        let (rows64, c32, inner64) = (rows as i64, c as i32, inner as i64);
        let func = dev.get_or_load_custom_func(&format!("conv_epilogue_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(y);
        push_optional(&mut a, bias.as_ref(), &null);
        push_optional(&mut a, residual.as_ref(), &null);
        a.arg(&rows64);
        a.arg(&c32);
        a.arg(&inner64);
        let cfg = LaunchConfig {
            grid_dim: (inner.div_ceil(256).clamp(1, 64) as u32, rows.clamp(1, 65535) as u32, 1),
            block_dim: (256, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: y holds rows * inner elements, the residual the same (checked against the
        // output's shape), the bias c elements; the kernel loops over rows beyond the grid.
        unsafe { a.launch(cfg) }.w()?;
        Ok(())
    }
}

/// Batched transposes between `outer` blocks of `[c, inner]` (the model's layout) and of
/// `[inner, c]` (channels-last): `to_cl` moves `src` to channels-last; otherwise `src` is
/// channels-last and `dst` gets `src + bias[c] + residual` in the model's layout.
fn transpose<T: Element>(
    dev: &CudaDevice,
    (src, dst): (&CudaView<'_, T>, &mut CudaSlice<T>),
    (bias, residual): (Option<&CudaView<'_, T>>, Option<&CudaView<'_, T>>),
    (outer, c, inner): (usize, usize, usize),
    to_cl: bool,
) -> Result<()> {
    if outer > 65535 || c.div_ceil(32) > 65535 {
        bail!("conv: {outer} blocks of {c} channels exceed the transpose's grid");
    }
    let null = 0u64;
    let (c32, inner64, to_cl32) = (c as i32, inner as i64, i32::from(to_cl));
    let func = dev.get_or_load_custom_func(&format!("cl_transpose_{}", T::SUFFIX), MODULE, PTX)?;
    let mut a = func.builder();
    a.arg(src);
    a.arg(dst);
    push_optional(&mut a, bias, &null);
    push_optional(&mut a, residual, &null);
    a.arg(&c32);
    a.arg(&inner64);
    a.arg(&to_cl32);
    let cfg = LaunchConfig {
        grid_dim: (inner.div_ceil(32) as u32, c.div_ceil(32) as u32, outer as u32),
        block_dim: (32, 8, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: src and dst hold outer * c * inner elements (the caller's tensors and buffers of the
    // convolution's input or output), the residual likewise, the bias c; the kernel guards the
    // edges of every tile.
    unsafe { a.launch(cfg) }.w()?;
    Ok(())
}

/// Pushes `v` as a kernel argument, or a null pointer when absent.
fn push_optional<'a, T>(
    a: &mut candle_core::cuda_backend::cudarc::driver::LaunchArgs<'a>,
    v: Option<&'a CudaView<'_, T>>,
    null: &'a u64,
) {
    match v {
        Some(v) => a.arg(v),
        None => a.arg(null),
    };
}

//! Linear layers through cuBLASLt, one product over all leading axes, with the bias (and GELU) in
//! the matrix product's epilogue:
//! `y = x w^T + b` (optionally `gelu_tanh(...)`, or plus a residual) in one pass over the output,
//! where a plain matmul would write it, then read and write it again for the bias, once more for
//! GELU or the residual add. On a DiT block's 50k-token outputs those passes are gigabytes each.
//!
//! The algorithm of each product shape is measured, not guessed: on a shape's first call the
//! candidates cuBLASLt's heuristic ranks first (up to [`CANDIDATES`]) each run on the real operands,
//! timed with CUDA events, and the fastest is kept for that shape (per thread and stream), as
//! `kernels::conv` keeps cuDNN's measured convolution algorithm. Small products take the heuristic's
//! first choice untimed. `MUGFLOW_LINEAR_LOG=1` prints each search.

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{result, sys};
use candle_core::cuda_backend::cudarc::driver::sys::CUevent_flags;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaStream, CudaView, DevicePtr, DevicePtrMut};
use candle_core::{bail, CudaDevice, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use crate::cuda::{output, view, Aux};

/// Workspace a product may use (cuBLASLt's recommendation on Hopper).
const WORKSPACE: usize = 32 << 20;
/// Candidates timed per shape.
const CANDIDATES: usize = 8;
/// Products of fewer multiply-adds than this (~10 us on an H100) take the heuristic's first choice
/// untimed: the search would cost more than it could save.
const SEARCH_MIN_MACS: u64 = 1 << 33;

thread_local! {
    /// One cuBLASLt handle, workspace and plan cache per thread and stream.
    static LT: RefCell<HashMap<usize, Lt>> = RefCell::new(HashMap::new());
}

/// A cuBLASLt handle with its workspace and the plans of the shapes it has run.
struct Lt {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: HashMap<PlanKey, Plan>,
}

impl Drop for Lt {
    fn drop(&mut self) {
        // SAFETY: the handle was created by `create_handle` and is destroyed once, here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// `(M, N, K, bias, gelu, residual)` of a product `y [M, N] = x [M, K] w [N, K]^T`.
type PlanKey = (usize, usize, usize, bool, bool, bool);

/// The descriptors of one product shape and its measured algorithm.
struct Plan {
    desc: MatmulDesc,
    /// Layouts of w (A), x (B) and y (C and D) in cuBLASLt's column-major view.
    layouts: [MatrixLayout; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

/// An owned matmul descriptor.
struct MatmulDesc(sys::cublasLtMatmulDesc_t);

impl MatmulDesc {
    /// Sets attribute `attr` to `value`, whose Rust type must be the C type cuBLASLt documents for
    /// it (`i32` for a flag, `u64` for a device pointer, `cublasLtEpilogue_t`).
    fn set<V>(&self, attr: sys::cublasLtMatmulDescAttributes_t, value: &V, what: &str) -> Result<()> {
        // SAFETY: `value` is passed by address with its size; cuBLASLt copies it.
        unsafe { result::set_matmul_desc_attribute(self.0, attr, (value as *const V).cast(), std::mem::size_of::<V>()) }
            .map_err(lt_err(what))
    }
}

impl Drop for MatmulDesc {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_desc`, destroyed once.
        let _ = unsafe { result::destroy_matmul_desc(self.0) };
    }
}

/// An owned matrix layout.
struct MatrixLayout(sys::cublasLtMatrixLayout_t);

impl Drop for MatrixLayout {
    fn drop(&mut self) {
        // SAFETY: created by `create_matrix_layout`, destroyed once.
        let _ = unsafe { result::destroy_matrix_layout(self.0) };
    }
}

/// An owned heuristic preference.
struct MatmulPref(sys::cublasLtMatmulPreference_t);

impl Drop for MatmulPref {
    fn drop(&mut self) {
        // SAFETY: created by `create_matmul_pref`, destroyed once.
        let _ = unsafe { result::destroy_matmul_pref(self.0) };
    }
}

/// A cuBLASLt error as a candle error naming the step.
fn lt_err(what: &str) -> impl Fn(result::CublasError) -> candle_core::Error + '_ {
    move |e| candle_core::Error::Msg(format!("linear: cuBLASLt {what}: {e:?}"))
}

/// Whether `MUGFLOW_LINEAR_LOG=1` is set (read once).
fn log_searches() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| std::env::var("MUGFLOW_LINEAR_LOG").is_ok_and(|v| v == "1"))
}

/// The device pointers of one product: `y = x w^T (+ bias) (+ residual)`.
struct Operands {
    w: u64,
    x: u64,
    y: u64,
    bias: Option<u64>,
    residual: Option<u64>,
}

impl Lt {
    fn new(dev: &CudaDevice) -> Result<Lt> {
        let handle = result::create_handle().map_err(lt_err("handle"))?;
        // SAFETY: a scratch buffer cuBLASLt may overwrite at will.
        let workspace = unsafe { dev.alloc::<u8>(WORKSPACE) }?;
        Ok(Lt { handle, workspace, plans: HashMap::new() })
    }

    /// Runs `plan` with `algo` on `ops`.
    fn launch(&self, plan: &Plan, algo: &sys::cublasLtMatmulAlgo_t, ops: &Operands, stream: &CudaStream) -> Result<()> {
        // The residual is cuBLASLt's C operand: y = x w^T + 1 * residual (+ bias).
        let (alpha, beta) = (1f32, if ops.residual.is_some() { 1f32 } else { 0f32 });
        let c_ptr = ops.residual.unwrap_or(ops.y);
        if let Some(bias) = &ops.bias {
            plan.desc.set(
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                bias,
                "bias pointer",
            )?;
        }
        let (ws, _ws_guard) = self.workspace.device_ptr(stream);
        let [a, b, c] = &plan.layouts;
        // SAFETY: the layouts describe the checked buffers behind the pointers (w N x K, x M x K,
        // y and the residual M x N elements, bias N), which stay alive for the call; cuBLASLt writes
        // only y (a fresh buffer, never the residual) and the workspace, on `stream`.
        unsafe {
            result::matmul(
                self.handle,
                plan.desc.0,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                ops.w as *const c_void,
                a.0,
                ops.x as *const c_void,
                b.0,
                c_ptr as *const c_void,
                c.0,
                ops.y as *mut c_void,
                c.0,
                algo,
                ws as *mut c_void,
                WORKSPACE,
                stream.cu_stream() as *mut _,
            )
        }
        .map_err(lt_err("matmul"))
    }

    /// The plan of `key`, made (and its algorithm measured on `ops`) on first use.
    fn plan(&mut self, key: PlanKey, ops: &Operands, stream: &CudaStream) -> Result<&Plan> {
        if !self.plans.contains_key(&key) {
            let plan = self.make_plan(key, ops, stream)?;
            self.plans.insert(key, plan);
        }
        Ok(&self.plans[&key])
    }

    fn make_plan(&self, key: PlanKey, ops: &Operands, stream: &CudaStream) -> Result<Plan> {
        let (m, n, k, bias, gelu, _) = key;
        let bf = sys::cudaDataType_t::CUDA_R_16BF;
        // Column-major view of row-major data: y^T [N, M] = w [N, K] (stored as K x N, transposed)
        // times x^T [K, M]; the bias runs along the N rows of y^T, as the epilogue adds it.
        let layout = |rows: usize, cols: usize| {
            result::create_matrix_layout(bf, rows as u64, cols as u64, rows as i64)
                .map(MatrixLayout)
                .map_err(lt_err("matrix layout"))
        };
        let layouts = [layout(k, n)?, layout(k, m)?, layout(n, m)?];
        let desc = MatmulDesc(
            result::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, sys::cudaDataType_t::CUDA_R_32F)
                .map_err(lt_err("matmul descriptor"))?,
        );
        let epilogue = match (bias, gelu) {
            (true, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU_BIAS,
            (true, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS,
            (false, true) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_GELU,
            (false, false) => sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT,
        };
        desc.set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA, &1i32, "transpose")?;
        desc.set(sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, "epilogue")?;
        let pref = MatmulPref(result::create_matmul_pref().map_err(lt_err("preference"))?);
        // SAFETY: as above.
        unsafe {
            result::set_matmul_pref_attribute(
                pref.0,
                sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&WORKSPACE as *const usize).cast(),
                std::mem::size_of::<usize>(),
            )
            .map_err(lt_err("workspace preference"))?;
        }
        // SAFETY: plain-old-data filled by cuBLASLt below.
        let mut found: [sys::cublasLtMatmulHeuristicResult_t; CANDIDATES] = unsafe { std::mem::zeroed() };
        let mut count = 0i32;
        let [a, b, c] = &layouts;
        // SAFETY: every descriptor is alive; `found` holds CANDIDATES results.
        unsafe {
            sys::cublasLtMatmulAlgoGetHeuristic(
                self.handle,
                desc.0,
                a.0,
                b.0,
                c.0,
                c.0,
                pref.0,
                CANDIDATES as i32,
                found.as_mut_ptr(),
                &mut count,
            )
            .result()
        }
        .map_err(lt_err("algorithm heuristic"))?;
        let candidates: Vec<sys::cublasLtMatmulAlgo_t> = found[..count.max(0) as usize]
            .iter()
            .filter(|r| r.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS)
            .map(|r| r.algo)
            .collect();
        let Some(&first) = candidates.first() else {
            bail!("linear: cuBLASLt has no algorithm for {m}x{n}x{k} (bias {bias}, gelu {gelu})");
        };
        let mut plan = Plan { desc, layouts, algo: first };
        if candidates.len() == 1 || ((m * n * k) as u64) < SEARCH_MIN_MACS {
            return Ok(plan);
        }
        // One warm-up call, then the mean of two timed calls, per candidate; the fastest is kept.
        let timed = |algo: &sys::cublasLtMatmulAlgo_t, plan: &Plan| -> Result<f32> {
            self.launch(plan, algo, ops, stream)?;
            let event = || stream.record_event(Some(CUevent_flags::CU_EVENT_DEFAULT)).map_err(candle_core::Error::wrap);
            let start = event()?;
            self.launch(plan, algo, ops, stream)?;
            self.launch(plan, algo, ops, stream)?;
            let end = event()?;
            Ok(start.elapsed_ms(&end).map_err(candle_core::Error::wrap)? / 2.0)
        };
        let mut times = Vec::with_capacity(candidates.len());
        for algo in &candidates {
            // A candidate that fails to run is skipped (the heuristic's list is a suggestion).
            times.push(timed(algo, &plan).ok());
        }
        let best = times
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|t| (i, t)))
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .map(|(i, _)| i);
        let Some(best) = best else {
            bail!("linear: no cuBLASLt algorithm ran for {m}x{n}x{k} (bias {bias}, gelu {gelu})");
        };
        if log_searches() {
            let ms: Vec<String> = times.iter().map(|t| t.map_or("failed".into(), |t| format!("{t:.3}"))).collect();
            eprintln!("linear {m}x{n}x{k} bias {bias} gelu {gelu}: candidates [{}] ms, kept #{best}", ms.join(", "));
        }
        plan.algo = candidates[best];
        Ok(plan)
    }
}

/// `x w^T (+ bias)` over the last axis of `x` (`[..., K]`), `w` `[N, K]`, `bias` `[N]`, all bf16
/// and contiguous, as one product over all leading axes; with `gelu` the tanh-approximated GELU of
/// that (as candle's `gelu` and PyTorch's `GELU(approximate="tanh")`). Returns `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &Linear { bias: bias.cloned(), gelu, residual: None })
}

/// `residual + x w^T (+ bias)`: [`linear`] with a transformer block's residual add in the product's
/// epilogue (cuBLASLt's C operand, summed in f32 and rounded once), one pass over the output
/// instead of a product and an add. `residual` is contiguous bf16 of the output's shape `[..., N]`.
pub fn linear_residual(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, residual: &Tensor) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &Linear { bias: bias.cloned(), gelu: false, residual: Some(residual.clone()) })
}

struct Linear {
    bias: Option<Tensor>,
    gelu: bool,
    /// Added to the product (the output's shape).
    residual: Option<Tensor>,
}

impl CustomOp2 for Linear {
    fn name(&self) -> &'static str {
        "linear-epilogue"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        bail!("kernels::linear runs on CUDA only")
    }

    fn cuda_fwd(&self, xs: &CudaStorage, xl: &Layout, ws: &CudaStorage, wl: &Layout) -> Result<(CudaStorage, Shape)> {
        let k = *xl.dims().last().unwrap_or(&0);
        let (n, wk) = wl.shape().dims2()?;
        if wk != k || self.bias.as_ref().is_some_and(|b| b.dims() != [n] || b.dtype() != DType::BF16) {
            bail!(
                "linear: x {:?}, weight {:?}, bias {:?} do not fit",
                xl.dims(),
                wl.dims(),
                self.bias.as_ref().map(Tensor::dims)
            );
        }
        if !(xl.is_contiguous() && wl.is_contiguous()) || [xs.dtype(), ws.dtype()] != [DType::BF16; 2] {
            bail!("linear: contiguous bf16 x and weight only");
        }
        let m = xl.shape().elem_count() / k.max(1);
        let dev = xs.device();
        let (x, w) = (view::<bf16>(xs, xl)?, view::<bf16>(ws, wl)?);
        let bias = self.bias.as_ref().map(|b| Aux::new(b, "linear bias")).transpose()?;
        let b = bias.as_ref().map(|b| b.view::<bf16>()).transpose()?;
        let mut out_dims = xl.dims().to_vec();
        *out_dims.last_mut().expect("x has at least one axis") = n;
        if let Some(r) = self.residual.as_ref().filter(|r| r.dims() != out_dims || r.dtype() != DType::BF16) {
            bail!("linear: residual {:?} {:?} for an output of {out_dims:?} (bf16)", r.dims(), r.dtype());
        }
        let residual = self.residual.as_ref().map(|r| Aux::new(r, "linear residual")).transpose()?;
        let res = residual.as_ref().map(|r| r.view::<bf16>()).transpose()?;
        let mut y = output::<bf16>(dev, m * n)?;
        let stream = dev.cuda_stream();
        {
            // The guards keep cudarc's stream-ordering records around the call.
            let ((wp, _w), (xp, _x)) = (w.device_ptr(&stream), x.device_ptr(&stream));
            let (bp, _b) = b.as_ref().map(|b: &CudaView<bf16>| b.device_ptr(&stream)).unzip();
            let (rp, _r) = res.as_ref().map(|r: &CudaView<bf16>| r.device_ptr(&stream)).unzip();
            let (yp, _y) = y.device_ptr_mut(&stream);
            let ops = Operands { w: wp, x: xp, y: yp, bias: bp, residual: rp };
            LT.with(|map| {
                let mut map = map.borrow_mut();
                let lt = match map.entry(stream.cu_stream() as usize) {
                    std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                    std::collections::hash_map::Entry::Vacant(e) => e.insert(Lt::new(dev)?),
                };
                let key = (m, n, k, bp.is_some(), self.gelu, rp.is_some());
                let algo = lt.plan(key, &ops, &stream)?.algo;
                lt.launch(&lt.plans[&key], &algo, &ops, &stream)
            })?;
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from(out_dims)))
    }
}

//! Fused attention through cuDNN's scaled-dot-product-attention forward operation (the backend
//! API's `SDPA_FWD` operation, cuDNN >= 9.13): the engine PyTorch's SDPA picks on Hopper, taking
//! head dims up to 256 in multiples of 8 (72 without padding) and the tensors in place through their
//! strides (q, k, v as views of a fused qkv projection). One plan per shape, found by cuDNN's
//! heuristics on first use and cached; a shape no engine takes is remembered, and the caller runs
//! its own kernel instead.

use std::ffi::{c_void, CStr};
use std::rc::Rc;

use candle_core::cuda_backend::cudarc::cudnn::sys;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DevicePtr, DevicePtrMut};
use candle_core::{CudaDevice, Result};
use half::bf16;

use crate::cudnn::{with_cudnn, Cudnn};

use sys::cudnnBackendAttributeName_t as A;
use sys::cudnnBackendAttributeType_t as T;
use sys::cudnnBackendDescriptorType_t as D;

/// Unique ids of the operands in the graph and the variant pack.
const UID_Q: i64 = 1;
const UID_K: i64 = 2;
const UID_V: i64 = 3;
const UID_O: i64 = 4;
const UID_SCALE: i64 = 5;

/// What identifies a [`Plan`]: batch, heads, query and key lengths, head dim, and the
/// `[batch, head, row]` strides (elements) of q, k, v and the output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    /// `(B, H, Lq, Lk, D)`.
    pub(crate) dims: (usize, usize, usize, usize, usize),
    /// Strides of q, k, v, o.
    pub(crate) strides: [[i64; 3]; 4],
}

/// An owned backend descriptor, destroyed on drop.
struct Desc(sys::cudnnBackendDescriptor_t);

impl Desc {
    fn new(kind: D, what: &str) -> Result<Desc> {
        let mut d: sys::cudnnBackendDescriptor_t = std::ptr::null_mut();
        // SAFETY: cuDNN writes a new descriptor into `d`.
        check(unsafe { sys::cudnnBackendCreateDescriptor(kind, &mut d) }, what)?;
        Ok(Desc(d))
    }

    /// Sets attribute `name` to the `vals` (of cuDNN type `ty`).
    fn set<V>(&self, name: A, ty: T, vals: &[V], what: &str) -> Result<()> {
        // SAFETY: `vals` holds `len` elements of the C type that `ty` names (the callers pair them).
        check(unsafe { sys::cudnnBackendSetAttribute(self.0, name, ty, vals.len() as i64, vals.as_ptr().cast()) }, what)
    }

    /// Reads up to `out.len()` elements of attribute `name` (of cuDNN type `ty`) into `out` (none
    /// for a count query with an empty `out`); returns how many the attribute holds.
    fn get<V>(&self, name: A, ty: T, out: &mut [V], what: &str) -> Result<i64> {
        let mut count = 0i64;
        let ptr = if out.is_empty() { std::ptr::null_mut() } else { out.as_mut_ptr().cast::<c_void>() };
        // SAFETY: `out` has room for the `len` elements of the C type that `ty` names (the callers
        // pair them); cuDNN writes at most that many.
        check(unsafe { sys::cudnnBackendGetAttribute(self.0, name, ty, out.len() as i64, &mut count, ptr) }, what)?;
        Ok(count)
    }

    fn finalize(&self, what: &str) -> Result<()> {
        // SAFETY: a live descriptor.
        check(unsafe { sys::cudnnBackendFinalize(self.0) }, what)
    }
}

impl Drop for Desc {
    fn drop(&mut self) {
        // SAFETY: created by `new` and destroyed only here.
        let _ = unsafe { sys::cudnnBackendDestroyDescriptor(self.0) };
    }
}

/// An error naming the step and cuDNN's own explanation, for a status other than success.
fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        return Ok(());
    }
    let mut msg = [0 as std::ffi::c_char; 512];
    // SAFETY: cuDNN writes a NUL-terminated string of at most `msg.len()` bytes.
    unsafe { sys::cudnnGetLastErrorString(msg.as_mut_ptr(), msg.len()) };
    // SAFETY: NUL-terminated above (zero-initialised, cuDNN terminates within the buffer).
    let detail = unsafe { CStr::from_ptr(msg.as_ptr()) }.to_string_lossy();
    candle_core::bail!("attention: cuDNN {what}: {status:?} {detail}")
}

/// A finalized execution plan and its workspace size; the descriptors it was built from live as
/// long as it does.
pub(crate) struct Plan {
    plan: Desc,
    workspace: usize,
    _parts: Vec<Desc>,
}

/// A tensor descriptor: `dtype`, 4-D `dims` and `strides` (elements), `alignment` bytes;
/// `by_value` for a host scalar passed in the variant pack (the scale).
fn tensor(
    uid: i64,
    dtype: sys::cudnnDataType_t,
    dims: [i64; 4],
    strides: [i64; 4],
    alignment: i64,
    by_value: bool,
) -> Result<Desc> {
    let t = Desc::new(D::CUDNN_BACKEND_TENSOR_DESCRIPTOR, "tensor descriptor")?;
    t.set(A::CUDNN_ATTR_TENSOR_DATA_TYPE, T::CUDNN_TYPE_DATA_TYPE, &[dtype], "dtype")?;
    t.set(A::CUDNN_ATTR_TENSOR_DIMENSIONS, T::CUDNN_TYPE_INT64, &dims, "dims")?;
    t.set(A::CUDNN_ATTR_TENSOR_STRIDES, T::CUDNN_TYPE_INT64, &strides, "strides")?;
    t.set(A::CUDNN_ATTR_TENSOR_UNIQUE_ID, T::CUDNN_TYPE_INT64, &[uid], "uid")?;
    t.set(A::CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, T::CUDNN_TYPE_INT64, &[alignment], "alignment")?;
    if by_value {
        t.set(A::CUDNN_ATTR_TENSOR_IS_BY_VALUE, T::CUDNN_TYPE_BOOLEAN, &[true], "by value")?;
    }
    t.finalize("tensor descriptor")?;
    Ok(t)
}

/// A bf16 operand `[B, H, L, D]` with `[batch, head, row]` strides and a contiguous last axis.
fn operand(uid: i64, dims: [usize; 4], s: [i64; 3]) -> Result<Desc> {
    let dims = dims.map(|v| v as i64);
    tensor(uid, sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16, dims, [s[0], s[1], s[2], 1], 16, false)
}

impl Plan {
    /// The graph of one SDPA forward operation for `key`, and the first engine configuration of
    /// cuDNN's heuristics that builds an execution plan; `None` when no engine takes the shape.
    fn build(key: &Key, cudnn: &Cudnn) -> Result<Option<Plan>> {
        let (b, h, lq, lk, d) = key.dims;
        let [qs, ks, vs, os] = key.strides;
        let q = operand(UID_Q, [b, h, lq, d], qs)?;
        let k = operand(UID_K, [b, h, lk, d], ks)?;
        let v = operand(UID_V, [b, h, lk, d], vs)?;
        let o = operand(UID_O, [b, h, lq, d], os)?;
        let scale = tensor(UID_SCALE, sys::cudnnDataType_t::CUDNN_DATA_FLOAT, [1; 4], [1; 4], 4, true)?;

        let op = Desc::new(D::CUDNN_BACKEND_OPERATION_SDPA_FWD_DESCRIPTOR, "SDPA operation")?;
        let bd = T::CUDNN_TYPE_BACKEND_DESCRIPTOR;
        op.set(A::CUDNN_ATTR_OPERATION_SDPA_FWD_QDESC, bd, &[q.0], "q")?;
        op.set(A::CUDNN_ATTR_OPERATION_SDPA_FWD_KDESC, bd, &[k.0], "k")?;
        op.set(A::CUDNN_ATTR_OPERATION_SDPA_FWD_VDESC, bd, &[v.0], "v")?;
        op.set(A::CUDNN_ATTR_OPERATION_SDPA_FWD_ODESC, bd, &[o.0], "o")?;
        op.set(A::CUDNN_ATTR_OPERATION_SDPA_FWD_SCALEDESC, bd, &[scale.0], "scale")?;
        op.finalize("SDPA operation")?;

        let graph = Desc::new(D::CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, "operation graph")?;
        graph.set(A::CUDNN_ATTR_OPERATIONGRAPH_HANDLE, T::CUDNN_TYPE_HANDLE, &[cudnn.handle], "graph handle")?;
        graph.set(A::CUDNN_ATTR_OPERATIONGRAPH_OPS, bd, &[op.0], "graph ops")?;
        graph.finalize("operation graph")?;

        let heur = Desc::new(D::CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, "heuristics")?;
        heur.set(A::CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, bd, &[graph.0], "heuristics graph")?;
        heur.set(
            A::CUDNN_ATTR_ENGINEHEUR_MODE,
            T::CUDNN_TYPE_HEUR_MODE,
            &[sys::cudnnBackendHeurMode_t::CUDNN_HEUR_MODE_A],
            "heuristics mode",
        )?;
        heur.finalize("heuristics")?;
        let count = heur.get::<sys::cudnnBackendDescriptor_t>(
            A::CUDNN_ATTR_ENGINEHEUR_RESULTS,
            bd,
            &mut [],
            "heuristics count",
        )?;
        let configs = (0..count)
            .map(|_| Desc::new(D::CUDNN_BACKEND_ENGINECFG_DESCRIPTOR, "engine config"))
            .collect::<Result<Vec<_>>>()?;
        // cuDNN fills the created engine-config descriptors.
        let mut raw: Vec<sys::cudnnBackendDescriptor_t> = configs.iter().map(|c| c.0).collect();
        let got = heur.get(A::CUDNN_ATTR_ENGINEHEUR_RESULTS, bd, &mut raw, "heuristics results")?.min(count);
        let mut parts = vec![q, k, v, o, scale, op, graph, heur];
        for (i, config) in configs.into_iter().take(got.max(0) as usize).enumerate() {
            let plan = Desc::new(D::CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, "execution plan")?;
            plan.set(A::CUDNN_ATTR_EXECUTION_PLAN_HANDLE, T::CUDNN_TYPE_HANDLE, &[cudnn.handle], "plan handle")?;
            plan.set(A::CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, bd, &[config.0], "plan engine")?;
            if let Err(e) = plan.finalize("execution plan") {
                log(&format!("engine config {i} of {got} declined: {e}"));
                continue;
            }
            let mut workspace = [0i64];
            plan.get(
                A::CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE,
                T::CUDNN_TYPE_INT64,
                &mut workspace,
                "workspace size",
            )?;
            let workspace = workspace[0];
            log(&format!("{key:?}: engine config {i} of {got}, workspace {workspace} bytes"));
            parts.push(config);
            return Ok(Some(Plan { plan, workspace: workspace.max(0) as usize, _parts: parts }));
        }
        log(&format!("{key:?}: none of {got} engine configs builds a plan"));
        Ok(None)
    }
}

/// `MUGFLOW_ATTENTION_LOG=1`: print the plan found for each new shape to stderr.
fn log(line: &str) {
    crate::cuda::attention_log("cuDNN SDPA", line);
}

/// `o = softmax(q k^T * scale) v` through cuDNN for the shape and strides of `key`; `Ok(false)`
/// (nothing written) when cuDNN has no engine for it.
pub(crate) fn forward(
    dev: &CudaDevice,
    key: &Key,
    (q, k, v): (&CudaView<'_, bf16>, &CudaView<'_, bf16>, &CudaView<'_, bf16>),
    o: &mut CudaSlice<bf16>,
    scale: f32,
) -> Result<bool> {
    let stream = dev.cuda_stream();
    with_cudnn(dev, |cudnn| {
        let plan = match cudnn.sdpa_plans.get(key) {
            Some(p) => p.clone(),
            None => {
                let p = Plan::build(key, cudnn)?.map(Rc::new);
                cudnn.sdpa_plans.insert(key.clone(), p.clone());
                p
            }
        };
        let Some(plan) = plan else { return Ok(false) };
        let handle = cudnn.handle;
        let scratch = cudnn.workspace(dev, plan.workspace)?;
        let (wp, _sw) = scratch.device_ptr_mut(&stream);
        let (qp, _sq) = q.device_ptr(&stream);
        let (kp, _sk) = k.device_ptr(&stream);
        let (vp, _sv) = v.device_ptr(&stream);
        let (op, _so) = o.device_ptr_mut(&stream);
        let pointers: [*mut c_void; 5] = [
            qp as *mut c_void,
            kp as *mut c_void,
            vp as *mut c_void,
            op as *mut c_void,
            (&scale as *const f32).cast_mut().cast(),
        ];
        let pack = Desc::new(D::CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, "variant pack")?;
        pack.set(
            A::CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS,
            T::CUDNN_TYPE_INT64,
            &[UID_Q, UID_K, UID_V, UID_O, UID_SCALE],
            "uids",
        )?;
        pack.set(A::CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, T::CUDNN_TYPE_VOID_PTR, &pointers, "pointers")?;
        pack.set(A::CUDNN_ATTR_VARIANT_PACK_WORKSPACE, T::CUDNN_TYPE_VOID_PTR, &[wp as *mut c_void], "workspace")?;
        pack.finalize("variant pack")?;
        // SAFETY: the plan was built for exactly these dims and strides (the key, checked by the
        // caller against the buffers), the workspace holds the plan's bytes, and the host scale
        // outlives the call (cuDNN reads by-value operands while enqueueing).
        check(unsafe { sys::cudnnBackendExecute(handle, plan.plan.0, pack.0) }, "execute")?;
        Ok(true)
    })
}

//! The cuDNN state the convolutions and the fused attention share: one handle per thread and
//! device bound to candle's stream, each op's cached plans, and one workspace reused by every call.

use std::cell::RefCell;
use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::rc::Rc;

use candle_core::cuda_backend::cudarc::cudnn::{result, sys, CudnnError};
use candle_core::cuda_backend::cudarc::driver::CudaSlice;
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, Result};

use crate::{conv, sdpa};

/// A cuDNN handle bound to one device's stream, with the plans and workspace of that device.
pub(crate) struct Cudnn {
    /// The handle every call of this thread and device goes through.
    pub(crate) handle: sys::cudnnHandle_t,
    /// Convolution plans by shape.
    pub(crate) conv_plans: HashMap<conv::Key, Rc<conv::Plan>>,
    /// Attention plans by shape; `None` where cuDNN has no engine for the shape (not asked again).
    pub(crate) sdpa_plans: HashMap<sdpa::Key, Option<Rc<sdpa::Plan>>>,
    workspace: Option<CudaSlice<u8>>,
}

impl Cudnn {
    /// The shared scratch buffer, grown to at least `bytes` (at least one byte).
    pub(crate) fn workspace(&mut self, dev: &CudaDevice, bytes: usize) -> Result<&mut CudaSlice<u8>> {
        if self.workspace.as_ref().is_none_or(|s| s.len() < bytes) {
            // Release the old workspace before allocating the larger one.
            self.workspace = None;
            // SAFETY: scratch memory for cuDNN, which only writes before it reads.
            self.workspace = Some(unsafe { dev.alloc::<u8>(bytes.max(1))? });
        }
        Ok(self.workspace.as_mut().expect("allocated above"))
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        // SAFETY: created in `with_cudnn` and destroyed only here.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

thread_local! {
    /// cuDNN handles are not thread-safe: one per thread and device (keyed by the stream).
    static CUDNN: RefCell<HashMap<usize, Cudnn>> = RefCell::new(HashMap::new());
}

/// Runs `f` with this thread's cuDNN state for `dev`'s stream, creating it on first use.
pub(crate) fn with_cudnn<R>(dev: &CudaDevice, f: impl FnOnce(&mut Cudnn) -> Result<R>) -> Result<R> {
    let stream = dev.cuda_stream();
    let key = stream.cu_stream() as usize;
    CUDNN.with(|map| {
        let mut map = map.borrow_mut();
        let state = match map.entry(key) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(e) => {
                stream.context().bind_to_thread().w()?;
                let handle = result::create_handle().map_err(cudnn_err("cuDNN", "create handle"))?;
                // Owned from here on: dropped (destroyed) if binding the stream fails.
                let state = Cudnn { handle, conv_plans: HashMap::new(), sdpa_plans: HashMap::new(), workspace: None };
                // SAFETY: a fresh handle and candle's live stream of this device.
                unsafe { result::set_stream(state.handle, stream.cu_stream() as sys::cudaStream_t) }
                    .map_err(cudnn_err("cuDNN", "set stream"))?;
                e.insert(state)
            }
        };
        f(state)
    })
}

/// A cuDNN failure of `op` with what was being done.
pub(crate) fn cudnn_err<'a>(op: &'a str, what: &'a str) -> impl Fn(CudnnError) -> candle_core::Error + 'a {
    move |e| candle_core::Error::Msg(format!("{op}: cuDNN {what}: {e:?}"))
}

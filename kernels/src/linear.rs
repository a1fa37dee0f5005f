//! Linear layers through cuBLASLt, one product over all leading axes, with the bias (and GELU) in
//! the matrix product's epilogue:
//! `y = x w^T + b` (optionally `gelu_tanh(...)`) in one pass over the output, where a plain
//! matmul would write it, then read and write it again for the bias and once more for GELU. On a
//! DiT block's 50k-token outputs those passes are gigabytes each.

use std::cell::RefCell;
use std::collections::HashMap;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cublaslt::{Activation, CudaBlasLT, Matmul, MatmulConfig};
use candle_core::{bail, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};
use half::bf16;

use crate::cuda::{output, view, Aux};

thread_local! {
    /// One cuBLASLt handle (and its workspace) per thread and stream.
    static LT: RefCell<HashMap<usize, CudaBlasLT>> = RefCell::new(HashMap::new());
}

/// `x w^T (+ bias)` over the last axis of `x` (`[..., K]`), `w` `[N, K]`, `bias` `[N]`, all bf16
/// and contiguous, as one product over all leading axes; with `gelu` the tanh-approximated GELU of
/// that (as candle's `gelu` and PyTorch's `GELU(approximate="tanh")`). Returns `[..., N]`.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    x.apply_op2_no_bwd(w, &Linear { bias: bias.cloned(), gelu })
}

struct Linear {
    bias: Option<Tensor>,
    gelu: bool,
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
        let mut y = output::<bf16>(dev, m * n)?;
        // Column-major view of row-major data: y^T [N, M] = w [N, K] (stored as K x N, transposed)
        // times x^T [K, M]; the bias runs along the N rows of y^T, as the epilogue adds it.
        let cfg = MatmulConfig {
            transa: true,
            transb: false,
            transc: false,
            m: n as u64,
            n: m as u64,
            k: k as u64,
            alpha: 1.0,
            lda: k as i64,
            ldb: k as i64,
            beta: 0.0,
            ldc: n as i64,
            stride_a: None,
            stride_b: None,
            stride_c: None,
            stride_bias: None,
            batch_size: None,
        };
        let stream = dev.cuda_stream();
        let act = self.gelu.then_some(Activation::Gelu);
        LT.with(|map| {
            let mut map = map.borrow_mut();
            let key = stream.cu_stream() as usize;
            let lt = match map.entry(key) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(
                    CudaBlasLT::new(stream.clone())
                        .map_err(|e| candle_core::Error::Msg(format!("linear: cuBLASLt handle: {e:?}")))?,
                ),
            };
            // SAFETY: the layouts describe exactly the checked, contiguous buffers: w N x K, x
            // M x K, y M x N elements, bias N (when given); cuBLASLt writes only y.
            unsafe { lt.matmul(cfg, &w, &x, &mut y, b.as_ref(), act.as_ref()) }
                .map_err(|e| candle_core::Error::Msg(format!("linear: cuBLASLt matmul {m}x{n}x{k}: {e:?}")))
        })?;
        let mut dims = xl.dims().to_vec();
        *dims.last_mut().expect("x has at least one axis") = n;
        Ok((CudaStorage::wrap_cuda_slice(y, dev.clone()), Shape::from(dims)))
    }
}

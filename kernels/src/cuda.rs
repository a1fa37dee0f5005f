//! Launchers for the fused kernels of `kernels.cu` as candle custom ops. Inputs are checked here
//! (shapes, dtypes, strides, alignment) so a kernel never reads out of bounds.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, DeviceRepr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::{CudaDType, WrapErr};
use candle_core::{bail, CudaDevice, CudaStorage, CustomOp1, CustomOp3, DType, Layout, Result, Shape, Storage, Tensor};
use half::bf16;

pub(crate) const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/kernels.ptx"));
pub(crate) const MODULE: &str = "mugflow_kernels";

/// Head dims the flash-attention kernel is compiled for (MUG-DiT 72, WAN 128, test models 24/64).
pub const FLASH_HEAD_DIMS: [usize; 4] = [24, 64, 72, 128];

/// Query rows and threads of one flash-attention block (`fa::BM`, `fa::THREADS` in kernels.cu).
const FLASH_BLOCK_ROWS: usize = 128;
const FLASH_THREADS: u32 = 256;

static POISON: AtomicBool = AtomicBool::new(false);

/// Which implementation [`flash_attention`] runs for self-attention (no key lengths).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBackend {
    /// cuDNN's fused SDPA where it has an engine for the shape, else [`AttentionBackend::Kernel`].
    Cudnn,
    /// The FlashAttention-2 kernel of `kernels.cu` (also every call with key lengths).
    Kernel,
    /// The FlashAttention-3-style kernel of `fa3.cu` (wgmma, TMA, warp specialisation) where it applies:
    /// head dim 72 self-attention on a device of compute capability 9.0 (H100, H200); every other call
    /// as [`AttentionBackend::Cudnn`].
    Hopper,
}

/// 0: not chosen yet (read `MUGFLOW_ATTENTION`), 1: cuDNN, 2: the kernel, 3: the Hopper kernel.
static ATTENTION: AtomicU8 = AtomicU8::new(0);

/// Chooses the attention implementation for this process, so benchmarks and tests can run each.
/// The default comes from `MUGFLOW_ATTENTION`: `cudnn` picks cuDNN, `kernel` the FlashAttention-2
/// kernel, anything else (unset included) the Hopper kernel where it applies and cuDNN elsewhere
/// (the fastest measured on the H200: 0.179 s against cuDNN's 0.218 s on the MUG-DiT's attention).
pub fn set_attention_backend(backend: AttentionBackend) {
    let code = match backend {
        AttentionBackend::Cudnn => 1,
        AttentionBackend::Kernel => 2,
        AttentionBackend::Hopper => 3,
    };
    ATTENTION.store(code, Ordering::SeqCst);
}

fn attention_backend() -> AttentionBackend {
    match ATTENTION.load(Ordering::SeqCst) {
        1 => AttentionBackend::Cudnn,
        2 => AttentionBackend::Kernel,
        3 => AttentionBackend::Hopper,
        _ => {
            let backend = match std::env::var("MUGFLOW_ATTENTION").as_deref() {
                Ok("kernel") => AttentionBackend::Kernel,
                Ok("cudnn") => AttentionBackend::Cudnn,
                _ => AttentionBackend::Hopper,
            };
            set_attention_backend(backend);
            backend
        }
    }
}

/// `MUGFLOW_ATTENTION_LOG=1`: prints `line` about the attention `engine` to stderr.
pub(crate) fn attention_log(engine: &str, line: &str) {
    static LOG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    if *LOG.get_or_init(|| std::env::var("MUGFLOW_ATTENTION_LOG").is_ok_and(|v| v == "1")) {
        eprintln!("attention ({engine}): {line}");
    }
}

/// Test aid: when on, every output buffer is filled with 0xFF bytes (NaN in bf16 and f32) before
/// the kernel runs, so an element a kernel fails to write shows up as NaN.
pub fn set_poison_outputs(on: bool) {
    POISON.store(on, Ordering::SeqCst);
}

/// A new output buffer of `n` elements, poisoned when [`set_poison_outputs`] is on.
pub(crate) fn output<T: DeviceRepr>(dev: &CudaDevice, n: usize) -> Result<CudaSlice<T>> {
    // SAFETY: the launching kernel writes every element (the poison test checks it).
    let mut out = unsafe { dev.alloc::<T>(n)? };
    if POISON.load(Ordering::SeqCst) {
        let bytes = (n * std::mem::size_of::<T>()) as i64;
        let func = dev.get_or_load_custom_func("poison_u8", MODULE, PTX)?;
        let mut b = func.builder();
        b.arg(&mut out);
        b.arg(&bytes);
        // SAFETY: the kernel writes `bytes` bytes of `out`.
        unsafe { b.launch(LaunchConfig { grid_dim: (1024, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }) }
            .w()?;
    }
    Ok(out)
}

/// The kernel-name suffix and the candle dtype of `T`.
pub(crate) trait Element: CudaDType + DeviceRepr {
    const SUFFIX: &'static str;
}
impl Element for f32 {
    const SUFFIX: &'static str = "f32";
}
impl Element for bf16 {
    const SUFFIX: &'static str = "bf16";
}

/// A kernel over one main input (f32 or bf16) and auxiliary tensors held by the op.
trait Kernel: Send + Sync {
    /// The op's name in candle's errors.
    const NAME: &'static str;
    /// Checks the inputs and launches the kernel for element type `T`.
    fn launch<T: Element>(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)>;
}

/// A [`Kernel`] as a candle op (CUDA only).
struct Op<K>(K);

impl<K: Kernel> CustomOp1 for Op<K> {
    fn name(&self) -> &'static str {
        K::NAME
    }

    fn cpu_fwd(&self, _: &candle_core::CpuStorage, _: &Layout) -> Result<(candle_core::CpuStorage, Shape)> {
        bail!("{} runs on CUDA only", K::NAME)
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        match s.dtype() {
            DType::F32 => self.0.launch::<f32>(s, l),
            DType::BF16 => self.0.launch::<bf16>(s, l),
            dt => bail!("{}: unsupported dtype {dt:?}", K::NAME),
        }
    }
}

/// The elements of `storage` from `layout`'s offset on.
pub(crate) fn view<'a, T: CudaDType>(storage: &'a CudaStorage, layout: &Layout) -> Result<CudaView<'a, T>> {
    Ok(storage.as_cuda_slice::<T>()?.slice(layout.start_offset()..))
}

/// A contiguous tensor's CUDA storage, read-locked for a launch.
pub(crate) struct Aux<'a> {
    guard: std::sync::RwLockReadGuard<'a, Storage>,
    layout: &'a Layout,
}

impl<'a> Aux<'a> {
    pub(crate) fn new(t: &'a Tensor, what: &str) -> Result<Self> {
        let (guard, layout) = t.storage_and_layout();
        if !layout.is_contiguous() {
            bail!("{what} must be contiguous");
        }
        Ok(Aux { guard, layout })
    }

    pub(crate) fn view<T: CudaDType>(&self) -> Result<CudaView<'_, T>> {
        match &*self.guard {
            Storage::Cuda(s) => view(s, self.layout),
            _ => bail!("kernels: every input must be on the CUDA device"),
        }
    }
}

/// Checks a per-token row table `[B or 1, R, D]` and row index `[B, L]` (u32) against `[B, L, D]`;
/// returns the table's batch stride and `R` (the kernels clamp row indices to `R - 1`).
fn check_table(table: &Tensor, rows: Option<&Tensor>, b: usize, l: usize, d: usize, what: &str) -> Result<(i64, i32)> {
    let (tb, r, td) = table.dims3()?;
    if td != d || (tb != 1 && tb != b) {
        bail!("{what}: table {:?} does not fit tokens [{b}, {l}, {d}]", table.dims());
    }
    match rows {
        Some(rows) if rows.dims() != [b, l] || rows.dtype() != DType::U32 => {
            bail!("{what}: rows must be u32 [{b}, {l}], got {:?} {:?}", rows.dtype(), rows.dims())
        }
        None if r != 1 => bail!("{what}: a table of {r} rows needs a row index per token"),
        _ => {}
    }
    Ok((if tb == 1 { 0 } else { (r * d) as i64 }, r as i32))
}

/// `softmax(q k^T * scale) v` per batch and head without the score matrix, in bf16 with f32
/// accumulation. `q` `[B, Lq, H, D]`, `k`/`v` `[B, Lk, H, D]` in any strides with a contiguous last
/// axis (e.g. views into a fused qkv projection); `k_lens` limits each batch's keys (cross-attention
/// over padded text). Returns `[B, Lq, H, D]` contiguous. Self-attention runs what
/// [`set_attention_backend`] chose (by default the Hopper kernel, then cuDNN's fused SDPA) where it
/// takes the shape, everything else the kernel of `kernels.cu` (head dims [`FLASH_HEAD_DIMS`]).
pub fn flash_attention(q: &Tensor, k: &Tensor, v: &Tensor, k_lens: Option<&[u32]>, scale: f32) -> Result<Tensor> {
    let route = match (k_lens, attention_backend()) {
        (Some(_), _) | (None, AttentionBackend::Kernel) => Route::KERNEL,
        (None, AttentionBackend::Cudnn) => Route { hopper: false, cudnn: true, kernel: true },
        (None, AttentionBackend::Hopper) => Route { hopper: true, cudnn: true, kernel: true },
    };
    q.apply_op3_no_bwd(k, v, &FlashAttention { scale, k_lens: k_lens.map(<[u32]>::to_vec), route, bias: None })
}

/// Head dims of [`flash_attention_bias`]'s kernel (T5's and UMT5's).
pub const FLASH_BIAS_HEAD_DIMS: [usize; 1] = [64];

/// `softmax(scale q k^T + bias[h]) v` with a per-head additive bias `[H, Lq, Lk]` (bf16, keys
/// contiguous) and optional per-batch key lengths, for T5's attention with its relative position
/// bias and padding mask: the scores never leave the chip, where the plain path writes and reads
/// back a `[B, H, Lq, Lk]` score matrix and its probabilities. q, k, v and the result as in
/// [`flash_attention`]; head dims [`FLASH_BIAS_HEAD_DIMS`].
pub fn flash_attention_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: &Tensor,
    k_lens: Option<&[u32]>,
    scale: f32,
) -> Result<Tensor> {
    let op =
        FlashAttention { scale, k_lens: k_lens.map(<[u32]>::to_vec), route: Route::KERNEL, bias: Some(bias.clone()) };
    q.apply_op3_no_bwd(k, v, &op)
}

/// [`flash_attention`] through cuDNN's fused SDPA only (no key lengths): an error when cuDNN has no
/// engine for the shape, instead of the kernel. For tests and benchmarks of that path.
pub fn cudnn_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let route = Route { hopper: false, cudnn: true, kernel: false };
    q.apply_op3_no_bwd(k, v, &FlashAttention { scale, k_lens: None, route, bias: None })
}

/// [`flash_attention`] through the Hopper kernel of `fa3.cu` only (no key lengths): an error saying
/// why when it does not take the call (head dim other than 72, a device other than compute capability
/// 9.0, ...), instead of another implementation. For tests and benchmarks of that path.
pub fn hopper_attention(q: &Tensor, k: &Tensor, v: &Tensor, scale: f32) -> Result<Tensor> {
    let route = Route { hopper: true, cudnn: false, kernel: false };
    q.apply_op3_no_bwd(k, v, &FlashAttention { scale, k_lens: None, route, bias: None })
}

/// Which implementations a [`FlashAttention`] may run, tried in this order: the Hopper kernel
/// (self-attention only), cuDNN (self-attention only), the FlashAttention-2 kernel.
#[derive(Clone, Copy)]
struct Route {
    hopper: bool,
    cudnn: bool,
    kernel: bool,
}

impl Route {
    const KERNEL: Route = Route { hopper: false, cudnn: false, kernel: true };
}

struct FlashAttention {
    scale: f32,
    k_lens: Option<Vec<u32>>,
    route: Route,
    /// A per-head score bias `[H, Lq, Lk]` (the bias kernel; never cuDNN).
    bias: Option<Tensor>,
}

/// Strides `[batch, head, row]` of a `[B, L, H, D]` layout, each a multiple of 8 elements (16 bytes).
fn bhl_strides(layout: &Layout, what: &str) -> Result<[i64; 3]> {
    let s = layout.stride();
    if s[3] != 1 || s[..3].iter().chain([&layout.start_offset()]).any(|v| !v.is_multiple_of(8)) {
        bail!("flash_attention: {what} needs a contiguous last axis and 16-byte aligned rows, got strides {s:?}");
    }
    Ok([s[0] as i64, s[2] as i64, s[1] as i64])
}

impl CustomOp3 for FlashAttention {
    fn name(&self) -> &'static str {
        "flash-attention"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> Result<(candle_core::CpuStorage, Shape)> {
        bail!("flash_attention runs on CUDA only")
    }

    fn cuda_fwd(
        &self,
        qs: &CudaStorage,
        ql: &Layout,
        ks: &CudaStorage,
        kl: &Layout,
        vs: &CudaStorage,
        vl: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (b, lq, h, d) = ql.shape().dims4()?;
        let (kb, lk, kh, kd) = kl.shape().dims4()?;
        if (kb, kh, kd) != (b, h, d) || vl.dims() != kl.dims() {
            bail!("flash_attention: q {:?}, k {:?}, v {:?} do not match", ql.dims(), kl.dims(), vl.dims());
        }
        if let Some(lens) = &self.k_lens {
            if lens.len() != b {
                bail!("flash_attention: {} key lengths for a batch of {b}", lens.len());
            }
        }
        let (qst, kst, vst) = (bhl_strides(ql, "q")?, bhl_strides(kl, "k")?, bhl_strides(vl, "v")?);
        let dev = qs.device();
        let q = view::<bf16>(qs, ql)?;
        let k = view::<bf16>(ks, kl)?;
        let v = view::<bf16>(vs, vl)?;
        let mut o = output::<bf16>(dev, b * lq * h * d)?;
        let ost = [(lq * h * d) as i64, d as i64, (h * d) as i64];
        let done = |o: CudaSlice<bf16>| -> Result<(CudaStorage, Shape)> {
            Ok((CudaStorage::wrap_cuda_slice(o, dev.clone()), Shape::from((b, lq, h, d))))
        };
        let self_attention = self.k_lens.is_none();
        if self.route.hopper && self_attention {
            match crate::fa3::unsupported(dev, (b, h, lq, lk, d), [qst, kst, vst])? {
                None => {
                    crate::fa3::forward(dev, (b, h, lq), (&q, &k, &v), [qst, kst, vst], &mut o, self.scale)?;
                    return done(o);
                }
                Some(why) if !self.route.cudnn && !self.route.kernel => {
                    bail!(
                        "hopper_attention: the Hopper kernel does not take q {:?}, k {:?}: {why}",
                        ql.dims(),
                        kl.dims()
                    )
                }
                Some(why) => attention_log("Hopper kernel", &format!("not for q {:?}: {why}", ql.dims())),
            }
        }
        if self.route.cudnn && self_attention && d % 8 == 0 && d <= 256 {
            let key = crate::sdpa::Key { dims: (b, h, lq, lk, d), strides: [qst, kst, vst, ost] };
            if crate::sdpa::forward(dev, &key, (&q, &k, &v), &mut o, self.scale)? {
                return done(o);
            }
        }
        if !self.route.kernel {
            bail!("cudnn_attention: cuDNN has no fused SDPA engine for q {:?}, k {:?}", ql.dims(), kl.dims());
        }
        if !FLASH_HEAD_DIMS.contains(&d) {
            bail!("flash_attention: head dim {d} is not one of {FLASH_HEAD_DIMS:?} (and cuDNN has no engine for it)");
        }
        let bias = match &self.bias {
            Some(t) => {
                if t.dims() != [h, lq, lk] || t.dtype() != DType::BF16 || !FLASH_BIAS_HEAD_DIMS.contains(&d) {
                    bail!(
                        "flash_attention_bias: bias {:?} {:?} for {h} heads x {lq} queries x {lk} keys at head dim {d}: \
                         needs a contiguous bf16 [H, Lq, Lk] and a head dim of {FLASH_BIAS_HEAD_DIMS:?}",
                        t.dims(),
                        t.dtype()
                    );
                }
                Some(Aux::new(t, "flash_attention_bias: the bias")?)
            }
            None => None,
        };
        let lens = self.k_lens.as_ref().map(|l| dev.clone_htod(l.as_slice())).transpose()?;
        let null = 0u64;
        let (lq32, lk32) = (lq as i32, lk as i32);
        let scale_log2 = self.scale * std::f32::consts::LOG2_E;
        let name =
            if bias.is_some() { format!("flash_attention_bias_hd{d}") } else { format!("flash_attention_hd{d}") };
        let func = dev.get_or_load_custom_func(&name, MODULE, PTX)?;
        let bias_view = bias.as_ref().map(|aux| aux.view::<bf16>()).transpose()?;
        let (bias_head, bias_row, bias_scale) = ((lq * lk) as i64, lk as i64, 1.0 / self.scale);
        let mut a = func.builder();
        a.arg(&q);
        a.arg(&k);
        a.arg(&v);
        a.arg(&mut o);
        for s in qst.iter().chain(&kst).chain(&vst).chain(&ost) {
            a.arg(s);
        }
        a.arg(&lq32);
        a.arg(&lk32);
        match &lens {
            Some(l) => a.arg(l),
            None => a.arg(&null),
        };
        a.arg(&scale_log2);
        if let Some(view) = &bias_view {
            a.arg(view);
            a.arg(&bias_head);
            a.arg(&bias_row);
            a.arg(&bias_scale);
        }
        let cfg = LaunchConfig {
            grid_dim: (lq.div_ceil(FLASH_BLOCK_ROWS) as u32, h as u32, b as u32),
            block_dim: (FLASH_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: shapes, strides and alignment were checked above; the kernel reads only rows below
        // lq / the key lengths and writes exactly the [B, Lq, H, D] output.
        unsafe { a.launch(cfg) }.w()?;
        done(o)
    }
}

/// `LayerNorm(x) * (scale[b, rows[b, l]] + one) + shift[b, rows[b, l]]` over `[B, L, D]`: the
/// adaLN modulation (`one` = 1) with clean-frame tokens picking their own table row, or an affine
/// LayerNorm (`one` = 0, one-row tables of weight and bias). Statistics in f32, one rounding.
pub fn ln_modulate(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    rows: Option<&Tensor>,
    one: f32,
    eps: f32,
) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(LnModulate { shift: shift.clone(), scale: scale.clone(), rows: rows.cloned(), one, eps }))
}

struct LnModulate {
    shift: Tensor,
    scale: Tensor,
    rows: Option<Tensor>,
    one: f32,
    eps: f32,
}

impl Kernel for LnModulate {
    const NAME: &'static str = "ln_modulate";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        if !xl.is_contiguous() {
            bail!("ln_modulate: x must be contiguous");
        }
        let (b, l, d) = xl.shape().dims3()?;
        let (tb, r) = check_table(&self.shift, self.rows.as_ref(), b, l, d, "ln_modulate shift")?;
        if self.scale.dims() != self.shift.dims() {
            bail!("ln_modulate: scale {:?} and shift {:?} differ", self.scale.dims(), self.shift.dims());
        }
        let dev = xs.device();
        let (shift, scale) = (Aux::new(&self.shift, "shift")?, Aux::new(&self.scale, "scale")?);
        let rows = self.rows.as_ref().map(|r| Aux::new(r, "rows")).transpose()?;
        let x = view::<T>(xs, xl)?;
        let (shift, scale) = (shift.view::<T>()?, scale.view::<T>()?);
        let rows = rows.as_ref().map(|r| r.view::<u32>()).transpose()?;
        let mut out = output::<T>(dev, b * l * d)?;
        let null = 0u64;
        let (l32, d32) = (l as i32, d as i32);
        let func = dev.get_or_load_custom_func(&format!("ln_modulate_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&shift);
        a.arg(&scale);
        match &rows {
            Some(rows) => a.arg(rows),
            None => a.arg(&null),
        };
        a.arg(&r);
        a.arg(&mut out);
        a.arg(&l32);
        a.arg(&d32);
        a.arg(&tb);
        a.arg(&self.one);
        a.arg(&self.eps);
        let cfg = LaunchConfig { grid_dim: ((b * l) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x is contiguous [B, L, D], the tables and rows were checked against it.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    }
}

/// `x + gate[b, rows[b, l]] * y` over `[B, L, D]` (the gated residual of a DiT block), f32 math and
/// one rounding.
pub fn gated_residual(x: &Tensor, y: &Tensor, gate: &Tensor, rows: Option<&Tensor>) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(GatedResidual { y: y.clone(), gate: gate.clone(), rows: rows.cloned() }))
}

struct GatedResidual {
    y: Tensor,
    gate: Tensor,
    rows: Option<Tensor>,
}

impl Kernel for GatedResidual {
    const NAME: &'static str = "gated_residual";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        if !xl.is_contiguous() || !self.y.is_contiguous() {
            bail!("gated_residual: x and y must be contiguous");
        }
        let (b, l, d) = xl.shape().dims3()?;
        if self.y.dims() != xl.dims() {
            bail!("gated_residual: x {:?} and y {:?} differ", xl.dims(), self.y.dims());
        }
        let (tb, r) = check_table(&self.gate, self.rows.as_ref(), b, l, d, "gated_residual gate")?;
        let dev = xs.device();
        let (y, gate) = (Aux::new(&self.y, "y")?, Aux::new(&self.gate, "gate")?);
        let rows = self.rows.as_ref().map(|r| Aux::new(r, "rows")).transpose()?;
        let x = view::<T>(xs, xl)?;
        let (y, gate) = (y.view::<T>()?, gate.view::<T>()?);
        let rows = rows.as_ref().map(|r| r.view::<u32>()).transpose()?;
        let n = b * l * d;
        let mut out = output::<T>(dev, n)?;
        let null = 0u64;
        let (n64, l32, d32) = (n as i64, l as i32, d as i32);
        let func = dev.get_or_load_custom_func(&format!("gated_residual_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&y);
        a.arg(&gate);
        match &rows {
            Some(rows) => a.arg(rows),
            None => a.arg(&null),
        };
        a.arg(&r);
        a.arg(&mut out);
        a.arg(&n64);
        a.arg(&l32);
        a.arg(&d32);
        a.arg(&tb);
        let blocks = n.div_ceil(256).min(65536) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x and y are contiguous [B, L, D], gate and rows were checked against them.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    }
}

/// `x * sigmoid(1.702 x)` (CLIP's quick GELU) of contiguous `x`, in f32 with one rounding: one pass
/// where the three element-wise ops (scale, sigmoid, product) take three.
pub fn quick_gelu(x: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(QuickGelu))
}

struct QuickGelu;

impl Kernel for QuickGelu {
    const NAME: &'static str = "quick_gelu";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        if !xl.is_contiguous() {
            bail!("quick_gelu: x must be contiguous");
        }
        let n = xl.shape().elem_count();
        let dev = xs.device();
        let x = view::<T>(xs, xl)?;
        let mut out = output::<T>(dev, n)?;
        let n64 = n as i64;
        // 16-byte loads where x starts 16-byte aligned (the output is a fresh allocation).
        let vec = i32::from((xl.start_offset() * std::mem::size_of::<T>()).is_multiple_of(16));
        let func = dev.get_or_load_custom_func(&format!("quick_gelu_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&mut out);
        a.arg(&n64);
        a.arg(&vec);
        let per_thread = if vec == 1 { 16 / std::mem::size_of::<T>() } else { 1 };
        let blocks = n.div_ceil(256 * per_thread).clamp(1, 65536) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x and out hold n elements; the grid-stride loop writes each output once.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    }
}

/// T5's RMSNorm over the last axis of contiguous `x`: `round(x * rsqrt(mean(x^2) + eps)) * w`
/// with `w` `[D]`, statistics in f32; one pass instead of six.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(RmsNorm { w: w.clone(), eps }))
}

struct RmsNorm {
    w: Tensor,
    eps: f32,
}

impl Kernel for RmsNorm {
    const NAME: &'static str = "rms_norm";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let d = *xl.dims().last().unwrap_or(&0);
        if !xl.is_contiguous() || d == 0 || self.w.dims() != [d] || self.w.dtype() != xs.dtype() {
            bail!("rms_norm: x {:?} must be contiguous and w {:?} [{d}] of its dtype", xl.dims(), self.w.dims());
        }
        let rows = xl.shape().elem_count() / d;
        let dev = xs.device();
        let w = Aux::new(&self.w, "w")?;
        let (x, w) = (view::<T>(xs, xl)?, w.view::<T>()?);
        let mut out = output::<T>(dev, rows * d)?;
        let d32 = d as i32;
        let func = dev.get_or_load_custom_func(&format!("rms_norm_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&w);
        a.arg(&mut out);
        a.arg(&d32);
        a.arg(&self.eps);
        let cfg = LaunchConfig { grid_dim: (rows as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x is contiguous with rows of d elements, w holds d.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    }
}

/// `softmax(scores + pos[h])` over the last axis of contiguous scores `[B, H, Lq, Lk]`, with the
/// per-head position bias `pos` `[H, Lq, Lk]` (scores' dtype) and `keep` `[B, Lk]` (f32, 0 for a
/// masked key, which gets probability 0); the sum rounded to the dtype before an f32 softmax, as
/// T5 computes it, in one pass instead of a broadcast add and a softmax.
pub fn softmax_bias(scores: &Tensor, pos: &Tensor, keep: &Tensor) -> Result<Tensor> {
    scores.apply_op1_no_bwd(&Op(SoftmaxBias { pos: pos.clone(), keep: keep.clone() }))
}

struct SoftmaxBias {
    pos: Tensor,
    keep: Tensor,
}

impl Kernel for SoftmaxBias {
    const NAME: &'static str = "softmax_bias";

    fn launch<T: Element>(&self, ss: &CudaStorage, sl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, h, lq, lk) = sl.shape().dims4()?;
        if !sl.is_contiguous()
            || self.pos.dims() != [h, lq, lk]
            || self.pos.dtype() != ss.dtype()
            || self.keep.dims() != [b, lk]
            || self.keep.dtype() != DType::F32
        {
            bail!(
                "softmax_bias: scores {:?} (contiguous), pos {:?} [{h}, {lq}, {lk}] of their dtype, keep {:?} f32 [{b}, {lk}]",
                sl.dims(),
                self.pos.dims(),
                self.keep.dims()
            );
        }
        let dev = ss.device();
        let (pos, keep) = (Aux::new(&self.pos, "pos")?, Aux::new(&self.keep, "keep")?);
        let (s, pos, keep) = (view::<T>(ss, sl)?, pos.view::<T>()?, keep.view::<f32>()?);
        let rows = (b * h * lq) as i64;
        let mut out = output::<T>(dev, b * h * lq * lk)?;
        let (h32, lq32, lk32) = (h as i32, lq as i32, lk as i32);
        let func = dev.get_or_load_custom_func(&format!("softmax_bias_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&s);
        a.arg(&pos);
        a.arg(&keep);
        a.arg(&mut out);
        a.arg(&rows);
        a.arg(&h32);
        a.arg(&lq32);
        a.arg(&lk32);
        // 8 warps per block, one row each.
        let cfg =
            LaunchConfig { grid_dim: ((rows as u32).div_ceil(8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: scores are contiguous [B, H, Lq, Lk]; pos and keep were checked against them.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), sl.shape().clone()))
    }
}

/// Per-head RMSNorm with weight `w` `[D]`, then interleaved RoPE with `cos`/`sin` `[L, D/2]` (f32;
/// `None`: no rotation), for `x` `[B, L, H, D]` in any strides with a contiguous last axis (e.g. the
/// q or k part of a fused qkv projection). Returns `[B, L, H, D]` contiguous.
pub fn rms_norm_rope(x: &Tensor, w: &Tensor, rope: Option<(&Tensor, &Tensor)>, eps: f32) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(RmsNormRope { w: Some(w.clone()), rope: rope.map(|(c, s)| (c.clone(), s.clone())), eps }))
}

/// Interleaved RoPE alone with `cos`/`sin` `[L, D/2]` (f32) for `x` `[B, L, H, D]` in any strides
/// with a contiguous last axis, for models whose q/k norm spans all heads (the Wan DiT's) and so
/// runs before the split into heads. Returns `[B, L, H, D]` contiguous.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(RmsNormRope { w: None, rope: Some((cos.clone(), sin.clone())), eps: 0.0 }))
}

/// [`rms_norm_rope`] (a weight) or [`rope`] (none: no normalisation).
struct RmsNormRope {
    w: Option<Tensor>,
    rope: Option<(Tensor, Tensor)>,
    eps: f32,
}

impl Kernel for RmsNormRope {
    const NAME: &'static str = "rms_norm_rope";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let (b, l, h, d) = xl.shape().dims4()?;
        let st = xl.stride();
        if st[3] != 1 || d > 128 || !d.is_multiple_of(2) {
            bail!("rms_norm_rope: needs an even head dim <= 128 on a contiguous last axis, got {:?}", xl.dims());
        }
        if let Some(w) = self.w.as_ref().filter(|w| w.dims() != [d]) {
            bail!("rms_norm_rope: weight {:?} for head dim {d}", w.dims());
        }
        if let Some((c, s)) = &self.rope {
            if c.dims() != [l, d / 2] || s.dims() != [l, d / 2] || c.dtype() != DType::F32 || s.dtype() != DType::F32 {
                bail!("rms_norm_rope: cos/sin must be f32 [{l}, {}], got {:?} / {:?}", d / 2, c.dims(), s.dims());
            }
        }
        let dev = xs.device();
        let w = self.w.as_ref().map(|w| Aux::new(w, "weight")).transpose()?;
        let rope = match &self.rope {
            Some((c, s)) => Some((Aux::new(c, "cos")?, Aux::new(s, "sin")?)),
            None => None,
        };
        let x = view::<T>(xs, xl)?;
        let w = w.as_ref().map(|w| w.view::<T>()).transpose()?;
        let rope = match &rope {
            Some((c, s)) => Some((c.view::<f32>()?, s.view::<f32>()?)),
            None => None,
        };
        let vectors = b * l * h;
        let mut out = output::<T>(dev, vectors * d)?;
        let null = 0u64;
        let (v64, l32, h32, d32) = (vectors as i64, l as i32, h as i32, d as i32);
        let (sb, sl, sh) = (st[0] as i64, st[1] as i64, st[2] as i64);
        let func = dev.get_or_load_custom_func(&format!("rms_norm_rope_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        match &w {
            Some(w) => a.arg(w),
            None => a.arg(&null),
        };
        match &rope {
            Some((c, s)) => {
                a.arg(c);
                a.arg(s);
            }
            None => {
                a.arg(&null);
                a.arg(&null);
            }
        }
        a.arg(&mut out);
        a.arg(&v64);
        a.arg(&l32);
        a.arg(&h32);
        a.arg(&d32);
        a.arg(&sb);
        a.arg(&sl);
        a.arg(&sh);
        a.arg(&self.eps);
        let warps = 8;
        let cfg = LaunchConfig {
            grid_dim: (vectors.div_ceil(warps) as u32, 1, 1),
            block_dim: (32 * warps as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the view covers every (b, l, h) vector through the checked strides; the output is
        // [B, L, H, D] and every element is written once.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((b, l, h, d))))
    }
}

/// GroupNorm over contiguous `x` `(B, C, ...)` with `groups` groups and per-channel `weight`/`bias`
/// `[C]`, statistics in f32, SiLU after it when `silu` (the norm-then-activation of VAE blocks).
pub fn group_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, groups: usize, eps: f32, silu: bool) -> Result<Tensor> {
    let op = GroupNorm { weight: weight.clone(), bias: bias.clone(), groups, eps, silu, channels_last: false };
    x.apply_op1_no_bwd(&Op(op))
}

/// [`group_norm`] written channels-last: `(B, spatial..., C)` contiguous, the layout [`crate::conv`]
/// hands cuDNN, so a norm feeding a convolution saves the convolution its input transpose (pass the
/// result permuted back to `(B, C, spatial...)`).
pub fn group_norm_channels_last(
    x: &Tensor,
    weight: &Tensor,
    bias: &Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
) -> Result<Tensor> {
    let op = GroupNorm { weight: weight.clone(), bias: bias.clone(), groups, eps, silu, channels_last: true };
    x.apply_op1_no_bwd(&Op(op))
}

struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f32,
    silu: bool,
    channels_last: bool,
}

/// Blocks the statistics of all groups spread over: a few waves of the H100/H200's 132 SMs.
const GROUP_NORM_BLOCKS: usize = 4 * 132;

impl Kernel for GroupNorm {
    const NAME: &'static str = "group_norm";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dims = xl.dims();
        if !xl.is_contiguous() || dims.len() < 2 || self.groups == 0 || !dims[1].is_multiple_of(self.groups) {
            bail!("group_norm: x {dims:?} must be contiguous (B, C, ...) with C divisible by {}", self.groups);
        }
        let (b, c) = (dims[0], dims[1]);
        if self.weight.dims() != [c] || self.bias.dims() != [c] {
            bail!("group_norm: weight {:?} / bias {:?} for {c} channels", self.weight.dims(), self.bias.dims());
        }
        let dev = xs.device();
        let (w, bias) = (Aux::new(&self.weight, "weight")?, Aux::new(&self.bias, "bias")?);
        let x = view::<T>(xs, xl)?;
        let (w, bias) = (w.view::<T>()?, bias.view::<T>()?);
        let n = xl.shape().elem_count();
        let spatial = n / (b * c).max(1);
        let groups = b * self.groups;
        // Chunks of at least 16k elements per block.
        let splits = GROUP_NORM_BLOCKS.div_ceil(groups).min((n / groups).div_ceil(16384)).max(1);
        // SAFETY: every partial sum and statistic is written by the two launches below.
        let mut part = unsafe { dev.alloc::<f32>(2 * groups * splits)? };
        let mut stats = unsafe { dev.alloc::<f32>(2 * groups)? };
        let mut out = output::<T>(dev, n)?;
        let (c32, g32, s64, act) = (c as i32, self.groups as i32, spatial as i64, i32::from(self.silu));
        let func = dev.get_or_load_custom_func(&format!("group_norm_stats_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&mut part);
        a.arg(&c32);
        a.arg(&g32);
        a.arg(&s64);
        let cfg =
            LaunchConfig { grid_dim: (groups as u32, splits as u32, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x is contiguous (B, C, S); block (group, chunk) reads its chunk of its group and
        // writes its two partial sums.
        unsafe { a.launch(cfg) }.w()?;
        let (groups32, splits32) = (groups as i32, splits as i32);
        let func = dev.get_or_load_custom_func(&format!("group_norm_finish_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&part);
        a.arg(&mut stats);
        a.arg(&groups32);
        a.arg(&splits32);
        a.arg(&c32);
        a.arg(&g32);
        a.arg(&s64);
        a.arg(&self.eps);
        let cfg =
            LaunchConfig { grid_dim: (groups.div_ceil(256) as u32, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: one thread per group reads its partial sums and writes its mean and rstd.
        unsafe { a.launch(cfg) }.w()?;
        let kernel = if self.channels_last { "group_norm_apply_cl" } else { "group_norm_apply" };
        let func = dev.get_or_load_custom_func(&format!("{kernel}_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&stats);
        a.arg(&w);
        a.arg(&bias);
        a.arg(&mut out);
        let rows = (b * c) as i64;
        if !self.channels_last {
            a.arg(&rows);
        }
        a.arg(&c32);
        a.arg(&g32);
        a.arg(&s64);
        a.arg(&act);
        let cfg = if self.channels_last {
            if b > 65535 || c.div_ceil(32) > 65535 {
                bail!("group_norm: {b} samples of {c} channels exceed the channels-last grid");
            }
            LaunchConfig {
                grid_dim: (spatial.div_ceil(32) as u32, c.div_ceil(32) as u32, b as u32),
                block_dim: (32, 8, 1),
                shared_mem_bytes: 0,
            }
        } else {
            LaunchConfig {
                grid_dim: (spatial.div_ceil(256).clamp(1, 64) as u32, (b * c).clamp(1, 65535) as u32, 1),
                block_dim: (256, 1, 1),
                shared_mem_bytes: 0,
            }
        };
        // SAFETY: x and out hold B * C * S elements, stats 2 per (sample, group); the kernels
        // guard every edge and loop over rows beyond the grid.
        unsafe { a.launch(cfg) }.w()?;
        let shape = if self.channels_last {
            let mut d = vec![b];
            d.extend_from_slice(&dims[2..]);
            d.push(c);
            Shape::from(d)
        } else {
            xl.shape().clone()
        };
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), shape))
    }
}

/// `x / max(||x||, 1e-12) * gamma[c]` over axis `axis` of contiguous `x` (the L2 norm over the
/// channels at each position, as the Wan VAE's RMS_norm with `gamma` holding its `sqrt(C)` scale),
/// SiLU after it when `silu`. `gamma` is `[C]`.
pub fn channel_norm(x: &Tensor, gamma: &Tensor, axis: usize, silu: bool) -> Result<Tensor> {
    x.apply_op1_no_bwd(&Op(ChannelNorm { gamma: gamma.clone(), axis, silu }))
}

struct ChannelNorm {
    gamma: Tensor,
    axis: usize,
    silu: bool,
}

impl Kernel for ChannelNorm {
    const NAME: &'static str = "channel_norm";

    fn launch<T: Element>(&self, xs: &CudaStorage, xl: &Layout) -> Result<(CudaStorage, Shape)> {
        let dims = xl.dims();
        if !xl.is_contiguous() || self.axis >= dims.len() {
            bail!("channel_norm: x {dims:?} must be contiguous with a channel axis {}", self.axis);
        }
        let c = dims[self.axis];
        if self.gamma.dims() != [c] {
            bail!("channel_norm: gamma {:?} for {c} channels", self.gamma.dims());
        }
        let outer: usize = dims[..self.axis].iter().product();
        let spatial: usize = dims[self.axis + 1..].iter().product();
        let dev = xs.device();
        let gamma = Aux::new(&self.gamma, "gamma")?;
        let x = view::<T>(xs, xl)?;
        let gamma = gamma.view::<T>()?;
        let mut out = output::<T>(dev, xl.shape().elem_count())?;
        let (outer64, c32, s64, act) = (outer as i64, c as i32, spatial as i64, i32::from(self.silu));
        let func = dev.get_or_load_custom_func(&format!("channel_norm_{}", T::SUFFIX), MODULE, PTX)?;
        let mut a = func.builder();
        a.arg(&x);
        a.arg(&gamma);
        a.arg(&mut out);
        a.arg(&outer64);
        a.arg(&c32);
        a.arg(&s64);
        a.arg(&act);
        let blocks = (outer * spatial).div_ceil(256).min(65536) as u32;
        let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
        // SAFETY: x is contiguous (N, C, S); each thread owns the C elements of one position.
        unsafe { a.launch(cfg) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
    }
}

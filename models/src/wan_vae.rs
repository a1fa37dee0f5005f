//! The Wan2.1 causal video VAE as the MUG-V enhancer uses it (key names of `Wan2.1_VAE.pth`):
//! 4x in time, 8x8 in space, 16 latent channels, videos of `1 + 4k` frames. Encoding runs on
//! chunks of frames `[0], [1..5], [5..9], ...` and decoding one latent frame at a time, every
//! temporal convolution carrying the last frames of its input from chunk to chunk, so memory
//! holds one chunk's activations, not the video's; the results equal a whole-video pass of the
//! reference's chunked code exactly.

use candle_core::{DType, Module, Tensor};
use candle_nn::Linear;

use crate::attention::attention;
use crate::conv;
use crate::weights::{Checkpoint, Weights, WeightsError};

/// Sizes of the VAE and its latent normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct WanVaeConfig {
    /// Base width; stage widths are `dim * dim_mult[i]`.
    pub dim: usize,
    /// Latent channels.
    pub z_dim: usize,
    /// Width multipliers of the four stages.
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (decoder stages have one more).
    pub num_res_blocks: usize,
    /// Whether each of the first three encoder stages also halves time (the decoder mirrors it).
    pub temporal_downsample: Vec<bool>,
    /// Per-channel mean of the latents, subtracted after encoding.
    pub latent_mean: Vec<f32>,
    /// Per-channel standard deviation of the latents, divided out after encoding.
    pub latent_std: Vec<f32>,
}

/// Frames a temporal convolution carries from one chunk to the next.
const CACHE_T: usize = 2;
/// Frames per encoder chunk after the first one-frame chunk (the temporal compression).
const CHUNK: usize = 4;

impl WanVaeConfig {
    /// Wan2.1's VAE (`Wan2.1_VAE.pth`): widths 96, 192, 384, 384, time halved in stages 1 and 2.
    pub fn wan21() -> WanVaeConfig {
        WanVaeConfig {
            dim: 96,
            z_dim: 16,
            dim_mult: vec![1, 2, 4, 4],
            num_res_blocks: 2,
            temporal_downsample: vec![false, true, true],
            latent_mean: vec![
                -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715, 0.5517, -0.3632,
                -0.1922, -0.9497, 0.2503, -0.2921,
            ],
            latent_std: vec![
                2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652, 1.5579, 1.6382,
                1.1253, 2.8251, 1.9160,
            ],
        }
    }

    /// The tiny random model of the goldens (`goldens/wan_vae/config.json`, "tiny": width 4).
    pub fn golden() -> WanVaeConfig {
        WanVaeConfig { dim: 4, ..WanVaeConfig::wan21() }
    }

    /// Latent frames of a video of `frames = 1 + 4k` frames.
    pub fn latent_frames(&self, frames: usize) -> usize {
        1 + frames.saturating_sub(1) / CHUNK
    }
}

/// What a temporal convolution remembers of the previous chunk.
enum Slot {
    /// Nothing yet (first chunk).
    Empty,
    /// An upsampling time conv skipped on the first chunk (it starts on the next).
    Skipped,
    /// The last input frames `(B, t, C, H, W)`.
    Frames(Tensor),
}

/// The slots of every cached convolution, visited in the same order on every chunk.
#[derive(Default)]
struct Cache {
    slots: Vec<Slot>,
    next: usize,
}

impl Cache {
    /// The next convolution's slot.
    fn slot(&mut self) -> &mut Slot {
        if self.next == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.next += 1;
        &mut self.slots[self.next - 1]
    }

    /// Start a new chunk.
    fn rewind(&mut self) {
        self.next = 0;
    }
}

/// The slot's new content after input `x`: its last [`CACHE_T`] frames, a short chunk completed
/// with the last frame remembered before (or a zero frame after a skipped first chunk). A copy,
/// so the chunk's activations can be freed.
fn remember(x: &Tensor, before: &Slot) -> candle_core::Result<Slot> {
    let t = x.dim(1)?;
    let last = x.narrow(1, t.saturating_sub(CACHE_T), t.min(CACHE_T))?;
    let frames = match before {
        _ if t >= CACHE_T => last,
        Slot::Frames(p) => Tensor::cat(&[&p.narrow(1, p.dim(1)? - 1, 1)?, &last], 1)?,
        Slot::Skipped => Tensor::cat(&[&last.zeros_like()?, &last], 1)?,
        Slot::Empty => last,
    };
    Ok(Slot::Frames(frames.copy()?))
}

/// A 3D convolution with causal time padding (`2 p_t` zero frames in front, or the cached frames
/// of the previous chunk and fewer zeros) and symmetric zero padding in space. Activations are
/// `(B, T, C, H, W)`; on CUDA one native 3D convolution reads and writes that layout, elsewhere
/// each time tap is one 2D convolution over all frames.
struct CausalConv3d {
    /// `(cout, cin, kt, kh, kw)`.
    weight: Tensor,
    bias: Tensor,
    pad_t: usize,
    pad_s: usize,
    stride_t: usize,
}

impl CausalConv3d {
    /// Weights `(cout, cin, kt, k, k)` under `w`; padding `(p_t, p_s)`.
    fn load(
        w: &Weights,
        (cin, cout): (usize, usize),
        (kt, k): (usize, usize),
        (p_t, p_s): (usize, usize),
        stride_t: usize,
    ) -> Result<Self, WeightsError> {
        let weight = w.get("weight", &[cout, cin, kt, k, k])?;
        Ok(CausalConv3d { weight, bias: w.get("bias", &[cout])?, pad_t: 2 * p_t, pad_s: p_s, stride_t })
    }

    /// A `3 x 3 x 3` convolution with padding 1.
    fn load3(w: &Weights, cin: usize, cout: usize) -> Result<Self, WeightsError> {
        Self::load(w, (cin, cout), (3, 3), (1, 1), 1)
    }

    /// A `1 x 1 x 1` convolution.
    fn load1(w: &Weights, cin: usize, cout: usize) -> Result<Self, WeightsError> {
        Self::load(w, (cin, cout), (1, 1), (0, 0), 1)
    }

    fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> candle_core::Result<Tensor> {
        self.forward_add(x, cache, None)
    }

    /// `self.forward(x, cache) + residual`, the addition fused into the convolution on CUDA.
    fn forward_add(
        &self,
        x: &Tensor,
        cache: Option<&Tensor>,
        residual: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (x, cached) = match cache {
            Some(c) if self.pad_t > 0 => (Tensor::cat(&[c, x], 1)?, c.dim(1)?),
            _ => (x.clone(), 0),
        };
        let x = x.pad_with_zeros(1, self.pad_t.saturating_sub(cached), 0)?;
        let (b, t, c, h, w) = x.dims5()?;
        let kt = self.weight.dim(2)?;
        if t < kt {
            candle_core::bail!("a temporal convolution of {kt} taps got {t} frames");
        }
        #[cfg(feature = "cuda")]
        if conv::fast(&x) {
            // One 3-D convolution over (B, C, T, H, W) read from and written to (B, T, C, H, W).
            let (p, s) = ([0, self.pad_s, self.pad_s], [self.stride_t, 1, 1]);
            let layout = kernels::ConvLayout::FramesFirst;
            return kernels::conv(&x, &self.weight, Some(&self.bias), residual, &p, &s, layout);
        }
        let t_out = (t - kt) / self.stride_t + 1;
        let mut y: Option<Tensor> = None;
        for k in 0..kt {
            let tap = self.weight.narrow(2, k, 1)?.squeeze(2)?.contiguous()?;
            let frames = if self.stride_t == 1 {
                x.narrow(1, k, t_out)?
            } else {
                let idx: Vec<u32> = (0..t_out).map(|o| (o * self.stride_t + k) as u32).collect();
                x.index_select(&Tensor::new(idx, x.device())?, 1)?
            };
            let out = frames.contiguous()?.reshape((b * t_out, c, h, w))?.conv2d(&tap, self.pad_s, 1, 1, 1)?;
            y = Some(match y {
                Some(acc) => (acc + out)?,
                None => out,
            });
        }
        let y = y.ok_or_else(|| candle_core::Error::Msg("a convolution without taps".into()))?;
        let y = y.broadcast_add(&self.bias.reshape((1, (), 1, 1))?)?;
        let (_, cout, ho, wo) = y.dims4()?;
        let y = y.reshape((b, t_out, cout, ho, wo))?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }

    /// The convolution on `x` continuing the previous chunk kept in `cache`'s next slot.
    fn cached(&self, x: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        self.cached_add(x, cache, None)
    }

    /// [`CausalConv3d::cached`] plus `residual`, fused on CUDA.
    fn cached_add(&self, x: &Tensor, cache: &mut Cache, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let slot = cache.slot();
        let y = self.forward_add(x, if let Slot::Frames(p) = &*slot { Some(p) } else { None }, residual)?;
        *slot = remember(x, slot)?;
        Ok(y)
    }
}

/// `x / max(||x||, 1e-12) * sqrt(C) * gamma` over the channel axis of `(..., C, H, W)`.
struct RmsNorm {
    /// `gamma * sqrt(C)`, shaped `(C, 1, 1)` to broadcast.
    gamma: Tensor,
}

impl RmsNorm {
    /// `gamma` of shape `(C, 1, 1, 1)` (3D) or `(C, 1, 1)` (2D, in attention).
    fn load(w: &Weights, c: usize, images: bool) -> Result<Self, WeightsError> {
        let shape: &[usize] = if images { &[c, 1, 1] } else { &[c, 1, 1, 1] };
        let gamma = w.get("gamma", shape)?;
        let gamma = (gamma.reshape((c, 1, 1)).map_err(|e| w.error("gamma", e))? * (c as f64).sqrt())
            .map_err(|e| w.error("gamma", e))?;
        Ok(RmsNorm { gamma })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return kernels::channel_norm(&x.contiguous()?, &self.gamma.flatten_all()?, x.rank() - 3, false);
        }
        let axis = x.rank() - 3;
        let norm = x.sqr()?.sum_keepdim(axis)?.sqrt()?.maximum(1e-12)?;
        x.broadcast_div(&norm)?.broadcast_mul(&self.gamma)
    }

    /// `silu(self.forward(x))`, one fused kernel on CUDA.
    fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return kernels::channel_norm(&x.contiguous()?, &self.gamma.flatten_all()?, x.rank() - 3, true);
        }
        self.forward(x)?.silu()
    }
}

/// Norm, SiLU, 3x3x3 conv, twice, plus a 1x1x1-projected shortcut when the width changes.
struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    fn load(w: &Weights, cin: usize, cout: usize) -> Result<Self, WeightsError> {
        let r = w.pp("residual");
        Ok(ResidualBlock {
            norm1: RmsNorm::load(&r.pp(0), cin, false)?,
            conv1: CausalConv3d::load3(&r.pp(2), cin, cout)?,
            norm2: RmsNorm::load(&r.pp(3), cout, false)?,
            conv2: CausalConv3d::load3(&r.pp(6), cout, cout)?,
            shortcut: if cin != cout { Some(CausalConv3d::load1(&w.pp("shortcut"), cin, cout)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        let h = match &self.shortcut {
            Some(s) => s.forward(x, None)?,
            None => x.clone(),
        };
        let r = self.conv1.cached(&self.norm1.forward_silu(x)?, cache)?;
        self.conv2.cached_add(&self.norm2.forward_silu(&r)?, cache, Some(&h))
    }
}

/// Single-head self-attention over the positions of each frame.
struct AttentionBlock {
    norm: RmsNorm,
    to_qkv: Linear,
    proj: Linear,
}

/// A 1x1 2D convolution as a linear map over channels.
fn pointwise(w: &Weights, cin: usize, cout: usize) -> Result<Linear, WeightsError> {
    let weight = w.get("weight", &[cout, cin, 1, 1])?.reshape((cout, cin)).map_err(|e| w.error("weight", e))?;
    Ok(Linear::new(weight, Some(w.get("bias", &[cout])?)))
}

impl AttentionBlock {
    fn load(w: &Weights, c: usize) -> Result<Self, WeightsError> {
        Ok(AttentionBlock {
            norm: RmsNorm::load(&w.pp("norm"), c, true)?,
            to_qkv: pointwise(&w.pp("to_qkv"), c, 3 * c)?,
            proj: pointwise(&w.pp("proj"), c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let n = b * t;
        // Contiguous operands: candle's CPU matmul mis-reads some transposed batched layouts.
        let tokens = self.norm.forward(x)?.reshape((n, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let qkv = self.to_qkv.forward(&tokens)?;
        let part = |i: usize| qkv.narrow(2, i * c, c)?.contiguous()?.unsqueeze(1);
        let o = attention(&part(0)?, &part(1)?, &part(2)?, 1.0 / (c as f64).sqrt())?.squeeze(1)?;
        let o = self.proj.forward(&o)?.transpose(1, 2)?.reshape((b, t, c, h, w))?;
        x + o
    }
}

/// A per-frame 2D convolution.
struct Conv2d {
    weight: Tensor,
    bias: Tensor,
}

impl Conv2d {
    fn load(w: &Weights, cin: usize, cout: usize) -> Result<Self, WeightsError> {
        Ok(Conv2d { weight: w.get("weight", &[cout, cin, 3, 3])?, bias: w.get("bias", &[cout])? })
    }

    /// On every frame of `(B, T, C, H, W)`.
    fn forward(&self, x: &Tensor, padding: usize, stride: usize) -> candle_core::Result<Tensor> {
        let (b, t, c, h, w) = x.dims5()?;
        let y = conv::conv2d(&x.reshape((b * t, c, h, w))?, &self.weight, Some(&self.bias), None, padding, stride)?;
        let (_, cout, ho, wo) = y.dims4()?;
        y.reshape((b, t, cout, ho, wo))
    }
}

/// A change of resolution between stages.
enum Resample {
    /// Zero pad right and bottom, 3x3 conv of stride 2.
    Down2d(Conv2d),
    /// As `Down2d`, then a stride-2 time conv over the previous chunk's last frame and this
    /// chunk's frames (skipped on the first chunk).
    Down3d(Conv2d, CausalConv3d),
    /// Nearest x2 in space, 3x3 conv halving the width.
    Up2d(Conv2d),
    /// A time conv to twice the width whose halves become frames `2t` and `2t + 1` (skipped on
    /// the first chunk), then as `Up2d`.
    Up3d(Conv2d, CausalConv3d),
}

impl Resample {
    fn load(w: &Weights, c: usize, down: bool, temporal: bool) -> Result<Self, WeightsError> {
        let t = w.pp("time_conv");
        let r = w.pp("resample").pp(1);
        Ok(match (down, temporal) {
            (true, false) => Resample::Down2d(Conv2d::load(&r, c, c)?),
            (true, true) => {
                Resample::Down3d(Conv2d::load(&r, c, c)?, CausalConv3d::load(&t, (c, c), (3, 1), (0, 0), 2)?)
            }
            (false, false) => Resample::Up2d(Conv2d::load(&r, c, c / 2)?),
            (false, true) => {
                Resample::Up3d(Conv2d::load(&r, c, c / 2)?, CausalConv3d::load(&t, (c, 2 * c), (3, 1), (1, 0), 1)?)
            }
        })
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        let down = |conv: &Conv2d| conv.forward(&x.pad_with_zeros(3, 0, 1)?.pad_with_zeros(4, 0, 1)?, 0, 2);
        let up = |conv: &Conv2d, x: &Tensor| {
            let (b, t, c, h, w) = x.dims5()?;
            let x = x.reshape((b * t, c, h, w))?.upsample_nearest2d(2 * h, 2 * w)?;
            conv.forward(&x.reshape((b, t, c, 2 * h, 2 * w))?, 1, 1)
        };
        match self {
            Resample::Down2d(conv) => down(conv),
            Resample::Down3d(conv, time_conv) => {
                let x = down(conv)?;
                let slot = cache.slot();
                let (y, keep) = match &*slot {
                    Slot::Frames(p) => {
                        let last = p.narrow(1, p.dim(1)? - 1, 1)?;
                        (time_conv.forward(&Tensor::cat(&[&last, &x], 1)?, None)?, x.narrow(1, x.dim(1)? - 1, 1)?)
                    }
                    _ => (x.clone(), x.clone()),
                };
                *slot = Slot::Frames(keep.copy()?);
                Ok(y)
            }
            Resample::Up2d(conv) => up(conv, x),
            Resample::Up3d(conv, time_conv) => {
                let slot = cache.slot();
                let x = match &*slot {
                    Slot::Empty => {
                        *slot = Slot::Skipped;
                        x.clone()
                    }
                    before => {
                        let y = time_conv.forward(x, if let Slot::Frames(p) = before { Some(p) } else { None })?;
                        *slot = remember(x, before)?;
                        let (b, t, c2, h, w) = y.dims5()?;
                        // (t, half, c) -> frame 2t + half.
                        y.reshape((b, 2 * t, c2 / 2, h, w))?
                    }
                };
                up(conv, &x)
            }
        }
    }
}

/// A stage's layers in order.
enum Layer {
    Residual(ResidualBlock),
    Resample(Resample),
}

/// Residual block, attention, residual block.
struct Middle(ResidualBlock, AttentionBlock, ResidualBlock);

impl Middle {
    fn load(w: &Weights, c: usize) -> Result<Self, WeightsError> {
        Ok(Middle(
            ResidualBlock::load(&w.pp(0), c, c)?,
            AttentionBlock::load(&w.pp(1), c)?,
            ResidualBlock::load(&w.pp(2), c, c)?,
        ))
    }

    fn forward(&self, x: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        let x = self.0.forward(x, cache)?;
        let x = self.1.forward(&x)?;
        self.2.forward(&x, cache)
    }
}

/// `conv1`, the stages, the middle and the head (norm, SiLU, 3x3x3 conv) of the encoder or
/// the decoder.
struct Coder {
    conv1: CausalConv3d,
    stages: Vec<Layer>,
    middle: Middle,
    head_norm: RmsNorm,
    head_conv: CausalConv3d,
    /// The decoder runs the middle before the stages.
    middle_first: bool,
}

impl Coder {
    /// The encoder: widths `dim * [1, dim_mult..]`, stages of residual blocks each followed
    /// (but the last) by a downsampling; head to `2 z_dim` moments.
    fn encoder(w: &Weights, c: &WanVaeConfig) -> Result<Self, WeightsError> {
        let dims: Vec<usize> = std::iter::once(1).chain(c.dim_mult.iter().copied()).map(|m| c.dim * m).collect();
        let mut stages = Vec::new();
        let s = w.pp("downsamples");
        for i in 0..c.dim_mult.len() {
            let (mut cin, cout) = (dims[i], dims[i + 1]);
            for _ in 0..c.num_res_blocks {
                stages.push(Layer::Residual(ResidualBlock::load(&s.pp(stages.len()), cin, cout)?));
                cin = cout;
            }
            if i + 1 < c.dim_mult.len() {
                let temporal = c.temporal_downsample.get(i).copied().unwrap_or(false);
                stages.push(Layer::Resample(Resample::load(&s.pp(stages.len()), cout, true, temporal)?));
            }
        }
        let top = dims[dims.len() - 1];
        Ok(Coder {
            conv1: CausalConv3d::load3(&w.pp("conv1"), 3, dims[0])?,
            stages,
            middle: Middle::load(&w.pp("middle"), top)?,
            head_norm: RmsNorm::load(&w.pp("head").pp(0), top, false)?,
            head_conv: CausalConv3d::load3(&w.pp("head").pp(2), top, 2 * c.z_dim)?,
            middle_first: false,
        })
    }

    /// The decoder: widths `dim * [dim_mult[-1], dim_mult reversed..]`, stages of one more
    /// residual block each followed (but the last) by an upsampling that halves the width.
    fn decoder(w: &Weights, c: &WanVaeConfig) -> Result<Self, WeightsError> {
        let top = c.dim * c.dim_mult.last().copied().unwrap_or(1);
        let dims: Vec<usize> = std::iter::once(top).chain(c.dim_mult.iter().rev().map(|m| c.dim * m)).collect();
        let mut stages = Vec::new();
        let s = w.pp("upsamples");
        let n = c.dim_mult.len();
        for i in 0..n {
            // After an upsampling the width is halved.
            let (mut cin, cout) = (if i == 0 { dims[0] } else { dims[i] / 2 }, dims[i + 1]);
            for _ in 0..=c.num_res_blocks {
                stages.push(Layer::Residual(ResidualBlock::load(&s.pp(stages.len()), cin, cout)?));
                cin = cout;
            }
            if i + 1 < n {
                let temporal = c.temporal_downsample.get(n - 2 - i).copied().unwrap_or(false);
                stages.push(Layer::Resample(Resample::load(&s.pp(stages.len()), cout, false, temporal)?));
            }
        }
        let out = dims[n];
        Ok(Coder {
            conv1: CausalConv3d::load3(&w.pp("conv1"), c.z_dim, top)?,
            stages,
            middle: Middle::load(&w.pp("middle"), top)?,
            head_norm: RmsNorm::load(&w.pp("head").pp(0), out, false)?,
            head_conv: CausalConv3d::load3(&w.pp("head").pp(2), out, 3)?,
            middle_first: true,
        })
    }

    /// One chunk `(B, T, C, H, W)`, continuing the previous chunks through `cache`.
    fn forward(&self, x: &Tensor, cache: &mut Cache) -> candle_core::Result<Tensor> {
        cache.rewind();
        let mut x = self.conv1.cached(x, cache)?;
        if self.middle_first {
            x = self.middle.forward(&x, cache)?;
        }
        for layer in &self.stages {
            crate::interrupt::check("the Wan VAE")?;
            x = match layer {
                Layer::Residual(r) => r.forward(&x, cache)?,
                Layer::Resample(r) => r.forward(&x, cache)?,
            };
        }
        if !self.middle_first {
            x = self.middle.forward(&x, cache)?;
        }
        self.head_conv.cached(&self.head_norm.forward_silu(&x)?, cache)
    }
}

/// Intermediate values of encoding and decoding, `(B, C, T, H, W)` each, for parity tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WanVaePoint {
    /// Encoder output (moments before `conv1`) of chunk `i`.
    EncoderChunk(usize),
    /// Posterior mean before normalisation.
    Mean,
    /// Posterior log-variance (unused: encoding gives the mean).
    LogVariance,
    /// Decoder input after de-normalisation.
    Denormalised,
    /// After the top-level `conv2`.
    Conv2,
    /// Decoder output of latent frame `i`, before clamping.
    DecoderChunk(usize),
}

/// `(B, T, C, H, W)` <-> `(B, C, T, H, W)`.
fn swap_time_channels(x: &Tensor) -> candle_core::Result<Tensor> {
    x.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// The Wan2.1 video VAE.
pub struct WanVae {
    config: WanVaeConfig,
    encoder: Coder,
    decoder: Coder,
    conv1: CausalConv3d,
    conv2: CausalConv3d,
    /// `(1, 1, z, 1, 1)`: the latent mean and `1 / std`.
    mean: Tensor,
    inv_std: Tensor,
}

impl WanVae {
    /// Load from `Wan2.1_VAE.pth` (keys `encoder.*`, `decoder.*`, `conv1.*`, `conv2.*`, no
    /// prefix); every missing or unexpected key is named.
    pub fn load(checkpoint: &Checkpoint, config: &WanVaeConfig) -> Result<WanVae, WeightsError> {
        let w = checkpoint.weights();
        let z = config.z_dim;
        let stats = |name: &str, v: &[f32]| -> Result<Tensor, WeightsError> {
            let t = Tensor::from_slice(v, (1, 1, z, 1, 1), &checkpoint.device)
                .and_then(|t| t.to_dtype(checkpoint.dtype))
                .map_err(|e| w.error(name, e))?;
            Ok(t)
        };
        let vae = WanVae {
            encoder: Coder::encoder(&w.pp("encoder"), config)?,
            decoder: Coder::decoder(&w.pp("decoder"), config)?,
            conv1: CausalConv3d::load1(&w.pp("conv1"), 2 * z, 2 * z)?,
            conv2: CausalConv3d::load1(&w.pp("conv2"), z, z)?,
            mean: stats("(latent mean)", &config.latent_mean)?,
            inv_std: stats("(latent std)", &config.latent_std)?.recip().map_err(|e| w.error("(latent std)", e))?,
            config: config.clone(),
        };
        w.finish(&[])?;
        Ok(vae)
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &WanVaeConfig {
        &self.config
    }

    /// Encode a video `(B, 3, 1 + 4k, H, W)` in [-1, 1] into normalised latents
    /// `(B, z_dim, 1 + k, H/8, W/8)`: the posterior mean, `(mean - latent_mean) / latent_std`;
    /// `hook` sees the values named by [`WanVaePoint`].
    pub fn encode_with(
        &self,
        video: &Tensor,
        hook: &mut dyn FnMut(WanVaePoint, &Tensor),
    ) -> candle_core::Result<Tensor> {
        let t = video.dim(2)?;
        if t == 0 || (t - 1) % CHUNK != 0 {
            candle_core::bail!("the Wan VAE encodes 1 + 4k frames, not {t}");
        }
        let x = swap_time_channels(&video.to_dtype(self.mean.dtype())?)?;
        let mut cache = Cache::default();
        let mut moments = Vec::new();
        for i in 0..self.config.latent_frames(t) {
            let (start, len) = if i == 0 { (0, 1) } else { (1 + CHUNK * (i - 1), CHUNK) };
            let out = self.encoder.forward(&x.narrow(1, start, len)?, &mut cache)?;
            hook(WanVaePoint::EncoderChunk(i), &swap_time_channels(&out)?);
            moments.push(out);
        }
        let moments = self.conv1.forward(&Tensor::cat(&moments, 1)?, None)?;
        let z = self.config.z_dim;
        let mean = moments.narrow(2, 0, z)?;
        hook(WanVaePoint::Mean, &swap_time_channels(&mean)?);
        hook(WanVaePoint::LogVariance, &swap_time_channels(&moments.narrow(2, z, z)?)?);
        swap_time_channels(&mean.broadcast_sub(&self.mean)?.broadcast_mul(&self.inv_std)?)
    }

    /// Encode a video `(B, 3, 1 + 4k, H, W)` in [-1, 1] into normalised latents.
    pub fn encode(&self, video: &Tensor) -> candle_core::Result<Tensor> {
        self.encode_with(video, &mut |_, _| {})
    }

    /// Decode normalised latents `(B, z_dim, n, h, w)` one latent frame at a time: `sink`
    /// receives the frames of each, clamped to [-1, 1], `(B, 3, t, 8h, 8w)` with `t` 1 for the
    /// first and 4 for the others (`1 + 4(n - 1)` in all); `hook` sees the values named by
    /// [`WanVaePoint`].
    pub fn decode_chunks(
        &self,
        latents: &Tensor,
        hook: &mut dyn FnMut(WanVaePoint, &Tensor),
        sink: &mut dyn FnMut(Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        let z = swap_time_channels(&latents.to_dtype(self.mean.dtype())?)?;
        let z = z.broadcast_div(&self.inv_std)?.broadcast_add(&self.mean)?;
        hook(WanVaePoint::Denormalised, &swap_time_channels(&z)?);
        let x = self.conv2.forward(&z, None)?;
        hook(WanVaePoint::Conv2, &swap_time_channels(&x)?);
        let mut cache = Cache::default();
        for i in 0..x.dim(1)? {
            let out = swap_time_channels(&self.decoder.forward(&x.narrow(1, i, 1)?, &mut cache)?)?;
            hook(WanVaePoint::DecoderChunk(i), &out);
            sink(out.clamp(-1f32, 1f32)?)?;
        }
        Ok(())
    }

    /// Decode normalised latents `(B, z_dim, n, h, w)` into a video `(B, 3, 1 + 4(n - 1), 8h,
    /// 8w)` in [-1, 1].
    pub fn decode(&self, latents: &Tensor) -> candle_core::Result<Tensor> {
        let mut parts = Vec::new();
        self.decode_chunks(latents, &mut |_, _| {}, &mut |chunk| {
            parts.push(chunk);
            Ok(())
        })?;
        Tensor::cat(&parts, 2)
    }
}

/// One decoded video `(3, T, H, W)` in [-1, 1] as 8-bit frames `(T, H, W, 3)`:
/// `(x + 1) * 127.5` clipped to [0, 255] and truncated, as the enhancer writes its output.
pub fn to_frames_u8(video: &Tensor) -> candle_core::Result<Tensor> {
    ((video.to_dtype(DType::F32)? + 1.0)? * 127.5)?.clamp(0f32, 255f32)?.permute((1, 2, 3, 0))?.to_dtype(DType::U8)
}

//! MUG-V VideoVAE (`MUGAutoencoderPipeline`, key names of the official `vae.pt`): a per-frame SDXL
//! 2D autoencoder cut open at its 512-channel mid block (`spatial_vae.module.*`), then a temporal
//! VAE mapping each group of 8 frames of those features to one 24-channel latent frame
//! (`temporal_vae.*`). Overall 8x8x8 compression; latents are normalised with the checkpoint's
//! per-channel `shift` and `scale`.

use candle_core::{DType, Tensor, D};

use crate::conv;
use crate::layers::linear;
use crate::weights::{Checkpoint, Weights, WeightsError};

/// Sizes of the per-frame 2D autoencoder (diffusers `AutoencoderKL`, SDXL layout).
#[derive(Debug, Clone, PartialEq)]
pub struct SpatialConfig {
    /// Widths of the four down (and, reversed, up) blocks.
    pub block_out_channels: Vec<usize>,
    /// Resnets per down block (up blocks have one more).
    pub layers_per_block: usize,
    /// GroupNorm groups.
    pub norm_num_groups: usize,
    /// Features are multiplied by this after encoding and divided before decoding.
    pub scaling_factor: f64,
}

/// Sizes of the temporal VAE (`MUGVAETemporal`).
#[derive(Debug, Clone, PartialEq)]
pub struct TemporalConfig {
    /// Channels of the spatial features it compresses (the spatial mid-block width).
    pub in_out_channels: usize,
    /// Base width; block `i` is `filters * channel_multipliers[i]` wide.
    pub filters: usize,
    /// Width multipliers of the four blocks.
    pub channel_multipliers: Vec<usize>,
    /// ResBlocks per block.
    pub num_res_blocks: usize,
    /// GroupNorm groups.
    pub num_groups: usize,
    /// Latent channels.
    pub latent_channels: usize,
}

/// Sizes of the whole VideoVAE and how it batches work.
#[derive(Debug, Clone, PartialEq)]
pub struct MugVaeConfig {
    /// The 2D part.
    pub spatial: SpatialConfig,
    /// The temporal part.
    pub temporal: TemporalConfig,
    /// Frames per pass of the 2D part (bounds memory; no numerical effect).
    pub micro_batch_size: usize,
    /// Frames per temporal chunk; each chunk is encoded and decoded on its own.
    pub micro_frame_size: usize,
}

/// Frames the temporal encoder folds into one latent frame (hard-coded in the reference).
const GROUP: usize = 8;
/// GroupNorm epsilon of the 2D part.
const SPATIAL_EPS: f64 = 1e-6;
/// GroupNorm epsilon of the temporal part (PyTorch's default).
const TEMPORAL_EPS: f64 = 1e-5;

impl MugVaeConfig {
    /// The released MUG-V VideoVAE: SDXL 2D widths (128, 256, 512, 512), temporal filters 128.
    pub fn mugv() -> MugVaeConfig {
        MugVaeConfig {
            spatial: SpatialConfig {
                block_out_channels: vec![128, 256, 512, 512],
                layers_per_block: 2,
                norm_num_groups: 32,
                scaling_factor: 0.18215,
            },
            temporal: TemporalConfig {
                in_out_channels: 512,
                filters: 128,
                channel_multipliers: vec![1, 2, 2, 4],
                num_res_blocks: 4,
                num_groups: 32,
                latent_channels: 24,
            },
            micro_batch_size: 4,
            micro_frame_size: 48,
        }
    }

    /// The tiny random model of the goldens (`goldens/mugvae/config.json`, "tiny").
    pub fn golden() -> MugVaeConfig {
        let real = MugVaeConfig::mugv();
        MugVaeConfig {
            spatial: SpatialConfig { block_out_channels: vec![8, 16, 32, 32], norm_num_groups: 4, ..real.spatial },
            temporal: TemporalConfig { in_out_channels: 32, filters: 4, num_groups: 2, ..real.temporal },
            ..real
        }
    }

    /// Latent frames of a chunk of `micro_frame_size` frames.
    fn micro_z_frames(&self) -> usize {
        self.micro_frame_size / GROUP
    }

    /// Latent size `(frames, height, width)` of a `frames x height x width` video: each full chunk
    /// gives `micro_frame_size / 8` latent frames, the rest `ceil(rest / 8)`; space floors by 8.
    pub fn latent_size(&self, frames: usize, height: usize, width: usize) -> (usize, usize, usize) {
        let chunk = self.micro_frame_size;
        let t = self.micro_z_frames() * (frames / chunk) + (frames % chunk).div_ceil(GROUP);
        (t, height / 8, width / 8)
    }
}

/// Convolution weights; `weight` is `(cout, cin, kh, kw)`.
struct Conv2d {
    weight: Tensor,
    bias: Option<Tensor>,
    padding: usize,
    stride: usize,
}

impl Conv2d {
    fn load(
        w: &Weights,
        cin: usize,
        cout: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self, WeightsError> {
        Ok(Conv2d {
            weight: w.get("weight", &[cout, cin, k, k])?,
            bias: Some(w.get("bias", &[cout])?),
            padding,
            stride,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        conv::conv2d(x, &self.weight, self.bias.as_ref(), None, self.padding, self.stride)
    }

    /// `self.forward(x) + residual`, the addition fused into the convolution on CUDA.
    fn forward_add(&self, x: &Tensor, residual: &Tensor) -> candle_core::Result<Tensor> {
        conv::conv2d(x, &self.weight, self.bias.as_ref(), Some(residual), self.padding, self.stride)
    }
}

/// GroupNorm over `(B, C, ...)`: statistics per sample and group over channels and all positions.
struct GroupNorm {
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    fn load(w: &Weights, channels: usize, groups: usize, eps: f64) -> Result<Self, WeightsError> {
        Ok(GroupNorm { weight: w.get("weight", &[channels])?, bias: w.get("bias", &[channels])?, groups, eps })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            return kernels::group_norm(
                &x.contiguous()?,
                &self.weight,
                &self.bias,
                self.groups,
                self.eps as f32,
                false,
            );
        }
        let dims = x.dims().to_vec();
        let dtype = x.dtype();
        let g = x.to_dtype(DType::F32)?.reshape((dims[0], self.groups, ()))?;
        let g = g.broadcast_sub(&g.mean_keepdim(D::Minus1)?)?;
        let var = g.sqr()?.mean_keepdim(D::Minus1)?;
        let g = g.broadcast_div(&(var + self.eps)?.sqrt()?)?.to_dtype(dtype)?.reshape(dims.as_slice())?;
        let mut shape = vec![1; dims.len()];
        shape[1] = dims[1];
        g.broadcast_mul(&self.weight.reshape(shape.as_slice())?)?.broadcast_add(&self.bias.reshape(shape.as_slice())?)
    }

    /// `silu(self.forward(x))`, one fused kernel on CUDA. Every use feeds a convolution: with
    /// `kernels::conv` the result is a channels-last view, the layout cuDNN reads.
    fn forward_silu(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        #[cfg(feature = "cuda")]
        if x.device().is_cuda() {
            let (x, eps) = (x.contiguous()?, self.eps as f32);
            if conv::fast(&x) {
                let y = kernels::group_norm_channels_last(&x, &self.weight, &self.bias, self.groups, eps, true)?;
                let rank = y.rank();
                let back: Vec<usize> = [0, rank - 1].into_iter().chain(1..rank - 1).collect();
                return y.permute(back);
            }
            return kernels::group_norm(&x, &self.weight, &self.bias, self.groups, eps, true);
        }
        self.forward(x)?.silu()
    }
}

/// diffusers `ResnetBlock2D`: two norm-SiLU-conv steps plus a (1x1-projected) shortcut.
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn load(w: &Weights, cin: usize, cout: usize, groups: usize) -> Result<Self, WeightsError> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::load(&w.pp("norm1"), cin, groups, SPATIAL_EPS)?,
            conv1: Conv2d::load(&w.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: GroupNorm::load(&w.pp("norm2"), cout, groups, SPATIAL_EPS)?,
            conv2: Conv2d::load(&w.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::load(&w.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let shortcut = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&self.norm2.forward_silu(&h)?, &shortcut)
    }
}

/// The mid-block attention: GroupNorm, one head as wide as the features, over all positions.
struct Attention {
    group_norm: GroupNorm,
    to_q: candle_nn::Linear,
    to_k: candle_nn::Linear,
    to_v: candle_nn::Linear,
    to_out: candle_nn::Linear,
}

impl Attention {
    fn load(w: &Weights, c: usize, groups: usize) -> Result<Self, WeightsError> {
        Ok(Attention {
            group_norm: GroupNorm::load(&w.pp("group_norm"), c, groups, SPATIAL_EPS)?,
            to_q: linear(&w.pp("to_q"), c, c)?,
            to_k: linear(&w.pp("to_k"), c, c)?,
            to_v: linear(&w.pp("to_v"), c, c)?,
            to_out: linear(&w.pp("to_out").pp(0), c, c)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        use candle_core::Module;
        let (b, c, h, w) = x.dims4()?;
        // Contiguous operands: candle's CPU matmul mis-reads some transposed batched layouts.
        let t = self.group_norm.forward(x)?.reshape((b, c, h * w))?.transpose(1, 2)?.contiguous()?;
        let (q, k, v) = (self.to_q.forward(&t)?, self.to_k.forward(&t)?, self.to_v.forward(&t)?);
        let scores = (q.matmul(&k.t()?.contiguous()?)? / (c as f64).sqrt())?;
        let o = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
        let o = self.to_out.forward(&o)?.transpose(1, 2)?.reshape((b, c, h, w))?;
        x + o
    }
}

/// diffusers `UNetMidBlock2D` with one attention: resnet, attention, resnet.
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Attention,
}

impl MidBlock {
    fn load(w: &Weights, c: usize, groups: usize) -> Result<Self, WeightsError> {
        let r = w.pp("resnets");
        Ok(MidBlock {
            resnets: [ResnetBlock2D::load(&r.pp(0), c, c, groups)?, ResnetBlock2D::load(&r.pp(1), c, c, groups)?],
            attention: Attention::load(&w.pp("attentions").pp(0), c, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let x = self.resnets[0].forward(x)?;
        let x = self.attention.forward(&x)?;
        self.resnets[1].forward(&x)
    }
}

/// A down block (resnets, then a stride-2 conv after zero padding on the right and bottom) or
/// an up block (resnets, then nearest x2 and a conv).
struct Block2D {
    resnets: Vec<ResnetBlock2D>,
    sampler: Option<Conv2d>,
}

impl Block2D {
    /// The down blocks (`down_blocks.*`, `downsamplers`: stride 2, padded by hand) or up blocks
    /// (`up_blocks.*`, `upsamplers`: stride 1, padding 1) of the given widths, `resnets` each, the
    /// first resnet of a block changing the width; the last block has no sampler.
    fn load_all(
        w: &Weights,
        (blocks, samplers): (&str, &str),
        widths: &[usize],
        resnets: usize,
        groups: usize,
        (stride, padding): (usize, usize),
    ) -> Result<Vec<Block2D>, WeightsError> {
        let mut out = Vec::new();
        let mut cin = widths[0];
        for (i, &cout) in widths.iter().enumerate() {
            let b = w.pp(blocks).pp(i);
            let resnets = (0..resnets)
                .map(|j| ResnetBlock2D::load(&b.pp("resnets").pp(j), if j == 0 { cin } else { cout }, cout, groups))
                .collect::<Result<_, _>>()?;
            let sampler = if i + 1 == widths.len() {
                None
            } else {
                Some(Conv2d::load(&b.pp(samplers).pp(0).pp("conv"), cout, cout, 3, stride, padding)?)
            };
            out.push(Block2D { resnets, sampler });
            cin = cout;
        }
        Ok(out)
    }
}

/// The 2D encoder up to its mid block (its `conv_norm_out`/`conv_out` are not used by MUG-V).
struct SpatialEncoder {
    conv_in: Conv2d,
    down_blocks: Vec<Block2D>,
    mid_block: MidBlock,
}

/// The 2D decoder from its mid block (its `conv_in` is not used by MUG-V).
struct SpatialDecoder {
    mid_block: MidBlock,
    up_blocks: Vec<Block2D>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl SpatialEncoder {
    fn load(w: &Weights, c: &SpatialConfig) -> Result<Self, WeightsError> {
        let ch = &c.block_out_channels;
        let groups = c.norm_num_groups;
        let down_blocks =
            Block2D::load_all(w, ("down_blocks", "downsamplers"), ch, c.layers_per_block, groups, (2, 0))?;
        let cin = *ch.last().unwrap_or(&ch[0]);
        Ok(SpatialEncoder {
            conv_in: Conv2d::load(&w.pp("conv_in"), 3, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::load(&w.pp("mid_block"), cin, groups)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for block in &self.down_blocks {
            crate::interrupt::check("the VideoVAE spatial encoder")?;
            for r in &block.resnets {
                x = r.forward(&x)?;
            }
            if let Some(down) = &block.sampler {
                x = down.forward(&x.pad_with_zeros(2, 0, 1)?.pad_with_zeros(3, 0, 1)?)?;
            }
        }
        self.mid_block.forward(&x)
    }
}

impl SpatialDecoder {
    fn load(w: &Weights, c: &SpatialConfig) -> Result<Self, WeightsError> {
        let ch: Vec<usize> = c.block_out_channels.iter().rev().copied().collect();
        let groups = c.norm_num_groups;
        let up_blocks = Block2D::load_all(w, ("up_blocks", "upsamplers"), &ch, c.layers_per_block + 1, groups, (1, 1))?;
        let cin = *ch.last().unwrap_or(&ch[0]);
        Ok(SpatialDecoder {
            mid_block: MidBlock::load(&w.pp("mid_block"), ch[0], groups)?,
            up_blocks,
            conv_norm_out: GroupNorm::load(&w.pp("conv_norm_out"), cin, groups, SPATIAL_EPS)?,
            conv_out: Conv2d::load(&w.pp("conv_out"), cin, 3, 3, 1, 1)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.mid_block.forward(x)?;
        for block in &self.up_blocks {
            crate::interrupt::check("the VideoVAE spatial decoder")?;
            for r in &block.resnets {
                x = r.forward(&x)?;
            }
            if let Some(up) = &block.sampler {
                let (_, _, h, w) = x.dims4()?;
                x = up.forward(&x.upsample_nearest2d(2 * h, 2 * w)?)?;
            }
        }
        self.conv_out.forward(&self.conv_norm_out.forward_silu(&x)?)
    }
}

/// The reference's `CausalConv3d`: zero padding, then an unpadded 3D convolution. Spatial padding
/// is `k/2` on each side; the temporal padding `(kt-1) - (stride-1)` is split front `p/2`, back
/// the rest, so a 3-tap stride-1 conv is centred (not causal, despite the name).
struct CausalConv3d {
    /// `(cout, cin, kt, k, k)`.
    weight: Tensor,
    bias: Option<Tensor>,
    kt: usize,
    k: usize,
    stride_t: usize,
}

impl CausalConv3d {
    fn load(w: &Weights, cin: usize, cout: usize, k: usize, stride_t: usize, bias: bool) -> Result<Self, WeightsError> {
        let w = w.pp("conv");
        let weight = w.get("weight", &[cout, cin, k, k, k])?;
        let bias = if bias { Some(w.get("bias", &[cout])?) } else { None };
        Ok(CausalConv3d { weight, bias, kt: k, k, stride_t })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        self.forward_add(x, None)
    }

    /// `self.forward(x) + residual`: on CUDA one native 3D convolution with the bias and the
    /// residual fused; elsewhere the taps side by side as one 2D convolution.
    fn forward_add(&self, x: &Tensor, residual: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let pad = (self.kt - 1) - (self.stride_t - 1);
        #[cfg(feature = "cuda")]
        if conv::fast(x) {
            // cuDNN pads symmetrically: an odd time padding (front pad/2, back the rest) is explicit.
            let (x, pad_t) = if pad.is_multiple_of(2) {
                (x.clone(), pad / 2)
            } else {
                (x.pad_with_zeros(2, pad / 2, pad - pad / 2)?, 0)
            };
            let (p, s) = ([pad_t, self.k / 2, self.k / 2], [self.stride_t, 1, 1]);
            return kernels::conv(
                &x,
                &self.weight,
                self.bias.as_ref(),
                residual,
                &p,
                &s,
                kernels::ConvLayout::Standard,
            );
        }
        let (b, c, t, h, w) = x.dims5()?;
        let x = x.pad_with_zeros(2, pad / 2, pad - pad / 2)?;
        let tp = t + pad;
        let t_out = (tp - self.kt) / self.stride_t + 1;
        // (B, T, C, H, W), then for each output frame its kt input frames side by side.
        let xt = x.permute((0, 2, 1, 3, 4))?.contiguous()?;
        let taps = (0..self.kt)
            .map(|k| {
                let idx: Vec<u32> = (0..t_out).map(|o| (o * self.stride_t + k) as u32).collect();
                xt.index_select(&Tensor::new(idx, x.device())?, 1)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        // Convolving the taps at once as one 2D conv over (kt * cin) channels: one large GEMM.
        let stacked = Tensor::cat(&taps, 2)?.reshape((b * t_out, self.kt * c, h, w))?;
        let cout = self.weight.dim(0)?;
        let weight = self.weight.permute((0, 2, 1, 3, 4))?.reshape((cout, self.kt * c, self.k, self.k))?;
        let y = conv::conv2d(&stacked, &weight, self.bias.as_ref(), None, self.k / 2, 1)?;
        let y = y.reshape((b, t_out, cout, h, w))?.permute((0, 2, 1, 3, 4))?.contiguous()?;
        match residual {
            Some(r) => y + r,
            None => Ok(y),
        }
    }
}

/// The temporal `ResBlock`: two norm-SiLU-3x3x3-conv steps plus a 1x1x1-projected residual when
/// the width changes; convs without bias.
struct ResBlock {
    norm1: GroupNorm,
    conv1: CausalConv3d,
    norm2: GroupNorm,
    conv2: CausalConv3d,
    conv3: Option<CausalConv3d>,
}

impl ResBlock {
    fn load(w: &Weights, cin: usize, cout: usize, groups: usize) -> Result<Self, WeightsError> {
        Ok(ResBlock {
            norm1: GroupNorm::load(&w.pp("norm1"), cin, groups, TEMPORAL_EPS)?,
            conv1: CausalConv3d::load(&w.pp("conv1"), cin, cout, 3, 1, false)?,
            norm2: GroupNorm::load(&w.pp("norm2"), cout, groups, TEMPORAL_EPS)?,
            conv2: CausalConv3d::load(&w.pp("conv2"), cout, cout, 3, 1, false)?,
            conv3: if cin != cout { Some(CausalConv3d::load(&w.pp("conv3"), cin, cout, 1, 1, false)?) } else { None },
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward_silu(x)?)?;
        let shortcut = match &self.conv3 {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        self.conv2.forward_add(&self.norm2.forward_silu(&h)?, Some(&shortcut))
    }
}

/// A run of ResBlocks, the first one changing the width from `cin` to `cout`.
fn res_blocks(w: &Weights, n: usize, cin: usize, cout: usize, groups: usize) -> Result<Vec<ResBlock>, WeightsError> {
    (0..n).map(|j| ResBlock::load(&w.pp(j), if j == 0 { cin } else { cout }, cout, groups)).collect()
}

fn run(blocks: &[ResBlock], mut x: Tensor) -> candle_core::Result<Tensor> {
    for b in blocks {
        crate::interrupt::check("the VideoVAE temporal blocks")?;
        x = b.forward(&x)?;
    }
    Ok(x)
}

/// The temporal encoder: 8 frames of spatial features -> one frame of posterior moments.
struct TemporalEncoder {
    conv_in: CausalConv3d,
    block_res_blocks: Vec<Vec<ResBlock>>,
    conv_blocks: Vec<CausalConv3d>,
    res_blocks: Vec<ResBlock>,
    norm1: GroupNorm,
    conv2: CausalConv3d,
}

impl TemporalEncoder {
    fn load(w: &Weights, c: &TemporalConfig) -> Result<Self, WeightsError> {
        let (f, g, n) = (c.filters, c.num_groups, c.num_res_blocks);
        let widths: Vec<usize> = c.channel_multipliers.iter().map(|m| f * m).collect();
        let mut block_res_blocks = Vec::new();
        let mut conv_blocks = Vec::new();
        let mut cin = f;
        for (i, &cout) in widths.iter().enumerate() {
            block_res_blocks.push(res_blocks(&w.pp("block_res_blocks").pp(i), n, cin, cout, g)?);
            if i + 1 < widths.len() {
                conv_blocks.push(CausalConv3d::load(&w.pp("conv_blocks").pp(i), cout, cout, 3, 2, true)?);
            }
            cin = cout;
        }
        Ok(TemporalEncoder {
            conv_in: CausalConv3d::load(&w.pp("conv_in"), c.in_out_channels, f, 3, 1, false)?,
            block_res_blocks,
            conv_blocks,
            res_blocks: res_blocks(&w.pp("res_blocks"), n, cin, cin, g)?,
            norm1: GroupNorm::load(&w.pp("norm1"), cin, g, TEMPORAL_EPS)?,
            conv2: CausalConv3d::load(&w.pp("conv2"), cin, 2 * c.latent_channels, 1, 1, true)?,
        })
    }

    fn forward(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let mut x = self.conv_in.forward(x)?;
        for (i, blocks) in self.block_res_blocks.iter().enumerate() {
            x = run(blocks, x)?;
            if let Some(down) = self.conv_blocks.get(i) {
                x = down.forward(&x)?;
            }
        }
        let x = run(&self.res_blocks, x)?;
        self.conv2.forward(&self.norm1.forward_silu(&x)?)
    }
}

/// The temporal decoder: n latent frames -> 8n frames of spatial features.
struct TemporalDecoder {
    conv1: CausalConv3d,
    res_blocks: Vec<ResBlock>,
    upsample_block: ResBlock,
    /// Blocks in the order they run (block index 3, 2, 1, 0), each with its depth-to-time conv.
    block_res_blocks: Vec<(Vec<ResBlock>, Option<CausalConv3d>)>,
    norm1: GroupNorm,
    conv_out: CausalConv3d,
}

impl TemporalDecoder {
    fn load(w: &Weights, c: &TemporalConfig) -> Result<Self, WeightsError> {
        let (f, g, n) = (c.filters, c.num_groups, c.num_res_blocks);
        let widths: Vec<usize> = c.channel_multipliers.iter().map(|m| f * m).collect();
        let top = *widths.last().unwrap_or(&f);
        let mut blocks = Vec::new();
        let mut cin = top;
        for i in (0..widths.len()).rev() {
            let cout = widths[i];
            let res = res_blocks(&w.pp("block_res_blocks").pp(i), n, cin, cout, g)?;
            // Blocks 3 and 2 end with a conv doubling the width, folded into time (x2 frames).
            let to_time = if i >= 2 {
                Some(CausalConv3d::load(&w.pp("conv_blocks").pp(i - 1), cout, 2 * cout, 3, 1, true)?)
            } else {
                None
            };
            blocks.push((res, to_time));
            cin = cout;
        }
        Ok(TemporalDecoder {
            conv1: CausalConv3d::load(&w.pp("conv1"), c.latent_channels, top, 3, 1, true)?,
            res_blocks: res_blocks(&w.pp("res_blocks"), n, top, top, g)?,
            upsample_block: ResBlock::load(&w.pp("upsample_block"), top, top, g)?,
            block_res_blocks: blocks,
            norm1: GroupNorm::load(&w.pp("norm1"), cin, g, TEMPORAL_EPS)?,
            conv_out: CausalConv3d::load(&w.pp("conv_out"), cin, c.in_out_channels, 3, 1, true)?,
        })
    }

    fn forward(&self, z: &Tensor) -> candle_core::Result<Tensor> {
        let x = run(&self.res_blocks, self.conv1.forward(z)?)?;
        let mut x = self.upsample_block.forward(&repeat_frames(&x)?)?;
        for (res, to_time) in &self.block_res_blocks {
            x = run(res, x)?;
            if let Some(conv) = to_time {
                x = depth_to_time(&conv.forward(&x)?)?;
            }
        }
        self.conv_out.forward(&self.norm1.forward_silu(&x)?)
    }
}

/// Nearest x2 in time: every frame twice.
fn repeat_frames(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    x.unsqueeze(3)?.broadcast_as((b, c, t, 2, h, w))?.reshape((b, c, 2 * t, h, w))
}

/// `(B, 2C, T, H, W)` -> `(B, C, 2T, H, W)` with `out[:, c, 2t + s] = in[:, 2c + s, t]`.
fn depth_to_time(x: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c2, t, h, w) = x.dims5()?;
    x.reshape((b, c2 / 2, 2, t, h, w))?.transpose(2, 3)?.reshape((b, c2 / 2, 2 * t, h, w))
}

/// Posterior of the temporal VAE before normalisation: `(B, 24, n, h, w)` each.
pub struct Posterior {
    /// Mean.
    pub mean: Tensor,
    /// Standard deviation, from the log-variance clamped to [-30, 20].
    pub std: Tensor,
}

/// The MUG-V VideoVAE.
pub struct MugVae {
    config: MugVaeConfig,
    encoder: SpatialEncoder,
    decoder: SpatialDecoder,
    temporal_encoder: TemporalEncoder,
    quant_conv: CausalConv3d,
    post_quant_conv: CausalConv3d,
    temporal_decoder: TemporalDecoder,
    shift: Tensor,
    scale: Tensor,
}

/// Apply `f` to `(B, C, T, H, W)` frame by frame in batches of `batch` frames (b-major), giving
/// `(B, C', T, H', W')`.
fn per_frame(
    x: &Tensor,
    batch: usize,
    f: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let frames = x.permute((0, 2, 1, 3, 4))?.reshape((b * t, c, h, w))?;
    let mut out = Vec::new();
    for start in (0..b * t).step_by(batch.max(1)) {
        let n = batch.max(1).min(b * t - start);
        out.push(f(&frames.narrow(0, start, n)?.contiguous()?)?);
    }
    let y = Tensor::cat(&out, 0)?;
    let (_, c2, h2, w2) = y.dims4()?;
    y.reshape((b, t, c2, h2, w2))?.permute((0, 2, 1, 3, 4))?.contiguous()
}

/// Channels of the SDXL VAE's KL latent, whose head the released file keeps (MUG-V exchanges the
/// mid-block features instead).
const KL_CHANNELS: usize = 4;

impl MugVae {
    /// The keys (with shapes) the released `vae.pt` holds and [`MugVae::load`] never reads: the
    /// 2D encoder's KL head (`conv_norm_out`, `conv_out`), the 2D decoder's `conv_in` and the
    /// training-only `logvar`. `load` accepts them; random checkpoints write them, so that they
    /// have the release's whole key set.
    pub fn unread_keys(config: &MugVaeConfig) -> Vec<(String, Vec<usize>)> {
        let top = config.spatial.block_out_channels.last().copied().unwrap_or(0);
        let s = "spatial_vae.module";
        vec![
            ("logvar".to_string(), vec![]),
            (format!("{s}.encoder.conv_norm_out.weight"), vec![top]),
            (format!("{s}.encoder.conv_norm_out.bias"), vec![top]),
            (format!("{s}.encoder.conv_out.weight"), vec![2 * KL_CHANNELS, top, 3, 3]),
            (format!("{s}.encoder.conv_out.bias"), vec![2 * KL_CHANNELS]),
            (format!("{s}.decoder.conv_in.weight"), vec![top, KL_CHANNELS, 3, 3]),
            (format!("{s}.decoder.conv_in.bias"), vec![top]),
        ]
    }

    /// Load from an official-layout checkpoint (`vae.pt` or a safetensors copy): keys
    /// `spatial_vae.module.*`, `temporal_vae.*`, `shift`, `scale`; every missing or unexpected key
    /// is named. The 2D encoder's head and the 2D decoder's `conv_in`, which MUG-V never runs, and
    /// the training-only `logvar` are accepted and ignored.
    pub fn load(checkpoint: &Checkpoint, config: &MugVaeConfig) -> Result<MugVae, WeightsError> {
        let w = checkpoint.weights();
        let s = w.pp("spatial_vae").pp("module");
        let t = w.pp("temporal_vae");
        let latent = config.temporal.latent_channels;
        let vae = MugVae {
            encoder: SpatialEncoder::load(&s.pp("encoder"), &config.spatial)?,
            decoder: SpatialDecoder::load(&s.pp("decoder"), &config.spatial)?,
            temporal_encoder: TemporalEncoder::load(&t.pp("encoder"), &config.temporal)?,
            quant_conv: CausalConv3d::load(&t.pp("quant_conv"), 2 * latent, 2 * latent, 1, 1, true)?,
            post_quant_conv: CausalConv3d::load(&t.pp("post_quant_conv"), latent, latent, 1, 1, true)?,
            temporal_decoder: TemporalDecoder::load(&t.pp("decoder"), &config.temporal)?,
            shift: w.get("shift", &[1, latent, 1, 1, 1])?,
            scale: w.get("scale", &[1, latent, 1, 1, 1])?,
            config: config.clone(),
        };
        let unread = MugVae::unread_keys(config);
        w.finish(&unread.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())?;
        Ok(vae)
    }

    /// The configuration the model was loaded with.
    pub fn config(&self) -> &MugVaeConfig {
        &self.config
    }

    /// Per-frame 2D encoding `(B, 3, T, H, W)` in [-1, 1] -> features `(B, C, T, H/8, W/8)`
    /// (scaled by the scaling factor; sizes floor by 8).
    pub fn spatial_encode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let factor = self.config.spatial.scaling_factor;
        per_frame(x, self.config.micro_batch_size, |f| self.encoder.forward(f)? * factor)
    }

    /// Per-frame 2D decoding of features `(B, C, T, h, w)` -> `(B, 3, T, 8h, 8w)`.
    pub fn spatial_decode(&self, x: &Tensor) -> candle_core::Result<Tensor> {
        let factor = self.config.spatial.scaling_factor;
        per_frame(x, self.config.micro_batch_size, |f| self.decoder.forward(&(f / factor)?))
    }

    /// Temporal posterior of one chunk of features `(B, C, T, h, w)`: zero frames are prepended up
    /// to a multiple of 8 and each group of 8 frames is encoded on its own.
    pub fn temporal_posterior(&self, x: &Tensor) -> candle_core::Result<Posterior> {
        let (b, c, t, h, w) = x.dims5()?;
        let pad = (GROUP - t % GROUP) % GROUP;
        let groups = (t + pad) / GROUP;
        let x = x.pad_with_zeros(2, pad, 0)?.reshape((b, c, groups, GROUP, h, w))?.transpose(1, 2)?.reshape((
            b * groups,
            c,
            GROUP,
            h,
            w,
        ))?;
        let moments = self.quant_conv.forward(&self.temporal_encoder.forward(&x)?)?;
        let moments = moments.reshape((b, groups, (), h, w))?.transpose(1, 2)?;
        let latent = self.config.temporal.latent_channels;
        let mean = moments.narrow(1, 0, latent)?.contiguous()?;
        let logvar = moments.narrow(1, latent, latent)?.clamp(-30f32, 20f32)?;
        Ok(Posterior { mean, std: (logvar * 0.5)?.exp()?.contiguous()? })
    }

    /// Temporal decoding of one chunk of latents `(B, 24, n, h, w)` (unnormalised) into
    /// `num_frames` frames of features: 8n frames, of which the first `8n - num_frames` are dropped.
    pub fn temporal_decode(&self, z: &Tensor, num_frames: usize) -> candle_core::Result<Tensor> {
        let x = self.temporal_decoder.forward(&self.post_quant_conv.forward(z)?)?;
        let drop = (GROUP - num_frames % GROUP) % GROUP;
        let t = x.dim(2)?;
        x.narrow(2, drop, t - drop)
    }

    /// Posterior of a whole video `(B, 3, T, H, W)` in [-1, 1], unnormalised: 2D features; when
    /// `T % 8 == 1` frame 0 is repeated 7 more times in front (so an image-led video keeps its
    /// first frame in a latent frame of its own); then chunks of `micro_frame_size` frames.
    pub fn posterior(&self, x: &Tensor) -> candle_core::Result<Posterior> {
        let x_z = self.replicate_first_frame(&self.spatial_encode(x)?)?;
        let t = x_z.dim(2)?;
        let (mut means, mut stds) = (Vec::new(), Vec::new());
        for start in (0..t).step_by(self.config.micro_frame_size) {
            let n = self.config.micro_frame_size.min(t - start);
            let p = self.temporal_posterior(&x_z.narrow(2, start, n)?)?;
            means.push(p.mean);
            stds.push(p.std);
        }
        Ok(Posterior { mean: Tensor::cat(&means, 2)?, std: Tensor::cat(&stds, 2)? })
    }

    /// Features `(B, C, T, h, w)` with frame 0 repeated 7 more times in front when `T % 8 == 1`.
    pub fn replicate_first_frame(&self, x_z: &Tensor) -> candle_core::Result<Tensor> {
        let (b, c, t, h, w) = x_z.dims5()?;
        if t % GROUP != 1 {
            return Ok(x_z.clone());
        }
        let first = x_z.narrow(2, 0, 1)?.broadcast_as((b, c, GROUP - 1, h, w))?;
        Tensor::cat(&[&first.contiguous()?, x_z], 2)
    }

    /// Encode a video `(B, 3, T, H, W)` in [-1, 1] into normalised latents `(B, 24, n, H/8, W/8)`:
    /// the posterior mean, or the sample `mean + std * noise` when standard-normal `noise` of the
    /// latent's shape is given (the reference always samples).
    pub fn encode(&self, x: &Tensor, noise: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let p = self.posterior(x)?;
        let z = match noise {
            Some(eps) => (&p.mean + (&p.std * eps)?)?,
            None => p.mean,
        };
        z.broadcast_sub(&self.shift.to_dtype(z.dtype())?)?.broadcast_div(&self.scale.to_dtype(z.dtype())?)
    }

    /// Decode normalised latents `(B, 24, n, h, w)` into `num_frames` frames `(B, 3, T, 8h, 8w)`:
    /// chunks of `micro_frame_size / 8` latent frames, each decoded on its own; a chunk whose frame
    /// count is not a multiple of 8 loses its first frames. `n` must be the latent length of
    /// `num_frames` frames.
    pub fn decode(&self, z: &Tensor, num_frames: usize) -> candle_core::Result<Tensor> {
        concat_in_time(|sink| self.decode_chunks(z, num_frames, sink))
    }

    /// [`MugVae::decode`] one temporal chunk at a time: `sink` receives the frames
    /// `(B, 3, t, 8h, 8w)` of each chunk in order, so memory holds one chunk, not the video.
    pub fn decode_chunks(
        &self,
        z: &Tensor,
        num_frames: usize,
        sink: &mut dyn FnMut(Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        self.temporal_chunks(z, num_frames, &mut |features| sink(self.spatial_decode(&features)?))
    }

    /// The temporal decoding of each chunk of normalised latents, in order.
    fn temporal_chunks(
        &self,
        z: &Tensor,
        num_frames: usize,
        f: &mut dyn FnMut(Tensor) -> candle_core::Result<()>,
    ) -> candle_core::Result<()> {
        let z = self.denormalise(z, num_frames)?;
        let (n, chunk) = (z.dim(2)?, self.config.micro_z_frames());
        for (k, start) in (0..n).step_by(chunk).enumerate() {
            let frames = self.config.micro_frame_size.min(num_frames - k * self.config.micro_frame_size);
            f(self.temporal_decode(&z.narrow(2, start, chunk.min(n - start))?, frames)?)?;
        }
        Ok(())
    }

    /// `z * scale + shift` after checking that `z` holds the latent length of `num_frames`.
    fn denormalise(&self, z: &Tensor, num_frames: usize) -> candle_core::Result<Tensor> {
        let n = z.dim(2)?;
        let expected = self.config.latent_size(num_frames, 0, 0).0;
        if num_frames == 0 || n != expected {
            candle_core::bail!("{num_frames} frames have {expected} latent frames, the latents hold {n}");
        }
        z.broadcast_mul(&self.scale.to_dtype(z.dtype())?)?.broadcast_add(&self.shift.to_dtype(z.dtype())?)
    }

    /// The temporal half of [`MugVae::decode`]: normalised latents -> 2D features of `num_frames`.
    pub fn decode_features(&self, z: &Tensor, num_frames: usize) -> candle_core::Result<Tensor> {
        concat_in_time(|sink| self.temporal_chunks(z, num_frames, sink))
    }
}

/// The chunks a producer hands to its sink, concatenated along time (axis 2).
fn concat_in_time(
    produce: impl FnOnce(&mut dyn FnMut(Tensor) -> candle_core::Result<()>) -> candle_core::Result<()>,
) -> candle_core::Result<Tensor> {
    let mut parts = Vec::new();
    produce(&mut |chunk| {
        parts.push(chunk);
        Ok(())
    })?;
    Tensor::cat(&parts, 2)
}

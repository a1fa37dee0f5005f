//! Correctness of the fused kernels on the GPU against f32 references computed with plain candle
//! ops: fresh random inputs each run (the seed is printed), outputs poisoned with NaN before every
//! launch. Runs only with `--features cuda` on a machine with a GPU (scripts/gpu-check.sh).
#![cfg(feature = "cuda")]

use candle_core::{DType, Device, IndexOp, Tensor, D};
use rand::{rngs::StdRng, Rng, SeedableRng};
use rand_distr::StandardNormal;

fn device() -> Device {
    kernels::set_poison_outputs(true);
    Device::new_cuda(0).expect("a CUDA device")
}

/// A random generator seeded from the clock; the seed is printed so a failure can be replayed
/// with `MUGFLOW_KERNEL_SEED`.
fn rng(test: &str) -> StdRng {
    let seed = std::env::var("MUGFLOW_KERNEL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("{test}: seed {seed}");
    StdRng::seed_from_u64(seed)
}

fn randn(rng: &mut StdRng, shape: &[usize], dtype: DType, dev: &Device) -> Tensor {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.sample(StandardNormal)).collect();
    Tensor::from_vec(v, shape, dev).unwrap().to_dtype(dtype).unwrap()
}

/// `||a - b|| / ||b||` in f32; NaN (a poisoned element left unwritten) fails every comparison.
fn rel_l2(a: &Tensor, b: &Tensor) -> f32 {
    let a = a.to_dtype(DType::F32).unwrap();
    let b = b.to_dtype(DType::F32).unwrap();
    let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
    norm(&(a - &b).unwrap()) / norm(&b)
}

fn check(what: &str, ours: &Tensor, reference: &Tensor, tolerance: f32) {
    assert_eq!(ours.dims(), reference.dims(), "{what}: shape");
    let err = rel_l2(ours, reference);
    eprintln!("{what}: rel-L2 {err:.3e}");
    assert!(err < tolerance, "{what}: rel-L2 {err} (tolerance {tolerance})");
}

/// Tolerance for a bf16 result against an f32 reference.
const BF16_TOL: f32 = 1e-2;

/// f32 attention of one batch element: q `[Lq, H, D]`, k/v `[Lk, H, D]`, an optional score bias
/// `[H, Lq, Lk]` added after the scaling.
fn attention_ref(q: &Tensor, k: &Tensor, v: &Tensor, scale: f64, bias: Option<&Tensor>) -> Tensor {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().transpose(0, 1).unwrap().contiguous().unwrap();
    let (q, k, v) = (f(q), f(k), f(v));
    let s = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() * scale).unwrap();
    let s = match bias {
        Some(bias) => (s + bias.to_dtype(DType::F32).unwrap()).unwrap(),
        None => s,
    };
    let s = s.broadcast_sub(&s.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
    let p = s.broadcast_div(&s.sum_keepdim(D::Minus1).unwrap()).unwrap();
    p.matmul(&v).unwrap().transpose(0, 1).unwrap()
}

#[test]
fn flash_attention_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("flash_attention");
    for &hd in &kernels::FLASH_HEAD_DIMS {
        // Self-attention through strided views of a fused qkv [B, L, 3, H, D], lengths that are not
        // multiples of the 128-row and 64-key tiles.
        let (b, l, h) = (2, 333, 3);
        let qkv = randn(&mut rng, &[b, l, 3, h, hd], DType::BF16, &dev);
        let (q, k, v) = (qkv.i((.., .., 0)).unwrap(), qkv.i((.., .., 1)).unwrap(), qkv.i((.., .., 2)).unwrap());
        let scale = 1.0 / (hd as f64).sqrt();
        kernels::set_attention_backend(kernels::AttentionBackend::Kernel);
        let kernel = kernels::flash_attention(&q, &k, &v, None, scale as f32).unwrap();
        kernels::set_attention_backend(kernels::AttentionBackend::Cudnn);
        let cudnn = kernels::cudnn_attention(&q, &k, &v, scale as f32).unwrap();
        for i in 0..b {
            let r = attention_ref(&q.get(i).unwrap(), &k.get(i).unwrap(), &v.get(i).unwrap(), scale, None);
            check(&format!("self-attention hd {hd} batch {i}, kernel"), &kernel.get(i).unwrap(), &r, BF16_TOL);
            check(&format!("self-attention hd {hd} batch {i}, cuDNN"), &cudnn.get(i).unwrap(), &r, BF16_TOL);
        }
        // Cross-attention: 150 queries, padded keys with a length per batch element.
        let (lq, lk) = (150, 77);
        let q = randn(&mut rng, &[b, lq, h, hd], DType::BF16, &dev);
        let kv = randn(&mut rng, &[b, lk, 2, h, hd], DType::BF16, &dev);
        let (k, v) = (kv.i((.., .., 0)).unwrap(), kv.i((.., .., 1)).unwrap());
        let lens = [77u32, 13];
        let ours = kernels::flash_attention(&q, &k, &v, Some(&lens), scale as f32).unwrap();
        for (i, &n) in lens.iter().enumerate() {
            let n = n as usize;
            let kk = k.get(i).unwrap().narrow(0, 0, n).unwrap();
            let vv = v.get(i).unwrap().narrow(0, 0, n).unwrap();
            let r = attention_ref(&q.get(i).unwrap(), &kk, &vv, scale, None);
            check(&format!("cross-attention hd {hd} batch {i} ({n} keys)"), &ours.get(i).unwrap(), &r, BF16_TOL);
        }
    }
}

#[test]
fn flash_attention_bias_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("flash_attention_bias");
    for &hd in &kernels::FLASH_BIAS_HEAD_DIMS {
        // T5's case: unscaled scores plus a per-head bias, keys padded per batch element, token-
        // major views of separate projections; lengths off the tiles. A scaled case too.
        let (b, l, h) = (2, 301, 3);
        let qkv = randn(&mut rng, &[b, l, 3, h, hd], DType::BF16, &dev);
        let (q, k, v) = (qkv.i((.., .., 0)).unwrap(), qkv.i((.., .., 1)).unwrap(), qkv.i((.., .., 2)).unwrap());
        let bias = (randn(&mut rng, &[h, l, l], DType::BF16, &dev) * 3.0).unwrap();
        let lens = [301u32, 120];
        for scale in [1.0, 1.0 / (hd as f64).sqrt()] {
            let ours = kernels::flash_attention_bias(&q, &k, &v, &bias, Some(&lens), scale as f32).unwrap();
            for (i, &n) in lens.iter().enumerate() {
                let n = n as usize;
                let kk = k.get(i).unwrap().narrow(0, 0, n).unwrap();
                let vv = v.get(i).unwrap().narrow(0, 0, n).unwrap();
                let bb = bias.narrow(2, 0, n).unwrap();
                let r = attention_ref(&q.get(i).unwrap(), &kk, &vv, scale, Some(&bb));
                let what = format!("attention + bias hd {hd} scale {scale:.3} batch {i} ({n} keys)");
                check(&what, &ours.get(i).unwrap(), &r, BF16_TOL);
            }
        }
    }
}

#[test]
fn flash_attention_long_sequence() {
    let dev = device();
    let mut rng = rng("flash_attention_long");
    let (l, h, hd) = (4133, 2, 72);
    let q = randn(&mut rng, &[1, l, h, hd], DType::BF16, &dev);
    let k = randn(&mut rng, &[1, l, h, hd], DType::BF16, &dev);
    let v = randn(&mut rng, &[1, l, h, hd], DType::BF16, &dev);
    let scale = 1.0 / (hd as f64).sqrt();
    kernels::set_attention_backend(kernels::AttentionBackend::Kernel);
    let kernel = kernels::flash_attention(&q, &k, &v, None, scale as f32).unwrap();
    kernels::set_attention_backend(kernels::AttentionBackend::Cudnn);
    let cudnn = kernels::cudnn_attention(&q, &k, &v, scale as f32).unwrap();
    let r = attention_ref(&q.get(0).unwrap(), &k.get(0).unwrap(), &v.get(0).unwrap(), scale, None);
    check("attention 4133 tokens hd 72, kernel", &kernel.get(0).unwrap(), &r, BF16_TOL);
    check("attention 4133 tokens hd 72, cuDNN", &cudnn.get(0).unwrap(), &r, BF16_TOL);
}

/// The Hopper kernel (head dim 72, compute capability 9.0) against the f32 reference: strided views of
/// a fused qkv and contiguous tensors, token counts below one 128-key tile and one 192-query block, of
/// whole key tiles and query blocks and with partial ones, sharp scores (the online max rescale), and
/// the routing of `flash_attention`.
#[test]
fn hopper_attention_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("hopper_attention");
    let hd = 72;
    let scale = 1.0 / (hd as f64).sqrt();
    // (batch, tokens, heads, fused qkv, q multiplied by)
    let cases = [
        (2, 333, 3, true, 1.0),
        (1, 77, 2, false, 1.0),
        (1, 256, 2, true, 1.0),
        (1, 192, 2, false, 1.0),
        (2, 129, 1, false, 4.0),
    ];
    for (b, l, h, fused, sharp) in cases {
        let (q, k, v) = if fused {
            let qkv = randn(&mut rng, &[b, l, 3, h, hd], DType::BF16, &dev);
            (qkv.i((.., .., 0)).unwrap(), qkv.i((.., .., 1)).unwrap(), qkv.i((.., .., 2)).unwrap())
        } else {
            let t = |rng: &mut StdRng| randn(rng, &[b, l, h, hd], DType::BF16, &dev);
            (t(&mut rng), t(&mut rng), t(&mut rng))
        };
        let q = if sharp == 1.0 { q } else { (q * sharp).unwrap() };
        let ours = kernels::hopper_attention(&q, &k, &v, scale as f32).unwrap();
        for i in 0..b {
            let r = attention_ref(&q.get(i).unwrap(), &k.get(i).unwrap(), &v.get(i).unwrap(), scale, None);
            let what = format!("Hopper attention {l} tokens, {h} heads, fused {fused}, q x{sharp}, batch {i}");
            check(&what, &ours.get(i).unwrap(), &r, BF16_TOL);
        }
    }

    let (l, h) = (4133, 2);
    let qkv = randn(&mut rng, &[1, l, 3, h, hd], DType::BF16, &dev);
    let (q, k, v) = (qkv.i((.., .., 0)).unwrap(), qkv.i((.., .., 1)).unwrap(), qkv.i((.., .., 2)).unwrap());
    kernels::set_attention_backend(kernels::AttentionBackend::Hopper);
    let routed = kernels::flash_attention(&q, &k, &v, None, scale as f32).unwrap();
    let r = attention_ref(&q.get(0).unwrap(), &k.get(0).unwrap(), &v.get(0).unwrap(), scale, None);
    check("attention 4133 tokens hd 72, Hopper backend", &routed.get(0).unwrap(), &r, BF16_TOL);

    // Head dim 64: not the Hopper kernel's; the backend falls back to cuDNN, the strict call says why.
    let q = randn(&mut rng, &[1, 200, 2, 64], DType::BF16, &dev);
    let fallback = kernels::flash_attention(&q, &q, &q, None, 0.125).unwrap();
    let r = attention_ref(&q.get(0).unwrap(), &q.get(0).unwrap(), &q.get(0).unwrap(), 0.125, None);
    check("attention hd 64, Hopper backend falls back", &fallback.get(0).unwrap(), &r, BF16_TOL);
    let err = kernels::hopper_attention(&q, &q, &q, 0.125).unwrap_err().to_string();
    assert!(err.contains("head dim"), "hopper_attention on head dim 64: {err}");
    kernels::set_attention_backend(kernels::AttentionBackend::Cudnn);
}

/// f32 LayerNorm without affine over the last axis.
fn layer_norm_ref(x: &Tensor, eps: f64) -> Tensor {
    let x = x.to_dtype(DType::F32).unwrap();
    let x = x.broadcast_sub(&x.mean_keepdim(D::Minus1).unwrap()).unwrap();
    let var = x.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
    x.broadcast_div(&(var + eps).unwrap().sqrt().unwrap()).unwrap()
}

/// Random 0/1 table rows per token `[B, L]` (u32) and the per-token rows of `table` `[B, R, D]`.
fn rows_and_pick(rng: &mut StdRng, table: &Tensor, b: usize, l: usize, dev: &Device) -> (Tensor, Tensor) {
    let idx: Vec<u32> = (0..b * l).map(|_| rng.random_range(0..2u32)).collect();
    let rows = Tensor::from_vec(idx.clone(), (b, l), dev).unwrap();
    let table = table.to_dtype(DType::F32).unwrap();
    let picked: Vec<Tensor> = (0..b)
        .map(|i| {
            let ids = Tensor::from_vec(idx[i * l..(i + 1) * l].to_vec(), l, dev).unwrap();
            table.get(i).unwrap().index_select(&ids, 0).unwrap()
        })
        .collect();
    (rows, Tensor::stack(&picked, 0).unwrap())
}

#[test]
fn ln_modulate_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("ln_modulate");
    let (b, l, d) = (2, 301, 3456);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
        let x = (randn(&mut rng, &[b, l, d], dtype, &dev) * 3.0).unwrap().to_dtype(dtype).unwrap();
        let shift = randn(&mut rng, &[b, 2, d], dtype, &dev);
        let scale = randn(&mut rng, &[b, 2, d], dtype, &dev);
        let (rows, sh) = rows_and_pick(&mut rng, &shift, b, l, &dev);
        let sc: Vec<Tensor> = (0..b)
            .map(|i| {
                let ids = rows.get(i).unwrap();
                scale.to_dtype(DType::F32).unwrap().get(i).unwrap().index_select(&ids, 0).unwrap()
            })
            .collect();
        let sc = Tensor::stack(&sc, 0).unwrap();
        let ours = kernels::ln_modulate(&x, &shift, &scale, Some(&rows), 1.0, 1e-6).unwrap();
        let r = layer_norm_ref(&x, 1e-6).mul(&(sc + 1.0).unwrap()).unwrap().add(&sh).unwrap();
        check(&format!("ln_modulate {dtype:?}"), &ours, &r, tol);

        // Affine LayerNorm: one shared row of weight and bias.
        let w = randn(&mut rng, &[1, 1, d], dtype, &dev);
        let bias = randn(&mut rng, &[1, 1, d], dtype, &dev);
        let ours = kernels::ln_modulate(&x, &bias, &w, None, 0.0, 1e-6).unwrap();
        let r = layer_norm_ref(&x, 1e-6)
            .broadcast_mul(&w.to_dtype(DType::F32).unwrap())
            .unwrap()
            .broadcast_add(&bias.to_dtype(DType::F32).unwrap())
            .unwrap();
        check(&format!("affine layer norm {dtype:?}"), &ours, &r, tol);
    }
}

#[test]
fn gated_residual_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("gated_residual");
    let (b, l, d) = (2, 257, 1000);
    for (dtype, tol) in [(DType::F32, 1e-6), (DType::BF16, BF16_TOL)] {
        let x = randn(&mut rng, &[b, l, d], dtype, &dev);
        let y = randn(&mut rng, &[b, l, d], dtype, &dev);
        let gate = randn(&mut rng, &[b, 2, d], dtype, &dev);
        let (rows, g) = rows_and_pick(&mut rng, &gate, b, l, &dev);
        let ours = kernels::gated_residual(&x, &y, &gate, Some(&rows)).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let r = f(&x).add(&g.mul(&f(&y)).unwrap()).unwrap();
        check(&format!("gated_residual {dtype:?}"), &ours, &r, tol);

        // Row indices past the table are clamped to its last row, never read outside it.
        let bad = Tensor::full(7u32, (b, l), &dev).unwrap();
        let last = Tensor::full(1u32, (b, l), &dev).unwrap();
        let ours = kernels::gated_residual(&x, &y, &gate, Some(&bad)).unwrap();
        let r = kernels::gated_residual(&x, &y, &gate, Some(&last)).unwrap();
        check(&format!("gated_residual clamped rows {dtype:?}"), &ours, &r, 1e-7);
    }
}

#[test]
fn rms_norm_rope_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("rms_norm_rope");
    let (b, l, h) = (2, 211, 5);
    for hd in [24, 72, 128] {
        for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
            let qkv = randn(&mut rng, &[b, l, 3, h, hd], dtype, &dev);
            let x = qkv.i((.., .., 1)).unwrap(); // strided [B, L, H, D]
            let w = randn(&mut rng, &[hd], dtype, &dev);
            let angles = (randn(&mut rng, &[l, hd / 2], DType::F32, &dev) * 10.0).unwrap();
            let (cos, sin) = (angles.cos().unwrap(), angles.sin().unwrap());
            let xf = x.to_dtype(DType::F32).unwrap();
            let var = xf.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
            let n = xf.broadcast_div(&(var + 1e-6).unwrap().sqrt().unwrap()).unwrap();
            let n = n.broadcast_mul(&w.to_dtype(DType::F32).unwrap()).unwrap();
            let ours = kernels::rms_norm_rope(&x, &w, None, 1e-6).unwrap();
            check(&format!("rms_norm hd {hd} {dtype:?}"), &ours, &n, tol);

            // Interleaved pairs (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).
            let rotate = |n: &Tensor| {
                let pairs = n.reshape((b, l, h, hd / 2, 2)).unwrap();
                let (x0, x1) = (pairs.i((.., .., .., .., 0)).unwrap(), pairs.i((.., .., .., .., 1)).unwrap());
                let (c, s) = (cos.reshape((1, l, 1, hd / 2)).unwrap(), sin.reshape((1, l, 1, hd / 2)).unwrap());
                let r0 = (x0.broadcast_mul(&c).unwrap() - x1.broadcast_mul(&s).unwrap()).unwrap();
                let r1 = (x0.broadcast_mul(&s).unwrap() + x1.broadcast_mul(&c).unwrap()).unwrap();
                Tensor::stack(&[r0, r1], D::Minus1).unwrap().reshape((b, l, h, hd)).unwrap()
            };
            let ours = kernels::rms_norm_rope(&x, &w, Some((&cos, &sin)), 1e-6).unwrap();
            check(&format!("rms_norm_rope hd {hd} {dtype:?}"), &ours, &rotate(&n), tol);
            let ours = kernels::rope(&x, &cos, &sin).unwrap();
            check(&format!("rope hd {hd} {dtype:?}"), &ours, &rotate(&xf), tol);
        }
    }
}

#[test]
fn group_norm_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("group_norm");
    let (b, c, t, h, w, groups) = (2, 64, 3, 17, 29, 32);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
        let x = randn(&mut rng, &[b, c, t, h, w], dtype, &dev).affine(2.0, 0.5).unwrap();
        let weight = randn(&mut rng, &[c], dtype, &dev);
        let bias = randn(&mut rng, &[c], dtype, &dev);
        let xf = x.to_dtype(DType::F32).unwrap().reshape((b, groups, ())).unwrap();
        let n = layer_norm_ref(&xf, 1e-6).reshape((b, c, t, h, w)).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().reshape((1, c, 1, 1, 1)).unwrap();
        let r = n.broadcast_mul(&f(&weight)).unwrap().broadcast_add(&f(&bias)).unwrap();
        let ours = kernels::group_norm(&x, &weight, &bias, groups, 1e-6, false).unwrap();
        check(&format!("group_norm {dtype:?}"), &ours, &r, tol);
        let ours = kernels::group_norm(&x, &weight, &bias, groups, 1e-6, true).unwrap();
        check(&format!("group_norm + silu {dtype:?}"), &ours, &r.silu().unwrap(), tol);
        // Channels-last output (B, T, H, W, C).
        let ours = kernels::group_norm_channels_last(&x, &weight, &bias, groups, 1e-6, true).unwrap();
        let ours = ours.permute((0, 4, 1, 2, 3)).unwrap();
        check(&format!("group_norm + silu, channels-last {dtype:?}"), &ours, &r.silu().unwrap(), tol);
        // A large group spread over many blocks, with an offset that a one-pass variance would lose.
        let big = randn(&mut rng, &[1, 64, 4, 96, 160], dtype, &dev).affine(0.5, 3.0).unwrap();
        let xf = big.to_dtype(DType::F32).unwrap().reshape((1, groups, ())).unwrap();
        let r = layer_norm_ref(&xf, 1e-6).reshape((1, 64, 4, 96, 160)).unwrap();
        let r = r.broadcast_mul(&f(&weight)).unwrap().broadcast_add(&f(&bias)).unwrap();
        let ours = kernels::group_norm(&big, &weight, &bias, groups, 1e-6, false).unwrap();
        check(&format!("group_norm, large groups {dtype:?}"), &ours, &r, tol);
    }
}

#[test]
fn channel_norm_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("channel_norm");
    let (b, t, c, h, w) = (2, 3, 96, 13, 21);
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
        let x = randn(&mut rng, &[b, t, c, h, w], dtype, &dev);
        let gamma = randn(&mut rng, &[c], dtype, &dev);
        let xf = x.to_dtype(DType::F32).unwrap();
        let norm = xf.sqr().unwrap().sum_keepdim(2).unwrap().sqrt().unwrap().maximum(1e-12).unwrap();
        let g = gamma.to_dtype(DType::F32).unwrap().reshape((c, 1, 1)).unwrap();
        let r = xf.broadcast_div(&norm).unwrap().broadcast_mul(&g).unwrap();
        let ours = kernels::channel_norm(&x, &gamma, 2, false).unwrap();
        check(&format!("channel_norm {dtype:?}"), &ours, &r, tol);
        let ours = kernels::channel_norm(&x, &gamma, 2, true).unwrap();
        check(&format!("channel_norm + silu {dtype:?}"), &ours, &r.silu().unwrap(), tol);
    }
}

/// f32 reference of a 3-D convolution on the CPU: `x` `(N, C, T, H, W)`, `w` `(Co, C, kt, k, k)`,
/// time padding `pt` and stride `st`, square spatial padding `ps` and stride `ss`; each output
/// frame is the sum over taps of candle's 2-D convolution of the input frames.
fn conv3d_ref(x: &Tensor, w: &Tensor, (pt, st): (usize, usize), (ps, ss): (usize, usize)) -> Tensor {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let (x, w) = (f(x).pad_with_zeros(2, pt, pt).unwrap(), f(w));
    let (t, kt) = (x.dim(2).unwrap(), w.dim(2).unwrap());
    let frames: Vec<Tensor> = (0..(t - kt) / st + 1)
        .map(|o| {
            let taps: Vec<Tensor> = (0..kt)
                .map(|k| {
                    let frame = x.narrow(2, o * st + k, 1).unwrap().squeeze(2).unwrap().contiguous().unwrap();
                    let tap = w.narrow(2, k, 1).unwrap().squeeze(2).unwrap().contiguous().unwrap();
                    frame.conv2d(&tap, ps, ss, 1, 1).unwrap()
                })
                .collect();
            taps.into_iter().reduce(|a, b| (a + b).unwrap()).unwrap()
        })
        .collect();
    Tensor::stack(&frames, 2).unwrap()
}

/// `y + bias[c] + residual` of a reference `(N, Co, ...)` output.
fn add_bias_residual(y: &Tensor, bias: &Tensor, residual: &Tensor) -> Tensor {
    let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap().to_device(&Device::Cpu).unwrap();
    let mut shape = vec![1; y.rank()];
    shape[1] = y.dim(1).unwrap();
    y.broadcast_add(&f(bias).reshape(shape).unwrap()).unwrap().add(&f(residual)).unwrap()
}

/// Each case runs twice with fresh inputs: the first call measures the algorithms (and writes the
/// output while doing so), the second runs the cached plan on a freshly poisoned output.
#[test]
fn conv_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("conv");
    // (what, N, C, Co, T (0: 2-D), H, W, kt, k, (pt, st), (ps, ss))
    let cases = [
        ("2-D 3x3", 2, 20, 24, 0, 17, 23, 0, 3, (0, 1), (1, 1)),
        ("2-D 3x3 stride 2", 2, 16, 8, 0, 18, 21, 0, 3, (0, 1), (0, 2)),
        ("2-D 1x1", 3, 24, 40, 0, 9, 11, 0, 1, (0, 1), (0, 1)),
        ("3-D 3x3x3", 1, 16, 8, 5, 12, 14, 3, 3, (1, 1), (1, 1)),
        ("3-D 3x3x3 time stride 2", 2, 8, 16, 7, 10, 9, 3, 3, (0, 2), (1, 1)),
        ("3-D 3x1x1 time conv", 1, 16, 32, 6, 8, 10, 3, 1, (0, 1), (0, 1)),
    ];
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
        for (what, n, c, co, t, h, w, kt, k, (pt, st), (ps, ss)) in cases {
            for run in 0..2 {
                let bias = randn(&mut rng, &[co], dtype, &dev);
                let ours_and_ref = if t == 0 {
                    let x = randn(&mut rng, &[n, c, h, w], dtype, &dev);
                    let wt = randn(&mut rng, &[co, c, k, k], dtype, &dev);
                    let r = conv3d_ref(&x.unsqueeze(2).unwrap(), &wt.unsqueeze(2).unwrap(), (0, 1), (ps, ss));
                    let r = r.squeeze(2).unwrap();
                    let res = randn(&mut rng, r.dims(), dtype, &dev);
                    let out = kernels::ConvLayout::Standard;
                    let ours = kernels::conv(&x, &wt, Some(&bias), Some(&res), &[ps, ps], &[ss, ss], out).unwrap();
                    // The input as a channels-last view (what group_norm_channels_last gives).
                    let x_cl = x.permute((0, 2, 3, 1)).unwrap().contiguous().unwrap().permute((0, 3, 1, 2)).unwrap();
                    let cl = kernels::conv(&x_cl, &wt, Some(&bias), Some(&res), &[ps, ps], &[ss, ss], out).unwrap();
                    let expected = add_bias_residual(&r, &bias, &res);
                    vec![(ours, expected.clone()), (cl, expected)]
                } else {
                    let x = randn(&mut rng, &[n, c, t, h, w], dtype, &dev);
                    let wt = randn(&mut rng, &[co, c, kt, k, k], dtype, &dev);
                    let r = conv3d_ref(&x, &wt, (pt, st), (ps, ss));
                    let res = randn(&mut rng, r.dims(), dtype, &dev);
                    let (p, s) = ([pt, ps, ps], [st, ss, ss]);
                    let std = kernels::ConvLayout::Standard;
                    let ours = kernels::conv(&x, &wt, Some(&bias), Some(&res), &p, &s, std).unwrap();
                    let expected = add_bias_residual(&r, &bias, &res);
                    // Frames-first: (N, T, C, H, W) in, (N, T', Co, H', W') out.
                    let ft = |t: &Tensor| t.permute((0, 2, 1, 3, 4)).unwrap().contiguous().unwrap();
                    let ff = kernels::ConvLayout::FramesFirst;
                    let frames_first = kernels::conv(&ft(&x), &wt, Some(&bias), Some(&ft(&res)), &p, &s, ff).unwrap();
                    let r_ff = ft(&expected);
                    vec![(ours, expected), (frames_first, r_ff)]
                };
                for (i, (ours, r)) in ours_and_ref.iter().enumerate() {
                    let layout = match (i, t) {
                        (0, _) => "",
                        (_, 0) => ", channels-last input",
                        _ => ", frames-first",
                    };
                    let ours = ours.to_device(&Device::Cpu).unwrap();
                    check(&format!("conv {what}{layout} {dtype:?} run {run}"), &ours, r, tol);
                }
            }
        }
    }
}

#[test]
fn linear_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("linear");
    // Rows that are not a multiple of any tile, a batch axis, both epilogues; the second size is
    // above the size from which the algorithm is measured, and each product runs twice (the second
    // time on the plan kept by the first).
    for (b, l, k, n) in [(2, 333, 136, 200), (2, 2049, 1024, 2112)] {
        let x = randn(&mut rng, &[b, l, k], DType::BF16, &dev);
        let w = (randn(&mut rng, &[n, k], DType::BF16, &dev) * 0.1).unwrap();
        let bias = randn(&mut rng, &[n], DType::BF16, &dev);
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let reference = f(&x).broadcast_matmul(&f(&w).t().unwrap()).unwrap().broadcast_add(&f(&bias)).unwrap();
        let no_bias = f(&x).broadcast_matmul(&f(&w).t().unwrap()).unwrap();
        for (gelu, run) in [false, true].into_iter().flat_map(|g| [(g, 0), (g, 1)]) {
            let ours = kernels::linear(&x, &w, Some(&bias), gelu).unwrap();
            let r = if gelu { reference.gelu().unwrap() } else { reference.clone() };
            check(&format!("linear {l}x{k}x{n} + bias, gelu {gelu}, run {run}"), &ours, &r, BF16_TOL);
            let ours = kernels::linear(&x, &w, None, gelu).unwrap();
            let r = if gelu { no_bias.gelu().unwrap() } else { no_bias.clone() };
            check(&format!("linear {l}x{k}x{n}, gelu {gelu}, run {run}"), &ours, &r, BF16_TOL);
        }
        // The residual in the epilogue, with and without a bias, twice each.
        let residual = randn(&mut rng, &[b, l, n], DType::BF16, &dev);
        for run in 0..2 {
            let ours = kernels::linear_residual(&x, &w, Some(&bias), &residual).unwrap();
            let r = (&reference + f(&residual)).unwrap();
            check(&format!("linear {l}x{k}x{n} + bias + residual, run {run}"), &ours, &r, BF16_TOL);
            let ours = kernels::linear_residual(&x, &w, None, &residual).unwrap();
            let r = (&no_bias + f(&residual)).unwrap();
            check(&format!("linear {l}x{k}x{n} + residual, run {run}"), &ours, &r, BF16_TOL);
        }
    }
}

#[test]
fn quick_gelu_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("quick_gelu");
    for (dtype, tol) in [(DType::F32, 1e-5), (DType::BF16, BF16_TOL)] {
        // A count that is not a multiple of the block, values well into both tails.
        let x = (randn(&mut rng, &[3, 257, 131], dtype, &dev) * 4.0).unwrap();
        let xf = x.to_dtype(DType::F32).unwrap();
        let sigmoid = (xf.affine(-1.702, 0.0).unwrap().exp().unwrap() + 1.0).unwrap().recip().unwrap();
        let r = (&xf * sigmoid).unwrap();
        check(&format!("quick_gelu {dtype:?}"), &kernels::quick_gelu(&x).unwrap(), &r, tol);
        // A view starting off the 16-byte alignment (the element-by-element path).
        let (xs, rs) = (x.narrow(0, 1, 2).unwrap(), r.narrow(0, 1, 2).unwrap());
        check(&format!("quick_gelu, unaligned view {dtype:?}"), &kernels::quick_gelu(&xs).unwrap(), &rs, tol);
    }
}

#[test]
fn rms_norm_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("rms_norm");
    for dtype in [DType::F32, DType::BF16] {
        // A row length that is not a multiple of the block.
        let (rows, d) = (37, 1000);
        let x = randn(&mut rng, &[rows, d], dtype, &dev);
        let w = randn(&mut rng, &[d], dtype, &dev);
        let ours = kernels::rms_norm(&x, &w, 1e-6).unwrap();
        let x32 = x.to_dtype(DType::F32).unwrap();
        let r = x32.sqr().unwrap().mean_keepdim(D::Minus1).unwrap();
        let r = x32.broadcast_div(&(r + 1e-6).unwrap().sqrt().unwrap()).unwrap();
        let r = r.broadcast_mul(&w.to_dtype(DType::F32).unwrap()).unwrap();
        check(&format!("rms_norm {dtype:?}"), &ours, &r, if dtype == DType::F32 { 1e-5 } else { BF16_TOL });
    }
}

#[test]
fn softmax_bias_matches_f32_reference() {
    let dev = device();
    let mut rng = rng("softmax_bias");
    for dtype in [DType::F32, DType::BF16] {
        let (b, h, lq, lk) = (2, 3, 37, 45);
        let s = randn(&mut rng, &[b, h, lq, lk], dtype, &dev);
        let pos = randn(&mut rng, &[h, lq, lk], dtype, &dev);
        // Batch 1 keeps only its first 20 keys.
        let keep: Vec<f32> = (0..b * lk).map(|i| if i / lk == 1 && i % lk >= 20 { 0.0 } else { 1.0 }).collect();
        let keep = Tensor::from_vec(keep, (b, lk), &dev).unwrap();
        let ours = kernels::softmax_bias(&s, &pos, &keep).unwrap();
        let f = |t: &Tensor| t.to_dtype(DType::F32).unwrap();
        let masked = ((f(&keep) - 1.0).unwrap() * 1e30).unwrap().reshape((b, 1, 1, lk)).unwrap();
        let logits = f(&s).broadcast_add(&f(&pos).unsqueeze(0).unwrap()).unwrap().broadcast_add(&masked).unwrap();
        let e = logits.broadcast_sub(&logits.max_keepdim(D::Minus1).unwrap()).unwrap().exp().unwrap();
        let r = e.broadcast_div(&e.sum_keepdim(D::Minus1).unwrap()).unwrap();
        check(&format!("softmax_bias {dtype:?}"), &ours, &r, if dtype == DType::F32 { 1e-5 } else { BF16_TOL });
        let dropped = ours.i((1, .., .., 20..)).unwrap().to_dtype(DType::F32).unwrap().abs().unwrap();
        assert_eq!(dropped.sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0, "masked keys get probability 0");
    }
}

//! `mugflow bench gpu` and `mugflow models init-random` from the command line: the benchmark
//! says what a build without CUDA lacks and smoke-tests on the CPU, and a random set is written
//! with the files and sizes it reports.

mod common;

use common::run;

/// Without the `cuda` feature, asking for the GPU names the feature and the CPU smoke test.
#[cfg(not(feature = "cuda"))]
#[test]
fn bench_gpu_without_cuda_names_the_feature() {
    let (code, out, err) = run(&["bench", "gpu", "--bench", "dit"]);
    assert_eq!(code, 1, "{out}{err}");
    assert!(err.contains("`--device cuda` needs CUDA") && err.contains("--features cuda"), "{err}");
    assert!(err.contains("--preset tiny --device cpu --dtype f32"), "{err}");
}

/// The tiny preset runs end to end on the CPU and writes its video.
#[test]
fn bench_gpu_smoke_runs_on_the_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().to_str().unwrap();
    let args = ["--preset", "tiny", "--device", "cpu", "--dtype", "f32", "--height", "48", "--width", "64"];
    let (code, stdout, err) = run(&[&["bench", "gpu"][..], &args, &["--frames", "17", "--out", out]].concat());
    assert_eq!(code, 0, "{stdout}{err}");
    for row in ["random models", "generate", "vae decode", "video              17 frames 64x48"] {
        assert!(stdout.contains(row), "{row}: {stdout}");
    }
    assert!(dir.path().join("bench.y4m").is_file());
    // One part at the real sizes on the CPU: the aesthetic scorer on 2 frames.
    let part = ["bench", "gpu", "--bench", "aesthetic", "--frames", "2", "--iters", "1", "--device", "cpu"];
    let (code, stdout, err) = run(&[&part[..], &["--dtype", "f32"]].concat());
    assert_eq!(code, 0, "{stdout}{err}");
    assert!(stdout.contains("frames/s (2 frames per call)"), "{stdout}");
    let (code, _, err) = run(&["bench", "gpu", "--preset", "tiny", "--device", "cpu"]);
    assert_eq!(code, 1);
    assert!(err.contains("with --device cpu use --dtype f32"), "{err}");
}

/// `init-random --models` writes only the models named, at the real sizes, and reports them.
#[test]
fn init_random_writes_the_models_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let (code, out, err) = run(&["models", "init-random", d, "--preset", "real", "--models", "aesthetic"]);
    assert_eq!(code, 0, "{out}{err}");
    let head = dir.path().join("sac+logos+ava1-l14-linearMSE.pth");
    // [1024,768] + [128,1024] + [64,128] + [16,64] + [1,16] weights and their biases, f32.
    let params = 1024 * 768 + 1024 + 128 * 1024 + 128 + 64 * 128 + 64 + 16 * 64 + 16 + 16 + 1;
    let size = head.metadata().unwrap().len();
    assert!(size > 4 * params && size < 4 * params + 16_384, "{size}");
    assert!(out.contains(&format!("wrote {}", head.display())), "{out}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let (code, _, err) = run(&["models", "init-random", d, "--models", "unet"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("unknown model `unet`") && err.contains("enhancer-lora"), "{err}");
}

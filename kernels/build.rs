//! With the `cuda` feature, compiles src/kernels.cu to PTX with nvcc (`NVCC` or the one on
//! `PATH`) for `CUDA_COMPUTE_CAP` (default 90, H100/H200).
use std::{env, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kernels.ptx");
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    let status = Command::new(&nvcc)
        .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17", &format!("-arch=sm_{cap}"), "-o"])
        .arg(&out)
        .arg("src/kernels.cu")
        .status()
        .unwrap_or_else(|e| panic!("kernels: cannot run {nvcc} ({e}); scripts/build-cuda.sh installs it"));
    assert!(status.success(), "kernels: {nvcc} failed to compile src/kernels.cu");
}

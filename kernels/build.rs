//! With the `cuda` feature, compiles src/kernels.cu to PTX with nvcc (`NVCC` or the one on
//! `PATH`) for `CUDA_COMPUTE_CAP` (default 90, H100/H200), and src/fa3.cu (the Hopper attention
//! kernel: wgmma and setmaxnreg need the architecture-specific `sm_90a` target, which runs on compute
//! capability 9.0 only) when that is 90; for any other capability fa3.ptx is empty and never loaded.
//! ptxas (beside nvcc) then compiles fa3.ptx once more, as the driver will, to report register
//! spills and serialised wgmma as warnings: the driver's JIT would hide them.
use std::{env, path::Path, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-changed=src/kernels.cu");
    println!("cargo:rerun-if-changed=src/fa3.cu");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    println!("cargo:rerun-if-env-changed=NVCC");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cap = env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    let nvcc = env::var("NVCC").unwrap_or_else(|_| "nvcc".into());
    ptx(&nvcc, &format!("sm_{cap}"), "src/kernels.cu", &out_dir.join("kernels.ptx"));
    let fa3 = out_dir.join("fa3.ptx");
    if cap == "90" {
        ptx(&nvcc, "sm_90a", "src/fa3.cu", &fa3);
        report_ptxas(&nvcc, &fa3);
    } else {
        std::fs::write(&fa3, "").unwrap_or_else(|e| panic!("kernels: cannot write {}: {e}", fa3.display()));
    }
}

/// Compiles `src` to PTX at `out` for `arch`.
fn ptx(nvcc: &str, arch: &str, src: &str, out: &Path) {
    let status = Command::new(nvcc)
        .args(["--ptx", "-O3", "--use_fast_math", "-std=c++17", &format!("-arch={arch}"), "-o"])
        .arg(out)
        .arg(src)
        .status()
        .unwrap_or_else(|e| panic!("kernels: cannot run {nvcc} ({e}); scripts/build-cuda.sh installs it"));
    assert!(status.success(), "kernels: {nvcc} failed to compile {src}");
}

/// Runs ptxas on the sm_90a PTX and turns spills and wgmma serialisation (C7510-C7515) into cargo
/// warnings; a missing ptxas is a warning too (the driver compiles the PTX at run time anyway).
fn report_ptxas(nvcc: &str, ptx: &Path) {
    let ptxas = Path::new(nvcc).with_file_name("ptxas");
    let ptxas = if ptxas.is_file() { ptxas } else { PathBuf::from("ptxas") };
    let output = match Command::new(&ptxas).args(["-arch=sm_90a", "-v", "-o", "/dev/null"]).arg(ptx).output() {
        Ok(o) => o,
        Err(e) => return println!("cargo:warning=kernels: cannot run {} to check fa3.ptx ({e})", ptxas.display()),
    };
    let text = String::from_utf8_lossy(&output.stderr);
    for line in text.lines() {
        let spills = line.contains("spill") && !line.contains(" 0 bytes spill stores, 0 bytes spill loads");
        if spills || line.contains("warning") || !output.status.success() {
            println!("cargo:warning=kernels: ptxas on fa3.ptx: {}", line.trim());
        }
    }
}

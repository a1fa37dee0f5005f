//! The real-size random set of `mugflow models init-random --preset real`, checked without
//! materialising its 62 GB: the same writer lays every file out as sparse zeros (headers, zip
//! directories and shard indexes real, the data holes), every file is opened from its header,
//! and every model loads from the stored shapes at the released sizes (each key and shape
//! checked, zeros for values). The random values themselves are checked on the tiny set and the
//! real aesthetic head (unit tests of `models::presets`), and PyTorch reads the files.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use candle_core::{DType, Device};
use models::aesthetic::AestheticMlp;
use models::checkpoint_files::{write_checkpoint, Fill, Format, TensorSpec};
use models::clip::ClipVision;
use models::lora::Lora;
use models::mugdit::MugDit;
use models::mugvae::MugVae;
use models::presets::{init_random, Part, Preset};
use models::t5::{T5Encoder, T5Tokenizer};
use models::umt5::Umt5Encoder;
use models::wan_dit::WanDit;
use models::wan_vae::WanVae;
use models::weights::Checkpoint;

fn open(dir: &Path, rel: &str) -> Checkpoint {
    Checkpoint::open_shapes(&dir.join(rel), DType::F32, &Device::Cpu).unwrap()
}

/// Every stored dtype of the file at `rel`.
fn dtypes(dir: &Path, rel: &str) -> Vec<DType> {
    let stored = Checkpoint::open(&dir.join(rel), DType::F32, &Device::Cpu).unwrap().stored();
    let mut dtypes: Vec<DType> = stored.values().map(|(_, d)| *d).collect();
    dtypes.dedup();
    dtypes
}

#[test]
fn the_real_set_loads_in_every_model_at_the_released_sizes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files = init_random(d, Preset::Real, &Part::ALL, Fill::Zeros, |_| {}).unwrap();
    let apparent: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    let on_disk: u64 = files.iter().map(|f| f.metadata().unwrap().blocks() * 512).sum();
    assert!(apparent > 60_000_000_000, "{apparent} bytes");
    assert!(on_disk < 200_000_000, "{on_disk} bytes on disk: the file system keeps no holes");

    let real = Preset::Real;
    MugDit::load(&open(d, "MUG-V-inference/dit.pt"), &real.dit()).unwrap();
    MugVae::load(&open(d, "MUG-V-inference/vae.pt"), &real.vae()).unwrap();
    T5Encoder::load(&open(d, "t5-v1_1-xxl"), &real.t5()).unwrap();
    T5Tokenizer::from_file(&d.join("t5-v1_1-xxl/tokenizer.json"), real.t5().max_length).unwrap();
    let aesthetic = real.aesthetic();
    ClipVision::load(&open(d, "clip-vit-large-patch14/model.safetensors"), &aesthetic.clip).unwrap();
    AestheticMlp::load(&open(d, "sac+logos+ava1-l14-linearMSE.pth"), &aesthetic).unwrap();
    let adapter = open(d, "MUG-V-inference/enhancer/pytorch_model.bin");
    let lora = Lora::new(&adapter, &real.enhancer_lora());
    WanDit::load(&open(d, "MUG-V-inference/enhancer/dit_i2v.safetensors"), &real.wan_dit(), Some(lora)).unwrap();
    WanVae::load(&open(d, "Wan2.1-T2V-1.3B/Wan2.1_VAE.pth"), &real.wan_vae()).unwrap();
    Umt5Encoder::load(&open(d, "Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth"), &real.umt5()).unwrap();
    T5Tokenizer::from_file(&d.join("Wan2.1-T2V-1.3B/google/umt5-xxl/tokenizer.json"), real.wan_dit().text_len).unwrap();

    // bf16 where the release is (the DiT as it runs, UMT5 as its name says), f32 elsewhere.
    assert_eq!(dtypes(d, "MUG-V-inference/dit.pt"), [DType::BF16]);
    assert_eq!(dtypes(d, "Wan2.1-T2V-1.3B/models_t5_umt5-xxl-enc-bf16.pth"), [DType::BF16]);
    assert_eq!(dtypes(d, "t5-v1_1-xxl"), [DType::F32]);
    assert_eq!(dtypes(d, "MUG-V-inference/vae.pt"), [DType::F32]);
    // The release's key counts (goldens/mugdit and goldens/mugvae READMEs).
    let keys = |rel: &str| Checkpoint::open(&d.join(rel), DType::F32, &Device::Cpu).unwrap().stored().len();
    assert_eq!(keys("MUG-V-inference/dit.pt"), 1197);
    assert_eq!(keys("MUG-V-inference/vae.pt"), 522);
    // Data past 4 GB of a zip64 `.pt` reads back (offsets and the zeros' CRC right).
    let dit = Checkpoint::open(&d.join("MUG-V-inference/dit.pt"), DType::F32, &Device::Cpu).unwrap();
    let bias = dit.get("blocks.55.mlp.fc2.bias", &[3456]).unwrap();
    assert_eq!(bias.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    // T5-XXL's 19 GB in two shards, as the release has them.
    assert!(d.join("t5-v1_1-xxl/model-00002-of-00002.safetensors").is_file());
}

/// A `.pt` written here is a `torch.save` file to PyTorch too: the real-size DiT (zip64, 21 GB
/// of holes) through `torch.load(mmap=True)` lists the same keys, shapes and dtype, and a small
/// random one reads back with the same values as our reader's.
#[test]
fn pytorch_reads_the_pt_files() {
    let python = std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with torch and safetensors (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    init_random(d, Preset::Real, &[Part::Dit], Fill::Zeros, |_| {}).unwrap();
    let small = d.join("small.pth");
    let specs = [
        TensorSpec { key: "a.weight".into(), shape: vec![3, 5000], dtype: DType::BF16 },
        TensorSpec { key: "a.norm.weight".into(), shape: vec![7], dtype: DType::F32 },
        TensorSpec { key: "logvar".into(), shape: vec![], dtype: DType::F16 },
    ];
    write_checkpoint(&small, Format::TorchZip, &specs, Fill::Random { seed: 9 }).unwrap();
    let script = r#"
import sys, torch
big = torch.load(sys.argv[1], mmap=True, weights_only=True)
print(len(big), sum(t.numel() for t in big.values()), {str(t.dtype) for t in big.values()})
print(tuple(big["blocks.55.mlp.fc1.weight"].shape))
small = torch.load(sys.argv[2], weights_only=True)
for k, t in small.items():
    print(k, str(t.dtype), tuple(t.shape), float(t.float().sum()))
"#;
    let out = std::process::Command::new(python)
        .args(["-c", script, d.join("MUG-V-inference/dit.pt").to_str().unwrap(), small.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    assert_eq!(lines.next().unwrap(), "1197 10830321984 {'torch.bfloat16'}");
    assert_eq!(lines.next().unwrap(), "(13824, 3456)");
    let ours = Checkpoint::open(&small, DType::F32, &Device::Cpu).unwrap();
    for (line, spec) in lines.zip(&specs) {
        let sum = ours.get(&spec.key, &spec.shape).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(fields[0], spec.key);
        let theirs: f32 = fields.last().unwrap().parse().unwrap();
        assert!((theirs - sum).abs() <= 1e-3 * (1.0 + sum.abs()), "{line}: ours {sum}");
    }
}

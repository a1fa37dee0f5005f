//! `.pt` files written by `pipeline::torch_pt` load in real PyTorch with `weights_only=True`.

use pipeline::torch_pt::{dict_pt, tensor_pt};
use pipeline::{DType, Tensor};

/// A tensor whose elements are `f(0), f(1), ...` in row-major order.
fn tensor<const N: usize>(dtype: DType, shape: &[usize], f: impl Fn(usize) -> [u8; N]) -> Tensor {
    let data: Vec<u8> = (0..shape.iter().product()).flat_map(f).collect();
    Tensor::new(dtype, shape.to_vec(), data.into()).unwrap()
}

#[test]
fn torch_loads_latents_text_features_and_every_dtype() {
    let python = std::env::var("MUGFLOW_TEST_PYTHON")
        .expect("set MUGFLOW_TEST_PYTHON to a Python with torch (scripts/test.sh does)");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: Vec<u8>| std::fs::write(dir.path().join(name), bytes).unwrap();

    // Element i is i / 4 - 3: exact in every float type, negative and fractional.
    let quarter = |i: usize| i as f32 / 4.0 - 3.0;
    write("latent.pt", tensor_pt(&tensor(DType::F32, &[2, 3, 4], |i| quarter(i).to_le_bytes())).unwrap());

    let y = tensor(DType::F32, &[1, 1, 3, 4096], |i| quarter(i).to_le_bytes());
    let mask = Tensor::new(DType::Bool, vec![1, 3], vec![1u8, 1, 0].into()).unwrap();
    write("clip_text.pt", dict_pt(&[("y", &y), ("mask", &mask)]).unwrap());

    // -3, -2.75, -2.5, -2.25, -2 (element i / 4 - 3) as IEEE half.
    let f16 = [0xc200u16, 0xc180, 0xc100, 0xc080, 0xc000];
    let wide = [
        ("u8", tensor(DType::U8, &[4], |i| [250 + i as u8])),
        ("i64", tensor(DType::I64, &[2, 2], |i| (i as i64 * 3_000_000_000 - 4_000_000_000).to_le_bytes())),
        ("f16", tensor(DType::F16, &[5], |i| f16[i].to_le_bytes())),
        ("bf16", tensor(DType::BF16, &[5], |i| ((quarter(i).to_bits() >> 16) as u16).to_le_bytes())),
        ("scalar", tensor(DType::F32, &[], |_| 2.5f32.to_le_bytes())),
        ("empty", tensor(DType::F32, &[0, 3], |i| quarter(i).to_le_bytes())),
        ("big", tensor(DType::U8, &[70_000], |i| [i as u8])),
    ];
    let refs: Vec<(&str, &Tensor)> = wide.iter().map(|(k, t)| (*k, t)).collect();
    write("dtypes.pt", dict_pt(&refs).unwrap());

    let script = r#"
import sys, torch
d = sys.argv[1]
quarter = lambda shape, dtype: (torch.arange(torch.Size(shape).numel(), dtype=torch.float64) / 4 - 3).to(dtype).reshape(shape)
def same(t, want):
    assert t.dtype == want.dtype and t.shape == want.shape and t.stride() == want.stride(), (t, want)
    assert torch.equal(t, want), (t, want)

lat = torch.load(f"{d}/latent.pt", weights_only=True)
assert type(lat) is torch.Tensor, type(lat)
same(lat, quarter([2, 3, 4], torch.float32))
assert lat.stride() == (12, 4, 1) and lat[1, 2, 3].item() == 23 / 4 - 3
# Storages are 64-byte aligned, so torch can also map the file instead of reading it.
same(torch.load(f"{d}/latent.pt", weights_only=True, mmap=True), lat)

text = torch.load(f"{d}/clip_text.pt", weights_only=True)
assert type(text) is dict and list(text) == ["y", "mask"], text.keys()
same(text["y"], quarter([1, 1, 3, 4096], torch.float32))
same(text["mask"], torch.tensor([[True, True, False]]))

w = torch.load(f"{d}/dtypes.pt", weights_only=True)
assert list(w) == ["u8", "i64", "f16", "bf16", "scalar", "empty", "big"], w.keys()
same(w["u8"], torch.tensor([250, 251, 252, 253], dtype=torch.uint8))
same(w["i64"], torch.tensor([[-4_000_000_000, -1_000_000_000], [2_000_000_000, 5_000_000_000]]))
same(w["f16"], quarter([5], torch.float16))
same(w["bf16"], quarter([5], torch.bfloat16))
same(w["scalar"], torch.tensor(2.5))
same(w["empty"], torch.empty(0, 3))
same(w["big"], (torch.arange(70_000) % 256).to(torch.uint8))
print("torch loads ok")
"#;
    let out = std::process::Command::new(python).arg("-c").arg(script).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

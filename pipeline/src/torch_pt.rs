//! A writer of PyTorch `torch.save` files (the zip format of torch >= 1.6), so that datasets can
//! be exported in the layout trainers read with `torch.load(path, weights_only=True)`.
//!
//! A `.pt` file is a stored (uncompressed) zip archive whose entries sit under one top folder:
//! `data.pkl` is a protocol 2 pickle of the object in which every tensor is a call to
//! `torch._utils._rebuild_tensor_v2` on a persistent storage id, and `data/<key>` holds that
//! storage's little-endian bytes. The pickle uses only the globals the weights-only loader allows.

use std::io::{Cursor, Write};

use sha2::{Digest, Sha256};
use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::{DType, Tensor};

/// Why a `.pt` file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum PtError {
    /// A tensor's byte length does not match its shape and dtype.
    #[error(
        "tensor{} has {actual} bytes, but shape {shape:?} of {dtype:?} needs {expected}",
        .key.as_deref().map(|k| format!(" `{k}`")).unwrap_or_default()
    )]
    Length {
        /// The dict key, `None` for a bare tensor.
        key: Option<String>,
        /// Element type.
        dtype: DType,
        /// Dimensions.
        shape: Vec<usize>,
        /// Bytes the shape needs.
        expected: usize,
        /// Bytes the tensor holds.
        actual: usize,
    },
    /// The same key appears twice in a dict; the loaded dict would silently keep only the last.
    #[error("key `{0}` appears twice in the dict")]
    DuplicateKey(String),
    /// The zip writer refused an entry.
    #[error("cannot build the .pt archive")]
    Zip(#[from] zip::result::ZipError),
}

/// The bytes of a `.pt` file holding one bare tensor, e.g. a latent `[C, T, H, W]`.
pub fn tensor_pt(t: &Tensor) -> Result<Vec<u8>, PtError> {
    check_length(None, t)?;
    let mut p = Pickle::new();
    p.tensor(t, 0);
    archive(p.finish(), &[t])
}

/// The bytes of a `.pt` file holding a dict of tensors, keys in the given order (text features).
pub fn dict_pt(entries: &[(&str, &Tensor)]) -> Result<Vec<u8>, PtError> {
    for (i, (key, t)) in entries.iter().enumerate() {
        if entries[..i].iter().any(|(k, _)| k == key) {
            return Err(PtError::DuplicateKey(key.to_string()));
        }
        check_length(Some(key), t)?;
    }
    let mut p = Pickle::new();
    p.0.extend([op::EMPTY_DICT, op::MARK]);
    for (storage, (key, t)) in entries.iter().enumerate() {
        p.str(key);
        p.tensor(t, storage);
    }
    p.0.push(op::SETITEMS);
    let tensors: Vec<&Tensor> = entries.iter().map(|(_, t)| *t).collect();
    archive(p.finish(), &tensors)
}

/// The top folder of every entry; torch uses the file stem, and its loader accepts any name.
const TOP: &str = "archive";

/// Alignment of entry data; torch aligns storages to 64 bytes so they can be memory-mapped.
const ALIGN: u16 = 64;

/// Zip the pickle and one storage per tensor (storage key = index), in the entry order
/// torch 2.x writes.
fn archive(pickle: Vec<u8>, tensors: &[&Tensor]) -> Result<Vec<u8>, PtError> {
    let mut zip = ZipWriter::new(Cursor::new(Vec::new()));
    let mut entry = |name: &str, data: &[u8]| -> Result<(), PtError> {
        let options = SimpleFileOptions::DEFAULT
            .compression_method(CompressionMethod::Stored)
            .with_alignment(ALIGN)
            .large_file(data.len() as u64 >= u64::from(u32::MAX));
        zip.start_file(format!("{TOP}/{name}"), options)?;
        zip.write_all(data).map_err(zip::result::ZipError::Io)?;
        Ok(())
    };
    entry("data.pkl", &pickle)?;
    // Storages are keyed by number (format version 1), and each starts on a 64-byte boundary.
    entry(".format_version", b"1")?;
    entry(".storage_alignment", ALIGN.to_string().as_bytes())?;
    entry("byteorder", b"little")?;
    for (key, t) in tensors.iter().enumerate() {
        entry(&format!("data/{key}"), &t.data)?;
    }
    entry("version", b"3\n")?;
    entry(".data/serialization_id", serialization_id(&pickle, tensors).as_bytes())?;
    Ok(zip.finish()?.into_inner())
}

/// Torch's 40-digit id of a saved file; derived from the content (torch draws it at random) so
/// the same tensors always give the same bytes.
fn serialization_id(pickle: &[u8], tensors: &[&Tensor]) -> String {
    let mut h = Sha256::new();
    h.update(pickle);
    tensors.iter().for_each(|t| h.update(&t.data));
    let digest = h.finalize();
    // A SHA-256 digest has 32 bytes, so both 8-byte slices exist.
    let half = |i: usize| u64::from_le_bytes(digest[i..i + 8].try_into().expect("8 of the 32 digest bytes"));
    format!("{:020}{:020}", half(0), half(8))
}

fn check_length(key: Option<&str>, t: &Tensor) -> Result<(), PtError> {
    let expected = t.shape.iter().product::<usize>() * t.dtype.size();
    if t.data.len() == expected {
        return Ok(());
    }
    Err(PtError::Length {
        key: key.map(str::to_string),
        dtype: t.dtype,
        shape: t.shape.clone(),
        expected,
        actual: t.data.len(),
    })
}

/// The storage class torch pickles for a dtype (all are on the weights-only allow list).
fn storage_class(dtype: DType) -> &'static str {
    match dtype {
        DType::U8 => "ByteStorage",
        DType::Bool => "BoolStorage",
        DType::I64 => "LongStorage",
        DType::F16 => "HalfStorage",
        DType::BF16 => "BFloat16Storage",
        DType::F32 => "FloatStorage",
    }
}

/// Pickle opcodes used here (protocol 2), named as in CPython's `pickletools`.
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const MARK: u8 = b'(';
    pub const GLOBAL: u8 = b'c';
    pub const BINUNICODE: u8 = b'X';
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const NEWFALSE: u8 = 0x89;
    pub const EMPTY_TUPLE: u8 = b')';
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE: u8 = b't';
    pub const EMPTY_DICT: u8 = b'}';
    pub const SETITEMS: u8 = b'u';
    pub const REDUCE: u8 = b'R';
    pub const BINPERSID: u8 = b'Q';
}

/// A protocol 2 pickle being written, without memo (the loader does not need one).
struct Pickle(Vec<u8>);

impl Pickle {
    fn new() -> Self {
        Pickle(vec![op::PROTO, 2])
    }

    fn finish(mut self) -> Vec<u8> {
        self.0.push(op::STOP);
        self.0
    }

    fn global(&mut self, module: &str, name: &str) {
        self.0.push(op::GLOBAL);
        self.0.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }

    fn str(&mut self, s: &str) {
        self.0.push(op::BINUNICODE);
        // Keys and names are short; a string over 4 GiB is not a tensor file we could write.
        self.0.extend_from_slice(&u32::try_from(s.len()).expect("string under 4 GiB").to_le_bytes());
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A non-negative int in the shortest form, as CPython's pickler writes it.
    fn int(&mut self, v: usize) {
        if let Ok(b) = u8::try_from(v) {
            self.0.extend([op::BININT1, b]);
        } else if let Ok(b) = u16::try_from(v) {
            self.0.push(op::BININT2);
            self.0.extend_from_slice(&b.to_le_bytes());
        } else if let Ok(b) = i32::try_from(v) {
            self.0.push(op::BININT);
            self.0.extend_from_slice(&b.to_le_bytes());
        } else {
            // Little-endian two's complement, trimmed, with a zero byte if the top bit is set.
            let mut bytes = (v as u64).to_le_bytes().to_vec();
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                bytes.push(0);
            }
            self.0.extend([op::LONG1, bytes.len() as u8]);
            self.0.extend_from_slice(&bytes);
        }
    }

    fn int_tuple(&mut self, values: &[usize]) {
        match values.len() {
            0 => self.0.push(op::EMPTY_TUPLE),
            n @ 1..=3 => {
                values.iter().for_each(|&v| self.int(v));
                self.0.push(op::TUPLE1 + n as u8 - 1);
            }
            _ => {
                self.0.push(op::MARK);
                values.iter().for_each(|&v| self.int(v));
                self.0.push(op::TUPLE);
            }
        }
    }

    /// `_rebuild_tensor_v2(storage, 0, shape, row-major strides, False, OrderedDict())`, the
    /// storage being the persistent id `('storage', torch.<Class>Storage, '<key>', 'cpu', numel)`.
    fn tensor(&mut self, t: &Tensor, storage: usize) {
        self.global("torch._utils", "_rebuild_tensor_v2");
        self.0.push(op::MARK);
        self.0.push(op::MARK);
        self.str("storage");
        self.global("torch", storage_class(t.dtype));
        self.str(&storage.to_string());
        self.str("cpu");
        self.int(t.shape.iter().product());
        self.0.extend([op::TUPLE, op::BINPERSID]);
        self.int(0);
        self.int_tuple(&t.shape);
        self.int_tuple(&row_major_strides(&t.shape));
        self.0.push(op::NEWFALSE);
        self.global("collections", "OrderedDict");
        self.0.extend([op::EMPTY_TUPLE, op::REDUCE, op::TUPLE, op::REDUCE]);
    }
}

/// Element strides of a contiguous tensor; empty dimensions count as 1, as torch computes them.
fn row_major_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1].max(1);
    }
    strides
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    fn f32_tensor(shape: &[usize]) -> Tensor {
        let n: usize = shape.iter().product();
        let data: Vec<u8> = (0..n).flat_map(|i| (i as f32).to_le_bytes()).collect();
        Tensor::new(DType::F32, shape.to_vec(), data.into()).unwrap()
    }

    /// Every entry of an archive: name, data offset and bytes.
    fn entries(bytes: &[u8]) -> Vec<(String, u64, Vec<u8>)> {
        let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).unwrap();
        (0..zip.len())
            .map(|i| {
                let mut f = zip.by_index(i).unwrap();
                assert_eq!(f.compression(), CompressionMethod::Stored);
                let mut data = Vec::new();
                f.read_to_end(&mut data).unwrap();
                (f.name().to_string(), f.data_start().unwrap(), data)
            })
            .collect()
    }

    #[test]
    fn a_bare_tensor_has_torchs_entries_aligned_to_64_bytes() {
        let t = f32_tensor(&[2, 3, 4]);
        let files = entries(&tensor_pt(&t).unwrap());
        let names: Vec<&str> = files.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "archive/data.pkl",
                "archive/.format_version",
                "archive/.storage_alignment",
                "archive/byteorder",
                "archive/data/0",
                "archive/version",
                "archive/.data/serialization_id",
            ]
        );
        assert!(files.iter().all(|(_, offset, _)| offset % 64 == 0));
        let pickle = &files[0].2;
        assert_eq!((&pickle[..2], pickle.last()), (&[0x80, 2][..], Some(&b'.')));
        assert_eq!(files[3].2, b"little");
        assert_eq!(files[4].2, t.data);
        assert_eq!(files[5].2, b"3\n");
        let id = String::from_utf8(files[6].2.clone()).unwrap();
        assert!(id.len() == 40 && id.bytes().all(|b| b.is_ascii_digit()), "{id}");
    }

    #[test]
    fn a_dict_holds_one_storage_per_key_in_order() {
        let y = f32_tensor(&[1, 1, 3, 8]);
        let mask = Tensor::new(DType::Bool, vec![1, 3], vec![1u8, 1, 0].into()).unwrap();
        let bytes = dict_pt(&[("y", &y), ("mask", &mask)]).unwrap();
        let files = entries(&bytes);
        assert_eq!((files[4].0.as_str(), &files[4].2), ("archive/data/0", &y.data.to_vec()));
        assert_eq!((files[5].0.as_str(), &files[5].2), ("archive/data/1", &mask.data.to_vec()));
        let pickle = &files[0].2;
        let at = |needle: &[u8]| pickle.windows(needle.len()).position(|w| w == needle).unwrap();
        assert!(at(b"torch\nFloatStorage\n") < at(b"torch\nBoolStorage\n"));
        // The same tensors give the same bytes (the serialization id is content-derived).
        assert_eq!(bytes, dict_pt(&[("y", &y), ("mask", &mask)]).unwrap());
    }

    #[test]
    fn ints_and_tuples_use_cpythons_shortest_forms() {
        let mut p = Pickle(Vec::new());
        for v in [7, 300, 70_000, 1 << 31, u64::MAX as usize] {
            p.int(v);
        }
        p.int_tuple(&[]);
        p.int_tuple(&[1, 2]);
        p.int_tuple(&[1, 2, 3, 4]);
        #[rustfmt::skip]
        let expected = [
            b'K', 7, b'M', 0x2c, 1, b'J', 0x70, 0x11, 1, 0, 0x8a, 5, 0, 0, 0, 0x80, 0,
            0x8a, 9, 255, 255, 255, 255, 255, 255, 255, 255, 0,
            b')', b'K', 1, b'K', 2, 0x86, b'(', b'K', 1, b'K', 2, b'K', 3, b'K', 4, b't',
        ];
        assert_eq!(p.0, expected);
        assert_eq!(row_major_strides(&[24, 5, 0, 7]), [35, 7, 7, 1]);
    }

    #[test]
    fn mismatched_lengths_and_duplicate_keys_are_refused() {
        let bad = Tensor { dtype: DType::F32, shape: vec![2, 2], data: vec![0u8; 12].into() };
        let err = dict_pt(&[("y", &bad)]).unwrap_err().to_string();
        assert_eq!(err, "tensor `y` has 12 bytes, but shape [2, 2] of F32 needs 16");
        assert!(tensor_pt(&bad).unwrap_err().to_string().starts_with("tensor has 12 bytes"));
        let t = f32_tensor(&[1]);
        assert!(matches!(dict_pt(&[("y", &t), ("y", &t)]), Err(PtError::DuplicateKey(k)) if k == "y"));
    }
}

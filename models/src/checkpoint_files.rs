//! Checkpoint files written tensor by tensor, never holding a model in memory: safetensors (one
//! file, or shards with an index as HF ships large models) and PyTorch's `torch.save` zip (`.pt`,
//! `.pth`, `.bin`). The header comes first, computed from the shapes; then each tensor's bytes are
//! made on the fly in parallel chunks (random values of [`init_rule`]) while the previous ones are
//! written, or left as holes of a sparse file of zeros, which lays out a 20 GB checkpoint in
//! milliseconds and no disk space, to check its keys and shapes.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver};

use candle_core::DType;
use rayon::prelude::*;

use crate::random::{init_rule, splitmix64};

/// One tensor of a checkpoint file to write.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    /// Its key in the file.
    pub key: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Its stored data type (f32, bf16 or f16).
    pub dtype: DType,
}

impl TensorSpec {
    /// Its size in the file, in bytes.
    pub fn bytes(&self) -> u64 {
        self.shape.iter().product::<usize>() as u64 * self.dtype.size_in_bytes() as u64
    }
}

/// What the tensors hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fill {
    /// Random values of [`init_rule`], the same for the same seed and key whatever the machine.
    Random {
        /// The file's seed.
        seed: u64,
    },
    /// Zeros, written as holes of a sparse file: the layout of a real-size checkpoint without its
    /// disk space, to check keys and shapes (a forward pass of such weights is meaningless).
    Zeros,
}

/// The layout of a checkpoint file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// One `.safetensors` file.
    Safetensors,
    /// A folder of `model-0000i-of-0000n.safetensors` shards of at most `max_shard_bytes` each,
    /// with `model.safetensors.index.json`, as HF ships large models.
    ShardedSafetensors {
        /// The largest shard (a larger single tensor gets a shard of its own).
        max_shard_bytes: u64,
    },
    /// A `torch.save` zip of a plain state dict (`.pt`, `.pth`, `.bin`), the data 64-byte aligned
    /// as PyTorch writes it (so `torch.load(mmap=True)` reads it in place).
    TorchZip,
}

/// A checkpoint file that could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    /// The file or folder.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub source: std::io::Error,
}

/// Write `tensors` (in this order) to `path` as `format` says, filled as `fill` says; returns the
/// files written (the shards and the index of a sharded checkpoint).
pub fn write_checkpoint(
    path: &Path,
    format: Format,
    tensors: &[TensorSpec],
    fill: Fill,
) -> Result<Vec<PathBuf>, WriteError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| WriteError { path, source }
    };
    match format {
        Format::Safetensors => {
            write_file(path, |w| write_safetensors(w, tensors, fill)).map_err(at(path))?;
            Ok(vec![path.to_path_buf()])
        }
        Format::TorchZip => {
            let archive = path.file_stem().map_or("archive".into(), |s| s.to_string_lossy().into_owned());
            write_file(path, |w| write_torch_zip(w, &archive, tensors, fill)).map_err(at(path))?;
            Ok(vec![path.to_path_buf()])
        }
        Format::ShardedSafetensors { max_shard_bytes } => {
            std::fs::create_dir_all(path).map_err(at(path))?;
            let shards = split_shards(tensors, max_shard_bytes);
            let n = shards.len();
            let mut written = Vec::new();
            let mut weight_map = serde_json::Map::new();
            for (i, shard) in shards.iter().enumerate() {
                let name = format!("model-{:05}-of-{n:05}.safetensors", i + 1);
                let file = path.join(&name);
                write_file(&file, |w| write_safetensors(w, shard, fill)).map_err(at(&file))?;
                for t in *shard {
                    weight_map.insert(t.key.clone(), name.clone().into());
                }
                written.push(file);
            }
            let total_size: u64 = tensors.iter().map(TensorSpec::bytes).sum();
            let index = serde_json::json!({ "metadata": { "total_size": total_size }, "weight_map": weight_map });
            let file = path.join("model.safetensors.index.json");
            // A JSON value always serializes.
            let text = serde_json::to_string_pretty(&index).expect("JSON serializes");
            std::fs::write(&file, text).map_err(at(&file))?;
            written.push(file);
            Ok(written)
        }
    }
}

/// `tensors` cut in order into runs of at most `max_bytes` (a larger tensor alone).
fn split_shards(tensors: &[TensorSpec], max_bytes: u64) -> Vec<&[TensorSpec]> {
    let mut shards = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, t) in tensors.iter().enumerate() {
        if i > start && bytes + t.bytes() > max_bytes {
            shards.push(&tensors[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += t.bytes();
    }
    if start < tensors.len() || shards.is_empty() {
        shards.push(&tensors[start..]);
    }
    shards
}

/// Create `path` and write it with `write`, which may leave holes at the end (sparse zeros): the
/// file is then extended to the position reached.
fn write_file(path: &Path, write: impl FnOnce(&mut Out) -> std::io::Result<()>) -> std::io::Result<()> {
    let mut out = Out { w: BufWriter::with_capacity(1 << 22, File::create(path)?), pos: 0 };
    write(&mut out)?;
    let file = out.w.into_inner().map_err(|e| e.into_error())?;
    file.set_len(out.pos)?;
    file.sync_all()
}

/// A file being written, with its position (holes included).
struct Out {
    w: BufWriter<File>,
    pos: u64,
}

impl Out {
    fn put(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    /// Skip `n` bytes, leaving a hole (zeros) in the file.
    fn skip(&mut self, n: u64) -> std::io::Result<()> {
        self.pos += n;
        self.w.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }

    /// Overwrite 4 bytes at `at` (before the current position) with `value`.
    fn patch_u32(&mut self, at: u64, value: u32) -> std::io::Result<()> {
        self.w.seek(SeekFrom::Start(at))?;
        self.w.write_all(&value.to_le_bytes())?;
        self.w.seek(SeekFrom::Start(self.pos))?;
        Ok(())
    }
}

/// Elements per generated chunk (4 to 8 MB): small enough to spread a tensor over all cores.
const CHUNK_ELEMENTS: usize = 1 << 21;

/// A generated run of one tensor's bytes with its CRC-32 (the zip format needs it).
struct Chunk {
    tensor: usize,
    bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

/// The bytes of a file's tensors in order, made ahead of the writer by rayon's threads.
struct TensorBytes<'a> {
    tensors: &'a [TensorSpec],
    chunks: Option<Receiver<Vec<Chunk>>>,
    ready: VecDeque<Chunk>,
}

impl TensorBytes<'_> {
    /// Write tensor `i`'s bytes at the current position (a hole for [`Fill::Zeros`]); returns
    /// their CRC-32.
    fn write(&mut self, out: &mut Out, i: usize) -> std::io::Result<u32> {
        let bytes = self.tensors[i].bytes();
        let Some(chunks) = &self.chunks else {
            out.skip(bytes)?;
            return Ok(zeros_crc(bytes));
        };
        let mut crc = crc32fast::Hasher::new();
        let mut done = 0;
        while done < bytes {
            if self.ready.is_empty() {
                let batch = chunks.recv().map_err(|_| std::io::Error::other("the tensor generator stopped"))?;
                self.ready.extend(batch);
            }
            let Some(chunk) = self.ready.pop_front() else { continue };
            debug_assert_eq!(chunk.tensor, i, "chunks arrive in tensor order");
            out.put(&chunk.bytes)?;
            crc.combine(&chunk.crc);
            done += chunk.bytes.len() as u64;
        }
        Ok(crc.finalize())
    }
}

/// Run `write` with the bytes of `tensors` as `fill` makes them: for random values, a thread
/// generates the next batch of chunks (on all cores) while `write` writes the previous one, so at
/// most three batches are in memory.
fn with_tensor_bytes<R>(
    tensors: &[TensorSpec],
    fill: Fill,
    write: impl FnOnce(&mut TensorBytes) -> std::io::Result<R>,
) -> std::io::Result<R> {
    let Fill::Random { seed } = fill else {
        return write(&mut TensorBytes { tensors, chunks: None, ready: VecDeque::new() });
    };
    let work: Vec<(usize, usize, usize)> = tensors
        .iter()
        .enumerate()
        .flat_map(|(i, t)| {
            let n: usize = t.shape.iter().product();
            (0..n.div_ceil(CHUNK_ELEMENTS)).map(move |c| (i, c, CHUNK_ELEMENTS.min(n - c * CHUNK_ELEMENTS)))
        })
        .collect();
    let (tx, rx) = sync_channel(1);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            for batch in work.chunks(2 * rayon::current_num_threads()) {
                let chunks: Vec<Chunk> =
                    batch.par_iter().map(|&(i, c, n)| random_chunk(&tensors[i], i, c, n, seed)).collect();
                if tx.send(chunks).is_err() {
                    // The writer failed and dropped its end.
                    return;
                }
            }
        });
        write(&mut TensorBytes { tensors, chunks: Some(rx), ready: VecDeque::new() })
    })
}

/// Chunk `c` (of `n` elements) of tensor `t` (the `i`th of its file), random values of its rule
/// in its dtype; the seed depends on the file's seed, the key and the chunk only.
fn random_chunk(t: &TensorSpec, i: usize, c: usize, n: usize, seed: u64) -> Chunk {
    // FNV-1a of the key: a tensor's values do not depend on which others the file holds.
    let key_hash =
        t.key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    let mut state = seed ^ key_hash ^ (c as u64).wrapping_mul(0xA24B_AED4_963E_E407);
    let mut values = vec![0f32; n];
    init_rule(&t.key, &t.shape).fill(splitmix64(&mut state), &mut values);
    let bytes: Vec<u8> = match t.dtype {
        DType::BF16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        DType::F16 => values.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        _ => values.iter().flat_map(|&v| v.to_le_bytes()).collect(),
    };
    let mut crc = crc32fast::Hasher::new();
    crc.update(&bytes);
    Chunk { tensor: i, bytes, crc }
}

/// The CRC-32 of `n` zero bytes, by doubling (no `n`-byte pass).
fn zeros_crc(mut n: u64) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    let mut block = crc32fast::Hasher::new();
    block.update(&[0]);
    while n > 0 {
        if n & 1 == 1 {
            crc.combine(&block);
        }
        let half = block.clone();
        block.combine(&half);
        n >>= 1;
    }
    crc.finalize()
}

/// The safetensors name of a data type.
fn safetensors_dtype(dtype: DType) -> &'static str {
    match dtype {
        DType::BF16 => "BF16",
        DType::F16 => "F16",
        _ => "F32",
    }
}

/// A safetensors file: the JSON header of the shapes (padded to 8 bytes), then the data.
fn write_safetensors(out: &mut Out, tensors: &[TensorSpec], fill: Fill) -> std::io::Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in tensors {
        let end = offset + t.bytes();
        header.insert(
            t.key.clone(),
            serde_json::json!({ "dtype": safetensors_dtype(t.dtype), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    // A JSON map always serializes.
    let mut json = serde_json::to_vec(&header).expect("JSON serializes");
    json.resize(json.len().next_multiple_of(8), b' ');
    out.put(&(json.len() as u64).to_le_bytes())?;
    out.put(&json)?;
    with_tensor_bytes(tensors, fill, |bytes| {
        for i in 0..tensors.len() {
            bytes.write(out, i)?;
        }
        Ok(())
    })
}

/// The pickle (protocol 2) of a state dict of `tensors` as `torch.save` writes it: an
/// `OrderedDict` of `_rebuild_tensor_v2` calls on storages `data/0`, `data/1`, ...
fn state_dict_pickle(tensors: &[TensorSpec]) -> Vec<u8> {
    fn global(p: &mut Vec<u8>, module: &str, name: &str) {
        p.push(b'c');
        p.extend_from_slice(format!("{module}\n{name}\n").as_bytes());
    }
    fn text(p: &mut Vec<u8>, s: &str) {
        p.push(b'X');
        p.extend_from_slice(&(s.len() as u32).to_le_bytes());
        p.extend_from_slice(s.as_bytes());
    }
    fn int(p: &mut Vec<u8>, v: usize) {
        if let Ok(v) = u8::try_from(v) {
            p.extend_from_slice(&[b'K', v]);
        } else if let Ok(v) = u16::try_from(v) {
            p.push(b'M');
            p.extend_from_slice(&v.to_le_bytes());
        } else if let Ok(v) = i32::try_from(v) {
            p.push(b'J');
            p.extend_from_slice(&v.to_le_bytes());
        } else {
            // LONG1: 8 little-endian bytes (a positive value below 2^63).
            p.extend_from_slice(&[0x8a, 8]);
            p.extend_from_slice(&(v as u64).to_le_bytes());
        }
    }
    fn tuple(p: &mut Vec<u8>, values: &[usize]) {
        p.push(b'(');
        for &v in values {
            int(p, v);
        }
        p.push(b't');
    }
    fn ordered_dict(p: &mut Vec<u8>) {
        global(p, "collections", "OrderedDict");
        p.extend_from_slice(b")R");
    }
    let mut p = vec![0x80, 2];
    ordered_dict(&mut p);
    p.push(b'(');
    for (i, t) in tensors.iter().enumerate() {
        text(&mut p, &t.key);
        global(&mut p, "torch._utils", "_rebuild_tensor_v2");
        p.extend_from_slice(b"((");
        text(&mut p, "storage");
        let storage = match t.dtype {
            DType::BF16 => "BFloat16Storage",
            DType::F16 => "HalfStorage",
            _ => "FloatStorage",
        };
        global(&mut p, "torch", storage);
        text(&mut p, &i.to_string());
        text(&mut p, "cpu");
        int(&mut p, t.shape.iter().product());
        p.extend_from_slice(b"tQ");
        int(&mut p, 0);
        tuple(&mut p, &t.shape);
        let mut strides = vec![1; t.shape.len()];
        for d in (0..t.shape.len().saturating_sub(1)).rev() {
            strides[d] = strides[d + 1] * t.shape[d + 1];
        }
        tuple(&mut p, &strides);
        p.push(0x89);
        ordered_dict(&mut p);
        p.extend_from_slice(b"tR");
    }
    p.extend_from_slice(b"u.");
    p
}

/// One member of a zip being written: where its local header starts, its size and CRC.
struct ZipMember {
    name: String,
    header_at: u64,
    size: u64,
    crc: u32,
}

/// Zip field values that need the zip64 extension are stored as this.
const ZIP64_MARK: u32 = u32::MAX;
/// Where PyTorch aligns member data (`torch.load(mmap=True)` maps tensors in place).
const ZIP_ALIGN: u64 = 64;

/// Write a stored (uncompressed) zip member's local header for `size` bytes, padded so that the
/// data starts aligned; returns the member (CRC still 0, see [`patch_crc`]).
fn zip_header(out: &mut Out, name: String, size: u64) -> std::io::Result<ZipMember> {
    let header_at = out.pos;
    let big = size >= u64::from(ZIP64_MARK);
    let mut extra = Vec::new();
    if big {
        extra.extend_from_slice(&1u16.to_le_bytes());
        extra.extend_from_slice(&16u16.to_le_bytes());
        extra.extend_from_slice(&size.to_le_bytes());
        extra.extend_from_slice(&size.to_le_bytes());
    }
    // PyTorch's padding field ("FB") moves the data to the next aligned offset.
    let unpadded = header_at + 30 + name.len() as u64 + extra.len() as u64 + 4;
    let pad = unpadded.next_multiple_of(ZIP_ALIGN) - unpadded;
    extra.extend_from_slice(b"FB");
    extra.extend_from_slice(&(pad as u16).to_le_bytes());
    extra.resize(extra.len() + pad as usize, b'Z');
    let size32 = if big { ZIP64_MARK } else { size as u32 };
    let mut h = Vec::with_capacity(30 + name.len() + extra.len());
    h.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    h.extend_from_slice(&(if big { 45u16 } else { 20 }).to_le_bytes());
    h.extend_from_slice(&[0, 0, 0, 0]); // flags, method: stored
    h.extend_from_slice(&[0, 0, 0x21, 0]); // time 00:00, date 1980-01-01
    h.extend_from_slice(&0u32.to_le_bytes()); // CRC, patched once the data is written
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&size32.to_le_bytes());
    h.extend_from_slice(&(name.len() as u16).to_le_bytes());
    h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
    h.extend_from_slice(name.as_bytes());
    h.extend_from_slice(&extra);
    out.put(&h)?;
    Ok(ZipMember { name, header_at, size, crc: 0 })
}

/// Record the CRC of `member`'s data in its local header.
fn patch_crc(out: &mut Out, member: &mut ZipMember, crc: u32) -> std::io::Result<()> {
    member.crc = crc;
    out.patch_u32(member.header_at + 14, crc)
}

/// A small zip member written whole.
fn zip_member(out: &mut Out, name: String, data: &[u8]) -> std::io::Result<ZipMember> {
    let mut member = zip_header(out, name, data.len() as u64)?;
    out.put(data)?;
    patch_crc(out, &mut member, crc32fast::hash(data))?;
    Ok(member)
}

/// The zip's central directory and end records (zip64 ones where offsets or sizes need them).
fn zip_directory(out: &mut Out, members: &[ZipMember]) -> std::io::Result<()> {
    let start = out.pos;
    for m in members {
        let mut extra = Vec::new();
        let size32 = if m.size >= u64::from(ZIP64_MARK) {
            extra.extend_from_slice(&m.size.to_le_bytes());
            extra.extend_from_slice(&m.size.to_le_bytes());
            ZIP64_MARK
        } else {
            m.size as u32
        };
        let at32 = if m.header_at >= u64::from(ZIP64_MARK) {
            extra.extend_from_slice(&m.header_at.to_le_bytes());
            ZIP64_MARK
        } else {
            m.header_at as u32
        };
        if !extra.is_empty() {
            let fields = std::mem::take(&mut extra);
            extra.extend_from_slice(&1u16.to_le_bytes());
            extra.extend_from_slice(&(fields.len() as u16).to_le_bytes());
            extra.extend_from_slice(&fields);
        }
        let version: u16 = if extra.is_empty() { 20 } else { 45 };
        let mut h = Vec::with_capacity(46 + m.name.len() + extra.len());
        h.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
        h.extend_from_slice(&45u16.to_le_bytes()); // made by
        h.extend_from_slice(&version.to_le_bytes());
        h.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0x21, 0]); // flags, method, time, date
        h.extend_from_slice(&m.crc.to_le_bytes());
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&size32.to_le_bytes());
        h.extend_from_slice(&(m.name.len() as u16).to_le_bytes());
        h.extend_from_slice(&(extra.len() as u16).to_le_bytes());
        h.extend_from_slice(&[0; 8]); // comment length, disk, internal and external attributes
        h.extend_from_slice(&[0; 2]);
        h.extend_from_slice(&at32.to_le_bytes());
        h.extend_from_slice(m.name.as_bytes());
        h.extend_from_slice(&extra);
        out.put(&h)?;
    }
    let (end, size) = (out.pos, out.pos - start);
    let count = members.len() as u64;
    let zip64 = end >= u64::from(ZIP64_MARK) || count >= 0xFFFF;
    if zip64 {
        let mut r = Vec::with_capacity(76);
        r.extend_from_slice(&0x0606_4b50u32.to_le_bytes());
        r.extend_from_slice(&44u64.to_le_bytes());
        r.extend_from_slice(&45u16.to_le_bytes());
        r.extend_from_slice(&45u16.to_le_bytes());
        r.extend_from_slice(&[0; 8]); // this disk, the directory's disk
        r.extend_from_slice(&count.to_le_bytes());
        r.extend_from_slice(&count.to_le_bytes());
        r.extend_from_slice(&size.to_le_bytes());
        r.extend_from_slice(&start.to_le_bytes());
        r.extend_from_slice(&0x0706_4b50u32.to_le_bytes());
        r.extend_from_slice(&0u32.to_le_bytes());
        r.extend_from_slice(&end.to_le_bytes());
        r.extend_from_slice(&1u32.to_le_bytes());
        out.put(&r)?;
    }
    let count16 = if zip64 { 0xFFFF } else { count as u16 };
    let clamp = |v: u64| if zip64 { ZIP64_MARK } else { v as u32 };
    let mut r = Vec::with_capacity(22);
    r.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    r.extend_from_slice(&[0; 4]);
    r.extend_from_slice(&count16.to_le_bytes());
    r.extend_from_slice(&count16.to_le_bytes());
    r.extend_from_slice(&clamp(size).to_le_bytes());
    r.extend_from_slice(&clamp(start).to_le_bytes());
    r.extend_from_slice(&[0; 2]);
    out.put(&r)
}

/// A `torch.save` zip of the state dict of `tensors`, members under `archive/` as PyTorch names
/// them: `data.pkl`, `byteorder`, `data/<i>` per tensor, `version`.
fn write_torch_zip(out: &mut Out, archive: &str, tensors: &[TensorSpec], fill: Fill) -> std::io::Result<()> {
    let mut members = vec![
        zip_member(out, format!("{archive}/data.pkl"), &state_dict_pickle(tensors))?,
        zip_member(out, format!("{archive}/byteorder"), b"little")?,
    ];
    with_tensor_bytes(tensors, fill, |bytes| {
        for (i, t) in tensors.iter().enumerate() {
            let mut member = zip_header(out, format!("{archive}/data/{i}"), t.bytes())?;
            let crc = bytes.write(out, i)?;
            patch_crc(out, &mut member, crc)?;
            members.push(member);
        }
        Ok(())
    })?;
    members.push(zip_member(out, format!("{archive}/version"), b"3\n")?);
    zip_directory(out, &members)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(key: &str, shape: &[usize], dtype: DType) -> TensorSpec {
        TensorSpec { key: key.into(), shape: shape.to_vec(), dtype }
    }

    #[test]
    fn zeros_crc_matches_a_pass_over_zeros() {
        for n in [0u64, 1, 2, 3, 1000, 65_537] {
            assert_eq!(zeros_crc(n), crc32fast::hash(&vec![0; n as usize]), "{n}");
        }
    }

    #[test]
    fn shards_split_in_order_with_large_tensors_alone() {
        let t = [spec("a", &[10], DType::F32), spec("b", &[100], DType::F32), spec("c", &[5], DType::F32)];
        let shards = split_shards(&t, 100);
        let keys: Vec<Vec<&str>> = shards.iter().map(|s| s.iter().map(|t| t.key.as_str()).collect()).collect();
        assert_eq!(keys, [vec!["a"], vec!["b"], vec!["c"]]);
        assert_eq!(split_shards(&t, 1000).len(), 1);
    }
}

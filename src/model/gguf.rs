//! GGUF checkpoints (llama.cpp's single-file format): header, metadata, tensor infos and data over
//! a memory map; tensors are dequantized to f32 and renamed/reshaped to their Hugging Face form, and
//! the tokenizer is rebuilt from the metadata, so a `.gguf` file alone is a complete model.
//!
//! Every read is bounds-checked against the file: a truncated or corrupt file gives an error that
//! names the file (and the key or tensor being read), never a panic or an allocation larger than
//! the file justifies.

use super::config::{Act, Arch, ModelConfig, NormKind, RopeScaling};
use super::gguf_tokenizer;
use super::tensors::{HostTensor, TensorMap};
use crate::backend::weight::QuantForm;
use anyhow::{anyhow, bail, ensure, Context, Result};
use half::{bf16, f16};
use memmap2::Mmap;
use rayon::prelude::*;
use std::collections::BTreeMap;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; bound the nesting so a corrupt file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 4;
/// Elements dequantized per rayon task (a multiple of every block size).
const CHUNK_ELEMS: usize = 32 * 1024;

/// A complete model read from one GGUF file.
pub struct GgufModel {
    pub config: ModelConfig,
    /// Tensors under their Hugging Face names and shapes, as f32.
    pub tensors: TensorMap,
    pub tokenizer: tokenizers::Tokenizer,
    /// The Jinja chat template (`tokenizer.chat_template`), if the file has one.
    pub chat_template: Option<String>,
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    F32(f32),
    F64(f64),
    Bool(bool),
    Str(String),
    Array(Vec<MetaValue>),
}

impl MetaValue {
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        self.as_i128().and_then(|v| u64::try_from(v).ok())
    }

    pub fn as_i64(&self) -> Option<i64> {
        self.as_i128().and_then(|v| i64::try_from(v).ok())
    }

    fn as_i128(&self) -> Option<i128> {
        Some(match *self {
            MetaValue::U8(v) => v.into(),
            MetaValue::I8(v) => v.into(),
            MetaValue::U16(v) => v.into(),
            MetaValue::I16(v) => v.into(),
            MetaValue::U32(v) => v.into(),
            MetaValue::I32(v) => v.into(),
            MetaValue::U64(v) => v.into(),
            MetaValue::I64(v) => v.into(),
            _ => return None,
        })
    }

    /// Floats, or integers (some writers store e.g. `rope.freq_base` as an integer).
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            MetaValue::F32(v) => Some(v.into()),
            MetaValue::F64(v) => Some(v),
            _ => self.as_i128().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            MetaValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetaValue::Str(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            MetaValue::Array(a) => Some(a),
            _ => None,
        }
    }

    /// A short description for error messages (a vocabulary array would be megabytes of Debug).
    pub fn summary(&self) -> String {
        match self {
            MetaValue::Array(a) => format!("an array of {} values", a.len()),
            MetaValue::Str(s) if s.chars().count() > 60 => {
                format!("{:?}...", s.chars().take(60).collect::<String>())
            }
            v => format!("{v:?}"),
        }
    }
}

/// A ggml tensor element type. Only the first six are dequantized; the rest are named for errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => GgmlType::F32,
            1 => GgmlType::F16,
            2 => GgmlType::Q4_0,
            3 => GgmlType::Q4_1,
            8 => GgmlType::Q8_0,
            30 => GgmlType::BF16,
            other => GgmlType::Other(other),
        }
    }

    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q8_0 => 8,
            GgmlType::BF16 => 30,
            GgmlType::Other(id) => id,
        }
    }

    /// ggml's name for the type (`Q4_K`, ...), for messages.
    pub fn name(self) -> String {
        const NAMES: [&str; 40] = [
            "F32",
            "F16",
            "Q4_0",
            "Q4_1",
            "Q4_2",
            "Q4_3",
            "Q5_0",
            "Q5_1",
            "Q8_0",
            "Q8_1",
            "Q2_K",
            "Q3_K",
            "Q4_K",
            "Q5_K",
            "Q6_K",
            "Q8_K",
            "IQ2_XXS",
            "IQ2_XS",
            "IQ3_XXS",
            "IQ1_S",
            "IQ4_NL",
            "IQ3_S",
            "IQ2_S",
            "IQ4_XS",
            "I8",
            "I16",
            "I32",
            "I64",
            "F64",
            "IQ1_M",
            "BF16",
            "Q4_0_4_4",
            "Q4_0_4_8",
            "Q4_0_8_8",
            "TQ1_0",
            "TQ2_0",
            "IQ4_NL_4_4",
            "IQ4_NL_4_8",
            "IQ4_NL_8_8",
            "MXFP4",
        ];
        match NAMES.get(self.id() as usize) {
            Some(n) => (*n).to_string(),
            None => format!("type {}", self.id()),
        }
    }

    /// (elements per block, bytes per block), for the types this loader can dequantize.
    fn block(self) -> Option<(usize, usize)> {
        match self {
            GgmlType::F32 => Some((1, 4)),
            GgmlType::F16 | GgmlType::BF16 => Some((1, 2)),
            GgmlType::Q8_0 => Some((32, 34)),
            GgmlType::Q4_0 => Some((32, 18)),
            GgmlType::Q4_1 => Some((32, 20)),
            GgmlType::Other(_) => None,
        }
    }
}

/// Where one tensor lives and what it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// GGUF order: innermost (contiguous) dimension first, i.e. reversed from row-major shapes.
    pub dims: Vec<u64>,
    pub dtype: GgmlType,
    /// Offset from the start of the data section.
    pub offset: u64,
}

impl TensorInfo {
    /// Row-major (Hugging Face / PyTorch) shape: the GGUF dims reversed.
    pub fn shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    pub fn n_elements(&self) -> u64 {
        // Validated not to overflow when the file was parsed.
        self.dims.iter().product()
    }
}

/// A parsed GGUF file: metadata and tensor directory over a memory map of the whole file.
pub struct GgufFile {
    path: String,
    data: Mmap,
    pub version: u32,
    pub metadata: BTreeMap<String, MetaValue>,
    pub tensors: Vec<TensorInfo>,
    pub alignment: u64,
    /// File offset of the tensor data section.
    pub data_offset: u64,
}

/// Sequential little-endian reads over the mapped file; every read checks the bounds.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8]> {
        if n > self.remaining() as u64 {
            bail!(
                "unexpected end of file: {n} bytes needed at offset {}, only {} left",
                self.pos,
                self.remaining()
            );
        }
        let s = &self.buf[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N as u64)?);
        Ok(a)
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let len = self.u64()?;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| anyhow!("string is not valid UTF-8"))
    }

    /// A count of items that each take at least `min_size` bytes, checked against what is left
    /// so that a corrupt count cannot trigger a huge allocation.
    fn count(&mut self, min_size: u64, what: &str) -> Result<usize> {
        let n = self.u64()?;
        if n.saturating_mul(min_size) > self.remaining() as u64 {
            bail!(
                "{what} count {n} cannot fit in the {} bytes left in the file",
                self.remaining()
            );
        }
        Ok(n as usize)
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<MetaValue> {
        Ok(match ty {
            0 => MetaValue::U8(u8::from_le_bytes(self.array()?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array()?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array()?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array()?)),
            4 => MetaValue::U32(self.u32()?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array()?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array()?)),
            7 => MetaValue::Bool(self.array::<1>()?[0] != 0),
            8 => MetaValue::Str(self.string()?),
            9 => {
                ensure!(
                    depth < MAX_ARRAY_DEPTH,
                    "arrays nested deeper than {MAX_ARRAY_DEPTH}"
                );
                let elem_ty = self.u32()?;
                let min_size = value_min_size(elem_ty)
                    .ok_or_else(|| anyhow!("unknown array element type {elem_ty}"))?;
                let n = self.count(min_size, "array element")?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(self.value(elem_ty, depth + 1)?);
                }
                MetaValue::Array(items)
            }
            10 => MetaValue::U64(self.u64()?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array()?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array()?)),
            other => bail!("unknown metadata value type {other}"),
        })
    }
}

/// The fewest bytes a value of a GGUF metadata type can take.
fn value_min_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => return None,
    })
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    x.checked_add(alignment - 1)
        .map(|v| v / alignment * alignment)
}

impl GgufFile {
    pub fn open(path: &Path) -> Result<Self> {
        let label = path.display().to_string();
        let file = std::fs::File::open(path).with_context(|| format!("opening {label}"))?;
        let len = file
            .metadata()
            .with_context(|| format!("reading the size of {label}"))?
            .len();
        // Header: magic, version, tensor count, metadata count.
        ensure!(
            len >= 24,
            "{label}: {len} bytes is too short to be a GGUF file"
        );
        // SAFETY: the map is read-only and every access is bounds-checked against its length. The
        // remaining hazard of any file map is another process truncating or rewriting the file
        // while it is mapped; checkpoints are not modified while being loaded, as with every
        // mmap-based loader (llama.cpp, safetensors).
        let data = unsafe { Mmap::map(&file) }.with_context(|| format!("mapping {label}"))?;
        Self::parse(label, data)
    }

    fn parse(path: String, data: Mmap) -> Result<Self> {
        let mut cur = Cursor { buf: &data, pos: 0 };
        let magic = cur.array::<4>()?;
        if &magic != MAGIC {
            bail!("{path}: not a GGUF file (magic bytes {magic:02x?}, expected \"GGUF\")");
        }
        let version = cur.u32()?;
        if version.swap_bytes() == 2 || version.swap_bytes() == 3 {
            bail!("{path}: big-endian GGUF files are not supported");
        }
        ensure!(
            version == 2 || version == 3,
            "{path}: unsupported GGUF version {version} (this loader reads versions 2 and 3)"
        );
        let n_tensors = cur
            .count(24, "tensor")
            .with_context(|| format!("{path}: reading the header"))?;
        let n_kv = cur
            .count(13, "metadata key")
            .with_context(|| format!("{path}: reading the header"))?;
        let metadata = read_metadata(&mut cur, n_kv, &path)?;
        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                anyhow!(
                    "{path}: general.alignment = {} is not a power of two",
                    v.summary()
                )
            })?,
        };
        let tensors = read_tensor_infos(&mut cur, n_tensors, alignment, &path)?;
        let data_offset = align_up(cur.pos as u64, alignment)
            .ok_or_else(|| anyhow!("{path}: data offset overflows"))?;
        Ok(GgufFile {
            path,
            data,
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
        })
    }

    /// The file path, as used in error messages.
    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.get(key)
    }

    /// An optional value that must have the right type when present.
    fn typed<T>(
        &self,
        key: &str,
        kind: &str,
        f: impl Fn(&MetaValue) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| {
                anyhow!(
                    "{}: metadata `{key}` = {} is not {kind}",
                    self.path,
                    v.summary()
                )
            }),
        }
    }

    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", MetaValue::as_u64)
    }

    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", MetaValue::as_f64)
    }

    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(MetaValue::Str(s)) => Ok(Some(s)),
            Some(v) => bail!(
                "{}: metadata `{key}` = {} is not a string",
                self.path,
                v.summary()
            ),
        }
    }

    fn require_u64(&self, key: &str) -> Result<u64> {
        self.get_u64(key)?
            .ok_or_else(|| anyhow!("{}: missing metadata key `{key}`", self.path))
    }

    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The raw bytes of a tensor, checked to lie inside the file.
    pub fn tensor_bytes(&self, info: &TensorInfo) -> Result<&[u8]> {
        let (block_elems, block_bytes) = info.dtype.block().ok_or_else(|| {
            anyhow!(
                "{}: tensor `{}` has type {}, which this loader cannot dequantize \
                 (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)",
                self.path,
                info.name,
                info.dtype.name()
            )
        })?;
        let inner = info.dims.first().copied().unwrap_or(1);
        ensure!(
            inner % block_elems as u64 == 0,
            "{}: tensor `{}` ({}) has inner dimension {inner}, not a multiple of the block size \
             {block_elems}",
            self.path,
            info.name,
            info.dtype.name()
        );
        let size = info.n_elements() / block_elems as u64 * block_bytes as u64;
        let start = self.data_offset.checked_add(info.offset);
        let end = start.and_then(|s| s.checked_add(size));
        match (start, end) {
            (Some(s), Some(e)) if e <= self.data.len() as u64 => {
                Ok(&self.data[s as usize..e as usize])
            }
            _ => bail!(
                "{}: tensor `{}` data (offset {} + {size} bytes after the data start {}) extends \
                 past the end of the file ({} bytes): truncated or corrupt file",
                self.path,
                info.name,
                info.offset,
                self.data_offset,
                self.data.len()
            ),
        }
    }

    /// Dequantizes a tensor to f32 in its row-major shape, under its GGUF name and layout (no
    /// renaming, no Q/K un-permutation).
    pub fn dequantize(&self, info: &TensorInfo) -> Result<HostTensor> {
        let bytes = self.tensor_bytes(info)?;
        let mut out = vec![0f32; info.n_elements() as usize];
        dequantize_into(info.dtype, bytes, &mut out);
        Ok(HostTensor::new(info.shape(), out))
    }
}

fn read_metadata(cur: &mut Cursor, n_kv: usize, path: &str) -> Result<BTreeMap<String, MetaValue>> {
    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        let key = cur
            .string()
            .with_context(|| format!("{path}: reading the name of metadata key #{i}"))?;
        let value = cur
            .u32()
            .and_then(|ty| cur.value(ty, 0))
            .with_context(|| format!("{path}: reading metadata key `{key}`"))?;
        if metadata.insert(key.clone(), value).is_some() {
            bail!("{path}: duplicate metadata key `{key}`");
        }
    }
    Ok(metadata)
}

fn read_tensor_infos(
    cur: &mut Cursor,
    n_tensors: usize,
    alignment: u64,
    path: &str,
) -> Result<Vec<TensorInfo>> {
    let mut infos: Vec<TensorInfo> = Vec::with_capacity(n_tensors);
    let mut seen = std::collections::HashSet::new();
    for i in 0..n_tensors {
        let name = cur
            .string()
            .with_context(|| format!("{path}: reading the name of tensor #{i}"))?;
        let info = read_tensor_info(cur, name.clone(), alignment)
            .with_context(|| format!("{path}: reading the header of tensor `{name}`"))?;
        ensure!(
            seen.insert(name.clone()),
            "{path}: duplicate tensor `{name}`"
        );
        infos.push(info);
    }
    Ok(infos)
}

fn read_tensor_info(cur: &mut Cursor, name: String, alignment: u64) -> Result<TensorInfo> {
    let n_dims = cur.u32()?;
    ensure!(
        (1..=MAX_DIMS).contains(&n_dims),
        "{n_dims} dimensions (ggml allows 1 to {MAX_DIMS})"
    );
    let dims = (0..n_dims).map(|_| cur.u64()).collect::<Result<Vec<_>>>()?;
    let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
    ensure!(
        n.is_some_and(|n| n <= isize::MAX as u64 / 4),
        "dimensions {dims:?} are too large"
    );
    let dtype = GgmlType::from_id(cur.u32()?);
    let offset = cur.u64()?;
    ensure!(
        offset % alignment == 0,
        "data offset {offset} is not a multiple of the alignment {alignment}"
    );
    Ok(TensorInfo {
        name,
        dims,
        dtype,
        offset,
    })
}

/// Dequantizes whole blocks of `src` into `dst` (sized by the caller), in parallel chunks.
fn dequantize_into(dtype: GgmlType, src: &[u8], dst: &mut [f32]) {
    let (block_elems, block_bytes) = dtype.block().expect("checked by tensor_bytes");
    let chunk_bytes = CHUNK_ELEMS / block_elems * block_bytes;
    dst.par_chunks_mut(CHUNK_ELEMS)
        .zip(src.par_chunks(chunk_bytes))
        .for_each(|(out, bytes)| {
            out.chunks_exact_mut(block_elems)
                .zip(bytes.chunks_exact(block_bytes))
                .for_each(|(o, b)| dequantize_block(dtype, b, o))
        });
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// One block of ggml's layouts (`ggml-common.h`): Q8_0 = f16 scale + 32 i8; Q4_0 = f16 scale +
/// 16 bytes whose low nibbles are elements 0..16 and high nibbles 16..32, value (q - 8) * d;
/// Q4_1 = f16 scale, f16 min, then the same nibbles, value q * d + m.
fn dequantize_block(dtype: GgmlType, b: &[u8], out: &mut [f32]) {
    match dtype {
        GgmlType::F32 => out[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => out[0] = f16_at(b, 0),
        GgmlType::BF16 => out[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32(),
        GgmlType::Q8_0 => {
            let d = f16_at(b, 0);
            for (o, &q) in out.iter_mut().zip(&b[2..34]) {
                *o = q as i8 as f32 * d;
            }
        }
        GgmlType::Q4_0 => {
            let d = f16_at(b, 0);
            unpack_nibbles(&b[2..18], out, |q| (q as f32 - 8.0) * d);
        }
        GgmlType::Q4_1 => {
            let (d, m) = (f16_at(b, 0), f16_at(b, 2));
            unpack_nibbles(&b[4..20], out, |q| q as f32 * d + m);
        }
        GgmlType::Other(_) => unreachable!("checked by tensor_bytes"),
    }
}

fn unpack_nibbles(qs: &[u8], out: &mut [f32], f: impl Fn(u8) -> f32) {
    let (lo, hi) = out.split_at_mut(16);
    for ((&q, l), h) in qs.iter().zip(lo).zip(hi) {
        *l = f(q & 0x0f);
        *h = f(q >> 4);
    }
}

/// llama.cpp's `convert_hf_to_gguf.py` permutation of Q/K projection rows (Llama): it regroups
/// each head's rows from Hugging Face's rotate-half RoPE layout to interleaved pairs,
/// `w.reshape(n_head, 2, head_dim / 2, cols).swapaxes(1, 2).reshape(rows, cols)`.
pub fn permute_qk_rows(w: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    remap_qk_rows(w, n_head, cols, false)
}

/// The inverse of [`permute_qk_rows`]: puts GGUF Q/K rows back in Hugging Face order.
pub fn unpermute_qk_rows(w: &[f32], n_head: usize, cols: usize) -> Result<Vec<f32>> {
    remap_qk_rows(w, n_head, cols, true)
}

fn remap_qk_rows(w: &[f32], n_head: usize, cols: usize, inverse: bool) -> Result<Vec<f32>> {
    ensure!(
        cols > 0 && w.len().is_multiple_of(cols),
        "Q/K tensor of {} values is not rows of {cols}",
        w.len()
    );
    let rows = w.len() / cols;
    ensure!(
        n_head > 0 && rows.is_multiple_of(2 * n_head),
        "Q/K tensor with {rows} rows cannot be split into {n_head} heads of even size"
    );
    let half = rows / n_head / 2;
    let mut out = vec![0f32; w.len()];
    for h in 0..n_head {
        for i in 0..half {
            for j in 0..2 {
                // HF row h*hd + j*half + i sits at GGUF row h*hd + 2*i + j.
                let hf = h * 2 * half + j * half + i;
                let gg = h * 2 * half + 2 * i + j;
                let (src, dst) = if inverse { (gg, hf) } else { (hf, gg) };
                out[dst * cols..(dst + 1) * cols].copy_from_slice(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

/// How one GGUF architecture maps onto [`ModelConfig`] and Hugging Face tensor names.
#[derive(Clone, Copy, Debug)]
struct ArchSpec {
    arch: Arch,
    /// Metadata key prefix (`general.architecture`).
    prefix: &'static str,
    /// llama.cpp permuted Q/K rows (models it runs with "normal", interleaved RoPE).
    permuted_qk: bool,
    /// Gemma: the converter stores RMSNorm weights as `1 + w`.
    norm_plus_one: bool,
}

fn arch_spec(name: &str, path: &str) -> Result<ArchSpec> {
    let spec = |arch, prefix, permuted_qk, norm_plus_one| ArchSpec {
        arch,
        prefix,
        permuted_qk,
        norm_plus_one,
    };
    Ok(match name {
        "llama" => spec(Arch::Llama, "llama", true, false),
        "qwen2" => spec(Arch::Qwen2, "qwen2", false, false),
        "gemma" => spec(Arch::Gemma, "gemma", false, true),
        "phi2" => spec(Arch::Phi, "phi2", false, false),
        other => bail!(
            "{path}: unsupported GGUF architecture {other:?} (supported: llama, qwen2, gemma, phi2)"
        ),
    })
}

/// Reads a whole model: config, tensors (f32, Hugging Face names and shapes), tokenizer and chat
/// template.
pub fn load_gguf(path: &Path) -> Result<GgufModel> {
    let file = GgufFile::open(path)?;
    let arch_name = file
        .get_str("general.architecture")?
        .ok_or_else(|| anyhow!("{}: missing metadata key `general.architecture`", file.path))?;
    let spec = arch_spec(arch_name, &file.path)?;
    let config = build_config(&file, spec)?;
    // The tokenizer (tens of thousands of tokens and merges) builds while tensors dequantize.
    let (tensors, tokenizer) = rayon::join(
        || load_tensors(&file, spec, &config),
        || {
            gguf_tokenizer::tokenizer_from_metadata(&file.metadata)
                .with_context(|| format!("{}: building the tokenizer from its metadata", file.path))
        },
    );
    let chat_template = file.get_str("tokenizer.chat_template")?.map(str::to_string);
    Ok(GgufModel {
        config,
        tensors: tensors?,
        tokenizer: tokenizer?,
        chat_template,
    })
}

/// Fills [`ModelConfig`] from `{arch}.*` metadata, with the same defaults
/// `ModelConfig::from_json` uses for the matching Hugging Face architecture.
fn build_config(file: &GgufFile, spec: ArchSpec) -> Result<ModelConfig> {
    let p = spec.prefix;
    let path = &file.path;
    let key = |k: &str| format!("{p}.{k}");
    let req = |k: &str| file.require_u64(&key(k)).map(|v| v as usize);
    let hidden_size = req("embedding_length")?;
    let num_layers = req("block_count")?;
    let num_heads = req("attention.head_count")?;
    let num_kv_heads = file
        .get_u64(&key("attention.head_count_kv"))?
        .map_or(num_heads, |v| v as usize);
    let head_dim = match file.get_u64(&key("attention.key_length"))? {
        Some(v) => v as usize,
        None if num_heads > 0 => hidden_size / num_heads,
        None => 0,
    };
    ensure!(
        num_heads > 0 && num_kv_heads > 0 && num_heads % num_kv_heads == 0 && head_dim > 0,
        "{path}: heads {num_heads}, kv heads {num_kv_heads}, head_dim {head_dim}: not a valid \
         GQA shape"
    );
    let rotary_dim = file
        .get_u64(&key("rope.dimension_count"))?
        .map_or(head_dim, |v| v as usize);
    ensure!(
        rotary_dim % 2 == 0 && rotary_dim <= head_dim,
        "{path}: rope.dimension_count {rotary_dim} must be even and at most head_dim {head_dim}"
    );
    let (norm, eps_key, act) = match spec.arch {
        Arch::Phi => (
            NormKind::Layer,
            "attention.layer_norm_epsilon",
            Act::GeluTanh,
        ),
        Arch::Gemma => (
            NormKind::RmsPlusOne,
            "attention.layer_norm_rms_epsilon",
            Act::GeluTanh,
        ),
        _ => (NormKind::Rms, "attention.layer_norm_rms_epsilon", Act::Silu),
    };
    let default_eps = if spec.arch == Arch::Phi { 1e-5 } else { 1e-6 };
    let has = |t: &str| file.tensor_info(t).is_some();
    let is_phi = spec.arch == Arch::Phi;
    let mut config = ModelConfig {
        arch: spec.arch,
        vocab_size: vocab_size(file)?,
        hidden_size,
        intermediate_size: req("feed_forward_length")?,
        num_layers,
        num_heads,
        num_kv_heads,
        head_dim,
        rotary_dim,
        rope_theta: file.get_f64(&key("rope.freq_base"))?.unwrap_or(10000.0) as f32,
        rope_scaling: RopeScaling::None,
        norm,
        norm_eps: file.get_f64(&key(eps_key))?.unwrap_or(default_eps) as f32,
        act,
        gated_mlp: !is_phi,
        // Biases: whatever the file has (block 0 stands for all layers).
        qkv_bias: has("blk.0.attn_q.bias") || has("blk.0.attn_qkv.bias"),
        o_bias: has("blk.0.attn_output.bias"),
        mlp_bias: has("blk.0.ffn_up.bias"),
        lm_head_bias: has("output.bias"),
        parallel_block: is_phi,
        tie_word_embeddings: !has("output.weight"),
        embed_scale: (spec.arch == Arch::Gemma).then(|| (hidden_size as f32).sqrt()),
        bos_token_id: file
            .get_u64("tokenizer.ggml.bos_token_id")?
            .map(|v| v as u32),
        eos_token_ids: eos_token_ids(file)?,
        max_position_embeddings: file
            .get_u64(&key("context_length"))?
            .map_or(4096, |v| v as usize),
    };
    config.rope_scaling = rope_scaling(file, &config, p)?;
    Ok(config)
}

/// The embedding matrix's row count: the model's real vocabulary (the token list may be shorter
/// but never longer).
fn vocab_size(file: &GgufFile) -> Result<usize> {
    let path = &file.path;
    let embd = file
        .tensor_info("token_embd.weight")
        .ok_or_else(|| anyhow!("{path}: missing tensor `token_embd.weight`"))?;
    ensure!(
        embd.dims.len() == 2,
        "{path}: tensor `token_embd.weight` has dims {:?}, expected 2",
        embd.dims
    );
    let rows = embd.dims[1] as usize;
    if let Some(n) = file
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[_]>::len)
    {
        ensure!(
            n <= rows,
            "{path}: {n} tokens in the vocabulary but only {rows} embedding rows"
        );
    }
    Ok(rows)
}

/// EOS, then the end-of-turn/end-of-message tokens when the file names different ones: generation
/// stops at any of them.
fn eos_token_ids(file: &GgufFile) -> Result<Vec<u32>> {
    let mut ids: Vec<u32> = Vec::new();
    for k in [
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.eot_token_id",
        "tokenizer.ggml.eom_token_id",
    ] {
        if let Some(id) = file.get_u64(k)? {
            if !ids.contains(&(id as u32)) {
                ids.push(id as u32);
            }
        }
    }
    Ok(ids)
}

/// RoPE scaling from `{arch}.rope.scaling.*`, or (Llama 3.1+) recovered from the `rope_freqs`
/// tensor of per-frequency divisors that llama.cpp's converter writes instead.
fn rope_scaling(file: &GgufFile, config: &ModelConfig, p: &str) -> Result<RopeScaling> {
    let path = &file.path;
    if let Some(info) = file.tensor_info("rope_freqs.weight") {
        let t = file.dequantize(info)?;
        return llama3_scaling_from_factors(config, &t.data)
            .with_context(|| format!("{path}: tensor `rope_freqs.weight`"));
    }
    let ty = file
        .get_str(&format!("{p}.rope.scaling.type"))?
        .unwrap_or("none");
    let factor = file.get_f64(&format!("{p}.rope.scaling.factor"))?;
    match (ty, factor) {
        ("none", _) => Ok(RopeScaling::None),
        ("linear", Some(1.0)) => Ok(RopeScaling::None),
        ("linear", Some(f)) => Ok(RopeScaling::Linear { factor: f as f32 }),
        (other, _) => bail!("{path}: unsupported RoPE scaling {other:?} (factor {factor:?})"),
    }
}

/// Llama 3 frequency scaling, recovered from the per-pair divisors the converter bakes in.
///
/// With `s = (original_context / wavelength - low) / (high - low)` the divisor is 1 where
/// `s >= 1`, `factor` where `s <= 0`, and `1 / ((1 - s) / factor + s)` in between. `factor` is the
/// largest divisor; `s` is linear in `1 / wavelength`, so the in-between divisors fix its slope and
/// intercept, and any (low, high, original context) with that line gives the same frequencies: take
/// low = 1. The result is checked against every divisor.
fn llama3_scaling_from_factors(config: &ModelConfig, factors: &[f32]) -> Result<RopeScaling> {
    ensure!(
        factors.len() == config.rotary_dim / 2,
        "{} factors for a rotary dimension of {}",
        factors.len(),
        config.rotary_dim
    );
    let plain = ModelConfig {
        rope_scaling: RopeScaling::None,
        ..config.clone()
    }
    .rope_inv_freq();
    let factor = factors.iter().copied().fold(1.0f32, f32::max) as f64;
    if factor <= 1.0 + 1e-6 {
        return Ok(RopeScaling::None);
    }
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-4 * b.abs().max(1.0);
    // (1 / wavelength, s) for every pair, classified by its divisor.
    let mut low_x = Vec::new();
    let mut high_x = Vec::new();
    let mut medium = Vec::new();
    for (&f, &inv) in factors.iter().zip(&plain) {
        let x = inv as f64 / (2.0 * std::f64::consts::PI);
        let f = f as f64;
        if close(f, 1.0) {
            high_x.push(x);
        } else if close(f, factor) {
            low_x.push(x);
        } else {
            medium.push((x, (1.0 / f - 1.0 / factor) / (1.0 - 1.0 / factor)));
        }
    }
    if high_x.is_empty() && medium.is_empty() {
        // Every frequency divided alike: plain linear scaling.
        return Ok(RopeScaling::Linear {
            factor: factor as f32,
        });
    }
    let low_edge = low_x.iter().copied().reduce(f64::max).map(|x| (x, 0.0));
    let high_edge = high_x.iter().copied().reduce(f64::min).map(|x| (x, 1.0));
    let points: Vec<(f64, f64)> = match medium.len() {
        0 | 1 => low_edge
            .into_iter()
            .chain(medium)
            .chain(high_edge)
            .take(2)
            .collect(),
        _ => medium,
    };
    let (slope, intercept) = fit_line(&points).ok_or_else(|| {
        anyhow!("cannot recover Llama 3 RoPE scaling from the per-frequency factors {factors:?}")
    })?;
    // s = slope * x + intercept = (orig / (high - low)) x - low / (high - low), with low = 1.
    let (a, b) = (slope, -intercept);
    ensure!(
        a > 0.0 && b > 0.0,
        "per-frequency RoPE factors {factors:?} do not follow Llama 3 scaling"
    );
    let scaling = RopeScaling::Llama3 {
        factor: factor as f32,
        low_freq_factor: 1.0,
        high_freq_factor: (1.0 + 1.0 / b) as f32,
        original_max_position_embeddings: (a / b) as f32,
    };
    let scaled = ModelConfig {
        rope_scaling: scaling,
        ..config.clone()
    }
    .rope_inv_freq();
    let matches = plain
        .iter()
        .zip(&scaled)
        .zip(factors)
        .all(|((&p, &s), &f)| close((p / s) as f64, f as f64));
    ensure!(
        matches,
        "per-frequency RoPE factors {factors:?} do not follow Llama 3 scaling"
    );
    Ok(scaling)
}

/// Least-squares line through at least two points with distinct x.
fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    let n = points.len() as f64;
    if points.len() < 2 {
        return None;
    }
    let (sx, sy) = points
        .iter()
        .fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
    let (mx, my) = (sx / n, sy / n);
    let sxx: f64 = points.iter().map(|&(x, _)| (x - mx) * (x - mx)).sum();
    let sxy: f64 = points.iter().map(|&(x, y)| (x - mx) * (y - my)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let slope = sxy / sxx;
    Some((slope, my - slope * mx))
}

/// What a GGUF tensor becomes: nothing (consumed elsewhere), or Hugging Face tensors.
enum Mapped {
    Skip,
    One(String),
    /// Phi-2's fused `attn_qkv` of a layer (weight or bias), split into q/k/v projections.
    Qkv {
        layer: usize,
        bias: bool,
    },
}

fn map_name(name: &str, arch: Arch, num_layers: usize) -> Option<Mapped> {
    let phi = arch == Arch::Phi;
    let global = match name {
        "rope_freqs.weight" => return Some(Mapped::Skip),
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" if phi => Some("model.final_layernorm.weight"),
        "output_norm.bias" if phi => Some("model.final_layernorm.bias"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        "output.bias" => Some("lm_head.bias"),
        _ => None,
    };
    if let Some(g) = global {
        return Some(Mapped::One(g.to_string()));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < num_layers)?;
    let (part, kind) = rest.rsplit_once('.')?;
    if !matches!(kind, "weight" | "bias") {
        return None;
    }
    let hf = match part {
        "attn_qkv" if phi => {
            let bias = kind == "bias";
            return Some(Mapped::Qkv { layer, bias });
        }
        "attn_norm" => "input_layernorm",
        "ffn_norm" if !phi => "post_attention_layernorm",
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" if phi => "self_attn.dense",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" if !phi => "mlp.gate_proj",
        "ffn_up" if phi => "mlp.fc1",
        "ffn_down" if phi => "mlp.fc2",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        _ => return None,
    };
    Some(Mapped::One(format!("model.layers.{layer}.{hf}.{kind}")))
}

/// Dequantizes every tensor (in parallel) and converts it to its Hugging Face name and layout.
fn load_tensors(file: &GgufFile, spec: ArchSpec, config: &ModelConfig) -> Result<TensorMap> {
    let converted: Vec<Vec<(String, HostTensor)>> = file
        .tensors
        .par_iter()
        .map(|info| convert_tensor(file, spec, config, info))
        .collect::<Result<_>>()?;
    let mut map = TensorMap::new(file.path.clone());
    for (name, t) in converted.into_iter().flatten() {
        map.insert(name, t);
    }
    Ok(map)
}

fn convert_tensor(
    file: &GgufFile,
    spec: ArchSpec,
    config: &ModelConfig,
    info: &TensorInfo,
) -> Result<Vec<(String, HostTensor)>> {
    let path = &file.path;
    let mapped = map_name(&info.name, spec.arch, config.num_layers).ok_or_else(|| {
        anyhow!(
            "{path}: unrecognised tensor `{}` for architecture {:?}",
            info.name,
            spec.arch
        )
    })?;
    let hf_name = match mapped {
        Mapped::Skip => return Ok(vec![]),
        Mapped::Qkv { layer, bias } => {
            let t = file.dequantize(info)?;
            return split_qkv(t, config, layer, if bias { "bias" } else { "weight" })
                .with_context(|| format!("{path}: tensor `{}`", info.name));
        }
        Mapped::One(n) => n,
    };
    let mut t = file.dequantize(info)?;
    if spec.permuted_qk {
        let heads = if info.name.contains(".attn_q.") {
            Some(config.num_heads)
        } else if info.name.contains(".attn_k.") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        if let Some(n_head) = heads {
            let cols = t.shape.get(1).copied().unwrap_or(1);
            t.data = unpermute_qk_rows(&t.data, n_head, cols)
                .with_context(|| format!("{path}: tensor `{}`", info.name))?;
        }
    }
    t.quant = quant_form(file, info, &t)?;
    if let (Some(p), true) = (&t.quant, spec.permuted_qk) {
        let heads = if info.name.contains(".attn_q.") {
            Some(config.num_heads)
        } else if info.name.contains(".attn_k.") {
            Some(config.num_kv_heads)
        } else {
            None
        };
        if let (Some(n_head), &[rows, cols]) = (heads, &t.shape[..]) {
            let half = rows / n_head / 2;
            // HF row h*hd + j*half + i sits at GGUF row h*hd + 2*i + j (as for the f32 copy).
            let src_of = |hf: usize| {
                let (h, rest) = (hf / (2 * half), hf % (2 * half));
                h * 2 * half + 2 * (rest % half) + rest / half
            };
            t.quant = Some(p.permute_rows(rows, cols, src_of));
        }
    }
    if spec.norm_plus_one && info.name.contains("norm.weight") {
        t.data.iter_mut().for_each(|w| *w -= 1.0);
    }
    Ok(vec![(hf_name, t)])
}

/// The compact form of a 2-D weight the decode matmuls can read directly.
fn quant_form(file: &GgufFile, info: &TensorInfo, t: &HostTensor) -> Result<Option<QuantForm>> {
    if t.shape.len() != 2 || !info.name.ends_with(".weight") {
        return Ok(None);
    }
    let bytes = file.tensor_bytes(info)?;
    let u16s = || {
        bytes
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .collect()
    };
    Ok(match info.dtype {
        GgmlType::Q4_0 => Some(QuantForm::Q4_0(bytes.to_vec())),
        GgmlType::Q4_1 => Some(QuantForm::Q4_1(bytes.to_vec())),
        GgmlType::Q8_0 => Some(QuantForm::Q8_0(bytes.to_vec())),
        GgmlType::BF16 => Some(QuantForm::Bf16(u16s())),
        GgmlType::F16 => Some(QuantForm::F16(u16s())),
        _ => None,
    })
}

/// Splits a fused `[q; k; v]` projection (rows) into the three Hugging Face tensors.
fn split_qkv(
    t: HostTensor,
    config: &ModelConfig,
    layer: usize,
    kind: &str,
) -> Result<Vec<(String, HostTensor)>> {
    let (q, kv) = (config.q_dim(), config.kv_dim());
    let rows = t.shape[0];
    ensure!(
        rows == q + 2 * kv,
        "fused QKV has {rows} rows, the config implies {q} + 2 x {kv}"
    );
    let cols = t.data.len() / rows;
    let mut out = Vec::with_capacity(3);
    let mut start = 0;
    for (proj, n) in [("q_proj", q), ("k_proj", kv), ("v_proj", kv)] {
        let mut shape = t.shape.clone();
        shape[0] = n;
        let data = t.data[start * cols..(start + n) * cols].to_vec();
        out.push((
            format!("model.layers.{layer}.self_attn.{proj}.{kind}"),
            HostTensor::new(shape, data),
        ));
        start += n;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permutation_matches_numpy_reference() {
        // One head, head_dim 4, one column: rows [0,1,2,3] -> reshape(1,2,2,1).swapaxes(1,2)
        // gives rows [0,2,1,3].
        let w = [0.0, 1.0, 2.0, 3.0];
        assert_eq!(permute_qk_rows(&w, 1, 1).unwrap(), vec![0.0, 2.0, 1.0, 3.0]);
        // Two heads of 6 rows, two columns: each head's rows [a0 a1 a2 b0 b1 b2] become
        // [a0 b0 a1 b1 a2 b2].
        let w: Vec<f32> = (0..24).map(|x| x as f32).collect();
        let p = permute_qk_rows(&w, 2, 2).unwrap();
        let rows: Vec<f32> = p.chunks(2).map(|r| r[0] / 2.0).collect();
        assert_eq!(rows, vec![0., 3., 1., 4., 2., 5., 6., 9., 7., 10., 8., 11.]);
        assert_eq!(unpermute_qk_rows(&p, 2, 2).unwrap(), w);
    }

    #[test]
    fn permutation_rejects_odd_heads() {
        assert!(permute_qk_rows(&[0.0; 6], 2, 1).is_err());
        assert!(permute_qk_rows(&[0.0; 5], 1, 2).is_err());
    }

    #[test]
    fn nibble_order_and_offsets() {
        // Q4_0 block: d = 1.0, byte k holds element k (low) and k + 16 (high).
        let mut b = vec![0u8; 18];
        b[..2].copy_from_slice(&f16::from_f32(1.0).to_le_bytes());
        b[2] = 0x9f; // element 0 = 15 - 8 = 7, element 16 = 9 - 8 = 1
        let mut out = [0f32; 32];
        dequantize_block(GgmlType::Q4_0, &b, &mut out);
        assert_eq!((out[0], out[16], out[1]), (7.0, 1.0, -8.0));
    }

    #[test]
    fn metadata_counts_cannot_allocate_beyond_the_file() {
        // An array claiming 2^40 u32 elements in a 16-byte buffer.
        let mut buf = 4u32.to_le_bytes().to_vec();
        buf.extend((1u64 << 40).to_le_bytes());
        let mut cur = Cursor { buf: &buf, pos: 0 };
        let err = cur.value(9, 0).unwrap_err().to_string();
        assert!(err.contains("cannot fit"), "{err}");
    }

    #[test]
    fn type_names() {
        assert_eq!(GgmlType::from_id(12).name(), "Q4_K");
        assert_eq!(GgmlType::from_id(30), GgmlType::BF16);
        assert_eq!(GgmlType::from_id(99).name(), "type 99");
    }
}

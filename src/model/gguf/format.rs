//! The GGUF file format: header, metadata, tensor directory and the bounds-checked bytes of each
//! tensor, over a memory map of the whole file. Nothing here knows what the tensors mean.
//!
//! Every read is bounds-checked against the file: a truncated or corrupt file gives an error that
//! names the file (and the key or tensor being read), never a panic or an allocation larger than
//! the file justifies.

use anyhow::{anyhow, bail, ensure, Context, Result};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::Path;

const MAGIC: &[u8; 4] = b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal; bound the nesting so a corrupt file cannot overflow the stack.
const MAX_ARRAY_DEPTH: usize = 4;

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
    pub(super) fn block(self) -> Option<(usize, usize)> {
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
    pub(super) path: String,
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

    pub(super) fn require_u64(&self, key: &str) -> Result<u64> {
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

#[cfg(test)]
mod tests {
    use super::*;

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

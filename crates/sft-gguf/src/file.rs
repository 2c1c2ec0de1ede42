//! Opening a GGUF file: its header is first walked and checked against the file's length
//! ([`check_header`]), then read by candle's `quantized::gguf_file`, which also reads and
//! dequantizes the tensors.
//!
//! Why a walk of our own before candle's reader: candle trusts a few header fields (an
//! alignment of 0 divides by zero, a tensor's dimensions are multiplied unchecked, an unknown
//! tensor type is reported without the tensor's name). The walk reads nothing into memory
//! beyond names and the alignment, checks every length against the bytes left, every tensor's
//! type, element count and data range against the file, and names the key or tensor at fault.

use std::fs::File;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};

use crate::GgufError;

/// `"GGUF"` read as a little-endian u32.
const MAGIC: u32 = 0x4655_4747;
/// GGUF's default tensor data alignment.
const DEFAULT_ALIGNMENT: u64 = 32;
/// Names and keys longer than this are not plausible (llama.cpp allows 64 KiB for names).
const MAX_NAME: u64 = 1 << 16;
/// Strings (a chat template, one vocabulary entry) longer than this are not plausible.
const MAX_STRING: u64 = 1 << 26;
/// Arrays nest at most this deep.
const MAX_DEPTH: usize = 8;

/// A ggml tensor type: its id in the file, name, elements per block and bytes per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TensorType {
    /// The id a GGUF stores.
    pub id: u32,
    /// ggml's name.
    pub name: &'static str,
    /// Elements per block.
    pub block: u64,
    /// Bytes per block.
    pub bytes: u64,
}

/// The types candle reads and dequantizes (ggml's ids and block layouts).
pub const TENSOR_TYPES: &[TensorType] = &[
    TensorType { id: 0, name: "F32", block: 1, bytes: 4 },
    TensorType { id: 1, name: "F16", block: 1, bytes: 2 },
    TensorType { id: 2, name: "Q4_0", block: 32, bytes: 18 },
    TensorType { id: 3, name: "Q4_1", block: 32, bytes: 20 },
    TensorType { id: 6, name: "Q5_0", block: 32, bytes: 22 },
    TensorType { id: 7, name: "Q5_1", block: 32, bytes: 24 },
    TensorType { id: 8, name: "Q8_0", block: 32, bytes: 34 },
    TensorType { id: 9, name: "Q8_1", block: 32, bytes: 36 },
    TensorType { id: 10, name: "Q2_K", block: 256, bytes: 84 },
    TensorType { id: 11, name: "Q3_K", block: 256, bytes: 110 },
    TensorType { id: 12, name: "Q4_K", block: 256, bytes: 144 },
    TensorType { id: 13, name: "Q5_K", block: 256, bytes: 176 },
    TensorType { id: 14, name: "Q6_K", block: 256, bytes: 210 },
    TensorType { id: 15, name: "Q8_K", block: 256, bytes: 292 },
    TensorType { id: 30, name: "BF16", block: 1, bytes: 2 },
];

/// ggml types this build cannot read, by id, so the error can name them.
const OTHER_TYPES: &[(u32, &str)] = &[
    (4, "Q4_2"),
    (5, "Q4_3"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

/// One tensor as the header describes it (dimensions outermost first, as in transformers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// The GGUF name.
    pub name: String,
    /// Its type.
    pub kind: TensorType,
    /// Dimensions, outermost first.
    pub shape: Vec<usize>,
}

/// A checked GGUF file, open for reading tensors.
pub struct GgufFile {
    path: PathBuf,
    reader: BufReader<File>,
    content: Content,
    entries: Vec<TensorEntry>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile").field("path", &self.path).field("tensors", &self.entries.len()).finish()
    }
}

impl GgufFile {
    /// Opens and checks `path`.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|e| GgufError::io(path, e))?;
        let len = file.metadata().map_err(|e| GgufError::io(path, e))?.len();
        let mut reader = BufReader::new(file);
        let entries = check_header(&mut reader, len, path)?;
        reader.seek(SeekFrom::Start(0)).map_err(|e| GgufError::io(path, e))?;
        let content = Content::read(&mut reader).map_err(|e| GgufError::Format { path: path.into(), message: e.to_string() })?;
        Ok(Self { path: path.to_path_buf(), reader, content, entries })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The metadata, by GGUF key.
    pub fn metadata(&self) -> &std::collections::HashMap<String, Value> {
        &self.content.metadata
    }

    /// The tensors in file order.
    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }

    /// Tensor `name` dequantized to f32; F16 and BF16 tensors keep their type (exact either way).
    pub fn tensor(&mut self, name: &str) -> Result<Tensor, GgufError> {
        let bad = |message: String| GgufError::Tensor { path: self.path.clone(), tensor: name.into(), message };
        let q = self.content.tensor(&mut self.reader, name, &Device::Cpu).map_err(|e| bad(e.to_string()))?;
        let t = q.dequantize(&Device::Cpu).map_err(|e| bad(e.to_string()))?;
        match q.dtype() {
            GgmlDType::F16 => t.to_dtype(DType::F16),
            GgmlDType::BF16 => t.to_dtype(DType::BF16),
            _ => Ok(t),
        }
        .map_err(|e| bad(e.to_string()))
    }
}

/// Reads the little-endian header fields, every length checked against what is left.
struct Walker<'a, R> {
    r: &'a mut R,
    len: u64,
    pos: u64,
    wide: bool,
    path: &'a Path,
}

impl<R: Read + Seek> Walker<'_, R> {
    fn format(&self, message: impl Into<String>) -> GgufError {
        GgufError::Format { path: self.path.into(), message: message.into() }
    }

    fn bytes<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut b = [0u8; N];
        if self.len.saturating_sub(self.pos) < N as u64 {
            return Err(self.format(format!("the file ends inside {what} at byte {} (file is {} bytes)", self.pos, self.len)));
        }
        self.r.read_exact(&mut b).map_err(|e| GgufError::io(self.path, e))?;
        self.pos += N as u64;
        Ok(b)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.bytes::<4>(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.bytes::<8>(what)?))
    }

    /// A length: u64 since GGUF v2, u32 in v1.
    fn length(&mut self, what: &str) -> Result<u64, GgufError> {
        if self.wide {
            self.u64(what)
        } else {
            self.u32(what).map(u64::from)
        }
    }

    fn skip(&mut self, n: u64, what: &str) -> Result<(), GgufError> {
        if self.len.saturating_sub(self.pos) < n {
            return Err(self.format(format!("{what} needs {n} bytes at byte {}, only {} left", self.pos, self.len - self.pos)));
        }
        let step = i64::try_from(n).map_err(|_| self.format(format!("{what}: length {n} out of range")))?;
        self.r.seek(SeekFrom::Current(step)).map_err(|e| GgufError::io(self.path, e))?;
        self.pos += n;
        Ok(())
    }

    fn string(&mut self, max: u64, what: &str) -> Result<String, GgufError> {
        let n = self.length(what)?;
        if n > max || n > self.len.saturating_sub(self.pos) {
            return Err(self.format(format!("{what}: string length {n} at byte {} is larger than the file allows", self.pos)));
        }
        let mut b = vec![0u8; n as usize];
        self.r.read_exact(&mut b).map_err(|e| GgufError::io(self.path, e))?;
        self.pos += n;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// Skips one value of GGUF value type `ty`; returns it when it is a small unsigned integer.
    fn value(&mut self, ty: u32, key: &str, depth: usize) -> Result<Option<u64>, GgufError> {
        let bad_key = |message: String| GgufError::Key { path: self.path.into(), key: key.into(), message };
        match ty {
            0 | 1 | 7 => Ok(Some(u64::from(self.bytes::<1>(key)?[0]))),
            2 | 3 => Ok(Some(u64::from(u16::from_le_bytes(self.bytes::<2>(key)?)))),
            4 | 5 => Ok(Some(u64::from(self.u32(key)?))),
            6 => self.skip(4, key).map(|_| None),
            10..=12 => self.skip(8, key).map(|_| None),
            8 => {
                let n = self.length(key)?;
                if n > MAX_STRING {
                    return Err(bad_key(format!("string of {n} bytes is implausibly long")));
                }
                self.skip(n, key).map(|_| None)
            }
            9 if depth >= MAX_DEPTH => Err(bad_key(format!("arrays nested deeper than {MAX_DEPTH}"))),
            9 => {
                let elem = self.u32(key)?;
                let n = self.length(key)?;
                let fixed = match elem {
                    0 | 1 | 7 => Some(1),
                    2 | 3 => Some(2),
                    4..=6 => Some(4),
                    10..=12 => Some(8),
                    8 | 9 => None,
                    other => return Err(bad_key(format!("array of unknown value type {other}"))),
                };
                match fixed {
                    Some(size) => self.skip(n.saturating_mul(size), key)?,
                    None => {
                        // Every element takes at least its length prefix.
                        if n.saturating_mul(if self.wide { 8 } else { 4 }) > self.len.saturating_sub(self.pos) {
                            return Err(bad_key(format!("array of {n} elements is longer than the file")));
                        }
                        for _ in 0..n {
                            self.value(elem, key, depth + 1)?;
                        }
                    }
                }
                Ok(None)
            }
            other => Err(bad_key(format!("unknown value type {other}"))),
        }
    }
}

/// Walks the header of a GGUF file of `len` bytes: magic, version, every metadata value and
/// tensor description, each tensor's data range checked against the file.
pub fn check_header<R: Read + Seek>(r: &mut R, len: u64, path: &Path) -> Result<Vec<TensorEntry>, GgufError> {
    let mut w = Walker { r, len, pos: 0, wide: true, path };
    let magic = w.u32("the magic number")?;
    if magic != MAGIC {
        return Err(w.format(format!("wrong magic {:?}; a GGUF file starts with \"GGUF\"", String::from_utf8_lossy(&magic.to_le_bytes()))));
    }
    let version = w.u32("the version")?;
    if !(1..=3).contains(&version) {
        return Err(w.format(format!("GGUF version {version} is not supported (1 to 3)")));
    }
    w.wide = version >= 2;
    let n_tensors = w.length("the tensor count")?;
    let n_kv = w.length("the metadata count")?;
    // Each metadata entry takes at least 13 bytes and each tensor description 24.
    if n_kv.saturating_mul(13).saturating_add(n_tensors.saturating_mul(24)) > len {
        return Err(w.format(format!("header declares {n_tensors} tensors and {n_kv} metadata entries, more than {len} bytes can hold")));
    }
    let mut alignment = DEFAULT_ALIGNMENT;
    for i in 0..n_kv {
        let key = w.string(MAX_NAME, &format!("metadata key {i}"))?;
        let ty = w.u32(&key)?;
        let v = w.value(ty, &key, 0)?;
        if key == "general.alignment" {
            match v {
                Some(a) if a > 0 && a.is_power_of_two() => alignment = a,
                _ => return Err(GgufError::Key { path: path.into(), key, message: "must be a power of two".into() }),
            }
        }
    }
    let mut entries = Vec::new();
    let mut ranges = Vec::new();
    for i in 0..n_tensors {
        let name = w.string(MAX_NAME, &format!("tensor name {i}"))?;
        let (entry, offset, bytes) = tensor_entry(&mut w, name)?;
        ranges.push((offset, bytes));
        entries.push(entry);
    }
    let data = w.pos.div_ceil(alignment) * alignment;
    for (entry, (offset, bytes)) in entries.iter().zip(ranges) {
        let bad = |message: String| GgufError::Tensor { path: path.into(), tensor: entry.name.clone(), message };
        if offset % alignment != 0 {
            return Err(bad(format!("data offset {offset} is not a multiple of the alignment {alignment}")));
        }
        let end = data.checked_add(offset).and_then(|s| s.checked_add(bytes));
        match end {
            Some(end) if end <= len => {}
            _ => {
                return Err(bad(format!(
                    "its {bytes} bytes at offset {offset} go past the end of the file ({len} bytes; truncated download?)"
                )))
            }
        }
    }
    Ok(entries)
}

/// One tensor description: dimensions, type and offset; returns the entry, offset and size.
fn tensor_entry<R: Read + Seek>(w: &mut Walker<'_, R>, name: String) -> Result<(TensorEntry, u64, u64), GgufError> {
    let bad = |message: String| GgufError::Tensor { path: w.path.into(), tensor: name.clone(), message };
    let n_dims = w.u32(&name)?;
    if !(1..=4).contains(&n_dims) {
        return Err(bad(format!("{n_dims} dimensions (expected 1 to 4)")));
    }
    let mut dims = Vec::with_capacity(n_dims as usize);
    for _ in 0..n_dims {
        dims.push(w.length(&name)?);
    }
    let id = w.u32(&name)?;
    let offset = w.u64(&name)?;
    let kind = TENSOR_TYPES.iter().find(|t| t.id == id).copied().ok_or_else(|| {
        let known =
            OTHER_TYPES.iter().find(|(i, _)| *i == id).map(|(_, n)| format!("{n} (type {id})")).unwrap_or(format!("unknown type {id}"));
        let supported: Vec<&str> = TENSOR_TYPES.iter().map(|t| t.name).collect();
        bad(format!("{known} is not supported (supported: {})", supported.join(", ")))
    })?;
    let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d)).filter(|&n| n <= 1 << 40);
    let elems = elems.ok_or_else(|| bad(format!("dimensions {dims:?} are implausibly large")))?;
    if dims[0] % kind.block != 0 {
        return Err(bad(format!("rows of {} elements are not whole {} blocks of {}", dims[0], kind.name, kind.block)));
    }
    let bytes = elems / kind.block * kind.bytes;
    // GGUF lists dimensions innermost first; transformers' order is outermost first.
    let shape = dims.iter().rev().map(|&d| d as usize).collect();
    Ok((TensorEntry { name, kind, shape }, offset, bytes))
}

//! GGUF, llama.cpp's single-file model format (versions 2 and 3): a header parser that
//! trusts no count in the file, dequantisation of the common weight types, and an importer
//! that turns a LLaMA-architecture GGUF into a Hugging Face checkpoint.
//!
//! Layout: magic `GGUF`, version (u32), tensor count and metadata count (u64), the metadata
//! key/values, the tensor infos (name, dims innermost first, ggml type, offset), padding to
//! `general.alignment`, then the tensor data. Everything is little-endian.

use super::gguf_tokenizer;
use super::import::ImportedCheckpoint;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tch::Tensor;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Real files nest arrays at most once; a crafted file could otherwise recurse until the
/// stack overflows.
const MAX_ARRAY_DEPTH: u32 = 4;
/// Vectors are grown as elements are read, starting from at most this capacity, so a count
/// that passed the size check still allocates only what the bytes really hold.
const MAX_PREALLOC: usize = 1 << 12;

/// One metadata value. Arrays hold values of one type (possibly arrays themselves).
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    Bool(bool),
    String(String),
    Array(Vec<GgufValue>),
    U64(u64),
    I64(i64),
    F64(f64),
}

impl GgufValue {
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// Any integer that is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer that fits in an i64.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// Floats, and integers converted to f64.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// A ggml tensor type id. Kept as the raw number so that files with types this reader
/// cannot dequantise still parse and the error can name the type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GgmlType(pub u32);

impl GgmlType {
    pub const F32: GgmlType = GgmlType(0);
    pub const F16: GgmlType = GgmlType(1);
    pub const Q4_0: GgmlType = GgmlType(2);
    pub const Q4_1: GgmlType = GgmlType(3);
    pub const Q5_0: GgmlType = GgmlType(6);
    pub const Q5_1: GgmlType = GgmlType(7);
    pub const Q8_0: GgmlType = GgmlType(8);
    pub const Q4_K: GgmlType = GgmlType(12);
    pub const BF16: GgmlType = GgmlType(30);

    /// Types [`GgufFile::read_f32`] can dequantise.
    pub const DEQUANTISABLE: [GgmlType; 8] = [
        Self::F32,
        Self::F16,
        Self::BF16,
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
    ];

    /// Name and block geometry (elements per block, bytes per block) of the types ggml
    /// defines; `None` for ids it does not (or no longer) define.
    fn info(self) -> Option<(&'static str, u64, u64)> {
        Some(match self.0 {
            0 => ("F32", 1, 4),
            1 => ("F16", 1, 2),
            2 => ("Q4_0", 32, 18),
            3 => ("Q4_1", 32, 20),
            6 => ("Q5_0", 32, 22),
            7 => ("Q5_1", 32, 24),
            8 => ("Q8_0", 32, 34),
            9 => ("Q8_1", 32, 40),
            10 => ("Q2_K", 256, 84),
            11 => ("Q3_K", 256, 110),
            12 => ("Q4_K", 256, 144),
            13 => ("Q5_K", 256, 176),
            14 => ("Q6_K", 256, 210),
            15 => ("Q8_K", 256, 292),
            16 => ("IQ2_XXS", 256, 66),
            17 => ("IQ2_XS", 256, 74),
            18 => ("IQ3_XXS", 256, 98),
            19 => ("IQ1_S", 256, 50),
            20 => ("IQ4_NL", 32, 18),
            21 => ("IQ3_S", 256, 110),
            22 => ("IQ2_S", 256, 82),
            23 => ("IQ4_XS", 256, 136),
            24 => ("I8", 1, 1),
            25 => ("I16", 1, 2),
            26 => ("I32", 1, 4),
            27 => ("I64", 1, 8),
            28 => ("F64", 1, 8),
            29 => ("IQ1_M", 256, 56),
            30 => ("BF16", 1, 2),
            34 => ("TQ1_0", 256, 54),
            35 => ("TQ2_0", 256, 66),
            39 => ("MXFP4", 32, 17),
            _ => return None,
        })
    }

    pub fn name(self) -> Option<&'static str> {
        self.info().map(|i| i.0)
    }

    /// (elements per block, bytes per block).
    pub fn block(self) -> Option<(u64, u64)> {
        self.info().map(|i| (i.1, i.2))
    }

    pub fn is_dequantisable(self) -> bool {
        Self::DEQUANTISABLE.contains(&self)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} (ggml type {})", self.0),
            None => write!(f, "unknown ggml type {}", self.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct GgufTensorInfo {
    pub name: String,
    /// Dimensions as GGUF lists them, innermost (fastest-varying) first.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Byte offset from the start of the data section.
    pub offset: u64,
    /// Size of the data in bytes; `None` for a type this reader does not know.
    pub n_bytes: Option<u64>,
}

impl GgufTensorInfo {
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }

    /// Row-major shape (outermost first), as torch and safetensors write it: a GGUF
    /// `[in, out]` matrix is a `(out, in)` tensor.
    pub fn shape(&self) -> Vec<i64> {
        // Dims were checked to fit in i64 when the header was parsed.
        self.dims.iter().rev().map(|&d| d as i64).collect()
    }
}

/// A parsed GGUF header. Tensor data stays in the file until [`GgufFile::read_f32`].
#[derive(Debug, Clone)]
pub struct GgufFile {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: BTreeMap<String, GgufValue>,
    pub tensors: Vec<GgufTensorInfo>,
    pub alignment: u64,
    /// Absolute file offset of the data section.
    pub data_offset: u64,
    /// File length the header was checked against.
    pub file_len: u64,
}

impl GgufFile {
    /// Parse the header of the file at `path`, reading only the header bytes.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        parse_header(BufReader::new(file), len, path)
    }

    /// Parse a header held in memory; `bytes` stands for the whole file, so tensor data
    /// ranges are checked against its length.
    pub fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        parse_header(bytes, bytes.len() as u64, path)
    }

    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.get(key)
    }

    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    fn missing(&self, key: &str, want: &str) -> Error {
        match self.get(key) {
            None => Error::format(&self.path, format!("missing metadata key `{key}`")),
            Some(v) => Error::format(
                &self.path,
                format!(
                    "metadata `{key}` should be {want}, found a {}",
                    v.type_name()
                ),
            ),
        }
    }

    pub fn get_str(&self, key: &str) -> Result<&str> {
        self.get(key)
            .and_then(GgufValue::as_str)
            .ok_or_else(|| self.missing(key, "a string"))
    }

    pub fn get_u64(&self, key: &str) -> Result<u64> {
        self.get(key)
            .and_then(GgufValue::as_u64)
            .ok_or_else(|| self.missing(key, "a non-negative integer"))
    }

    pub fn get_f64(&self, key: &str) -> Result<f64> {
        self.get(key)
            .and_then(GgufValue::as_f64)
            .ok_or_else(|| self.missing(key, "a number"))
    }

    pub fn get_array(&self, key: &str) -> Result<&[GgufValue]> {
        self.get(key)
            .and_then(GgufValue::as_array)
            .ok_or_else(|| self.missing(key, "an array"))
    }

    /// The raw bytes of a tensor, read from the file.
    pub fn read_raw(&self, info: &GgufTensorInfo) -> Result<Vec<u8>> {
        let n = info.n_bytes.ok_or_else(|| {
            Error::unsupported(
                &self.path,
                format!("tensor `{}` has {}", info.name, info.ggml_type),
            )
        })?;
        let start = self.data_offset.saturating_add(info.offset);
        let mut f = std::fs::File::open(&self.path).map_err(|e| Error::io(&self.path, e))?;
        let len = f.metadata().map_err(|e| Error::io(&self.path, e))?.len();
        if start.checked_add(n).is_none_or(|end| end > len) {
            return Err(Error::format(
                &self.path,
                format!(
                    "truncated: tensor `{}` needs bytes {start}..{} but the file has {len}",
                    info.name,
                    start.saturating_add(n)
                ),
            ));
        }
        let n = usize::try_from(n).map_err(|_| {
            Error::format(&self.path, format!("tensor `{}` is too large", info.name))
        })?;
        f.seek(SeekFrom::Start(start))
            .map_err(|e| Error::io(&self.path, e))?;
        let mut buf = vec![0u8; n];
        f.read_exact(&mut buf)
            .map_err(|e| Error::io(&self.path, e))?;
        Ok(buf)
    }

    /// A tensor's values as f32, in GGUF element order (innermost dimension fastest, which
    /// is row-major order for [`GgufTensorInfo::shape`]).
    pub fn read_f32(&self, info: &GgufTensorInfo) -> Result<Vec<f32>> {
        if !info.ggml_type.is_dequantisable() {
            let names: Vec<&str> = GgmlType::DEQUANTISABLE
                .iter()
                .filter_map(|t| t.name())
                .collect();
            return Err(Error::unsupported(
                &self.path,
                format!(
                    "tensor `{}` has {}, which cannot be dequantised here (supported: {})",
                    info.name,
                    info.ggml_type,
                    names.join(", ")
                ),
            ));
        }
        let raw = self.read_raw(info)?;
        dequantize(info.ggml_type, &raw, info.n_elements())
            .map_err(|msg| Error::format(&self.path, format!("tensor `{}`: {msg}", info.name)))
    }
}

// ---------------------------------------------------------------------------------------
// Header parsing

/// A reader that knows how many bytes the file has left, so every length and count can be
/// checked before anything is allocated for it.
struct Cursor<'p, R> {
    r: R,
    pos: u64,
    len: u64,
    path: &'p Path,
    /// What is being read, for error messages.
    ctx: String,
}

impl<R: Read> Cursor<'_, R> {
    fn remaining(&self) -> u64 {
        self.len.saturating_sub(self.pos)
    }

    fn err(&self, msg: impl fmt::Display) -> Error {
        Error::format(self.path, format!("{}: {msg}", self.ctx))
    }

    fn truncated(&self, need: u64) -> Error {
        self.err(format!(
            "truncated: {need} more byte(s) needed at offset {}, but the file ends at {}",
            self.pos, self.len
        ))
    }

    fn fill(&mut self, buf: &mut [u8]) -> Result<()> {
        let n = buf.len() as u64;
        if n > self.remaining() {
            return Err(self.truncated(n));
        }
        self.r.read_exact(buf).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                self.truncated(n)
            } else {
                Error::io(self.path, e)
            }
        })?;
        self.pos += n;
        Ok(())
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let mut b = [0u8; N];
        self.fill(&mut b)?;
        Ok(b)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u64()?;
        if n > self.remaining() {
            return Err(self.err(format!(
                "string length {n} at offset {} runs past the end of the file ({} bytes; truncated file or corrupt length)",
                self.pos - 8,
                self.len
            )));
        }
        let mut buf = vec![0u8; n as usize];
        self.fill(&mut buf)?;
        String::from_utf8(buf).map_err(|e| self.err(format!("string is not valid UTF-8 ({e})")))
    }

    fn value(&mut self, ty: u32, depth: u32) -> Result<GgufValue> {
        Ok(match ty {
            0 => GgufValue::U8(self.u8()?),
            1 => GgufValue::I8(self.u8()? as i8),
            2 => GgufValue::U16(self.u16()?),
            3 => GgufValue::I16(self.u16()? as i16),
            4 => GgufValue::U32(self.u32()?),
            5 => GgufValue::I32(self.u32()? as i32),
            6 => GgufValue::F32(f32::from_bits(self.u32()?)),
            7 => match self.u8()? {
                0 => GgufValue::Bool(false),
                1 => GgufValue::Bool(true),
                b => return Err(self.err(format!("bool value {b} is neither 0 nor 1"))),
            },
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(self.err(format!("arrays nested more than {MAX_ARRAY_DEPTH} deep")));
                }
                let elem = self.u32()?;
                let count = self.u64()?;
                let min = min_value_size(elem)
                    .ok_or_else(|| self.err(format!("unknown array element type {elem}")))?;
                if count > self.remaining() / min {
                    return Err(self.err(format!(
                        "array count {count} cannot fit in the {} byte(s) left in the file (truncated file or corrupt count)",
                        self.remaining()
                    )));
                }
                let mut items = Vec::with_capacity((count as usize).min(MAX_PREALLOC));
                for _ in 0..count {
                    items.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(items)
            }
            10 => GgufValue::U64(self.u64()?),
            11 => GgufValue::I64(self.u64()? as i64),
            12 => GgufValue::F64(f64::from_bits(self.u64()?)),
            t => return Err(self.err(format!("unknown metadata value type {t}"))),
        })
    }
}

/// Smallest encoding of one value of type `ty`, to bound array counts.
fn min_value_size(ty: u32) -> Option<u64> {
    Some(match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        10..=12 => 8,
        8 => 8,     // length prefix
        9 => 4 + 8, // element type + count
        _ => return None,
    })
}

fn parse_header<R: Read>(r: R, len: u64, path: &Path) -> Result<GgufFile> {
    let mut c = Cursor {
        r,
        pos: 0,
        len,
        path,
        ctx: "GGUF header".into(),
    };
    let magic: [u8; 4] = c.array()?;
    if magic != MAGIC {
        return Err(c.err(format!(
            "bad magic {:?} (expected \"GGUF\"): not a GGUF file",
            String::from_utf8_lossy(&magic)
        )));
    }
    let version = c.u32()?;
    if version != 2 && version != 3 {
        let hint = if version.swap_bytes() <= 3 {
            " (a big-endian file?)"
        } else if version == 1 {
            " (version 1 is obsolete; re-convert the model)"
        } else {
            ""
        };
        return Err(c.err(format!(
            "unsupported GGUF version {version}{hint}; this reader handles 2 and 3"
        )));
    }
    let n_tensors = c.u64()?;
    let n_kv = c.u64()?;
    // Smallest key/value: key length + type + one byte; smallest tensor info: name length,
    // n_dims, type, offset.
    if n_kv > c.remaining() / (8 + 4 + 1) {
        return Err(c.err(format!(
            "metadata count {n_kv} cannot fit in a file of {len} bytes (truncated file or corrupt count)"
        )));
    }
    if n_tensors > c.remaining() / (8 + 4 + 4 + 8) {
        return Err(c.err(format!(
            "tensor count {n_tensors} cannot fit in a file of {len} bytes (truncated file or corrupt count)"
        )));
    }

    let mut metadata = BTreeMap::new();
    for i in 0..n_kv {
        c.ctx = format!("metadata entry {i}");
        let key = c.string()?;
        c.ctx = format!("metadata entry {i} (`{key}`)");
        let ty = c.u32()?;
        let v = c.value(ty, 0)?;
        if metadata.insert(key.clone(), v).is_some() {
            return Err(c.err("duplicate key"));
        }
    }

    let alignment = match metadata.get("general.alignment") {
        None => DEFAULT_ALIGNMENT,
        Some(v) => match v.as_u64() {
            Some(a) if a.is_power_of_two() && a <= 1 << 30 => a,
            _ => {
                return Err(Error::format(
                    path,
                    format!("general.alignment must be a power of two, found {v:?}"),
                ))
            }
        },
    };

    let mut tensors = Vec::with_capacity((n_tensors as usize).min(MAX_PREALLOC));
    let mut names = BTreeSet::new();
    for i in 0..n_tensors {
        c.ctx = format!("tensor info {i}");
        let name = c.string()?;
        c.ctx = format!("tensor info {i} (`{name}`)");
        let n_dims = c.u32()?;
        if n_dims > MAX_DIMS {
            return Err(c.err(format!(
                "{n_dims} dimensions (ggml allows at most {MAX_DIMS})"
            )));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(c.u64()?);
        }
        let ggml_type = GgmlType(c.u32()?);
        let offset = c.u64()?;
        if !names.insert(name.clone()) {
            return Err(c.err("duplicate tensor name"));
        }
        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| i64::try_from(n).is_ok())
            .ok_or_else(|| c.err(format!("dimensions {dims:?} overflow")))?;
        let n_bytes = match ggml_type.block() {
            None => None,
            Some((block, size)) => {
                let row = dims.first().copied().unwrap_or(1);
                if !row.is_multiple_of(block) {
                    return Err(c.err(format!(
                        "row length {row} is not a multiple of the {ggml_type} block size {block}"
                    )));
                }
                Some(
                    (n_elements / block)
                        .checked_mul(size)
                        .ok_or_else(|| c.err(format!("dimensions {dims:?} overflow")))?,
                )
            }
        };
        if !offset.is_multiple_of(alignment) {
            return Err(c.err(format!(
                "data offset {offset} is not a multiple of the alignment {alignment}"
            )));
        }
        tensors.push(GgufTensorInfo {
            name,
            dims,
            ggml_type,
            offset,
            n_bytes,
        });
    }

    let header_end = c.pos;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::format(path, "data offset overflows"))?;
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|s| s.checked_add(t.n_bytes.unwrap_or(0)));
        if end.is_none_or(|e| e > len) {
            return Err(Error::format(
                path,
                format!(
                    "truncated: tensor `{}` ({}, {} bytes at data offset {}) ends past the end of the file ({len} bytes, data section at {data_offset})",
                    t.name,
                    t.ggml_type,
                    t.n_bytes.map_or("?".into(), |n| n.to_string()),
                    t.offset
                ),
            ));
        }
    }
    Ok(GgufFile {
        path: path.to_path_buf(),
        version,
        metadata,
        tensors,
        alignment,
        data_offset,
        file_len: len,
    })
}

// ---------------------------------------------------------------------------------------
// Dequantisation

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Decode `n` elements of type `ty` from `bytes` (which must hold exactly that many).
/// Block layouts follow ggml: in the 32-element 4- and 5-bit blocks, the low nibbles hold
/// elements 0..16 and the high nibbles elements 16..32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: u64) -> std::result::Result<Vec<f32>, String> {
    let (block, size) = ty
        .block()
        .filter(|_| ty.is_dequantisable())
        .ok_or_else(|| format!("cannot dequantise {ty}"))?;
    if !n.is_multiple_of(block) {
        return Err(format!("{n} elements are not whole {ty} blocks of {block}"));
    }
    let want = (n / block)
        .checked_mul(size)
        .ok_or_else(|| format!("{n} elements overflow"))?;
    if bytes.len() as u64 != want {
        return Err(format!(
            "{n} elements of {ty} need {want} bytes, got {}",
            bytes.len()
        ));
    }
    let size = size as usize;
    let mut out = Vec::with_capacity(n as usize);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // Q4_0: [d, 16 bytes], w = d * (q - 8). Q4_1: [d, m, 16 bytes], w = d * q + m.
            let has_min = ty == GgmlType::Q4_1;
            let qs_at = if has_min { 4 } else { 2 };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (offset, min) = if has_min {
                    (0.0, f16_at(b, 2))
                } else {
                    (-8.0, 0.0)
                };
                let val = |x: u8| d * (f32::from(x) + offset) + min;
                let q = &b[qs_at..qs_at + 16];
                out.extend(q.iter().map(|&x| val(x & 0x0f)));
                out.extend(q.iter().map(|&x| val(x >> 4)));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let m = ty == GgmlType::Q5_1;
            let qh_at = if m { 4 } else { 2 };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (offset, min) = if m { (0.0, f16_at(b, 2)) } else { (-16.0, 0.0) };
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let q = &b[qh_at + 4..qh_at + 20];
                // Bit j of qh is the fifth bit of element j, bit j+16 that of element j+16.
                let val =
                    |x: u8, hi: u32| d * (f32::from(x | ((hi & 1) << 4) as u8) + offset) + min;
                out.extend(q.iter().enumerate().map(|(j, &x)| val(x & 0x0f, qh >> j)));
                out.extend(
                    q.iter()
                        .enumerate()
                        .map(|(j, &x)| val(x >> 4, qh >> (j + 16))),
                );
            }
        }
        _ => return Err(format!("cannot dequantise {ty}")),
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// q/k row order

/// llama.cpp's converter stores the rows of each q/k head interleaved for its rotary
/// kernel: it computes `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`, so GGUF row
/// `2j + s` of a head is Hugging Face row `s*d/2 + j` (first half of the head, then second
/// half: the rotate-half layout). This undoes that, returning rows in HF order.
pub fn unpermute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> std::result::Result<Vec<f32>, String> {
    reorder_qk_rows(data, rows, cols, n_head, false)
}

/// llama.cpp's direction (HF rotate-half order -> interleaved), the inverse of
/// [`unpermute_qk_rows`].
pub fn permute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> std::result::Result<Vec<f32>, String> {
    reorder_qk_rows(data, rows, cols, n_head, true)
}

fn reorder_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> std::result::Result<Vec<f32>, String> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of even size"
        ));
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(format!(
            "{} values do not form a {rows}x{cols} matrix",
            data.len()
        ));
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let gguf_row = h * d + 2 * j + s;
                let hf_row = h * d + s * half + j;
                let (src, dst) = if to_gguf {
                    (hf_row, gguf_row)
                } else {
                    (gguf_row, hf_row)
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Import

/// The LLaMA hyper-parameters a GGUF declares (`llama.*` keys).
#[derive(Debug, Clone)]
struct LlamaParams {
    n_layer: u64,
    n_ctx: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    eps: f64,
    rope_theta: f64,
    rope_scaling: Value,
    vocab: u64,
}

/// An f32 stored in GGUF was written from a short decimal in the original config
/// (`1e-05`); give back that decimal rather than the f32's exact binary value.
fn f32_as_decimal(v: f64) -> f64 {
    let f = v as f32;
    if f as f64 == v {
        format!("{f}").parse().unwrap_or(v)
    } else {
        v
    }
}

impl LlamaParams {
    fn from_gguf(g: &GgufFile, vocab: u64) -> Result<Self> {
        let key = |k: &str| format!("llama.{k}");
        // Bounded so that products of two sizes cannot overflow.
        let pos = |k: &str| -> Result<u64> {
            let v = g.get_u64(&key(k))?;
            if v == 0 || v > i32::MAX as u64 {
                return Err(Error::format(
                    &g.path,
                    format!("`llama.{k}` = {v} is out of range"),
                ));
            }
            Ok(v)
        };
        let n_head = pos("attention.head_count")?;
        let n_head_kv = match g.get(&key("attention.head_count_kv")) {
            None => n_head,
            Some(_) => pos("attention.head_count_kv")?,
        };
        let n_embd = pos("embedding_length")?;
        let head_dim = match g.get(&key("attention.key_length")) {
            Some(_) => pos("attention.key_length")?,
            None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
            None => {
                return Err(Error::format(
                    &g.path,
                    format!("embedding_length {n_embd} is not a multiple of head_count {n_head} and no key_length is given"),
                ))
            }
        };
        if let Some(v) = g.get(&key("attention.value_length")) {
            if v.as_u64() != Some(head_dim) {
                return Err(Error::unsupported(
                    &g.path,
                    format!("attention.value_length {v:?} differs from the key length {head_dim}"),
                ));
            }
        }
        if let Some(v) = g.get(&key("rope.dimension_count")) {
            if v.as_u64() != Some(head_dim) {
                return Err(Error::unsupported(
                    &g.path,
                    format!("rope.dimension_count {v:?} is not the head size {head_dim} (partial rotary embeddings)"),
                ));
            }
        }
        if !n_head.is_multiple_of(n_head_kv) || !head_dim.is_multiple_of(2) {
            return Err(Error::format(
                &g.path,
                format!("head_count {n_head} / head_count_kv {n_head_kv} / head size {head_dim} do not form a valid attention layout"),
            ));
        }
        if g.get(&key("expert_count"))
            .and_then(GgufValue::as_u64)
            .unwrap_or(0)
            > 0
        {
            return Err(Error::unsupported(
                &g.path,
                "mixture-of-experts llama GGUFs (llama.expert_count > 0)",
            ));
        }
        let rope_scaling = match g.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
            None | Some(Some("none")) => match g.get(&key("rope.scale_linear")) {
                Some(v) if v.as_f64() != Some(1.0) => json!({
                    "rope_type": "linear",
                    "factor": f32_as_decimal(g.get_f64(&key("rope.scale_linear"))?),
                }),
                _ => Value::Null,
            },
            Some(Some("linear")) => json!({
                "rope_type": "linear",
                "factor": f32_as_decimal(g.get_f64(&key("rope.scaling.factor"))?),
            }),
            Some(other) => {
                return Err(Error::unsupported(
                    &g.path,
                    format!("llama.rope.scaling.type {other:?} (only linear scaling is imported)"),
                ))
            }
        };
        let rope_theta = match g.get(&key("rope.freq_base")) {
            None => 10000.0,
            Some(_) => f32_as_decimal(g.get_f64(&key("rope.freq_base"))?),
        };
        Ok(LlamaParams {
            n_layer: pos("block_count")?,
            n_ctx: pos("context_length")?,
            n_embd,
            n_ff: pos("feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            eps: f32_as_decimal(g.get_f64(&key("attention.layer_norm_rms_epsilon"))?),
            rope_theta,
            rope_scaling,
            vocab,
        })
    }
}

/// How a GGUF tensor becomes an HF tensor.
#[derive(Debug, Clone, Copy)]
enum RowOrder {
    Keep,
    /// Undo llama.cpp's q/k permutation with this many heads.
    Unpermute(u64),
}

struct Planned<'a> {
    info: &'a GgufTensorInfo,
    hf_name: String,
    shape: Vec<i64>,
    order: RowOrder,
}

/// Match every tensor of the GGUF to its HF name and expected shape. Tensors with no HF
/// counterpart (e.g. `rope_freqs` of LLaMA-3 rope scaling) are an error, not silently
/// dropped, since the model would compute something else without them.
fn plan_tensors<'a>(g: &'a GgufFile, p: &LlamaParams) -> Result<Vec<Planned<'a>>> {
    let (h, ff, v) = (p.n_embd as i64, p.n_ff as i64, p.vocab as i64);
    let q_out = (p.n_head * p.head_dim) as i64;
    let kv_out = (p.n_head_kv * p.head_dim) as i64;
    let mut want: Vec<(String, String, Vec<i64>, RowOrder)> = vec![(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![v, h],
        RowOrder::Keep,
    )];
    for l in 0..p.n_layer {
        let per_layer: [(&str, &str, Vec<i64>, RowOrder); 9] = [
            ("attn_norm", "input_layernorm", vec![h], RowOrder::Keep),
            (
                "attn_q",
                "self_attn.q_proj",
                vec![q_out, h],
                RowOrder::Unpermute(p.n_head),
            ),
            (
                "attn_k",
                "self_attn.k_proj",
                vec![kv_out, h],
                RowOrder::Unpermute(p.n_head_kv),
            ),
            (
                "attn_v",
                "self_attn.v_proj",
                vec![kv_out, h],
                RowOrder::Keep,
            ),
            (
                "attn_output",
                "self_attn.o_proj",
                vec![h, q_out],
                RowOrder::Keep,
            ),
            (
                "ffn_norm",
                "post_attention_layernorm",
                vec![h],
                RowOrder::Keep,
            ),
            ("ffn_gate", "mlp.gate_proj", vec![ff, h], RowOrder::Keep),
            ("ffn_up", "mlp.up_proj", vec![ff, h], RowOrder::Keep),
            ("ffn_down", "mlp.down_proj", vec![h, ff], RowOrder::Keep),
        ];
        for (gname, hname, shape, order) in per_layer {
            want.push((
                format!("blk.{l}.{gname}.weight"),
                format!("model.layers.{l}.{hname}.weight"),
                shape,
                order,
            ));
        }
    }
    want.push((
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        RowOrder::Keep,
    ));
    if g.tensor("output.weight").is_some() {
        want.push((
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, h],
            RowOrder::Keep,
        ));
    }

    let mut planned = Vec::with_capacity(want.len());
    for (gname, hf_name, shape, order) in want {
        let info = g.tensor(&gname).ok_or_else(|| Error::MissingTensor {
            path: g.path.clone(),
            name: gname.clone(),
        })?;
        if info.shape() != shape {
            return Err(Error::Shape {
                path: g.path.clone(),
                name: gname,
                got: info.shape(),
                want: shape,
            });
        }
        planned.push(Planned {
            info,
            hf_name,
            shape,
            order,
        });
    }
    let used: BTreeSet<&str> = planned.iter().map(|p| p.info.name.as_str()).collect();
    let extra: Vec<&str> = g
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !used.contains(n))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(8).copied().collect();
        return Err(Error::unsupported(
            &g.path,
            format!(
                "{} tensor(s) have no Hugging Face LLaMA counterpart (with block_count {}): {}",
                extra.len(),
                p.n_layer,
                shown.join(", ")
            ),
        ));
    }
    // Refuse types we cannot read before spending time on the others.
    if let Some(bad) = planned
        .iter()
        .find(|p| !p.info.ggml_type.is_dequantisable())
    {
        return Err(Error::unsupported(
            &g.path,
            format!(
                "tensor `{}` has {}, which cannot be dequantised here",
                bad.info.name, bad.info.ggml_type
            ),
        ));
    }
    Ok(planned)
}

/// The HF `config.json` of a LLaMA GGUF.
fn hf_config(p: &LlamaParams, tied: bool, tok: &gguf_tokenizer::GgufTokenizer) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.n_embd,
        "intermediate_size": p.n_ff,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": p.n_ctx,
        "rms_norm_eps": p.eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": p.rope_scaling,
        "vocab_size": p.vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": "float32",
    })
}

/// Import a LLaMA-architecture GGUF: HF config, f32 weights under HF names and layouts,
/// and the tokenizer files. Write it with [`super::import::write_checkpoint`].
pub fn import(path: &Path) -> Result<ImportedCheckpoint> {
    let g = GgufFile::open(path)?;
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::unsupported(
            path,
            format!("general.architecture `{arch}` (only `llama` GGUFs can be imported)"),
        ));
    }
    let tok = gguf_tokenizer::build(&g)?;
    let vocab = tok.vocab_size as u64;
    let p = LlamaParams::from_gguf(&g, vocab)?;
    let plan = plan_tensors(&g, &p)?;
    let tied = g.tensor("output.weight").is_none();
    let mut tensors = Vec::with_capacity(plan.len());
    for t in &plan {
        let mut data = g.read_f32(t.info)?;
        if let RowOrder::Unpermute(n_head) = t.order {
            let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
            data = unpermute_qk_rows(&data, rows, cols, n_head as usize)
                .map_err(|m| Error::format(path, format!("tensor `{}`: {m}", t.info.name)))?;
        }
        let tensor = Tensor::from_slice(&data).f_reshape(&t.shape)?;
        tensors.push((t.hf_name.clone(), tensor));
    }
    Ok(ImportedCheckpoint {
        config: hf_config(&p, tied, &tok),
        tensors,
        tokenizer: tok.tokenizer,
        tokenizer_config: tok.tokenizer_config,
        special_tokens_map: Some(tok.special_tokens_map),
        generation_config: Some(tok.generation_config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn f16(v: f32) -> [u8; 2] {
        half::f16::from_f32(v).to_bits().to_le_bytes()
    }

    #[test]
    fn q4_1_block_by_hand() {
        // d = 0.5, m = -1; byte k holds element k (low nibble) and k+16 (high nibble).
        let mut b = Vec::new();
        b.extend(f16(0.5));
        b.extend(f16(-1.0));
        for k in 0..16u8 {
            b.push(k | ((15 - k) << 4));
        }
        let w = dequantize(GgmlType::Q4_1, &b, 32).unwrap();
        assert_eq!(w[0], -1.0); // 0.5*0 - 1
        assert_eq!(w[3], 0.5); // 0.5*3 - 1
        assert_eq!(w[15], 6.5); // 0.5*15 - 1
        assert_eq!(w[16], 6.5); // high nibble of byte 0 = 15
        assert_eq!(w[31], -1.0); // high nibble of byte 15 = 0
    }

    #[test]
    fn q4_0_q5_0_q5_1_blocks_by_hand() {
        let mut b = Vec::new();
        b.extend(f16(2.0));
        b.extend([0x80u8; 16]); // low nibble 0, high nibble 8
        let w = dequantize(GgmlType::Q4_0, &b, 32).unwrap();
        assert_eq!(w[0], -16.0); // 2*(0-8)
        assert_eq!(w[16], 0.0); // 2*(8-8)

        // Q5_0: qh bit 1 set -> element 1 gets +16; bit 17 -> element 17.
        let mut b = Vec::new();
        b.extend(f16(1.0));
        b.extend((1u32 << 1 | 1u32 << 17).to_le_bytes());
        b.extend([0x21u8; 16]); // low 1, high 2
        let w = dequantize(GgmlType::Q5_0, &b, 32).unwrap();
        assert_eq!(w[0], 1.0 - 16.0);
        assert_eq!(w[1], 17.0 - 16.0);
        assert_eq!(w[16], 2.0 - 16.0);
        assert_eq!(w[17], 18.0 - 16.0);

        let mut b = Vec::new();
        b.extend(f16(0.25));
        b.extend(f16(3.0));
        b.extend((1u32 << 31).to_le_bytes());
        b.extend([0xf0u8; 16]); // low 0, high 15
        let w = dequantize(GgmlType::Q5_1, &b, 32).unwrap();
        assert_eq!(w[0], 3.0);
        assert_eq!(w[16], 0.25 * 15.0 + 3.0);
        assert_eq!(w[31], 0.25 * 31.0 + 3.0);
    }

    #[test]
    fn wrong_length_is_an_error() {
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 33], 32).is_err());
        assert!(dequantize(GgmlType::Q8_0, &[0u8; 34], 31).is_err());
        assert!(dequantize(GgmlType::Q4_K, &[0u8; 144], 256).is_err());
    }

    #[test]
    fn unpermute_small_case_by_hand() {
        // One head of 4 rows, 1 column: GGUF rows are HF rows [0, 2, 1, 3].
        let gguf = [10.0, 12.0, 11.0, 13.0];
        assert_eq!(
            unpermute_qk_rows(&gguf, 4, 1, 1).unwrap(),
            vec![10.0, 11.0, 12.0, 13.0]
        );
        assert!(unpermute_qk_rows(&gguf, 4, 1, 3).is_err());
        assert!(unpermute_qk_rows(&gguf, 4, 2, 1).is_err());
    }

    proptest! {
        #[test]
        fn unpermute_inverts_llama_cpp_permutation(
            n_head in 1usize..6,
            half in 1usize..6,
            cols in 1usize..5,
            seed in any::<u64>(),
        ) {
            let rows = n_head * 2 * half;
            let hf: Vec<f32> = (0..rows * cols)
                .map(|i| (i as u64 ^ seed) as f32)
                .collect();
            let gguf = permute_qk_rows(&hf, rows, cols, n_head).unwrap();
            // The forward direction is llama.cpp's reshape/swapaxes, written out.
            let d = rows / n_head;
            for h in 0..n_head {
                for r in 0..d {
                    let (j, s) = (r / 2, r % 2);
                    let src = h * d + s * half + j;
                    prop_assert_eq!(&gguf[(h * d + r) * cols..(h * d + r + 1) * cols],
                        &hf[src * cols..(src + 1) * cols]);
                }
            }
            prop_assert_eq!(unpermute_qk_rows(&gguf, rows, cols, n_head).unwrap(), hf);
        }
    }
}

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

mod dequant;
mod export;
mod export_vocab;
mod import_plan;
mod names;
mod parse;
mod qk_order;
pub mod write;

pub use dequant::dequantize;
pub use export::{export, ExportReport, GgufType};
pub use import_plan::import;
use parse::parse_header;
pub use qk_order::{permute_qk_rows, unpermute_qk_rows};

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

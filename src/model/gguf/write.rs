//! Writing GGUF v3: metadata, the tensor table, then the tensor data, each piece aligned
//! to `general.alignment` (32). Tensors are encoded one at a time as the file is written,
//! so exporting a model needs memory for one tensor, not for the whole model.

use super::{GgmlType, GgufValue, DEFAULT_ALIGNMENT, MAGIC};
use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Values per Q8_0 block; a block is an f16 scale and 32 signed bytes.
pub const Q8_0_BLOCK: usize = 32;
const Q8_0_BYTES: usize = 2 + Q8_0_BLOCK;

/// One tensor of the table: its name, ggml dims (innermost first) and storage type.
#[derive(Debug, Clone)]
pub struct TensorEntry {
    pub name: String,
    pub dims: Vec<u64>,
    pub ty: GgmlType,
}

impl TensorEntry {
    /// Bytes of data, known before the data is produced (offsets are written first).
    pub fn n_bytes(&self) -> u64 {
        let n: u64 = self.dims.iter().product();
        match self.ty {
            GgmlType::F16 => n * 2,
            GgmlType::Q8_0 => n / Q8_0_BLOCK as u64 * Q8_0_BYTES as u64,
            _ => n * 4,
        }
    }
}

fn type_code(v: &GgufValue) -> u32 {
    match v {
        GgufValue::U8(_) => 0,
        GgufValue::I8(_) => 1,
        GgufValue::U16(_) => 2,
        GgufValue::I16(_) => 3,
        GgufValue::U32(_) => 4,
        GgufValue::I32(_) => 5,
        GgufValue::F32(_) => 6,
        GgufValue::Bool(_) => 7,
        GgufValue::String(_) => 8,
        GgufValue::Array(_) => 9,
        GgufValue::U64(_) => 10,
        GgufValue::I64(_) => 11,
        GgufValue::F64(_) => 12,
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

fn put_value(buf: &mut Vec<u8>, v: &GgufValue) -> std::result::Result<(), String> {
    match v {
        GgufValue::U8(x) => buf.push(*x),
        GgufValue::I8(x) => buf.extend(x.to_le_bytes()),
        GgufValue::U16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I16(x) => buf.extend(x.to_le_bytes()),
        GgufValue::U32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F32(x) => buf.extend(x.to_le_bytes()),
        GgufValue::Bool(x) => buf.push(*x as u8),
        GgufValue::String(s) => put_str(buf, s),
        GgufValue::U64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::I64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::F64(x) => buf.extend(x.to_le_bytes()),
        GgufValue::Array(items) => {
            // The element type is written once; an empty array has none to take it from.
            let first = items.first().ok_or("an empty array has no element type")?;
            let code = type_code(first);
            if items.iter().any(|i| type_code(i) != code) {
                return Err("array elements of different types".into());
            }
            buf.extend(code.to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            for i in items {
                put_value(buf, i)?;
            }
        }
    }
    Ok(())
}

fn pad_to(len: u64) -> u64 {
    len.div_ceil(DEFAULT_ALIGNMENT) * DEFAULT_ALIGNMENT
}

/// The header (magic to the end of the tensor table, padded) for `kv` and `tensors`.
pub fn header(kv: &[(String, GgufValue)], tensors: &[TensorEntry]) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    buf.extend(MAGIC);
    buf.extend(3u32.to_le_bytes());
    buf.extend((tensors.len() as u64).to_le_bytes());
    buf.extend((kv.len() as u64).to_le_bytes());
    for (k, v) in kv {
        put_str(&mut buf, k);
        buf.extend(type_code(v).to_le_bytes());
        put_value(&mut buf, v).map_err(|m| Error::Invalid(format!("GGUF metadata `{k}`: {m}")))?;
    }
    let mut offset = 0u64;
    for t in tensors {
        put_str(&mut buf, &t.name);
        buf.extend((t.dims.len() as u32).to_le_bytes());
        for d in &t.dims {
            buf.extend(d.to_le_bytes());
        }
        buf.extend(t.ty.0.to_le_bytes());
        buf.extend(offset.to_le_bytes());
        offset += pad_to(t.n_bytes());
    }
    buf.resize(pad_to(buf.len() as u64) as usize, 0);
    Ok(buf)
}

/// Write a GGUF file to `path` (through a `.partial` sibling renamed into place when
/// complete). `data(i)` gives tensor `i`'s bytes, which must be exactly `n_bytes` long.
pub fn write_gguf(
    path: &Path,
    kv: &[(String, GgufValue)],
    tensors: &[TensorEntry],
    mut data: impl FnMut(usize) -> Result<Vec<u8>>,
) -> Result<u64> {
    let head = header(kv, tensors)?;
    crate::publish::write_file_atomically(path, |tmp| {
        let file = std::fs::File::create(tmp).map_err(|e| Error::io(tmp, e))?;
        let mut w = std::io::BufWriter::new(file);
        let io = |e| Error::io(path, e);
        w.write_all(&head).map_err(io)?;
        let mut total = head.len() as u64;
        for (i, t) in tensors.iter().enumerate() {
            let bytes = data(i)?;
            if bytes.len() as u64 != t.n_bytes() {
                return Err(Error::Invalid(format!(
                    "tensor {} encoded to {} bytes, expected {}",
                    t.name,
                    bytes.len(),
                    t.n_bytes()
                )));
            }
            w.write_all(&bytes).map_err(io)?;
            let padded = pad_to(bytes.len() as u64);
            w.write_all(&vec![0u8; (padded - bytes.len() as u64) as usize])
                .map_err(io)?;
            total += padded;
        }
        let file = w
            .into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(total)
    })
}

pub fn encode_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// IEEE half, round to nearest even (as numpy's `astype(float16)` and ggml's conversion).
pub fn encode_f16(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|&x| half::f16::from_f32(x).to_bits().to_le_bytes())
        .collect()
}

/// ggml's reference Q8_0: per block of 32, `d = max|x| / 127` stored as f16, and
/// `q = round(x / d)` (half away from zero) computed with the f32 `d`, not the rounded one.
pub fn encode_q8_0(v: &[f32]) -> std::result::Result<Vec<u8>, String> {
    if !v.len().is_multiple_of(Q8_0_BLOCK) {
        return Err(format!(
            "{} values are not whole Q8_0 blocks of {Q8_0_BLOCK}",
            v.len()
        ));
    }
    let mut out = Vec::with_capacity(v.len() / Q8_0_BLOCK * Q8_0_BYTES);
    for block in v.chunks_exact(Q8_0_BLOCK) {
        let amax = block.iter().fold(0f32, |m, x| m.max(x.abs()));
        let d = amax / 127.0;
        let id = if d != 0.0 { 1.0 / d } else { 0.0 };
        out.extend(half::f16::from_f32(d).to_bits().to_le_bytes());
        out.extend(block.iter().map(|x| (x * id).round() as i8 as u8));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::gguf::GgufFile;

    #[test]
    fn q8_0_by_hand() {
        let mut v = vec![0f32; 32];
        v[0] = 1.27;
        v[1] = -0.635;
        v[2] = 0.004_99;
        let b = encode_q8_0(&v).unwrap();
        assert_eq!(b.len(), 34);
        let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        assert!((d - 0.01).abs() < 1e-5);
        // 1.27 / 0.01 = 127, -0.635 / 0.01 = -63.5 -> -64 (away from zero), 0.499 -> 0.
        assert_eq!(&b[2..5], &[127u8, (-64i8) as u8, 0]);
        assert_eq!(encode_q8_0(&[0f32; 32]).unwrap()[..2], [0, 0]);
        assert!(encode_q8_0(&[0f32; 31]).is_err());
    }

    #[test]
    fn written_file_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.gguf");
        let kv = vec![
            (
                "general.architecture".to_string(),
                GgufValue::String("llama".into()),
            ),
            ("n".to_string(), GgufValue::U32(7)),
            (
                "list".to_string(),
                GgufValue::Array(vec![GgufValue::I32(-1), GgufValue::I32(2)]),
            ),
        ];
        let vals: Vec<f32> = (0..64).map(|i| (i as f32 - 30.0) / 7.0).collect();
        let tensors = vec![
            TensorEntry {
                name: "a".into(),
                dims: vec![3],
                ty: GgmlType::F32,
            },
            TensorEntry {
                name: "b".into(),
                dims: vec![32, 2],
                ty: GgmlType::Q8_0,
            },
            TensorEntry {
                name: "c".into(),
                dims: vec![5],
                ty: GgmlType::F16,
            },
        ];
        write_gguf(&path, &kv, &tensors, |i| {
            Ok(match i {
                0 => encode_f32(&[1.0, 2.0, 3.0]),
                1 => encode_q8_0(&vals).unwrap(),
                _ => encode_f16(&[0.5, -1.0, 2.0, 65504.0, 1e-3]),
            })
        })
        .unwrap();
        let g = GgufFile::open(&path).unwrap();
        assert_eq!(g.get("n"), Some(&GgufValue::U32(7)));
        assert_eq!(g.get("list").unwrap().as_array().unwrap().len(), 2);
        assert_eq!(
            g.read_f32(g.tensor("a").unwrap()).unwrap(),
            vec![1.0, 2.0, 3.0]
        );
        let b = g.read_f32(g.tensor("b").unwrap()).unwrap();
        for (x, y) in b.iter().zip(&vals) {
            assert!(
                (x - y).abs() <= 33.0 / 7.0 / 127.0 * (0.5 + 127.0 / 2048.0),
                "{x} vs {y}"
            );
        }
        let c = g.read_f32(g.tensor("c").unwrap()).unwrap();
        assert_eq!(&c[..4], &[0.5, -1.0, 2.0, 65504.0]);
        let left: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, vec![std::ffi::OsString::from("t.gguf")]);
    }
}

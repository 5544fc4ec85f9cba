//! Streaming safetensors I/O. Reading parses only the header and copies each tensor
//! straight into libtorch memory, so a checkpoint is never held twice; writing streams
//! tensor by tensor into a temporary file that is renamed when complete.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, Clone)]
pub struct TensorInfo {
    pub dtype: String,
    pub shape: Vec<i64>,
    /// Absolute byte range inside the file.
    pub start: u64,
    pub end: u64,
}

/// An open safetensors file with its parsed, validated header.
#[derive(Debug)]
pub struct SafetensorsFile {
    pub path: PathBuf,
    file: File,
    pub tensors: BTreeMap<String, TensorInfo>,
}

pub fn dtype_kind(dtype: &str) -> Option<(Kind, usize)> {
    Some(match dtype {
        "F32" => (Kind::Float, 4),
        "F16" => (Kind::Half, 2),
        "BF16" => (Kind::BFloat16, 2),
        "F64" => (Kind::Double, 8),
        "I64" => (Kind::Int64, 8),
        "I32" => (Kind::Int, 4),
        "I8" => (Kind::Int8, 1),
        "U8" => (Kind::Uint8, 1),
        "BOOL" => (Kind::Bool, 1),
        _ => return None,
    })
}

fn kind_dtype(kind: Kind) -> Option<(&'static str, usize)> {
    Some(match kind {
        Kind::Float => ("F32", 4),
        Kind::Half => ("F16", 2),
        Kind::BFloat16 => ("BF16", 2),
        Kind::Double => ("F64", 8),
        Kind::Int64 => ("I64", 8),
        Kind::Int => ("I32", 4),
        Kind::Int8 => ("I8", 1),
        Kind::Uint8 => ("U8", 1),
        Kind::Bool => ("BOOL", 1),
        _ => return None,
    })
}

/// Headers beyond this are not plausible and would make us allocate wildly.
const MAX_HEADER: u64 = 100 << 20;

impl SafetensorsFile {
    pub fn open(path: &Path) -> Result<Self> {
        let mut file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let bad = |msg: String| Error::format(path, msg);
        let (json, data_start) = read_header(&mut file, path, file_len)?;
        let obj = json
            .as_object()
            .ok_or_else(|| bad("header is not a JSON object".into()))?;
        let mut tensors = BTreeMap::new();
        for (name, v) in obj {
            if name == "__metadata__" {
                continue;
            }
            let info = tensor_info(path, name, v, data_start, file_len)?;
            tensors.insert(name.clone(), info);
        }
        let mut ranges: Vec<(u64, u64)> = tensors.values().map(|t| (t.start, t.end)).collect();
        ranges.sort();
        for w in ranges.windows(2) {
            if w[1].0 < w[0].1 {
                return Err(bad("tensor data ranges overlap".into()));
            }
        }
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            file,
            tensors,
        })
    }

    /// Read one tensor onto `device` as `kind` (None keeps the stored dtype).
    pub fn load(&self, name: &str, kind: Option<Kind>, device: Device) -> Result<Tensor> {
        let info = self.tensors.get(name).ok_or_else(|| Error::MissingTensor {
            path: self.path.clone(),
            name: name.to_string(),
        })?;
        let (stored, _) = dtype_kind(&info.dtype).ok_or_else(|| {
            Error::unsupported(
                &self.path,
                format!("tensor `{name}` has dtype {}", info.dtype),
            )
        })?;
        let t = Tensor::f_empty(info.shape.as_slice(), (stored, Device::Cpu))?;
        let nbytes = (info.end - info.start) as usize;
        if nbytes > 0 {
            // SAFETY: `t` is a fresh contiguous CPU tensor of exactly `nbytes` bytes.
            let buf = unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, nbytes) };
            self.file
                .read_exact_at(buf, info.start)
                .map_err(|e| Error::io(&self.path, e))?;
        }
        let t = match kind {
            Some(k) if k != stored => t.f_to_kind(k)?,
            _ => t,
        };
        Ok(if device != Device::Cpu {
            t.f_to_device(device)?
        } else {
            t
        })
    }
}

/// Read the length prefix and the JSON header that follows it; returns the parsed header
/// and the absolute offset where tensor data starts.
fn read_header(file: &mut File, path: &Path, file_len: u64) -> Result<(serde_json::Value, u64)> {
    let bad = |msg: String| Error::format(path, msg);
    if file_len < 8 {
        return Err(bad(format!(
            "{file_len} bytes, too short for a safetensors header"
        )));
    }
    let mut len8 = [0u8; 8];
    file.read_exact(&mut len8).map_err(|e| Error::io(path, e))?;
    let n = u64::from_le_bytes(len8);
    if n > MAX_HEADER || 8 + n > file_len {
        return Err(bad(format!(
            "header length {n} does not fit in a file of {file_len} bytes (truncated or not safetensors)"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header)
        .map_err(|e| Error::io(path, e))?;
    let json: serde_json::Value = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("header is not valid JSON: {e}")))?;
    Ok((json, 8 + n))
}

/// One header entry as a [`TensorInfo`]: dtype, shape and data offsets present and
/// well-formed, a dtype read here, a byte size that matches the shape, and data inside
/// the file.
fn tensor_info(
    path: &Path,
    name: &str,
    v: &serde_json::Value,
    data_start: u64,
    file_len: u64,
) -> Result<TensorInfo> {
    let bad = |msg: String| Error::format(path, msg);
    let dtype = v
        .get("dtype")
        .and_then(|d| d.as_str())
        .ok_or_else(|| bad(format!("tensor `{name}` has no dtype")))?
        .to_string();
    let shape: Vec<i64> = v
        .get("shape")
        .and_then(|s| s.as_array())
        .ok_or_else(|| bad(format!("tensor `{name}` has no shape")))?
        .iter()
        .map(|d| d.as_i64().filter(|x| *x >= 0))
        .collect::<Option<_>>()
        .ok_or_else(|| bad(format!("tensor `{name}` has a bad shape")))?;
    let offs = v
        .get("data_offsets")
        .and_then(|s| s.as_array())
        .filter(|a| a.len() == 2)
        .and_then(|a| Some((a[0].as_u64()?, a[1].as_u64()?)))
        .ok_or_else(|| bad(format!("tensor `{name}` has bad data_offsets")))?;
    let elem = dtype_kind(&dtype).map(|(_, s)| s as u64).ok_or_else(|| {
        bad(format!(
            "tensor `{name}` has dtype `{dtype}`, which is not read here (F32, F16, BF16, F64, I64, I32, I8, U8, BOOL)"
        ))
    })?;
    let bytes = shape
        .iter()
        .try_fold(elem, |acc, &d| acc.checked_mul(d as u64))
        .filter(|&b| b <= file_len);
    if bytes.is_none() || offs.1.checked_sub(offs.0) != bytes {
        return Err(bad(format!(
            "tensor `{name}`: data_offsets {offs:?} do not match shape {shape:?} of {dtype}"
        )));
    }
    // offs.1 is checked alone first so that the sums below cannot overflow.
    if offs.1 > file_len || data_start + offs.1 > file_len {
        return Err(bad(format!(
            "tensor `{name}` ends at byte {} but the file has {file_len} bytes (truncated)",
            data_start.saturating_add(offs.1)
        )));
    }
    Ok(TensorInfo {
        dtype,
        shape,
        start: data_start + offs.0,
        end: data_start + offs.1,
    })
}

/// Write tensors to `path` as one safetensors file, streaming one tensor at a time.
pub fn write(path: &Path, tensors: &[(String, &Tensor)]) -> Result<()> {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for (name, t) in tensors {
        let (dtype, elem) = kind_dtype(t.kind()).ok_or_else(|| {
            Error::unsupported(
                path,
                format!("cannot store tensor `{name}` of kind {:?}", t.kind()),
            )
        })?;
        let n = t.numel() as u64 * elem as u64;
        header.insert(
            name.clone(),
            serde_json::json!({ "dtype": dtype, "shape": t.size(), "data_offsets": [offset, offset + n] }),
        );
        offset += n;
    }
    let mut hbytes = serde_json::to_vec(&serde_json::Value::Object(header))
        .map_err(|e| Error::Invalid(e.to_string()))?;
    while hbytes.len() % 8 != 0 {
        hbytes.push(b' ');
    }
    crate::publish::write_file_atomically(path, |tmp| write_file(tmp, &hbytes, tensors))
}

fn write_file(tmp: &Path, hbytes: &[u8], tensors: &[(String, &Tensor)]) -> Result<()> {
    let f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 22, f);
    let io = |e| Error::io(tmp, e);
    w.write_all(&(hbytes.len() as u64).to_le_bytes())
        .map_err(io)?;
    w.write_all(hbytes).map_err(io)?;
    let mut buf = Vec::new();
    for (_, t) in tensors {
        let t = t.to_device(Device::Cpu).contiguous();
        let elem = kind_dtype(t.kind()).map(|x| x.1).unwrap_or(1);
        let n = t.numel() * elem;
        buf.resize(n, 0);
        t.f_copy_data_u8(&mut buf, t.numel())?;
        w.write_all(&buf).map_err(io)?;
    }
    w.flush().map_err(io)?;
    Ok(())
}

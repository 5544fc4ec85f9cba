//! The GGUF header: a reader that checks every length and count against the bytes the
//! file has left before allocating for it, and the parser of metadata and tensor infos.

use super::*;

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

/// Read and validate a GGUF header from `r` (a file of `len` bytes): metadata, tensor
/// infos and where the data section starts. Nothing is allocated past what the file can hold.
pub(super) fn parse_header<R: Read>(r: R, len: u64, path: &Path) -> Result<GgufFile> {
    let mut c = Cursor {
        r,
        pos: 0,
        len,
        path,
        ctx: "GGUF header".into(),
    };
    let (version, n_tensors, n_kv) = read_preamble(&mut c)?;
    let metadata = read_metadata(&mut c, n_kv)?;
    let alignment = alignment_of(&metadata, path)?;
    let tensors = read_tensor_infos(&mut c, n_tensors, alignment)?;
    let header_end = c.pos;
    let data_offset = header_end
        .checked_next_multiple_of(alignment)
        .ok_or_else(|| Error::format(path, "data offset overflows"))?;
    check_tensors_in_file(&tensors, data_offset, len, path)?;
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

/// The fixed start of the file: magic, version and the two counts, returned as
/// `(version, n_tensors, n_kv)`. Both counts are bounded by the bytes left, so a corrupt
/// count fails here rather than in a huge allocation later.
fn read_preamble<R: Read>(c: &mut Cursor<'_, R>) -> Result<(u32, u64, u64)> {
    let len = c.len;
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
    Ok((version, n_tensors, n_kv))
}

/// The `n_kv` key/value pairs; duplicate keys are an error rather than last-one-wins.
fn read_metadata<R: Read>(c: &mut Cursor<'_, R>, n_kv: u64) -> Result<BTreeMap<String, GgufValue>> {
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
    Ok(metadata)
}

/// `general.alignment`, or the GGUF default when absent. Needed before the tensor infos,
/// whose offsets must be multiples of it.
fn alignment_of(metadata: &BTreeMap<String, GgufValue>, path: &Path) -> Result<u64> {
    Ok(match metadata.get("general.alignment") {
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
    })
}

/// The `n_tensors` tensor infos, each validated on its own (see [`read_tensor_info`]);
/// tensor names must be unique.
fn read_tensor_infos<R: Read>(
    c: &mut Cursor<'_, R>,
    n_tensors: u64,
    alignment: u64,
) -> Result<Vec<GgufTensorInfo>> {
    let mut tensors = Vec::with_capacity((n_tensors as usize).min(MAX_PREALLOC));
    let mut names = BTreeSet::new();
    for i in 0..n_tensors {
        c.ctx = format!("tensor info {i}");
        let name = c.string()?;
        c.ctx = format!("tensor info {i} (`{name}`)");
        tensors.push(read_tensor_info(c, name, &mut names, alignment)?);
    }
    Ok(tensors)
}

/// The rest of one tensor info after its name: dimensions, ggml type and data offset.
/// Checks the dimension count, name uniqueness (against `names`), that the element and
/// byte counts do not overflow, that rows hold whole quantization blocks, and the
/// offset's alignment.
fn read_tensor_info<R: Read>(
    c: &mut Cursor<'_, R>,
    name: String,
    names: &mut BTreeSet<String>,
    alignment: u64,
) -> Result<GgufTensorInfo> {
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
    Ok(GgufTensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        n_bytes,
    })
}

/// Every tensor's data must end inside the file (`len` bytes, data section at
/// `data_offset`): a truncated download fails at open rather than on first read.
fn check_tensors_in_file(
    tensors: &[GgufTensorInfo],
    data_offset: u64,
    len: u64,
    path: &Path,
) -> Result<()> {
    for t in tensors {
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
    Ok(())
}

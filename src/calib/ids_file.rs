//! Explicit calibration token ids: a JSON list of token-id lists, or a 2-d integer `.npy`
//! array (`numpy.save` of `[sequences, seqlen]`). Every window must have the same length
//! and every id must be inside the model's vocabulary.

use crate::error::{Error, Result};
use std::path::Path;

/// Read and validate `path`; `vocab` is the model's vocabulary size.
pub fn read(path: &Path, vocab: usize) -> Result<Vec<Vec<u32>>> {
    let bytes = crate::error::read_file(path)?;
    let rows: Vec<Vec<i64>> = if bytes.starts_with(b"\x93NUMPY") {
        read_npy(path, &bytes)?
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            Error::format(
                path,
                format!("expected a JSON list of token-id lists or a .npy array: {e}"),
            )
        })?
    };
    let first = rows
        .first()
        .ok_or_else(|| Error::format(path, "no calibration sequences (empty list)"))?;
    if first.len() < 2 {
        return Err(Error::format(
            path,
            format!(
                "sequence 0 has {} token(s); at least 2 are needed",
                first.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        if r.len() != first.len() {
            return Err(Error::format(
                path,
                format!(
                    "ragged sequences: sequence {i} has {} tokens, sequence 0 has {} (all windows must have one length)",
                    r.len(),
                    first.len()
                ),
            ));
        }
        let mut seq = Vec::with_capacity(r.len());
        for (j, &id) in r.iter().enumerate() {
            if id < 0 || id as u64 >= vocab as u64 {
                return Err(Error::format(
                    path,
                    format!("token id {id} at sequence {i}, position {j} is outside the model's vocabulary of {vocab}"),
                ));
            }
            seq.push(id as u32);
        }
        out.push(seq);
    }
    Ok(out)
}

/// A C-order 2-d array of little-endian integers (`<i2`, `<i4`, `<i8`, `<u2`, `<u4`, `<u8`).
fn read_npy(path: &Path, b: &[u8]) -> Result<Vec<Vec<i64>>> {
    let bad = |m: String| npy_error(path, m);
    let (header, data_start) = npy_header(path, b)?;
    let (descr, shape) = npy_descr_and_shape(path, header)?;
    let [n, t] = shape;
    let width = match descr {
        "<i2" | "<u2" => 2,
        "<i4" | "<u4" => 4,
        "<i8" | "<u8" => 8,
        other => {
            return Err(bad(format!(
                "unsupported dtype `{other}` (little-endian integers only)"
            )))
        }
    };
    let data = &b[data_start..];
    let need = n
        .checked_mul(t)
        .and_then(|x| x.checked_mul(width))
        .ok_or_else(|| bad(format!("shape {shape:?} overflows")))?;
    if data.len() != need {
        return Err(bad(format!(
            "shape {shape:?} of {descr} needs {need} data bytes, the file has {}",
            data.len()
        )));
    }
    Ok(decode_rows(data, n, t, width, descr.starts_with("<i")))
}

/// A format error in a `.npy` file, prefixed `npy: `.
fn npy_error(path: &Path, m: String) -> Error {
    Error::format(path, format!("npy: {m}"))
}

/// The header dictionary's text (format versions 1 to 3) and the offset of the data after it.
fn npy_header<'a>(path: &Path, b: &'a [u8]) -> Result<(&'a str, usize)> {
    let bad = |m: String| npy_error(path, m);
    if b.len() < 10 {
        return Err(bad("truncated header".into()));
    }
    let (hlen, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10usize),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(bad(format!("unsupported format version {v}"))),
    };
    let header = b
        .get(start..start.saturating_add(hlen))
        .ok_or_else(|| bad("truncated header".into()))?;
    let header = std::str::from_utf8(header).map_err(|_| bad("header is not text".into()))?;
    Ok((header, start + hlen))
}

/// The dtype string and the 2-d shape `[sequences, seqlen]` named by the header; a
/// Fortran-order array is refused.
fn npy_descr_and_shape<'a>(path: &Path, header: &'a str) -> Result<(&'a str, [usize; 2])> {
    let bad = |m: String| npy_error(path, m);
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr")
        .and_then(|s| s.strip_prefix('\'')?.split('\'').next())
        .ok_or_else(|| bad("no descr".into()))?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err(bad(
            "Fortran-order arrays are not supported (save a C-order array)".into(),
        ));
    }
    let shape: Vec<usize> = field("shape")
        .and_then(|s| s.strip_prefix('(')?.split(')').next())
        .ok_or_else(|| bad("no shape".into()))?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("bad shape entry `{s}`")))
        })
        .collect::<Result<_>>()?;
    let [n, t] = shape[..] else {
        return Err(bad(format!(
            "expected a 2-d array [sequences, seqlen], got shape {shape:?}"
        )));
    };
    Ok((descr, [n, t]))
}

/// Decode `n` rows of `t` little-endian integers of `width` bytes each; unsigned 64-bit
/// values beyond `i64::MAX` saturate (the vocabulary check refuses them).
fn decode_rows(data: &[u8], n: usize, t: usize, width: usize, signed: bool) -> Vec<Vec<i64>> {
    let value = |c: &[u8]| -> i64 {
        match (width, signed) {
            (2, true) => i16::from_le_bytes([c[0], c[1]]) as i64,
            (2, false) => u16::from_le_bytes([c[0], c[1]]) as i64,
            (4, true) => i32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            (4, false) => u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as i64,
            _ => {
                let v = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                if signed {
                    v as i64
                } else {
                    i64::try_from(v).unwrap_or(i64::MAX)
                }
            }
        }
    };
    data.chunks_exact(width * t.max(1))
        .take(n)
        .map(|row| row.chunks_exact(width).map(value).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(name: &str, bytes: &[u8]) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        (d, p)
    }

    fn err(name: &str, bytes: &[u8]) -> String {
        let (_d, p) = write(name, bytes);
        let e = read(&p, 100).unwrap_err().to_string();
        assert!(e.contains(name), "{e}");
        e
    }

    /// `numpy.save` of a C-order 2-d array (format 1.0).
    fn npy(descr: &str, shape: &str, data: &[u8]) -> Vec<u8> {
        let mut h = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
        while (10 + h.len() + 1) % 64 != 0 {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        b.extend(data);
        b
    }

    #[test]
    fn json_and_npy_read_the_same_ids() {
        let (_a, j) = write("ids.json", b"[[1, 2, 3], [4, 5, 99]]");
        let data: Vec<u8> = [1i64, 2, 3, 4, 5, 99]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (_b, n) = write("ids.npy", &npy("<i8", "(2, 3)", &data));
        let want = vec![vec![1, 2, 3], vec![4, 5, 99]];
        assert_eq!(read(&j, 100).unwrap(), want);
        assert_eq!(read(&n, 100).unwrap(), want);
        let d32: Vec<u8> = [1i32, 2, 3, 4, 5, 99]
            .iter()
            .flat_map(|x| x.to_le_bytes())
            .collect();
        let (_c, n32) = write("ids32.npy", &npy("<i4", "(2, 3)", &d32));
        assert_eq!(read(&n32, 100).unwrap(), want);
    }

    #[test]
    fn bad_ids_are_clear_errors() {
        assert!(err("empty.json", b"[]").contains("no calibration sequences"));
        assert!(err("blank.json", b"").contains("expected a JSON list"));
        assert!(err("ragged.json", b"[[1, 2, 3], [1, 2]]").contains("ragged"));
        assert!(
            err("vocab.json", b"[[1, 2, 100]]").contains("outside the model's vocabulary of 100")
        );
        assert!(err("neg.json", b"[[1, -2, 3]]").contains("token id -2"));
        assert!(err("short.json", b"[[1]]").contains("at least 2"));
        assert!(err("float.npy", &npy("<f4", "(1, 2)", &[0; 8])).contains("unsupported dtype"));
        assert!(err("oned.npy", &npy("<i8", "(2,)", &[0; 16])).contains("2-d"));
        assert!(err("trunc.npy", &npy("<i8", "(2, 3)", &[0; 40])).contains("needs 48 data bytes"));
        assert!(err("hdr.npy", b"\x93NUMPY\x01\x00\xff\x7f{").contains("truncated header"));
    }
}

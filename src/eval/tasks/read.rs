//! Reading task files: every file is hashed as it is read, and every record keeps where it
//! came from (1-based line for text formats, 1-based row for parquet) so that errors can
//! point at it.
//!
//! jsonl is parsed line by line with serde_json (exact strings, line numbers); parquet goes
//! through polars and is turned into the same JSON-like records, so that one schema
//! mapping per task serves both.

use crate::error::{Error, Result};
use polars::prelude::*;
use serde_json::{Map, Value};
use std::io::Cursor;
use std::path::{Path, PathBuf};

/// Files read so far, with their SHA-256.
#[derive(Debug, Default)]
pub struct Files(Vec<(PathBuf, String)>);

impl Files {
    pub fn bytes(&mut self, path: &Path) -> Result<Vec<u8>> {
        let bytes = crate::error::read_file(path)?;
        self.0
            .push((path.to_path_buf(), crate::hashing::sha256_hex(&bytes)));
        Ok(bytes)
    }

    pub fn text(&mut self, path: &Path) -> Result<String> {
        let bytes = self.bytes(path)?;
        String::from_utf8(bytes).map_err(|e| {
            let at = e.utf8_error().valid_up_to();
            Error::format(path, format!("not valid UTF-8 (byte {at})"))
        })
    }

    pub fn into_list(self) -> Vec<(PathBuf, String)> {
        self.0
    }
}

/// The lines of a text file with their 1-based numbers; a final newline does not start an
/// extra line, and a CR before each LF is dropped.
pub fn numbered_lines(text: &str) -> Vec<(usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    if body.is_empty() && text.len() <= 1 {
        return Vec::new();
    }
    body.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(|(i, l)| (i + 1, l))
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Unit {
    Line,
    Row,
}

#[derive(Debug)]
pub struct Record {
    /// 1-based line (jsonl) or row (parquet).
    pub loc: usize,
    pub fields: Map<String, Value>,
}

/// The records of one jsonl or parquet file.
#[derive(Debug)]
pub struct Records {
    pub path: PathBuf,
    pub rows: Vec<Record>,
    unit: Unit,
}

impl Records {
    /// By extension: `.parquet`, or `.jsonl` / `.json` / `.ndjson` (one object per line).
    pub fn read(files: &mut Files, path: &Path) -> Result<Records> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| e.to_ascii_lowercase());
        match ext.as_deref() {
            Some("parquet") => Self::parquet(files, path),
            Some("jsonl" | "json" | "ndjson") => Self::jsonl(files, path),
            _ => Err(Error::unsupported(
                path,
                "expected a .jsonl/.json or .parquet file",
            )),
        }
    }

    pub fn jsonl(files: &mut Files, path: &Path) -> Result<Records> {
        let text = files.text(path)?;
        let mut rows = Vec::new();
        for (line, l) in numbered_lines(&text) {
            if l.trim().is_empty() {
                continue;
            }
            let value: Value = serde_json::from_str(l)
                .map_err(|e| Error::data(path, line, format!("malformed JSON: {e}")))?;
            match value {
                Value::Object(fields) => rows.push(Record { loc: line, fields }),
                _ => return Err(Error::data(path, line, "expected a JSON object")),
            }
        }
        Ok(Records {
            path: path.to_path_buf(),
            rows,
            unit: Unit::Line,
        })
    }

    pub fn parquet(files: &mut Files, path: &Path) -> Result<Records> {
        let bytes = files.bytes(path)?;
        let df = ParquetReader::new(Cursor::new(bytes))
            .finish()
            .map_err(|e| Error::format(path, e.to_string()))?;
        let mut rows: Vec<Record> = (0..df.height())
            .map(|i| Record {
                loc: i + 1,
                fields: Map::new(),
            })
            .collect();
        for col in df.get_columns() {
            let s = col.as_materialized_series();
            let values = series_values(s)
                .map_err(|msg| Error::unsupported(path, format!("column `{}`: {msg}", s.name())))?;
            for (row, v) in rows.iter_mut().zip(values) {
                row.fields.insert(s.name().to_string(), v);
            }
        }
        Ok(Records {
            path: path.to_path_buf(),
            rows,
            unit: Unit::Row,
        })
    }

    /// Column names of the first record (empty for an empty file).
    pub fn columns(&self) -> Vec<&str> {
        self.rows
            .first()
            .map(|r| r.fields.keys().map(String::as_str).collect())
            .unwrap_or_default()
    }

    pub fn has_all(&self, keys: &[&str]) -> bool {
        let cols = self.columns();
        keys.iter().all(|k| cols.contains(k))
    }

    pub fn err(&self, r: &Record, msg: impl Into<String>) -> Error {
        match self.unit {
            Unit::Line => Error::data(&self.path, r.loc, msg),
            Unit::Row => Error::data(&self.path, r.loc, format!("row {}: {}", r.loc, msg.into())),
        }
    }

    pub fn empty_split(&self) -> Error {
        Error::format(&self.path, "empty split: no examples")
    }

    /// The file matches neither schema.
    pub fn schema_error(&self, shared: &[&str], hf: &[&str]) -> Error {
        Error::format(
            &self.path,
            format!(
                "expected the shared fields {{{}}} or the Hugging Face fields {{{}}}; the first record has {{{}}}",
                shared.join(", "),
                hf.join(", "),
                self.columns().join(", ")
            ),
        )
    }

    pub fn field<'a>(&self, r: &'a Record, key: &str) -> Result<&'a Value> {
        match r.fields.get(key) {
            Some(Value::Null) | None => Err(self.err(r, format!("missing field `{key}`"))),
            Some(v) => Ok(v),
        }
    }

    pub fn str<'a>(&self, r: &'a Record, key: &str) -> Result<&'a str> {
        match self.field(r, key)? {
            Value::String(s) => Ok(s),
            v => Err(self.err(r, format!("field `{key}` must be a string, found {v}"))),
        }
    }

    /// A non-negative integer, given as a JSON number or (as in some Hugging Face
    /// datasets, e.g. HellaSwag's `label`) as a string of digits.
    pub fn index(&self, r: &Record, key: &str) -> Result<usize> {
        let v = self.field(r, key)?;
        let parsed = match v {
            Value::Number(n) => n.as_u64().and_then(|x| usize::try_from(x).ok()),
            Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => {
                s.parse().ok()
            }
            _ => None,
        };
        parsed.ok_or_else(|| {
            self.err(
                r,
                format!("field `{key}` must be a non-negative integer, found {v}"),
            )
        })
    }

    pub fn str_list(&self, r: &Record, key: &str) -> Result<Vec<String>> {
        let v = self.field(r, key)?;
        self.strings(r, key, v)
    }

    /// `key.inner` where `key` is an object (a struct column), e.g. ARC's `choices.text`.
    pub fn nested_str_list(&self, r: &Record, key: &str, inner: &str) -> Result<Vec<String>> {
        match self.field(r, key)? {
            Value::Object(m) => match m.get(inner) {
                Some(v) if !v.is_null() => self.strings(r, &format!("{key}.{inner}"), v),
                _ => Err(self.err(r, format!("missing field `{key}.{inner}`"))),
            },
            v => Err(self.err(
                r,
                format!("field `{key}` must be an object with `{inner}`, found {v}"),
            )),
        }
    }

    fn strings(&self, r: &Record, key: &str, v: &Value) -> Result<Vec<String>> {
        let bad = || self.err(r, format!("field `{key}` must be a list of strings"));
        let Value::Array(items) = v else {
            return Err(bad());
        };
        items
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(bad))
            .collect()
    }
}

/// A polars column as JSON values, recursing into lists and structs.
fn series_values(s: &Series) -> std::result::Result<Vec<Value>, String> {
    let e = |err: PolarsError| err.to_string();
    let dt = s.dtype();
    let out: Vec<Value> = match dt {
        DataType::String => s
            .str()
            .map_err(e)?
            .into_iter()
            .map(|x| x.map_or(Value::Null, |v| Value::String(v.to_string())))
            .collect(),
        DataType::Boolean => s
            .bool()
            .map_err(e)?
            .into_iter()
            .map(|x| x.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Null => vec![Value::Null; s.len()],
        _ if dt.is_integer() => {
            let c = s.cast(&DataType::Int64).map_err(e)?;
            c.i64()
                .map_err(e)?
                .into_iter()
                .map(|x| x.map_or(Value::Null, Value::from))
                .collect()
        }
        _ if dt.is_float() => {
            let c = s.cast(&DataType::Float64).map_err(e)?;
            c.f64()
                .map_err(e)?
                .into_iter()
                .map(|x| x.map_or(Value::Null, Value::from))
                .collect()
        }
        DataType::List(_) => {
            let mut v = Vec::with_capacity(s.len());
            for item in s.list().map_err(e)? {
                v.push(match item {
                    None => Value::Null,
                    Some(inner) => Value::Array(series_values(&inner)?),
                });
            }
            v
        }
        DataType::Struct(_) => {
            let ca = s.struct_().map_err(e)?;
            let mut objs = vec![Map::new(); s.len()];
            for f in ca.fields_as_series() {
                for (obj, v) in objs.iter_mut().zip(series_values(&f)?) {
                    obj.insert(f.name().to_string(), v);
                }
            }
            // A null struct row stays null.
            objs.into_iter()
                .zip(&s.is_null())
                .map(|(o, null)| {
                    if null == Some(true) {
                        Value::Null
                    } else {
                        Value::Object(o)
                    }
                })
                .collect()
        }
        other => return Err(format!("unsupported type {other}")),
    };
    Ok(out)
}

/// One CSV record with the 1-based line it starts on.
pub type CsvRecord = (usize, Vec<String>);

/// RFC 4180 CSV: fields separated by commas, optionally quoted with `"` (a doubled `""`
/// inside quotes is one quote); a quoted field keeps its line breaks as they are (so a
/// CRLF inside quotes stays CRLF, as Python's `csv` module with `newline=""` keeps it);
/// records end at LF or CRLF.
pub fn parse_csv(path: &Path, text: &str) -> Result<Vec<CsvRecord>> {
    let mut records = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1usize;
    while chars.peek().is_some() {
        let start = line;
        let mut fields = Vec::new();
        let mut field = String::new();
        let mut quoted_field = false;
        loop {
            match chars.next() {
                None => {
                    fields.push(std::mem::take(&mut field));
                    break;
                }
                Some('"') if field.is_empty() && !quoted_field => {
                    quoted_field = true;
                    loop {
                        match chars.next() {
                            None => {
                                return Err(Error::data(path, start, "unterminated quoted field"))
                            }
                            Some('"') if chars.peek() == Some(&'"') => {
                                chars.next();
                                field.push('"');
                            }
                            Some('"') => break,
                            Some(c) => {
                                if c == '\n' {
                                    line += 1;
                                }
                                field.push(c);
                            }
                        }
                    }
                    match chars.peek() {
                        None | Some(',') | Some('\n') | Some('\r') => {}
                        Some(_) => {
                            return Err(Error::data(
                                path,
                                line,
                                "text after a closing quote (expected `,` or end of line)",
                            ))
                        }
                    }
                }
                Some(',') => {
                    fields.push(std::mem::take(&mut field));
                    quoted_field = false;
                }
                Some('\r') if chars.peek() == Some(&'\n') => {}
                Some('\n') => {
                    fields.push(std::mem::take(&mut field));
                    line += 1;
                    break;
                }
                Some(c) => field.push(c),
            }
        }
        records.push((start, fields));
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_quotes_and_lines() {
        let p = Path::new("x.csv");
        let text = "a,b\r\n\"x, \"\"y\"\"\r\nz\",2\n\"\",\n";
        let recs = parse_csv(p, text).unwrap();
        assert_eq!(
            recs,
            vec![
                (1, vec!["a".into(), "b".into()]),
                (2, vec!["x, \"y\"\r\nz".into(), "2".into()]),
                (4, vec!["".into(), "".into()]),
            ]
        );
        let err = parse_csv(p, "a\n\"open\n").unwrap_err().to_string();
        assert!(err.contains("x.csv:2"), "{err}");
        let err = parse_csv(p, "\"a\"b,c\n").unwrap_err().to_string();
        assert!(err.contains("x.csv:1"), "{err}");
    }

    #[test]
    fn lines_numbering() {
        assert_eq!(numbered_lines("a\r\nb\n"), vec![(1, "a"), (2, "b")]);
        assert_eq!(numbered_lines("a\n\nb"), vec![(1, "a"), (2, ""), (3, "b")]);
        assert!(numbered_lines("").is_empty());
        assert_eq!(numbered_lines("\n"), vec![]);
    }
}

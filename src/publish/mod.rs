//! Publishing files and directories atomically, and locking cache entries: what every
//! stage, the store's exports, the report and the Slurm scripts use so that a kill or a
//! full disk leaves the old output (or none), never a truncated one that a later run would
//! read as complete.

pub mod lock;

pub use lock::{lock_entry, EntryLock};

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// Pretty JSON with a trailing newline, written atomically.
pub fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| Error::Invalid(e.to_string()))?;
    write_atomically(path, (text + "\n").as_bytes())
}

/// Write `bytes` to `path` atomically ([`write_file_atomically`]).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file_atomically(path, |tmp| {
        std::fs::write(tmp, bytes).map_err(|e| Error::io(path, e))
    })
}

/// Build a file with `fill` at a temporary sibling of `path` ([`partial_path`]), then
/// rename it over `path`: a full disk or a kill leaves the old file (or none), never a
/// truncated one that a later run would read as complete. On error the temporary file is
/// removed.
pub fn write_file_atomically<T>(path: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_path(path)?;
    match fill(&tmp) {
        Ok(v) => {
            std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(v)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// A temporary sibling of `out` (`NAME.partial-PID`), on the same file system.
pub fn partial_path(out: &Path) -> Result<PathBuf> {
    let name = out
        .file_name()
        .ok_or_else(|| Error::Invalid(format!("output path {} has no file name", out.display())))?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".partial-{}", std::process::id()));
    Ok(out.with_file_name(tmp))
}

/// Build a directory with `fill` in a fresh temporary sibling of `out` ([`partial_path`],
/// its parents created), removed again when `fill` fails.
fn fill_partial_dir<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<(PathBuf, T)> {
    let tmp = partial_path(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    match fill(&tmp) {
        Ok(v) => Ok((tmp, v)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Build a directory with `fill` in a temporary sibling of `out`, then rename it to `out`
/// (replacing what was there). On error the temporary directory is removed and `out` is
/// left as it was.
pub fn write_dir_atomically<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let (tmp, value) = fill_partial_dir(out, fill)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(value)
}

/// Build a directory with `fill` in a temporary sibling of `out` and rename it to `out`,
/// unless another process published `out` first: then theirs is kept (the content is the
/// same, keyed by its inputs) and ours removed. Returns whether ours was published.
pub fn write_dir_once(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<bool> {
    let (tmp, ()) = fill_partial_dir(out, fill)?;
    if std::fs::rename(&tmp, out).is_ok() {
        return Ok(true);
    }
    let _ = std::fs::remove_dir_all(&tmp);
    if out.exists() {
        Ok(false)
    } else {
        Err(Error::Invalid(format!(
            "could not move the finished {} into place",
            out.display()
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_file_write_leaves_the_old_file_and_no_partial() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("out.json");
        write_atomically(&f, b"old").unwrap();
        let r = write_file_atomically(&f, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err::<(), _>(Error::Invalid("disk full".into()))
        });
        assert!(r.is_err());
        assert_eq!(std::fs::read(&f).unwrap(), b"old");
        assert_eq!(names(d.path()), ["out.json"]);
        assert_eq!(
            write_file_atomically(&f, |tmp| std::fs::write(tmp, b"new")
                .map_err(|e| Error::io(tmp, e))
                .map(|_| 7))
            .unwrap(),
            7
        );
        assert_eq!(std::fs::read(&f).unwrap(), b"new");
    }

    #[test]
    fn a_directory_published_once_keeps_the_first() {
        let d = tempfile::tempdir().unwrap();
        let out = d.path().join("entry");
        let fill = |tag: &'static [u8]| {
            move |tmp: &Path| {
                std::fs::create_dir_all(tmp).unwrap();
                std::fs::write(tmp.join("w"), tag).map_err(|e| Error::io(tmp, e))
            }
        };
        assert!(write_dir_once(&out, fill(b"first")).unwrap());
        assert!(!write_dir_once(&out, fill(b"second")).unwrap());
        assert_eq!(std::fs::read(out.join("w")).unwrap(), b"first");
        let failed = write_dir_once(&d.path().join("other"), |tmp| {
            std::fs::create_dir_all(tmp).unwrap();
            Err(Error::Invalid("stopped".into()))
        });
        assert!(failed.is_err());
        assert_eq!(names(d.path()), ["entry"]);
    }
}

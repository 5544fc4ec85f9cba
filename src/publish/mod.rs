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

/// Write `bytes` to a sibling `<name>.partial` and rename it over `path`: a full disk or
/// a kill leaves the old file (or none), never a truncated one that a later run would
/// read as complete.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    let tmp = path.with_file_name(name);
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
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

/// Build a directory with `fill` in a temporary sibling of `out`, then rename it to `out`
/// (replacing what was there). On error the temporary directory is removed and `out` is
/// left as it was.
pub fn write_dir_atomically<T>(out: &Path, fill: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
    let tmp = partial_path(out)?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let value = match fill(&tmp) {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(value)
}

//! Exclusive use of one cache entry across processes (grid workers on one node, array
//! tasks sharing a cache): the first to take an entry's lock builds it, the others wait
//! and then reuse it, so no stage is computed twice and no finished entry is replaced
//! while another process reads it. An OS file lock (`ENTRY.lock` beside the entry), so a
//! killed holder releases it with its process.

use crate::error::{Error, Result};
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Held while alive; dropping it releases the entry.
#[derive(Debug)]
pub struct EntryLock {
    _file: File,
    path: PathBuf,
}

impl EntryLock {
    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn lock_path(entry: &Path) -> Result<PathBuf> {
    let name = entry.file_name().ok_or_else(|| {
        Error::Invalid(format!("cache entry {} has no file name", entry.display()))
    })?;
    let mut n = name.to_os_string();
    n.push(".lock");
    Ok(entry.with_file_name(n))
}

/// Lock `entry`, calling `waiting` about once a second while another process holds it
/// (a grid keeps its run's heartbeat fresh there).
pub fn lock_entry(entry: &Path, mut waiting: impl FnMut()) -> Result<EntryLock> {
    let path = lock_path(entry)?;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
    }
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(EntryLock { _file: file, path }),
            Err(TryLockError::WouldBlock) => {
                waiting();
                std::thread::sleep(Duration::from_millis(500));
            }
            Err(TryLockError::Error(e)) => return Err(Error::io(&path, e)),
        }
    }
}

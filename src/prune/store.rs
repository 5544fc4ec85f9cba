//! Where the calibration state's layer-boundary hidden states live between rounds. They
//! are the restart points of incremental re-scoring (a merge at layer `l` re-runs the
//! calibration set from boundary `l`), so every boundary is kept, exactly (f32 stays f32):
//! in memory when small, otherwise in one raw file per boundary in a temporary directory,
//! read back one chunk of sequences at a time. Resident memory then holds the model and a
//! chunk, not layers x tokens x hidden states; the files live in the page cache and on
//! disk and are removed when the state is dropped.
//!
//! The choice: in memory while the states fit `COME_STATE_BUDGET_MIB` (default 256 MiB on
//! CPU, 32 GiB on CUDA), on disk otherwise (under `COME_TMP`, or the system's temporary
//! directory). Both give bitwise-identical states, so decisions do not depend on it.
//! The disk's free space is checked before the first write: a CPU run whose states do not
//! fit there but take at most half of the available memory keeps them in memory instead;
//! otherwise the run stops at once with [`Error::NoSpace`], naming the directory, rather
//! than after minutes of calibration with a bare "No space left on device".

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Shape of one boundary: `rows` sequences of `seqlen` tokens of width `hidden`.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub rows: i64,
    pub seqlen: i64,
    pub hidden: i64,
    pub kind: Kind,
}

impl Shape {
    fn row_bytes(&self) -> u64 {
        (self.seqlen * self.hidden) as u64 * self.kind.elt_size_in_bytes() as u64
    }
    /// Bytes of one boundary.
    pub fn bytes(&self) -> u64 {
        self.row_bytes() * self.rows as u64
    }
}

enum Slots {
    /// `[boundary]` -> chunks in row order.
    Memory(Vec<Vec<Tensor>>),
    Disk {
        dir: tempfile::TempDir,
        files: Vec<File>,
    },
}

pub struct BoundaryStore {
    shape: Shape,
    device: Device,
    slots: Slots,
    /// Boundaries currently valid (`0..len`).
    len: usize,
}

/// The budget (bytes) below which states stay in memory.
fn budget(device: Device) -> u64 {
    let mib = std::env::var("COME_STATE_BUDGET_MIB")
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(if device.is_cuda() { 32 * 1024 } else { 256 });
    mib << 20
}

/// Room left on the disk beside the states, so that filling it does not starve the rest
/// of the run (the output checkpoint, the run store).
const DISK_MARGIN: u64 = 512 << 20;

/// The directory the spill files go under.
fn spill_root() -> PathBuf {
    std::env::var_os("COME_TMP")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir)
}

/// Bytes an unprivileged writer can still put on the file system holding `dir`.
fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c` is a valid NUL-terminated path and `st` is writable for one statvfs.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: statvfs returned 0, so it filled `st`.
    let st = unsafe { st.assume_init() };
    // The fields' integer types differ between platforms (u64 on 64-bit Linux).
    #[allow(clippy::unnecessary_cast)]
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// The kernel's estimate of memory available without swapping (Linux), if readable.
fn memory_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib << 10)
}

const MIB: u64 = 1 << 20;

/// Where the states go, from what they need and what the machine has (pure, for tests).
#[derive(Debug, PartialEq, Eq)]
enum Placement {
    Memory,
    Disk,
    /// Neither has room: MiB needed on disk.
    Nowhere {
        need_mib: u64,
    },
}

fn placement(
    total: u64,
    budget: u64,
    disk_free: u64,
    memory: Option<u64>,
    cuda: bool,
) -> Placement {
    if total <= budget {
        Placement::Memory
    } else if disk_free >= total + DISK_MARGIN {
        Placement::Disk
    } else if !cuda && memory.is_some_and(|m| total <= m / 2) {
        Placement::Memory
    } else {
        Placement::Nowhere {
            need_mib: (total + DISK_MARGIN).div_ceil(MIB),
        }
    }
}

impl BoundaryStore {
    /// A store for up to `boundaries` boundaries of `shape`, placed by the budget and, when
    /// over it, by the free disk space (see the module's comment).
    pub fn new(shape: Shape, boundaries: usize, device: Device) -> Result<Self> {
        let total = shape.bytes() * boundaries as u64;
        let budget = budget(device);
        let root = spill_root();
        let free = if total <= budget {
            0
        } else {
            free_bytes(&root).map_err(|e| Error::io(&root, e))?
        };
        let slots = match placement(total, budget, free, memory_available(), device.is_cuda()) {
            Placement::Memory => Slots::Memory(vec![]),
            Placement::Disk => {
                let dir = tempfile::Builder::new()
                    .prefix("come-calib-")
                    .tempdir_in(&root)
                    .map_err(|e| Error::io(&root, e))?;
                Slots::Disk { dir, files: vec![] }
            }
            Placement::Nowhere { need_mib } => {
                return Err(Error::NoSpace {
                    path: root,
                    need_mib,
                    free_mib: free / MIB,
                })
            }
        };
        Ok(BoundaryStore {
            shape,
            device,
            slots,
            len: 0,
        })
    }

    pub fn on_disk(&self) -> bool {
        matches!(self.slots, Slots::Disk { .. })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forget boundaries `len..` (their storage is reused by the next pushes).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if let Slots::Memory(b) = &mut self.slots {
            b.truncate(self.len);
        }
    }

    /// Start boundary `self.len()`; its chunks follow with [`BoundaryStore::put`].
    pub fn open_next(&mut self) -> Result<usize> {
        let b = self.len;
        match &mut self.slots {
            Slots::Memory(v) => v.push(vec![]),
            Slots::Disk { dir, files } => {
                if files.len() <= b {
                    let p = dir.path().join(format!("boundary-{b}.raw"));
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create_new(true)
                        .open(&p)
                        .map_err(|e| spill_error(&p, e))?;
                    files.push(f);
                }
            }
        }
        self.len += 1;
        Ok(b)
    }

    /// Write rows `first..first + h.size()[0]` of boundary `b`.
    pub fn put(&mut self, b: usize, first: i64, h: &Tensor) -> Result<()> {
        match &mut self.slots {
            Slots::Memory(v) => {
                v[b].push(h.shallow_clone());
                Ok(())
            }
            Slots::Disk { dir, files } => {
                let h = h
                    .to_device(Device::Cpu)
                    .to_kind(self.shape.kind)
                    .contiguous();
                files[b]
                    .write_all_at(bytes_of(&h), first as u64 * self.shape.row_bytes())
                    .map_err(|e| spill_error(&dir.path().join(format!("boundary-{b}.raw")), e))
            }
        }
    }

    /// Rows `first..first + rows` of boundary `b`, on the model's device.
    pub fn get(&self, b: usize, first: i64, rows: i64) -> Result<Tensor> {
        match &self.slots {
            Slots::Memory(v) => {
                // Readers use the writers' chunking, so a read is normally one stored chunk.
                let mut at = 0;
                for c in &v[b] {
                    let n = c.size()[0];
                    if at == first && n == rows {
                        return Ok(c.shallow_clone());
                    }
                    at += n;
                }
                Ok(Tensor::cat(&v[b], 0).narrow(0, first, rows))
            }
            Slots::Disk { dir, files } => {
                let s = self.shape;
                // Read straight into the tensor's storage: no zeroed buffer, no extra copy.
                let mut t = Tensor::empty([rows, s.seqlen, s.hidden], (s.kind, Device::Cpu));
                files[b]
                    .read_exact_at(bytes_of_mut(&mut t), first as u64 * s.row_bytes())
                    .map_err(|e| Error::io(dir.path().join(format!("boundary-{b}.raw")), e))?;
                Ok(t.to_device(self.device))
            }
        }
    }
}

/// A failed spill write; a full disk (filled by someone else since the check in `new`)
/// gets the same explanation as a disk found too small up front.
fn spill_error(path: &Path, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        let dir = path.parent().unwrap_or(path);
        let free = free_bytes(dir).unwrap_or(0);
        return Error::NoSpace {
            path: path.to_path_buf(),
            need_mib: 0,
            free_mib: free / MIB,
        };
    }
    Error::io(path, e)
}

/// The bytes of a contiguous CPU tensor.
fn bytes_of(t: &Tensor) -> &[u8] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    let n = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: a contiguous CPU tensor owns `n` initialised bytes at `data_ptr`, alive as
    // long as `t` is borrowed.
    unsafe { std::slice::from_raw_parts(t.data_ptr() as *const u8, n) }
}

/// The bytes of a contiguous CPU tensor, writable.
fn bytes_of_mut(t: &mut Tensor) -> &mut [u8] {
    debug_assert!(t.is_contiguous() && t.device() == Device::Cpu);
    let n = t.numel() * t.kind().elt_size_in_bytes();
    // SAFETY: as in `bytes_of`; the exclusive borrow of `t` makes the slice unique (the
    // tensor is freshly allocated by the caller and shares its storage with nothing).
    unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, n) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_follows_budget_then_disk_then_memory() {
        let g = 1u64 << 30;
        assert_eq!(placement(g, 2 * g, 0, None, false), Placement::Memory);
        assert_eq!(placement(2 * g, g, 3 * g, Some(g), false), Placement::Disk);
        // The disk lacks room (margin included), half the memory has it: CPU only.
        let tight = 2 * g + DISK_MARGIN - 1;
        assert_eq!(
            placement(2 * g, g, tight, Some(4 * g), false),
            Placement::Memory
        );
        let need_mib = (2 * g + DISK_MARGIN) / MIB;
        let nowhere = Placement::Nowhere { need_mib };
        assert_eq!(placement(2 * g, g, tight, Some(4 * g), true), nowhere);
        assert_eq!(placement(2 * g, g, tight, Some(4 * g - 1), false), nowhere);
        assert_eq!(placement(2 * g, g, tight, None, false), nowhere);
    }

    #[test]
    fn free_bytes_of_a_real_directory() {
        let d = tempfile::tempdir().unwrap();
        assert!(free_bytes(d.path()).unwrap() > 0);
        let missing = d.path().join("missing");
        assert!(free_bytes(&missing).is_err());
    }

    /// /dev/full answers every write with ENOSPC, as a full disk does.
    #[test]
    fn a_full_disk_during_the_run_is_named() {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let e = std::io::Write::write_all(&mut f, &[0u8; 16]).unwrap_err();
        let err = spill_error(Path::new("/dev/full"), e);
        assert!(matches!(err, Error::NoSpace { need_mib: 0, .. }), "{err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with("/dev/full: no room") && msg.contains("COME_TMP"),
            "{msg}"
        );
        let other = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(
            spill_error(Path::new("/x"), other),
            Error::Io { .. }
        ));
    }
}

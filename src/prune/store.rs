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

use crate::error::{Error, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
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

impl BoundaryStore {
    /// A store for up to `boundaries` boundaries of `shape`, placed by the budget.
    pub fn new(shape: Shape, boundaries: usize, device: Device) -> Result<Self> {
        let total = shape.bytes() * boundaries as u64;
        let slots = if total <= budget(device) {
            Slots::Memory(vec![])
        } else {
            let root = std::env::var_os("COME_TMP")
                .map(PathBuf::from)
                .unwrap_or_else(std::env::temp_dir);
            let dir = tempfile::Builder::new()
                .prefix("come-calib-")
                .tempdir_in(&root)
                .map_err(|e| Error::io(&root, e))?;
            Slots::Disk { dir, files: vec![] }
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
                        .map_err(|e| Error::io(&p, e))?;
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
                    .map_err(|e| Error::io(dir.path().join(format!("boundary-{b}.raw")), e))
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

//! Teacher hidden states at the layer boundaries recovery needs, computed once per
//! (teacher, data, seqlen, boundaries) and reused. Small sets stay in memory; large ones
//! (a 7B model's boundaries over millions of tokens) go to one raw f32 file per boundary,
//! memory-mapped, so that only the sequences of the current step are ever resident. With
//! a cache directory the files are kept under the content key and shared by grid runs.

use super::data::DataSet;
use crate::error::{Error, Result};
use crate::model::{Model, Tap};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind, Tensor};

/// Above this many bytes, states without a cache directory still go to disk (a temp dir).
pub const MEMORY_LIMIT: usize = 2 << 30;

/// One boundary's states: in memory, or a mapped file.
enum Slot {
    Memory(Tensor),
    Disk(Arc<Mmap>),
}

/// States of `n` sequences (training first, then validation) at each boundary.
pub struct TeacherStates {
    storage: BTreeMap<usize, Slot>,
    pub n: usize,
    pub seqlen: usize,
    pub hidden: usize,
    /// Keeps a temporary directory alive as long as its maps are used.
    _tmp: Option<Arc<tempfile::TempDir>>,
}

/// Copies the hidden state entering each wanted boundary.
struct Capture<'a> {
    want: &'a [usize],
    got: Vec<(usize, Tensor)>,
}

impl Tap for Capture<'_> {
    fn hidden(&mut self, b: usize, h: &Tensor, _: Option<&Tensor>) {
        if self.want.contains(&b) {
            self.got
                .push((b, h.to_kind(Kind::Float).to_device(Device::Cpu)));
        }
    }
}

/// Content identity of a checkpoint directory: its config and weight files (the
/// tokenizer and records do not change the states), by the one directory recipe
/// ([`crate::hashing::sha256_dir`]).
pub fn dir_digest(dir: &Path) -> Result<String> {
    let weights = |p: &Path| {
        p.parent() == Some(dir)
            && (p.file_name().is_some_and(|n| n == "config.json")
                || p.extension().is_some_and(|e| e == "safetensors"))
    };
    crate::hashing::sha256_dir(dir, weights)
        .map(|(sha, _)| sha)
        .map_err(|e| Error::io(dir, e))
}

impl TeacherStates {
    /// Compute (or find in `cache`) the states of every sequence of `data` at `boundaries`.
    /// Returns the states and whether they came from the cache.
    pub fn prepare(
        teacher: &Model,
        teacher_digest: &str,
        data: &DataSet,
        boundaries: &[usize],
        cache: Option<&Path>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<(TeacherStates, bool)> {
        let seqs: Vec<&Vec<i64>> = data.train.iter().chain(&data.val).collect();
        let (n, seqlen) = (seqs.len(), data.record.seqlen);
        let hidden = teacher.config.hidden_size as usize;
        let bytes = n * seqlen * hidden * 4 * boundaries.len();
        let key = crate::hashing::hash_value(&serde_json::json!({
            "teacher": teacher_digest, "data": data.digest(), "boundaries": boundaries,
            "seqlen": seqlen, "dtype": crate::runtime::dtype_name(teacher.dtype),
        }));
        let (dir, tmp) = match cache {
            Some(c) => (Some(c.join(&key[..16])), None),
            None if bytes > MEMORY_LIMIT => {
                let t = tempfile::tempdir().map_err(|e| Error::io(std::env::temp_dir(), e))?;
                (Some(t.path().to_path_buf()), Some(Arc::new(t)))
            }
            None => (None, None),
        };
        let Some(dir) = dir else {
            let st = TeacherStates {
                storage: states_in_memory(teacher, &seqs, boundaries, &mut progress)?,
                n,
                seqlen,
                hidden,
                _tmp: None,
            };
            return Ok((st, false));
        };
        // Grid workers sharing the cache compute one entry once; a temp dir is ours alone.
        let _lock = match tmp {
            None => Some(crate::publish::lock_entry(&dir, || {})?),
            Some(_) => None,
        };
        let cached = dir.join("complete").is_file();
        if !cached {
            let mut fill =
                |work: &Path| write_states(teacher, &seqs, boundaries, work, &mut progress);
            if tmp.is_some() {
                fill(&dir)?;
            } else {
                // Another process may have finished the same states first: keep theirs.
                crate::publish::write_dir_once(&dir, fill)?;
            }
        }
        let maps = map_states(&dir, boundaries, n, seqlen, hidden)?;
        let st = TeacherStates {
            storage: maps,
            n,
            seqlen,
            hidden,
            _tmp: tmp,
        };
        Ok((st, cached))
    }

    /// A store with no boundaries (recovery that needs no teacher).
    pub fn empty(seqlen: usize, hidden: usize) -> TeacherStates {
        TeacherStates {
            storage: BTreeMap::new(),
            n: 0,
            seqlen,
            hidden,
            _tmp: None,
        }
    }

    /// Wrap states already in memory (`[n, seqlen, hidden]` f32 per boundary).
    pub fn in_memory(states: BTreeMap<usize, Tensor>) -> Result<TeacherStates> {
        let size = states.values().next().map(Tensor::size).unwrap_or_default();
        if size.len() != 3 || states.values().any(|t| t.size() != size) {
            return Err(Error::Invalid(format!(
                "teacher states must all be [n, seqlen, hidden], got {size:?}"
            )));
        }
        let (n, seqlen, hidden) = (size[0] as usize, size[1] as usize, size[2] as usize);
        Ok(TeacherStates {
            storage: states
                .into_iter()
                .map(|(b, t)| (b, Slot::Memory(t)))
                .collect(),
            n,
            seqlen,
            hidden,
            _tmp: None,
        })
    }

    /// States of sequences `idx` at boundary `b`: `[idx.len(), seqlen, hidden]` f32 on `dev`.
    pub fn batch(&self, b: usize, idx: &[usize], dev: Device) -> Result<Tensor> {
        let missing = || Error::Invalid(format!("no teacher states at boundary {b}"));
        let per = self.seqlen * self.hidden;
        let t = match self.storage.get(&b).ok_or_else(missing)? {
            Slot::Memory(all) => {
                let ix = Tensor::from_slice(&idx.iter().map(|&i| i as i64).collect::<Vec<_>>())
                    .to_device(all.device());
                all.index_select(0, &ix)
            }
            Slot::Disk(map) => {
                let floats = as_f32(map);
                let parts: Vec<Tensor> = idx
                    .iter()
                    .map(|&i| Tensor::from_slice(&floats[i * per..(i + 1) * per]))
                    .collect();
                Tensor::cat(&parts, 0)
            }
        };
        Ok(
            t.view([idx.len() as i64, self.seqlen as i64, self.hidden as i64])
                .to_device(dev),
        )
    }

    /// A handle for another worker thread (tensors are not shared across threads).
    pub fn handle(&self) -> TeacherStates {
        TeacherStates {
            storage: self.storage.iter().map(|(b, s)| (*b, s.handle())).collect(),
            n: self.n,
            seqlen: self.seqlen,
            hidden: self.hidden,
            _tmp: self._tmp.clone(),
        }
    }

    /// A handle whose boundary `b` reads `states` (`[n, seqlen, hidden]` f32) instead:
    /// the student's own states, for training on them (`recovery.inputs = student`).
    pub fn with_states_at(&self, b: usize, states: Tensor) -> Result<TeacherStates> {
        let want = [self.n as i64, self.seqlen as i64, self.hidden as i64];
        if states.size() != want {
            return Err(Error::Invalid(format!(
                "states for boundary {b} are {:?}, the store holds {want:?}",
                states.size()
            )));
        }
        let mut h = self.handle();
        h.storage
            .insert(b, Slot::Memory(states.to_kind(Kind::Float)));
        Ok(h)
    }

    pub fn on_disk(&self) -> bool {
        self.storage.values().any(|s| matches!(s, Slot::Disk(_)))
    }
}

impl Slot {
    fn handle(&self) -> Slot {
        match self {
            Slot::Memory(t) => Slot::Memory(t.shallow_clone()),
            Slot::Disk(m) => Slot::Disk(m.clone()),
        }
    }
}

/// Every sequence's states at `boundaries`, computed into memory.
fn states_in_memory(
    teacher: &Model,
    seqs: &[&Vec<i64>],
    boundaries: &[usize],
    progress: &mut impl FnMut(usize, usize),
) -> Result<BTreeMap<usize, Slot>> {
    let n = seqs.len();
    let mut map: BTreeMap<usize, Vec<Tensor>> = BTreeMap::new();
    for (i, s) in seqs.iter().enumerate() {
        for (b, h) in forward_capture(teacher, s, boundaries)? {
            map.entry(b).or_default().push(h);
        }
        progress(i + 1, n);
    }
    Ok(map
        .into_iter()
        .map(|(b, v)| (b, Slot::Memory(Tensor::cat(&v, 0))))
        .collect())
}

/// Maps the boundary files of the complete entry in `dir`, checking that each holds `n`
/// sequences of `seqlen` x `hidden` f32.
fn map_states(
    dir: &Path,
    boundaries: &[usize],
    n: usize,
    seqlen: usize,
    hidden: usize,
) -> Result<BTreeMap<usize, Slot>> {
    let mut maps = BTreeMap::new();
    for &b in boundaries {
        let p = dir.join(format!("boundary-{b}.f32"));
        let f = std::fs::File::open(&p).map_err(|e| Error::io(&p, e))?;
        // SAFETY: the file is ours, complete (renamed into place) and never rewritten.
        let m = unsafe { Mmap::map(&f) }.map_err(|e| Error::io(&p, e))?;
        if m.len() != n * seqlen * hidden * 4 {
            return Err(Error::format(&p, format!(
                "{} bytes, expected {} ({n} x {seqlen} x {hidden} f32): a damaged cache entry; delete {}",
                m.len(), n * seqlen * hidden * 4, dir.display()
            )));
        }
        maps.insert(b, Slot::Disk(Arc::new(m)));
    }
    Ok(maps)
}

fn as_f32(m: &Mmap) -> &[f32] {
    // SAFETY: mappings are page aligned and hold whole little-endian f32 values (checked
    // length); the host is little-endian like every platform libtorch supports.
    unsafe { std::slice::from_raw_parts(m.as_ptr() as *const f32, m.len() / 4) }
}

/// Hidden states of one sequence at the wanted boundaries (layers past the last one
/// wanted are not run).
fn forward_capture(teacher: &Model, ids: &[i64], want: &[usize]) -> Result<Vec<(usize, Tensor)>> {
    let max_b = want
        .iter()
        .copied()
        .max()
        .unwrap_or(0)
        .min(teacher.n_layers());
    let ids = Tensor::from_slice(ids)
        .view([1, -1])
        .to_device(teacher.device);
    let mut tap = Capture { want, got: vec![] };
    tch::no_grad(|| -> Result<()> {
        let ctx = teacher.context(&ids, None, None, 0)?;
        let h = teacher.embed_tokens(&ids)?;
        let _ = teacher.run_layers(h, 0..max_b, &ctx, &mut tap, None);
        Ok(())
    })?;
    Ok(tap.got)
}

/// Write one raw file per boundary into `work` (created), then the `complete` marker.
fn write_states(
    teacher: &Model,
    seqs: &[&Vec<i64>],
    boundaries: &[usize],
    work: &Path,
    progress: &mut impl FnMut(usize, usize),
) -> Result<()> {
    std::fs::create_dir_all(work).map_err(|e| Error::io(work, e))?;
    let mut files = BTreeMap::new();
    for &b in boundaries {
        let p = work.join(format!("boundary-{b}.f32"));
        let f = std::fs::File::create(&p).map_err(|e| Error::io(&p, e))?;
        files.insert(b, (p, std::io::BufWriter::with_capacity(1 << 20, f)));
    }
    for (i, s) in seqs.iter().enumerate() {
        for (b, h) in forward_capture(teacher, s, boundaries)? {
            let v: Vec<f32> = Vec::<f32>::try_from(h.flatten(0, -1))?;
            if let Some((p, w)) = files.get_mut(&b) {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                w.write_all(&bytes).map_err(|e| Error::io(&*p, e))?;
            }
        }
        progress(i + 1, seqs.len());
    }
    for (_, (p, mut w)) in files {
        w.flush().map_err(|e| Error::io(&p, e))?;
    }
    let done = work.join("complete");
    std::fs::write(&done, b"").map_err(|e| Error::io(&done, e))
}

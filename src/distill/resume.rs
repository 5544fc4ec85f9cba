//! Finished units of an unfinished recovery, kept in `<out>.partial/` next to the output:
//! one safetensors file and one record per unit, written atomically, under a content key
//! (teacher, student, config, data) so a changed input never resumes from stale weights.
//! The output itself appears only complete, by rename.

use super::record::{DistillRecord, LayerRecord};
use crate::error::{Error, Result};
use crate::model::safetensors_io::{self, SafetensorsFile};
use crate::model::{save::save_model, Layer, Model};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// A finished unit's tensors (names as saved) and record.
pub type Finished = (Vec<(String, Tensor)>, LayerRecord);

pub struct Partial {
    dir: PathBuf,
    out: PathBuf,
}

fn with_suffix(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

impl Partial {
    /// Open (or start) the partial directory of `out` for content `key`.
    pub fn open(out: &Path, key: &str) -> Result<Partial> {
        let dir = with_suffix(out, ".partial");
        let key_file = dir.join("key");
        let same = std::fs::read_to_string(&key_file).is_ok_and(|k| k.trim() == key);
        if !same {
            if dir.exists() {
                std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            }
            std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
            std::fs::write(&key_file, key).map_err(|e| Error::io(&key_file, e))?;
        }
        Ok(Partial {
            dir,
            out: out.to_path_buf(),
        })
    }

    /// A unit finished earlier: its tensors (on `dev`) and record.
    pub fn finished(&self, name: &str, dev: Device) -> Result<Option<Finished>> {
        let (w, r) = (
            self.dir.join(format!("{name}.safetensors")),
            self.dir.join(format!("{name}.json")),
        );
        if !r.is_file() {
            return Ok(None);
        }
        let rec: LayerRecord = serde_json::from_str(&crate::error::read_to_string(&r)?)
            .map_err(|e| Error::format(&r, e.to_string()))?;
        let f = SafetensorsFile::open(&w)?;
        let names: Vec<String> = f.tensors.keys().cloned().collect();
        let mut out = vec![];
        for n in names {
            out.push((n.clone(), f.load(&n, None, dev)?));
        }
        Ok(Some((out, rec)))
    }

    /// Keep a finished unit: weights first, the record last (its presence means done).
    pub fn save(&self, name: &str, tensors: &[(String, &Tensor)], rec: &LayerRecord) -> Result<()> {
        // Each write is atomic; the record is written last, so its presence means done.
        safetensors_io::write(&self.dir.join(format!("{name}.safetensors")), tensors)?;
        crate::publish::write_json(&self.dir.join(format!("{name}.json")), rec)
    }

    /// Write the recovered checkpoint (with the student's come.json and distill.json) to
    /// a temporary sibling, rename it onto the output, and drop the partial directory.
    pub fn commit(self, model: &Model, student_dir: &Path, rec: &DistillRecord) -> Result<()> {
        crate::publish::write_dir_atomically(&self.out, |tmp| {
            save_model(model, tmp, Some(student_dir))?;
            let come = student_dir.join("come.json");
            std::fs::copy(&come, tmp.join("come.json")).map_err(|e| Error::io(&come, e))?;
            rec.write(tmp)
        })?;
        let _ = std::fs::remove_dir_all(&self.dir);
        Ok(())
    }
}

/// Copy `tensors` (layer-relative HF names) into `layer`'s tensors of the same names.
pub fn assign_layer(layer: &Layer, tensors: &[(String, Tensor)]) -> Result<()> {
    let own = layer.named_tensors();
    for (name, t) in tensors {
        let Some((_, dst)) = own.iter().find(|(n, _)| n == name) else {
            return Err(Error::Invalid(format!(
                "saved unit has tensor `{name}` that the layer lacks"
            )));
        };
        if dst.size() != t.size() {
            return Err(Error::Invalid(format!(
                "saved unit tensor `{name}` has shape {:?}, the layer {:?}",
                t.size(),
                dst.size()
            )));
        }
        tch::no_grad(|| dst.shallow_clone().copy_(t));
    }
    Ok(())
}

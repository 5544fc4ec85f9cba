//! The model stage: a Hugging Face checkpoint directory for a grid's [`ModelSource`]. A
//! directory is used as it is; a GGUF or llama2.c file is imported once into a cache
//! directory named after the source file's content hash, and reused afterwards.

use super::contract::{Done, Stage, StageCtx, StageName};
use crate::error::Result;
use crate::experiment::ModelSource;
use crate::model::import::{write_checkpoint, ImportedCheckpoint};
use crate::model::{gguf, llama2c};
use std::path::{Path, PathBuf};

/// The first 12 hex digits of the sha256 of a file's bytes.
pub fn short_hash(path: &Path) -> Result<String> {
    Ok(crate::hashing::file_sha256(path)?[..12].to_string())
}

/// An HF directory for `source`: used as is, or imported once into `cache` (keyed by the
/// source file's content hash) and reused. Returns (dir, reused).
pub fn prepare_model(source: &ModelSource, cache: &Path, name: &str) -> Result<(PathBuf, bool)> {
    type Build = Box<dyn Fn() -> Result<ImportedCheckpoint>>;
    let (dir, build): (PathBuf, Build) = match source {
        ModelSource::Path(p) => return Ok((p.clone(), true)),
        ModelSource::Gguf(f) => {
            let f2 = f.clone();
            (
                cache.join(format!("{name}-{}", short_hash(f)?)),
                Box::new(move || gguf::import(&f2)),
            )
        }
        ModelSource::Llama2c { model, tokenizer } => {
            let (m, t) = (model.clone(), tokenizer.clone());
            (
                cache.join(format!("{name}-{}", short_hash(model)?)),
                Box::new(move || llama2c::import(&m, &t)),
            )
        }
    };
    if dir.join("config.json").exists() {
        return Ok((dir, true));
    }
    // Another worker may be importing the same file: wait for it, then reuse.
    let _lock = crate::publish::lock_entry(&dir, || {})?;
    if dir.join("config.json").exists() {
        return Ok((dir, true));
    }
    // A process that finished the same import first is kept (same source bytes).
    let ours = crate::publish::write_dir_once(&dir, |tmp| write_checkpoint(&build()?, tmp))?;
    Ok((dir, !ours))
}

/// The model stage of a run: its source as an HF directory. Its cache entry is named by
/// the source file's content hash, computed when the stage runs.
pub struct ModelStage<'a> {
    pub source: &'a ModelSource,
    /// The model's name in the grid (the cache entry's prefix).
    pub name: &'a str,
}

impl Stage for ModelStage<'_> {
    const NAME: StageName = StageName::Model;
    type Output = PathBuf;

    fn cache_key(&self) -> Option<String> {
        None
    }

    fn run(self, ctx: &mut StageCtx) -> Result<Done<PathBuf>> {
        let (dir, reused) = prepare_model(
            self.source,
            &ctx.need_cache(Self::NAME)?.models(),
            self.name,
        )?;
        Ok(Done::new(dir.clone(), reused).at(&dir))
    }
}

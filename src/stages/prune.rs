//! The prune stage: load a checkpoint, sample calibration text, prune, and save the result
//! as a standard HF checkpoint with its [`PruneRecord`] (`come.json`). The output appears
//! atomically: it is built in a temporary sibling directory and renamed into place.

use crate::calib::{self, CalibSet};
use crate::error::Result;
use crate::model::load::{load_model, LoadOptions};
use crate::model::save::save_model;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use crate::progress::Sink;
use crate::prune::{prune, target_layers, PruneConfig, TargetMapping};
use std::path::{Path, PathBuf};
use std::time::Instant;

pub use crate::prune::record::{PruneRecord, FILE};

/// A prune ready to run: the model loaded, its target depth checked and the calibration
/// sample drawn. Split from [`PruneJob::run`] so that a caller can report the plan (and
/// a bad target fails) before the slow part.
pub struct PruneJob {
    base: PathBuf,
    cfg: PruneConfig,
    model: Model,
    /// How the target depth follows from the config.
    pub mapping: TargetMapping,
    pub calib: CalibSet,
    t0: Instant,
}

impl PruneJob {
    /// Load `base`, check the target depth, then sample the calibration text.
    pub fn prepare(base: &Path, cfg: &PruneConfig, load: LoadOptions) -> Result<PruneJob> {
        let t0 = Instant::now();
        cfg.validate()?;
        let model = load_model(base, load)?;
        let tok = Tokenizer::from_dir(base)?;
        // The target is checked before the (slow) calibration pass.
        let mapping = target_layers(&model, cfg)?;
        let calib = calib::sample(&tok, &cfg.calib)?;
        Ok(PruneJob {
            base: base.to_path_buf(),
            cfg: cfg.clone(),
            model,
            mapping,
            calib,
            t0,
        })
    }

    /// Prune and write the checkpoint with its `come.json` to `out` (replacing it).
    /// `events` follows the rounds.
    pub fn run(self, out: &Path, events: Sink) -> Result<PruneRecord> {
        let PruneJob {
            base,
            cfg,
            mut model,
            calib,
            t0,
            ..
        } = self;
        let report = prune(&mut model, calib, &cfg, events)?;
        crate::publish::write_dir_atomically(out, |tmp| {
            save_model(&model, tmp, Some(&base))?;
            let rss = crate::memory::peak_rss_mib();
            let record = PruneRecord {
                source_model: base.clone(),
                report,
                peak_rss_mib: rss.is_finite().then_some(rss),
                total_seconds: Some(t0.elapsed().as_secs_f64()),
                threads: Some(tch::get_num_threads()),
                crate_version: env!("CARGO_PKG_VERSION").to_string(),
            };
            record.write(tmp)?;
            Ok(record)
        })
    }
}

/// Prune the checkpoint `base` with `cfg` into `out` (an HF checkpoint plus `come.json`,
/// written atomically: a kill leaves no partial directory at `out`).
pub fn prune_checkpoint(
    base: &Path,
    cfg: &PruneConfig,
    load: LoadOptions,
    out: &Path,
    events: Sink,
) -> Result<PruneRecord> {
    PruneJob::prepare(base, cfg, load)?.run(out, events)
}

//! The prune stage: load a checkpoint, sample calibration text, prune, and save the result
//! as a standard HF checkpoint with its [`PruneRecord`] (`come.json`). The output appears
//! atomically: it is built in a temporary sibling directory and renamed into place.

use super::contract::{data_env_entry, Dest, Done, Stage, StageCtx, StageName};
use crate::calib::{self, CalibSet};
use crate::error::Result;
use crate::measure::{kinds, Metric};
use crate::model::load::{load_model, LoadOptions};
use crate::model::save::save_model;
use crate::model::tokenizer::Tokenizer;
use crate::model::Model;
use crate::names;
use crate::progress::{Event, Sink};
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

    /// What the job will do, in a line: depth before and after, method, calibration.
    pub fn plan(&self) -> String {
        format!(
            "{}: {} -> {} layers with {} ({} calibration sequences of {} tokens)",
            self.base.display(),
            self.mapping.layers_before,
            self.mapping.target_layers,
            self.cfg.method.name(),
            self.calib.n_sequences,
            self.calib.seqlen
        )
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

/// The prune stage: `cfg` applied to the checkpoint `base`. A grid caches it under the
/// run's prune identity ([`Experiment::prune_hash`](crate::experiment::Experiment::prune_hash));
/// `come-repro prune` writes it to `--out`.
pub struct PruneStage<'a> {
    pub base: &'a Path,
    pub cfg: &'a PruneConfig,
    pub dest: Dest,
}

impl Stage for PruneStage<'_> {
    const NAME: StageName = StageName::Prune;
    type Output = PathBuf;

    fn cache_key(&self) -> Option<String> {
        self.dest.key()
    }

    fn run(self, ctx: &mut StageCtx) -> Result<Done<PathBuf>> {
        let (dir, reused) = ctx.produce(Self::NAME, &self.dest, FILE, |ctx, dir| {
            // The target is checked before the (slow) calibration pass; then the plan.
            let job = PruneJob::prepare(self.base, self.cfg, ctx.load)?;
            (ctx.events)(Event::Note(job.plan()));
            job.run(dir, &mut *ctx.events).map(|_| ())
        })?;
        let rec = PruneRecord::read(&dir)?;
        let mut done = Done::new(dir.clone(), reused).at(&dir);
        done.metrics = prune_metrics(&rec);
        done.artifacts.push((dir.join(FILE), kinds::COME_JSON));
        let (k, v) = data_env_entry(&self.cfg.calib.source_path())?;
        done.env.insert(k, v);
        Ok(done)
    }
}

/// The store's view of a prune: its time, layers removed, layer passes, calibration
/// windows and peak memory.
pub fn prune_metrics(rec: &PruneRecord) -> Vec<Metric> {
    let r = &rec.report;
    let mut m = vec![
        Metric::new(
            "",
            names::RUN_LAYERS_REMOVED,
            r.target.layers_removed as f64,
        ),
        Metric::new("", names::RUN_PRUNE_LAYER_PASSES, r.layer_passes as f64),
        Metric::new(
            "",
            names::RUN_CALIB_WINDOWS,
            r.calibration.n_sequences as f64,
        ),
    ];
    // The store refuses NaN.
    if r.seconds.is_finite() {
        m.insert(0, Metric::new("", names::RUN_PRUNE_SECONDS, r.seconds));
    }
    if let Some(rss) = rec.peak_rss_mib {
        m.push(Metric::new("", names::RUN_PRUNE_PEAK_RSS, rss));
    }
    m
}

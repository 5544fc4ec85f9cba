//! The pruning engine: calibration state, scores, plans and merges. `prune` takes a model
//! and a [`PruneConfig`] and returns the pruned model (in place) with a full record.

pub mod baselines;
pub mod merge;
pub mod record;
pub mod score;
pub mod spec;
pub mod state;
pub mod stats;
pub mod store;

use crate::calib::{CalibConfig, CalibSet};
use crate::error::{Error, Result};
use crate::model::{Layer, Model};
use crate::progress::{Event, Sink};
use merge::{GqaMapping, NormMode, ShareOptions};
use score::{channel_scores, Sensitivity};
use serde::{Deserialize, Serialize};
use state::{CalibState, Need};
use std::time::Instant;

/// Serialised (configs, stores), spelt on the command line and returned by `name` with the
/// same names (a test keeps the three in step).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
pub enum Method {
    /// Progressive pair merging (CoMe's schedule) with the merge operation of `merge`.
    #[serde(rename = "come")]
    #[value(name = "come")]
    Come,
    /// CoMe-P: per pair, the channel split chosen by calibration NLL.
    #[serde(rename = "come-p")]
    #[value(name = "come-p", alias = "comep")]
    ComeP,
    #[serde(rename = "shortgpt")]
    #[value(name = "shortgpt")]
    ShortGpt,
    #[serde(rename = "sleb")]
    #[value(name = "sleb")]
    Sleb,
    #[serde(rename = "reverse")]
    #[value(name = "reverse")]
    Reverse,
    #[serde(rename = "magnitude")]
    #[value(name = "magnitude")]
    Magnitude,
    #[serde(rename = "magnitude+")]
    #[value(name = "magnitude+", alias = "magnitude-plus")]
    MagnitudePlus,
    #[serde(rename = "taylor")]
    #[value(name = "taylor")]
    Taylor,
    #[serde(rename = "taylor+")]
    #[value(name = "taylor+", alias = "taylor-plus")]
    TaylorPlus,
    #[serde(rename = "laco")]
    #[value(name = "laco")]
    Laco,
    #[serde(rename = "mka")]
    #[value(name = "mka")]
    Mka,
}

impl Method {
    /// Every method, in the order tables list them.
    pub fn all() -> &'static [Method] {
        <Method as clap::ValueEnum>::value_variants()
    }
    /// A method by its name (or one of the command line's aliases).
    pub fn parse(s: &str) -> Result<Method> {
        <Method as clap::ValueEnum>::from_str(s, false).map_err(|_| {
            Error::Invalid(format!(
                "unknown method `{s}` (known: {})",
                Method::all()
                    .iter()
                    .map(|m| m.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })
    }
    /// What the method needs from the calibration set: one-shot scores need one pass,
    /// iterative methods re-score from stored boundaries.
    pub fn need(self) -> Need {
        match self {
            Method::Reverse
            | Method::Magnitude
            | Method::MagnitudePlus
            | Method::Taylor
            | Method::TaylorPlus => Need::Ids,
            Method::ShortGpt => Need::Scores,
            Method::Come | Method::ComeP | Method::Sleb | Method::Laco | Method::Mka => Need::Full,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Method::Come => "come",
            Method::ComeP => "come-p",
            Method::ShortGpt => "shortgpt",
            Method::Sleb => "sleb",
            Method::Reverse => "reverse",
            Method::Magnitude => "magnitude",
            Method::MagnitudePlus => "magnitude+",
            Method::Taylor => "taylor",
            Method::TaylorPlus => "taylor+",
            Method::Laco => "laco",
            Method::Mka => "mka",
        }
    }
}

/// The operation applied to the pair the CoMe schedule picks (the paper's ablation axis).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MergeOp {
    #[default]
    Concat,
    /// Plain average of the pair's weights.
    Linear,
    /// BI-weighted average (the paper's weighted-sum ablation).
    LinearBi,
    /// Drop the pair's lower-BI layer.
    Drop,
}

/// How adjacent pairs are ranked for merging (smallest first).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PairScore {
    /// Angular distance between the pair's input and output on the last token (reference).
    #[default]
    Sbi,
    /// The same over all tokens.
    SbiAll,
    /// Calibration NLL with both layers removed (SLEB-style).
    Nll,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct PruneConfig {
    pub method: Method,
    pub merge: MergeOp,
    /// Target depth; overrides `sparsity` when set.
    pub target_layers: Option<usize>,
    /// Fraction of parameters to remove, mapped to a layer count (recorded).
    pub sparsity: Option<f64>,
    pub sensitivity: Sensitivity,
    pub pair_score: PairScore,
    pub norm: NormMode,
    pub gqa_mapping: GqaMapping,
    pub share: ShareOptions,
    /// A pair touching an already merged layer is not eligible (reference default).
    pub no_repeat: bool,
    /// CoMe-P: split grid granularity G (G + 1 candidate ratios).
    pub comep_grid: usize,
    /// LaCo: layers merged per step, interval after an accepted merge, similarity threshold.
    pub laco_span: usize,
    pub laco_interval: usize,
    pub laco_threshold: f64,
    /// Layers protected at each end by the "+" baselines.
    pub protect_first: usize,
    pub protect_last: usize,
    pub calib: CalibConfig,
    /// Calibration sequences per forward chunk.
    pub chunk: usize,
    /// Re-score from the merge position on (false: from layer 0 every round).
    pub incremental: bool,
    pub seed: u64,
}

impl Default for PruneConfig {
    fn default() -> Self {
        PruneConfig {
            method: Method::Come,
            merge: MergeOp::Concat,
            target_layers: None,
            sparsity: None,
            sensitivity: Sensitivity::ActL1,
            pair_score: PairScore::Sbi,
            norm: NormMode::Mean,
            gqa_mapping: GqaMapping::Hf,
            share: ShareOptions::default(),
            no_repeat: true,
            comep_grid: 20,
            laco_span: 2,
            laco_interval: 2,
            laco_threshold: 0.65,
            protect_first: 4,
            protect_last: 2,
            calib: CalibConfig::default(),
            chunk: 1,
            incremental: true,
            seed: 0,
        }
    }
}

/// Identity v1: every field under its serde name, whatever the method reads (a CoMe run's
/// identity holds LaCo's defaults too, as the runs stored before this form did).
impl crate::hashing::Identity for PruneConfig {
    fn identity(&self) -> serde_json::Value {
        let PruneConfig {
            method,
            merge,
            target_layers,
            sparsity,
            sensitivity,
            pair_score,
            norm,
            gqa_mapping,
            share,
            no_repeat,
            comep_grid,
            laco_span,
            laco_interval,
            laco_threshold,
            protect_first,
            protect_last,
            calib,
            chunk,
            incremental,
            seed,
        } = self;
        crate::hashing::Fields::new()
            .leaf("method", method)
            .leaf("merge", merge)
            .leaf("target_layers", target_layers)
            .leaf("sparsity", sparsity)
            .leaf("sensitivity", sensitivity)
            .leaf("pair_score", pair_score)
            .leaf("norm", norm)
            .leaf("gqa_mapping", gqa_mapping)
            .part("share", share)
            .leaf("no_repeat", no_repeat)
            .leaf("comep_grid", comep_grid)
            .leaf("laco_span", laco_span)
            .leaf("laco_interval", laco_interval)
            .leaf("laco_threshold", laco_threshold)
            .leaf("protect_first", protect_first)
            .leaf("protect_last", protect_last)
            .part("calib", calib)
            .leaf("chunk", chunk)
            .leaf("incremental", incremental)
            .leaf("seed", seed)
            .done()
    }
}

impl PruneConfig {
    /// Whether the setting `key` (a path under `prune`, e.g. `merge`, `calib.nrows`) can
    /// change what this config's method does: labels and tables name only those (a
    /// ShortGPT row does not show `merge = concat`).
    pub fn uses(&self, key: &str) -> bool {
        use Method::*;
        let m = self.method;
        let top = key.split('.').next().unwrap_or(key);
        match top {
            "calib" | "chunk" => !matches!(m, Reverse | Magnitude | MagnitudePlus),
            "incremental" => matches!(m, Come | ComeP | Sleb | Laco | Mka),
            _ if spec::METHOD_KEYS.contains(&top) => self.spec().reads(top),
            _ => true,
        }
    }

    /// The top-level settings this config sets away from their defaults that its method
    /// does not read (per [`Self::uses`]), each with the methods that do read it. A grid
    /// may cross methods over one base; a single `prune` refuses these, so that no flag is
    /// silently ignored.
    pub fn unread_settings(&self) -> Vec<(String, Vec<Method>)> {
        use crate::hashing::Identity;
        let (mine, default) = (self.identity(), PruneConfig::default().identity());
        let Some(mine) = mine.as_object() else {
            return vec![];
        };
        mine.iter()
            .filter(|(k, v)| default.get(k.as_str()) != Some(*v) && !self.uses(k))
            .map(|(k, _)| {
                let readers = (Method::all().iter().copied())
                    .filter(|&method| {
                        PruneConfig {
                            method,
                            ..self.clone()
                        }
                        .uses(k)
                    })
                    .collect();
                (k.clone(), readers)
            })
            .collect()
    }

    /// What can be checked without the model: a target is set and in range, the search
    /// settings and the calibration recipe are usable. The target against the model's
    /// depth is checked by [`target_layers`].
    pub fn validate(&self) -> Result<()> {
        match (self.target_layers, self.sparsity) {
            (None, None) => {
                return Err(Error::Invalid(
                    "a pruned run needs `prune.sparsity` or `prune.target_layers`".into(),
                ))
            }
            (Some(0), _) => {
                return Err(Error::Invalid(
                    "`prune.target_layers` must be at least 1".into(),
                ))
            }
            (None, Some(x)) if !(x > 0.0 && x < 1.0) => {
                return Err(Error::Invalid(format!(
                    "`prune.sparsity` must be in (0, 1), got {x}"
                )))
            }
            _ => {}
        }
        if self.comep_grid == 0 {
            return Err(Error::Invalid(
                "`prune.comep_grid` must be at least 1 (G + 1 candidate ratios)".into(),
            ));
        }
        if !(self.laco_threshold.is_finite() && (-1.0..=1.0).contains(&self.laco_threshold)) {
            return Err(Error::Invalid(format!(
                "`prune.laco_threshold` is a cosine similarity in [-1, 1], got {}",
                self.laco_threshold
            )));
        }
        self.calib.validate()
    }
}

/// How the target depth was derived.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TargetMapping {
    pub sparsity: Option<f64>,
    pub total_params: i64,
    pub params_per_layer: i64,
    pub layers_before: usize,
    pub layers_removed: usize,
    pub target_layers: usize,
    pub rule: String,
}

pub fn target_layers(model: &Model, cfg: &PruneConfig) -> Result<TargetMapping> {
    let c = model.current_config();
    let n = model.n_layers();
    let (total, per) = (c.total_params(), c.params_per_layer());
    let (removed, rule) = match (cfg.target_layers, cfg.sparsity) {
        (Some(t), _) => {
            if t == 0 || t >= n {
                return Err(Error::Invalid(format!(
                    "target depth {t} must be between 1 and the current depth minus one ({})",
                    n.saturating_sub(1)
                )));
            }
            (n - t, "explicit target_layers")
        }
        (None, Some(s)) => {
            if !(s > 0.0 && s < 1.0) {
                return Err(Error::Invalid(format!(
                    "sparsity must be in (0, 1), got {s}"
                )));
            }
            let r = (s * total as f64 / per as f64).round() as usize;
            if r == 0 || r >= n {
                return Err(Error::Invalid(format!(
                    "sparsity {s} maps to removing {r} of {n} layers ({total} params, {per} per layer): nothing to do or nothing left"
                )));
            }
            (r, "round(sparsity * total_params / params_per_layer)")
        }
        (None, None) => return Err(Error::Invalid("set target_layers or sparsity".into())),
    };
    Ok(TargetMapping {
        sparsity: cfg.sparsity.filter(|_| cfg.target_layers.is_none()),
        total_params: total,
        params_per_layer: per,
        layers_before: n,
        layers_removed: removed,
        target_layers: n - removed,
        rule: rule.to_string(),
    })
}

/// One step of a plan.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub round: usize,
    pub action: String,
    /// Positions (in the model at that round) of the layers consumed.
    pub positions: Vec<usize>,
    /// Original layers now held by the resulting layer (empty for a drop).
    pub originals: Vec<usize>,
    pub score: Option<f64>,
    #[serde(deserialize_with = "nan_as_null::vec")]
    pub bi: Vec<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concat: Option<merge::ConcatRecord>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nll: Option<f64>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PruneReport {
    pub config: PruneConfig,
    pub target: TargetMapping,
    pub calibration: CalibSet,
    /// New layer i <- original layers.
    pub correspondence: Vec<Vec<usize>>,
    pub steps: Vec<Step>,
    pub params_before: i64,
    pub params_after: i64,
    pub layer_passes: usize,
    /// Whether the calibration boundaries were kept on disk (see `prune::store`).
    #[serde(default)]
    pub state_on_disk: bool,
    pub seconds: f64,
}

/// JSON writes a non-finite `f64` as `null`; this reads such a `null` back as NaN, so a
/// record with a degenerate score still deserialises.
pub mod nan_as_null {
    use serde::{Deserialize, Deserializer};

    pub fn vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<f64>, D::Error> {
        let v = Vec::<Option<f64>>::deserialize(d)?;
        Ok(v.into_iter().map(|x| x.unwrap_or(f64::NAN)).collect())
    }
}

/// Everything a plan needs while it runs.
pub struct Pruner<'a> {
    pub model: &'a mut Model,
    /// The method and the settings it reads.
    pub spec: spec::MethodSpec,
    /// Re-score from the merge position on (false: from layer 0 every round).
    pub incremental: bool,
    pub state: CalibState,
    pub corr: Vec<Vec<usize>>,
    pub steps: Vec<Step>,
    /// The depth the plan stops at.
    pub target: usize,
    /// Each kept round: the rounds done so far, and the round's one-line description.
    pub events: Sink<'a>,
}

impl Pruner<'_> {
    /// Replace layers `at..at + k` by `new` (None: delete them) and update the state.
    pub fn apply(&mut self, at: usize, k: usize, new: Option<Layer>) -> Result<()> {
        let originals: Vec<usize> = self.corr[at..at + k].concat();
        match new {
            Some(layer) => {
                self.model.layers.splice(at..at + k, [layer]);
                self.corr.splice(at..at + k, [originals]);
            }
            None => {
                self.model.layers.drain(at..at + k);
                self.corr.drain(at..at + k);
            }
        }
        if self.model.n_layers() > self.target {
            self.state.after_change(self.model, at, self.incremental)
        } else {
            // Nothing re-scores the final model.
            self.state.release();
            Ok(())
        }
    }

    /// Keep a finished round, report it, and stop here if the user asked to (Ctrl-C):
    /// rounds are the prune's unit of work, minutes each on a large model.
    pub fn record(&mut self, mut step: Step, t0: Instant) -> Result<()> {
        step.round = self.steps.len();
        step.seconds = t0.elapsed().as_secs_f64();
        (self.events)(Event::Items {
            what: "prune steps".into(),
            done: self.steps.len() + 1,
            total: 0,
        });
        (self.events)(Event::Note(step.action.clone()));
        self.steps.push(step);
        crate::cancel::check()
    }
}

/// Prune `model` in place to the configured depth.
pub fn prune(
    model: &mut Model,
    calib: CalibSet,
    cfg: &PruneConfig,
    events: Sink,
) -> Result<PruneReport> {
    let t0 = Instant::now();
    let target = target_layers(model, cfg)?;
    let params_before = model.num_params();
    let spec = cfg.spec();
    // Channel statistics feed the concat merge only.
    let kinds = spec
        .channels()
        .map_or_else(stats::StatKinds::default, |c| c.sensitivity.stat_kinds());
    let state = CalibState::new(model, &calib.sequences, cfg.chunk, cfg.method.need(), kinds)?;
    let state_on_disk = state.on_disk();
    let corr = (0..model.n_layers()).map(|i| vec![i]).collect();
    let mut p = Pruner {
        model,
        spec,
        incremental: cfg.incremental,
        state,
        corr,
        steps: vec![],
        target: target.target_layers,
        events,
    };
    let t = target.target_layers;
    use spec::MethodSpec as S;
    match spec {
        S::Come {
            op,
            pair_score,
            share,
            ..
        } => progressive(&mut p, t, op, pair_score, share)?,
        S::ComeP { grid, channels, .. } => baselines::come_p(&mut p, t, grid, channels)?,
        S::ShortGpt => baselines::shortgpt(&mut p, t)?,
        S::Sleb => baselines::sleb(&mut p, t)?,
        S::Reverse => baselines::reverse(&mut p, t)?,
        S::Magnitude => baselines::magnitude(&mut p, t, None)?,
        S::MagnitudePlus(protect) => baselines::magnitude(&mut p, t, Some(protect))?,
        S::Taylor => baselines::taylor(&mut p, t, None)?,
        S::TaylorPlus(protect) => baselines::taylor(&mut p, t, Some(protect))?,
        S::Laco(laco) => baselines::laco(&mut p, t, laco)?,
        S::Mka { .. } => baselines::mka(&mut p, t)?,
    }
    let layer_passes = p.state.layer_passes;
    let (corr, steps) = (p.corr, p.steps);
    let params_after = p.model.num_params();
    Ok(PruneReport {
        config: cfg.clone(),
        target,
        calibration: calib,
        correspondence: corr,
        steps,
        params_before,
        params_after,
        layer_passes,
        state_on_disk,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Adjacent pairs that may merge this round.
pub fn eligible_pairs(p: &Pruner) -> Vec<usize> {
    (0..p.model.n_layers().saturating_sub(1))
        .filter(|&l| !p.spec.no_repeat() || (p.corr[l].len() == 1 && p.corr[l + 1].len() == 1))
        .collect()
}

pub fn pair_score(p: &Pruner, l: usize, how: PairScore) -> Result<f64> {
    match how {
        PairScore::Sbi => p.state.pair_distance(l, false),
        PairScore::SbiAll => p.state.pair_distance(l, true),
        PairScore::Nll => p.state.nll_with(p.model, l, &[], l + 2),
    }
}

/// Pick the eligible pair with the smallest score.
pub fn best_pair(p: &Pruner, how: PairScore) -> Result<(usize, f64)> {
    let mut scored = vec![];
    for l in eligible_pairs(p) {
        scored.push((l, pair_score(p, l, how)?));
    }
    scored
        .into_iter()
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| {
            Error::Invalid(format!(
                "no eligible pair left at depth {} (every layer already merged once); set no_repeat = false to allow merging merged layers",
                p.model.n_layers()
            ))
        })
}

/// The CoMe schedule: merge the most similar eligible pair, re-score, repeat.
fn progressive(
    p: &mut Pruner,
    target: usize,
    op: spec::PairOp,
    pair_score: PairScore,
    share: ShareOptions,
) -> Result<()> {
    use spec::PairOp;
    while p.model.n_layers() > target {
        let t0 = Instant::now();
        let (l, s) = best_pair(p, pair_score)?;
        let bi = vec![p.state.block_influence(l)?, p.state.block_influence(l + 1)?];
        let r = merge::shares(&bi, share);
        let originals = [p.corr[l].clone(), p.corr[l + 1].clone()].concat();
        let mut step = Step {
            round: 0,
            action: String::new(),
            positions: vec![l, l + 1],
            originals: originals.clone(),
            score: Some(s),
            bi: bi.clone(),
            concat: None,
            ratio: None,
            nll: None,
            seconds: 0.0,
        };
        match op {
            PairOp::Concat(channels) => {
                let (layer, rec) = concat_pair(p, l, &r, &channels)?;
                step.action = format!("concat {l}+{}", l + 1);
                step.concat = Some(rec);
                p.apply(l, 2, Some(layer))?;
            }
            PairOp::Linear | PairOp::LinearBi => {
                let w = if op == PairOp::Linear {
                    vec![0.5, 0.5]
                } else {
                    r.clone()
                };
                let layer = merge::linear(&[&p.model.layers[l], &p.model.layers[l + 1]], &w)?;
                step.action = format!("linear {l}+{} w={:.3}/{:.3}", l + 1, w[0], w[1]);
                p.apply(l, 2, Some(layer))?;
            }
            PairOp::Drop => {
                let victim = if bi[0] <= bi[1] { l } else { l + 1 };
                step.action = format!("drop {victim} of {l}+{}", l + 1);
                step.originals = p.corr[victim].clone();
                p.apply(victim, 1, None)?;
            }
        }
        p.record(step, t0)?;
    }
    Ok(())
}

/// Concat-merge layers `l` and `l + 1` with shares `r`, channels chosen by `ch`.
pub fn concat_pair(
    p: &Pruner,
    l: usize,
    r: &[f64],
    ch: &spec::Channels,
) -> Result<(Layer, merge::ConcatRecord)> {
    let c = &p.model.config;
    let seed = ch.seed;
    // Weight-only variants collect no statistics (`Sensitivity::stat_kinds`).
    let s0 = channel_scores(
        c,
        &p.model.layers[l],
        p.state.stats.get(l),
        ch.sensitivity,
        seed ^ l as u64,
    )?;
    let s1 = channel_scores(
        c,
        &p.model.layers[l + 1],
        p.state.stats.get(l + 1),
        ch.sensitivity,
        seed ^ (l as u64 + 1) << 1,
    )?;
    merge::concat(
        c,
        &[&p.model.layers[l], &p.model.layers[l + 1]],
        &[&s0, &s1],
        r,
        merge::ConcatOptions::same_shape(c, ch.norm, ch.gqa_mapping),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::ValueEnum;

    /// The name a choice has on the command line is the one it has in configs and stores.
    fn same_names<T: ValueEnum + Serialize>() -> Vec<String> {
        T::value_variants()
            .iter()
            .map(|v| {
                let cli = v.to_possible_value().unwrap().get_name().to_string();
                assert_eq!(serde_json::to_value(v).unwrap(), cli.as_str());
                cli
            })
            .collect()
    }

    #[test]
    fn command_line_and_config_names_agree() {
        let methods = same_names::<Method>();
        for (m, name) in Method::all().iter().zip(&methods) {
            assert_eq!(m.name(), name);
            assert_eq!(Method::parse(name).unwrap(), *m);
        }
        assert_eq!(Method::parse("comep").unwrap(), Method::ComeP);
        assert!(Method::parse("foo")
            .unwrap_err()
            .to_string()
            .contains("come-p"));
        same_names::<MergeOp>();
        same_names::<PairScore>();
        same_names::<merge::NormMode>();
        same_names::<merge::GqaMapping>();
        same_names::<score::Sensitivity>();
    }
}

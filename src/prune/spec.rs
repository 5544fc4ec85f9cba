//! What a method reads of a [`PruneConfig`], typed: each method's own settings inside its
//! variant. The flat config stays the one written form (grid keys, `prune --set`, stored
//! configs and run identity v1, which holds every key whatever the method); the engine
//! runs from a [`MethodSpec`], so a plan cannot read another method's setting, and
//! [`PruneConfig::uses`] is the set of keys the spec is built from.

use super::merge::{GqaMapping, NormMode, ShareOptions};
use super::score::Sensitivity;
use super::{MergeOp, Method, PairScore, PruneConfig};

/// How a concatenated pair picks its channels (CoMe's concat merge, and CoMe-P's splits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Channels {
    pub sensitivity: Sensitivity,
    pub norm: NormMode,
    pub gqa_mapping: GqaMapping,
    /// Seeds the random sensitivity variants (salted per layer).
    pub seed: u64,
}

/// The operation CoMe's schedule applies to the pair it picks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum PairOp {
    Concat(Channels),
    Linear,
    LinearBi,
    Drop,
}

/// Layers the "+" baselines never remove, at each end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protect {
    pub first: usize,
    pub last: usize,
}

/// LaCo's fold: layers per fold, the step down after an accepted fold, and the similarity
/// threshold (relaxed when a sweep ends short).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Laco {
    pub span: usize,
    pub interval: usize,
    pub threshold: f64,
}

/// One method with the settings it reads.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MethodSpec {
    Come {
        op: PairOp,
        pair_score: PairScore,
        share: ShareOptions,
        /// A pair touching an already merged layer is not eligible.
        no_repeat: bool,
    },
    ComeP {
        channels: Channels,
        /// Split granularity G (G + 1 candidate ratios).
        grid: usize,
        no_repeat: bool,
    },
    ShortGpt,
    Sleb,
    Reverse,
    Magnitude,
    MagnitudePlus(Protect),
    Taylor,
    TaylorPlus(Protect),
    Laco(Laco),
    /// MKA merges pairs too, and skips those touching a merged layer like CoMe.
    Mka {
        no_repeat: bool,
    },
}

impl MethodSpec {
    pub fn method(&self) -> Method {
        match self {
            MethodSpec::Come { .. } => Method::Come,
            MethodSpec::ComeP { .. } => Method::ComeP,
            MethodSpec::ShortGpt => Method::ShortGpt,
            MethodSpec::Sleb => Method::Sleb,
            MethodSpec::Reverse => Method::Reverse,
            MethodSpec::Magnitude => Method::Magnitude,
            MethodSpec::MagnitudePlus(_) => Method::MagnitudePlus,
            MethodSpec::Taylor => Method::Taylor,
            MethodSpec::TaylorPlus(_) => Method::TaylorPlus,
            MethodSpec::Laco(_) => Method::Laco,
            MethodSpec::Mka { .. } => Method::Mka,
        }
    }

    /// The channel choice of the concat merges this method makes (none: it makes none).
    pub fn channels(&self) -> Option<&Channels> {
        match self {
            MethodSpec::Come {
                op: PairOp::Concat(c),
                ..
            }
            | MethodSpec::ComeP { channels: c, .. } => Some(c),
            _ => None,
        }
    }

    /// Whether pairs touching an already merged layer are skipped (false where the method
    /// merges no pairs).
    pub fn no_repeat(&self) -> bool {
        match self {
            MethodSpec::Come { no_repeat, .. }
            | MethodSpec::ComeP { no_repeat, .. }
            | MethodSpec::Mka { no_repeat } => *no_repeat,
            _ => false,
        }
    }

    /// Whether the top-level flat key (`laco_span`, `share`) is one this spec is built
    /// from. Settings every method shares (target, calibration, re-scoring) are not the
    /// spec's: see [`PruneConfig::uses`].
    pub fn reads(&self, key: &str) -> bool {
        let channel = matches!(key, "sensitivity" | "norm" | "gqa_mapping" | "seed");
        match self {
            MethodSpec::Come { op, .. } => {
                matches!(key, "merge" | "pair_score" | "share" | "no_repeat")
                    || (channel && matches!(op, PairOp::Concat(_)))
            }
            MethodSpec::ComeP { .. } => channel || matches!(key, "comep_grid" | "no_repeat"),
            MethodSpec::MagnitudePlus(_) | MethodSpec::TaylorPlus(_) => {
                matches!(key, "protect_first" | "protect_last")
            }
            MethodSpec::Laco(_) => {
                matches!(key, "laco_span" | "laco_interval" | "laco_threshold")
            }
            MethodSpec::Mka { .. } => key == "no_repeat",
            _ => false,
        }
    }
}

/// The keys [`MethodSpec::reads`] can answer for: every method-specific top-level key.
pub const METHOD_KEYS: &[&str] = &[
    "merge",
    "pair_score",
    "share",
    "no_repeat",
    "sensitivity",
    "norm",
    "gqa_mapping",
    "seed",
    "comep_grid",
    "protect_first",
    "protect_last",
    "laco_span",
    "laco_interval",
    "laco_threshold",
];

impl PruneConfig {
    /// The method this config runs, with exactly the settings it reads.
    pub fn spec(&self) -> MethodSpec {
        let channels = Channels {
            sensitivity: self.sensitivity,
            norm: self.norm,
            gqa_mapping: self.gqa_mapping,
            seed: self.seed,
        };
        let protect = Protect {
            first: self.protect_first,
            last: self.protect_last,
        };
        match self.method {
            Method::Come => MethodSpec::Come {
                op: match self.merge {
                    MergeOp::Concat => PairOp::Concat(channels),
                    MergeOp::Linear => PairOp::Linear,
                    MergeOp::LinearBi => PairOp::LinearBi,
                    MergeOp::Drop => PairOp::Drop,
                },
                pair_score: self.pair_score,
                share: self.share,
                no_repeat: self.no_repeat,
            },
            Method::ComeP => MethodSpec::ComeP {
                channels,
                grid: self.comep_grid,
                no_repeat: self.no_repeat,
            },
            Method::ShortGpt => MethodSpec::ShortGpt,
            Method::Sleb => MethodSpec::Sleb,
            Method::Reverse => MethodSpec::Reverse,
            Method::Magnitude => MethodSpec::Magnitude,
            Method::MagnitudePlus => MethodSpec::MagnitudePlus(protect),
            Method::Taylor => MethodSpec::Taylor,
            Method::TaylorPlus => MethodSpec::TaylorPlus(protect),
            Method::Laco => MethodSpec::Laco(Laco {
                span: self.laco_span,
                interval: self.laco_interval,
                threshold: self.laco_threshold,
            }),
            Method::Mka => MethodSpec::Mka {
                no_repeat: self.no_repeat,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hashing::Identity;
    use serde_json::{json, Value};

    /// A value away from the default for each method-specific key.
    fn other_value(key: &str, now: &Value) -> Value {
        match key {
            "merge" if now == "drop" => json!("linear"),
            "merge" => json!("drop"),
            "pair_score" => json!("nll"),
            "share" => json!({ "power": 2.0 }),
            "no_repeat" => json!(false),
            "sensitivity" => json!("random"),
            "norm" => json!("fold"),
            "gqa_mapping" => json!("reference"),
            "seed" => json!(9),
            "comep_grid" => json!(7),
            "protect_first" | "protect_last" => json!(1),
            "laco_span" | "laco_interval" => json!(3),
            "laco_threshold" => json!(0.5),
            _ => unreachable!("{key}"),
        }
    }

    /// `reads` is what `spec` is built from: for every method (CoMe under every merge),
    /// moving a method-specific key changes the spec exactly when the spec reads it.
    #[test]
    fn a_spec_reads_exactly_the_keys_it_is_built_from() {
        let mut bases = vec![];
        for &method in Method::all() {
            for merge in [
                MergeOp::Concat,
                MergeOp::Linear,
                MergeOp::LinearBi,
                MergeOp::Drop,
            ] {
                bases.push(PruneConfig {
                    method,
                    merge,
                    ..Default::default()
                });
            }
        }
        let keys: Vec<String> = PruneConfig::default()
            .identity()
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| METHOD_KEYS.contains(&k.as_str()))
            .cloned()
            .collect();
        assert_eq!(keys.len(), METHOD_KEYS.len(), "{keys:?}");
        for base in &bases {
            let spec = base.spec();
            assert_eq!(spec.method(), base.method);
            for key in &keys {
                let mut v = serde_json::to_value(base).unwrap();
                let other = other_value(key, &v[key.as_str()]);
                assert_ne!(v[key.as_str()], other, "{key}");
                v[key.as_str()] = other;
                let moved: PruneConfig = serde_json::from_value(v).unwrap();
                assert_eq!(
                    moved.spec() != spec,
                    spec.reads(key),
                    "{} merge={:?}: {key}",
                    base.method.name(),
                    base.merge
                );
            }
        }
    }
}

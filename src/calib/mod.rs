//! Calibration sequences for scoring and CoMe-P's ratio search. The paper's recipe (the
//! default): WikiText-2 train rows shuffled with NumPy's `default_rng(10)` permutation (what
//! Hugging Face `datasets`' `.shuffle(seed=10)` does), the first 256 rows joined with
//! "\n\n", tokenised as one stream without special tokens and cut into every whole
//! 2048-token window. Our shared copy is a 4444-row prefix of WikiText-2 train (the rows the
//! reference run in `../shared/reference/come-smollm2` drew from too); every run records
//! that. Explicit token ids (`ids`) replace the recipe entirely.

pub mod ids_file;

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// How the rows are ordered before the first `nrows` are taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Shuffle {
    /// NumPy's `default_rng(seed).permutation(rows)`: the paper's draw.
    #[default]
    Numpy,
    /// Our seeded Fisher-Yates (splitmix64): runs recorded before the NumPy shuffle existed.
    Splitmix64,
}

impl Shuffle {
    /// Records without the key predate the NumPy shuffle and used splitmix64.
    fn legacy() -> Self {
        Shuffle::Splitmix64
    }
    /// Left out of the serialised form, so hashes of runs made before the key existed
    /// still match.
    fn is_legacy(&self) -> bool {
        *self == Shuffle::Splitmix64
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CalibConfig {
    /// Text file, one row per line (blank lines ignored).
    pub source: Option<PathBuf>,
    /// Rows drawn after the shuffle (reference: 256).
    pub nrows: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Keep at most this many sequences (None: every whole window, as the paper's code).
    pub max_sequences: Option<usize>,
    #[serde(
        default = "Shuffle::legacy",
        skip_serializing_if = "Shuffle::is_legacy"
    )]
    pub shuffle: Shuffle,
    /// Explicit calibration token ids (JSON list of lists, or `.npy`); replaces the text
    /// recipe (source, nrows, seqlen, seed, shuffle are then unused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids: Option<PathBuf>,
    /// sha256 of the `ids` file, filled in by [`CalibConfig::resolve`] so that a run's hash
    /// follows the file's content, not only its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ids_sha256: Option<String>,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            source: None,
            nrows: 256,
            seqlen: 2048,
            seed: 10,
            max_sequences: None,
            shuffle: Shuffle::Numpy,
            ids: None,
            ids_sha256: None,
        }
    }
}

/// Identity v1: every field under its serde name; `shuffle`, `ids` and `ids_sha256` only
/// when set (they came later).
impl crate::hashing::Identity for CalibConfig {
    fn identity(&self) -> serde_json::Value {
        let CalibConfig {
            source,
            nrows,
            seqlen,
            seed,
            max_sequences,
            shuffle,
            ids,
            ids_sha256,
        } = self;
        crate::hashing::Fields::new()
            .leaf("source", source)
            .leaf("nrows", nrows)
            .leaf("seqlen", seqlen)
            .leaf("seed", seed)
            .leaf("max_sequences", max_sequences)
            .opt_in(!shuffle.is_legacy(), "shuffle", shuffle)
            .opt_in(ids.is_some(), "ids", ids)
            .opt_in(ids_sha256.is_some(), "ids_sha256", ids_sha256)
            .done()
    }
}

impl CalibConfig {
    pub fn source_path(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| crate::paths::data_dir().join("calibration/wikitext2_train_5k.txt"))
    }

    /// Ranges that no text or ids file can make right, checked before anything is read.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Invalid(format!("calibration: {m}")));
        if self.ids.is_none() {
            if self.nrows == 0 {
                return bad("`nrows` must be at least 1".into());
            }
            if self.seqlen < 2 {
                return bad(format!(
                    "`seqlen` must be at least 2 tokens, got {}",
                    self.seqlen
                ));
            }
        }
        if self.max_sequences == Some(0) {
            return bad(
                "`max_sequences` must be at least 1 (leave it out for every window)".into(),
            );
        }
        Ok(())
    }

    /// Record the content hash of an `ids` file (an error when it cannot be read).
    pub fn resolve(&mut self) -> Result<()> {
        if let Some(p) = &self.ids {
            self.ids_sha256 = Some(crate::hashing::file_sha256(p)?);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CalibSet {
    /// Not recorded (the tokens follow from the config); empty when read back.
    #[serde(skip, default)]
    pub sequences: Vec<Vec<u32>>,
    pub n_sequences: usize,
    pub seqlen: usize,
    pub rows_available: usize,
    pub rows_used: usize,
    pub source: PathBuf,
    pub source_sha256: String,
    /// How the sample was made (shuffle, rows, joining, windows) or which ids file.
    #[serde(default)]
    pub recipe: String,
    /// How this sample differs from the paper's recipe.
    pub deviation: String,
}

impl CalibSet {
    /// A sample of token ids made elsewhere (an ids file, tests, benchmarks): no text rows
    /// behind it. `source` says where the ids come from.
    pub fn from_sequences(sequences: Vec<Vec<u32>>, source: &str) -> CalibSet {
        CalibSet {
            n_sequences: sequences.len(),
            seqlen: sequences.first().map_or(0, Vec::len),
            sequences,
            rows_available: 0,
            rows_used: 0,
            source: source.into(),
            source_sha256: String::new(),
            recipe: format!("explicit token ids from {source}"),
            deviation: "explicit ids: the sample is whatever the source holds".into(),
        }
    }
}

/// Indices (among the non-blank rows of the source, in file order) of the rows the
/// calibration sample draws, in drawing order. Recovery uses it to train on other rows.
/// Empty when the sample comes from an ids file (its rows are unknown).
pub fn drawn_rows(cfg: &CalibConfig, available: usize) -> Vec<usize> {
    if cfg.ids.is_some() {
        return vec![];
    }
    let mut idx = match cfg.shuffle {
        Shuffle::Numpy => crate::rng::numpy::permutation(cfg.seed, available),
        Shuffle::Splitmix64 => {
            let mut idx: Vec<usize> = (0..available).collect();
            SplitMix64::new(cfg.seed).shuffle(&mut idx);
            idx
        }
    };
    idx.truncate(cfg.nrows.max(1));
    idx
}

/// The calibration sample of `cfg` for a model with tokenizer `tok`.
pub fn sample(tok: &Tokenizer, cfg: &CalibConfig) -> Result<CalibSet> {
    match &cfg.ids {
        Some(path) => from_ids(path, tok.vocab_size(), cfg),
        None => from_text(tok, cfg),
    }
}

fn keep(cfg: &CalibConfig, n: usize) -> usize {
    cfg.max_sequences.map_or(n, |m| m.min(n)).max(1)
}

fn from_ids(path: &Path, vocab: usize, cfg: &CalibConfig) -> Result<CalibSet> {
    let sha = crate::hashing::file_sha256(path)?;
    if let Some(want) = &cfg.ids_sha256 {
        if *want != sha {
            return Err(Error::format(
                path,
                format!("the ids file changed since the run was defined (sha256 {want}, now {sha}); redefine the run"),
            ));
        }
    }
    let mut sequences = ids_file::read(path, vocab)?;
    sequences.truncate(keep(cfg, sequences.len()));
    Ok(CalibSet {
        source_sha256: sha,
        ..CalibSet::from_sequences(sequences, &path.display().to_string())
    })
}

fn from_text(tok: &Tokenizer, cfg: &CalibConfig) -> Result<CalibSet> {
    let path = cfg.source_path();
    let bytes = crate::error::read_file(&path)?;
    let sha = crate::hashing::sha256_hex(&bytes);
    let text =
        String::from_utf8(bytes).map_err(|e| Error::format(&path, format!("not UTF-8: {e}")))?;
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let available = all.len();
    if available == 0 {
        return Err(Error::data(&path, 1, "no text rows for calibration"));
    }
    let rows: Vec<&str> = drawn_rows(cfg, available).iter().map(|&i| all[i]).collect();
    // Rows carry their line break, as Hugging Face's WikiText rows do.
    let joined = rows
        .iter()
        .map(|r| format!("{r}\n"))
        .collect::<Vec<_>>()
        .join("\n\n");
    let ids = tok.encode(&joined, false)?;
    let n = ids.len() / cfg.seqlen.max(1);
    if n == 0 || cfg.seqlen == 0 {
        return Err(Error::Invalid(format!(
            "calibration text too short: {} rows of {} give {} tokens, fewer than one sequence of {} (raise nrows or lower seqlen)",
            rows.len(),
            path.display(),
            ids.len(),
            cfg.seqlen
        )));
    }
    let sequences: Vec<Vec<u32>> = ids
        .chunks_exact(cfg.seqlen)
        .take(keep(cfg, n))
        .map(<[u32]>::to_vec)
        .collect();
    let shuffle = match cfg.shuffle {
        Shuffle::Numpy => format!("numpy default_rng({}).permutation", cfg.seed),
        Shuffle::Splitmix64 => format!("splitmix64({}) Fisher-Yates", cfg.seed),
    };
    let deviation = match cfg.shuffle {
        Shuffle::Numpy => format!(
            "rows drawn from a {available}-row WikiText-2 train prefix (the paper: the full train split) with the paper's NumPy permutation"
        ),
        Shuffle::Splitmix64 => format!(
            "rows drawn from a {available}-row WikiText-2 train prefix with our seeded shuffle (splitmix64), not the paper's NumPy permutation over the full train split"
        ),
    };
    Ok(CalibSet {
        n_sequences: sequences.len(),
        sequences,
        seqlen: cfg.seqlen,
        rows_available: available,
        rows_used: rows.len(),
        source: path,
        source_sha256: sha,
        recipe: format!(
            "{shuffle} over {available} non-blank rows; first {} rows + \"\\n\" joined with \"\\n\\n\"; one stream without special tokens; {} of {n} windows of {}",
            rows.len(),
            keep(cfg, n),
            cfg.seqlen
        ),
        deviation,
    })
}

//! Calibration sequences for scoring and CoMe-P's ratio search: rows of a text corpus
//! shuffled with a seed, joined with "\n\n", tokenised as one stream and cut into
//! `seqlen`-token sequences (the reference recipe: 256 WikiText-2 train rows, seed 10,
//! 2048 tokens). Our shared copy is a 4444-paragraph prefix of WikiText-2 train, so the
//! rows drawn differ from the paper's; every run records that deviation.

use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use crate::rng::SplitMix64;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CalibConfig {
    /// Text file, one row per line (blank lines ignored).
    pub source: Option<PathBuf>,
    /// Rows drawn after the shuffle (reference: 256).
    pub nrows: usize,
    pub seqlen: usize,
    pub seed: u64,
    /// Keep at most this many sequences (None: all that the rows yield).
    pub max_sequences: Option<usize>,
}

impl Default for CalibConfig {
    fn default() -> Self {
        CalibConfig {
            source: None,
            nrows: 256,
            seqlen: 2048,
            seed: 10,
            max_sequences: Some(8),
        }
    }
}

impl CalibConfig {
    pub fn source_path(&self) -> PathBuf {
        self.source
            .clone()
            .unwrap_or_else(|| crate::paths::data_dir().join("calibration/wikitext2_train_5k.txt"))
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
    /// How this sample differs from the paper's recipe.
    pub deviation: String,
}

/// Indices (among the non-blank rows of the source, in file order) of the rows the
/// calibration sample draws, in drawing order. Recovery uses it to train on other rows.
pub fn drawn_rows(cfg: &CalibConfig, available: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..available).collect();
    SplitMix64::new(cfg.seed).shuffle(&mut idx);
    idx.truncate(cfg.nrows.max(1));
    idx
}

pub fn sample(tok: &Tokenizer, cfg: &CalibConfig) -> Result<CalibSet> {
    let path = cfg.source_path();
    let bytes = crate::error::read_file(&path)?;
    let sha = hex::encode(Sha256::digest(&bytes));
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
    let keep = cfg.max_sequences.map_or(n, |m| m.min(n)).max(1);
    let sequences: Vec<Vec<u32>> = ids
        .chunks_exact(cfg.seqlen)
        .take(keep)
        .map(<[u32]>::to_vec)
        .collect();
    Ok(CalibSet {
        n_sequences: sequences.len(),
        sequences,
        seqlen: cfg.seqlen,
        rows_available: available,
        rows_used: rows.len(),
        source: path,
        source_sha256: sha,
        deviation: format!(
            "rows drawn from a {available}-row WikiText-2 train prefix with our seeded shuffle (splitmix64), not Python's random.shuffle over the full train split"
        ),
    })
}

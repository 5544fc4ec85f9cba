//! Training and validation sequences for recovery: rows of a text file (or the `text`
//! field of a jsonl file), without the rows the pruning calibration drew when both read the
//! same file, joined with "\n\n" as the calibration does, tokenised as one stream without
//! special tokens and cut into `seqlen`-token sequences. Validation takes the last
//! sequences; training cycles over the rest when the budget asks for more than there is.

use super::config::{RecoveryConfig, Validation};
use super::record::DataRecord;
use crate::calib::CalibConfig;
use crate::error::{Error, Result};
use crate::model::tokenizer::Tokenizer;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

pub struct DataSet {
    pub train: Vec<Vec<i64>>,
    pub val: Vec<Vec<i64>>,
    pub record: DataRecord,
}

impl DataSet {
    /// Identity of the token content (for the teacher-state cache).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for s in self.train.iter().chain(&self.val) {
            for t in s {
                h.update(t.to_le_bytes());
            }
            h.update(b"|");
        }
        hex::encode(h.finalize())
    }
}

fn default_source() -> PathBuf {
    CalibConfig::default().source_path()
}

/// Text rows of `path`: non-blank lines, or the `text` field of each jsonl object.
pub fn read_rows(path: &Path) -> Result<(Vec<String>, String)> {
    let bytes = crate::error::read_file(path)?;
    let sha = crate::hashing::sha256_hex(&bytes);
    let text =
        String::from_utf8(bytes).map_err(|e| Error::format(path, format!("not UTF-8: {e}")))?;
    let jsonl = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "json");
    let mut rows = vec![];
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if jsonl {
            let v: serde_json::Value = serde_json::from_str(line)
                .map_err(|e| Error::data(path, i + 1, format!("not JSON: {e}")))?;
            let t = v.get("text").and_then(|t| t.as_str()).ok_or_else(|| {
                Error::data(path, i + 1, "no string field `text` in this JSON line")
            })?;
            rows.push(t.to_string());
        } else {
            rows.push(line.to_string());
        }
    }
    if rows.is_empty() {
        return Err(Error::data(path, 1, "no text rows for recovery training"));
    }
    Ok((rows, sha))
}

/// Rows at the end of a source that `validation = held_out` keeps for validation.
pub const HELD_OUT_ROWS: usize = 400;

/// Rows of a held-out validation slice shorter than this may repeat in the training text
/// (WikiText headings do); longer ones may not.
const OVERLAP_MIN_CHARS: usize = 40;

/// The row where the held-out slice of a `available`-row source starts.
pub fn held_out_start(path: &Path, available: usize) -> Result<usize> {
    if available < 2 * HELD_OUT_ROWS {
        return Err(Error::data(
            path,
            available,
            format!(
                "{available} text rows: validation = held_out keeps the last {HELD_OUT_ROWS} \
                 and needs at least as many before them to train on"
            ),
        ));
    }
    Ok(available - HELD_OUT_ROWS)
}

/// The last [`HELD_OUT_ROWS`] rows of `path` (the `wikitext2_val` perplexity text).
pub fn held_out_rows(path: &Path) -> Result<Vec<String>> {
    let (mut rows, _) = read_rows(path)?;
    let start = held_out_start(path, rows.len())?;
    Ok(rows.split_off(start))
}

/// Token ids of `rows` joined as the calibration joins them ("\n\n" between rows), as one
/// stream, tokenised in blocks until `want` ids (all rows when fewer).
fn stream(tok: &Tokenizer, rows: &[&String], want: usize) -> Result<Vec<i64>> {
    let mut ids: Vec<i64> = vec![];
    // Blocks: a 7B-scale budget need not tokenise a whole corpus.
    for block in rows.chunks(64) {
        let joined = block
            .iter()
            .map(|r| format!("{r}\n"))
            .collect::<Vec<_>>()
            .join("\n\n");
        let sep = if ids.is_empty() { "" } else { "\n\n" };
        ids.extend(
            tok.encode(&format!("{sep}{joined}"), false)?
                .iter()
                .map(|&t| t as i64),
        );
        if ids.len() >= want {
            break;
        }
    }
    Ok(ids)
}

fn sequences(ids: &[i64], seqlen: usize) -> Vec<Vec<i64>> {
    ids.chunks_exact(seqlen).map(<[i64]>::to_vec).collect()
}

/// A held-out row (long enough to be text, not a heading) that the training rows repeat
/// would put validation text into training.
fn check_disjoint(path: &Path, train: &[&String], val: &[String], first_val: usize) -> Result<()> {
    let seen: std::collections::HashSet<&str> = train.iter().map(|r| r.trim()).collect();
    let shared: Vec<usize> = val
        .iter()
        .enumerate()
        .filter(|(_, r)| r.trim().len() >= OVERLAP_MIN_CHARS && seen.contains(r.trim()))
        .map(|(i, _)| first_val + i + 1)
        .collect();
    match shared.first() {
        None => Ok(()),
        Some(&row) => Err(Error::data(
            path,
            row,
            format!(
                "the held-out validation slice overlaps the training text: {} of its rows \
                 (text row {row} first) also occur among the rows trained on",
                shared.len()
            ),
        )),
    }
}

/// Sequences for `cfg`: enough for `tokens` of training (cycled if short) plus validation.
pub fn load(
    tok: &Tokenizer,
    cfg: &RecoveryConfig,
    calib: Option<&CalibConfig>,
    tokens: usize,
) -> Result<DataSet> {
    let source = cfg.data.clone().unwrap_or_else(default_source);
    let (rows, sha) = read_rows(&source)?;
    let available = rows.len();
    let train_end = match cfg.validation {
        Validation::Tail => available,
        Validation::HeldOut => held_out_start(&source, available)?,
    };
    let mut excluded = vec![false; available];
    if let Some(c) = calib.filter(|c| same_file(&c.source_path(), &source)) {
        for i in crate::calib::drawn_rows(c, available) {
            excluded[i] = true;
        }
    }
    let seqlen = cfg.seqlen;
    let split = Split {
        tok,
        source: &source,
        kept: rows[..train_end]
            .iter()
            .zip(&excluded)
            .filter(|(_, x)| !**x)
            .map(|(r, _)| r)
            .collect(),
        held: &rows[train_end..],
        train_end,
        n_excluded: excluded[..train_end].iter().filter(|x| **x).count(),
        seqlen,
        want_val: cfg.val_tokens.div_ceil(seqlen),
        want_train: tokens.div_ceil(seqlen),
    };
    let (train, val, mut note) = match cfg.validation {
        Validation::Tail => split.tail()?,
        Validation::HeldOut => split.held_out()?,
    };
    if train.len() < split.want_train {
        note += &format!(
            "; the text holds {} training sequences, the budget asks for {}: cycled",
            train.len(),
            split.want_train
        );
    }
    Ok(DataSet {
        record: DataRecord {
            source: source.clone(),
            sha256: sha,
            rows_available: available,
            rows_excluded: split.n_excluded,
            train_sequences: train.len(),
            val_sequences: val.len(),
            seqlen,
            note,
        },
        train,
        val,
    })
}

/// Training rows (calibration rows left out), held-out rows and what the budget asks.
struct Split<'a> {
    tok: &'a Tokenizer,
    source: &'a Path,
    kept: Vec<&'a String>,
    held: &'a [String],
    train_end: usize,
    n_excluded: usize,
    seqlen: usize,
    want_val: usize,
    want_train: usize,
}

/// Training sequences, validation sequences, and a note on where they came from.
type Sequences = (Vec<Vec<i64>>, Vec<Vec<i64>>, String);

impl Split<'_> {
    fn too_short(&self, ids: usize, what: &str, n: usize) -> Error {
        Error::Invalid(format!(
            "{}: {what} give {ids} tokens, fewer than {n} sequences of {} (lower \
             recovery.val_tokens or seqlen, or give more text with recovery.data)",
            self.source.display(),
            self.seqlen
        ))
    }

    /// Validation: the sequences right after the training text in one stream.
    fn tail(&self) -> Result<Sequences> {
        let (seqlen, want_val) = (self.seqlen, self.want_val);
        let ids = stream(self.tok, &self.kept, (want_val + self.want_train) * seqlen)?;
        let seqs = sequences(&ids, seqlen);
        if seqs.len() < want_val + 1 {
            let what = format!("{} rows", self.kept.len());
            return Err(self.too_short(ids.len(), &what, want_val + 1));
        }
        // Validation from the end; training takes no more sequences than the budget needs
        // (teacher states are computed for every sequence kept).
        let split = seqs.len() - want_val;
        let note = format!(
            "rows in file order without the {} rows drawn by the pruning calibration; \
             validation: the {want_val} sequences after the training text",
            self.n_excluded
        );
        let train = seqs[..split.min(self.want_train)].to_vec();
        Ok((train, seqs[split..].to_vec(), note))
    }

    /// Validation: the first sequences of the held-out rows, whatever the budget.
    fn held_out(&self) -> Result<Sequences> {
        let (seqlen, want_val) = (self.seqlen, self.want_val);
        check_disjoint(self.source, &self.kept, self.held, self.train_end)?;
        let held: Vec<&String> = self.held.iter().collect();
        let val_ids = stream(self.tok, &held, want_val * seqlen)?;
        let val: Vec<Vec<i64>> = sequences(&val_ids, seqlen)
            .into_iter()
            .take(want_val)
            .collect();
        if val.len() < want_val {
            let what = format!("the {HELD_OUT_ROWS} held-out rows");
            return Err(self.too_short(val_ids.len(), &what, want_val));
        }
        let ids = stream(self.tok, &self.kept, self.want_train * seqlen)?;
        let train: Vec<Vec<i64>> = sequences(&ids, seqlen)
            .into_iter()
            .take(self.want_train)
            .collect();
        if train.is_empty() {
            let what = format!("{} training rows", self.kept.len());
            return Err(self.too_short(ids.len(), &what, 1));
        }
        let note = format!(
            "rows 1 to {} in file order without the {} rows drawn by the pruning \
             calibration; validation: the first {want_val} sequences of the last \
             {HELD_OUT_ROWS} rows (held out at every budget)",
            self.train_end, self.n_excluded
        );
        Ok((train, val, note))
    }
}

fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// The order in which training sequences are visited: seeded shuffles of all of them,
/// epoch after epoch, the same for every layer of a run so layers stay comparable.
pub fn visit_order(n: usize, count: usize, seed: u64) -> Vec<usize> {
    let mut out = Vec::with_capacity(count);
    let mut rng = crate::rng::SplitMix64::new(seed ^ 0x5eed_d157);
    while out.len() < count {
        let mut epoch: Vec<usize> = (0..n).collect();
        rng.shuffle(&mut epoch);
        out.extend(epoch);
    }
    out.truncate(count);
    out
}

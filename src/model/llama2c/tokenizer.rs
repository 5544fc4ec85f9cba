//! llama2.c's `tokenizer.bin` and the Hugging Face tokenizer that reproduces `run.c`'s
//! encoding (see the parent module's docs).

use super::*;
use std::cmp::Ordering;

/// `run.c` only merges pairs whose piece scores above this (its initial best score).
const MIN_MERGE_SCORE: f32 = -1e10;

/// The pieces of a llama2.c `tokenizer.bin`, as `run.c` reads them.
#[derive(Debug, Clone)]
pub struct Vocab {
    pub max_token_length: u32,
    /// Raw piece bytes (spaces where sentencepiece had `▁`).
    pub pieces: Vec<Vec<u8>>,
    pub scores: Vec<f32>,
}

impl Vocab {
    /// Parse a tokenizer file holding exactly `vocab_size` pieces (the model's count: the
    /// file does not store one, so a mismatch shows as truncation or trailing bytes).
    pub fn parse(bytes: &[u8], vocab_size: usize, path: &Path) -> Result<Vocab> {
        let fail = |msg: String| Error::format(path, msg);
        let mut pos = 0usize;
        let mut take = |n: usize, what: &dyn Fn() -> String| -> Result<&[u8]> {
            let end = pos
                .checked_add(n)
                .filter(|&e| e <= bytes.len())
                .ok_or_else(|| {
                    fail(format!(
                        "truncated at byte {pos} while reading {} (file is {} bytes)",
                        what(),
                        bytes.len()
                    ))
                })?;
            let s = &bytes[pos..end];
            pos = end;
            Ok(s)
        };
        let word = |s: &[u8]| [s[0], s[1], s[2], s[3]];
        let mtl = i32::from_le_bytes(word(take(4, &|| "max_token_length".into())?));
        if mtl <= 0 {
            return Err(fail(format!(
                "max_token_length must be positive, found {mtl}"
            )));
        }
        let mut pieces = Vec::with_capacity(vocab_size);
        let mut scores = Vec::with_capacity(vocab_size);
        for i in 0..vocab_size {
            let ctx = || {
                format!("piece {i} of the {vocab_size} the model's vocab_size asks for (wrong tokenizer for this model?)")
            };
            let score = f32::from_le_bytes(word(take(4, &ctx)?));
            let len = i32::from_le_bytes(word(take(4, &ctx)?));
            if len < 0 || len > mtl {
                return Err(fail(format!(
                    "piece {i} has length {len}, outside 0..={mtl} (max_token_length); corrupt file"
                )));
            }
            let piece = take(len as usize, &ctx)?.to_vec();
            pieces.push(piece);
            scores.push(score);
        }
        if pos != bytes.len() {
            return Err(fail(format!(
                "{} trailing bytes after the {vocab_size} pieces the model's vocab_size asks for \
                 (wrong tokenizer for this model?)",
                bytes.len() - pos
            )));
        }
        Ok(Vocab {
            max_token_length: mtl as u32,
            pieces,
            scores,
        })
    }

    pub fn read(path: &Path, vocab_size: usize) -> Result<Vocab> {
        Vocab::parse(&crate::error::read_file(path)?, vocab_size, path)
    }

    /// Every `(left, right, merged)` id triple where the concatenation of two pieces is a
    /// piece that `run.c` may merge into, in `run.c`'s priority order (higher merged score
    /// first; then by merged id and left length, an arbitrary but fixed order).
    pub fn merge_triples(&self) -> Vec<(u32, u32, u32)> {
        let index: HashMap<&[u8], u32> = self
            .pieces
            .iter()
            .enumerate()
            .map(|(i, p)| (p.as_slice(), i as u32))
            .collect();
        let mut out = vec![];
        for (t, piece) in self.pieces.iter().enumerate() {
            // `run.c` needs score > -1e10; NaN fails that comparison too.
            let mergeable = self.scores[t].partial_cmp(&MIN_MERGE_SCORE) == Some(Ordering::Greater);
            if !mergeable {
                continue;
            }
            for k in 1..piece.len() {
                if let (Some(&a), Some(&b)) = (index.get(&piece[..k]), index.get(&piece[k..])) {
                    out.push((a, b, t as u32));
                }
            }
        }
        out.sort_by(|x, y| {
            let (sx, sy) = (self.scores[x.2 as usize], self.scores[y.2 as usize]);
            sy.total_cmp(&sx).then(x.2.cmp(&y.2)).then(
                self.pieces[x.0 as usize]
                    .len()
                    .cmp(&self.pieces[y.0 as usize].len()),
            )
        });
        out
    }
}

/// Overlapping merge candidates `(a, b)` / `(b, c)` that are different pairs with equal
/// merged scores: the only place where `run.c`'s leftmost-first tie rule and BPE's rank
/// order can pick differently. Returns the `(a, b, c)` id triples.
pub fn tie_hazards(vocab: &Vocab) -> Vec<(u32, u32, u32)> {
    let triples = vocab.merge_triples();
    let mut by_left: HashMap<u32, Vec<(u32, u32)>> = HashMap::new();
    for &(a, b, t) in &triples {
        by_left.entry(a).or_default().push((b, t));
    }
    let mut out = vec![];
    for &(a, b, t) in &triples {
        for &(c, t2) in by_left.get(&b).map(Vec::as_slice).unwrap_or(&[]) {
            let same_score = vocab.scores[t as usize] == vocab.scores[t2 as usize];
            if same_score && (a, b) != (b, c) {
                out.push((a, b, c));
            }
        }
    }
    out
}

const SPECIALS: [&str; 3] = ["<unk>", "<s>", "</s>"];

/// Hugging Face token names: `▁` for spaces, plain `<s>` / `</s>` for BOS / EOS. Checks
/// the layout `run.c` assumes (specials at 0..3, byte pieces `<0xXX>` at byte + 3).
fn hf_names(vocab: &Vocab, path: &Path) -> Result<Vec<String>> {
    let n = vocab.pieces.len();
    if n < 259 {
        return Err(Error::unsupported(
            path,
            format!(
                "{n} pieces; run.c's byte fallback needs at least 3 specials + 256 byte pieces"
            ),
        ));
    }
    let mut names = Vec::with_capacity(n);
    for (i, piece) in vocab.pieces.iter().enumerate() {
        let s = std::str::from_utf8(piece)
            .map_err(|e| Error::format(path, format!("piece {i} is not valid UTF-8: {e}")))?;
        let name = match i {
            0..=2 => {
                let want = SPECIALS[i];
                if s.trim_matches('\n') != want {
                    return Err(Error::unsupported(
                        path,
                        format!("piece {i} is {s:?}; expected {want:?} (sentencepiece order <unk>, <s>, </s>)"),
                    ));
                }
                want.to_string()
            }
            3..=258 => {
                let want = format!("<0x{:02X}>", i - 3);
                if s != want {
                    return Err(Error::unsupported(
                        path,
                        format!("piece {i} is {s:?}; run.c's byte fallback needs {want:?} there"),
                    ));
                }
                want
            }
            _ => {
                if s.contains('▁') {
                    return Err(Error::unsupported(
                        path,
                        format!(
                            "piece {i} ({s:?}) contains U+2581, which the Hugging Face form reserves for spaces"
                        ),
                    ));
                }
                s.replace(' ', "▁")
            }
        };
        names.push(name);
    }
    let mut seen: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.iter().enumerate() {
        if let Some(j) = seen.insert(name.as_str(), i) {
            return Err(Error::format(
                path,
                format!("pieces {j} and {i} are both {name:?}"),
            ));
        }
    }
    if !vocab.pieces.iter().any(|p| p == b" ") {
        return Err(Error::unsupported(
            path,
            "no single-space piece, which run.c uses as the dummy prefix",
        ));
    }
    Ok(names)
}

/// The Hugging Face `tokenizer.json` (as JSON) that encodes and decodes as `run.c` does.
pub fn tokenizer_json(vocab: &Vocab, path: &Path) -> Result<Value> {
    let names = hf_names(vocab, path)?;
    // A merge is only expressible when the Hugging Face names concatenate like the pieces
    // do; that fails only for run.c's "\n<s>\n" / "\n</s>\n", which no text reaches.
    let plain: Vec<bool> = names
        .iter()
        .zip(&vocab.pieces)
        .map(|(n, p)| *n == String::from_utf8_lossy(p).replace(' ', "▁"))
        .collect();
    let renamed = |id: u32| !plain[id as usize];
    let merges: Vec<Value> = vocab
        .merge_triples()
        .into_iter()
        .filter(|&(a, b, t)| !(renamed(a) || renamed(b) || renamed(t)))
        .map(|(a, b, _)| json!([names[a as usize], names[b as usize]]))
        .collect();
    let vocab_map: serde_json::Map<String, Value> = names
        .iter()
        .enumerate()
        .map(|(i, s)| (s.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIALS
        .iter()
        .enumerate()
        .map(|(i, s)| {
            json!({"id": i, "content": s, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    let bos = |type_id: u32| json!({"SpecialToken": {"id": "<s>", "type_id": type_id}});
    let seq = |id: &str, type_id: u32| json!({"Sequence": {"id": id, "type_id": type_id}});
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}
        ]},
        "pre_tokenizer": null,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [bos(0), seq("A", 0)],
            "pair": [bos(0), seq("A", 0), bos(1), seq("B", 1)],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "▁"}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}
        ]},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": "<unk>",
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab_map,
            "merges": merges
        }
    }))
}

/// The `tokenizers` tokenizer equivalent to `run.c`'s encode/decode (see the module doc).
pub fn build_tokenizer(vocab: &Vocab, path: &Path) -> Result<tokenizers::Tokenizer> {
    let v = tokenizer_json(vocab, path)?;
    let text = serde_json::to_string(&v).map_err(|e| Error::tokenizer(path, e))?;
    text.parse::<tokenizers::Tokenizer>()
        .map_err(|e| Error::tokenizer(path, format!("building the tokenizer: {e}")))
}

//! Importer for Karpathy's llama2.c legacy checkpoints (`model.bin` + `tokenizer.bin`),
//! producing a standard Hugging Face LLaMA checkpoint.
//!
//! The model file is seven little-endian i32s (dim, hidden_dim, n_layers, n_heads,
//! n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate classifier)
//! followed by f32 tensors in the order `run.c` reads them. llama2.c rotates interleaved
//! pairs `(2i, 2i+1)` of each head; Hugging Face rotates `(i, i + head_dim/2)`, so the rows
//! of `wq` and `wk` are reordered per head. Both use the frequency `10000^(-2i/head_dim)`
//! for pair `i`, which is what `rope_theta = 10000` gives in transformers.
//!
//! The tokenizer file is an i32 `max_token_length`, then per piece an f32 score, an i32
//! byte length and the bytes; it has no piece count, the model's vocab_size supplies it.
//! llama2.c stores sentencepiece's `▁` as a plain space and BOS/EOS as `"\n<s>\n"` /
//! `"\n</s>\n"`; the Hugging Face vocabulary maps both back.
//!
//! How the Hugging Face tokenizer reproduces `run.c`'s `encode`:
//! - `run.c` prepends one space token when the text is non-empty, then looks up every
//!   codepoint (falling back to one token per UTF-8 byte, id = byte + 3), then repeatedly
//!   merges the adjacent pair whose concatenation is a piece with the highest score,
//!   leftmost on ties. Here: normalizer `Prepend("▁")` (a no-op on empty text, like
//!   `run.c`) then `Replace(" ", "▁")`, no pre-tokenizer (the whole text is one word, as in
//!   `run.c`), BPE with byte fallback and one merge per way of splitting a piece into two
//!   pieces, ranked by the merged piece's score. Merges whose parts never occur in practice
//!   are harmless: `run.c` would consider them too.
//! - We use the legacy `Prepend` normalizer rather than a `Metaspace` pre-tokenizer because
//!   `Metaspace` skips the prefix when the text already starts with a space, and `run.c`
//!   does not (it encodes `" a"` as `"▁▁a"`). For the same reason `tokenizer_config.json`
//!   names the generic `PreTrainedTokenizerFast`, which loads `tokenizer.json` as written:
//!   transformers 5's `LlamaTokenizer` rebuilds the pipeline with `Metaspace` and then
//!   disagrees with `run.c` on every text that starts with a space.
//! - Ties: `run.c` breaks equal scores by position, BPE by merge rank (then position).
//!   They can only disagree when two overlapping candidate pairs are different pairs with
//!   the same score; [`tie_hazards`] counts such triples (none in stories260K's tok512).
//!
//! Residual differences, all on text `run.c`'s vocabularies never see in practice:
//! - The literal strings `<unk>`, `<s>`, `</s>` in the input are read as the special
//!   tokens (as every Hugging Face LLaMA tokenizer does); `run.c` spells them out as text.
//! - A literal `▁` (U+2581) in the input is the space piece here; `run.c` has no `▁`
//!   piece and falls back to its three UTF-8 bytes.
//! - Decoding: `run.c` strips the leading space of every piece that follows a BOS; the
//!   Hugging Face decoder (with `skip_special_tokens`) strips one leading space of the
//!   whole text. They agree for the usual shape, one BOS followed by text.

use super::import::ImportedCheckpoint;
use crate::error::{Error, Result};
use serde_json::{json, Value};
use std::cmp::Ordering;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tch::{Kind, Tensor};

/// Bytes of the model file header: seven i32.
pub const HEADER_BYTES: u64 = 28;

/// `run.c` only merges pairs whose piece scores above this (its initial best score).
const MIN_MERGE_SCORE: f32 = -1e10;

/// First bytes of llama2.c's newer export versions (`"ak42"` little-endian), which this
/// importer does not read.
const AK42_MAGIC: u32 = 0x616b_3432;

/// The validated header of a llama2.c legacy model file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub dim: i64,
    pub hidden_dim: i64,
    pub n_layers: i64,
    pub n_heads: i64,
    pub n_kv_heads: i64,
    /// Always positive here; the sign in the file is `shared_classifier`.
    pub vocab_size: i64,
    pub seq_len: i64,
    /// The output classifier is the token embedding (positive vocab_size in the file).
    pub shared_classifier: bool,
}

impl Header {
    pub fn head_size(&self) -> i64 {
        self.dim / self.n_heads
    }

    pub fn kv_dim(&self) -> i64 {
        self.head_size() * self.n_kv_heads
    }

    /// The tensors of the file in `run.c` order: llama2.c name and shape. `freq_cis_*`
    /// are `[seq_len, head_size / 2]`; `wcls` is present only without a shared classifier.
    pub fn layout(&self) -> Vec<(&'static str, Vec<i64>)> {
        let (d, h, l, kv) = (self.dim, self.hidden_dim, self.n_layers, self.kv_dim());
        let mut v = vec![
            ("token_embedding_table", vec![self.vocab_size, d]),
            ("rms_att_weight", vec![l, d]),
            ("wq", vec![l, d, d]),
            ("wk", vec![l, kv, d]),
            ("wv", vec![l, kv, d]),
            ("wo", vec![l, d, d]),
            ("rms_ffn_weight", vec![l, d]),
            ("w1", vec![l, h, d]),
            ("w2", vec![l, d, h]),
            ("w3", vec![l, h, d]),
            ("rms_final_weight", vec![d]),
            ("freq_cis_real", vec![self.seq_len, self.head_size() / 2]),
            ("freq_cis_imag", vec![self.seq_len, self.head_size() / 2]),
        ];
        if !self.shared_classifier {
            v.push(("wcls", vec![self.vocab_size, d]));
        }
        v
    }

    /// The exact size of a file with this header, or `None` if it does not fit in u64.
    pub fn expected_file_bytes(&self) -> Option<u64> {
        let mut floats: u64 = 0;
        for (_, shape) in self.layout() {
            let n = shape
                .iter()
                .try_fold(1u64, |acc, &d| acc.checked_mul(u64::try_from(d).ok()?))?;
            floats = floats.checked_add(n)?;
        }
        floats.checked_mul(4)?.checked_add(HEADER_BYTES)
    }

    /// Parse and validate the header from the first bytes of a file of `file_len` bytes.
    pub fn parse(bytes: &[u8], file_len: u64, path: &Path) -> Result<Header> {
        let fail = |msg: String| Error::format(path, msg);
        if bytes.len() < HEADER_BYTES as usize || file_len < HEADER_BYTES {
            return Err(fail(format!(
                "truncated: {file_len} bytes, shorter than the {HEADER_BYTES}-byte llama2.c header"
            )));
        }
        let mut f = [0i32; 7];
        for (i, v) in f.iter_mut().enumerate() {
            let mut b = [0u8; 4];
            b.copy_from_slice(&bytes[4 * i..4 * i + 4]);
            *v = i32::from_le_bytes(b);
        }
        if f[0] as u32 == AK42_MAGIC {
            return Err(Error::unsupported(
                path,
                "llama2.c version 1/2 export (magic \"ak42\"); only the legacy format is read \
                 (export with `--version 0`)",
            ));
        }
        let names = [
            "dim",
            "hidden_dim",
            "n_layers",
            "n_heads",
            "n_kv_heads",
            "vocab_size",
            "seq_len",
        ];
        for (name, &v) in names.iter().zip(f.iter()) {
            let ok = if *name == "vocab_size" { v != 0 } else { v > 0 };
            if !ok {
                let want = if *name == "vocab_size" {
                    "non-zero"
                } else {
                    "positive"
                };
                return Err(fail(format!(
                    "header field `{name}` must be {want}, found {v} (header: {f:?}); not a llama2.c checkpoint?"
                )));
            }
        }
        let h = Header {
            dim: f[0] as i64,
            hidden_dim: f[1] as i64,
            n_layers: f[2] as i64,
            n_heads: f[3] as i64,
            n_kv_heads: f[4] as i64,
            vocab_size: (f[5] as i64).abs(),
            seq_len: f[6] as i64,
            shared_classifier: f[5] > 0,
        };
        if h.n_heads % h.n_kv_heads != 0 {
            return Err(fail(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                h.n_heads, h.n_kv_heads
            )));
        }
        if h.dim % h.n_heads != 0 {
            return Err(fail(format!(
                "dim ({}) must be a multiple of n_heads ({})",
                h.dim, h.n_heads
            )));
        }
        if h.head_size() % 2 != 0 {
            return Err(fail(format!(
                "head size dim / n_heads = {} must be even for rotary embeddings",
                h.head_size()
            )));
        }
        let expected = h.expected_file_bytes().ok_or_else(|| {
            fail(format!(
                "header {f:?} implies a file larger than 2^64 bytes; not a llama2.c checkpoint?"
            ))
        })?;
        if file_len != expected {
            let classifier = if h.shared_classifier {
                "shared"
            } else {
                "separate"
            };
            let what = if file_len < expected {
                format!("truncated by {} bytes", expected - file_len)
            } else {
                format!("{} unexpected trailing bytes", file_len - expected)
            };
            let other = Header {
                shared_classifier: !h.shared_classifier,
                ..h
            };
            let hint = if other.expected_file_bytes() == Some(file_len) {
                " (that is the size with the other classifier setting: is the sign of vocab_size wrong?)"
            } else {
                ""
            };
            return Err(fail(format!(
                "expected exactly {expected} bytes for dim {}, hidden_dim {}, {} layers, {} heads, \
                 {} kv heads, vocab {} ({classifier} classifier), seq_len {}; found {file_len}: {what}{hint}",
                h.dim, h.hidden_dim, h.n_layers, h.n_heads, h.n_kv_heads, h.vocab_size, h.seq_len
            )));
        }
        Ok(h)
    }

    /// Read and validate the header of `path`, including the exact file size.
    pub fn read(path: &Path) -> Result<Header> {
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let mut buf = Vec::with_capacity(HEADER_BYTES as usize);
        (&mut file)
            .take(HEADER_BYTES)
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(path, e))?;
        Header::parse(&buf, len, path)
    }
}

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

/// Reorder the rows of a q or k projection `[n_heads * head_size, in]` from llama2.c's
/// interleaved rotary layout (row `2i + j` of a head) to Hugging Face's rotate-half layout
/// (row `j * head_size / 2 + i`).
pub fn interleaved_to_rotate_half(w: &Tensor, n_heads: i64) -> Result<Tensor> {
    let (rows, cols) = w.size2()?;
    if n_heads <= 0 || rows % n_heads != 0 || (rows / n_heads) % 2 != 0 {
        return Err(Error::Invalid(format!(
            "cannot split {rows} rows into {n_heads} heads of even size"
        )));
    }
    let half = rows / n_heads / 2;
    Ok(w.f_reshape([n_heads, half, 2, cols])?
        .f_transpose(1, 2)?
        .f_reshape([rows, cols])?
        .f_contiguous()?)
}

/// Sequential reader of the f32 tensors after the header.
struct Weights<'a> {
    reader: std::io::BufReader<std::fs::File>,
    path: &'a Path,
    buf: Vec<u8>,
}

impl Weights<'_> {
    fn next(&mut self, shape: &[i64]) -> Result<Tensor> {
        let n: usize = shape.iter().map(|&d| d as usize).product();
        // Convert through a bounded buffer so a large checkpoint is not held twice as bytes.
        const CHUNK_FLOATS: usize = 1 << 22;
        let mut floats: Vec<f32> = Vec::with_capacity(n);
        while floats.len() < n {
            let m = (n - floats.len()).min(CHUNK_FLOATS);
            self.buf.resize(m * 4, 0);
            self.reader
                .read_exact(&mut self.buf)
                .map_err(|e| Error::io(self.path, e))?;
            floats.extend(
                self.buf
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
            );
        }
        Ok(Tensor::from_slice(&floats).f_reshape(shape)?)
    }
}

fn config_json(h: &Header) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h.dim,
        "intermediate_size": h.hidden_dim,
        "num_hidden_layers": h.n_layers,
        "num_attention_heads": h.n_heads,
        "num_key_value_heads": h.n_kv_heads,
        "head_dim": h.head_size(),
        "vocab_size": h.vocab_size,
        "max_position_embeddings": h.seq_len,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "rope_scaling": null,
        "attention_bias": false,
        "attention_dropout": 0.0,
        "mlp_bias": false,
        "initializer_range": 0.02,
        "pretraining_tp": 1,
        "tie_word_embeddings": h.shared_classifier,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": null,
        "use_cache": true,
        "torch_dtype": "float32"
    })
}

fn tokenizer_config_json(h: &Header) -> Value {
    let special = |s: &str| {
        json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false,
               "single_word": false, "special": true})
    };
    json!({
        "add_bos_token": true,
        "add_eos_token": false,
        "added_tokens_decoder": {"0": special("<unk>"), "1": special("<s>"), "2": special("</s>")},
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": null,
        "clean_up_tokenization_spaces": false,
        "legacy": true,
        "model_max_length": h.seq_len,
        "spaces_between_special_tokens": false,
        "use_default_system_prompt": false,
        // Not LlamaTokenizer: see the module doc.
        "tokenizer_class": "PreTrainedTokenizerFast"
    })
}

fn special_tokens_map_json() -> Value {
    let tok = |s: &str| json!({"content": s, "lstrip": false, "normalized": false, "rstrip": false, "single_word": false});
    json!({"bos_token": tok("<s>"), "eos_token": tok("</s>"), "unk_token": tok("<unk>")})
}

/// Import a llama2.c legacy checkpoint and its tokenizer as a Hugging Face checkpoint
/// (write it with [`super::import::write_checkpoint`]).
pub fn import(model: &Path, tokenizer: &Path) -> Result<ImportedCheckpoint> {
    let h = Header::read(model)?;
    let vocab = Vocab::read(tokenizer, h.vocab_size as usize)?;
    let tok = build_tokenizer(&vocab, tokenizer)?;

    let file = std::fs::File::open(model).map_err(|e| Error::io(model, e))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    reader
        .seek(SeekFrom::Start(HEADER_BYTES))
        .map_err(|e| Error::io(model, e))?;
    let mut w = Weights {
        reader,
        path: model,
        buf: vec![],
    };
    let mut raw: HashMap<&'static str, Tensor> = HashMap::new();
    for (name, shape) in h.layout() {
        raw.insert(name, w.next(&shape)?);
    }
    let mut take = |name: &str| -> Result<Tensor> {
        raw.remove(name)
            .ok_or_else(|| Error::Invalid(format!("llama2c layout lacks `{name}`")))
    };
    let embed = take("token_embedding_table")?;
    let (rms_att, wq, wk, wv, wo) = (
        take("rms_att_weight")?,
        take("wq")?,
        take("wk")?,
        take("wv")?,
        take("wo")?,
    );
    let (rms_ffn, w1, w2, w3) = (
        take("rms_ffn_weight")?,
        take("w1")?,
        take("w2")?,
        take("w3")?,
    );
    let norm = take("rms_final_weight")?;

    let mut tensors = vec![("model.embed_tokens.weight".to_string(), embed)];
    for l in 0..h.n_layers {
        let p = format!("model.layers.{l}.");
        let at = |t: &Tensor| t.f_select(0, l).and_then(|x| x.f_contiguous());
        tensors.push((format!("{p}input_layernorm.weight"), at(&rms_att)?));
        let q = interleaved_to_rotate_half(&at(&wq)?, h.n_heads)?;
        let k = interleaved_to_rotate_half(&at(&wk)?, h.n_kv_heads)?;
        tensors.push((format!("{p}self_attn.q_proj.weight"), q));
        tensors.push((format!("{p}self_attn.k_proj.weight"), k));
        tensors.push((format!("{p}self_attn.v_proj.weight"), at(&wv)?));
        tensors.push((format!("{p}self_attn.o_proj.weight"), at(&wo)?));
        tensors.push((format!("{p}post_attention_layernorm.weight"), at(&rms_ffn)?));
        tensors.push((format!("{p}mlp.gate_proj.weight"), at(&w1)?));
        tensors.push((format!("{p}mlp.up_proj.weight"), at(&w3)?));
        tensors.push((format!("{p}mlp.down_proj.weight"), at(&w2)?));
    }
    tensors.push(("model.norm.weight".to_string(), norm));
    if !h.shared_classifier {
        tensors.push(("lm_head.weight".to_string(), take("wcls")?));
    }
    debug_assert!(tensors.iter().all(|(_, t)| t.kind() == Kind::Float));

    Ok(ImportedCheckpoint {
        config: config_json(&h),
        tensors,
        tokenizer: tok,
        tokenizer_config: tokenizer_config_json(&h),
        special_tokens_map: Some(special_tokens_map_json()),
        // run.c ends generation when the model emits BOS (stories are BOS-delimited), so
        // generation stops on BOS as well as EOS.
        generation_config: Some(json!({
            "_from_model_config": true,
            "bos_token_id": 1,
            "eos_token_id": [2, 1]
        })),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn p() -> PathBuf {
        PathBuf::from("model.bin")
    }

    fn header_bytes(f: [i32; 7]) -> Vec<u8> {
        f.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    /// llama2.c's RoPE: rotate pairs (2i, 2i+1) of each head by pos * 10000^(-2i/hs).
    fn rope_interleaved(x: &[f32], hs: usize, pos: f32) -> Vec<f32> {
        let mut y = x.to_vec();
        for i in (0..x.len()).step_by(2) {
            let d = (i % hs) as f32;
            let freq = 1.0 / 10000f32.powf(d / hs as f32);
            let (c, s) = ((pos * freq).cos(), (pos * freq).sin());
            y[i] = x[i] * c - x[i + 1] * s;
            y[i + 1] = x[i] * s + x[i + 1] * c;
        }
        y
    }

    /// transformers' RoPE: x * cos + rotate_half(x) * sin per head, theta 10000.
    fn rope_rotate_half(x: &[f32], hs: usize, pos: f32) -> Vec<f32> {
        let mut y = x.to_vec();
        let half = hs / 2;
        for head in x.chunks(hs).enumerate() {
            let (hd, v) = head;
            for i in 0..half {
                let inv_freq = 1.0 / 10000f32.powf((2 * i) as f32 / hs as f32);
                let (c, s) = ((pos * inv_freq).cos(), (pos * inv_freq).sin());
                y[hd * hs + i] = v[i] * c - v[i + half] * s;
                y[hd * hs + i + half] = v[i + half] * c + v[i] * s;
            }
        }
        y
    }

    fn permute_vec(x: &[f32], n_heads: i64) -> Vec<f32> {
        let t = Tensor::from_slice(x).view([x.len() as i64, 1]);
        let out = interleaved_to_rotate_half(&t, n_heads).unwrap();
        Vec::<f32>::try_from(out.view([-1])).unwrap()
    }

    #[test]
    fn permutation_turns_interleaved_rope_into_rotate_half() {
        let (n_heads, hs) = (3i64, 8usize);
        let x: Vec<f32> = (0..n_heads as usize * hs)
            .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.3 + 0.01 * i as f32)
            .collect();
        for pos in [0.0f32, 1.0, 7.0, 123.0] {
            let want = permute_vec(&rope_interleaved(&x, hs, pos), n_heads);
            let got = rope_rotate_half(&permute_vec(&x, n_heads), hs, pos);
            for (a, b) in want.iter().zip(&got) {
                assert!((a - b).abs() < 1e-5, "pos {pos}: {want:?} vs {got:?}");
            }
        }
        // And the permutation is not the identity (the test would pass vacuously).
        assert_ne!(permute_vec(&x, n_heads), x);
    }

    #[test]
    fn permutation_rejects_odd_heads() {
        let t = Tensor::zeros([6, 2], (Kind::Float, tch::Device::Cpu));
        assert!(interleaved_to_rotate_half(&t, 2).is_err());
        assert!(interleaved_to_rotate_half(&t, 4).is_err());
        assert!(interleaved_to_rotate_half(&t, 0).is_err());
    }

    #[test]
    fn header_size_of_stories260k() {
        let h =
            Header::parse(&header_bytes([64, 172, 5, 8, 4, 512, 512]), 1_056_540, &p()).unwrap();
        assert!(h.shared_classifier);
        assert_eq!((h.head_size(), h.kv_dim()), (8, 32));
        assert_eq!(h.expected_file_bytes(), Some(1_056_540));
        let unshared = Header::parse(
            &header_bytes([64, 172, 5, 8, 4, -512, 512]),
            1_056_540 + 512 * 64 * 4,
            &p(),
        )
        .unwrap();
        assert!(!unshared.shared_classifier);
        assert_eq!(unshared.vocab_size, 512);
    }

    #[test]
    fn header_rejects_bad_values() {
        let cases: &[([i32; 7], &str)] = &[
            ([0, 172, 5, 8, 4, 512, 512], "`dim` must be positive"),
            ([64, -1, 5, 8, 4, 512, 512], "`hidden_dim` must be positive"),
            ([64, 172, 0, 8, 4, 512, 512], "`n_layers`"),
            ([64, 172, 5, 8, 0, 512, 512], "`n_kv_heads`"),
            ([64, 172, 5, 8, 4, 0, 512], "`vocab_size` must be non-zero"),
            ([64, 172, 5, 8, 4, 512, -5], "`seq_len`"),
            ([64, 172, 5, 8, 3, 512, 512], "multiple of n_kv_heads"),
            ([64, 172, 5, 6, 3, 512, 512], "multiple of n_heads"),
            ([64, 172, 5, 9, 3, 512, 512], "multiple of n_heads"),
            ([72, 172, 5, 8, 4, 512, 512], "must be even"),
            (
                [1 << 30, i32::MAX, i32::MAX, 2, 1, i32::MAX, i32::MAX],
                "larger than 2^64",
            ),
        ];
        for (f, want) in cases {
            let e = Header::parse(&header_bytes(*f), 1_056_540, &p()).unwrap_err();
            let msg = e.to_string();
            assert!(matches!(e, Error::Format { .. }), "{msg}");
            assert!(
                msg.contains(want) && msg.contains("model.bin"),
                "{f:?}: {msg}"
            );
        }
    }

    #[test]
    fn header_reports_size_mismatch() {
        let b = header_bytes([64, 172, 5, 8, 4, 512, 512]);
        let msg = Header::parse(&b, 1_056_540 - 10, &p())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("truncated by 10 bytes"), "{msg}");
        let msg = Header::parse(&b, 1_056_540 + 3, &p())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("3 unexpected trailing bytes"), "{msg}");
        let msg = Header::parse(&b, 1_056_540 + 512 * 64 * 4, &p())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("sign of vocab_size"), "{msg}");
        let msg = Header::parse(&b[..10], 10, &p()).unwrap_err().to_string();
        assert!(msg.contains("shorter than the 28-byte"), "{msg}");
        let magic = header_bytes([AK42_MAGIC as i32, 2, 64, 172, 5, 8, 4]);
        let e = Header::parse(&magic, 1000, &p()).unwrap_err();
        assert!(matches!(e, Error::Unsupported { .. }), "{e}");
    }

    fn tiny_vocab_bytes(extra: &[(&str, f32)]) -> (Vec<u8>, usize) {
        let mut pieces: Vec<(String, f32)> = vec![
            ("<unk>".into(), 0.0),
            ("\n<s>\n".into(), 0.0),
            ("\n</s>\n".into(), 0.0),
        ];
        pieces.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0)));
        pieces.extend(extra.iter().map(|(s, f)| (s.to_string(), *f)));
        let mtl = pieces.iter().map(|(s, _)| s.len()).max().unwrap() as i32;
        let mut out = mtl.to_le_bytes().to_vec();
        for (s, f) in &pieces {
            out.extend(f.to_le_bytes());
            out.extend((s.len() as i32).to_le_bytes());
            out.extend(s.as_bytes());
        }
        (out, pieces.len())
    }

    #[test]
    fn vocab_parse_errors_name_the_problem() {
        let (b, n) = tiny_vocab_bytes(&[(" ", -1.0), ("a", -2.0)]);
        let t = PathBuf::from("tok.bin");
        assert!(Vocab::parse(&b, n, &t).is_ok());
        let msg = Vocab::parse(&b, n + 1, &t).unwrap_err().to_string();
        assert!(
            msg.contains("tok.bin") && msg.contains("truncated") && msg.contains("piece 261"),
            "{msg}"
        );
        let msg = Vocab::parse(&b, n - 1, &t).unwrap_err().to_string();
        assert!(msg.contains("trailing bytes"), "{msg}");
        for cut in [0, 3, 5, 11, b.len() - 1] {
            let e = Vocab::parse(&b[..cut], n, &t).unwrap_err();
            assert!(matches!(e, Error::Format { .. }), "{e}");
        }
        // A corrupt length: negative, and larger than max_token_length.
        let mut bad = b.clone();
        bad[8..12].copy_from_slice(&(-4i32).to_le_bytes());
        assert!(Vocab::parse(&bad, n, &t)
            .unwrap_err()
            .to_string()
            .contains("length -4"));
        bad[8..12].copy_from_slice(&1_000_000i32.to_le_bytes());
        assert!(Vocab::parse(&bad, n, &t)
            .unwrap_err()
            .to_string()
            .contains("length 1000000"));
        let mut bad = b.clone();
        bad[0..4].copy_from_slice(&0i32.to_le_bytes());
        assert!(Vocab::parse(&bad, n, &t)
            .unwrap_err()
            .to_string()
            .contains("max_token_length"));
    }

    #[test]
    fn merges_follow_scores_and_skip_unmergeable() {
        let extra = [
            (" ", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("ab", -5.0),
            (" a", -4.0),
            (" ab", -9.0),
            ("ba", -1e11),
        ];
        let (b, n) = tiny_vocab_bytes(&extra);
        let v = Vocab::parse(&b, n, Path::new("t")).unwrap();
        let names: Vec<(String, String)> = v
            .merge_triples()
            .iter()
            .map(|&(a, b, _)| {
                let s = |i: u32| String::from_utf8(v.pieces[i as usize].clone()).unwrap();
                (s(a), s(b))
            })
            .collect();
        // " a" (-4) before "ab" (-5) before " ab" (-9, two splits); "ba" is below run.c's floor.
        let want = [(" ", "a"), ("a", "b"), (" ", "ab"), (" a", "b")];
        let want: Vec<(String, String)> = want
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect();
        assert_eq!(names, want);
        assert!(tie_hazards(&v).is_empty());
        let tok = build_tokenizer(&v, Path::new("t")).unwrap();
        let enc = tok.encode(" ab", false).unwrap();
        assert_eq!(enc.get_tokens(), ["▁", "▁ab"]);
    }

    #[test]
    fn tie_hazard_is_found() {
        // "aba" = "ab" + "a" = "a" + "ba": on "ab a ba" run.c merges the left pair first,
        // BPE whichever split ranks first.
        let extra = [
            (" ", -1.0),
            ("a", -2.0),
            ("b", -3.0),
            ("ab", -4.0),
            ("ba", -5.0),
            ("aba", -6.0),
        ];
        let (b, n) = tiny_vocab_bytes(&extra);
        let v = Vocab::parse(&b, n, Path::new("t")).unwrap();
        let id = |s: &str| v.pieces.iter().position(|p| p == s.as_bytes()).unwrap() as u32;
        assert!(tie_hazards(&v).contains(&(id("ab"), id("a"), id("ba"))));
    }

    #[test]
    fn tokenizer_rejects_unexpected_layouts() {
        let (b, n) = tiny_vocab_bytes(&[("a", -1.0)]);
        let v = Vocab::parse(&b, n, Path::new("t")).unwrap();
        let msg = build_tokenizer(&v, Path::new("t")).unwrap_err().to_string();
        assert!(msg.contains("dummy prefix"), "{msg}");
        let (b, n) = tiny_vocab_bytes(&[(" ", -1.0), ("a", -2.0), ("a", -3.0)]);
        let v = Vocab::parse(&b, n, Path::new("t")).unwrap();
        let msg = build_tokenizer(&v, Path::new("t")).unwrap_err().to_string();
        assert!(msg.contains("both \"a\""), "{msg}");
        let (mut b, n) = tiny_vocab_bytes(&[(" ", -1.0)]);
        // Turn piece 3 ("<0x00>") into "<0x0G>".
        let at = b.windows(6).position(|w| w == b"<0x00>").unwrap();
        b[at + 4] = b'G';
        let v = Vocab::parse(&b, n, Path::new("t")).unwrap();
        let msg = build_tokenizer(&v, Path::new("t")).unwrap_err().to_string();
        assert!(msg.contains("byte fallback"), "{msg}");
    }
}

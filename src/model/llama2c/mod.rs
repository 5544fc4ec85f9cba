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
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use tch::{Kind, Tensor};

/// Bytes of the model file header: seven i32.
pub const HEADER_BYTES: u64 = 28;

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
        let f = Header::raw_fields(bytes, file_len, path)?;
        Header::check_field_signs(&f, path)?;
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
        h.check_head_shapes(path)?;
        h.check_file_len(&f, file_len, path)?;
        Ok(h)
    }

    /// The seven raw i32 fields, after checking there are enough bytes and that the file
    /// is not one of llama2.c's newer (`"ak42"`) exports.
    fn raw_fields(bytes: &[u8], file_len: u64, path: &Path) -> Result<[i32; 7]> {
        if bytes.len() < HEADER_BYTES as usize || file_len < HEADER_BYTES {
            return Err(Error::format(
                path,
                format!(
                    "truncated: {file_len} bytes, shorter than the {HEADER_BYTES}-byte llama2.c header"
                ),
            ));
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
        Ok(f)
    }

    /// Every field positive, except `vocab_size` which only must be non-zero (its sign is
    /// the classifier setting); a zero or negative field usually means a file of another
    /// kind.
    fn check_field_signs(f: &[i32; 7], path: &Path) -> Result<()> {
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
                return Err(Error::format(
                    path,
                    format!(
                        "header field `{name}` must be {want}, found {v} (header: {f:?}); not a llama2.c checkpoint?"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The head layout must divide evenly (grouped-query heads, whole heads per `dim`) and
    /// the head size must be even, as rotary embeddings rotate pairs.
    fn check_head_shapes(&self, path: &Path) -> Result<()> {
        let fail = |msg: String| Error::format(path, msg);
        if self.n_heads % self.n_kv_heads != 0 {
            return Err(fail(format!(
                "n_heads ({}) must be a multiple of n_kv_heads ({})",
                self.n_heads, self.n_kv_heads
            )));
        }
        if self.dim % self.n_heads != 0 {
            return Err(fail(format!(
                "dim ({}) must be a multiple of n_heads ({})",
                self.dim, self.n_heads
            )));
        }
        if self.head_size() % 2 != 0 {
            return Err(fail(format!(
                "head size dim / n_heads = {} must be even for rotary embeddings",
                self.head_size()
            )));
        }
        Ok(())
    }

    /// The file (`file_len` bytes) must be exactly the size this header implies: the legacy
    /// format has no other check against truncation or a misread header. `f` is the raw
    /// header, for the message.
    fn check_file_len(&self, f: &[i32; 7], file_len: u64, path: &Path) -> Result<()> {
        let h = self;
        let fail = |msg: String| Error::format(path, msg);
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
                ..*h
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
        Ok(())
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

mod import;
mod tokenizer;

pub use import::{import, interleaved_to_rotate_half};
pub use tokenizer::{build_tokenizer, tie_hazards, tokenizer_json, Vocab};

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

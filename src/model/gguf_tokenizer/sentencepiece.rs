//! llama.cpp's `llama` vocabulary (SentencePiece-style BPE) as a `tokenizers` BPE with
//! byte fallback. The file stores no merges, only a score per token: llama.cpp's tokenizer
//! splits the text into characters and repeatedly joins the adjacent pair whose
//! concatenation is the highest-scoring normal token. A BPE whose merges list holds every
//! such pair, ordered by the score of what it makes, does the same; the two differ only
//! where different pairs make tokens of equal score and overlap, which never happens for
//! the scores our exporter writes (one per token, from the merge order) and is rare in
//! trained SentencePiece vocabularies.

use super::{GgufFile, Result, TOKEN_NORMAL};
use crate::error::Error;
use serde_json::{json, Value};
use std::collections::HashMap;
use tokenizers::Tokenizer;

/// Every `(left, right, merged)` triple of normal tokens whose texts concatenate, in
/// llama.cpp's priority order: higher merged score first, then lower merged id, then the
/// shorter left part (a fixed order for pairs that make the same token, which cannot
/// both be present at once). NaN scores never merge.
fn merge_order(tokens: &[&str], types: &[i64], scores: &[f32]) -> Vec<(u32, u32, u32)> {
    let normal = |i: usize| types[i] == TOKEN_NORMAL;
    let index: HashMap<&str, u32> = tokens
        .iter()
        .enumerate()
        .filter(|&(i, _)| normal(i))
        .map(|(i, t)| (*t, i as u32))
        .collect();
    let mut out = vec![];
    for (t, text) in tokens.iter().enumerate() {
        if !normal(t) || scores[t].is_nan() {
            continue;
        }
        for (k, _) in text.char_indices().skip(1) {
            if let (Some(&a), Some(&b)) = (index.get(&text[..k]), index.get(&text[k..])) {
                out.push((a, b, t as u32));
            }
        }
    }
    out.sort_by(|x, y| {
        let (sx, sy) = (scores[x.2 as usize], scores[y.2 as usize]);
        sy.total_cmp(&sx)
            .then(x.2.cmp(&y.2))
            .then(tokens[x.0 as usize].len().cmp(&tokens[y.0 as usize].len()))
    });
    out
}

/// The scores, one finite-or-NaN f32 per token.
fn scores(g: &GgufFile, n: usize) -> Result<Vec<f32>> {
    let key = "tokenizer.ggml.scores";
    let scores = g
        .get_array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_f64().map(|x| x as f32).ok_or_else(|| {
                Error::format(
                    &g.path,
                    format!("`{key}`[{i}] should be a number, found a {}", v.type_name()),
                )
            })
        })
        .collect::<Result<Vec<f32>>>()?;
    if scores.len() != n {
        return Err(Error::format(
            &g.path,
            format!("{} token scores for {n} tokens", scores.len()),
        ));
    }
    Ok(scores)
}

/// The tokenizer (model, normaliser, decoder; no post-processor or added tokens, which
/// the caller adds as for every vocabulary).
pub(super) fn tokenizer(
    g: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    unk: Option<u32>,
) -> Result<Tokenizer> {
    let scores = scores(g, tokens.len())?;
    // llama.cpp puts a space before the text unless the file says not to.
    let space_prefix = match g.get("tokenizer.ggml.add_space_prefix") {
        None => true,
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::format(
                &g.path,
                format!("`tokenizer.ggml.add_space_prefix` should be a bool, found {v:?}"),
            )
        })?,
    };
    let mut vocab = serde_json::Map::new();
    for (i, t) in tokens.iter().enumerate() {
        if vocab.insert(t.to_string(), json!(i)).is_some() {
            return Err(Error::format(
                &g.path,
                format!("token {t:?} appears twice in the vocabulary (the second is id {i})"),
            ));
        }
    }
    let merges: Vec<Value> = merge_order(tokens, types, &scores)
        .into_iter()
        .map(|(a, b, _)| json!([tokens[a as usize], tokens[b as usize]]))
        .collect();
    let replace = json!({"type": "Replace", "pattern": {"String": " "}, "content": "▁"});
    let normalizer = if space_prefix {
        json!({"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"}, replace]})
    } else {
        replace
    };
    let mut decoders = vec![
        json!({"type": "Replace", "pattern": {"String": "▁"}, "content": " "}),
        json!({"type": "ByteFallback"}),
        json!({"type": "Fuse"}),
    ];
    if space_prefix {
        decoders.push(json!({"type": "Strip", "content": " ", "start": 1, "stop": 0}));
    }
    let tj = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": null,
        "post_processor": null,
        "decoder": {"type": "Sequence", "decoders": decoders},
        "model": {
            "type": "BPE",
            "dropout": null,
            "unk_token": unk.map(|u| tokens[u as usize]),
            "continuing_subword_prefix": null,
            "end_of_word_suffix": null,
            "fuse_unk": true,
            "byte_fallback": true,
            "ignore_merges": false,
            "vocab": vocab,
            "merges": merges
        }
    });
    tj.to_string()
        .parse::<Tokenizer>()
        .map_err(|e| Error::format(&g.path, format!("SentencePiece-style vocabulary: {e}")))
}

#[cfg(test)]
mod tests {
    use super::super::{build, GgufValue};
    use super::*;
    use std::collections::BTreeMap;

    /// A toy LLaMA-layout vocabulary: <unk>, <s>, </s>, 256 byte tokens, then pieces.
    fn gguf(pieces: &[(&str, f32)], extra: Vec<(&str, GgufValue)>) -> GgufFile {
        let s = |v: &str| GgufValue::String(v.into());
        let mut toks: Vec<(String, f32, i32)> = vec![
            ("<unk>".into(), 0.0, 2),
            ("<s>".into(), 0.0, 3),
            ("</s>".into(), 0.0, 3),
        ];
        toks.extend((0..256).map(|b| (format!("<0x{b:02X}>"), 0.0, 6)));
        toks.extend(pieces.iter().map(|(p, sc)| (p.to_string(), *sc, 1)));
        let mut m = BTreeMap::new();
        m.insert("tokenizer.ggml.model".into(), s("llama"));
        let arr = |f: &dyn Fn(&(String, f32, i32)) -> GgufValue| {
            GgufValue::Array(toks.iter().map(f).collect())
        };
        m.insert("tokenizer.ggml.tokens".into(), arr(&|t| s(&t.0)));
        m.insert(
            "tokenizer.ggml.scores".into(),
            arr(&|t| GgufValue::F32(t.1)),
        );
        m.insert(
            "tokenizer.ggml.token_type".into(),
            arr(&|t| GgufValue::I32(t.2)),
        );
        m.insert("tokenizer.ggml.unknown_token_id".into(), GgufValue::U32(0));
        m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(1));
        m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(2));
        m.insert("tokenizer.ggml.add_bos_token".into(), GgufValue::Bool(true));
        super::super::metadata_file("spm.gguf", m, extra)
    }

    // Ids: pieces start at 259.
    const PIECES: &[(&str, f32)] = &[
        ("▁", -1e9),   // 259
        ("a", -1e9),   // 260
        ("b", -1e9),   // 261
        ("ab", -2.0),  // 262
        ("▁a", -1.0),  // 263: outranks ab
        ("▁ab", -3.0), // 264
        ("ba", -0.5),  // 265: the best, when its pair occurs
    ];

    fn ids(g: &GgufFile, text: &str) -> Vec<u32> {
        let t = build(g).unwrap().tokenizer;
        t.encode(text, true).unwrap().get_ids().to_vec()
    }

    #[test]
    fn merges_follow_scores_with_space_prefix_and_byte_fallback() {
        let g = gguf(PIECES, vec![]);
        // "▁ab": ▁+a (-1.0) before a+b (-2.0), then ▁a+b makes ▁ab.
        assert_eq!(ids(&g, "ab"), vec![1, 264]);
        // "▁bab": b+a (-0.5) first, leaving ▁ ba b.
        assert_eq!(ids(&g, "bab"), vec![1, 259, 265, 261]);
        // é is not a piece: its two UTF-8 bytes.
        assert_eq!(ids(&g, "é"), vec![1, 259, 3 + 0xC3, 3 + 0xA9]);
        let t = build(&g).unwrap().tokenizer;
        let enc = t.encode("ab bab é", true).unwrap();
        assert_eq!(t.decode(enc.get_ids(), true).unwrap(), "ab bab é");
    }

    #[test]
    fn without_space_prefix() {
        let g = gguf(
            PIECES,
            vec![("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false))],
        );
        assert_eq!(ids(&g, "ab"), vec![1, 262]);
        let t = build(&g).unwrap().tokenizer;
        assert_eq!(t.decode(&[1, 259, 262], true).unwrap(), " ab");
    }

    #[test]
    fn only_normal_tokens_are_merged() {
        // "<s>" (control) and "<0x41>" (byte) split into normal pieces, yet no merge
        // makes them; "▁<" is normal and is made.
        let pieces = [
            ("<", -1e9),
            ("s>", -1e9),
            ("<0x4", -1e9),
            ("1>", -1e9),
            ("▁", -1e9),
        ];
        let mut p: Vec<(&str, f32)> = pieces.to_vec();
        p.push(("▁<", -4.0));
        let g = gguf(&p, vec![]);
        let v = super::super::Vocabulary::read(&g).unwrap();
        let sc = scores(&g, v.tokens.len()).unwrap();
        let made: Vec<&str> = merge_order(&v.tokens, &v.types, &sc)
            .iter()
            .map(|&(_, _, t)| v.tokens[t as usize])
            .collect();
        assert_eq!(made, vec!["▁<"]);
    }

    #[test]
    fn bad_scores_are_refused() {
        let err = |extra| build(&gguf(PIECES, extra)).err().unwrap().to_string();
        let e = err(vec![(
            "tokenizer.ggml.scores",
            GgufValue::Array(vec![GgufValue::F32(0.0)]),
        )]);
        assert!(e.contains("1 token scores for 266 tokens"), "{e}");
        let mut m = gguf(PIECES, vec![]);
        m.metadata.remove("tokenizer.ggml.scores");
        let e = build(&m).err().unwrap().to_string();
        assert!(
            e.contains("spm.gguf") && e.contains("tokenizer.ggml.scores"),
            "{e}"
        );
        let e = err(vec![("tokenizer.ggml.add_space_prefix", GgufValue::U32(1))]);
        assert!(e.contains("add_space_prefix"), "{e}");
    }
}

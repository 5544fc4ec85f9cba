//! A Hugging Face tokenizer as GGUF metadata (`tokenizer.ggml.*`). Byte-level BPE is
//! written as llama.cpp's `gpt2` vocabulary, the inverse of
//! [`crate::model::gguf_tokenizer`]: llama.cpp does not store the pre-tokenizer, it names
//! it (`tokenizer.ggml.pre`), so it must be one whose name both llama.cpp and our importer
//! know. SentencePiece-style BPE (byte fallback, `▁` for spaces: LLaMA-2, llama2.c) is
//! written as llama.cpp's `llama` vocabulary, with scores in merge order.

use super::GgufValue;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// llama.cpp token types (`llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_UNKNOWN: i32 = 2;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;
const TOKEN_BYTE: i32 = 6;

/// The pre-tokenizer names written (llama.cpp's `tokenizer.ggml.pre`), by the
/// tokenizer.json structure each stands for.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let byte_level_regex = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
            && !v
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    };
    if byte_level_regex(pre) {
        return Some("gpt2");
    }
    // SmolLM: Sequence[Digits(individual_digits), ByteLevel], llama.cpp's "smollm".
    let parts = pre.get("pretokenizers").and_then(Value::as_array)?;
    match parts.as_slice() {
        [digits, bl]
            if digits.get("type").and_then(Value::as_str) == Some("Digits")
                && digits.get("individual_digits").and_then(Value::as_bool) == Some(true)
                && byte_level_regex(bl) =>
        {
            Some("smollm")
        }
        _ => None,
    }
}

/// A special-token entry of tokenizer_config.json: a string or `{"content": ...}`.
fn token_text(v: &Value) -> Option<&str> {
    v.as_str()
        .or_else(|| v.get("content").and_then(Value::as_str))
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.exists() {
        return Ok(None);
    }
    let text = crate::error::read_to_string(path)?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::format(path, format!("not valid JSON: {e}")))
}

/// The two kinds of BPE tokenizer.json that map onto a llama.cpp vocabulary.
enum Flavour {
    /// Byte-level BPE (`gpt2` in llama.cpp) with the named pre-tokenizer.
    ByteLevel(&'static str),
    /// SentencePiece-style BPE with byte fallback (LLaMA-2, llama2.c): llama.cpp's `llama`
    /// vocabulary, which merges by token score.
    SentencePiece,
}

/// Spaces become `▁` with one in front: a normaliser Sequence[Prepend("▁"), Replace(" ",
/// "▁")] (LLaMA-2, llama2.c) or a Metaspace pre-tokenizer (newer conversions).
fn is_sentencepiece_style(tj: &Value) -> bool {
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string);
    let norms: Vec<Option<String>> = tj["normalizer"]["normalizers"]
        .as_array()
        .map(|a| a.iter().map(ty).collect())
        .unwrap_or_default();
    let normaliser = norms.len() == 2
        && norms[0].as_deref() == Some("Prepend")
        && norms[1].as_deref() == Some("Replace")
        && tj["pre_tokenizer"].is_null();
    let metaspace =
        tj["normalizer"].is_null() && ty(&tj["pre_tokenizer"]).as_deref() == Some("Metaspace");
    normaliser || metaspace
}

fn flavour(tj: &Value, path: &Path) -> Result<Flavour> {
    let unsupported = |m: String| Error::unsupported(path, m);
    let model = &tj["model"];
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("?");
    if kind != "BPE" {
        return Err(unsupported(format!(
            "only BPE tokenizers are exported to GGUF; this one is {kind}"
        )));
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        if !is_sentencepiece_style(tj) {
            return Err(unsupported(
                "a byte-fallback BPE tokenizer whose whitespace handling is not SentencePiece's \
                 (Prepend + Replace normaliser, or Metaspace)"
                    .into(),
            ));
        }
        return Ok(Flavour::SentencePiece);
    }
    if !tj["normalizer"].is_null() {
        return Err(unsupported(
            "a byte-level BPE tokenizer with a normalizer".into(),
        ));
    }
    pre_name(&tj["pre_tokenizer"])
        .map(Flavour::ByteLevel)
        .ok_or_else(|| {
            unsupported(format!(
                "pre-tokenizer {} has no llama.cpp name known here (exported: ByteLevel = gpt2, \
             Sequence[Digits(individual), ByteLevel] = smollm)",
                tj["pre_tokenizer"]
            ))
        })
}

/// Merges as "a b" strings.
fn merge_strings(tj: &Value, path: &Path) -> Result<Vec<String>> {
    tj["model"]["merges"]
        .as_array()
        .ok_or_else(|| Error::format(path, "model.merges is not an array"))?
        .iter()
        .map(|m| match (m.as_str(), m.as_array()) {
            (Some(s), _) => Ok(s.to_string()),
            (_, Some(pair)) if pair.len() == 2 && pair.iter().all(Value::is_string) => Ok(format!(
                "{} {}",
                pair[0].as_str().unwrap_or_default(),
                pair[1].as_str().unwrap_or_default()
            )),
            _ => Err(Error::format(
                path,
                format!("merge {m} is neither \"a b\" nor [a, b]"),
            )),
        })
        .collect()
}

/// A token of the tokenizer.json.
#[derive(Debug, Clone)]
struct Token {
    text: String,
    /// None for the model's vocabulary, Some(special) for an added token.
    added: Option<bool>,
}

/// Every token by id (vocabulary and added tokens); ids missing below `vocab_size` are
/// None.
fn token_table(tj: &Value, path: &Path, vocab_size: usize) -> Result<Vec<Option<Token>>> {
    let mut tokens = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, added: Option<bool>| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::format(
                path,
                format!("token id {id} ({text:?}) is beyond the model's vocab_size {vocab_size}"),
            )
        })?;
        *slot = Some(Token {
            text: text.to_string(),
            added,
        });
        Ok(())
    };
    let vocab = tj["model"]["vocab"]
        .as_object()
        .ok_or_else(|| Error::format(path, "model.vocab is not an object"))?;
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::format(path, format!("vocab id of {text:?} is not an integer"))
        })?;
        place(id, text, None)?;
    }
    for t in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(Error::format(
                path,
                format!("added token without id/content: {t}"),
            ));
        };
        place(id, text, Some(t["special"].as_bool().unwrap_or(false)))?;
    }
    Ok(tokens)
}

/// SentencePiece scores from the merge order: llama.cpp merges the adjacent pair whose
/// result has the highest score, and the merges list is in that priority order (HF's
/// conversion of a SentencePiece model, and our llama2.c import, sort it by score), so a
/// token made by merge `r` (its first) scores `-r`. Tokens no merge makes score far
/// below every merge, so they are never preferred to one.
fn scores_from_merges(tokens: &[Option<Token>], merges: &[String]) -> Vec<f32> {
    let id_of: std::collections::HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .filter_map(|(i, t)| t.as_ref().map(|t| (t.text.as_str(), i)))
        .collect();
    let mut scores = vec![UNMERGED_SCORE; tokens.len()];
    for (rank, m) in merges.iter().enumerate() {
        let merged: String = m.split(' ').collect();
        if let Some(&id) = id_of.get(merged.as_str()) {
            if scores[id] == UNMERGED_SCORE {
                scores[id] = -(rank as f32);
            }
        }
    }
    scores
}

const UNMERGED_SCORE: f32 = -1e9;

/// `<0xAB>`: a byte-fallback token.
fn is_byte_token(s: &str) -> bool {
    s.len() == 6
        && s.starts_with("<0x")
        && s.ends_with('>')
        && s[3..5].chars().all(|c| c.is_ascii_hexdigit())
}

/// The `tokenizer.*` metadata for the tokenizer in `dir`, its vocabulary padded to
/// `vocab_size` (the embedding's rows) with unused `[PAD<i>]` tokens, as llama.cpp's
/// converter does. Also returns llama.cpp's name for the pre-tokenizer (`llama` for
/// SentencePiece-style vocabularies, which have none).
pub fn vocab_metadata(
    dir: &Path,
    vocab_size: usize,
) -> Result<(Vec<(String, GgufValue)>, &'static str)> {
    let path = dir.join("tokenizer.json");
    let tj = read_json(&path)?.ok_or_else(|| {
        Error::io(
            &path,
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the checkpoint has no tokenizer.json",
            ),
        )
    })?;
    let flavour = flavour(&tj, &path)?;
    let tokens = token_table(&tj, &path, vocab_size)?;
    let merges = merge_strings(&tj, &path)?;
    let unk = tj["model"]["unk_token"].as_str();
    let token_type = |text: &str, added: Option<bool>| match (added, &flavour) {
        (Some(true), _) if Some(text) == unk => TOKEN_UNKNOWN,
        (Some(true), _) => TOKEN_CONTROL,
        (Some(false), _) => TOKEN_USER_DEFINED,
        (None, Flavour::SentencePiece) if Some(text) == unk => TOKEN_UNKNOWN,
        (None, Flavour::SentencePiece) if is_byte_token(text) => TOKEN_BYTE,
        (None, _) => TOKEN_NORMAL,
    };
    let scores =
        matches!(flavour, Flavour::SentencePiece).then(|| scores_from_merges(&tokens, &merges));
    let (texts, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(t) => (
                GgufValue::String(t.text.clone()),
                GgufValue::I32(token_type(&t.text, t.added)),
            ),
            None => (
                GgufValue::String(format!("[PAD{i}]")),
                GgufValue::I32(TOKEN_UNUSED),
            ),
        })
        .unzip();
    let s = |v: &str| GgufValue::String(v.to_string());
    let (model, pre) = match flavour {
        Flavour::ByteLevel(pre) => ("gpt2", pre),
        Flavour::SentencePiece => ("llama", "llama"),
    };
    let mut kv: Vec<(String, GgufValue)> = vec![("tokenizer.ggml.model".into(), s(model))];
    if model == "gpt2" {
        kv.push(("tokenizer.ggml.pre".into(), s(pre)));
    }
    kv.push(("tokenizer.ggml.tokens".into(), GgufValue::Array(texts)));
    if let Some(scores) = scores {
        let scores = scores.into_iter().map(GgufValue::F32).collect();
        kv.push(("tokenizer.ggml.scores".into(), GgufValue::Array(scores)));
        kv.push((
            "tokenizer.ggml.add_space_prefix".into(),
            GgufValue::Bool(true),
        ));
    }
    kv.push(("tokenizer.ggml.token_type".into(), GgufValue::Array(types)));
    // A SentencePiece vocabulary merges by score; the merges list is for byte-level BPE.
    if model == "gpt2" && !merges.is_empty() {
        let merges = merges.into_iter().map(GgufValue::String).collect();
        kv.push(("tokenizer.ggml.merges".into(), GgufValue::Array(merges)));
    }
    kv.extend(special_tokens(dir, &tj)?);
    Ok((kv, pre))
}

/// BOS/EOS/UNK/PAD ids, whether BOS is added, and the chat template, from
/// tokenizer_config.json (ids looked up in the vocabulary), else config.json's ids.
fn special_tokens(dir: &Path, tj: &Value) -> Result<Vec<(String, GgufValue)>> {
    let tc = read_json(&dir.join("tokenizer_config.json"))?.unwrap_or(Value::Null);
    let cfg = read_json(&dir.join("config.json"))?.unwrap_or(Value::Null);
    let id_of = |text: &str| -> Option<u64> {
        tj["added_tokens"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["content"].as_str() == Some(text))
            .and_then(|t| t["id"].as_u64())
            .or_else(|| tj["model"]["vocab"].get(text).and_then(Value::as_u64))
    };
    let mut kv = vec![];
    for (name, tc_key, cfg_key) in [
        ("bos", "bos_token", "bos_token_id"),
        ("eos", "eos_token", "eos_token_id"),
        ("unknown", "unk_token", "unk_token_id"),
        ("padding", "pad_token", "pad_token_id"),
    ] {
        let from_tc = tc.get(tc_key).and_then(token_text).and_then(id_of);
        // config.json may hold a list of EOS ids; GGUF takes one.
        let from_cfg = cfg
            .get(cfg_key)
            .and_then(|v| v.as_u64().or_else(|| v.get(0)?.as_u64()));
        if let Some(id) = from_tc.or(from_cfg) {
            let id = u32::try_from(id).map_err(|_| {
                Error::format(
                    dir.join("tokenizer_config.json"),
                    format!("{name} id {id} out of range"),
                )
            })?;
            kv.push((
                format!("tokenizer.ggml.{name}_token_id"),
                GgufValue::U32(id),
            ));
        }
    }
    let add_bos = tc
        .get("add_bos_token")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    kv.push((
        "tokenizer.ggml.add_bos_token".into(),
        GgufValue::Bool(add_bos),
    ));
    if let Some(t) = tc.get("add_eos_token").and_then(Value::as_bool) {
        kv.push(("tokenizer.ggml.add_eos_token".into(), GgufValue::Bool(t)));
    }
    let jinja = dir.join("chat_template.jinja");
    let template = match tc.get("chat_template").and_then(Value::as_str) {
        Some(t) => Some(t.to_string()),
        None if jinja.exists() => Some(crate::error::read_to_string(&jinja)?),
        None => None,
    };
    if let Some(t) = template {
        kv.push(("tokenizer.chat_template".into(), GgufValue::String(t)));
    }
    Ok(kv)
}

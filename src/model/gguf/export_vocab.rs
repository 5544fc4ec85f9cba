//! A Hugging Face tokenizer as GGUF metadata (`tokenizer.ggml.*`), the inverse of
//! [`crate::model::gguf_tokenizer`]. Only byte-level BPE is written (`tokenizer.ggml.model
//! = "gpt2"`); llama.cpp does not store the pre-tokenizer, it names it
//! (`tokenizer.ggml.pre`), so the tokenizer.json's pre-tokenizer must be one whose name
//! both llama.cpp and our importer know.

use super::GgufValue;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// llama.cpp token types (`llama_token_type`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

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

/// The `tokenizer.*` metadata for the tokenizer in `dir`, its vocabulary padded to
/// `vocab_size` (the embedding's rows) with unused `[PAD<i>]` tokens, as llama.cpp's
/// converter does. Also returns the pre-tokenizer's llama.cpp name.
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
    let unsupported = |m: String| Error::unsupported(&path, m);
    let model = &tj["model"];
    let kind = model.get("type").and_then(Value::as_str).unwrap_or("?");
    if kind != "BPE" || model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err(unsupported(format!(
            "only byte-level BPE tokenizers are exported to GGUF; this one is {kind}{}",
            if kind == "BPE" {
                " with byte fallback (SentencePiece style)"
            } else {
                ""
            }
        )));
    }
    if !tj["normalizer"].is_null() {
        return Err(unsupported(
            "a tokenizer with a normalizer (not byte-level BPE)".into(),
        ));
    }
    let pre = pre_name(&tj["pre_tokenizer"]).ok_or_else(|| {
        unsupported(format!(
            "pre-tokenizer {} has no llama.cpp name known here (exported: ByteLevel = gpt2, \
             Sequence[Digits(individual), ByteLevel] = smollm)",
            tj["pre_tokenizer"]
        ))
    })?;

    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut place = |id: u64, text: &str, ty: i32| -> Result<()> {
        let slot = tokens.get_mut(id as usize).ok_or_else(|| {
            Error::format(
                &path,
                format!("token id {id} ({text:?}) is beyond the model's vocab_size {vocab_size}"),
            )
        })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    let vocab = model["vocab"]
        .as_object()
        .ok_or_else(|| Error::format(&path, "model.vocab is not an object"))?;
    for (text, id) in vocab {
        let id = id.as_u64().ok_or_else(|| {
            Error::format(&path, format!("vocab id of {text:?} is not an integer"))
        })?;
        place(id, text, TOKEN_NORMAL)?;
    }
    for t in tj["added_tokens"].as_array().into_iter().flatten() {
        let (Some(id), Some(text)) = (t["id"].as_u64(), t["content"].as_str()) else {
            return Err(Error::format(
                &path,
                format!("added token without id/content: {t}"),
            ));
        };
        let special = t["special"].as_bool().unwrap_or(false);
        place(
            id,
            text,
            if special {
                TOKEN_CONTROL
            } else {
                TOKEN_USER_DEFINED
            },
        )?;
    }
    let (texts, types): (Vec<GgufValue>, Vec<GgufValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, ty) = t.unwrap_or((format!("[PAD{i}]"), TOKEN_UNUSED));
            (GgufValue::String(text), GgufValue::I32(ty))
        })
        .unzip();
    let merges: Vec<GgufValue> = model["merges"]
        .as_array()
        .ok_or_else(|| Error::format(&path, "model.merges is not an array"))?
        .iter()
        .map(|m| match (m.as_str(), m.as_array()) {
            (Some(s), _) => Ok(GgufValue::String(s.to_string())),
            (_, Some(pair)) if pair.len() == 2 && pair.iter().all(Value::is_string) => {
                Ok(GgufValue::String(format!(
                    "{} {}",
                    pair[0].as_str().unwrap_or_default(),
                    pair[1].as_str().unwrap_or_default()
                )))
            }
            _ => Err(Error::format(
                &path,
                format!("merge {m} is neither \"a b\" nor [a, b]"),
            )),
        })
        .collect::<Result<_>>()?;

    let mut kv: Vec<(String, GgufValue)> = vec![
        (
            "tokenizer.ggml.model".into(),
            GgufValue::String("gpt2".into()),
        ),
        ("tokenizer.ggml.pre".into(), GgufValue::String(pre.into())),
        ("tokenizer.ggml.tokens".into(), GgufValue::Array(texts)),
        ("tokenizer.ggml.token_type".into(), GgufValue::Array(types)),
    ];
    if !merges.is_empty() {
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

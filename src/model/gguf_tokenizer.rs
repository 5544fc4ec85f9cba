//! The tokenizer a GGUF carries in its metadata (`tokenizer.ggml.*`), rebuilt as a Hugging
//! Face `tokenizers::Tokenizer`, with the small JSON files transformers reads beside it.
//!
//! Two models: byte-level BPE (`tokenizer.ggml.model = "gpt2"`), whose pre-tokenizer is
//! not stored in the file, only named by `tokenizer.ggml.pre` (each name we accept maps to
//! the pre-tokenizer of the tokenizer.json the GGUF was converted from), and
//! SentencePiece-style BPE (`llama`: LLaMA-2, Mistral v0.1, llama2.c), which merges by
//! token score (see `sentencepiece`).

use super::gguf::{GgufFile, GgufValue};
use crate::error::{Error, Result};
use serde_json::{json, Map, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::processors::sequence::Sequence as PostSequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::processors::PostProcessorWrapper;
use tokenizers::{AddedToken, DecoderWrapper, Tokenizer};

mod sentencepiece;

/// llama.cpp token types (`tokenizer.ggml.token_type`).
const TOKEN_NORMAL: i64 = 1;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

pub struct GgufTokenizer {
    pub tokenizer: Tokenizer,
    /// HF `tokenizer_config.json`.
    pub tokenizer_config: Value,
    /// HF `special_tokens_map.json`.
    pub special_tokens_map: Value,
    /// HF `generation_config.json` (BOS/EOS/PAD ids).
    pub generation_config: Value,
    /// Number of tokens in the vocabulary (added tokens included: they are part of it).
    pub vocab_size: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_id: Option<u32>,
    pub pad_token_id: Option<u32>,
    pub unk_token_id: Option<u32>,
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Vec<&'a str>> {
    g.get_array(key)?
        .iter()
        .enumerate()
        .map(|(i, v)| {
            v.as_str().ok_or_else(|| {
                Error::format(
                    &g.path,
                    format!("`{key}`[{i}] should be a string, found a {}", v.type_name()),
                )
            })
        })
        .collect()
}

/// The pre-tokenizer for a `tokenizer.ggml.pre` name.
fn pre_tokenizer(g: &GgufFile) -> Result<PreTokenizerWrapper> {
    let gpt2 = ByteLevel::new(false, true, true);
    match g.get("tokenizer.ggml.pre").map(GgufValue::as_str) {
        // SmolLM's tokenizer.json: Sequence[Digits(individual_digits), ByteLevel]. llama.cpp
        // reproduces it as the regex list ["\p{N}", <GPT-2 regex>]. The vocabulary has no
        // merges across a digit boundary, so without the digit split most text still
        // tokenizes the same, but a whitespace run or a symbol before a number does not.
        Some(Some("smollm")) => Ok(PreSequence::new(vec![
            Digits::new(true).into(),
            gpt2.into(),
        ])
        .into()),
        // No name (older converters) or plain GPT-2: the GPT-2 regex alone, which is also
        // what transformers' GGUF loader uses for these.
        None | Some(Some("gpt2")) | Some(Some("default")) => Ok(gpt2.into()),
        Some(Some(other)) => Err(Error::unsupported(
            &g.path,
            format!(
                "tokenizer.ggml.pre `{other}`: its pre-tokenizer is not known here (supported: smollm, gpt2, default)"
            ),
        )),
        Some(None) => Err(Error::format(&g.path, "`tokenizer.ggml.pre` is not a string")),
    }
}

/// An optional token id from the metadata, checked against the vocabulary.
fn token_id(g: &GgufFile, key: &str, n_tokens: usize) -> Result<Option<u32>> {
    let Some(v) = g.get(key) else {
        return Ok(None);
    };
    match v.as_u64() {
        Some(id) if (id as usize) < n_tokens => Ok(Some(id as u32)),
        _ => Err(Error::format(
            &g.path,
            format!("`{key}` = {v:?} is not a token id below the vocabulary size {n_tokens}"),
        )),
    }
}

fn flag(g: &GgufFile, key: &str) -> Result<bool> {
    match g.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().ok_or_else(|| {
            Error::format(&g.path, format!("`{key}` should be a bool, found {v:?}"))
        }),
    }
}

/// The vocabulary-wide metadata both tokenizer models share.
struct Vocabulary<'a> {
    tokens: Vec<&'a str>,
    /// llama.cpp token types, one per token (normal when the file has none).
    types: Vec<i64>,
}

impl<'a> Vocabulary<'a> {
    fn read(g: &'a GgufFile) -> Result<Self> {
        let tokens = string_array(g, "tokenizer.ggml.tokens")?;
        let n = tokens.len();
        if n == 0 || u32::try_from(n).is_err() {
            return Err(Error::format(&g.path, format!("vocabulary of {n} tokens")));
        }
        let types: Vec<i64> = match g.get("tokenizer.ggml.token_type") {
            None => vec![TOKEN_NORMAL; n],
            Some(_) => g
                .get_array("tokenizer.ggml.token_type")?
                .iter()
                .map(|v| v.as_i64().unwrap_or(-1))
                .collect(),
        };
        if types.len() != n {
            return Err(Error::format(
                &g.path,
                format!("{} token types for {n} tokens", types.len()),
            ));
        }
        Ok(Vocabulary { tokens, types })
    }

    /// Token -> id, refusing a token listed twice (a model could not tell them apart).
    fn ids(&self, g: &GgufFile) -> Result<Vocab> {
        let mut vocab = Vocab::default();
        for (i, t) in self.tokens.iter().enumerate() {
            if let Some(first) = vocab.insert(t.to_string(), i as u32) {
                return Err(Error::format(
                    &g.path,
                    format!("token {t:?} appears twice in the vocabulary (ids {first} and {i})"),
                ));
            }
        }
        Ok(vocab)
    }
}

/// Byte-level BPE (`gpt2`): the vocabulary, the merges list, the named pre-tokenizer.
fn byte_level_bpe(g: &GgufFile, v: &Vocabulary) -> Result<Tokenizer> {
    let merges = string_array(g, "tokenizer.ggml.merges")?
        .into_iter()
        .enumerate()
        .map(|(i, m)| match m.split_once(' ') {
            Some((a, b)) if !a.is_empty() && !b.is_empty() && !b.contains(' ') => {
                Ok((a.to_string(), b.to_string()))
            }
            _ => Err(Error::format(
                &g.path,
                format!("merge {i} ({m:?}) is not two tokens separated by one space"),
            )),
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(v.ids(g)?, merges)
        .build()
        .map_err(|e| Error::format(&g.path, format!("BPE vocabulary/merges: {e}")))?;
    let mut tok = Tokenizer::new(bpe);
    tok.with_pre_tokenizer(Some(pre_tokenizer(g)?));
    tok.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevel::default())));
    Ok(tok)
}

/// The BOS/EOS template for the flags, after `base` (the byte-level post-processor, which
/// only fixes offsets) where there is one.
fn post_processor(
    g: &GgufFile,
    tokens: &[&str],
    bos: Option<u32>,
    eos: Option<u32>,
    base: Option<PostProcessorWrapper>,
) -> Result<Option<PostProcessorWrapper>> {
    let add_bos = flag(g, "tokenizer.ggml.add_bos_token")?;
    let add_eos = flag(g, "tokenizer.ggml.add_eos_token")?;
    if !(add_bos || add_eos) {
        return Ok(base);
    }
    for (on, id, which) in [(add_bos, bos, "bos"), (add_eos, eos, "eos")] {
        if on && id.is_none() {
            return Err(Error::format(
                &g.path,
                format!("tokenizer.ggml.add_{which}_token is set but there is no {which}_token_id"),
            ));
        }
    }
    let content = |id: Option<u32>, on: bool| {
        id.filter(|_| on)
            .and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let bos_s = content(bos, add_bos);
    let eos_s = content(eos, add_eos);
    // "BOS $A EOS" for one sequence, both halves with type ids 0 and 1 for a pair.
    let (mut single, mut pair) = (vec![], vec![]);
    for (seq, type_id) in [("$A", 0), ("$B", 1)] {
        let part: Vec<String> = [bos_s.as_deref(), Some(seq), eos_s.as_deref()]
            .into_iter()
            .flatten()
            .map(|p| format!("{p}:{type_id}"))
            .collect();
        if type_id == 0 {
            single = part.clone();
        }
        pair.extend(part);
    }
    let specials: Vec<(String, u32)> = [(&bos_s, bos), (&eos_s, eos)]
        .into_iter()
        .filter_map(|(s, id)| Some((s.clone()?, id?)))
        .collect();
    let template = TemplateProcessing::builder()
        .try_single(single)
        .and_then(|b| b.try_pair(pair))
        .map_err(|e| Error::format(&g.path, format!("BOS/EOS template: {e}")))?
        .special_tokens(specials)
        .build()
        .map_err(|e| Error::format(&g.path, format!("BOS/EOS template: {e}")))?;
    Ok(Some(match base {
        Some(b) => PostProcessorWrapper::Sequence(PostSequence::new(vec![b, template.into()])),
        None => template.into(),
    }))
}

/// Control tokens (<|endoftext|>, <|im_start|>, <s>, ...) must match as whole units before
/// the model runs, as in the original tokenizer; user-defined ones too, but they decode.
fn add_special_tokens(g: &GgufFile, tok: &mut Tokenizer, v: &Vocabulary) -> Result<()> {
    let added = |ty: i64, special: bool| -> Vec<AddedToken> {
        v.tokens
            .iter()
            .zip(&v.types)
            .filter(|(_, &t)| t == ty)
            .map(|(s, _)| AddedToken::from(s.to_string(), special).normalized(false))
            .collect()
    };
    tok.add_special_tokens(&added(TOKEN_CONTROL, true));
    tok.add_tokens(&added(TOKEN_USER_DEFINED, false));
    for (i, (s, &t)) in v.tokens.iter().zip(&v.types).enumerate() {
        if (t == TOKEN_CONTROL || t == TOKEN_USER_DEFINED) && tok.token_to_id(s) != Some(i as u32) {
            return Err(Error::format(
                &g.path,
                format!("special token {s:?} (id {i}) did not keep its id"),
            ));
        }
    }
    let n = v.tokens.len();
    if tok.get_vocab_size(true) != n {
        return Err(Error::format(
            &g.path,
            format!(
                "tokenizer has {} tokens, the GGUF lists {n}",
                tok.get_vocab_size(true)
            ),
        ));
    }
    Ok(())
}

/// Build the tokenizer and its HF config files from a GGUF's metadata.
pub fn build(g: &GgufFile) -> Result<GgufTokenizer> {
    let model = g.get_str("tokenizer.ggml.model")?;
    let v = Vocabulary::read(g)?;
    let n = v.tokens.len();
    let bos = token_id(g, "tokenizer.ggml.bos_token_id", n)?;
    let eos = token_id(g, "tokenizer.ggml.eos_token_id", n)?;
    let unk = token_id(g, "tokenizer.ggml.unknown_token_id", n)?;
    let pad = token_id(g, "tokenizer.ggml.padding_token_id", n)?;
    let (mut tok, base) = match model {
        "gpt2" => {
            let base = PostProcessorWrapper::ByteLevel(ByteLevel::new(false, false, true));
            (byte_level_bpe(g, &v)?, Some(base))
        }
        "llama" => (sentencepiece::tokenizer(g, &v.tokens, &v.types, unk)?, None),
        _ => {
            return Err(Error::unsupported(
                &g.path,
                format!(
                    "tokenizer.ggml.model `{model}` (imported: `gpt2` byte-level BPE and \
                     `llama` SentencePiece-style BPE)"
                ),
            ))
        }
    };
    tok.with_post_processor(post_processor(g, &v.tokens, bos, eos, base)?);
    add_special_tokens(g, &mut tok, &v)?;
    let (tokenizer_config, special_tokens_map, generation_config) =
        config_files(g, &v.tokens, [bos, eos, unk, pad])?;
    Ok(GgufTokenizer {
        tokenizer: tok,
        tokenizer_config,
        special_tokens_map,
        generation_config,
        vocab_size: n,
        bos_token_id: bos,
        eos_token_id: eos,
        pad_token_id: pad,
        unk_token_id: unk,
    })
}

/// transformers' tokenizer_config.json, special_tokens_map.json and
/// generation_config.json, from the BOS/EOS/UNK/PAD ids (in that order).
fn config_files(
    g: &GgufFile,
    tokens: &[&str],
    [bos, eos, unk, pad]: [Option<u32>; 4],
) -> Result<(Value, Value, Value)> {
    let content = |id: Option<u32>| {
        id.and_then(|i| tokens.get(i as usize))
            .map(|s| s.to_string())
    };
    let n_ctx = g
        .get_str("general.architecture")
        .ok()
        .and_then(|a| g.get(&format!("{a}.context_length")))
        .and_then(GgufValue::as_u64);
    let mut special_map = Map::new();
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(s) = content(id) {
            special_map.insert(key.into(), s.into());
        }
    }
    let mut cfg = special_map.clone();
    for key in ["add_bos_token", "add_eos_token"] {
        cfg.insert(
            key.into(),
            flag(g, &format!("tokenizer.ggml.{key}"))?.into(),
        );
    }
    cfg.insert("add_prefix_space".into(), false.into());
    cfg.insert("clean_up_tokenization_spaces".into(), false.into());
    if let Some(c) = n_ctx {
        cfg.insert("model_max_length".into(), c.into());
    }
    // Not GPT2Tokenizer or LlamaTokenizer: transformers 5 rebuilds those classes'
    // pre-tokenizers and would drop SmolLM's digit split; this class loads tokenizer.json
    // as is.
    cfg.insert("tokenizer_class".into(), "PreTrainedTokenizerFast".into());
    if let Some(t) = g.get("tokenizer.chat_template") {
        let t = t
            .as_str()
            .ok_or_else(|| Error::format(&g.path, "`tokenizer.chat_template` is not a string"))?;
        cfg.insert("chat_template".into(), t.into());
    }
    let mut generation = Map::new();
    for (key, id) in [
        ("bos_token_id", bos),
        ("eos_token_id", eos),
        ("pad_token_id", pad),
    ] {
        if let Some(id) = id {
            generation.insert(key.into(), id.into());
        }
    }
    Ok((
        Value::Object(cfg),
        Value::Object(special_map),
        json!(generation),
    ))
}

/// A GGUF with metadata only (no tensors), `extra` entries replacing or adding keys: the
/// unit tests' input.
#[cfg(test)]
fn metadata_file(
    path: &str,
    mut metadata: std::collections::BTreeMap<String, GgufValue>,
    extra: Vec<(&str, GgufValue)>,
) -> GgufFile {
    for (k, v) in extra {
        metadata.insert(k.into(), v);
    }
    GgufFile {
        path: path.into(),
        version: 3,
        metadata,
        tensors: vec![],
        alignment: 32,
        data_offset: 0,
        file_len: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn s(v: &str) -> GgufValue {
        GgufValue::String(v.into())
    }

    /// Tokenizer metadata for a toy vocabulary; `extra` entries replace or add keys.
    fn gguf(extra: Vec<(&str, GgufValue)>) -> GgufFile {
        let tokens = ["<|endoftext|>", "1", "2", "12", "Ġ", "Ġ1", "<tool>", "x"];
        let mut m = BTreeMap::new();
        m.insert("general.architecture".into(), s("llama"));
        m.insert("llama.context_length".into(), GgufValue::U32(128));
        m.insert("tokenizer.ggml.model".into(), s("gpt2"));
        m.insert("tokenizer.ggml.pre".into(), s("smollm"));
        m.insert(
            "tokenizer.ggml.tokens".into(),
            GgufValue::Array(tokens.iter().map(|t| s(t)).collect()),
        );
        m.insert(
            "tokenizer.ggml.token_type".into(),
            GgufValue::Array([3, 1, 1, 1, 1, 1, 4, 1].map(GgufValue::I32).to_vec()),
        );
        m.insert(
            "tokenizer.ggml.merges".into(),
            GgufValue::Array(vec![s("1 2"), s("Ġ 1")]),
        );
        m.insert("tokenizer.ggml.bos_token_id".into(), GgufValue::U32(0));
        m.insert("tokenizer.ggml.eos_token_id".into(), GgufValue::U32(0));
        metadata_file("unit.gguf", m, extra)
    }

    fn ids(t: &Tokenizer, text: &str, special: bool) -> Vec<u32> {
        t.encode(text, special).unwrap().get_ids().to_vec()
    }

    #[test]
    fn smollm_splits_digits_gpt2_does_not() {
        let t = build(&gguf(vec![])).unwrap();
        assert_eq!(ids(&t.tokenizer, "12", true), vec![1, 2]);
        assert_eq!(ids(&t.tokenizer, " 1", true), vec![4, 1]);
        assert_eq!(t.tokenizer_config["model_max_length"], 128);
        let t = build(&gguf(vec![("tokenizer.ggml.pre", s("gpt2"))])).unwrap();
        assert_eq!(ids(&t.tokenizer, "12", true), vec![3]);
        assert_eq!(ids(&t.tokenizer, " 1", true), vec![5]);
    }

    #[test]
    fn control_and_user_defined_tokens() {
        let t = build(&gguf(vec![])).unwrap();
        let got = ids(&t.tokenizer, "x<tool><|endoftext|>x", false);
        assert_eq!(got, vec![7, 6, 0, 7]);
        // Control tokens are skipped when decoding without specials; user-defined stay.
        assert_eq!(t.tokenizer.decode(&got, true).unwrap(), "x<tool>x");
    }

    #[test]
    fn bos_and_eos_templates() {
        let t = build(&gguf(vec![
            ("tokenizer.ggml.add_bos_token", GgufValue::Bool(true)),
            ("tokenizer.ggml.add_eos_token", GgufValue::Bool(true)),
            ("tokenizer.ggml.bos_token_id", GgufValue::U32(6)),
        ]))
        .unwrap();
        assert_eq!(ids(&t.tokenizer, "x", true), vec![6, 7, 0]);
        assert_eq!(ids(&t.tokenizer, "x", false), vec![7]);
        let pair = t.tokenizer.encode(("x", "1"), true).unwrap();
        assert_eq!(pair.get_ids(), &[6, 7, 0, 6, 1, 0]);
        assert_eq!(pair.get_type_ids(), &[0, 0, 0, 1, 1, 1]);
        assert_eq!(t.tokenizer_config["bos_token"], "<tool>");
        assert_eq!(t.generation_config["bos_token_id"], 6);
    }

    #[test]
    fn bad_metadata_is_an_error() {
        let err = |extra: Vec<(&str, GgufValue)>| build(&gguf(extra)).err().unwrap().to_string();
        assert!(err(vec![("tokenizer.ggml.model", s("bert"))]).contains("`bert`"));
        assert!(err(vec![("tokenizer.ggml.pre", s("qwen2"))]).contains("`qwen2`"));
        let e = err(vec![(
            "tokenizer.ggml.merges",
            GgufValue::Array(vec![s("12")]),
        )]);
        assert!(e.contains("merge 0"), "{e}");
        let e = err(vec![(
            "tokenizer.ggml.merges",
            GgufValue::Array(vec![s("1 x2")]),
        )]);
        assert!(e.contains("BPE"), "{e}");
        let e = err(vec![(
            "tokenizer.ggml.tokens",
            GgufValue::Array(["a", "b", "a", "c", "d", "e", "f", "g"].map(s).to_vec()),
        )]);
        assert!(e.contains("appears twice"), "{e}");
        let e = err(vec![("tokenizer.ggml.bos_token_id", GgufValue::U32(8))]);
        assert!(e.contains("bos_token_id"), "{e}");
        let e = err(vec![(
            "tokenizer.ggml.token_type",
            GgufValue::Array(vec![GgufValue::I32(1)]),
        )]);
        assert!(e.contains("1 token types for 8 tokens"), "{e}");
        let e = err(vec![("tokenizer.ggml.tokens", GgufValue::U32(1))]);
        assert!(
            e.contains("unit.gguf") && e.contains("should be an array"),
            "{e}"
        );
    }
}

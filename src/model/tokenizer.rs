//! The runtime tokenizer: a checkpoint's `tokenizer.json` through the `tokenizers` crate,
//! with the checkpoint's default special-token behaviour (BOS or not) built in.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    pub bos_id: Option<u32>,
    pub eos_ids: Vec<u32>,
}

impl Tokenizer {
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(Error::io(
                &path,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no tokenizer.json in the checkpoint",
                ),
            ));
        }
        // The JSON is checked first: tokenizers 0.21 panics (instead of returning an
        // error) on some malformed documents, e.g. one cut inside its `decoder`.
        let text = crate::error::read_to_string(&path)?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text)
            .map_err(|e| Error::format(&path, format!("not valid JSON: {e}")))?;
        let inner: tokenizers::Tokenizer = text.parse().map_err(|e| Error::tokenizer(&path, e))?;
        // BOS/EOS: tokenizer_config.json first (what transformers uses), then config.json.
        let mut bos_id = None;
        let mut eos_ids = vec![];
        let tc = dir.join("tokenizer_config.json");
        if tc.exists() {
            let v: serde_json::Value = serde_json::from_str(&crate::error::read_to_string(&tc)?)
                .map_err(|e| Error::format(&tc, format!("not valid JSON: {e}")))?;
            let tok_id = |key: &str| -> Option<u32> {
                let s = match v.get(key)? {
                    serde_json::Value::String(s) => s.clone(),
                    o => o.get("content")?.as_str()?.to_string(),
                };
                inner.token_to_id(&s)
            };
            bos_id = tok_id("bos_token");
            eos_ids.extend(tok_id("eos_token"));
        }
        let cfg = dir.join("config.json");
        if cfg.exists() {
            if let Ok(v) =
                serde_json::from_str::<serde_json::Value>(&crate::error::read_to_string(&cfg)?)
            {
                if bos_id.is_none() {
                    bos_id = v
                        .get("bos_token_id")
                        .and_then(|x| x.as_u64())
                        .map(|x| x as u32);
                }
                match v.get("eos_token_id") {
                    Some(serde_json::Value::Number(n)) => {
                        eos_ids.extend(n.as_u64().map(|x| x as u32))
                    }
                    Some(serde_json::Value::Array(a)) => {
                        eos_ids.extend(a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32))
                    }
                    _ => {}
                }
            }
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(Tokenizer {
            inner,
            path,
            bos_id,
            eos_ids,
        })
    }

    pub fn from_tokenizers(
        inner: tokenizers::Tokenizer,
        bos_id: Option<u32>,
        eos_ids: Vec<u32>,
    ) -> Self {
        Tokenizer {
            inner,
            path: PathBuf::from("<memory>"),
            bos_id,
            eos_ids,
        }
    }

    /// Encode with the tokenizer's default special tokens (e.g. LLaMA's BOS) when
    /// `add_special` is true, exactly as `tokenizer(text)` does in transformers.
    pub fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode_fast(text, add_special)
            .map_err(|e| Error::tokenizer(&self.path, e))?;
        Ok(enc.get_ids().to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner
            .decode(ids, skip_special)
            .map_err(|e| Error::tokenizer(&self.path, e))
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

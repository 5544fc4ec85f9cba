//! The checkpoint import: the weights in `run.c`'s order, q/k rows to the rotate-half
//! layout, and the Hugging Face config and tokenizer files.

use super::*;

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

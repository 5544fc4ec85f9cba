//! The import: a LLaMA-architecture GGUF's hyper-parameters, the plan that maps its
//! tensors to Hugging Face names (with q/k rows reordered), and the checkpoint.

use super::*;

/// The LLaMA hyper-parameters a GGUF declares (`llama.*` keys).
#[derive(Debug, Clone)]
struct LlamaParams {
    n_layer: u64,
    n_ctx: u64,
    n_embd: u64,
    n_ff: u64,
    n_head: u64,
    n_head_kv: u64,
    head_dim: u64,
    eps: f64,
    rope_theta: f64,
    rope_scaling: Value,
    vocab: u64,
}

/// An f32 stored in GGUF was written from a short decimal in the original config
/// (`1e-05`); give back that decimal rather than the f32's exact binary value.
fn f32_as_decimal(v: f64) -> f64 {
    let f = v as f32;
    if f as f64 == v {
        format!("{f}").parse().unwrap_or(v)
    } else {
        v
    }
}

impl LlamaParams {
    fn from_gguf(g: &GgufFile, vocab: u64) -> Result<Self> {
        let key = |k: &str| format!("llama.{k}");
        let (n_embd, n_head, n_head_kv, head_dim) = attention_layout(g)?;
        if g.get(&key("expert_count"))
            .and_then(GgufValue::as_u64)
            .unwrap_or(0)
            > 0
        {
            return Err(Error::unsupported(
                &g.path,
                "mixture-of-experts llama GGUFs (llama.expert_count > 0)",
            ));
        }
        let rope_scaling = rope_scaling(g)?;
        let rope_theta = match g.get(&key("rope.freq_base")) {
            None => 10000.0,
            Some(_) => f32_as_decimal(g.get_f64(&key("rope.freq_base"))?),
        };
        Ok(LlamaParams {
            n_layer: positive(g, "block_count")?,
            n_ctx: positive(g, "context_length")?,
            n_embd,
            n_ff: positive(g, "feed_forward_length")?,
            n_head,
            n_head_kv,
            head_dim,
            eps: f32_as_decimal(g.get_f64(&key("attention.layer_norm_rms_epsilon"))?),
            rope_theta,
            rope_scaling,
            vocab,
        })
    }
}

/// The size `llama.{k}`, required and in `1..=i32::MAX`: bounded so that products of two
/// sizes cannot overflow.
fn positive(g: &GgufFile, k: &str) -> Result<u64> {
    let v = g.get_u64(&format!("llama.{k}"))?;
    if v == 0 || v > i32::MAX as u64 {
        return Err(Error::format(
            &g.path,
            format!("`llama.{k}` = {v} is out of range"),
        ));
    }
    Ok(v)
}

/// `(n_embd, n_head, n_head_kv, head_dim)`: the head counts (kv heads default to the
/// query heads), the head size (from `key_length`, else `n_embd / n_head`), and the checks
/// that values share that size, rotary embeddings cover whole heads, and the query heads
/// group evenly over an even head size.
fn attention_layout(g: &GgufFile) -> Result<(u64, u64, u64, u64)> {
    let key = |k: &str| format!("llama.{k}");
    let n_head = positive(g, "attention.head_count")?;
    let n_head_kv = match g.get(&key("attention.head_count_kv")) {
        None => n_head,
        Some(_) => positive(g, "attention.head_count_kv")?,
    };
    let n_embd = positive(g, "embedding_length")?;
    let head_dim = match g.get(&key("attention.key_length")) {
        Some(_) => positive(g, "attention.key_length")?,
        None if n_embd.is_multiple_of(n_head) => n_embd / n_head,
        None => {
            return Err(Error::format(
                &g.path,
                format!("embedding_length {n_embd} is not a multiple of head_count {n_head} and no key_length is given"),
            ))
        }
    };
    if let Some(v) = g.get(&key("attention.value_length")) {
        if v.as_u64() != Some(head_dim) {
            return Err(Error::unsupported(
                &g.path,
                format!("attention.value_length {v:?} differs from the key length {head_dim}"),
            ));
        }
    }
    if let Some(v) = g.get(&key("rope.dimension_count")) {
        if v.as_u64() != Some(head_dim) {
            return Err(Error::unsupported(
                &g.path,
                format!("rope.dimension_count {v:?} is not the head size {head_dim} (partial rotary embeddings)"),
            ));
        }
    }
    if !n_head.is_multiple_of(n_head_kv) || !head_dim.is_multiple_of(2) {
        return Err(Error::format(
            &g.path,
            format!("head_count {n_head} / head_count_kv {n_head_kv} / head size {head_dim} do not form a valid attention layout"),
        ));
    }
    Ok((n_embd, n_head, n_head_kv, head_dim))
}

/// The HF `rope_scaling` of the GGUF's rope keys: null, or linear with its factor (from
/// `rope.scaling.*`, or the older `rope.scale_linear`); other scaling types are refused.
fn rope_scaling(g: &GgufFile) -> Result<Value> {
    let key = |k: &str| format!("llama.{k}");
    Ok(match g.get(&key("rope.scaling.type")).map(|v| v.as_str()) {
        None | Some(Some("none")) => match g.get(&key("rope.scale_linear")) {
            Some(v) if v.as_f64() != Some(1.0) => json!({
                "rope_type": "linear",
                "factor": f32_as_decimal(g.get_f64(&key("rope.scale_linear"))?),
            }),
            _ => Value::Null,
        },
        Some(Some("linear")) => json!({
            "rope_type": "linear",
            "factor": f32_as_decimal(g.get_f64(&key("rope.scaling.factor"))?),
        }),
        Some(other) => {
            return Err(Error::unsupported(
                &g.path,
                format!("llama.rope.scaling.type {other:?} (only linear scaling is imported)"),
            ))
        }
    })
}

/// How a GGUF tensor becomes an HF tensor.
#[derive(Debug, Clone, Copy)]
enum RowOrder {
    Keep,
    /// Undo llama.cpp's q/k permutation with this many heads.
    Unpermute(u64),
}

struct Planned<'a> {
    info: &'a GgufTensorInfo,
    hf_name: String,
    shape: Vec<i64>,
    order: RowOrder,
}

/// Match every tensor of the GGUF to its HF name and expected shape. Tensors with no HF
/// counterpart (e.g. `rope_freqs` of LLaMA-3 rope scaling) are an error, not silently
/// dropped, since the model would compute something else without them.
fn plan_tensors<'a>(g: &'a GgufFile, p: &LlamaParams) -> Result<Vec<Planned<'a>>> {
    let sizes = super::names::LlamaSizes {
        layers: p.n_layer as i64,
        hidden: p.n_embd as i64,
        ff: p.n_ff as i64,
        vocab: p.vocab as i64,
        heads: p.n_head as i64,
        kv_heads: p.n_head_kv as i64,
        head_dim: p.head_dim as i64,
        lm_head: g.tensor("output.weight").is_some(),
    };
    let want: Vec<(String, String, Vec<i64>, RowOrder)> = super::names::llama_tensors(sizes)
        .into_iter()
        .map(|t| {
            let order = t
                .qk_heads
                .map_or(RowOrder::Keep, |n| RowOrder::Unpermute(n as u64));
            (t.gguf, t.hf, t.shape, order)
        })
        .collect();

    let mut planned = Vec::with_capacity(want.len());
    for (gname, hf_name, shape, order) in want {
        let info = g.tensor(&gname).ok_or_else(|| Error::MissingTensor {
            path: g.path.clone(),
            name: gname.clone(),
        })?;
        if info.shape() != shape {
            return Err(Error::Shape {
                path: g.path.clone(),
                name: gname,
                got: info.shape(),
                want: shape,
            });
        }
        planned.push(Planned {
            info,
            hf_name,
            shape,
            order,
        });
    }
    let used: BTreeSet<&str> = planned.iter().map(|p| p.info.name.as_str()).collect();
    let extra: Vec<&str> = g
        .tensors
        .iter()
        .map(|t| t.name.as_str())
        .filter(|n| !used.contains(n))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra.iter().take(8).copied().collect();
        return Err(Error::unsupported(
            &g.path,
            format!(
                "{} tensor(s) have no Hugging Face LLaMA counterpart (with block_count {}): {}",
                extra.len(),
                p.n_layer,
                shown.join(", ")
            ),
        ));
    }
    // Refuse types we cannot read before spending time on the others.
    if let Some(bad) = planned
        .iter()
        .find(|p| !p.info.ggml_type.is_dequantisable())
    {
        return Err(Error::unsupported(
            &g.path,
            format!(
                "tensor `{}` has {}, which cannot be dequantised here",
                bad.info.name, bad.info.ggml_type
            ),
        ));
    }
    Ok(planned)
}

/// The HF `config.json` of a LLaMA GGUF.
fn hf_config(p: &LlamaParams, tied: bool, tok: &gguf_tokenizer::GgufTokenizer) -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": p.n_embd,
        "intermediate_size": p.n_ff,
        "num_hidden_layers": p.n_layer,
        "num_attention_heads": p.n_head,
        "num_key_value_heads": p.n_head_kv,
        "head_dim": p.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": p.n_ctx,
        "rms_norm_eps": p.eps,
        "rope_theta": p.rope_theta,
        "rope_scaling": p.rope_scaling,
        "vocab_size": p.vocab,
        "tie_word_embeddings": tied,
        "attention_bias": false,
        "mlp_bias": false,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
        "torch_dtype": "float32",
    })
}

/// Import a LLaMA-architecture GGUF: HF config, f32 weights under HF names and layouts,
/// and the tokenizer files. Write it with [`super::import::write_checkpoint`].
pub fn import(path: &Path) -> Result<ImportedCheckpoint> {
    let g = GgufFile::open(path)?;
    let arch = g.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(Error::unsupported(
            path,
            format!("general.architecture `{arch}` (only `llama` GGUFs can be imported)"),
        ));
    }
    let tok = gguf_tokenizer::build(&g)?;
    let vocab = tok.vocab_size as u64;
    let p = LlamaParams::from_gguf(&g, vocab)?;
    let plan = plan_tensors(&g, &p)?;
    let tied = g.tensor("output.weight").is_none();
    let mut tensors = Vec::with_capacity(plan.len());
    for t in &plan {
        let mut data = g.read_f32(t.info)?;
        if let RowOrder::Unpermute(n_head) = t.order {
            let (rows, cols) = (t.shape[0] as usize, t.shape[1] as usize);
            data = unpermute_qk_rows(&data, rows, cols, n_head as usize)
                .map_err(|m| Error::format(path, format!("tensor `{}`: {m}", t.info.name)))?;
        }
        let tensor = Tensor::from_slice(&data).f_reshape(&t.shape)?;
        tensors.push((t.hf_name.clone(), tensor));
    }
    Ok(ImportedCheckpoint {
        config: hf_config(&p, tied, &tok),
        tensors,
        tokenizer: tok.tokenizer,
        tokenizer_config: tok.tokenizer_config,
        special_tokens_map: Some(tok.special_tokens_map),
        generation_config: Some(tok.generation_config),
    })
}

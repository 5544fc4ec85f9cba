//! The tensors of a LLaMA checkpoint under both names, GGUF's and Hugging Face's: the one
//! table the importer and the exporter read.

/// One tensor: its GGUF and HF names, its HF shape, and for q/k the head count whose rows
/// llama.cpp stores interleaved.
#[derive(Debug, Clone)]
pub struct TensorName {
    pub gguf: String,
    pub hf: String,
    pub shape: Vec<i64>,
    pub qk_heads: Option<i64>,
}

/// The sizes the table is built from.
#[derive(Debug, Clone, Copy)]
pub struct LlamaSizes {
    pub layers: i64,
    pub hidden: i64,
    pub ff: i64,
    pub vocab: i64,
    pub heads: i64,
    pub kv_heads: i64,
    pub head_dim: i64,
    /// A separate output head (`output.weight` / `lm_head.weight`).
    pub lm_head: bool,
}

pub fn llama_tensors(s: LlamaSizes) -> Vec<TensorName> {
    let (h, ff, v) = (s.hidden, s.ff, s.vocab);
    let (q_out, kv_out) = (s.heads * s.head_dim, s.kv_heads * s.head_dim);
    let t = |gguf: String, hf: String, shape: Vec<i64>, qk_heads| TensorName {
        gguf,
        hf,
        shape,
        qk_heads,
    };
    let mut out = vec![t(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        vec![v, h],
        None,
    )];
    for l in 0..s.layers {
        let layer: [(&str, &str, Vec<i64>, Option<i64>); 9] = [
            ("attn_norm", "input_layernorm", vec![h], None),
            ("attn_q", "self_attn.q_proj", vec![q_out, h], Some(s.heads)),
            (
                "attn_k",
                "self_attn.k_proj",
                vec![kv_out, h],
                Some(s.kv_heads),
            ),
            ("attn_v", "self_attn.v_proj", vec![kv_out, h], None),
            ("attn_output", "self_attn.o_proj", vec![h, q_out], None),
            ("ffn_norm", "post_attention_layernorm", vec![h], None),
            ("ffn_gate", "mlp.gate_proj", vec![ff, h], None),
            ("ffn_up", "mlp.up_proj", vec![ff, h], None),
            ("ffn_down", "mlp.down_proj", vec![h, ff], None),
        ];
        for (g, hf, shape, heads) in layer {
            out.push(t(
                format!("blk.{l}.{g}.weight"),
                format!("model.layers.{l}.{hf}.weight"),
                shape,
                heads,
            ));
        }
    }
    out.push(t(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        vec![h],
        None,
    ));
    if s.lm_head {
        out.push(t(
            "output.weight".into(),
            "lm_head.weight".into(),
            vec![v, h],
            None,
        ));
    }
    out
}

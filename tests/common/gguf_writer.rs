//! A GGUF writer for tests: small files built key by key and tensor by tensor, and
//! `tiny_llama`, a complete one-layer LLaMA small enough to check by hand.

use std::path::{Path, PathBuf};

pub const T_U32: u32 = 4;
pub const T_I32: u32 = 5;
pub const T_F32: u32 = 6;
pub const T_BOOL: u32 = 7;
pub const T_STRING: u32 = 8;
pub const T_ARRAY: u32 = 9;

pub struct Writer {
    pub version: u32,
    pub n_kv: u64,
    pub kv: Vec<u8>,
    pub tensors: Vec<(String, Vec<u64>, u32, Vec<u8>)>,
}

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

impl Writer {
    pub fn new() -> Self {
        Writer {
            version: 3,
            n_kv: 0,
            kv: vec![],
            tensors: vec![],
        }
    }
    pub fn key(&mut self, k: &str, ty: u32) -> &mut Vec<u8> {
        self.n_kv += 1;
        put_str(&mut self.kv, k);
        self.kv.extend(ty.to_le_bytes());
        &mut self.kv
    }
    pub fn u32(&mut self, k: &str, v: u32) -> &mut Self {
        self.key(k, T_U32).extend(v.to_le_bytes());
        self
    }
    pub fn f32(&mut self, k: &str, v: f32) -> &mut Self {
        self.key(k, T_F32).extend(v.to_le_bytes());
        self
    }
    pub fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        self.key(k, T_BOOL).push(v as u8);
        self
    }
    pub fn str(&mut self, k: &str, v: &str) -> &mut Self {
        put_str(self.key(k, T_STRING), v);
        self
    }
    pub fn strs(&mut self, k: &str, v: &[&str]) -> &mut Self {
        let b = self.key(k, T_ARRAY);
        b.extend(T_STRING.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for s in v {
            put_str(b, s);
        }
        self
    }
    pub fn i32s(&mut self, k: &str, v: &[i32]) -> &mut Self {
        let b = self.key(k, T_ARRAY);
        b.extend(T_I32.to_le_bytes());
        b.extend((v.len() as u64).to_le_bytes());
        for x in v {
            b.extend(x.to_le_bytes());
        }
        self
    }
    pub fn tensor(&mut self, name: &str, dims: &[u64], ty: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.into(), dims.to_vec(), ty, data));
        self
    }
    pub fn f32_tensor(&mut self, name: &str, dims: &[u64], f: impl Fn(usize) -> f32) -> &mut Self {
        let n: u64 = dims.iter().product();
        let data = (0..n as usize).flat_map(|i| f(i).to_le_bytes()).collect();
        self.tensor(name, dims, 0, data)
    }
    pub fn bytes(&self) -> Vec<u8> {
        let align = |x: usize| x.div_ceil(32) * 32;
        let mut out = b"GGUF".to_vec();
        out.extend(self.version.to_le_bytes());
        out.extend((self.tensors.len() as u64).to_le_bytes());
        out.extend(self.n_kv.to_le_bytes());
        out.extend(&self.kv);
        let mut offset = 0usize;
        let mut offsets = vec![];
        for (name, dims, ty, data) in &self.tensors {
            put_str(&mut out, name);
            out.extend((dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend(d.to_le_bytes());
            }
            out.extend(ty.to_le_bytes());
            out.extend((offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = align(offset + data.len());
        }
        out.resize(align(out.len()), 0);
        let start = out.len();
        for ((_, _, _, data), off) in self.tensors.iter().zip(offsets) {
            out.resize(start + off, 0);
            out.extend(data);
        }
        out
    }
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, self.bytes()).unwrap();
        p
    }
}

pub fn f16(v: f32) -> [u8; 2] {
    half::f16::from_f32(v).to_bits().to_le_bytes()
}

/// A complete LLaMA GGUF small enough to check by hand: 1 layer, hidden 8, 2 query heads
/// and 1 key-value head of size 4, ffn 16, 8 tokens. Weight values encode their GGUF
/// position (row * 100 + column) so the layout after import can be read off.
pub fn tiny_llama() -> Writer {
    let mut w = Writer::new();
    w.str("general.architecture", "llama")
        .u32("llama.block_count", 1)
        .u32("llama.context_length", 64)
        .u32("llama.embedding_length", 8)
        .u32("llama.feed_forward_length", 16)
        .u32("llama.attention.head_count", 2)
        .u32("llama.attention.head_count_kv", 1)
        .u32("llama.rope.dimension_count", 4)
        .f32("llama.rope.freq_base", 10000.0)
        .f32("llama.attention.layer_norm_rms_epsilon", 1e-5)
        .str("tokenizer.ggml.model", "gpt2")
        .str("tokenizer.ggml.pre", "smollm")
        .strs(
            "tokenizer.ggml.tokens",
            &[
                "<|endoftext|>",
                "a",
                "b",
                "1",
                "Ġ",
                "ab",
                "Ġa",
                "<|im_start|>",
            ],
        )
        .i32s("tokenizer.ggml.token_type", &[3, 1, 1, 1, 1, 1, 1, 3])
        .strs("tokenizer.ggml.merges", &["a b", "Ġ a"])
        .u32("tokenizer.ggml.bos_token_id", 7)
        .u32("tokenizer.ggml.eos_token_id", 0)
        .bool("tokenizer.ggml.add_bos_token", false);
    let pos = |cols: usize| move |i: usize| ((i / cols) * 100 + i % cols) as f32;
    w.f32_tensor("token_embd.weight", &[8, 8], pos(8))
        .f32_tensor("blk.0.attn_norm.weight", &[8], |_| 1.0)
        .f32_tensor("blk.0.attn_q.weight", &[8, 8], pos(8))
        .f32_tensor("blk.0.attn_k.weight", &[8, 4], pos(8))
        .f32_tensor("blk.0.attn_v.weight", &[8, 4], pos(8))
        .f32_tensor("blk.0.attn_output.weight", &[8, 8], pos(8))
        .f32_tensor("blk.0.ffn_norm.weight", &[8], |_| 1.0)
        .f32_tensor("blk.0.ffn_gate.weight", &[8, 16], pos(8))
        .f32_tensor("blk.0.ffn_up.weight", &[8, 16], pos(8))
        .f32_tensor("blk.0.ffn_down.weight", &[16, 8], pos(16))
        .f32_tensor("output_norm.weight", &[8], |_| 1.0);
    w
}

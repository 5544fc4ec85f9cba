//! The LLaMA-family model: config, weights as plain data, forward pass, checkpoint I/O and
//! importers for the formats the shipped models come in.

pub mod config;
pub mod forward;
pub mod fused;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod import;
pub mod kept;
pub mod layer;
pub mod llama2c;
pub mod load;
pub mod packed_attention;
pub mod rope;
pub mod safetensors_io;
pub mod save;
pub mod synthetic;
pub mod tokenizer;

pub use config::{Family, ModelConfig};
pub use forward::{AttnMask, Tap};
pub use layer::{Layer, Linear};

use tch::{Device, Kind, Tensor};

/// A decoder-only transformer as plain data. Later stages replace, drop or build entries
/// of `layers`; `config.num_hidden_layers` follows `layers.len()` when saving.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when the output head is tied to the input embedding.
    pub lm_head: Option<Tensor>,
    pub device: Device,
    pub dtype: Kind,
    rope: rope::Rope,
}

impl Model {
    pub fn new(
        config: ModelConfig,
        embed: Tensor,
        layers: Vec<Layer>,
        norm: Tensor,
        lm_head: Option<Tensor>,
    ) -> Model {
        let device = embed.device();
        let dtype = embed.kind();
        let rope = rope::Rope::new(&config, device);
        Model {
            config,
            embed,
            layers,
            norm,
            lm_head,
            device,
            dtype,
            rope,
        }
    }

    /// The same model sharing every tensor's storage: a handle another thread can own
    /// (a tensor may be sent, not shared), for workers that only read the weights.
    pub fn shallow_clone(&self) -> Model {
        Model {
            config: self.config.clone(),
            embed: self.embed.shallow_clone(),
            layers: self.layers.iter().map(Layer::shallow_clone).collect(),
            norm: self.norm.shallow_clone(),
            lm_head: self.lm_head.as_ref().map(Tensor::shallow_clone),
            device: self.device,
            dtype: self.dtype,
            rope: self.rope.shallow_clone(),
        }
    }

    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// A copy of the weights on `device` in `kind` (a no-op handle where nothing changes).
    pub fn to(&self, device: Device, kind: Kind) -> Model {
        let f = |t: &Tensor| t.to_device(device).to_kind(kind);
        Model::new(
            self.config.clone(),
            f(&self.embed),
            self.layers.iter().map(|l| l.map_tensors(&f)).collect(),
            f(&self.norm),
            self.lm_head.as_ref().map(f),
        )
    }

    /// The output projection (tied or separate), `[vocab, hidden]`.
    pub fn head_weight(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }

    /// Every tensor with its Hugging Face name, in checkpoint order.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), &self.embed)];
        for (i, layer) in self.layers.iter().enumerate() {
            for (name, t) in layer.named_tensors() {
                out.push((format!("model.layers.{i}.{name}"), t));
            }
        }
        out.push(("model.norm.weight".into(), &self.norm));
        if let Some(h) = &self.lm_head {
            out.push(("lm_head.weight".into(), h));
        }
        out
    }

    /// The config as it describes this model now (layer count follows `layers`).
    pub fn current_config(&self) -> ModelConfig {
        let mut c = self.config.clone();
        c.num_hidden_layers = self.layers.len() as i64;
        c.tie_word_embeddings = self.lm_head.is_none();
        c
    }

    pub fn num_params(&self) -> i64 {
        self.named_tensors()
            .iter()
            .map(|(_, t)| t.numel() as i64)
            .sum()
    }
}

//! Load a Hugging Face checkpoint directory (`config.json` + `model.safetensors` or a
//! sharded `model.safetensors.index.json`) into a [`Model`], checking every shape against
//! the config.

use super::config::ModelConfig;
use super::layer::{Layer, Linear};
use super::safetensors_io::SafetensorsFile;
use super::Model;
use crate::error::{Error, Result};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// All safetensors files of a checkpoint, with a name -> file lookup.
pub struct WeightFiles {
    files: Vec<SafetensorsFile>,
    index: BTreeMap<String, usize>,
    dir: PathBuf,
}

impl WeightFiles {
    pub fn open(dir: &Path) -> Result<Self> {
        let single = dir.join("model.safetensors");
        let index_path = dir.join("model.safetensors.index.json");
        let mut files = vec![];
        let mut index = BTreeMap::new();
        if index_path.exists() {
            let text = crate::error::read_to_string(&index_path)?;
            let v: serde_json::Value = serde_json::from_str(&text)
                .map_err(|e| Error::format(&index_path, format!("not valid JSON: {e}")))?;
            let map = v
                .get("weight_map")
                .and_then(|m| m.as_object())
                .ok_or_else(|| Error::format(&index_path, "no `weight_map` object"))?;
            let shards: BTreeSet<&str> = map.values().filter_map(|s| s.as_str()).collect();
            let mut shard_pos = BTreeMap::new();
            for s in shards {
                shard_pos.insert(s.to_string(), files.len());
                files.push(SafetensorsFile::open(&dir.join(s))?);
            }
            for (name, shard) in map {
                let shard = shard.as_str().unwrap_or_default();
                let pos = shard_pos[shard];
                if !files[pos].tensors.contains_key(name) {
                    return Err(Error::MissingTensor {
                        path: files[pos].path.clone(),
                        name: name.clone(),
                    });
                }
                index.insert(name.clone(), pos);
            }
        } else if single.exists() {
            let f = SafetensorsFile::open(&single)?;
            for name in f.tensors.keys() {
                index.insert(name.clone(), 0);
            }
            files.push(f);
        } else {
            return Err(Error::io(
                &single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json in the checkpoint",
                ),
            ));
        }
        Ok(WeightFiles {
            files,
            index,
            dir: dir.to_path_buf(),
        })
    }

    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.index.keys()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    fn file_of(&self, name: &str) -> Result<&SafetensorsFile> {
        let pos = self.index.get(name).ok_or_else(|| Error::MissingTensor {
            path: self
                .files
                .first()
                .map(|f| f.path.clone())
                .unwrap_or(self.dir.clone()),
            name: name.to_string(),
        })?;
        Ok(&self.files[*pos])
    }

    /// Load `name`, checking its shape.
    pub fn load(&self, name: &str, shape: &[i64], kind: Kind, device: Device) -> Result<Tensor> {
        let f = self.file_of(name)?;
        let info = &f.tensors[name];
        if info.shape != shape {
            return Err(Error::Shape {
                path: f.path.clone(),
                name: name.to_string(),
                got: info.shape.clone(),
                want: shape.to_vec(),
            });
        }
        f.load(name, Some(kind), device)
    }
}

/// Load options: where the model lives and in which precision it computes.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    pub device: Device,
    pub dtype: Kind,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: Device::Cpu,
            dtype: Kind::Float,
        }
    }
}

pub fn load_model(dir: &Path, opts: LoadOptions) -> Result<Model> {
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let w = WeightFiles::open(dir)?;
    check_depth(&config, &w, dir)?;
    let c = &config;
    let h = c.hidden_size;
    let mut r = TensorReader {
        w: &w,
        kind: opts.dtype,
        device: opts.device,
        used: BTreeSet::new(),
    };
    let embed = r.get("model.embed_tokens.weight".into(), &[c.vocab_size, h])?;
    let mut layers = Vec::new();
    for l in 0..c.num_hidden_layers {
        layers.push(load_layer(&mut r, c, l)?);
    }
    let norm = r.get("model.norm.weight".into(), &[h])?;
    let lm_head = if c.tie_word_embeddings {
        None
    } else {
        Some(r.get("lm_head.weight".into(), &[c.vocab_size, h])?)
    };
    check_unused(c, &w, &r.used, dir)?;
    Ok(Model::new(config, embed, layers, norm, lm_head))
}

/// Reads the tensors of [`load_model`] in one dtype onto one device, remembering every
/// name read so that tensors the config does not describe can be reported.
struct TensorReader<'a> {
    w: &'a WeightFiles,
    kind: Kind,
    device: Device,
    used: BTreeSet<String>,
}

impl TensorReader<'_> {
    /// Load `name`, checking its shape, and mark it as used.
    fn get(&mut self, name: String, shape: &[i64]) -> Result<Tensor> {
        let t = self.w.load(&name, shape, self.kind, self.device)?;
        self.used.insert(name);
        Ok(t)
    }

    /// The projection `{p}{name}`: an `[out, inp]` weight, and an `[out]` bias when `bias`.
    fn linear(&mut self, p: &str, name: &str, out: i64, inp: i64, bias: bool) -> Result<Linear> {
        let weight = self.get(format!("{p}{name}.weight"), &[out, inp])?;
        let bias = if bias {
            Some(self.get(format!("{p}{name}.bias"), &[out])?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }
}

/// Decoder layer `l`: the seven projections, then the optional q/k norms, then the two
/// layer norms, shaped from the config.
fn load_layer(r: &mut TensorReader, c: &ModelConfig, l: i64) -> Result<Layer> {
    let (h, i) = (c.hidden_size, c.intermediate_size);
    let q_out = c.num_attention_heads * c.head_dim;
    let kv_out = c.num_key_value_heads * c.head_dim;
    let p = format!("model.layers.{l}.");
    let q_proj = r.linear(&p, "self_attn.q_proj", q_out, h, c.qkv_bias)?;
    let k_proj = r.linear(&p, "self_attn.k_proj", kv_out, h, c.qkv_bias)?;
    let v_proj = r.linear(&p, "self_attn.v_proj", kv_out, h, c.qkv_bias)?;
    let o_proj = r.linear(&p, "self_attn.o_proj", h, q_out, c.o_bias)?;
    let gate_proj = r.linear(&p, "mlp.gate_proj", i, h, c.mlp_bias)?;
    let up_proj = r.linear(&p, "mlp.up_proj", i, h, c.mlp_bias)?;
    let down_proj = r.linear(&p, "mlp.down_proj", h, i, c.mlp_bias)?;
    let (q_norm, k_norm) = if c.qk_norm {
        (
            Some(r.get(format!("{p}self_attn.q_norm.weight"), &[c.head_dim])?),
            Some(r.get(format!("{p}self_attn.k_norm.weight"), &[c.head_dim])?),
        )
    } else {
        (None, None)
    };
    Ok(Layer {
        input_norm: r.get(format!("{p}input_layernorm.weight"), &[h])?,
        q_proj,
        k_proj,
        v_proj,
        o_proj,
        q_norm,
        k_norm,
        post_norm: r.get(format!("{p}post_attention_layernorm.weight"), &[h])?,
        gate_proj,
        up_proj,
        down_proj,
    })
}

/// Tensors we did not read mean the config and the weights disagree (e.g. a bias the
/// config does not declare, or more layers than num_hidden_layers).
fn check_unused(
    c: &ModelConfig,
    w: &WeightFiles,
    used: &BTreeSet<String>,
    dir: &Path,
) -> Result<()> {
    let unused: Vec<&String> = w
        .names()
        .filter(|n| !used.contains(*n))
        .filter(|n| !n.ends_with("rotary_emb.inv_freq"))
        .filter(|n| !(c.tie_word_embeddings && n.as_str() == "lm_head.weight"))
        .collect();
    if !unused.is_empty() {
        let shown: Vec<&str> = unused.iter().take(5).map(|s| s.as_str()).collect();
        return Err(Error::config(
            dir.join("config.json"),
            format!(
                "the weights hold {} tensor(s) the config does not describe, e.g. {}",
                unused.len(),
                shown.join(", ")
            ),
        ));
    }
    Ok(())
}

/// The config's depth against the layers the weights hold, checked before anything is
/// sized from the config: a corrupt `num_hidden_layers` is named as such instead of
/// surfacing as the first missing tensor (or an allocation of that many layers).
fn check_depth(c: &ModelConfig, w: &WeightFiles, dir: &Path) -> Result<()> {
    let indices: BTreeSet<i64> = w
        .names()
        .filter_map(|n| {
            n.strip_prefix("model.layers.")?
                .split('.')
                .next()?
                .parse()
                .ok()
        })
        .collect();
    let held = indices.len() as i64;
    let contiguous = indices.iter().copied().eq(0..held);
    if held != c.num_hidden_layers || !contiguous {
        let range = match (indices.first(), indices.last()) {
            (Some(a), Some(b)) => format!("model.layers.{a} .. model.layers.{b}"),
            _ => "none".into(),
        };
        return Err(Error::config(
            dir.join("config.json"),
            format!(
                "num_hidden_layers is {}, but the weights hold {held} layer(s) ({range}{})",
                c.num_hidden_layers,
                if contiguous { "" } else { ", not contiguous" }
            ),
        ));
    }
    Ok(())
}

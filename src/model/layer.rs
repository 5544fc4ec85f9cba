//! A decoder layer as plain data: named tensors that pruning can slice, merge, drop or
//! build from scratch. Nothing here knows how the forward pass uses them.

use tch::Tensor;

/// A low-rank update `scale * B A` trained beside a frozen weight (LoRA): `a` is
/// `[rank, in]`, `b` is `[out, rank]`; dropout applies to the adapter's input while
/// `training` is set. Only recovery creates adapters, and merges them before saving.
#[derive(Debug)]
pub struct Adapter {
    pub a: Tensor,
    pub b: Tensor,
    pub scale: f64,
    pub dropout: f64,
    pub training: bool,
}

/// `y = x W^T + b`, the layout of a PyTorch `nn.Linear`: weight is `[out, in]`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    pub adapter: Option<Adapter>,
}

impl Linear {
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Linear {
            weight,
            bias,
            adapter: None,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let y = x.linear(&self.weight, self.bias.as_ref());
        match &self.adapter {
            None => y,
            Some(ad) => {
                let xd = if ad.training && ad.dropout > 0.0 {
                    x.dropout(ad.dropout, true)
                } else {
                    x.shallow_clone()
                };
                y + xd
                    .linear::<&Tensor>(&ad.a, None)
                    .linear::<&Tensor>(&ad.b, None)
                    * ad.scale
            }
        }
    }

    /// Fold the adapter into the weight (`W += scale * B A`) and remove it.
    pub fn merge_adapter(&mut self) {
        if let Some(ad) = self.adapter.take() {
            let delta = tch::no_grad(|| ad.b.detach().matmul(&ad.a.detach()) * ad.scale);
            let _ = tch::no_grad(|| self.weight.g_add_(&delta.to_kind(self.weight.kind())));
        }
    }

    /// The same weights (and adapter), sharing storage.
    pub fn shallow_clone(&self) -> Linear {
        Linear {
            weight: self.weight.shallow_clone(),
            bias: self.bias.as_ref().map(Tensor::shallow_clone),
            adapter: self.adapter.as_ref().map(|a| Adapter {
                a: a.a.shallow_clone(),
                b: a.b.shallow_clone(),
                ..*a
            }),
        }
    }

    /// A deep copy (new storage), for merges that must not alias their sources.
    pub fn deep_clone(&self) -> Linear {
        Linear::new(self.weight.copy(), self.bias.as_ref().map(Tensor::copy))
    }
}

#[derive(Debug)]
pub struct Layer {
    pub input_norm: Tensor,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    /// Qwen3 per-head RMSNorm weights, `[head_dim]`.
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub post_norm: Tensor,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Layer {
    /// Every tensor with its Hugging Face name relative to `model.layers.{i}.`.
    pub fn named_tensors(&self) -> Vec<(String, &Tensor)> {
        let mut out: Vec<(String, &Tensor)> =
            vec![("input_layernorm.weight".into(), &self.input_norm)];
        fn push_lin<'a>(out: &mut Vec<(String, &'a Tensor)>, name: &str, l: &'a Linear) {
            out.push((format!("{name}.weight"), &l.weight));
            if let Some(b) = &l.bias {
                out.push((format!("{name}.bias"), b));
            }
        }
        push_lin(&mut out, "self_attn.q_proj", &self.q_proj);
        push_lin(&mut out, "self_attn.k_proj", &self.k_proj);
        push_lin(&mut out, "self_attn.v_proj", &self.v_proj);
        push_lin(&mut out, "self_attn.o_proj", &self.o_proj);
        push_lin(&mut out, "mlp.gate_proj", &self.gate_proj);
        push_lin(&mut out, "mlp.up_proj", &self.up_proj);
        push_lin(&mut out, "mlp.down_proj", &self.down_proj);
        if let Some(t) = &self.q_norm {
            out.push(("self_attn.q_norm.weight".into(), t));
        }
        if let Some(t) = &self.k_norm {
            out.push(("self_attn.k_norm.weight".into(), t));
        }
        out.push(("post_attention_layernorm.weight".into(), &self.post_norm));
        out
    }

    pub fn shallow_clone(&self) -> Layer {
        Layer {
            input_norm: self.input_norm.shallow_clone(),
            q_proj: self.q_proj.shallow_clone(),
            k_proj: self.k_proj.shallow_clone(),
            v_proj: self.v_proj.shallow_clone(),
            o_proj: self.o_proj.shallow_clone(),
            q_norm: self.q_norm.as_ref().map(Tensor::shallow_clone),
            k_norm: self.k_norm.as_ref().map(Tensor::shallow_clone),
            post_norm: self.post_norm.shallow_clone(),
            gate_proj: self.gate_proj.shallow_clone(),
            up_proj: self.up_proj.shallow_clone(),
            down_proj: self.down_proj.shallow_clone(),
        }
    }

    /// Every tensor passed through `f` (adapters are not carried over): a copy on another
    /// device or in another dtype.
    pub fn map_tensors(&self, f: &dyn Fn(&Tensor) -> Tensor) -> Layer {
        let lin = |l: &Linear| Linear::new(f(&l.weight), l.bias.as_ref().map(f));
        Layer {
            input_norm: f(&self.input_norm),
            q_proj: lin(&self.q_proj),
            k_proj: lin(&self.k_proj),
            v_proj: lin(&self.v_proj),
            o_proj: lin(&self.o_proj),
            q_norm: self.q_norm.as_ref().map(f),
            k_norm: self.k_norm.as_ref().map(f),
            post_norm: f(&self.post_norm),
            gate_proj: lin(&self.gate_proj),
            up_proj: lin(&self.up_proj),
            down_proj: lin(&self.down_proj),
        }
    }

    /// The seven projections, by their Hugging Face names.
    pub fn projections_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        [
            ("self_attn.q_proj", &mut self.q_proj),
            ("self_attn.k_proj", &mut self.k_proj),
            ("self_attn.v_proj", &mut self.v_proj),
            ("self_attn.o_proj", &mut self.o_proj),
            ("mlp.gate_proj", &mut self.gate_proj),
            ("mlp.up_proj", &mut self.up_proj),
            ("mlp.down_proj", &mut self.down_proj),
        ]
    }

    pub fn deep_clone(&self) -> Layer {
        Layer {
            input_norm: self.input_norm.copy(),
            q_proj: self.q_proj.deep_clone(),
            k_proj: self.k_proj.deep_clone(),
            v_proj: self.v_proj.deep_clone(),
            o_proj: self.o_proj.deep_clone(),
            q_norm: self.q_norm.as_ref().map(Tensor::copy),
            k_norm: self.k_norm.as_ref().map(Tensor::copy),
            post_norm: self.post_norm.copy(),
            gate_proj: self.gate_proj.deep_clone(),
            up_proj: self.up_proj.deep_clone(),
            down_proj: self.down_proj.deep_clone(),
        }
    }
}

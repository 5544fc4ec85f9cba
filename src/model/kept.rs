//! The last layer at some tokens only. Scoring reads the model's output at the positions
//! whose next token is scored, about a third of the tokens on the seven tasks. Every
//! earlier layer must run at every token (later tokens attend to their keys and values),
//! but the last layer's queries, attention output and MLP matter only where its output is
//! read. Its keys and values still cover every token, and go into the cache as usual, so
//! a kept token's output is the full forward's.

use super::config::ModelConfig;
use super::forward::{self, Context, KvCache, NoTap, Rotary, Unpadded};
use super::layer::Layer;
use super::Model;
use crate::error::{Error, Result};
use tch::Tensor;

/// The tokens whose last-layer output is read, as queries in a padded layout of their own.
pub struct KeptQueries {
    /// Flat indices of the kept tokens, `[S]`, grouped by row.
    idx: Tensor,
    layout: Unpadded,
    /// `[rows, 1, most kept in a row, keys]`: each kept token's row of the attention mask.
    mask: Tensor,
    cos: Tensor,
    sin: Tensor,
}

impl Model {
    /// Queries at `idx` (flat indices into unpadded hidden states, grouped by row, at
    /// `positions`), `per_row[r]` of them in row `r`. `mask` (bool or additive) gives each
    /// one the keys it attends to, row by row in the order of `idx`; padding queries must
    /// see at least one key, or softmax has an empty row.
    pub fn kept_queries(
        &self,
        idx: &[i64],
        positions: &[i64],
        per_row: &[usize],
        mask: Tensor,
    ) -> KeptQueries {
        let dev = self.device;
        let pos = Tensor::from_slice(positions).view([1, -1]).to_device(dev);
        let (cos, sin) = self.rope.cos_sin(&pos);
        KeptQueries {
            idx: Tensor::from_slice(idx).to_device(dev),
            layout: Unpadded::new(per_row, dev),
            mask: mask.to_device(dev),
            cos: cos.to_kind(self.dtype),
            sin: sin.to_kind(self.dtype),
        }
    }

    /// Every layer on unpadded hidden states `h` (`[1, T, hidden]`), the last one read at
    /// the kept tokens only: `[1, S, hidden]`. `cache` (when given) takes every layer's keys
    /// and values, the last layer's included.
    pub fn run_layers_kept(
        &self,
        h: Tensor,
        ctx: &Context,
        kept: &KeptQueries,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Tensor> {
        if ctx.unpadded.is_none() {
            return Err(Error::Invalid(
                "internal: kept queries need unpadded hidden states".into(),
            ));
        }
        let Some(last) = self.n_layers().checked_sub(1) else {
            return Ok(h.index_select(1, &kept.idx));
        };
        let h = self.run_layers(h, 0..last, ctx, &mut NoTap, cache.as_deref_mut());
        let kv = cache.map(|c| (&mut c.k[last], &mut c.v[last]));
        Ok(layer_at_kept(
            self,
            &self.layers[last],
            last,
            &h,
            ctx,
            kept,
            kv,
        ))
    }
}

/// One decoder layer with keys and values at every token and the rest at the kept ones.
fn layer_at_kept(
    model: &Model,
    layer: &Layer,
    idx: usize,
    x: &Tensor,
    ctx: &Context,
    kept: &KeptQueries,
    cache: Option<(&mut Option<Tensor>, &mut Option<Tensor>)>,
) -> Tensor {
    let c = &model.config;
    let (nh, nkv, hd, eps) = (
        c.num_attention_heads,
        c.num_key_value_heads,
        c.head_dim,
        c.rms_norm_eps,
    );
    let xn = forward::rms_norm(x, &layer.input_norm, eps);
    let layout = ctx.unpadded.as_ref();
    let k = forward::heads(&layer.k_proj, layer.k_norm.as_ref(), &xn, nkv, hd, eps);
    let v = forward::heads(&layer.v_proj, None, &xn, nkv, hd, eps);
    // The last layer's queries, at the kept tokens only (none: nothing but the cache).
    let q = (kept.idx.size()[0] > 0).then(|| {
        let xq = xn.index_select(1, &kept.idx);
        forward::heads(&layer.q_proj, layer.q_norm.as_ref(), &xq, nh, hd, eps)
    });
    let mut cache = cache;
    if let (Some(u), Some(q)) = (layout, &q) {
        let q = Rotary {
            x: q,
            tables: (&kept.cos, &kept.sin),
        };
        let k = Rotary {
            x: &k,
            tables: (&ctx.cos, &ctx.sin),
        };
        let kv = cache.as_mut().map(|(ck, cv)| (&mut **ck, &mut **cv));
        if let Some(attn) = u.attend_within_rows(q, &kept.layout, k, &v, Some(&kept.mask), kv) {
            let xk = x.index_select(1, &kept.idx);
            return finish(c, layer, idx, ctx, &xk, &attn);
        }
    }
    let k = forward::attention_layout(&k, Some((&ctx.cos, &ctx.sin)), layout);
    let (k, v) = forward::through_cache(k, forward::attention_layout(&v, None, layout), cache);
    let Some(q) = q else {
        return x.narrow(1, 0, 0);
    };
    let xk = x.index_select(1, &kept.idx);
    let q = forward::attention_layout(&q, Some((&kept.cos, &kept.sin)), Some(&kept.layout));
    let attn = forward::sdpa(&q, &k, &v, Some(&kept.mask), false, nh != nkv);
    finish(c, layer, idx, ctx, &xk, &kept.layout.unpad(&attn))
}

/// The rest of the layer at the kept tokens `xk`, from their attention output `attn`
/// (`[1, S, heads * d]`).
fn finish(
    c: &ModelConfig,
    layer: &Layer,
    idx: usize,
    ctx: &Context,
    xk: &Tensor,
    attn: &Tensor,
) -> Tensor {
    let h = forward::residual(xk, layer.o_proj.forward(attn));
    let out = forward::mlp_block(c, layer, idx, &h, ctx, &mut NoTap);
    forward::residual(&h, out)
}

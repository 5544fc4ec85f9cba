//! AdamW with PyTorch's update rule (decoupled weight decay, bias-corrected moments, the
//! same order of operations), a linear-warmup + cosine learning-rate schedule, and global
//! gradient-norm clipping as `torch.nn.utils.clip_grad_norm_` computes it.

use tch::Tensor;

/// Learning rate before optimiser step `s` of `total`: linear warmup over
/// `floor(warmup * total)` steps, then cosine from `lr` down to `min_lr`.
pub fn lr_at(s: usize, total: usize, lr: f64, min_lr: f64, warmup: f64) -> f64 {
    let w = (warmup * total as f64).floor() as usize;
    if s < w {
        return lr * (s + 1) as f64 / w as f64;
    }
    let p = (s - w) as f64 / (total.saturating_sub(w)).max(1) as f64;
    min_lr + (lr - min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

pub struct AdamW {
    params: Vec<Tensor>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    pub betas: [f64; 2],
    pub eps: f64,
    pub weight_decay: f64,
    pub step: u64,
}

impl AdamW {
    /// `params` are shallow handles of leaf tensors that require grad.
    pub fn new(params: Vec<Tensor>, betas: [f64; 2], eps: f64, weight_decay: f64) -> AdamW {
        let m = params.iter().map(Tensor::zeros_like).collect();
        let v = params.iter().map(Tensor::zeros_like).collect();
        AdamW {
            params,
            m,
            v,
            betas,
            eps,
            weight_decay,
            step: 0,
        }
    }

    pub fn params(&self) -> &[Tensor] {
        &self.params
    }

    /// One update at learning rate `lr` from the accumulated gradients. Mirrors
    /// PyTorch's single-tensor AdamW operation by operation (same roundings).
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let [b1, b2] = self.betas;
        let t = self.step as f64;
        let bc1 = 1.0 - b1.powf(t);
        let bc2_sqrt = (1.0 - b2.powf(t)).sqrt();
        let step_size = lr / bc1;
        tch::no_grad(|| {
            for ((p, m), v) in self.params.iter().zip(&mut self.m).zip(&mut self.v) {
                let g = p.grad();
                if !g.defined() {
                    continue;
                }
                let mut p = p.shallow_clone();
                if self.weight_decay != 0.0 {
                    let _ = p.g_mul_scalar_(1.0 - lr * self.weight_decay);
                }
                let _ = m.lerp_(&g, 1.0 - b1);
                // v = v * b2 + (1 - b2) * g * g, with the scalar applied first as addcmul does.
                let _ = v.g_mul_scalar_(b2);
                let _ = v.addcmul_(&(&g * (1.0 - b2)), &g);
                let denom = v.sqrt().g_div_scalar(bc2_sqrt).g_add_scalar(self.eps);
                let _ = p.addcdiv_(&(&*m * -step_size), &denom);
            }
        });
    }

    pub fn zero_grad(&mut self) {
        for p in &mut self.params {
            p.zero_grad();
        }
    }
}

/// Total 2-norm of the gradients; when `max_norm` is set, scale them by
/// `min(1, max_norm / (norm + 1e-6))` as clip_grad_norm_ does. Returns the norm before.
pub fn clip_grad_norm(params: &[Tensor], max_norm: Option<f64>) -> f64 {
    tch::no_grad(|| {
        let grads: Vec<Tensor> = params
            .iter()
            .map(Tensor::grad)
            .filter(Tensor::defined)
            .collect();
        if grads.is_empty() {
            return 0.0;
        }
        let norms: Vec<Tensor> = grads.iter().map(Tensor::norm).collect();
        // aten::norm with p = 2 runs the same reduction as torch.linalg.vector_norm.
        let total = Tensor::stack(&norms, 0).norm();
        if let Some(max) = max_norm {
            // `max / tensor` in PyTorch is `tensor.reciprocal() * max`.
            let coef = ((&total + 1e-6).reciprocal() * max).clamp_max(1.0);
            for g in &grads {
                let _ = g.shallow_clone().g_mul_(&coef);
            }
        }
        total.double_value(&[])
    })
}

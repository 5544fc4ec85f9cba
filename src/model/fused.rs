//! RMSNorm in one pass per row, for CPU inference at one libtorch thread (the scoring
//! workers, `crate::eval::workers`). libtorch's `rms_norm` makes four passes over the
//! hidden states (square, mean, scale, weight) with a temporary each: 0.68 ms for SmolLM2's
//! 1072 x 576 at one thread, against 0.15 ms for a row read once to sum its squares and
//! once to write its output. With more threads libtorch splits its passes over them, so it
//! keeps those calls.
//!
//! The arithmetic is transformers' `LlamaRMSNorm` in f32: `w * (x * rsqrt(mean(x^2) + eps))`
//! with each product rounded as there. Only the sum of squares runs in another order
//! (sixteen partial sums), a difference of about one unit in the last place.

use tch::{Device, Kind, Tensor};

/// `rms_norm(x, w, eps)` over the last dimension, or None where this path does not apply
/// (not f32 on the CPU, not contiguous, gradients wanted, or more than one thread).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Option<Tensor> {
    let applies = x.device() == Device::Cpu
        && x.kind() == Kind::Float
        && w.kind() == Kind::Float
        && !x.requires_grad()
        && !w.requires_grad()
        && x.is_contiguous()
        && w.is_contiguous()
        && tch::get_num_threads() == 1;
    if !applies {
        return None;
    }
    let d = *x.size().last()?;
    if d <= 0 || w.size() != [d] {
        return None;
    }
    let n = x.numel();
    let out = Tensor::empty(x.size(), (Kind::Float, Device::Cpu));
    if n == 0 {
        return Some(out);
    }
    // SAFETY: `x` and `out` are contiguous f32 CPU tensors of `n` elements and `w` one of
    // `d`; `out` is fresh, so it aliases neither input; all three outlive the slices.
    let (xs, ws, os) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, n),
            std::slice::from_raw_parts(w.data_ptr() as *const f32, d as usize),
            std::slice::from_raw_parts_mut(out.data_ptr() as *mut f32, n),
        )
    };
    normalize(xs, ws, os, eps as f32);
    Some(out)
}

fn normalize(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2, the one feature the function is compiled for.
        unsafe { normalize_avx2(x, w, out, eps) };
        return;
    }
    rows(x, w, out, eps);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn normalize_avx2(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    rows(x, w, out, eps);
}

/// The loop itself, inlined into each caller so the AVX2 copy is vectorised with AVX2.
#[inline(always)]
fn rows(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    const LANES: usize = 16;
    let d = w.len();
    for (xr, or) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        let mut acc = [0f32; LANES];
        let mut chunks = xr.chunks_exact(LANES);
        for c in &mut chunks {
            for j in 0..LANES {
                acc[j] += c[j] * c[j];
            }
        }
        for (j, &v) in chunks.remainder().iter().enumerate() {
            acc[j] += v * v;
        }
        let sum: f32 = acc.iter().sum();
        let r = 1.0 / (sum / d as f32 + eps).sqrt();
        for ((o, &v), &wv) in or.iter_mut().zip(xr).zip(w) {
            *o = wv * (v * r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equals_libtorch_rms_norm_to_a_few_ulp() {
        tch::set_num_threads(1);
        tch::manual_seed(3);
        for d in [576i64, 64, 7, 1] {
            let x = Tensor::randn([2, 33, d], (Kind::Float, Device::Cpu)) * 3.0;
            let w = Tensor::randn([d], (Kind::Float, Device::Cpu));
            let want = x.rms_norm([d], Some(&w), 1e-5);
            let got = rms_norm(&x, &w, 1e-5).expect("applies");
            let err = (&got - &want).abs().max().double_value(&[]);
            let scale = want.abs().max().double_value(&[]);
            assert!(
                err <= 4.0 * f32::EPSILON as f64 * scale,
                "d {d}: {err} of {scale}"
            );
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        tch::set_num_threads(1);
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([8], (Kind::Float, Device::Cpu));
        assert!(rms_norm(&x.to_kind(Kind::Double), &w.to_kind(Kind::Double), 1e-5).is_none());
        assert!(rms_norm(
            &x.transpose(0, 1),
            &Tensor::ones([4], (Kind::Float, Device::Cpu)),
            1e-5
        )
        .is_none());
        assert!(rms_norm(&x, &Tensor::ones([5], (Kind::Float, Device::Cpu)), 1e-5).is_none());
        assert!(rms_norm(&x.set_requires_grad(true), &w, 1e-5).is_none());
    }
}

//! Element-wise steps fused by hand, for CPU inference in f32. libtorch runs each step as
//! its own pass over memory with a temporary in between; these read their input once per
//! row, on the calling thread. They run at every thread count, so results stay the same
//! whatever `--threads` is (a one-CPU Slurm shard reproduces a two-thread run); their cost
//! is small beside the matrix products even where libtorch would have split them over many
//! threads. Off the CPU, for other dtypes, non-contiguous tensors, or when gradients are
//! wanted, every function declines (returns None or false) and the caller keeps libtorch's
//! ops.
//!
//! - RMSNorm: transformers' `LlamaRMSNorm` in f32, `w * (x * rsqrt(mean(x^2) + eps))`, each
//!   product rounded as there; only the sum of squares runs in another order (sixteen
//!   partial sums). libtorch's four passes took 0.68 ms for SmolLM2's 1072 x 576 at one
//!   thread.
//! - SiLU times up: `silu(g) * u`, as `g / (1 + exp(-g))` then the product, as libtorch
//!   rounds them.
//! - A row's maximum and sum of `exp(x - max)`: the LM head's log-sum-exp per vocabulary
//!   tile, two reads of a row that sits in L1 instead of four passes over the whole tile.
//!
//! `exp` is Cephes' single-precision polynomial (within 2 ulp of the true value; libtorch's
//! Sleef `exp` is within 1), vectorised with AVX2 and FMA where the CPU has them; elsewhere
//! the scalar loops use the standard library's `exp`.

use tch::{Device, Kind, Tensor};

/// Whether `ts` are all contiguous f32 CPU tensors without gradients.
fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.device() == Device::Cpu
            && t.kind() == Kind::Float
            && !t.requires_grad()
            && t.is_contiguous()
    })
}

/// `t`'s elements. SAFETY: `t` must be a contiguous f32 CPU tensor that outlives the
/// slice and that nothing writes to meanwhile.
unsafe fn floats(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
}

/// `t`'s elements, to write. SAFETY: as [`floats`], and no other slice of `t` may be alive.
#[allow(clippy::mut_from_ref)]
unsafe fn floats_mut(t: &Tensor) -> &mut [f32] {
    let n = t.numel();
    if n == 0 {
        return &mut [];
    }
    std::slice::from_raw_parts_mut(t.data_ptr() as *mut f32, n)
}

fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `rms_norm(x, w, eps)` over the last dimension, or None where this path does not apply.
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Option<Tensor> {
    if !applies(&[x, w]) {
        return None;
    }
    let d = *x.size().last()?;
    if d <= 0 || w.size() != [d] {
        return None;
    }
    let out = Tensor::empty(x.size(), (Kind::Float, Device::Cpu));
    // SAFETY: all three are contiguous f32 CPU tensors that live through the call; `out`
    // is fresh, so it aliases neither input.
    let (xs, ws, os) = unsafe { (floats(x), floats(w), floats_mut(&out)) };
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { simd::rms_rows(xs, ws, os, eps as f32) };
        return Some(out);
    }
    rms_rows(xs, ws, os, eps as f32);
    Some(out)
}

/// The RMSNorm loop, inlined into each caller so the AVX2 copy is vectorised with AVX2.
#[inline(always)]
fn rms_rows(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
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

/// `gate = silu(gate) * up` in place; false (nothing done) where this path does not apply.
pub fn silu_mul_(gate: &mut Tensor, up: &Tensor) -> bool {
    if !applies(&[gate, up]) || gate.size() != up.size() {
        return false;
    }
    // SAFETY: contiguous f32 CPU tensors of equal size; `up` is another tensor than `gate`
    // (a fresh product), and only `gate` is written.
    let (g, u) = unsafe { (floats_mut(gate), floats(up)) };
    if std::ptr::eq(g.as_ptr(), u.as_ptr()) && !g.is_empty() {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the function is compiled for.
        unsafe { simd::silu_mul(g, u) };
        return true;
    }
    for (gv, &uv) in g.iter_mut().zip(u) {
        *gv = *gv / (1.0 + (-*gv).exp()) * uv;
    }
    true
}

/// Per row of a `[rows, n]` tensor: its maximum and the sum of `exp(x - max)`, as two
/// `[rows]` tensors; None where this path does not apply.
pub fn max_sumexp(x: &Tensor) -> Option<(Tensor, Tensor)> {
    let size = x.size();
    if !applies(&[x]) || size.len() != 2 || size[1] == 0 {
        return None;
    }
    let (rows, n) = (size[0], size[1] as usize);
    let maxes = Tensor::empty([rows], (Kind::Float, Device::Cpu));
    let sums = Tensor::empty([rows], (Kind::Float, Device::Cpu));
    // SAFETY: contiguous f32 CPU tensors living through the call; the outputs are fresh.
    let (xs, ms, ss) = unsafe { (floats(x), floats_mut(&maxes), floats_mut(&sums)) };
    let simd = has_avx2_fma();
    for ((row, m), s) in xs.chunks_exact(n).zip(ms.iter_mut()).zip(ss.iter_mut()) {
        #[cfg(target_arch = "x86_64")]
        if simd {
            // SAFETY: the CPU has the features the function is compiled for.
            (*m, *s) = unsafe { simd::max_sumexp(row) };
            continue;
        }
        let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        *m = mx;
        *s = row.iter().map(|&v| (v - mx).exp()).sum();
    }
    Some((maxes, sums))
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rms_rows(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
        super::rms_rows(x, w, out, eps);
    }

    /// Cephes `expf` on eight lanes: `exp(x) = 2^n exp(r)`, `r = x - n ln 2` by a two-part
    /// ln 2, `exp(r)` by a degree-7 polynomial. Inputs are clamped to where f32 has a
    /// normal result.
    #[target_feature(enable = "avx2,fma")]
    unsafe fn exp8(x: __m256) -> __m256 {
        let x = _mm256_min_ps(x, _mm256_set1_ps(88.376_26));
        let x = _mm256_max_ps(x, _mm256_set1_ps(-87.336_55));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm256_set1_ps(1.987_569_1e-4);
        for c in [
            1.398_2e-3,
            8.333_452e-3,
            4.166_579_6e-2,
            1.666_666_5e-1,
            0.5,
        ] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let y = _mm256_add_ps(
            _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r),
            _mm256_set1_ps(1.0),
        );
        let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(y, _mm256_castsi256_ps(e))
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn silu_mul(g: &mut [f32], u: &[f32]) {
        let one = _mm256_set1_ps(1.0);
        let mut gc = g.chunks_exact_mut(8);
        let mut uc = u.chunks_exact(8);
        for (gs, us) in (&mut gc).zip(&mut uc) {
            let gv = _mm256_loadu_ps(gs.as_ptr());
            let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), gv));
            let s = _mm256_div_ps(gv, _mm256_add_ps(one, e));
            _mm256_storeu_ps(
                gs.as_mut_ptr(),
                _mm256_mul_ps(s, _mm256_loadu_ps(us.as_ptr())),
            );
        }
        for (gv, &uv) in gc.into_remainder().iter_mut().zip(uc.remainder()) {
            *gv = *gv / (1.0 + (-*gv).exp()) * uv;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hmax(v: __m256) -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().copied().fold(f32::NEG_INFINITY, f32::max)
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let mut a = [0f32; 8];
        _mm256_storeu_ps(a.as_mut_ptr(), v);
        a.iter().sum()
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn max_sumexp(row: &[f32]) -> (f32, f32) {
        let chunks = row.chunks_exact(8);
        let rest = chunks.remainder();
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in chunks.clone() {
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(c.as_ptr()));
        }
        let m = rest.iter().copied().fold(hmax(vm), f32::max);
        let mv = _mm256_set1_ps(m);
        let (mut a, mut b) = (_mm256_setzero_ps(), _mm256_setzero_ps());
        let mut pairs = row.chunks_exact(16);
        for c in &mut pairs {
            let x0 = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv);
            let x1 = _mm256_sub_ps(_mm256_loadu_ps(c.as_ptr().add(8)), mv);
            a = _mm256_add_ps(a, exp8(x0));
            b = _mm256_add_ps(b, exp8(x1));
        }
        let mut s = hsum(_mm256_add_ps(a, b));
        for &v in pairs.remainder() {
            s += (v - m).exp();
        }
        (m, s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rms_norm_equals_libtorch_to_a_few_ulp() {
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
    fn silu_mul_equals_libtorch_to_a_few_ulp() {
        tch::manual_seed(4);
        for n in [1536i64, 13, 1] {
            let g = Tensor::randn([3, n], (Kind::Float, Device::Cpu)) * 6.0;
            let u = Tensor::randn([3, n], (Kind::Float, Device::Cpu));
            let want = g.silu() * &u;
            let mut got = g.copy();
            assert!(silu_mul_(&mut got, &u));
            let rel = ((&got - &want).abs() / (want.abs() + 1e-30))
                .max()
                .double_value(&[]);
            assert!(
                rel <= 8.0 * f32::EPSILON as f64,
                "n {n}: relative error {rel}"
            );
        }
        // Extremes stay finite and near libtorch's (0 below, identity above).
        let g = Tensor::from_slice(&[-200f32, -90.0, -20.0, 0.0, 20.0, 90.0, 200.0]);
        let u = Tensor::ones([7], (Kind::Float, Device::Cpu));
        let want = g.silu();
        let mut got = g.copy();
        assert!(silu_mul_(&mut got, &u));
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-30, "{got:?} vs {want:?}");
    }

    #[test]
    fn max_and_sum_of_exp_equal_libtorch() {
        tch::manual_seed(5);
        for n in [4096i64, 4099, 5, 1] {
            let x = Tensor::randn([4, n], (Kind::Float, Device::Cpu)) * 8.0;
            let (m, s) = max_sumexp(&x).expect("applies");
            let want_m = x.amax([1i64].as_slice(), false);
            assert_eq!(
                Vec::<f32>::try_from(&m).unwrap(),
                Vec::<f32>::try_from(&want_m).unwrap()
            );
            let want_s = (&x - want_m.unsqueeze(1))
                .exp()
                .sum_dim_intlist(1, false, Kind::Double);
            let rel = ((s.to_kind(Kind::Double) - &want_s).abs() / &want_s)
                .max()
                .double_value(&[]);
            assert!(rel < 1e-6, "n {n}: relative error {rel}");
        }
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let x = Tensor::randn([4, 8], (Kind::Float, Device::Cpu));
        let w = Tensor::ones([8], (Kind::Float, Device::Cpu));
        let d = |t: &Tensor| t.to_kind(Kind::Double);
        assert!(rms_norm(&d(&x), &d(&w), 1e-5).is_none());
        let w4 = Tensor::ones([4], (Kind::Float, Device::Cpu));
        assert!(rms_norm(&x.transpose(0, 1), &w4, 1e-5).is_none());
        assert!(rms_norm(&x, &Tensor::ones([5], (Kind::Float, Device::Cpu)), 1e-5).is_none());
        assert!(rms_norm(&x.copy().set_requires_grad(true), &w, 1e-5).is_none());
        assert!(max_sumexp(&d(&x)).is_none());
        assert!(max_sumexp(&x.transpose(0, 1)).is_none());
        let mut g = x.copy();
        assert!(!silu_mul_(&mut g, &x.narrow(1, 0, 4)));
    }

    #[test]
    fn the_thread_count_changes_nothing() {
        tch::manual_seed(6);
        let x = Tensor::randn([300, 576], (Kind::Float, Device::Cpu));
        let w = Tensor::randn([576], (Kind::Float, Device::Cpu));
        let run = |threads: i32| {
            tch::set_num_threads(threads);
            let mut g = x.copy();
            assert!(silu_mul_(&mut g, &x));
            let (m, s) = max_sumexp(&x).unwrap();
            (rms_norm(&x, &w, 1e-5).unwrap(), g, m, s)
        };
        let (a, b) = (run(1), run(2));
        assert!(a.0.equal(&b.0) && a.1.equal(&b.1) && a.2.equal(&b.2) && a.3.equal(&b.3));
    }
}

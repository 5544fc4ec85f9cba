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
//! - RoPE written straight into attention's padded layout (or, as one row, into the
//!   unpadded layout of [`super::packed_attention`]): one pass instead of libtorch's
//!   product, two `addcmul_`s, a zero fill and a scatter; bitwise libtorch's result.
//! - A row of attention scores to softmax weights over the keys a query sees (for
//!   [`super::packed_attention`]), hidden keys at exactly 0.
//!
//! `exp` is Cephes' single-precision polynomial (within 2 ulp of the true value; libtorch's
//! Sleef `exp` is within 1), vectorised with AVX2 and FMA where the CPU has them; elsewhere
//! the scalar loops use the standard library's `exp`.

use tch::{Device, Kind, Tensor};

/// Whether `ts` are all contiguous f32 CPU tensors without gradients.
pub(super) fn applies(ts: &[&Tensor]) -> bool {
    ts.iter().all(|t| {
        t.device() == Device::Cpu
            && t.kind() == Kind::Float
            && !t.requires_grad()
            && t.is_contiguous()
    })
}

/// `t`'s elements. SAFETY: `t` must be a contiguous f32 CPU tensor that outlives the
/// slice and that nothing writes to meanwhile.
pub(super) unsafe fn floats(t: &Tensor) -> &[f32] {
    let n = t.numel();
    if n == 0 {
        return &[];
    }
    std::slice::from_raw_parts(t.data_ptr() as *const f32, n)
}

/// `t`'s elements, to write. SAFETY: as [`floats`], and no other slice of `t` may be alive.
#[allow(clippy::mut_from_ref)]
pub(super) unsafe fn floats_mut(t: &Tensor) -> &mut [f32] {
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

/// A row of attention scores to unnormalised softmax weights over its first `valid`
/// entries: `exp(x + mask - max)` in place (the additive `mask` row, when given, covers at
/// least those entries; where it is -inf the weight is exactly 0), the rest zeroed (keys the
/// query may not see); returns the weights' sum. `valid` must be at least 1 and at most
/// `row.len()`, and at least one of the first `valid` must be visible.
pub(super) fn exp_prefix(row: &mut [f32], valid: usize, mask: Option<&[f32]>) -> f32 {
    let (seen, unseen) = row.split_at_mut(valid);
    unseen.fill(0.0);
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU has the features the functions are compiled for.
        return unsafe {
            match mask {
                None => simd::exp_shifted(seen),
                Some(m) => simd::exp_masked(seen, &m[..valid]),
            }
        };
    }
    match mask {
        None => exp_shifted(seen),
        Some(m) => exp_masked(seen, &m[..valid]),
    }
}

fn exp_shifted(row: &mut [f32]) -> f32 {
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for v in row {
        *v = (*v - mx).exp();
        sum += *v;
    }
    sum
}

/// `exp(x + a - max)` where `a` is not -inf, exactly 0 where it is.
fn exp_masked(row: &mut [f32], mask: &[f32]) -> f32 {
    for (v, &a) in row.iter_mut().zip(mask) {
        *v += a;
    }
    let mx = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for (v, &a) in row.iter_mut().zip(mask) {
        *v = if a == f32::NEG_INFINITY {
            0.0
        } else {
            (*v - mx).exp()
        };
        sum += *v;
    }
    sum
}

/// Rotary embedding and attention's padded layout in one pass. `x` is `[1, T, H, D]`;
/// `tables` are the `[1, T, 1, D]` cos and sign-folded sin of [`super::rope::Rope::cos_sin`]
/// (None: no rotation, for values). Row `r` takes the next `lens[r]` tokens into its first
/// slots of the `[rows * width, H, D]` result; its other slots are zero. Each element is
/// `x * cos + swapped(x) * sin` with the second product fused into the sum, which is how
/// libtorch's AVX2 `addcmul_` in [`super::rope::apply`] rounds it. None where this path
/// does not apply.
pub fn rope_scatter(
    x: &Tensor,
    tables: Option<(&Tensor, &Tensor)>,
    lens: &[usize],
    width: usize,
) -> Option<Tensor> {
    let [1, t, h, d] = x.size()[..] else {
        return None;
    };
    let fits = lens.iter().sum::<usize>() == t as usize && lens.iter().all(|&n| n <= width);
    if !applies(&[x]) || !fits || d % 2 != 0 {
        return None;
    }
    if let Some((c, s)) = tables {
        if !applies(&[c, s]) || c.size() != [1, t, 1, d] || s.size() != [1, t, 1, d] {
            return None;
        }
    }
    let out = Tensor::empty(
        [(lens.len() * width) as i64, h, d],
        (Kind::Float, Device::Cpu),
    );
    let (row, d) = ((h * d) as usize, d as usize);
    // SAFETY: contiguous f32 CPU tensors living through the call; `out` is fresh.
    let (xs, os) = unsafe { (floats(x), floats_mut(&out)) };
    // SAFETY: as above, for the tables.
    let tabs = tables.map(|(c, s)| unsafe { (floats(c), floats(s)) });
    let simd = has_avx2_fma();
    let mut tokens = xs.chunks_exact(row).enumerate();
    for (slots, &len) in os.chunks_exact_mut(width * row).zip(lens) {
        let (real, padding) = slots.split_at_mut(len * row);
        padding.fill(0.0);
        for ((i, src), dst) in tokens.by_ref().take(len).zip(real.chunks_exact_mut(row)) {
            let Some((cs, ss)) = tabs else {
                dst.copy_from_slice(src);
                continue;
            };
            let (c, s) = (&cs[i * d..][..d], &ss[i * d..][..d]);
            #[cfg(target_arch = "x86_64")]
            if simd {
                // SAFETY: the CPU has the features the function is compiled for.
                unsafe { simd::rope_heads(src, c, s, dst) };
                continue;
            }
            rope_heads(src, c, s, dst);
        }
    }
    Some(out)
}

/// One token's heads (`x` and `out` hold whole heads of `c.len()` each), inlined into
/// each caller so the AVX2 copy is vectorised with FMA.
#[inline(always)]
fn rope_heads(x: &[f32], c: &[f32], s: &[f32], out: &mut [f32]) {
    let half = c.len() / 2;
    for (xh, oh) in x.chunks_exact(c.len()).zip(out.chunks_exact_mut(c.len())) {
        let (x0, x1) = xh.split_at(half);
        let (o0, o1) = oh.split_at_mut(half);
        for j in 0..half {
            o0[j] = x1[j].mul_add(s[j], x0[j] * c[j]);
            o1[j] = x0[j].mul_add(s[half + j], x1[j] * c[half + j]);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn rope_heads(x: &[f32], c: &[f32], s: &[f32], out: &mut [f32]) {
        super::rope_heads(x, c, s, out);
    }

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

    /// `exp(x - max(row))` in place; returns the sum.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(row: &mut [f32]) -> f32 {
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut chunks = row.chunks_exact(8);
        for c in &mut chunks {
            vm = _mm256_max_ps(vm, _mm256_loadu_ps(c.as_ptr()));
        }
        let m = chunks.remainder().iter().copied().fold(hmax(vm), f32::max);
        let mv = _mm256_set1_ps(m);
        let mut acc = _mm256_setzero_ps();
        let mut chunks = row.chunks_exact_mut(8);
        for c in &mut chunks {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), mv));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut s = hsum(acc);
        for v in chunks.into_remainder() {
            *v = (*v - m).exp();
            s += *v;
        }
        s
    }

    /// `exp(x + a - max)` in place where the mask's `a` is not -inf, and exactly 0 where
    /// it is; returns the sum. Hidden entries never reach the polynomial: near its clamp it
    /// gives subnormal results, which cost the CPU a slow assist each (measured: hidden
    /// keys made this loop several times slower than the products around it).
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_masked(row: &mut [f32], mask: &[f32]) -> f32 {
        let n = row.len().min(mask.len());
        let (row, mask) = (&mut row[..n], &mask[..n]);
        let mut vm = _mm256_set1_ps(f32::NEG_INFINITY);
        let mut rc = row.chunks_exact_mut(8);
        let mut mc = mask.chunks_exact(8);
        for (r, a) in (&mut rc).zip(&mut mc) {
            let x = _mm256_add_ps(_mm256_loadu_ps(r.as_ptr()), _mm256_loadu_ps(a.as_ptr()));
            _mm256_storeu_ps(r.as_mut_ptr(), x);
            vm = _mm256_max_ps(vm, x);
        }
        let mut m = hmax(vm);
        for (v, &a) in rc.into_remainder().iter_mut().zip(mc.remainder()) {
            *v += a;
            m = m.max(*v);
        }
        let (mv, hidden) = (_mm256_set1_ps(m), _mm256_set1_ps(f32::NEG_INFINITY));
        let mut acc = _mm256_setzero_ps();
        let mut rc = row.chunks_exact_mut(8);
        let mut mc = mask.chunks_exact(8);
        for (r, a) in (&mut rc).zip(&mut mc) {
            let shown = _mm256_cmp_ps::<_CMP_NEQ_OQ>(_mm256_loadu_ps(a.as_ptr()), hidden);
            let x = _mm256_sub_ps(_mm256_loadu_ps(r.as_ptr()), mv);
            let e = _mm256_and_ps(exp8(_mm256_and_ps(x, shown)), shown);
            _mm256_storeu_ps(r.as_mut_ptr(), e);
            acc = _mm256_add_ps(acc, e);
        }
        let mut s = hsum(acc);
        for (v, &a) in rc.into_remainder().iter_mut().zip(mc.remainder()) {
            *v = if a == f32::NEG_INFINITY {
                0.0
            } else {
                (*v - m).exp()
            };
            s += *v;
        }
        s
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

    /// Softmax weights over a prefix, with and without a mask: hidden keys weigh exactly
    /// 0, the rest match `exp(x + a - max)`, and entries past the prefix are zeroed.
    #[test]
    fn exp_prefix_hides_masked_keys_exactly() {
        tch::manual_seed(9);
        for n in [37usize, 8, 3] {
            let x =
                Vec::<f32>::try_from(Tensor::randn([n as i64], (Kind::Float, Device::Cpu)) * 4.0)
                    .unwrap();
            let mask: Vec<f32> = (0..n)
                .map(|i| if i % 3 == 1 { f32::NEG_INFINITY } else { 0.0 })
                .collect();
            let valid = n - 1;
            for m in [None, Some(mask.as_slice())] {
                let mut row = x.clone();
                let sum = exp_prefix(&mut row, valid, m);
                let shown = |i: usize| m.is_none_or(|m| m[i] == 0.0);
                let mx = (0..valid)
                    .filter(|&i| shown(i))
                    .map(|i| x[i])
                    .fold(f32::MIN, f32::max);
                let mut want_sum = 0.0f64;
                for i in 0..n {
                    let want = if i < valid && shown(i) {
                        ((x[i] - mx) as f64).exp()
                    } else {
                        0.0
                    };
                    want_sum += want;
                    if want == 0.0 {
                        assert_eq!(row[i], 0.0, "n {n}, entry {i}");
                    }
                    assert!(
                        (row[i] as f64 - want).abs() <= 4e-7 * want.max(1e-30),
                        "n {n}, {i}"
                    );
                }
                assert!((sum as f64 - want_sum).abs() < 1e-6 * want_sum);
            }
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

    /// Against libtorch's RoPE and padding (`rope::apply`, `Unpadded::pad`): rows of
    /// unequal length, a row of one token, head sizes of SmolLM2 and of a tiny model.
    #[test]
    fn rope_scatter_equals_libtorch_rope_and_padding() {
        use crate::model::config::ModelConfig;
        use crate::model::forward::Unpadded;
        use crate::model::rope::{self, Rope};
        tch::manual_seed(8);
        for (heads, d) in [(9, 64), (3, 64), (2, 16), (1, 6)] {
            let cfg = ModelConfig::from_json(
                serde_json::json!({
                    "model_type": "llama", "hidden_size": heads * d, "intermediate_size": 8,
                    "num_hidden_layers": 1, "num_attention_heads": heads, "vocab_size": 8,
                    "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
                }),
                std::path::Path::new("<test>"),
            )
            .unwrap();
            let lens = [5usize, 1, 9, 3];
            let t: usize = lens.iter().sum();
            let positions: Vec<i64> = lens.iter().flat_map(|&n| 0..n as i64).collect();
            let (cos, sin) =
                Rope::new(&cfg, Device::Cpu).cos_sin(&Tensor::from_slice(&positions).view([1, -1]));
            let x = Tensor::randn([1, t as i64, heads, d], (Kind::Float, Device::Cpu)) * 3.0;
            let layout = Unpadded::new(&lens, Device::Cpu);
            let want = layout.pad(&rope::apply(&x, &cos, &sin));
            let got = layout.pad_rotated(&x, Some((&cos, &sin)));
            assert_eq!(got.size(), want.size());
            let ulp = f64::try_from((&got - &want).abs().max()).unwrap();
            assert!(ulp <= 1e-6 * 8.0, "heads {heads} x {d}: {ulp}");
            assert!(got.equal(&want), "heads {heads} x {d}: not bitwise ({ulp})");
            assert!(layout.pad_rotated(&x, None).equal(&layout.pad(&x)));
        }
        let x = Tensor::randn([1, 3, 2, 4], (Kind::Float, Device::Cpu));
        assert!(
            rope_scatter(&x, None, &[3], 2).is_none(),
            "slot out of range"
        );
        assert!(
            rope_scatter(&x, None, &[1, 1], 4).is_none(),
            "a slot per token"
        );
        assert!(rope_scatter(&x.to_kind(Kind::Double), None, &[1, 2], 2).is_none());
        assert!(rope_scatter(&x, None, &[1, 2], 2).is_some());
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

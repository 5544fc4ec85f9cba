//! Causal attention over rows packed back to back, on the CPU in f32. Scoring keeps its
//! hidden states unpadded ([`super::forward::Unpadded`]: row `r` is the next `lens[r]`
//! tokens). libtorch's flash attention wants a padded `[rows, heads, width, d]` layout,
//! which costs a scatter before it and a gather after it, and runs every row at the
//! longest row's width; the padding sits at the end of each row, where causal queries
//! cost the most. Here each row attends within its own tokens, read where they lie, and
//! the output is written straight into the `[T, heads * d]` layout that `o_proj` reads.
//!
//! Per row, head and block of queries: the scores `Q K^T / sqrt(d)` against the keys up to
//! the block's last query (one product), each query's softmax over the keys it may see,
//! the weights times `V` (a second product), then a division by the softmax's sum. That is
//! the order of libtorch's flash attention for rows within its 512-key block; results
//! differ from it by the rounding of `exp` (tests: within 1e-5). Grouped-query heads read
//! their shared key/value head in place.
//!
//! The products go to MKL's `sgemm` inside libtorch, looked up at run time; where it is
//! missing (a libtorch built without MKL) this path declines and the caller keeps the
//! padded one.

use super::forward::Unpadded;
use super::fused::{applies, exp_prefix, floats, floats_mut};
use std::ffi::{c_char, c_int};
use std::sync::OnceLock;
use tch::{Device, Kind, Tensor};

/// Queries per block: the first product covers the keys up to the block's last query, so
/// smaller blocks compute fewer masked scores and larger ones run longer products.
const QUERY_BLOCK: usize = 64;

/// The reference BLAS `sgemm` (column-major, every argument by pointer).
type Sgemm = unsafe extern "C" fn(
    transa: *const c_char,
    transb: *const c_char,
    m: *const c_int,
    n: *const c_int,
    k: *const c_int,
    alpha: *const f32,
    a: *const f32,
    lda: *const c_int,
    b: *const f32,
    ldb: *const c_int,
    beta: *const f32,
    c: *mut f32,
    ldc: *const c_int,
);

fn sgemm() -> Option<Sgemm> {
    static FOUND: OnceLock<Option<usize>> = OnceLock::new();
    let p = (*FOUND.get_or_init(|| crate::mkl_dispatch::global_symbol(c"sgemm_")))?;
    // SAFETY: `sgemm_` is BLAS's single-precision product, with the signature above (MKL's
    // LP64 interface, which libtorch links: 32-bit integers).
    Some(unsafe { std::mem::transmute::<usize, Sgemm>(p) })
}

/// Row-major `c[m, n] = alpha * a[m, k] * b'`, where `b'` is `b[n, k]` transposed when
/// `b_rows_are_n` and `b[k, n]` itself otherwise; `ld*` are the row strides.
///
/// SAFETY: each pointer must address its matrix with its stride, inside one allocation;
/// `c` must not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm(
    f: Sgemm,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (*const f32, usize),
    (b, ldb, b_rows_are_n): (*const f32, usize, bool),
    (c, ldc): (*mut f32, usize),
) {
    // Column-major, the same memory reads as c^T[n, m] = b'^T a^T.
    let tb: c_char = if b_rows_are_n { b'T' } else { b'N' } as c_char;
    let ta: c_char = b'N' as c_char;
    let dims = [n, m, k, lda, ldb, ldc].map(|x| x as c_int);
    let beta = 0.0f32;
    f(
        &tb, &ta, &dims[0], &dims[1], &dims[2], &alpha, b, &dims[4], a, &dims[3], &beta, c,
        &dims[5],
    );
}

/// Rows of tokens laid end to end: row `r` has `keys[r]` tokens (keys and values) and
/// `queries[r]` queries, each the next ones of their flat sequences.
#[derive(Clone, Copy)]
pub struct Rows<'a> {
    pub keys: &'a [usize],
    pub queries: &'a [usize],
}

/// Attention within each row: `q` is `[1, S, heads, d]` (rotated), `k` and `v` are
/// `[1, T, kv_heads, d]`, laid out by `rows`. Without a mask, causal: each row's queries
/// are its tokens. With one, additive on the padded layout (`[rows, 1, at least most
/// queries, at least most keys]`), as scoring's prefix tries and kept queries have it:
/// each query attends to the keys of its row that the mask shows. Returns
/// `[1, S, heads * d]`, or None where this path does not apply (off the CPU, not f32,
/// gradients wanted, non-contiguous inputs, shapes that do not fit, a query that sees no
/// key or a slot past its row, no MKL).
pub fn within_rows(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: Rows<'_>,
    mask: Option<&Tensor>,
) -> Option<Tensor> {
    let (s, h, kvh, d) = shapes(q, k, v, rows)?;
    let mask = mask_view(mask, rows)?;
    let bounds = key_bounds(rows, mask)?;
    let f = sgemm()?;
    let out = Tensor::empty([1, s, (h * d) as i64], (Kind::Float, Device::Cpu));
    // SAFETY: contiguous f32 CPU tensors living through the call; `out` is fresh.
    let (qs, ks, vs, os) = unsafe { (floats(q), floats(k), floats(v), floats_mut(&out)) };
    let (qld, kvld) = (h * d, kvh * d);
    let scale = 1.0 / (d as f32).sqrt();
    let widest = bounds.iter().copied().max().unwrap_or(0);
    let mut scores = vec![0f32; QUERY_BLOCK * widest];
    let mut inv = [0f32; QUERY_BLOCK];
    let (mut q_at, mut k_at) = (0, 0);
    for (row, (&nk, &nq)) in rows.keys.iter().zip(rows.queries).enumerate() {
        for b0 in (0..nq).step_by(QUERY_BLOCK) {
            let m = QUERY_BLOCK.min(nq - b0);
            let needs = &bounds[q_at + b0..][..m];
            let n = needs.iter().copied().max().unwrap_or(1);
            let sc = &mut scores[..m * n];
            for head in 0..h {
                let g = head / (h / kvh);
                let qi = (q_at + b0) * qld + head * d;
                let ki = k_at * kvld + g * d;
                // SAFETY: query rows q_at+b0.. and key/value rows k_at.. (n <= nk of them)
                // lie inside their tensors, each read with its row stride; the scores are
                // a separate buffer of m * n.
                unsafe {
                    let (qp, kp) = (qs.as_ptr().add(qi), ks.as_ptr().add(ki));
                    gemm(
                        f,
                        (m, n, d),
                        scale,
                        (qp, qld),
                        (kp, kvld, true),
                        (sc.as_mut_ptr(), n),
                    );
                }
                for (j, srow) in sc.chunks_exact_mut(n).enumerate() {
                    let shown = mask.map(|(mk, wq, w)| &mk[(row * wq + b0 + j) * w..][..needs[j]]);
                    inv[j] = 1.0 / exp_prefix(srow, needs[j], shown);
                }
                // SAFETY: as above; the output rows are this block's, written with the
                // row stride of `out`, which no slice borrows during the call.
                unsafe {
                    let (vp, op) = (vs.as_ptr().add(ki), os.as_mut_ptr().add(qi));
                    gemm(
                        f,
                        (m, d, n),
                        1.0,
                        (sc.as_ptr(), n),
                        (vp, kvld, false),
                        (op, qld),
                    );
                }
                for (j, &w) in inv[..m].iter().enumerate() {
                    for o in &mut os[qi + j * qld..][..d] {
                        *o *= w;
                    }
                }
            }
        }
        (q_at, k_at) = (q_at + nq, k_at + nk);
    }
    Some(out)
}

/// (queries, heads, kv heads, head size) when the inputs fit this path: `[1, S, heads, d]`
/// queries, keys and values alike `[1, T, kv heads, d]`, the rows covering exactly S
/// queries and T keys, no empty row, f32 contiguous CPU tensors, sizes BLAS can index.
fn shapes(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: Rows<'_>,
) -> Option<(i64, usize, usize, usize)> {
    let [1, s, h, d] = q.size()[..] else {
        return None;
    };
    let [1, t, kvh, dk] = k.size()[..] else {
        return None;
    };
    let fits = dk == d
        && v.size() == k.size()
        && kvh > 0
        && h % kvh == 0
        && d > 0
        && rows.keys.len() == rows.queries.len()
        && !rows.keys.contains(&0)
        && rows.keys.iter().sum::<usize>() == t as usize
        && rows.queries.iter().sum::<usize>() == s as usize
        && s.max(t).saturating_mul(h).saturating_mul(d) < c_int::MAX as i64;
    (fits && applies(&[q, k, v])).then_some((s, h as usize, kvh as usize, d as usize))
}

/// The mask as (values, query width, key width), `Some(None)` where the rows alone define
/// it (causal, each row's queries are its tokens); None where this path cannot use it.
fn mask_view<'m>(
    mask: Option<&'m Tensor>,
    rows: Rows<'_>,
) -> Option<Option<(&'m [f32], usize, usize)>> {
    match mask {
        None if rows.queries == rows.keys => Some(None),
        Some(m) if applies(&[m]) => {
            let most = |x: &[usize]| x.iter().copied().max().unwrap_or(0) as i64;
            let [nr, 1, wq, w] = m.size()[..] else {
                return None;
            };
            if nr != rows.keys.len() as i64 || wq < most(rows.queries) || w < most(rows.keys) {
                return None;
            }
            // SAFETY: a contiguous f32 CPU tensor, living as long as the borrow.
            Some(Some((unsafe { floats(m) }, wq as usize, w as usize)))
        }
        _ => None,
    }
}

/// Per query, how many of its row's first keys it needs: up to its last shown key (its
/// own token and the ones before it, without a mask). None when a query sees no key, or
/// a slot past its row's keys.
fn key_bounds(rows: Rows<'_>, mask: Option<(&[f32], usize, usize)>) -> Option<Vec<usize>> {
    let mut bounds = Vec::with_capacity(rows.queries.iter().sum());
    for (row, (&nk, &nq)) in rows.keys.iter().zip(rows.queries).enumerate() {
        for j in 0..nq {
            let need = match mask {
                None => j + 1,
                Some((m, wq, w)) => {
                    let shown = &m[(row * wq + j) * w..][..w];
                    1 + shown.iter().rposition(|&a| a > f32::NEG_INFINITY)?
                }
            };
            if need > nk {
                return None;
            }
            bounds.push(need);
        }
    }
    Some(bounds)
}

/// What [`within_rows`] replaces: libtorch's attention on the padded layouts of the
/// queries and the keys (the reference of its tests and of `bench attention`).
pub fn padded_reference(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    rows: Rows<'_>,
    mask: Option<&Tensor>,
) -> Tensor {
    let dev = q.device();
    let (ql, kl) = (
        Unpadded::new(rows.queries, dev),
        Unpadded::new(rows.keys, dev),
    );
    let gqa = q.size()[2] != k.size()[2];
    ql.unpad(&Tensor::scaled_dot_product_attention(
        &ql.pad(q),
        &kl.pad(k),
        &kl.pad(v),
        mask,
        0.0,
        mask.is_none(),
        None,
        gqa,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: (Kind, Device) = (Kind::Float, Device::Cpu);

    /// libtorch's attention on the padded layouts of the queries and the keys.
    fn libtorch(q: &Tensor, k: &Tensor, v: &Tensor, rows: Rows, mask: Option<&Tensor>) -> Tensor {
        let (ql, kl) = (
            Unpadded::new(rows.queries, Device::Cpu),
            Unpadded::new(rows.keys, Device::Cpu),
        );
        let gqa = q.size()[2] != k.size()[2];
        let causal = mask.is_none();
        ql.unpad(&Tensor::scaled_dot_product_attention(
            &ql.pad(q),
            &kl.pad(k),
            &kl.pad(v),
            mask,
            0.0,
            causal,
            None,
            gqa,
        ))
    }

    fn qkv(s: usize, t: usize, (h, kvh, d): (i64, i64, i64)) -> (Tensor, Tensor, Tensor) {
        (
            Tensor::randn([1, s as i64, h, d], OPTS) * 2.0,
            Tensor::randn([1, t as i64, kvh, d], OPTS) * 2.0,
            Tensor::randn([1, t as i64, kvh, d], OPTS),
        )
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
        assert_eq!(a.size(), b.size());
        f64::try_from((a - b).abs().max()).unwrap()
    }

    /// Causal, against libtorch on the padded layout: rows of unequal length, one token,
    /// and longer than a query block; grouped-query and plain heads.
    #[test]
    fn causal_rows_equal_libtorch() {
        if !ready(11) {
            return;
        }
        let lens = [5usize, 1, 70, 130, 3, 64];
        let rows = Rows {
            keys: &lens,
            queries: &lens,
        };
        let t = lens.iter().sum();
        for heads in [(9, 3, 64), (4, 2, 16), (2, 2, 8), (3, 1, 6)] {
            let (q, k, v) = qkv(t, t, heads);
            let got = within_rows(&q, &k, &v, rows, None).expect("applies");
            let err = max_diff(&got, &libtorch(&q, &k, &v, rows, None));
            assert!(err < 1e-5, "{heads:?}: {err}");
        }
    }

    /// An additive mask per row, `[rows, 1, width, width]`, of a random prefix tree: each
    /// token sees its ancestors and itself; padding queries see only themselves.
    fn tree_mask(lens: &[usize], seed: u64) -> Vec<f32> {
        let width = *lens.iter().max().unwrap();
        let mut m = vec![f32::NEG_INFINITY; lens.len() * width * width];
        let mut state = seed;
        let mut next = |n: usize| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (state >> 33) as usize % n
        };
        for (r, &len) in lens.iter().enumerate() {
            let base = r * width * width;
            for i in 0..width {
                if i < len && i > 0 && next(4) > 0 {
                    let parent = next(i);
                    let (before, after) = m.split_at_mut(base + i * width);
                    after[..width].copy_from_slice(&before[base + parent * width..][..width]);
                }
                m[base + i * width + i] = 0.0;
            }
        }
        m
    }

    /// Seeds libtorch's generator; false (the test has nothing to check) without MKL.
    fn ready(seed: i64) -> bool {
        tch::manual_seed(seed);
        let found = sgemm().is_some();
        if !found {
            eprintln!("no MKL in this libtorch: the padded path runs instead");
        }
        found
    }

    /// Rows of unequal length: one token, and longer than a query block.
    const LENS: [usize; 5] = [5, 1, 70, 130, 3];

    fn mask_tensor(m: &[f32], rows: usize, wq: usize, w: usize) -> Tensor {
        Tensor::from_slice(m).view([rows as i64, 1, wq as i64, w as i64])
    }

    /// Prefix trees (scoring's rows), and a mask that shows a later key, against libtorch
    /// with the same mask; masks that show no key or a slot past the row are declined.
    #[test]
    fn masked_rows_equal_libtorch() {
        if !ready(12) {
            return;
        }
        let lens = LENS;
        let (n, w) = (lens.len(), 130);
        let rows = Rows {
            keys: &lens,
            queries: &lens,
        };
        let t = lens.iter().sum();
        let (q, k, v) = qkv(t, t, (9, 3, 64));
        let mut tree = tree_mask(&lens, 7);
        for m in [tree.clone(), {
            tree[(3 * w + 2) * w + 9] = 0.0;
            tree.clone()
        }] {
            let mask = mask_tensor(&m, n, w, w);
            let got = within_rows(&q, &k, &v, rows, Some(&mask)).expect("applies");
            let err = max_diff(&got, &libtorch(&q, &k, &v, rows, Some(&mask)));
            assert!(err < 1e-5, "{err}");
        }
        let mut blind = tree.clone();
        blind[(2 * w + 4) * w..][..w].fill(f32::NEG_INFINITY);
        let blind = mask_tensor(&blind, n, w, w);
        assert!(within_rows(&q, &k, &v, rows, Some(&blind)).is_none());
        let mut past_row = tree.clone();
        past_row[w + 9] = 0.0;
        let past_row = mask_tensor(&past_row, n, w, w);
        assert!(within_rows(&q, &k, &v, rows, Some(&past_row)).is_none());
        let bool_mask = mask_tensor(&tree, n, w, w).eq(0.0);
        assert!(within_rows(&q, &k, &v, rows, Some(&bool_mask)).is_none());
    }

    /// Some queries per row (the last layer's kept tokens), each with its token's row of a
    /// tree mask; a row without queries; padding queries that see key 0.
    #[test]
    fn kept_queries_equal_libtorch() {
        if !ready(13) {
            return;
        }
        let keys = LENS;
        let kept: [&[usize]; 5] = [&[4], &[], &[3, 40, 69], &[0, 63, 64, 65, 100, 129], &[1, 2]];
        let queries: Vec<usize> = kept.iter().map(|x| x.len()).collect();
        let (n, w, wq) = (keys.len(), 130, 6);
        let tree = tree_mask(&keys, 9);
        let mut m = vec![f32::NEG_INFINITY; n * wq * w];
        for (r, ks) in kept.iter().enumerate() {
            for j in 0..wq {
                let dst = &mut m[(r * wq + j) * w..][..w];
                match ks.get(j) {
                    Some(&i) => dst.copy_from_slice(&tree[(r * w + i) * w..][..w]),
                    None => dst[0] = 0.0,
                }
            }
        }
        let mask = mask_tensor(&m, n, wq, w);
        let rows = Rows {
            keys: &keys,
            queries: &queries,
        };
        let (q, k, v) = qkv(queries.iter().sum(), keys.iter().sum(), (9, 3, 64));
        let got = within_rows(&q, &k, &v, rows, Some(&mask)).expect("applies");
        let err = max_diff(&got, &libtorch(&q, &k, &v, rows, Some(&mask)));
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn declines_what_it_does_not_cover() {
        let q = Tensor::randn([1, 4, 2, 8], OPTS);
        let k = Tensor::randn([1, 4, 1, 8], OPTS);
        let rows = |x: &'static [usize]| Rows {
            keys: x,
            queries: x,
        };
        assert!(
            within_rows(&q, &k, &k, rows(&[4, 1]), None).is_none(),
            "lens past T"
        );
        assert!(
            within_rows(&q, &k, &k, rows(&[4, 0]), None).is_none(),
            "an empty row"
        );
        let other = Rows {
            keys: &[4],
            queries: &[3],
        };
        assert!(
            within_rows(&q.narrow(1, 0, 3), &k, &k, other, None).is_none(),
            "causal needs every token"
        );
        let k3 = Tensor::randn([1, 4, 3, 8], OPTS);
        assert!(
            within_rows(&q, &k3, &k3, rows(&[4]), None).is_none(),
            "heads not a multiple"
        );
        let qd = q.to_kind(Kind::Double);
        assert!(within_rows(&qd, &k, &k, rows(&[4]), None).is_none(), "f64");
        let qt = Tensor::randn([1, 2, 4, 8], OPTS).transpose(1, 2);
        assert!(
            within_rows(&qt, &k, &k, rows(&[4]), None).is_none(),
            "non-contiguous"
        );
        let small = Tensor::zeros([1, 1, 3, 3], OPTS);
        assert!(
            within_rows(&q, &k, &k, rows(&[4]), Some(&small)).is_none(),
            "mask too small"
        );
    }
}

//! llama.cpp's q/k row order and back.

/// llama.cpp's converter stores the rows of each q/k head interleaved for its rotary
/// kernel: it computes `w.reshape(n_head, 2, d/2, cols).swapaxes(1, 2)`, so GGUF row
/// `2j + s` of a head is Hugging Face row `s*d/2 + j` (first half of the head, then second
/// half: the rotate-half layout). This undoes that, returning rows in HF order.
pub fn unpermute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> std::result::Result<Vec<f32>, String> {
    reorder_qk_rows(data, rows, cols, n_head, false)
}

/// llama.cpp's direction (HF rotate-half order -> interleaved), the inverse of
/// [`unpermute_qk_rows`].
pub fn permute_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
) -> std::result::Result<Vec<f32>, String> {
    reorder_qk_rows(data, rows, cols, n_head, true)
}

fn reorder_qk_rows(
    data: &[f32],
    rows: usize,
    cols: usize,
    n_head: usize,
    to_gguf: bool,
) -> std::result::Result<Vec<f32>, String> {
    if n_head == 0 || !rows.is_multiple_of(2 * n_head) {
        return Err(format!(
            "{rows} rows cannot be split into {n_head} heads of even size"
        ));
    }
    if rows.checked_mul(cols) != Some(data.len()) {
        return Err(format!(
            "{} values do not form a {rows}x{cols} matrix",
            data.len()
        ));
    }
    let d = rows / n_head;
    let half = d / 2;
    let mut out = vec![0f32; data.len()];
    for h in 0..n_head {
        for j in 0..half {
            for s in 0..2 {
                let gguf_row = h * d + 2 * j + s;
                let hf_row = h * d + s * half + j;
                let (src, dst) = if to_gguf {
                    (hf_row, gguf_row)
                } else {
                    (gguf_row, hf_row)
                };
                out[dst * cols..(dst + 1) * cols]
                    .copy_from_slice(&data[src * cols..(src + 1) * cols]);
            }
        }
    }
    Ok(out)
}

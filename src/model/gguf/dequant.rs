//! Dequantisation of the GGML weight types the importer reads.

use super::*;

fn f16_at(b: &[u8], i: usize) -> f32 {
    half::f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

/// Decode `n` elements of type `ty` from `bytes` (which must hold exactly that many).
/// Block layouts follow ggml: in the 32-element 4- and 5-bit blocks, the low nibbles hold
/// elements 0..16 and the high nibbles elements 16..32.
pub fn dequantize(ty: GgmlType, bytes: &[u8], n: u64) -> std::result::Result<Vec<f32>, String> {
    let (block, size) = ty
        .block()
        .filter(|_| ty.is_dequantisable())
        .ok_or_else(|| format!("cannot dequantise {ty}"))?;
    if !n.is_multiple_of(block) {
        return Err(format!("{n} elements are not whole {ty} blocks of {block}"));
    }
    let want = (n / block)
        .checked_mul(size)
        .ok_or_else(|| format!("{n} elements overflow"))?;
    if bytes.len() as u64 != want {
        return Err(format!(
            "{n} elements of {ty} need {want} bytes, got {}",
            bytes.len()
        ));
    }
    let size = size as usize;
    let mut out = Vec::with_capacity(n as usize);
    match ty {
        GgmlType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
        ),
        GgmlType::F16 => out.extend(bytes.chunks_exact(2).map(|c| f16_at(c, 0))),
        GgmlType::BF16 => out.extend(
            bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        GgmlType::Q8_0 => {
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                out.extend(b[2..34].iter().map(|&q| d * f32::from(q as i8)));
            }
        }
        GgmlType::Q4_0 | GgmlType::Q4_1 => {
            // Q4_0: [d, 16 bytes], w = d * (q - 8). Q4_1: [d, m, 16 bytes], w = d * q + m.
            let has_min = ty == GgmlType::Q4_1;
            let qs_at = if has_min { 4 } else { 2 };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (offset, min) = if has_min {
                    (0.0, f16_at(b, 2))
                } else {
                    (-8.0, 0.0)
                };
                let val = |x: u8| d * (f32::from(x) + offset) + min;
                let q = &b[qs_at..qs_at + 16];
                out.extend(q.iter().map(|&x| val(x & 0x0f)));
                out.extend(q.iter().map(|&x| val(x >> 4)));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let m = ty == GgmlType::Q5_1;
            let qh_at = if m { 4 } else { 2 };
            for b in bytes.chunks_exact(size) {
                let d = f16_at(b, 0);
                let (offset, min) = if m { (0.0, f16_at(b, 2)) } else { (-16.0, 0.0) };
                let qh = u32::from_le_bytes([b[qh_at], b[qh_at + 1], b[qh_at + 2], b[qh_at + 3]]);
                let q = &b[qh_at + 4..qh_at + 20];
                // Bit j of qh is the fifth bit of element j, bit j+16 that of element j+16.
                let val =
                    |x: u8, hi: u32| d * (f32::from(x | ((hi & 1) << 4) as u8) + offset) + min;
                out.extend(q.iter().enumerate().map(|(j, &x)| val(x & 0x0f, qh >> j)));
                out.extend(
                    q.iter()
                        .enumerate()
                        .map(|(j, &x)| val(x >> 4, qh >> (j + 16))),
                );
            }
        }
        _ => return Err(format!("cannot dequantise {ty}")),
    }
    Ok(out)
}

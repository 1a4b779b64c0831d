//! Dequantization of ggml tensor data to f32, block layouts as in ggml's `ggml-common.h`
//! and `dequantize_row_*` in `ggml-quants.c` (same arithmetic order, so results match
//! llama.cpp's `gguf` Python package bit for bit on the test fixtures).

use half::{bf16, f16};

use crate::gguf::GgmlType;

/// Dequantizes `n` elements of type `ty` from `data`; `None` if `ty` is not supported.
/// `data` must hold exactly the bytes of `n` elements (the caller checked the extents).
pub(crate) fn dequantize(ty: GgmlType, data: &[u8], n: usize) -> Option<Vec<f32>> {
    let (block, size) = ty.block_layout();
    debug_assert_eq!(data.len() as u64, n as u64 / block * size);
    let mut out = Vec::with_capacity(n);
    let blocks = data.chunks_exact(size as usize);
    match ty {
        GgmlType::F32 => out.extend(data.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap()))),
        GgmlType::F16 => out.extend(data.chunks_exact(2).map(half16)),
        GgmlType::BF16 => {
            out.extend(data.chunks_exact(2).map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32()))
        }
        GgmlType::Q4_0 => blocks.for_each(|b| q4_0(b, &mut out)),
        GgmlType::Q4_1 => blocks.for_each(|b| q4_1(b, &mut out)),
        GgmlType::Q5_0 => blocks.for_each(|b| q5_0(b, &mut out)),
        GgmlType::Q5_1 => blocks.for_each(|b| q5_1(b, &mut out)),
        GgmlType::Q8_0 => blocks.for_each(|b| q8_0(b, &mut out)),
        GgmlType::Q4_K => blocks.for_each(|b| q4_k(b, &mut out)),
        GgmlType::Q5_K => blocks.for_each(|b| q5_k(b, &mut out)),
        GgmlType::Q6_K => blocks.for_each(|b| q6_k(b, &mut out)),
        _ => return None,
    }
    debug_assert_eq!(out.len(), n);
    Some(out)
}

fn half16(b: &[u8]) -> f32 {
    f16::from_le_bytes([b[0], b[1]]).to_f32()
}

/// block_q4_0 { f16 d; u8 qs[16] }: x = ((nibble) - 8) * d, low nibbles first.
fn q4_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let qs = &b[2..18];
    out.extend(qs.iter().map(|&q| ((q & 0x0F) as i32 - 8) as f32 * d));
    out.extend(qs.iter().map(|&q| ((q >> 4) as i32 - 8) as f32 * d));
}

/// block_q4_1 { f16 d; f16 m; u8 qs[16] }: x = nibble * d + m.
fn q4_1(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let m = half16(&b[2..4]);
    let qs = &b[4..20];
    out.extend(qs.iter().map(|&q| (q & 0x0F) as f32 * d + m));
    out.extend(qs.iter().map(|&q| (q >> 4) as f32 * d + m));
}

/// block_q5_0 { f16 d; u8 qh[4]; u8 qs[16] }: 5th bit of element j is bit j of qh.
fn q5_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let qh = u32::from_le_bytes(b[2..6].try_into().unwrap());
    let qs = &b[6..22];
    for (j, &q) in qs.iter().enumerate() {
        let hi = (((qh >> j) << 4) & 0x10) as u8;
        out.push((((q & 0x0F) | hi) as i32 - 16) as f32 * d);
    }
    for (j, &q) in qs.iter().enumerate() {
        let hi = ((qh >> (j + 12)) & 0x10) as u8;
        out.push((((q >> 4) | hi) as i32 - 16) as f32 * d);
    }
}

/// block_q5_1 { f16 d; f16 m; u8 qh[4]; u8 qs[16] }: x = q * d + m.
fn q5_1(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let m = half16(&b[2..4]);
    let qh = u32::from_le_bytes(b[4..8].try_into().unwrap());
    let qs = &b[8..24];
    for (j, &q) in qs.iter().enumerate() {
        let hi = (((qh >> j) << 4) & 0x10) as u8;
        out.push(((q & 0x0F) | hi) as f32 * d + m);
    }
    for (j, &q) in qs.iter().enumerate() {
        let hi = ((qh >> (j + 12)) & 0x10) as u8;
        out.push(((q >> 4) | hi) as f32 * d + m);
    }
}

/// block_q8_0 { f16 d; i8 qs[32] }: x = q * d.
fn q8_0(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    out.extend(b[2..34].iter().map(|&q| (q as i8) as f32 * d));
}

/// The 6-bit (scale, min) pair `j` of a Q4_K / Q5_K super-block (`get_scale_min_k4`).
fn scale_min_k4(j: usize, q: &[u8]) -> (f32, f32) {
    if j < 4 {
        ((q[j] & 63) as f32, (q[j + 4] & 63) as f32)
    } else {
        let sc = (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4);
        let m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
        (sc as f32, m as f32)
    }
}

/// block_q4_K { f16 d; f16 dmin; u8 scales[12]; u8 qs[128] }, 256 elements in 8 groups of 32.
fn q4_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let dmin = half16(&b[2..4]);
    let scales = &b[4..16];
    for (i, qs) in b[16..144].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        out.extend(qs.iter().map(|&q| d1 * (q & 0x0F) as f32 - m1));
        out.extend(qs.iter().map(|&q| d2 * (q >> 4) as f32 - m2));
    }
}

/// block_q5_K { f16 d; f16 dmin; u8 scales[12]; u8 qh[32]; u8 qs[128] }.
fn q5_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[0..2]);
    let dmin = half16(&b[2..4]);
    let scales = &b[4..16];
    let qh = &b[16..48];
    for (i, ql) in b[48..176].chunks_exact(32).enumerate() {
        let (sc1, m1) = scale_min_k4(2 * i, scales);
        let (sc2, m2) = scale_min_k4(2 * i + 1, scales);
        let (d1, m1, d2, m2) = (d * sc1, dmin * m1, d * sc2, dmin * m2);
        let (u1, u2) = (1u8 << (2 * i), 2u8 << (2 * i));
        out.extend(ql.iter().zip(qh).map(|(&q, &h)| {
            d1 * ((q & 0x0F) + if h & u1 != 0 { 16 } else { 0 }) as f32 - m1
        }));
        out.extend(ql.iter().zip(qh).map(|(&q, &h)| {
            d2 * ((q >> 4) + if h & u2 != 0 { 16 } else { 0 }) as f32 - m2
        }));
    }
}

/// block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d }, two halves of 128.
fn q6_k(b: &[u8], out: &mut Vec<f32>) {
    let d = half16(&b[208..210]);
    let start = out.len();
    out.resize(start + 256, 0.0);
    let y = &mut out[start..];
    for half in 0..2 {
        let ql = &b[64 * half..64 * half + 64];
        let qh = &b[128 + 32 * half..128 + 32 * half + 32];
        let sc = &b[192 + 8 * half..192 + 8 * half + 8];
        let y = &mut y[128 * half..128 * half + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0x0F) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            let s = |k: usize| d * (sc[is + k] as i8) as f32;
            y[l] = s(0) * q1 as f32;
            y[l + 32] = s(2) * q2 as f32;
            y[l + 64] = s(4) * q3 as f32;
            y[l + 96] = s(6) * q4 as f32;
        }
    }
}

//! Decoding products from 8-bit weights: a weight `[n, k]` kept as int8 values in blocks
//! of [`BLOCK`] along `k`, each block with an f32 center and step (`w ≈ c + q · d`,
//! `c = (max + min) / 2`, `d = (max − min) / 240`, `q` in −120..=120). A decoding step
//! streams the whole policy through memory once per step; at 1 byte a weight (and 8 bytes
//! of center and step per 32) it streams 0.31 of the f32 bytes.
//!
//! Why a centered grid of 240 steps rather than GGUF's Q8_0 (`q · max|w| / 127`): the
//! weights usually come from a 4-bit GGUF (SmolLM2's Q4_1: `min + k · d₄`, k in 0..=15,
//! whose block spans exactly 15 steps), and 240 = 15 · 16 puts every one of those 16 levels
//! on this grid (`q = 16k − 120`): the 8-bit copy of such a model is exact, and after an
//! adapter merge it rounds the merged weights to 1/16 of the 4-bit step. Requantized to
//! Q8_0 instead, SmolLM2's logits moved by up to 1.19 from the weights alone (54 of 56
//! greedy positions kept their token; this grid: 0 from the weights).
//!
//! [`matmul_rows_q8`] multiplies 1–16 input rows against such a weight much as llama.cpp's
//! Q4_1 × Q8_1 product does, but with 16-bit inputs: each input row is quantized
//! symmetrically (blocks of 32, `max|x| / 32767`, with each block's sum of values kept, at
//! the start of the call), each block's 32 products `x_q · q` are summed exactly in
//! integers (AVX2 `madd` on int16: the weight's int8 values widened once for all input
//! rows), the block's sum times the two scales is added in f32, and the centers' part,
//! `Σ_blocks c · d_x · Σ x_q`, is one short dot product per output. 8-bit inputs (llama.cpp's
//! Q8_1, `maddubs`) were faster (`matmul_timing`: 8.2 against 9.7 ms at 1 row, 25.5 against
//! 39.8 at 8) but moved SmolLM2's logits by up to 1.33 (54 of 56 teacher-forced positions
//! kept their token); 16-bit inputs move them by 0.25.
//! The weight's rows are shared out over the OpenMP team as in [`super::matmul_rows`], each
//! streamed once for every input row. Prefill and training keep their f32 / bf16 paths:
//! the model sends only products of at most [`super::Q8_MAX_ROWS`] rows here.

use tch::{Device, Kind, Tensor};

use super::{parallel, Isa, Shared, MATMUL_CHUNK, MATMUL_MAX_ROWS};

/// Values per scale, along a weight row (and an input row).
pub(crate) const BLOCK: usize = 32;

/// Steps of a weight block's grid: its values are `c + q · d` for `q` in `−STEPS/2..=STEPS/2`.
const STEPS: f32 = 240.0;

/// A weight `[n, k]` in 8 bits (see the module doc); `k` is a multiple of [`BLOCK`].
#[derive(Debug, Clone)]
pub(crate) struct Q8Matrix {
    n: usize,
    k: usize,
    /// `n · k` values, row-major.
    values: Vec<i8>,
    /// `n · k / BLOCK` steps `d`, row-major.
    scales: Vec<f32>,
    /// `n · k / BLOCK` centers `c`, row-major.
    centers: Vec<f32>,
}

impl Q8Matrix {
    /// The 8-bit form of `weight` (f32 or bf16 / f16, any device, `[n, k]` with `k` a
    /// multiple of [`BLOCK`]); `None` for any other shape, where the caller keeps its
    /// float path.
    pub(crate) fn quantize(weight: &Tensor) -> Option<Q8Matrix> {
        let (n, k) = weight.size2().ok()?;
        let (n, k) = (usize::try_from(n).ok()?, usize::try_from(k).ok()?);
        if n == 0 || k == 0 || k % BLOCK != 0 {
            return None;
        }
        let w = weight.detach().to_device(Device::Cpu).to_kind(Kind::Float).contiguous();
        // SAFETY: `w` is a contiguous f32 CPU tensor of n · k elements, alive below.
        let src = unsafe { std::slice::from_raw_parts(w.data_ptr() as *const f32, n * k) };
        let mut values = vec![0i8; n * k];
        let mut scales = vec![0f32; n * k / BLOCK];
        let mut centers = vec![0f32; n * k / BLOCK];
        for (((block, out), scale), center) in src.chunks_exact(BLOCK).zip(values.chunks_exact_mut(BLOCK)).zip(&mut scales).zip(&mut centers) {
            (*scale, *center) = quantize_weight_block(block, out);
        }
        Some(Q8Matrix { n, k, values, scales, centers })
    }

    /// `[n, k]`: output features, input features.
    pub(crate) fn shape(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Bytes held (values, steps and centers).
    pub(crate) fn bytes(&self) -> usize {
        self.values.len() + 4 * (self.scales.len() + self.centers.len())
    }

    /// The weight these values stand for, `[n, k]` f64 (`c + q · d`).
    #[cfg(test)]
    pub(crate) fn dequantize(&self) -> Tensor {
        let blocks = self.values.chunks_exact(BLOCK).zip(self.scales.iter().zip(&self.centers));
        let out: Vec<f64> = blocks.flat_map(|(q, (&d, &c))| q.iter().map(move |&v| f64::from(c) + f64::from(v) * f64::from(d))).collect();
        Tensor::from_slice(&out).view([self.n as i64, self.k as i64])
    }
}

/// Quantizes a weight block to `q` in −120..=120 in `out` and returns its step and center
/// (see [`STEPS`]); a block of equal values is all center. A non-finite value makes the
/// block's step NaN, so it shows in the product.
fn quantize_weight_block(block: &[f32], out: &mut [i8]) -> (f32, f32) {
    let (lo, hi, finite) = block.iter().fold((f32::INFINITY, f32::NEG_INFINITY, true), |(lo, hi, f), &v| (lo.min(v), hi.max(v), f && v.is_finite()));
    if !finite {
        return (f32::NAN, 0.0);
    }
    let center = lo / 2.0 + hi / 2.0;
    let d = (hi - lo) / STEPS;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    let limit = STEPS / 2.0;
    for (o, &v) in out.iter_mut().zip(block) {
        *o = ((v - center) * inv).round().clamp(-limit, limit) as i8;
    }
    (d, center)
}

/// Largest magnitude of a quantized input value.
const INPUT_MAX: f32 = 32767.0;

/// Quantizes 32 input values to int16 in `out` and returns their scale: `d = max|x| / 32767`,
/// `q = round(x / d)` (ties away from zero), all zero when the block is. A non-finite
/// value makes the whole block's scale non-finite, so it shows in the product.
fn quantize_input_block(block: &[f32], out: &mut [i16]) -> f32 {
    let (amax, finite) = block.iter().fold((0f32, true), |(m, f), v| (m.max(v.abs()), f && v.is_finite()));
    let d = amax / INPUT_MAX;
    let inv = if d > 0.0 { 1.0 / d } else { 0.0 };
    for (o, &v) in out.iter_mut().zip(block) {
        *o = (v * inv).round().clamp(-INPUT_MAX, INPUT_MAX) as i16;
    }
    if finite {
        d
    } else {
        f32::NAN
    }
}

/// `x Wᵀ (+ bias)` for `x: [m, k]` f32 on the CPU with `m` ≤ [`MATMUL_MAX_ROWS`] and no
/// gradient, against the 8-bit `weight` (`[n, k]`): `[m, n]` f32. `None` where it does not
/// apply (another shape or kind, a CPU without AVX2), for the caller's float path.
pub(crate) fn matmul_rows_q8(x: &Tensor, weight: &Q8Matrix, bias: Option<&Tensor>) -> Option<Tensor> {
    matmul_rows_q8_with(Isa::best(), x, weight, bias)
}

fn matmul_rows_q8_with(isa: Isa, x: &Tensor, weight: &Q8Matrix, bias: Option<&Tensor>) -> Option<Tensor> {
    let (m, k) = x.size2().ok()?;
    let f32_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu && !t.requires_grad();
    let (n, wk) = weight.shape();
    let usable = f32_cpu(x)
        && (1..=MATMUL_MAX_ROWS).contains(&m)
        && usize::try_from(k).ok() == Some(wk)
        && bias.is_none_or(|b| f32_cpu(b) && b.size() == [n as i64]);
    if !usable || isa == Isa::Scalar {
        return None;
    }
    let (m, k) = (m as usize, wk);
    let x = x.contiguous();
    // SAFETY: `x` is a contiguous f32 CPU tensor of m · k elements, alive below.
    let xf = unsafe { std::slice::from_raw_parts(x.data_ptr() as *const f32, m * k) };
    let mut xq = vec![0i16; m * k];
    let mut xd = vec![0f32; m * k / BLOCK];
    // per block: d_x · Σ x_q, what the weight block's center multiplies
    let mut xsum = vec![0f32; m * k / BLOCK];
    for (((block, out), scale), sum) in xf.chunks_exact(BLOCK).zip(xq.chunks_exact_mut(BLOCK)).zip(&mut xd).zip(&mut xsum) {
        *scale = quantize_input_block(block, out);
        *sum = *scale * out.iter().map(|&q| f32::from(q)).sum::<f32>();
    }
    let bias = bias.map(|b| b.contiguous());
    let y = Tensor::empty([m as i64, n as i64], (Kind::Float, Device::Cpu));
    let ys = Shared(y.data_ptr() as *mut f32);
    let bs = bias.as_ref().map(|b| Shared(b.data_ptr() as *mut f32));
    let input = Q8Rows { m, k, values: &xq, scales: &xd, sums: &xsum };
    parallel(n.div_ceil(MATMUL_CHUNK), |chunk| {
        let rows = chunk * MATMUL_CHUNK..((chunk + 1) * MATMUL_CHUNK).min(n);
        // SAFETY: y is [m, n] contiguous and the chunks' output columns are disjoint; the
        // bias holds n values; `isa` is at most `Isa::best()`, so AVX2 is there.
        unsafe { q8_chunk(&input, weight, rows, ys.ptr(), bs.map(Shared::ptr)) };
    });
    drop((x, bias));
    Some(y)
}

/// Quantized input rows: `m · k` values, `m · k / BLOCK` scales and scaled block sums.
struct Q8Rows<'a> {
    m: usize,
    k: usize,
    values: &'a [i16],
    scales: &'a [f32],
    sums: &'a [f32],
}

/// `y[:, rows] = x · W[rows]ᵀ (+ bias[rows])`, blocked by the number of input rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_chunk(x: &Q8Rows, w: &Q8Matrix, rows: std::ops::Range<usize>, y: *mut f32, bias: Option<*mut f32>) {
    // SAFETY: passed through.
    unsafe {
        match x.m {
            1 => q8_block::<1, 4>(x, w, rows, y, bias),
            2 => q8_block::<2, 4>(x, w, rows, y, bias),
            3 => q8_block::<3, 2>(x, w, rows, y, bias),
            _ => q8_block::<2, 4>(x, w, rows, y, bias),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn q8_chunk(_: &Q8Rows, _: &Q8Matrix, _: std::ops::Range<usize>, _: *mut f32, _: Option<*mut f32>) {
    unreachable!("matmul_rows_q8 checks the ISA first")
}

/// [`q8_chunk`] by `MR` input rows × `NR` weight rows at a time, in `MR · NR` f32
/// accumulators of 8 lanes. Per block of 32: the weight's int8 values widened to int16
/// (once for all input rows), multiplied with the input's int16 values in pairs summed to
/// i32 (`madd`: at most 2 · 32767 · 120, and a block's sum at most 32 · 32767 · 120 < 2³¹,
/// so exact), to f32, times the product of the two scales. Rows past the end (of `x` or of
/// `rows`) repeat the last one: computed, not stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn q8_block<const MR: usize, const NR: usize>(x: &Q8Rows, w: &Q8Matrix, rows: std::ops::Range<usize>, y: *mut f32, bias: Option<*mut f32>) {
    use std::arch::x86_64::*;
    let (m, k, n) = (x.m, x.k, w.n);
    let blocks = k / BLOCK;
    let last = rows.end - 1;
    let (xv, xs) = (x.values.as_ptr(), x.scales.as_ptr());
    let (wv, ws) = (w.values.as_ptr(), w.scales.as_ptr());
    let mut j0 = rows.start;
    while j0 < rows.end {
        let wj: [usize; NR] = std::array::from_fn(|t| (j0 + t).min(last));
        let next: [usize; NR] = std::array::from_fn(|t| (j0 + NR + t).min(last));
        let mut i0 = 0;
        while i0 < m {
            let xi: [usize; MR] = std::array::from_fn(|r| (i0 + r).min(m - 1));
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            for b in 0..blocks {
                // SAFETY (this loop): rows < n of the weight and < m of x, blocks < k / BLOCK.
                if i0 == 0 {
                    for j in next {
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(wv.add(j * k + b * BLOCK)) };
                    }
                }
                let xd: [f32; MR] = std::array::from_fn(|r| unsafe { *xs.add(xi[r] * blocks + b) });
                for t in 0..NR {
                    let at = unsafe { wv.add(wj[t] * k + b * BLOCK) };
                    let w_lo = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(at as *const __m128i)) };
                    let w_hi = unsafe { _mm256_cvtepi8_epi16(_mm_loadu_si128(at.add(16) as *const __m128i)) };
                    let wd = unsafe { *ws.add(wj[t] * blocks + b) };
                    for r in 0..MR {
                        let xr = unsafe { xv.add(xi[r] * k + b * BLOCK) };
                        let x_lo = unsafe { _mm256_loadu_si256(xr as *const __m256i) };
                        let x_hi = unsafe { _mm256_loadu_si256(xr.add(16) as *const __m256i) };
                        let sums = _mm256_add_epi32(_mm256_madd_epi16(x_lo, w_lo), _mm256_madd_epi16(x_hi, w_hi));
                        acc[r][t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), _mm256_set1_ps(xd[r] * wd), acc[r][t]);
                    }
                }
            }
            for (r, acc_r) in acc.iter().enumerate() {
                let i = i0 + r;
                if i >= m {
                    break;
                }
                for (t, &a) in acc_r.iter().enumerate() {
                    let j = j0 + t;
                    if j >= rows.end {
                        break;
                    }
                    let mut sum = super::hsum(a);
                    // the centers' part: Σ_b c_b · d_x,b · Σ x_q (in block order, as the reference)
                    let (centers, sums) = (&w.centers[j * blocks..(j + 1) * blocks], &x.sums[i * blocks..(i + 1) * blocks]);
                    sum += centers.iter().zip(sums).map(|(c, s)| c * s).sum::<f32>();
                    if let Some(b) = bias {
                        sum += unsafe { *b.add(j) };
                    }
                    // SAFETY: i < m, j < n.
                    unsafe { *y.add(i * n + j) = sum };
                }
            }
            i0 += MR;
        }
        j0 += NR;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The f64 reference of what the kernel computes — x quantized as the kernel quantizes
    /// it, against the dequantized weight, summed in f64 — and the sum of the products'
    /// magnitudes (what f32 summation errors scale with).
    fn reference(x: &Tensor, w: &Q8Matrix, bias: Option<&Tensor>) -> (Tensor, Tensor) {
        let (m, k) = x.size2().unwrap();
        let xf = Vec::<f32>::try_from(x.contiguous().view([-1])).unwrap();
        let mut xq = vec![0i16; xf.len()];
        let mut xdeq = Vec::with_capacity(xf.len());
        for (block, out) in xf.chunks_exact(BLOCK).zip(xq.chunks_exact_mut(BLOCK)) {
            let d = quantize_input_block(block, out);
            xdeq.extend(out.iter().map(|&q| f64::from(q) * f64::from(d)));
        }
        let xd = Tensor::from_slice(&xdeq).view([m, k]);
        let wd = w.dequantize();
        let y = xd.matmul(&wd.tr());
        let magnitude = xd.abs().matmul(&wd.abs().tr());
        match bias {
            Some(b) => (y + b.to_kind(Kind::Double), magnitude + b.to_kind(Kind::Double).abs()),
            None => (y, magnitude),
        }
    }

    /// Against the f64 reference on the AVX2 path (when the CPU has it): 1 to 16 input
    /// rows (every `MR` and the repeated-row tail), weight row counts that are not a
    /// multiple of the blocking or of a job's chunk, with and without bias, and rows of
    /// very different magnitudes (each block has its own scale). The only difference left
    /// is f32 summation order: bounded relative to the sum of |products|.
    #[test]
    fn matches_the_f64_reference() {
        if !super::super::avx2() {
            eprintln!("no AVX2 on this CPU: matmul_rows_q8 does not apply (checked below)");
        }
        tch::manual_seed(7);
        for (n, k) in [(1usize, 32usize), (7, 64), (131, 96), (200, 576)] {
            let weight = Tensor::randn([n as i64, k as i64], (Kind::Float, Device::Cpu));
            let _ = weight.narrow(0, 0, 1).g_mul_scalar_(1000.0);
            let q = Q8Matrix::quantize(&weight).expect("k is a multiple of 32");
            let bias = Tensor::randn([n as i64], (Kind::Float, Device::Cpu));
            for m in [1i64, 2, 3, 4, 5, 8, 16] {
                let x = Tensor::randn([m, k as i64], (Kind::Float, Device::Cpu));
                let _ = x.narrow(1, 0, BLOCK as i64).g_mul_scalar_(1e-3);
                for b in [None, Some(&bias)] {
                    let got = matmul_rows_q8_with(Isa::best(), &x, &q, b);
                    let Some(got) = got else {
                        assert!(!super::super::avx2());
                        continue;
                    };
                    let (want, magnitude) = reference(&x, &q, b);
                    let err = (got.to_kind(Kind::Double) - &want).abs();
                    let bound = magnitude * 1e-6 + 1e-6;
                    let worst = (&err - &bound).max().double_value(&[]);
                    assert!(worst <= 0.0, "n={n} k={k} m={m} bias={}: error exceeds the f32 summation bound by {worst}", b.is_some());
                }
            }
        }
    }

    /// Weights and inputs that are not of the shape the kernel takes keep the float path.
    #[test]
    fn other_shapes_are_left_alone() {
        assert!(Q8Matrix::quantize(&Tensor::ones([4, 33], (Kind::Float, Device::Cpu))).is_none());
        let q = Q8Matrix::quantize(&Tensor::ones([4, 64], (Kind::Float, Device::Cpu))).unwrap();
        for x in [Tensor::ones([17, 64], (Kind::Float, Device::Cpu)), Tensor::ones([2, 32], (Kind::Float, Device::Cpu)), Tensor::ones([2, 64], (Kind::Double, Device::Cpu))] {
            assert!(matmul_rows_q8(&x, &q, None).is_none(), "{:?}", x.size());
        }
        assert!(matmul_rows_q8_with(Isa::Scalar, &Tensor::ones([1, 64], (Kind::Float, Device::Cpu)), &q, None).is_none());
    }

    /// The 8-bit weight against the f32 one: each block's values are within half a step
    /// (`d / 2`, plus f32 rounding) of the original, constant blocks are exact, and a
    /// non-finite value shows.
    #[test]
    fn quantization_is_within_half_a_step() {
        tch::manual_seed(3);
        let w = Tensor::randn([64, 128], (Kind::Float, Device::Cpu)) * 3.0 + 0.5;
        let _ = w.narrow(0, 5, 1).fill_(-0.25);
        let q = Q8Matrix::quantize(&w).unwrap();
        let err = (q.dequantize() - w.to_kind(Kind::Double)).abs().view([64, 4, 32]);
        let d = Tensor::from_slice(&q.scales).to_kind(Kind::Double).view([64, 4, 1]);
        assert!((err - &d * 0.5 - 1e-6).max().double_value(&[]) <= 0.0);
        assert!(q.values[5 * 128..6 * 128].iter().all(|&v| v == 0) && q.scales[5 * 4..6 * 4].iter().all(|&s| s == 0.0));
        assert!(q.centers[5 * 4..6 * 4].iter().all(|&c| c == -0.25));
        let _ = w.narrow(0, 9, 1).narrow(1, 40, 1).fill_(f64::NAN);
        assert!(Q8Matrix::quantize(&w).unwrap().scales[9 * 4 + 1].is_nan());
    }

    /// Weights from a 4-bit GGUF block (Q4_1: `min + k · d₄`, k in 0..=15, both ends used)
    /// land on the grid: the 8-bit copy gives them back to f32 rounding.
    #[test]
    fn four_bit_blocks_are_kept_exactly() {
        let mut values = Vec::new();
        for (b, (min, d4)) in [(-0.37f32, 0.051f32), (0.002, 0.0007), (-3.0, 0.4), (1.5, 0.125)].into_iter().enumerate() {
            values.extend((0..32).map(|i| min + ((i * 7 + b * 3) % 16) as f32 * d4));
        }
        let w = Tensor::from_slice(&values).view([4, 32]);
        let q = Q8Matrix::quantize(&w).unwrap();
        let err = (q.dequantize() - w.to_kind(Kind::Double)).abs() / w.abs().to_kind(Kind::Double).max();
        assert!(err.max().double_value(&[]) < 1e-6, "relative error {}", err.max().double_value(&[]));
        assert!(q.values.iter().all(|&v| (i32::from(v) + 120) % 16 == 0), "every value is a level 16k - 120");
    }
}

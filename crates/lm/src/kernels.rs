//! CPU kernels for decoding, where libtorch's general ops lose most of the time: a
//! decoding step is a few rows against every weight, and attention of one new position
//! per row over the KV cache.
//!
//! - [`matmul_rows`]: `x Wᵀ` for 1–16 rows. libtorch's f32 GEMM splits such a product by
//!   rows, so each thread streams the whole weight (or, written `(W xᵀ)ᵀ`, runs far below
//!   the memory bandwidth on some CPUs: on a Xeon (Skylake-SP, 2 threads) SmolLM2's
//!   projections took 37 ms for 1 row in `x Wᵀ` form but 91 ms for 4, and 75–87 ms for
//!   both in `(W xᵀ)ᵀ` form). Here the weight's rows are shared out, each streamed once,
//!   and every input row is multiplied against it while it is in cache.
//! - [`matmul_rows_q8`] (`q8_weights`): the same products from 8-bit copies of the weights
//!   (`--weights q8`), for steps of at most [`Q8_MAX_ROWS`] rows.
//! - [`decode_attention`]: through libtorch a batch of rows at different positions attends
//!   as one `[rows, …, longest]` matmul with a mask, so every row pays for the longest
//!   row's keys, in a handful of small ops per layer. Here each (row, key/value head) pair
//!   is one job: the query heads of the group score the keys in one pass over them, a
//!   softmax, and one pass over the values. A job reads only its row's keys and values, so
//!   a row's result does not depend on which other rows share the step.
//! - [`sampling_weights`]: the sampler's softmax numerators over a whole vocabulary in
//!   vector lanes (a scalar f64 `exp` per token cost 0.43 ms per row of every step).
//!
//! With AVX-512F the products and the attention run in 16 lanes (`Isa`), 5–10% faster
//! (memory bounds both); the tests run every path the CPU has. The jobs are shared out over libtorch's own OpenMP team (libgomp's `GOMP_parallel`,
//! found at run time; without it they run on the calling thread), so no second pool of
//! threads competes with it for the cores.

use std::ffi::c_void;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tch::{Device, Kind, Tensor};

mod q8_weights;
pub(crate) use q8_weights::{matmul_rows_q8, Q8Matrix};

/// A raw pointer the jobs of one [`parallel`] call share (each writes a disjoint part).
struct Shared<T>(*mut T);
impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Shared<T> {}
// SAFETY: the jobs of a call read the inputs and write disjoint outputs; the tensors
// outlive the call (see the callers).
unsafe impl<T> Send for Shared<T> {}
unsafe impl<T> Sync for Shared<T> {}

impl<T> Shared<T> {
    /// The pointer (a method, so closures capture the `Shared`, not its field).
    fn ptr(self) -> *mut T {
        self.0
    }

    fn at(self, offset: usize) -> *mut T {
        // SAFETY: callers pass offsets inside the tensor the pointer came from.
        unsafe { self.0.add(offset) }
    }
}

/// Runs `job(0..n)` over libtorch's OpenMP team (each thread takes the next job until
/// none is left), or on this thread when there is one thread or no libgomp.
fn parallel<F: Fn(usize) + Sync>(n: usize, job: F) {
    struct Work<'a, F> {
        job: &'a F,
        next: AtomicUsize,
        n: usize,
    }
    extern "C" fn run<F: Fn(usize) + Sync>(data: *mut c_void) {
        // SAFETY: `data` is the `Work` below, alive until GOMP_parallel returns.
        let work = unsafe { &*(data as *const Work<F>) };
        loop {
            let i = work.next.fetch_add(1, Ordering::Relaxed);
            if i >= work.n {
                break;
            }
            (work.job)(i);
        }
    }
    let work = Work { job: &job, next: AtomicUsize::new(0), n };
    let data = &work as *const Work<F> as *mut c_void;
    let threads = (tch::get_num_threads().max(1) as usize).min(n);
    match gomp_parallel() {
        // SAFETY: GOMP_parallel calls `run` on every thread of the team and returns after
        // all have returned.
        Some(parallel) if threads > 1 => unsafe { parallel(run::<F>, data, threads as u32, 0) },
        _ => run::<F>(data),
    }
}

/// Rows up to which decoding products read the 8-bit weights (when the model keeps them);
/// more rows take the f32 weights. Without VNNI each input row costs the 8-bit product
/// about 3x the arithmetic of the f32 one, which pays for itself up to a few rows: on a
/// 2-vCPU AMD EPYC (Zen 3, AVX2; `matmul_timing`, SmolLM2's 121 products of a step) 1, 2,
/// 3, 4 and 8 rows took 9.7, 11.9, 17.0, 20.6 and 39.8 ms from 8-bit weights against 21.4,
/// 22.1, 24.0, 25.7 and 30.8 from f32; whole decoding steps (`bench generate`) of 3 rows
/// ran 1.28x f32's tokens/s and of 4 rows 1.07x.
pub(crate) const Q8_MAX_ROWS: i64 = 4;

/// Whether [`matmul_rows_q8`] runs on this CPU (it needs AVX2).
pub(crate) fn q8_products_run_here() -> bool {
    avx2()
}

/// Rows of `x` up to which [`matmul_rows`] applies.
pub(crate) const MATMUL_MAX_ROWS: i64 = 16;

/// Weight rows per job of [`matmul_rows`] (a multiple of the kernels' 2 and 4).
const MATMUL_CHUNK: usize = 64;

/// `x Wᵀ (+ bias)` for `x: [m, k]` with `m` ≤ [`MATMUL_MAX_ROWS`], `weight: [n, k]`, f32 on
/// the CPU: `[m, n]`. `None` where it does not apply (the caller's libtorch path), which
/// includes any input that requires a gradient (the result has no autograd history).
pub(crate) fn matmul_rows(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    matmul_rows_with(Isa::best(), x, weight, bias)
}

/// [`matmul_rows`] with at most the instructions of `isa` (it needs AVX2). Every row count
/// goes through the same path, so a row's result does not depend on the others.
fn matmul_rows_with(isa: Isa, x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Option<Tensor> {
    let (m, k) = x.size2().ok()?;
    let (n, wk) = weight.size2().ok()?;
    // no autograd here: a product that needs a gradient stays with libtorch
    let f32_cpu = |t: &Tensor| t.kind() == Kind::Float && t.device() == Device::Cpu && !t.requires_grad();
    let usable = f32_cpu(x)
        && f32_cpu(weight)
        && weight.is_contiguous()
        && wk == k
        && (1..=MATMUL_MAX_ROWS).contains(&m)
        && n > 0
        && k > 0
        && bias.is_none_or(|b| f32_cpu(b) && b.size() == [n]);
    if !usable || isa == Isa::Scalar {
        return None;
    }
    let x = x.contiguous();
    let bias = bias.map(|b| b.contiguous());
    let y = Tensor::empty([m, n], (Kind::Float, Device::Cpu));
    let (m, n, k) = (m as usize, n as usize, k as usize);
    let xs = Shared(x.data_ptr() as *mut f32);
    let ws = Shared(weight.data_ptr() as *mut f32);
    let ys = Shared(y.data_ptr() as *mut f32);
    let bs = bias.as_ref().map(|b| Shared(b.data_ptr() as *mut f32));
    parallel(n.div_ceil(MATMUL_CHUNK), |chunk| {
        let rows = chunk * MATMUL_CHUNK..((chunk + 1) * MATMUL_CHUNK).min(n);
        // SAFETY: x is [m, k], the weight [n, k], y [m, n] (n ≥ rows.end), all contiguous;
        // the chunks' output columns are disjoint; `isa` is at most `Isa::best()`.
        unsafe {
            if isa == Isa::Avx512 {
                matmul_chunk_512(xs.ptr(), m, k, ws.ptr(), rows.clone(), ys.ptr(), n, bs.map(Shared::ptr))
            } else {
                matmul_chunk(xs.ptr(), m, k, ws.ptr(), rows.clone(), ys.ptr(), n, bs.map(Shared::ptr))
            }
        };
    });
    drop((x, bias));
    Some(y)
}

/// `y[:, rows] = x · W[rows]ᵀ (+ bias[rows])`, blocked by the number of input rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_chunk(x: *const f32, m: usize, k: usize, w: *const f32, rows: std::ops::Range<usize>, y: *mut f32, ldy: usize, bias: Option<*mut f32>) {
    // SAFETY: passed through.
    unsafe {
        match m {
            1 => matmul_block::<1, 4>(x, m, k, w, rows, y, ldy, bias),
            2 => matmul_block::<2, 4>(x, m, k, w, rows, y, ldy, bias),
            _ => matmul_block::<4, 2>(x, m, k, w, rows, y, ldy, bias),
        }
    }
}

/// [`matmul_chunk`] by `MR` input rows × `NR` weight rows at a time, in `MR · NR` AVX
/// accumulators: with up to `MR` input rows a weight row is read once, and more input rows
/// reuse it from L1; the next `NR` weight rows are prefetched during the first pass.
/// Rows past the end (of `x` or of `rows`) repeat the last one: computed, not stored.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_block<const MR: usize, const NR: usize>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const f32,
    rows: std::ops::Range<usize>,
    y: *mut f32,
    ldy: usize,
    bias: Option<*mut f32>,
) {
    use std::arch::x86_64::*;
    let k8 = k / 8 * 8;
    let last = rows.end - 1;
    let mut j0 = rows.start;
    while j0 < rows.end {
        // SAFETY (this block): every pointer is clamped to rows < rows.end of the weight
        // and rows < m of x, offsets < k within a row; y is written at (i < m, j < rows.end).
        let wr: [*const f32; NR] = std::array::from_fn(|t| unsafe { w.add((j0 + t).min(last) * k) });
        let next: [*const f32; NR] = std::array::from_fn(|t| unsafe { w.add((j0 + NR + t).min(last) * k) });
        let mut i0 = 0;
        while i0 < m {
            let xr: [*const f32; MR] = std::array::from_fn(|r| unsafe { x.add((i0 + r).min(m - 1) * k) });
            let mut acc = [[_mm256_setzero_ps(); NR]; MR];
            let mut c = 0;
            while c < k8 {
                if i0 == 0 {
                    for p in next {
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(c) as *const i8) };
                    }
                }
                let xv: [__m256; MR] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(xr[r].add(c)) });
                for t in 0..NR {
                    let wv = unsafe { _mm256_loadu_ps(wr[t].add(c)) };
                    for r in 0..MR {
                        acc[r][t] = _mm256_fmadd_ps(xv[r], wv, acc[r][t]);
                    }
                }
                c += 8;
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
                    let mut sum = hsum(a);
                    for c in k8..k {
                        sum += unsafe { *xr[r].add(c) * *wr[t].add(c) };
                    }
                    if let Some(b) = bias {
                        sum += unsafe { *b.add(j) };
                    }
                    unsafe { *y.add(i * ldy + j) = sum };
                }
            }
            i0 += MR;
        }
        j0 += NR;
    }
}

/// [`matmul_chunk`] in 16 lanes, by 4 weight rows at a time for any number of input rows
/// (32 registers hold 4 × 4 accumulators). Memory bounds it as it does the AVX2 path: on a
/// 2-vCPU Sapphire Rapids VM (`matmul_timing`, SmolLM2's 121 products of a step, the two
/// paths interleaved) 1 row took 20.1 ms against 21.2, 4 rows 22.6 against 24.0.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_chunk_512(x: *const f32, m: usize, k: usize, w: *const f32, rows: std::ops::Range<usize>, y: *mut f32, ldy: usize, bias: Option<*mut f32>) {
    // SAFETY: passed through.
    unsafe {
        match m {
            1 => matmul_block_512::<1, 4>(x, m, k, w, rows, y, ldy, bias),
            2 => matmul_block_512::<2, 4>(x, m, k, w, rows, y, ldy, bias),
            _ => matmul_block_512::<4, 4>(x, m, k, w, rows, y, ldy, bias),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_chunk_512(_: *const f32, _: usize, _: usize, _: *const f32, _: std::ops::Range<usize>, _: *mut f32, _: usize, _: Option<*mut f32>) {
    unreachable!("matmul_rows checks the ISA first")
}

/// [`matmul_block`] in 16 lanes: each output is its 16-lane sum over `k`'s multiples of 16,
/// folded to 8 lanes and summed as there, then the tail and the bias — the same for every
/// `MR` and `NR`. The next `NR` weight rows are prefetched a cache line per step.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn matmul_block_512<const MR: usize, const NR: usize>(
    x: *const f32,
    m: usize,
    k: usize,
    w: *const f32,
    rows: std::ops::Range<usize>,
    y: *mut f32,
    ldy: usize,
    bias: Option<*mut f32>,
) {
    use std::arch::x86_64::*;
    let k16 = k / 16 * 16;
    let last = rows.end - 1;
    let mut j0 = rows.start;
    while j0 < rows.end {
        // SAFETY (this block): as in matmul_block.
        let wr: [*const f32; NR] = std::array::from_fn(|t| unsafe { w.add((j0 + t).min(last) * k) });
        let next: [*const f32; NR] = std::array::from_fn(|t| unsafe { w.add((j0 + NR + t).min(last) * k) });
        let mut i0 = 0;
        while i0 < m {
            let xr: [*const f32; MR] = std::array::from_fn(|r| unsafe { x.add((i0 + r).min(m - 1) * k) });
            let mut acc = [[_mm512_setzero_ps(); NR]; MR];
            let mut c = 0;
            while c < k16 {
                if i0 == 0 {
                    for p in next {
                        unsafe { _mm_prefetch::<_MM_HINT_T0>(p.add(c) as *const i8) };
                    }
                }
                let xv: [__m512; MR] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(xr[r].add(c)) });
                for t in 0..NR {
                    let wv = unsafe { _mm512_loadu_ps(wr[t].add(c)) };
                    for r in 0..MR {
                        acc[r][t] = _mm512_fmadd_ps(xv[r], wv, acc[r][t]);
                    }
                }
                c += 16;
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
                    let mut sum = hsum(fold_halves(a));
                    for c in k16..k {
                        sum += unsafe { *xr[r].add(c) * *wr[t].add(c) };
                    }
                    if let Some(b) = bias {
                        sum += unsafe { *b.add(j) };
                    }
                    unsafe { *y.add(i * ldy + j) = sum };
                }
            }
            i0 += MR;
        }
        j0 += NR;
    }
}

/// The sum of a vector's eight lanes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

/// Attention of `q: [B, heads, d]` (one position per row) over the first `keys[b]`
/// positions of cache rows `row0 + b` (`k_cache, v_cache: [rows, kv_heads, capacity, d]`,
/// contiguous, f32, bf16 or f16): `[B, heads · d]` in f32. `None` where this kernel does not
/// apply (not the CPU, another dtype or layout), for the caller's libtorch path.
///
/// `shared` (empty, or one entry per row): `(source, len)` says that cache row `source`
/// holds the same keys and values as row `row0 + b` in its first `len` positions (a
/// shared prompt prefix, copied into every row that starts with it). Whole blocks of
/// those positions are then read from `source`, so rows that share a prefix read one copy
/// of it, which after the first row comes from the CPU's cache instead of memory. The
/// result is the same bit for bit: the same values go through the same arithmetic.
pub(crate) fn decode_attention(q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, row0: i64, keys: &[i64], shared: &[(i64, i64)]) -> Option<Tensor> {
    decode_attention_with(Isa::best(), q, k_cache, v_cache, row0, keys, shared)
}

/// [`decode_attention`] with at most the instructions of `isa` (tests run every path the
/// CPU has).
fn decode_attention_with(isa: Isa, q: &Tensor, k_cache: &Tensor, v_cache: &Tensor, row0: i64, keys: &[i64], shared: &[(i64, i64)]) -> Option<Tensor> {
    let (b, heads, d) = q.size3().ok()?;
    let (rows, kv_heads, capacity, kd) = k_cache.size4().ok()?;
    let cache = match k_cache.kind() {
        Kind::Float => CacheKind::F32,
        Kind::BFloat16 => CacheKind::Bf16,
        Kind::Half => CacheKind::F16,
        Kind::Int8 => CacheKind::Q8,
        _ => return None,
    };
    // a q8 row holds d values and its scale's 4 bytes (`quantize_q8`)
    let row_len = if cache == CacheKind::Q8 { q8_row_len(d as usize) as i64 } else { d };
    let row_bytes = cache.row_bytes(d as usize);
    let usable = q.device() == Device::Cpu
        && !q.requires_grad()
        && k_cache.device() == Device::Cpu
        && v_cache.kind() == k_cache.kind()
        && v_cache.size() == k_cache.size()
        && k_cache.is_contiguous()
        && v_cache.is_contiguous()
        && kd == row_len
        && kv_heads > 0
        && heads % kv_heads == 0
        && keys.len() as i64 == b
        && row0 >= 0
        && row0 + b <= rows
        && keys.iter().all(|&n| n > 0 && n <= capacity)
        && (shared.is_empty() || shared.len() == keys.len())
        && shared.iter().all(|&(source, len)| (0..rows).contains(&source) && (0..=capacity).contains(&len));
    if !usable {
        return None;
    }
    let q = q.to_kind(Kind::Float).contiguous();
    // rotated q8 rows: the queries turn as the keys did (a new tensor: `q` may be the
    // caller's), the outputs turn back at the end
    let rotated = cache == CacheKind::Q8 && q8_rotates(d);
    let q = if rotated {
        let own = q.copy();
        fwht_rows(&own, d as usize);
        own
    } else {
        q
    };
    let out = Tensor::empty([b, heads * d], (Kind::Float, Device::Cpu));
    let group = (heads / kv_heads) as usize;
    let (qs, ks, vs, outs) = (
        Shared(q.data_ptr() as *mut f32),
        Shared(k_cache.data_ptr() as *mut u8),
        Shared(v_cache.data_ptr() as *mut u8),
        Shared(out.data_ptr() as *mut f32),
    );
    let mut jobs = Vec::with_capacity((b * kv_heads) as usize);
    let offset = |row: i64, h: i64| ((row * kv_heads + h) * capacity) as usize * row_bytes;
    for (i, &len) in keys.iter().enumerate() {
        let (source, shared_len) = shared.get(i).copied().unwrap_or((row0 + i as i64, 0));
        for h in 0..kv_heads {
            let (own, from) = (offset(row0 + i as i64, h), offset(source, h));
            let q_offset = ((i as i64 * heads + h * group as i64) * d) as usize;
            jobs.push(Job {
                q: qs.at(q_offset),
                k: ks.at(own),
                v: vs.at(own),
                len: len as usize,
                shared_k: ks.at(from),
                shared_v: vs.at(from),
                shared: (shared_len as usize).min(len as usize),
                out: outs.at(q_offset),
            });
        }
    }
    // longest first, so the last jobs handed out are short ones
    jobs.sort_by_key(|j| std::cmp::Reverse(j.len));
    let isa = match isa {
        Isa::Avx512 if d % 16 == 0 => Isa::Avx512,
        Isa::Avx512 | Isa::Avx2 if d % 8 == 0 => Isa::Avx2,
        _ => Isa::Scalar,
    };
    let shape = Shape { group, d: d as usize, scale: 1.0 / (d as f32).sqrt(), cache, isa };
    let jobs = Shared(jobs.as_mut_ptr());
    parallel((b * kv_heads) as usize, |i| {
        // SAFETY: i < the number of jobs; each job's pointers cover its `group · d` query
        // and output values and its row's `len · d` keys and values (checked above).
        let job = unsafe { &*jobs.at(i) };
        let mut scores = vec![0.0f32; group * if shape.isa == Isa::Scalar { job.len } else { KEY_BLOCK }];
        let mut acc = vec![0.0f32; group * shape.d];
        // SAFETY: as above; the ISA was checked by `Isa::best` (and the head size fits it).
        unsafe {
            match (shape.isa, shape.cache) {
                (Isa::Avx512, CacheKind::F32) => attend_avx512::<ELT_F32>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx512, CacheKind::Bf16) => attend_avx512::<ELT_BF16>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx512, CacheKind::F16) => attend_avx512::<ELT_F16>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx512, CacheKind::Q8) => attend_avx512::<ELT_Q8>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx2, CacheKind::F32) => attend_avx2::<ELT_F32>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx2, CacheKind::Bf16) => attend_avx2::<ELT_BF16>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx2, CacheKind::F16) => attend_avx2::<ELT_F16>(&shape, job, &mut scores, &mut acc),
                (Isa::Avx2, CacheKind::Q8) => attend_avx2::<ELT_Q8>(&shape, job, &mut scores, &mut acc),
                (Isa::Scalar, _) => attend(&shape, job, &mut scores, &mut acc),
            }
        }
    });
    // the tensors the jobs point into live until here
    drop((q, k_cache, v_cache));
    if rotated {
        fwht_rows(&out, d as usize);
    }
    Some(out)
}

/// Rows of `x: [..., d]` (any float kind) as a q8 cache holds them: `[..., d + 4]` int8.
/// Each row is first turned by the Hadamard rotation of [`q8_rotation`] when `d` is a power
/// of two (it spreads a head's few large channels over all of them, so one scale fits the
/// whole row; queries turn the same way, which keeps every dot product, and attention
/// outputs turn back), then divided by its scale (its largest magnitude / 127) and rounded
/// to the nearest integer (ties to even), and followed by the scale's four bytes (f32, the
/// CPU's byte order). A row of zeros has scale 0; one holding inf or NaN comes back NaN.
/// On the CPU one pass in Rust (a decoding step quantizes a few rows per layer, where a
/// chain of libtorch ops cost more than the cache's halved reads saved).
pub(crate) fn quantize_q8(x: &Tensor) -> Tensor {
    let mut size = x.size();
    let d = *size.last().expect("rows have a last dimension");
    let rotate = q8_rotates(d);
    if x.device() != Device::Cpu || x.numel() == 0 {
        return quantize_q8_ops(x);
    }
    let x = x.to_kind(Kind::Float).contiguous();
    let n = x.numel();
    *size.last_mut().expect("checked above") = q8_row_len(d as usize) as i64;
    let quantized = Tensor::empty(size.as_slice(), (Kind::Int8, Device::Cpu));
    let d = d as usize;
    // SAFETY: both tensors are contiguous on the CPU, x of n f32 values, `quantized` of
    // n / d rows of d + 4 bytes; they live to the end of this function.
    let (values, out) = unsafe {
        (
            std::slice::from_raw_parts(x.data_ptr() as *const f32, n),
            std::slice::from_raw_parts_mut(quantized.data_ptr() as *mut i8, n / d * q8_row_len(d)),
        )
    };
    let mut row = vec![0.0f32; d];
    for (src, dst) in values.chunks_exact(d).zip(out.chunks_exact_mut(q8_row_len(d))) {
        row.copy_from_slice(src);
        if rotate {
            fwht(&mut row);
        }
        let largest = row.iter().fold(0.0f32, |m, &v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
        let scale = largest / 127.0;
        let divisor = scale.max(f32::MIN_POSITIVE);
        for (o, &v) in dst.iter_mut().zip(&row) {
            *o = (v / divisor).round_ties_even().clamp(-127.0, 127.0) as i8;
        }
        for (o, byte) in dst[d..].iter_mut().zip(scale.to_ne_bytes()) {
            *o = byte as i8;
        }
    }
    quantized
}

/// Bytes a q8 row holds after its `d` int8 values: its f32 scale ([`quantize_q8`]).
pub(crate) const Q8_SCALE_BYTES: usize = 4;

/// Elements (bytes) of one q8 row of `d` values: the values, then their scale.
pub(crate) const fn q8_row_len(d: usize) -> usize {
    d + Q8_SCALE_BYTES
}

/// Turns each row of `d` values of the contiguous f32 CPU tensor `x` by [`fwht`], in place.
fn fwht_rows(x: &Tensor, d: usize) {
    let n = x.numel();
    // SAFETY: x is a contiguous f32 CPU tensor of n values (the callers' own).
    let values = unsafe { std::slice::from_raw_parts_mut(x.data_ptr() as *mut f32, n) };
    values.chunks_exact_mut(d).for_each(fwht);
}

/// [`quantize_q8`] in libtorch ops, for other devices than the CPU.
fn quantize_q8_ops(x: &Tensor) -> Tensor {
    let d = *x.size().last().expect("rows have a last dimension");
    let x = x.to_kind(Kind::Float);
    let x = match q8_rotation(d, Kind::Float, x.device()) {
        Some(h) => x.matmul(&h),
        None => x,
    };
    let scale = x.abs().amax([-1i64].as_slice(), true) / 127.0;
    let q = (&x / scale.clamp_min(f64::from(f32::MIN_POSITIVE))).round().clamp(-127, 127).to_kind(Kind::Int8);
    Tensor::cat(&[q, scale.contiguous().view_dtype(Kind::Int8)], -1)
}

/// Whether q8 rows of `d` values are rotated ([`quantize_q8`]): `d` a power of two.
pub(crate) fn q8_rotates(d: i64) -> bool {
    d > 1 && d & (d - 1) == 0
}

/// The rotation q8 rows of `d` values are stored under, as a `d × d` matrix in `kind`
/// (Sylvester's Hadamard matrix over √d: symmetric and orthogonal, its own inverse), or
/// `None` when they are not rotated.
pub(crate) fn q8_rotation(d: i64, kind: Kind, device: Device) -> Option<Tensor> {
    if !q8_rotates(d) {
        return None;
    }
    let n = d as usize;
    let scale = 1.0 / (d as f32).sqrt();
    let values: Vec<f32> = (0..n * n).map(|i| if ((i / n) & (i % n)).count_ones().is_multiple_of(2) { scale } else { -scale }).collect();
    Some(Tensor::from_slice(&values).view([d, d]).to_kind(kind).to_device(device))
}

/// `x ← x H` for [`q8_rotation`]'s `H` (`x.len()` a power of two): the fast Walsh–Hadamard
/// transform, then the 1/√n.
fn fwht(x: &mut [f32]) {
    let n = x.len();
    let mut h = 1;
    while h < n {
        for block in x.chunks_exact_mut(2 * h) {
            let (a, b) = block.split_at_mut(h);
            for (a, b) in a.iter_mut().zip(b) {
                (*a, *b) = (*a + *b, *a - *b);
            }
        }
        h *= 2;
    }
    let scale = 1.0 / (n as f32).sqrt();
    for v in x {
        *v *= scale;
    }
}

/// The values of q8 rows `[..., d + 4]` ([`quantize_q8`]) as `kind`: `[..., d]`.
pub(crate) fn dequantize_q8(rows: &Tensor, kind: Kind) -> Tensor {
    let d = rows.size().last().copied().expect("q8 rows have a last dimension") - Q8_SCALE_BYTES as i64;
    let scale = rows.narrow(-1, d, Q8_SCALE_BYTES as i64).contiguous().view_dtype(Kind::Float);
    (rows.narrow(-1, 0, d).to_kind(Kind::Float) * scale).to_kind(kind)
}

/// One (row, key/value head) pair of [`decode_attention`]: its `group` query vectors,
/// `len` keys and values (rows of `d` elements, contiguous), where its outputs go; the
/// first `shared` positions also lie, the same values, at `shared_k` and `shared_v`.
struct Job {
    q: *const f32,
    k: *const u8,
    v: *const u8,
    len: usize,
    shared_k: *const u8,
    shared_v: *const u8,
    shared: usize,
    out: *mut f32,
}

impl Job {
    /// Where to read the keys and values of positions `j0..j0 + n`: the shared copy when
    /// they all lie in it, else the row's own.
    fn block(&self, j0: usize, n: usize) -> (*const u8, *const u8) {
        if j0 + n <= self.shared { (self.shared_k, self.shared_v) } else { (self.k, self.v) }
    }
}

struct Shape {
    group: usize,
    d: usize,
    scale: f32,
    cache: CacheKind,
    isa: Isa,
}

/// The vector instructions a [`decode_attention`] job runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C, 8 lanes: head sizes that are a multiple of 8.
    Avx2,
    /// AVX-512F besides, 16 lanes: head sizes that are a multiple of 16.
    Avx512,
}

impl Isa {
    fn best() -> Isa {
        if avx512() {
            Isa::Avx512
        } else if avx2() {
            Isa::Avx2
        } else {
            Isa::Scalar
        }
    }
}

/// What the KV cache holds; bf16 and f16 are widened to f32 as they are read, q8 rows
/// (int8 values, then their f32 scale: [`quantize_q8`]) too, their scale applied to the
/// scores and the probabilities rather than to each value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheKind {
    F32,
    Bf16,
    F16,
    Q8,
}

impl CacheKind {
    /// Bytes of one position's row of `d` values ([`row_bytes`] for a kernel's `ELT`).
    fn row_bytes(self, d: usize) -> usize {
        match self {
            CacheKind::F32 => row_bytes::<ELT_F32>(d),
            CacheKind::Bf16 => row_bytes::<ELT_BF16>(d),
            CacheKind::F16 => row_bytes::<ELT_F16>(d),
            CacheKind::Q8 => row_bytes::<ELT_Q8>(d),
        }
    }
}

/// AVX2, FMA and F16C (which every AVX2 CPU has): [`attend_avx2`]'s instructions.
#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") && std::arch::is_x86_feature_detected!("f16c")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx2() -> bool {
    false
}

/// [`avx2`] and AVX-512F: [`attend_avx512`]'s instructions.
#[cfg(target_arch = "x86_64")]
fn avx512() -> bool {
    avx2() && std::arch::is_x86_feature_detected!("avx512f")
}

#[cfg(not(target_arch = "x86_64"))]
fn avx512() -> bool {
    false
}

/// Keys per block of [`attend_avx2`]'s online softmax.
const KEY_BLOCK: usize = 64;

/// The cache's element type as a const parameter of [`attend_avx2`], so its loads compile
/// to one conversion each.
const ELT_F32: u8 = 0;
const ELT_BF16: u8 = 1;
const ELT_F16: u8 = 2;
const ELT_Q8: u8 = 3;

/// Bytes of one position's row of `d` elements in a cache of `ELT` (a q8 row ends with its
/// f32 scale, [`quantize_q8`]).
#[inline(always)]
const fn row_bytes<const ELT: u8>(d: usize) -> usize {
    match ELT {
        ELT_F32 => 4 * d,
        ELT_Q8 => q8_row_len(d),
        _ => 2 * d,
    }
}

/// The scale a q8 row of `d` values ends with.
#[inline(always)]
unsafe fn q8_scale(row: *const u8, d: usize) -> f32 {
    // SAFETY: the caller's row holds d int8 values and then 4 bytes of scale.
    unsafe { std::ptr::read_unaligned(row.add(d) as *const f32) }
}

/// Query heads of a group handled together: their scores and value sums share each key
/// and value as it is loaded and converted (3 × 4 score accumulators, or 3 × 2 value
/// accumulators, fit AVX2's 16 registers).
const QUERY_TILE: usize = 3;

/// How far ahead of the keys being scored [`score_keys`] prefetches a 16-bit cache's keys.
const PREFETCH_KEYS: usize = 32;

/// [`attend`] with AVX2 + FMA, for head sizes that are a multiple of 8, in one pass over
/// the keys and values together (an online softmax by blocks of [`KEY_BLOCK`] keys, as
/// flash attention does). Keys and values are converted to f32 in registers as they are
/// loaded, once for up to [`QUERY_TILE`] query heads, so the loads from memory run
/// interleaved with the arithmetic. An earlier version widened each block into an L1
/// buffer first and then computed; in a real sampling run that widening, stalled on
/// memory while no arithmetic overlapped it, took 44% of the kernel's samples.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn attend_avx2<const ELT: u8>(work: &Shape, job: &Job, scores: &mut [f32], acc: &mut [f32]) {
    // SAFETY: passed through; the features are enabled here.
    unsafe { attend_blocks::<ELT, false>(work, job, scores, acc) }
}

/// [`attend_avx2`] in 16 lanes: half the instructions for the dot products and the value
/// sums. Memory bounds both: on a 2-vCPU Sapphire Rapids VM (`attention_timing`, SmolLM2's
/// 30 layers × 2048 keys, the two paths interleaved) 4 rows sharing a 1377-key prefix took
/// 6.85 ms against AVX2's 7.31 from an f16 cache (10.1 vs 11.2 from f32), 1 row 2.10 vs
/// 2.23, and the samples land on the loads and their prefetches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
unsafe fn attend_avx512<const ELT: u8>(work: &Shape, job: &Job, scores: &mut [f32], acc: &mut [f32]) {
    // SAFETY: passed through; the features are enabled here.
    unsafe { attend_blocks::<ELT, true>(work, job, scores, acc) }
}

/// The body of [`attend_avx2`] (`WIDE` false) and [`attend_avx512`] (true), inlined into
/// each so that it compiles with that one's features.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn attend_blocks<const ELT: u8, const WIDE: bool>(work: &Shape, job: &Job, scores: &mut [f32], acc: &mut [f32]) {
    let (g, d, len) = (work.group, work.d, job.len);
    // running max and sum of each query's exponentials
    let mut max = vec![f32::NEG_INFINITY; g];
    let mut sum = vec![0.0f32; g];
    let (s_ptr, acc_ptr) = (scores.as_mut_ptr(), acc.as_mut_ptr());
    let mut j0 = 0;
    while j0 < len {
        let n = KEY_BLOCK.min(len - j0);
        let (keys, values) = job.block(j0, n);
        // SAFETY (both tile loops): queries i0..i0 + tile < g; scores hold g · KEY_BLOCK
        // values, acc g · d; the block's keys and values are positions j0..j0 + n < len.
        let mut i0 = 0;
        while i0 < g {
            let tile = (g - i0).min(QUERY_TILE);
            let (q, s) = unsafe { (job.q.add(i0 * d), s_ptr.add(i0 * KEY_BLOCK)) };
            let prefetch = if i0 == 0 { values } else { std::ptr::null() };
            unsafe {
                match (WIDE, tile) {
                    (true, 3) => score_keys_512::<ELT, 3>(q, keys, prefetch, j0, n, d, work.scale, s),
                    (true, 2) => score_keys_512::<ELT, 2>(q, keys, prefetch, j0, n, d, work.scale, s),
                    (true, _) => score_keys_512::<ELT, 1>(q, keys, prefetch, j0, n, d, work.scale, s),
                    (false, 3) => score_keys::<ELT, 3>(q, keys, prefetch, j0, n, d, work.scale, s),
                    (false, 2) => score_keys::<ELT, 2>(q, keys, prefetch, j0, n, d, work.scale, s),
                    (false, _) => score_keys::<ELT, 1>(q, keys, prefetch, j0, n, d, work.scale, s),
                }
            }
            i0 += tile;
        }
        for i in 0..g {
            // online softmax: rescale what was summed so far to the new max
            let block = &mut scores[i * KEY_BLOCK..i * KEY_BLOCK + n];
            let block_max = largest(block);
            if block_max > max[i] {
                let correction = if max[i] == f32::NEG_INFINITY { 0.0 } else { exp(max[i] - block_max) };
                max[i] = block_max;
                sum[i] *= correction;
                for a in &mut acc[i * d..(i + 1) * d] {
                    *a *= correction;
                }
            }
            sum[i] += exponentiate(block, max[i]);
        }
        let mut i0 = 0;
        while i0 < g {
            let tile = (g - i0).min(QUERY_TILE);
            let (p, a) = unsafe { (s_ptr.add(i0 * KEY_BLOCK), acc_ptr.add(i0 * d)) };
            unsafe {
                match (WIDE, tile, d % 64 == 0) {
                    (true, 3, true) => add_values_512::<ELT, 3, 4>(p, values, j0, n, d, a),
                    (true, 2, true) => add_values_512::<ELT, 2, 4>(p, values, j0, n, d, a),
                    (true, _, true) => add_values_512::<ELT, 1, 4>(p, values, j0, n, d, a),
                    (true, 3, false) => add_values_512::<ELT, 3, 1>(p, values, j0, n, d, a),
                    (true, 2, false) => add_values_512::<ELT, 2, 1>(p, values, j0, n, d, a),
                    (true, _, false) => add_values_512::<ELT, 1, 1>(p, values, j0, n, d, a),
                    (false, 3, _) => add_values::<ELT, 3>(p, values, j0, n, d, a),
                    (false, 2, _) => add_values::<ELT, 2>(p, values, j0, n, d, a),
                    (false, _, _) => add_values::<ELT, 1>(p, values, j0, n, d, a),
                }
            }
            i0 += tile;
        }
        j0 += n;
    }
    // SAFETY: the job's output holds g · d values.
    let out = unsafe { std::slice::from_raw_parts_mut(job.out, g * d) };
    for i in 0..g {
        let inv = 1.0 / sum[i];
        for (o, &a) in out[i * d..(i + 1) * d].iter_mut().zip(&acc[i * d..(i + 1) * d]) {
            *o = a * inv;
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn attend_avx2<const ELT: u8>(_: &Shape, _: &Job, _: &mut [f32], _: &mut [f32]) {
    unreachable!("decode_attention checks avx2() first")
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn attend_avx512<const ELT: u8>(_: &Shape, _: &Job, _: &mut [f32], _: &mut [f32]) {
    unreachable!("decode_attention checks avx512() first")
}

/// Eight cache values from element `i` of the position's row at `base`, as f32 (a q8 row's
/// integers, not yet scaled).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn load8<const ELT: u8>(base: *const u8, i: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's row holds elements i..i + 8.
    unsafe {
        match ELT {
            ELT_F32 => _mm256_loadu_ps((base as *const f32).add(i)),
            ELT_Q8 => _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(base.add(i) as *const __m128i))),
            ELT_BF16 => {
                let half = _mm_loadu_si128((base as *const u16).add(i) as *const __m128i);
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
            }
            _ => _mm256_cvtph_ps(_mm_loadu_si128((base as *const u16).add(i) as *const __m128i)),
        }
    }
}

/// `s[i · KEY_BLOCK + t] = q_i · k_(j0 + t) · scale` for the `QB` queries at `q` (rows of
/// `d`) and keys `j0..j0 + n` of `keys`: four keys at a time, each converted once and
/// multiplied into `QB · 4` accumulators, whose lanes one `hadd` tree per query sums.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn score_keys<const ELT: u8, const QB: usize>(q: *const f32, keys: *const u8, values: *const u8, j0: usize, n: usize, d: usize, scale: f32, s: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY (the whole body): q holds QB · d values, keys positions j0..j0 + n of d
    // elements, s QB rows of KEY_BLOCK ≥ n values.
    unsafe {
        let row_bytes = row_bytes::<ELT>(d);
        let mut t = 0;
        while t + 4 <= n {
            // the values of these keys, wanted next (add_values reads them by columns,
            // a pattern the hardware prefetcher follows poorly)
            // and, for a 16-bit cache, the keys PREFETCH_KEYS ahead (with f32 keys,
            // twice the instructions, it measured slower). A prefetch past the end of the
            // job's keys is harmless: it touches the cache's next rows, or nothing.
            if !values.is_null() {
                prefetch_four::<ELT>(keys, values, j0 + t, row_bytes);
            }
            let mut a = [[_mm256_setzero_ps(); 4]; QB];
            let mut c = 0;
            while c < d {
                for u in 0..4 {
                    let k = load8::<ELT>(keys.add((j0 + t + u) * row_bytes), c);
                    for (i, a) in a.iter_mut().enumerate() {
                        a[u] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i * d + c)), k, a[u]);
                    }
                }
                c += 8;
            }
            let scales = four_scales::<ELT>(keys, j0 + t, row_bytes, d, scale);
            for (i, a) in a.iter().enumerate() {
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
                let dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                _mm_storeu_ps(s.add(i * KEY_BLOCK + t), _mm_mul_ps(dots, scales));
            }
            t += 4;
        }
        while t < n {
            let mut a = [_mm256_setzero_ps(); QB];
            let mut c = 0;
            while c < d {
                let k = load8::<ELT>(keys.add((j0 + t) * row_bytes), c);
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(i * d + c)), k, *a);
                }
                c += 8;
            }
            let key_scale = if ELT == ELT_Q8 { scale * q8_scale(keys.add((j0 + t) * row_bytes), d) } else { scale };
            for (i, &a) in a.iter().enumerate() {
                *s.add(i * KEY_BLOCK + t) = hsum(a) * key_scale;
            }
            t += 1;
        }
    }
}

/// Prefetches the values of positions `j..j + 4` and, for a 16-bit cache, the keys
/// [`PREFETCH_KEYS`] positions ahead (see [`score_keys`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn prefetch_four<const ELT: u8>(keys: *const u8, values: *const u8, j: usize, row_bytes: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the values of positions j..j + 4 are the caller's; a prefetch past the end of
    // the keys touches the cache's next rows or nothing, and never faults.
    unsafe {
        let first = values.add(j * row_bytes);
        let ahead = keys.wrapping_add((j + PREFETCH_KEYS) * row_bytes);
        let mut at = 0;
        while at < 4 * row_bytes {
            _mm_prefetch::<_MM_HINT_T0>(first.add(at) as *const i8);
            if ELT != ELT_F32 {
                _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(at) as *const i8);
            }
            at += 64;
        }
    }
}

/// `scale` times the q8 scales of positions `j..j + 4` of `keys` (rows of `row_bytes`);
/// for the other kinds just `scale`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn four_scales<const ELT: u8>(keys: *const u8, j: usize, row_bytes: usize, d: usize, scale: f32) -> std::arch::x86_64::__m128 {
    use std::arch::x86_64::*;
    if ELT != ELT_Q8 {
        return _mm_set1_ps(scale);
    }
    // SAFETY: positions j..j + 4 are the caller's keys.
    let [s0, s1, s2, s3] = [0, 1, 2, 3].map(|u| unsafe { q8_scale(keys.add((j + u) * row_bytes), d) });
    _mm_mul_ps(_mm_set_ps(s3, s2, s1, s0), _mm_set1_ps(scale))
}

/// `acc_i += Σ_t p[i · KEY_BLOCK + t] · v_(j0 + t)` for the `QB` queries' rows of `acc`
/// (`d` values each): 16 columns at a time held in `QB · 2` registers over the block's
/// values, each value converted once for all `QB` queries.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn add_values<const ELT: u8, const QB: usize>(p: *const f32, values: *const u8, j0: usize, n: usize, d: usize, acc: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY (the whole body): p holds QB rows of KEY_BLOCK ≥ n values, values positions
    // j0..j0 + n of d elements, acc QB rows of d values; d is a multiple of 8.
    unsafe {
        let mut c0 = 0;
        while c0 < d {
            // two columns of eight, or one at the end of a head size that is an odd
            // multiple of 8 (its second half repeats the first, computed, not stored)
            let c1 = if c0 + 16 <= d { c0 + 8 } else { c0 };
            let mut a = [[_mm256_setzero_ps(); 2]; QB];
            for (i, a) in a.iter_mut().enumerate() {
                a[0] = _mm256_loadu_ps(acc.add(i * d + c0));
                a[1] = _mm256_loadu_ps(acc.add(i * d + c1));
            }
            for t in 0..n {
                let row = values.add((j0 + t) * row_bytes::<ELT>(d));
                let v0 = load8::<ELT>(row, c0);
                let v1 = load8::<ELT>(row, c1);
                // a q8 row's scale goes into its probabilities
                let w = if ELT == ELT_Q8 { q8_scale(row, d) } else { 1.0 };
                for (i, a) in a.iter_mut().enumerate() {
                    let pv = if ELT == ELT_Q8 {
                        _mm256_set1_ps(*p.add(i * KEY_BLOCK + t) * w)
                    } else {
                        _mm256_broadcast_ss(&*p.add(i * KEY_BLOCK + t))
                    };
                    a[0] = _mm256_fmadd_ps(pv, v0, a[0]);
                    a[1] = _mm256_fmadd_ps(pv, v1, a[1]);
                }
            }
            for (i, a) in a.iter().enumerate() {
                _mm256_storeu_ps(acc.add(i * d + c0), a[0]);
                if c1 != c0 {
                    _mm256_storeu_ps(acc.add(i * d + c1), a[1]);
                }
            }
            c0 = c1 + 8;
        }
    }
}

/// Sixteen cache values from element `i` of the position's row at `base`, as f32 (a q8
/// row's integers, not yet scaled).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn load16<const ELT: u8>(base: *const u8, i: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: the caller's row holds elements i..i + 16.
    unsafe {
        match ELT {
            ELT_F32 => _mm512_loadu_ps((base as *const f32).add(i)),
            ELT_Q8 => _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(base.add(i) as *const __m128i))),
            ELT_BF16 => {
                let half = _mm256_loadu_si256((base as *const u16).add(i) as *const __m256i);
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
            }
            _ => _mm512_cvtph_ps(_mm256_loadu_si256((base as *const u16).add(i) as *const __m256i)),
        }
    }
}

/// The two 8-lane halves of `a` added.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
fn fold_halves(a: std::arch::x86_64::__m512) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(a))))
}

/// [`score_keys`] in 16 lanes (`d` a multiple of 16); the same prefetches.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn score_keys_512<const ELT: u8, const QB: usize>(q: *const f32, keys: *const u8, values: *const u8, j0: usize, n: usize, d: usize, scale: f32, s: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY (the whole body): q holds QB · d values, keys positions j0..j0 + n of d
    // elements, s QB rows of KEY_BLOCK ≥ n values.
    unsafe {
        let row_bytes = row_bytes::<ELT>(d);
        let mut t = 0;
        while t + 4 <= n {
            if !values.is_null() {
                prefetch_four::<ELT>(keys, values, j0 + t, row_bytes);
            }
            let mut a = [[_mm512_setzero_ps(); 4]; QB];
            let mut c = 0;
            while c < d {
                for u in 0..4 {
                    let k = load16::<ELT>(keys.add((j0 + t + u) * row_bytes), c);
                    for (i, a) in a.iter_mut().enumerate() {
                        a[u] = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(i * d + c)), k, a[u]);
                    }
                }
                c += 16;
            }
            let scales = four_scales::<ELT>(keys, j0 + t, row_bytes, d, scale);
            for (i, a) in a.iter().enumerate() {
                let [a0, a1, a2, a3] = [fold_halves(a[0]), fold_halves(a[1]), fold_halves(a[2]), fold_halves(a[3])];
                let h = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
                let dots = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps::<1>(h));
                _mm_storeu_ps(s.add(i * KEY_BLOCK + t), _mm_mul_ps(dots, scales));
            }
            t += 4;
        }
        while t < n {
            let mut a = [_mm512_setzero_ps(); QB];
            let mut c = 0;
            while c < d {
                let k = load16::<ELT>(keys.add((j0 + t) * row_bytes), c);
                for (i, a) in a.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add(i * d + c)), k, *a);
                }
                c += 16;
            }
            let key_scale = if ELT == ELT_Q8 { scale * q8_scale(keys.add((j0 + t) * row_bytes), d) } else { scale };
            for (i, &a) in a.iter().enumerate() {
                *s.add(i * KEY_BLOCK + t) = hsum(fold_halves(a)) * key_scale;
            }
            t += 1;
        }
    }
}

/// [`add_values`] in 16 lanes: `CV` columns of 16 at a time (4: a head of 64 in one pass
/// over the block's values), in `QB · CV` registers; `d` a multiple of `16 · CV`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma,f16c")]
#[inline]
unsafe fn add_values_512<const ELT: u8, const QB: usize, const CV: usize>(p: *const f32, values: *const u8, j0: usize, n: usize, d: usize, acc: *mut f32) {
    use std::arch::x86_64::*;
    // SAFETY (the whole body): p holds QB rows of KEY_BLOCK ≥ n values, values positions
    // j0..j0 + n of d elements, acc QB rows of d values; d is a multiple of 16 · CV.
    unsafe {
        let mut c0 = 0;
        while c0 < d {
            let mut a = [[_mm512_setzero_ps(); CV]; QB];
            for (i, a) in a.iter_mut().enumerate() {
                for (v, a) in a.iter_mut().enumerate() {
                    *a = _mm512_loadu_ps(acc.add(i * d + c0 + 16 * v));
                }
            }
            for t in 0..n {
                let row = values.add((j0 + t) * row_bytes::<ELT>(d));
                let vals: [__m512; CV] = std::array::from_fn(|v| load16::<ELT>(row, c0 + 16 * v));
                // a q8 row's scale goes into its probabilities
                let w = if ELT == ELT_Q8 { q8_scale(row, d) } else { 1.0 };
                for (i, a) in a.iter_mut().enumerate() {
                    let pv = _mm512_set1_ps(if ELT == ELT_Q8 { *p.add(i * KEY_BLOCK + t) * w } else { *p.add(i * KEY_BLOCK + t) });
                    for (a, &x) in a.iter_mut().zip(&vals) {
                        *a = _mm512_fmadd_ps(pv, x, *a);
                    }
                }
            }
            for (i, a) in a.iter().enumerate() {
                for (v, &a) in a.iter().enumerate() {
                    _mm512_storeu_ps(acc.add(i * d + c0 + 16 * v), a);
                }
            }
            c0 += 16 * CV;
        }
    }
}

/// One job: `scores[i · len + j] = q_i · k_j · scale`, a softmax per query, then
/// `out_i = Σ_j p_ij v_j`.
#[inline(always)]
unsafe fn attend(work: &Shape, job: &Job, scores: &mut [f32], acc: &mut [f32]) {
    let (g, d, len) = (work.group, work.d, job.len);
    // SAFETY: the job's pointers cover its `g · d` query values and `len · d` keys and
    // values (checked by `decode_attention`).
    let q = unsafe { std::slice::from_raw_parts(job.q, g * d) };
    let mut key = vec![0.0f32; d];
    for j in 0..len {
        let (keys, _) = job.block(j, 1);
        let k = unsafe { row(keys, j, d, work.cache, &mut key) };
        for i in 0..g {
            scores[i * len + j] = dot(&q[i * d..(i + 1) * d], k) * work.scale;
        }
    }
    let mut sums = [0.0f32; 64];
    let mut sums_heap = Vec::new();
    let sums: &mut [f32] = if g <= sums.len() {
        &mut sums[..g]
    } else {
        sums_heap.resize(g, 0.0);
        &mut sums_heap
    };
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = softmax_numerators(&mut scores[i * len..(i + 1) * len]);
    }
    for j in 0..len {
        let (_, values) = job.block(j, 1);
        let v = unsafe { row(values, j, d, work.cache, &mut key) };
        for i in 0..g {
            let p = scores[i * len + j];
            for (a, &x) in acc[i * d..(i + 1) * d].iter_mut().zip(v) {
                *a += p * x;
            }
        }
    }
    let out = unsafe { std::slice::from_raw_parts_mut(job.out, g * d) };
    for i in 0..g {
        let inv = 1.0 / sums[i];
        for (o, &a) in out[i * d..(i + 1) * d].iter_mut().zip(&acc[i * d..(i + 1) * d]) {
            *o = a * inv;
        }
    }
}

/// Position `j` of a `[len, d]` block: the f32 values in place, or bf16 / f16 widened
/// (q8 scaled) into `buf`.
#[inline(always)]
unsafe fn row(base: *const u8, j: usize, d: usize, cache: CacheKind, buf: &mut [f32]) -> &[f32] {
    if cache == CacheKind::F32 {
        // SAFETY: the caller's block holds `len · d` f32 values and j < len.
        return unsafe { std::slice::from_raw_parts((base as *const f32).add(j * d), d) };
    }
    if cache == CacheKind::Q8 {
        // SAFETY: the caller's block holds `len` rows of d int8 values and a scale each.
        let (values, scale) = unsafe {
            let at = base.add(j * cache.row_bytes(d));
            (std::slice::from_raw_parts(at as *const i8, d), q8_scale(at, d))
        };
        for (o, &x) in buf.iter_mut().zip(values) {
            *o = f32::from(x) * scale;
        }
        return buf;
    }
    // SAFETY: as above, 16-bit values.
    let src = unsafe { std::slice::from_raw_parts((base as *const u16).add(j * d), d) };
    for (o, &x) in buf.iter_mut().zip(src) {
        *o = if cache == CacheKind::Bf16 { f32::from_bits(u32::from(x) << 16) } else { half::f16::from_bits(x).to_f32() };
    }
    buf
}

/// Dot product with eight partial sums (one vector register's worth), so it vectorizes.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8.remainder().iter().zip(b8.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a8.zip(b8) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// The largest of `s` (not NaN), in eight lanes so it vectorizes (`f32::max`, which
/// must pass over NaN, compiles to a serial chain); `-inf` for none.
#[inline(always)]
fn largest(s: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = s.chunks_exact(8);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for l in 0..8 {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    lanes.iter().fold(tail, |m, &x| m.max(x))
}

/// Replaces `s` by `exp(s - max s)` and returns their sum.
#[inline(always)]
fn softmax_numerators(s: &mut [f32]) -> f32 {
    let max = s.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    exponentiate(s, max)
}

/// Replaces `s` by `exp(s - max)` (`max` ≥ every value) and returns their sum.
#[inline(always)]
fn exponentiate(s: &mut [f32], max: f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let mut chunks = s.chunks_exact_mut(8);
    for c in &mut chunks {
        for l in 0..8 {
            c[l] = exp(c[l] - max);
            lanes[l] += c[l];
        }
    }
    let mut sum: f32 = lanes.iter().sum();
    for x in chunks.into_remainder() {
        *x = exp(*x - max);
        sum += *x;
    }
    sum
}

/// Sampling weights of a whole vocabulary: `w[i] = e^(logits[i] / t - max)` for each
/// finite logit, where `max` is the largest finite logit over `t`, and 0 for the others
/// (NaN, ±inf). Returns their sum, or `None` when no logit is finite. [`exp`] in vector
/// lanes instead of a scalar f64 `exp` per token: over SmolLM2's 49152 tokens that took
/// 0.43 ms a sampled token, paid once per row of every decoding step.
pub(crate) fn sampling_weights(logits: &[f32], t: f32, w: &mut Vec<f32>) -> Option<f64> {
    w.clear();
    w.resize(logits.len(), 0.0);
    #[cfg(target_arch = "x86_64")]
    if avx2() {
        // SAFETY: avx2() checked the features the function is compiled for.
        return unsafe { sampling_weights_avx2(logits, t, w) };
    }
    sampling_weights_body(logits, t, w)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn sampling_weights_avx2(logits: &[f32], t: f32, w: &mut [f32]) -> Option<f64> {
    sampling_weights_body(logits, t, w)
}

#[inline(always)]
fn sampling_weights_body(logits: &[f32], t: f32, w: &mut [f32]) -> Option<f64> {
    // NaN fails the comparison too
    let finite = |x: f32| x.abs() < f32::INFINITY;
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = logits.chunks_exact(8);
    let tail = chunks.remainder().iter().filter(|x| finite(**x)).fold(f32::NEG_INFINITY, |m, &x| m.max(x));
    for c in chunks {
        for l in 0..8 {
            lanes[l] = if finite(c[l]) && c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let best = lanes.iter().fold(tail, |m, &x| m.max(x));
    if !finite(best) {
        return None;
    }
    let max = best / t;
    // computed for every lane, then selected (a branch around `exp` keeps it scalar); a
    // non-finite logit's argument (NaN, +inf) is clamped into `exp`'s domain first
    let weight = |x: f32| {
        let e = exp((x / t - max).min(0.0));
        if finite(x) { e } else { 0.0 }
    };
    let mut out = w.chunks_exact_mut(8);
    let mut input = logits.chunks_exact(8);
    for (o, c) in (&mut out).zip(&mut input) {
        for l in 0..8 {
            o[l] = weight(c[l]);
        }
    }
    for (o, &x) in out.into_remainder().iter_mut().zip(input.remainder()) {
        *o = weight(x);
    }
    let mut sums = [0.0f64; 4];
    let chunks = w.chunks_exact(4);
    let tail: f64 = chunks.remainder().iter().map(|&x| f64::from(x)).sum();
    for c in chunks {
        for l in 0..4 {
            sums[l] += f64::from(c[l]);
        }
    }
    Some(sums.iter().sum::<f64>() + tail)
}

/// `e^x` for `x ≤ 0`, to a relative error below 5e-7 down to -87 (`e^-87.3`, about
/// 1e-38, below that): `x = n·ln 2 + r` with `n` the nearest integer to `x·log2(e)` (`r`
/// computed with ln 2 in two parts, so it stays exact for large `n`), `e^r` by its Taylor
/// polynomial of degree 7 on `|r| ≤ ln(2)/2`, times `2^n` built in the exponent bits.
/// Branch-free so it vectorizes.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    // 1.5 · 2^23: adding and subtracting it rounds to the nearest integer
    const ROUND: f32 = 12_582_912.0;
    let x = x.max(-87.3);
    let n = (x * LOG2E + ROUND) - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    const C: [f32; 8] = [1.0, 1.0, 0.5, 1.0 / 6.0, 1.0 / 24.0, 1.0 / 120.0, 1.0 / 720.0, 1.0 / 5040.0];
    let p = C[0] + r * (C[1] + r * (C[2] + r * (C[3] + r * (C[4] + r * (C[5] + r * (C[6] + r * C[7]))))));
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    p * scale
}

type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, u32, u32);

/// libgomp's `GOMP_parallel`, from the OpenMP runtime libtorch loaded (none: run inline).
fn gomp_parallel() -> Option<GompParallel> {
    static PARALLEL: OnceLock<Option<usize>> = OnceLock::new();
    let address = *PARALLEL.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_DEFAULT searches what is loaded.
        let symbol = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr()) };
        (!symbol.is_null()).then_some(symbol as usize)
    });
    // SAFETY: GOMP_parallel has had this signature since GCC 4.9's libgomp.
    address.map(|a| unsafe { std::mem::transmute::<usize, GompParallel>(a) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_close_to_std() {
        let mut worst = 0.0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let (ours, std) = (exp(x) as f64, (x as f64).exp());
            worst = worst.max((ours - std).abs() / std);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-200.0) < 1e-37);
    }

    /// Against f64 `exp` of the same f32 arguments, for a vocabulary-sized row with NaN
    /// and ±inf among the logits (weight 0), a length that is not a multiple of 8, and
    /// temperatures below and above 1; a row with no finite logit has no weights.
    #[test]
    fn sampling_weights_match_f64_exp() {
        let mut logits: Vec<f32> = (0..49_157).map(|i| ((i * 7919) % 2003) as f32 / 100.0 - 12.0).collect();
        for (at, bad) in [(3, f32::NAN), (17, f32::INFINITY), (40_000, f32::NEG_INFINITY), (49_156, f32::NAN)] {
            logits[at] = bad;
        }
        let mut w = Vec::new();
        for t in [0.3f32, 1.0, 2.5] {
            let total = sampling_weights(&logits, t, &mut w).expect("finite logits");
            let max = logits.iter().filter(|x| x.is_finite()).fold(f32::NEG_INFINITY, |m, &x| m.max(x)) / t;
            let mut reference_total = 0.0f64;
            for (i, (&x, &ours)) in logits.iter().zip(&w).enumerate() {
                if !x.is_finite() {
                    assert_eq!(ours, 0.0, "logit {i} ({x}) has weight {ours}");
                    continue;
                }
                let reference = f64::from(x / t - max).exp();
                reference_total += reference;
                // below e^-87.3 the kernel's exp stops at about 1e-38
                assert!((f64::from(ours) - reference).abs() <= 5e-7 * reference + 2e-38, "t {t}, logit {i}: {ours} vs {reference}");
            }
            assert!((total - reference_total).abs() <= 1e-6 * reference_total, "t {t}: sum {total} vs {reference_total}");
        }
        assert_eq!(sampling_weights(&[f32::NAN, f32::NEG_INFINITY, f32::INFINITY], 1.0, &mut w), None);
        assert_eq!(sampling_weights(&[], 1.0, &mut w), None);
    }

    /// Every path of [`decode_attention`] this CPU can run.
    fn isas() -> impl Iterator<Item = Isa> {
        [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|&isa| isa <= Isa::best())
    }

    /// Against libtorch's softmax attention, on every path the CPU has: rows of different
    /// lengths, f32, bf16 and f16 caches, groups of 1, 2, 3 and 7 query heads (the vector
    /// paths take them 3 at a time), head sizes of an even and an odd number of 8-wide
    /// columns (AVX-512 takes 64 and 128 four 16-wide columns at a time, 32 one; 24 goes to
    /// AVX2), and one (20) that only the scalar path takes.
    #[test]
    fn matches_reference_attention() {
        let _guard = tch::no_grad_guard();
        let kinds = [(Kind::Float, 2e-6), (Kind::BFloat16, 2e-6), (Kind::Half, 2e-6), (Kind::Int8, 2e-6)];
        for (isa, (kind, tol)) in isas().flat_map(|isa| kinds.map(|k| (isa, k))) {
            for (heads, kv_heads, d) in [(9i64, 3i64, 64i64), (4, 4, 20), (14, 2, 24), (10, 5, 32), (2, 2, 128)] {
                let (rows, capacity) = (5i64, 300i64);
                let k_cache = cache_of(kind, Tensor::randn([rows, kv_heads, capacity, d], (Kind::Float, Device::Cpu)));
                let v_cache = cache_of(kind, Tensor::randn([rows, kv_heads, capacity, d], (Kind::Float, Device::Cpu)));
                let keys = [1i64, 300, 17, 129];
                let row0 = 1;
                let q = Tensor::randn([keys.len() as i64, heads, d], (Kind::Float, Device::Cpu)) * 3.0;
                let out = decode_attention_with(isa, &q, &k_cache, &v_cache, row0, &keys, &[]).expect("the kernel applies");
                let group = heads / kv_heads;
                // the reference reads what the cache holds (a q8 cache's values times scales,
                // rotated: the queries turn with them, the outputs turn back)
                let (k_f64, v_f64) = (f64_values(&k_cache), f64_values(&v_cache));
                let rotation = if kind == Kind::Int8 { q8_rotation(d, Kind::Double, Device::Cpu) } else { None };
                let turn = |x: Tensor| rotation.as_ref().map_or_else(|| x.shallow_clone(), |h| x.matmul(h));
                for (b, &n) in keys.iter().enumerate() {
                    let k = k_f64.get(row0 + b as i64).narrow(1, 0, n);
                    let v = v_f64.get(row0 + b as i64).narrow(1, 0, n);
                    let qb = turn(q.get(b as i64).to_kind(Kind::Double).view([kv_heads, group, d]));
                    let p = (qb.matmul(&k.transpose(-1, -2)) / (d as f64).sqrt()).softmax(-1, Kind::Double);
                    let want = turn(p.matmul(&v)).view([heads * d]);
                    let got = out.get(b as i64).to_kind(Kind::Double);
                    let err = f64::try_from((got - &want).abs().max()).unwrap();
                    let scale = f64::try_from(want.abs().max()).unwrap().max(1.0);
                    assert!(err <= tol * scale * 10.0, "{isa:?} {kind:?} heads {heads}/{kv_heads} d {d} row {b} ({n} keys): max error {err}");
                }
            }
        }
    }

    /// A cache of `kind` holding `x` (f32): q8 rows for `Kind::Int8`.
    fn cache_of(kind: Kind, x: Tensor) -> Tensor {
        if kind == Kind::Int8 { quantize_q8(&x) } else { x.to_kind(kind) }
    }

    /// The values a cache holds, in f64.
    fn f64_values(cache: &Tensor) -> Tensor {
        if cache.kind() == Kind::Int8 { dequantize_q8(cache, Kind::Double) } else { cache.to_kind(Kind::Double) }
    }

    /// q8 rows: rotated when the row length is a power of two (the fast transform is the
    /// matrix), within half a step (scale / 2) of the rotated values, the largest magnitude
    /// of each row exact up to f32 rounding, zero rows zero; the Rust pass and the libtorch
    /// ops (other devices) give the same rows up to one step where f32 rounding meets a tie.
    #[test]
    fn q8_rows_round_trip() {
        let _guard = tch::no_grad_guard();
        for d in [64i64, 16, 20] {
            let x = Tensor::randn([3, 2, 7, d], (Kind::Float, Device::Cpu)) * 5.0;
            let _ = x.get(1).get(0).get(3).zero_();
            let q = quantize_q8(&x);
            assert_eq!((q.kind(), q.size()), (Kind::Int8, vec![3, 2, 7, d + 4]));
            let back = dequantize_q8(&q, Kind::Float);
            let turned = match q8_rotation(d, Kind::Float, Device::Cpu) {
                Some(h) => {
                    let mut fast = Vec::<f32>::try_from(x.flatten(0, -1)).unwrap();
                    fast.chunks_exact_mut(d as usize).for_each(fwht);
                    let by_matrix = x.matmul(&h);
                    let diff = f64::try_from((Tensor::from_slice(&fast).view_as(&x) - &by_matrix).abs().max()).unwrap();
                    assert!(diff < 1e-5, "d {d}: the fast transform is {diff} off the matrix");
                    assert!(f64::try_from((h.matmul(&h) - Tensor::eye(d, (Kind::Float, Device::Cpu))).abs().max()).unwrap() < 1e-6);
                    by_matrix
                }
                None => x.shallow_clone(),
            };
            let step = turned.abs().amax([-1i64].as_slice(), true) / 127.0;
            let excess = f64::try_from(((&back - &turned).abs() - &step * 0.5001).max()).unwrap();
            assert!(excess <= 1e-5, "d {d}: a value off by more than half a step: {excess}");
            let row_max = |t: &Tensor| t.abs().amax([-1i64].as_slice(), false);
            assert!(bool::try_from(row_max(&back).isclose(&row_max(&turned), 1e-5, 0.0, false).all()).unwrap());
            assert_eq!(f64::try_from(back.get(1).get(0).get(3).abs().max()).unwrap(), 0.0);
            let ops = quantize_q8_ops(&x);
            let values = |q: &Tensor| q.narrow(-1, 0, d).to_kind(Kind::Int64);
            assert!(i64::try_from((values(&ops) - values(&q)).abs().max()).unwrap() <= 1, "d {d}");
            let scales = |q: &Tensor| q.narrow(-1, d, 4).contiguous().view_dtype(Kind::Float);
            assert!(bool::try_from(scales(&ops).isclose(&scales(&q), 1e-5, 0.0, false).all()).unwrap(), "d {d}");
        }
        // no rows: no rows back, of the q8 width
        assert_eq!(quantize_q8(&Tensor::zeros([0, 2, 64], (Kind::Float, Device::Cpu))).size(), vec![0, 2, 68]);
    }

    /// Rows that share a prefix read whole blocks of it from one row: the outputs are the
    /// same bits as each row reading its own copy, and the other rows' copies of those
    /// blocks are not read (they are overwritten with NaN — for q8, with bytes that are
    /// not what was written — which would show).
    #[test]
    fn rows_sharing_a_prefix_read_one_copy() {
        let _guard = tch::no_grad_guard();
        for (isa, kind) in isas().flat_map(|isa| [(isa, Kind::Float), (isa, Kind::Half), (isa, Kind::Int8)]) {
            for (heads, kv_heads, d) in [(9i64, 3i64, 64i64), (4, 4, 20), (4, 2, 48)] {
                let (rows, capacity, prefix) = (5i64, 300i64, 150i64);
                let k_cache = cache_of(kind, Tensor::randn([rows, kv_heads, capacity, d], (Kind::Float, Device::Cpu)));
                let v_cache = cache_of(kind, Tensor::randn([rows, kv_heads, capacity, d], (Kind::Float, Device::Cpu)));
                for t in [&k_cache, &v_cache] {
                    let first = t.get(1).narrow(1, 0, prefix).copy();
                    for r in 2..rows {
                        t.get(r).narrow(1, 0, prefix).copy_(&first);
                    }
                }
                // row 2 stops inside the prefix, row 3 at a block's end inside it
                let (row0, keys) = (1i64, [300i64, 100, 128, 151]);
                let q = Tensor::randn([keys.len() as i64, heads, d], (Kind::Float, Device::Cpu)) * 3.0;
                let want = decode_attention_with(isa, &q, &k_cache, &v_cache, row0, &keys, &[]).expect("the kernel applies");
                // whole blocks of KEY_BLOCK positions come from row 1
                let whole = (prefix as usize / KEY_BLOCK * KEY_BLOCK) as i64;
                for t in [&k_cache, &v_cache] {
                    for r in 2..rows {
                        let _ = t.get(r).narrow(1, 0, whole).fill_(if kind == Kind::Int8 { 77.0 } else { f64::NAN });
                    }
                }
                let shared = vec![(1i64, prefix); keys.len()];
                let got = decode_attention_with(isa, &q, &k_cache, &v_cache, row0, &keys, &shared).expect("the kernel applies");
                let (got, want) = (Vec::<f32>::try_from(got.flatten(0, -1)).unwrap(), Vec::<f32>::try_from(want.flatten(0, -1)).unwrap());
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{isa:?} {kind:?} heads {heads}/{kv_heads} d {d}");
                let unshared = decode_attention_with(isa, &q, &k_cache, &v_cache, row0, &keys, &[]).expect("the kernel applies");
                let unshared = Vec::<f32>::try_from(unshared.flatten(0, -1)).unwrap();
                assert!(
                    unshared.iter().any(|x| x.is_nan()) || bits(&unshared) != bits(&want),
                    "the poisoned copies are what a row reads without sharing"
                );
            }
        }
    }

    /// Against libtorch's f32 GEMM: 1–16 rows, weights with a tail of rows (not a multiple
    /// of 4 or of a job's 32) and of columns (not a multiple of 8), with and without bias.
    #[test]
    fn matmul_rows_matches_libtorch() {
        if !avx2() {
            return;
        }
        let _guard = tch::no_grad_guard();
        for isa in isas().filter(|&isa| isa != Isa::Scalar) {
            for (n, k) in [(960i64, 576i64), (37, 13), (1, 8), (70, 1543), (9, 16)] {
                let w = Tensor::randn([n, k], (Kind::Float, Device::Cpu));
                let b = Tensor::randn([n], (Kind::Float, Device::Cpu));
                let x16 = Tensor::randn([16, k], (Kind::Float, Device::Cpu));
                // each row's result is the same bits whatever rows come with it
                let all = matmul_rows_with(isa, &x16, &w, Some(&b)).expect("the kernel applies");
                for m in [1i64, 2, 3, 4, 7, 16] {
                    let x = Tensor::randn([m, k], (Kind::Float, Device::Cpu));
                    for bias in [None, Some(&b)] {
                        let got = matmul_rows_with(isa, &x, &w, bias).expect("the kernel applies");
                        let want = x.to_kind(Kind::Double).linear(&w.to_kind(Kind::Double), bias.map(|b| b.to_kind(Kind::Double)));
                        let err = f64::try_from((got.to_kind(Kind::Double) - &want).abs().max()).unwrap();
                        assert!(err < 1e-5 * (k as f64).sqrt(), "{isa:?} [{m}, {k}] x [{n}, {k}]^T (bias {}): max error {err}", bias.is_some());
                    }
                    let some = matmul_rows_with(isa, &x16.narrow(0, 16 - m, m), &w, Some(&b)).expect("the kernel applies");
                    assert!(some.equal(&all.narrow(0, 16 - m, m)), "{isa:?} [{m}, {k}]: rows changed with the company");
                }
            }
        }
        let x = Tensor::zeros([17, 8], (Kind::Float, Device::Cpu));
        assert!(matmul_rows(&x, &Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)), None).is_none(), "17 rows");
        let w = Tensor::zeros([8, 4], (Kind::Float, Device::Cpu)).tr();
        assert!(matmul_rows(&x.narrow(0, 0, 2), &w, None).is_none(), "a transposed weight");
        let w = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu));
        let x = Tensor::zeros([2, 8], (Kind::Float, Device::Cpu)).set_requires_grad(true);
        assert!(matmul_rows(&x, &w, None).is_none(), "an input that needs a gradient");
    }

    /// The kernel's speed, not a test of it: SmolLM2-135M's shapes (30 layers, 9 query
    /// heads over 3 key/value heads of 64) at 2048 keys, 1 and 4 rows (and 4 rows sharing a
    /// prefix), each layer its own cache so the keys and values come from memory as in a
    /// real step. Run with
    /// `cargo test --release -p swegym-lm --lib attention_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn attention_timing() {
        let _guard = tch::no_grad_guard();
        let (layers, heads, kv_heads, d, capacity, keys) = (30, 9i64, 3i64, 64i64, 2048i64, 2048i64);
        for kind in [Kind::Half, Kind::Float] {
            let caches: Vec<(Tensor, Tensor)> = (0..layers)
                .map(|_| {
                    let k = Tensor::randn([4, kv_heads, capacity, d], (Kind::Float, Device::Cpu)).to_kind(kind);
                    let v = Tensor::randn([4, kv_heads, capacity, d], (Kind::Float, Device::Cpu)).to_kind(kind);
                    (k, v)
                })
                .collect();
            // and 4 rows whose first 1377 keys (SmolLM2's system prompt in `swegym sample`)
            // are read from row 0
            for (rows, prefix) in [(1i64, 0i64), (4, 0), (4, 1377)] {
                let q = Tensor::randn([rows, heads, d], (Kind::Float, Device::Cpu));
                let lens = vec![keys; rows as usize];
                let shared = vec![(0i64, prefix); rows as usize];
                // the vector paths this CPU has, interleaved so that drift hits both
                let paths: Vec<Isa> = isas().filter(|&isa| isa != Isa::Scalar).collect();
                let mut times = vec![Vec::new(); paths.len()];
                for _ in 0..21 {
                    for (isa, times) in paths.iter().zip(&mut times) {
                        let t = std::time::Instant::now();
                        for (k, v) in &caches {
                            let _ = decode_attention_with(*isa, &q, k, v, 0, &lens, &shared).expect("the kernel applies");
                        }
                        times.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                }
                for (isa, times) in paths.iter().zip(&mut times) {
                    times.sort_by(f64::total_cmp);
                    eprintln!(
                        "{isa:?}, {kind:?} cache, {rows} row(s), {layers} layers × {keys} keys, {prefix} shared: median {:.2} ms (min {:.2})",
                        times[10], times[0]
                    );
                }
            }
        }
    }

    /// The kernel's speed, not a test of it: one decoding step's products of SmolLM2-135M
    /// (30 layers of fused q/k/v, o, fused gate/up and down, then the 49152-row output
    /// head: 540 MB of f32 weights, more than any CPU cache) for 1 to 4 rows. Run with
    /// `cargo test --release -p swegym-lm --lib matmul_timing -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn matmul_timing() {
        let _guard = tch::no_grad_guard();
        let mut shapes = Vec::new();
        for _ in 0..30 {
            shapes.extend([(960i64, 576i64), (576, 576), (3072, 576), (576, 1536)]);
        }
        shapes.push((49152, 576));
        let weights: Vec<Tensor> = shapes.iter().map(|&(n, k)| Tensor::randn([n, k], (Kind::Float, Device::Cpu))).collect();
        let q8: Vec<Q8Matrix> = weights.iter().map(|w| Q8Matrix::quantize(w).expect("multiples of 32")).collect();
        let paths: Vec<Isa> = isas().filter(|&isa| isa != Isa::Scalar).collect();
        for rows in [1i64, 2, 3, 4, 8] {
            let xs: Vec<Tensor> = shapes.iter().map(|&(_, k)| Tensor::randn([rows, k], (Kind::Float, Device::Cpu))).collect();
            // the f32 paths, then the q8 path (last)
            let mut times = vec![Vec::new(); paths.len() + 1];
            for _ in 0..15 {
                for (isa, times) in paths.iter().zip(&mut times) {
                    let t = std::time::Instant::now();
                    for (x, w) in xs.iter().zip(&weights) {
                        let _ = matmul_rows_with(*isa, x, w, None).expect("the kernel applies");
                    }
                    times.push(t.elapsed().as_secs_f64() * 1e3);
                }
                let t = std::time::Instant::now();
                for (x, w) in xs.iter().zip(&q8) {
                    let _ = matmul_rows_q8(x, w, None).expect("the kernel applies");
                }
                times[paths.len()].push(t.elapsed().as_secs_f64() * 1e3);
            }
            let names = paths.iter().map(|isa| format!("{isa:?} f32")).chain(["q8".to_string()]);
            for (name, times) in names.zip(&mut times) {
                times.sort_by(f64::total_cmp);
                eprintln!("{name}, {rows} row(s), 121 products: median {:.2} ms (min {:.2})", times[7], times[0]);
            }
        }
    }

    #[test]
    fn declines_what_it_does_not_handle() {
        let k = Tensor::zeros([2, 1, 8, 4], (Kind::Float, Device::Cpu));
        let q = Tensor::zeros([1, 1, 4], (Kind::Float, Device::Cpu));
        assert!(decode_attention(&q, &k, &k, 0, &[9], &[]).is_none(), "more keys than the capacity");
        assert!(decode_attention(&q, &k, &k, 2, &[1], &[]).is_none(), "a row past the cache");
        assert!(decode_attention(&q, &k, &k, 0, &[0], &[]).is_none(), "no keys");
        let double = k.to_kind(Kind::Double);
        assert!(decode_attention(&q, &double, &double, 0, &[1], &[]).is_none(), "f64 cache");
        assert!(decode_attention(&q, &k, &double, 0, &[1], &[]).is_none(), "keys and values of different dtypes");
        assert!(decode_attention(&q, &k, &k, 0, &[8], &[]).is_some());
    }
}

//! The Llama-family causal LM (Llama, SmolLM2, Qwen2), read top to bottom: RMSNorm →
//! rotary embedding → attention (GQA) → SwiGLU MLP → decoder block → model → KV cache.
//! Weight names mirror the HF checkpoint (`model.layers.{i}.self_attn.q_proj.weight`, ...),
//! and the arithmetic follows transformers' `modeling_llama.py` so logits match it.
//!
//! For speed the loaded model fuses q/k/v into one projection and gate/up into another
//! (one matmul each instead of three and two), and the KV cache is preallocated
//! (`[rows, kv_heads, capacity, head_dim]` per layer) with one length per row, so a batch
//! of sequences at different positions decodes in one forward (see `crate::generate`), and
//! a decode step's attention reads the cache in place (no per-step copy of past keys).

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::kernels;
use crate::config::{config_path, ModelConfig};
use crate::gguf::GgufFile;
use crate::lora::{LoraConfig, LoraLayer, LoraPair, LoraTarget};
use crate::weights::Weights;
use crate::ModelError;

/// The dtype weights and activations are kept in (logits are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

impl std::str::FromStr for Dtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" | "float32" => Ok(Dtype::F32),
            "bf16" | "bfloat16" => Ok(Dtype::Bf16),
            "f16" | "float16" => Ok(Dtype::F16),
            other => Err(format!("unknown dtype {other:?} (expected f32, bf16 or f16)")),
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        })
    }
}

impl Dtype {
    pub fn kind(self) -> Kind {
        match self {
            Dtype::F32 => Kind::Float,
            Dtype::Bf16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
        }
    }
}

/// What a KV cache holds: one of the float dtypes, or `Q8` — per position and key/value
/// head, `head_dim` int8 values and their f32 scale (the largest magnitude / 127), taken
/// after a Hadamard rotation of the row (`kernels::quantize_q8`): about half an f16 cache's
/// bytes. A decoding step reads the whole cache of each row, so its bytes are the part of
/// a step that grows with the rows of a batch and their context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KvDtype {
    F32,
    Bf16,
    F16,
    Q8,
}

impl From<Dtype> for KvDtype {
    fn from(d: Dtype) -> Self {
        match d {
            Dtype::F32 => KvDtype::F32,
            Dtype::Bf16 => KvDtype::Bf16,
            Dtype::F16 => KvDtype::F16,
        }
    }
}

impl std::str::FromStr for KvDtype {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "q8" | "int8" => Ok(KvDtype::Q8),
            other => other
                .parse::<Dtype>()
                .map(KvDtype::from)
                .map_err(|_| format!("unknown dtype {other:?} (expected f32, bf16, f16 or q8)")),
        }
    }
}

impl std::fmt::Display for KvDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KvDtype::F32 => "f32",
            KvDtype::Bf16 => "bf16",
            KvDtype::F16 => "f16",
            KvDtype::Q8 => "q8",
        })
    }
}

impl KvDtype {
    /// The element kind of the cache's tensors.
    pub fn kind(self) -> Kind {
        match self {
            KvDtype::F32 => Kind::Float,
            KvDtype::Bf16 => Kind::BFloat16,
            KvDtype::F16 => Kind::Half,
            KvDtype::Q8 => Kind::Int8,
        }
    }
}

/// The weights decoding steps multiply by: the model's own (`F32`), or an 8-bit copy of
/// every projection and of the output head (`Q8`: int8 values in blocks of 32 with an f32
/// center and step each, made at load and again after each adapter merge; see
/// [`CausalLm::set_decode_weights`]). Prefills and training keep the model's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum DecodeWeights {
    #[default]
    F32,
    Q8,
}

impl std::str::FromStr for DecodeWeights {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "f32" => Ok(DecodeWeights::F32),
            "q8" | "int8" => Ok(DecodeWeights::Q8),
            other => Err(format!("unknown decoding weights {other:?} (expected f32 or q8)")),
        }
    }
}

impl std::fmt::Display for DecodeWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DecodeWeights::F32 => "f32",
            DecodeWeights::Q8 => "q8",
        })
    }
}

/// `y = x W^T (+ b)`, plus a LoRA delta when adapters are attached. A fused projection
/// (q/k/v, gate/up) records its parts (which projection, how many output rows) so LoRA
/// and adapters address each part by its HF name.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
    parts: Vec<(LoraTarget, i64)>,
    lora: Option<LoraLayer>,
    /// A bf16 copy of `weight` for prefill-sized products ([`CausalLm::set_prefill_dtype`]).
    prefill: Option<Tensor>,
    /// An 8-bit copy of `weight` for decoding-sized products ([`CausalLm::set_decode_weights`]).
    decode: Option<kernels::Q8Matrix>,
}

impl Linear {
    fn load(w: &mut Weights, prefix: &str, target: LoraTarget, (out, inp): (i64, i64), bias: bool) -> Result<Self, ModelError> {
        let weight = w.take(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias { Some(w.take(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Self { weight, bias, parts: vec![(target, out)], lora: None, prefill: None, decode: None })
    }

    /// `x W^T + b`, plus the LoRA delta (`train` switches LoRA dropout on). With an 8-bit
    /// copy of the weight ([`CausalLm::set_decode_weights`]), a product of at most
    /// [`kernels::Q8_MAX_ROWS`] rows outside training reads it; with a bf16 copy
    /// ([`CausalLm::set_prefill_dtype`]), a product of more rows than a decoding step
    /// feeds, outside training, multiplies in bf16 (f32 sums) and returns f32.
    pub fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let decoded = self.decode.as_ref().filter(|_| !train).and_then(|q| decode_product(x, q, self.bias.as_ref()));
        let y = match (decoded, &self.prefill) {
            (Some(y), _) => y,
            (None, Some(w16)) if !train && is_prefill_product(x, w16) => {
                let y = x.to_kind(Kind::BFloat16).linear::<Tensor>(w16, None).to_kind(Kind::Float);
                match &self.bias {
                    Some(b) => y + b,
                    None => y,
                }
            }
            _ => linear(x, &self.weight, self.bias.as_ref()),
        };
        match &self.lora {
            None => y,
            Some(lora) => {
                let sizes: Vec<i64> = self.parts.iter().map(|p| p.1).collect();
                lora.add_to(y, x, &sizes, train)
            }
        }
    }

    /// One projection computing `parts` side by side (outputs concatenated in order).
    fn fuse(parts: Vec<Linear>) -> Linear {
        let weights: Vec<&Tensor> = parts.iter().map(|l| &l.weight).collect();
        let weight = Tensor::cat(&weights, 0);
        let bias = if parts.iter().all(|l| l.bias.is_some()) {
            let biases: Vec<&Tensor> = parts.iter().filter_map(|l| l.bias.as_ref()).collect();
            Some(Tensor::cat(&biases, 0))
        } else {
            None
        };
        let fused_parts = parts.iter().flat_map(|l| l.parts.iter().copied()).collect();
        Linear { weight, bias, parts: fused_parts, lora: None, prefill: None, decode: None }
    }

    fn cast(self, device: Device, kind: Kind) -> Linear {
        let cast = |t: Tensor| t.to_device(device).to_kind(kind);
        Linear { weight: cast(self.weight), bias: self.bias.map(cast), prefill: None, decode: None, ..self }
    }

    /// Keeps (or drops) the bf16 copy of the weight that prefill-sized products use.
    fn set_prefill_copy(&mut self, keep: bool) {
        self.prefill = keep.then(|| self.weight.to_kind(Kind::BFloat16));
    }

    /// Keeps (or drops) the 8-bit copy of the weight that decoding-sized products use.
    fn set_decode_copy(&mut self, keep: bool) {
        self.decode = if keep { kernels::Q8Matrix::quantize(&self.weight) } else { None };
    }

    /// Folds the LoRA delta into the weight rows of each part and drops the LoRA layer.
    fn merge_lora(&mut self) {
        let Some(lora) = self.lora.take() else { return };
        let _guard = tch::no_grad_guard();
        let mut row = 0;
        for ((_, out), pair) in self.parts.iter().zip(&lora.pairs) {
            if let Some(p) = pair {
                let delta = (p.b.matmul(&p.a) * lora.scale).to_kind(self.weight.kind());
                let _ = self.weight.narrow(0, row, *out).g_add_(&delta.to_device(self.weight.device()));
            }
            row += out;
        }
        if self.prefill.is_some() {
            self.set_prefill_copy(true);
        }
        if self.decode.is_some() {
            self.set_decode_copy(true);
        }
    }
}

/// `x W^T + b` from the 8-bit weight `q` for a decoding-sized `x: [..., in]` (f32, at most
/// [`kernels::Q8_MAX_ROWS`] rows, no gradient, on the CPU); `None` for anything else (the
/// f32 weights, which the model keeps, take it).
fn decode_product(x: &Tensor, q: &kernels::Q8Matrix, bias: Option<&Tensor>) -> Option<Tensor> {
    let (out, in_dim) = q.shape();
    let rows = x.numel() as i64 / (in_dim as i64).max(1);
    if x.kind() != Kind::Float || x.requires_grad() || rows > kernels::Q8_MAX_ROWS || rows == 0 || x.device() != Device::Cpu {
        return None;
    }
    let y = kernels::matmul_rows_q8(&x.reshape([rows, in_dim as i64]), q, bias)?;
    let mut shape = x.size();
    *shape.last_mut()? = out as i64;
    Some(y.view(shape.as_slice()))
}

/// Whether `x` (f32, no gradient) is a product for a bf16 weight copy: more rows than
/// [`kernels::MATMUL_MAX_ROWS`], which decoding steps never feed (they stay in f32).
fn is_prefill_product(x: &Tensor, w16: &Tensor) -> bool {
    let in_dim = w16.size()[1].max(1);
    x.kind() == Kind::Float && !x.requires_grad() && x.numel() as i64 / in_dim > kernels::MATMUL_MAX_ROWS
}

/// `x W^T + b` for `x: [..., in]`, `weight: [out, in]`. A decoding step feeds a handful of
/// rows (at most [`kernels::MATMUL_MAX_ROWS`]): in f32 on the CPU those go to
/// [`kernels::matmul_rows`], which streams each weight once whatever the rows. libtorch's
/// f32 GEMM splits such a product by rows, so every thread streams the whole weight (two
/// rows cost about twice one), and written `(W x^T)^T` instead (split over the weight's
/// rows) its speed depends on the CPU: on an AMD EPYC it took SmolLM2's projections from
/// 44 to 18 ms a step for one row, on a Xeon it ran at a third of the memory bandwidth. That
/// form stays as the fallback for CPUs without AVX2. bf16 goes through oneDNN and keeps
/// `linear`.
fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Tensor {
    let in_dim = weight.size()[1];
    let rows = x.numel() as i64 / in_dim.max(1);
    if weight.kind() != Kind::Float
        || x.kind() != Kind::Float
        || rows > kernels::MATMUL_MAX_ROWS
        || rows == 0
        || x.device() != Device::Cpu
    {
        return x.linear(weight, bias);
    }
    let flat = x.reshape([rows, in_dim]);
    let mut shape = x.size();
    *shape.last_mut().expect("x has a feature dimension") = weight.size()[0];
    if let Some(y) = kernels::matmul_rows(&flat, weight, bias) {
        return y.view(shape.as_slice());
    }
    let y = if rows == 1 {
        weight.mm(&Tensor::cat(&[&flat, &flat], 0).tr()).narrow(1, 0, 1)
    } else {
        weight.mm(&flat.tr())
    };
    let mut y = y.tr().contiguous();
    if let Some(b) = bias {
        y += b;
    }
    y.view(shape.as_slice())
}

/// RMSNorm computed in f32, as transformers' `LlamaRMSNorm`.
#[derive(Debug)]
pub struct RmsNorm {
    pub weight: Tensor,
    pub eps: f64,
}

impl RmsNorm {
    fn load(w: &mut Weights, name: &str, size: i64, eps: f64) -> Result<Self, ModelError> {
        Ok(Self { weight: w.take(name, &[size])?, eps })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let kind = x.kind();
        let x32 = x.to_kind(Kind::Float);
        let variance = x32.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        let normed = x32 * (variance + self.eps).rsqrt();
        &self.weight * normed.to_kind(kind)
    }
}


/// Rotate-half RoPE tables (`cos`, `sin`: `[max_positions, head_dim]`, f32).
#[derive(Debug)]
pub struct Rotary {
    cos: Tensor,
    sin: Tensor,
}

impl Rotary {
    fn new(config: &ModelConfig, device: Device) -> Self {
        let dim = config.head_dim;
        let exponents = Tensor::arange_start_step(0, dim, 2, (Kind::Int64, device)).to_kind(Kind::Float) / dim as f64;
        // 1 / theta^(2i/d), computed as transformers does (f32 pow of an f32 exponent)
        let inv_freq = Tensor::from(config.rope_theta as f32).to_device(device).pow(&exponents).reciprocal();
        let positions = Tensor::arange(config.max_position_embeddings, (Kind::Float, device));
        let freqs = positions.unsqueeze(1) * inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        Self { cos: emb.cos(), sin: emb.sin() }
    }

    /// `(cos, sin)` for `positions: [B, T]` (int64), shaped `[B, T, 1, D]` in `kind` so
    /// they broadcast over the heads of `[B, T, heads, D]` activations.
    fn tables(&self, positions: &Tensor, kind: Kind) -> (Tensor, Tensor) {
        let (b, t) = positions.size2().expect("positions [B, T]");
        let flat = positions.flatten(0, 1);
        let pick = |table: &Tensor| table.index_select(0, &flat).view([b, t, 1, -1]).to_kind(kind);
        (pick(&self.cos), pick(&self.sin))
    }
}

/// `x * cos + rotate_half(x) * sin` for `x: [B, T, heads, D]` (transformers' order of ops).
fn apply_rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = x.size()[3] / 2;
    let x1 = x.narrow(3, 0, half);
    let x2 = x.narrow(3, half, half);
    let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
    x * cos + rotated * sin
}

/// What one forward pass shares across layers: RoPE tables for the new positions, the
/// attention mask, and where the new keys/values go in the cache.
struct Step {
    cos: Tensor,
    sin: Tensor,
    /// `[B, 1, T, L]` bool, true = may attend; `None` with `is_causal` or for a single query.
    mask: Option<Tensor>,
    is_causal: bool,
    write: Option<KvWrite>,
    /// Training forward (LoRA dropout on).
    train: bool,
    /// Causal attention by query blocks (see [`blocked_causal_attention`]) instead of SDPA.
    blocks: Option<CausalBlocks>,
    /// Attention of more than one new position in this dtype instead of the model's (a
    /// bf16 prefill, [`CausalLm::set_prefill_dtype`]; see [`reduced_prefill_attention`]).
    prefill_kind: Option<Kind>,
}

/// Where a forward pass writes its keys/values into a [`KvCache`] and what it attends to.
/// `shared` (decoding steps): per row, the row whose copy of its shared prefix the
/// attention reads, and the prefix's length ([`KvCache::shared_sources`]).
enum KvWrite {
    /// Rows `row0..row0 + B` all hold `past` positions; the T new ones go to `past..past + T`.
    Block { row0: i64, past: i64, shared: Vec<(i64, i64)> },
    /// Rows `0..B`, one new position each, at `positions[b]` (int64 `[B]`); row `b`
    /// attends over its first `keys[b]` positions (`len` is the longest).
    Scatter { rows: Tensor, positions: Tensor, keys: Vec<i64>, len: i64, shared: Vec<(i64, i64)> },
}

/// The KV cache dtype generation uses unless told otherwise: f16 for f32 weights on the
/// CPU (as llama.cpp keeps its cache), else the weights' dtype (bf16 and f16 models already
/// have a 16-bit cache; CUDA's attention reads the cache in the model's dtype). Measured on
/// an AMD EPYC (AVX2, 2 threads; `kernels::tests::attention_timing`): the decoding
/// attention of SmolLM2's 30 layers over 2048 keys takes 11.3–11.6 ms for 4 rows and 3.1
/// for 1 from an f16 cache, 18–22 and 5.4 from an f32 one; `bench sample` -j 4 generated 180k
/// tokens/hour against 145k (with the kernel before its loads were interleaved).
pub fn auto_kv_dtype(dtype: Dtype, device: Device) -> Dtype {
    match (dtype, device) {
        (Dtype::F32, Device::Cpu) => Dtype::F16,
        _ => dtype,
    }
}

/// The largest finite f16.
const F16_MAX: f64 = 65504.0;

/// Grouped-query self-attention with q/k/v fused into one projection.
#[derive(Debug)]
pub struct Attention {
    qkv_proj: Linear,
    o_proj: Linear,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(w: &mut Weights, prefix: &str, c: &ModelConfig) -> Result<Self, ModelError> {
        let (h, q_out, kv_out) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        let q = Linear::load(w, &format!("{prefix}.q_proj"), LoraTarget::Q, (q_out, h), c.attention_bias)?;
        let k = Linear::load(w, &format!("{prefix}.k_proj"), LoraTarget::K, (kv_out, h), c.attention_bias)?;
        let v = Linear::load(w, &format!("{prefix}.v_proj"), LoraTarget::V, (kv_out, h), c.attention_bias)?;
        Ok(Self {
            qkv_proj: Linear::fuse(vec![q, k, v]),
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), LoraTarget::O, (h, q_out), false)?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        })
    }

    /// `x: [B, T, hidden]` → `[B, T, hidden]`. The T new positions attend causally to
    /// each other and to what `step.write` says is in `cache` (which they are added to).
    fn forward(&self, x: &Tensor, step: &Step, cache: Option<(&mut Tensor, &mut Tensor)>) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let (nh, nkv, d) = (self.n_heads, self.n_kv_heads, self.head_dim);
        let qkv = self.qkv_proj.forward(x, step.train).view([b, t, nh + 2 * nkv, d]);
        let qk = apply_rope(&qkv.narrow(2, 0, nh + nkv), &step.cos, &step.sin);
        // heads-major, as SDPA and the cache ([rows, kv_heads, len, d]) hold them
        let q = qk.narrow(2, 0, nh).transpose(1, 2);
        let k = qk.narrow(2, nh, nkv).transpose(1, 2);
        let v = qkv.narrow(2, nh + nkv, nkv).transpose(1, 2);
        // a q8 cache holds keys and values turned by a Hadamard rotation
        // (`kernels::quantize_q8`); read through libtorch, the queries turn with them and
        // the outputs turn back (the decoding kernel does both itself)
        let q8 = cache.as_ref().is_some_and(|(kc, _)| kc.kind() == Kind::Int8);
        let rotation = || q8.then(|| kernels::q8_rotation(d, q.kind(), q.device())).flatten();
        let turned = |q: &Tensor, h: &Option<Tensor>| h.as_ref().map_or_else(|| q.shallow_clone(), |h| q.matmul(h));
        let turn_back = |y: Tensor, h: &Option<Tensor>| match h {
            Some(h) => y.view([b, t, nh, d]).matmul(h).view([b, t, nh * d]),
            None => y,
        };
        // for a decoding step: the whole cache, its first row and each row's keys
        let mut in_place = None;
        // an f16 cache saturates at f16's largest finite value (it would hold inf); a q8
        // cache holds each head's row as int8 values and their scale
        let fit = |x: &Tensor, cache: &Tensor| match cache.kind() {
            Kind::Half if x.kind() != Kind::Half => x.clamp(-F16_MAX, F16_MAX).to_kind(Kind::Half),
            Kind::Int8 => kernels::quantize_q8(x),
            kind => x.to_kind(kind),
        };
        let (k, v) = match (cache, &step.write) {
            (Some((kc, vc)), Some(KvWrite::Block { row0, past, shared })) => {
                kc.narrow(0, *row0, b).narrow(2, *past, t).copy_(&fit(&k, kc));
                vc.narrow(0, *row0, b).narrow(2, *past, t).copy_(&fit(&v, vc));
                let len = past + t;
                if t == 1 {
                    in_place = Some((kc.shallow_clone(), vc.shallow_clone(), *row0, vec![len; b as usize], shared.as_slice()));
                }
                (kc.narrow(0, *row0, b).narrow(2, 0, len), vc.narrow(0, *row0, b).narrow(2, 0, len))
            }
            (Some((kc, vc)), Some(KvWrite::Scatter { rows, positions, keys, len, shared })) => {
                // (rows[b], :, positions[b], :) ← k[b, :, 0, :]
                let index = [Some(rows), None, Some(positions)];
                let _ = kc.index_put_(&index, &fit(&k.squeeze_dim(2), kc), false);
                let _ = vc.index_put_(&index, &fit(&v.squeeze_dim(2), vc), false);
                in_place = Some((kc.shallow_clone(), vc.shallow_clone(), 0, keys.clone(), shared.as_slice()));
                (kc.narrow(0, 0, b).narrow(2, 0, *len), vc.narrow(0, 0, b).narrow(2, 0, *len))
            }
            _ => (k, v),
        };
        // a cache may hold another dtype than the model computes in (`KvCache::kind`)
        // (q8 rows are dequantized: still turned, as `rotation` says)
        let read_as = |kind: Kind, k: Tensor, v: Tensor| match k.kind() {
            Kind::Int8 => (kernels::dequantize_q8(&k, kind), kernels::dequantize_q8(&v, kind)),
            own if own == kind => (k, v),
            _ => (k.to_kind(kind), v.to_kind(kind)),
        };
        let as_q = |k: Tensor, v: Tensor| read_as(q.kind(), k, v);
        if t == 1 {
            let fast = in_place.and_then(|(kc, vc, row0, keys, shared)| {
                kernels::decode_attention(&qk.narrow(2, 0, nh).reshape([b, nh, d]), &kc, &vc, row0, &keys, shared)
            });
            let y = match fast {
                Some(y) => y.view([b, 1, nh * d]).to_kind(x.kind()),
                None => {
                    let (k, v) = as_q(k, v);
                    let h = rotation();
                    turn_back(decode_attention(&turned(&q, &h), &k, &v, step.mask.as_ref()), &h)
                }
            };
            return self.o_proj.forward(&y, step.train);
        }
        if let Some(blocks) = &step.blocks {
            let y = blocked_causal_attention(&qk.narrow(2, 0, nh), &qk.narrow(2, nh, nkv), &qkv.narrow(2, nh + nkv, nkv), blocks);
            return self.o_proj.forward(&y, step.train);
        }
        // as the projections: only products of more positions than a decoding step's
        if let Some(kind) = step.prefill_kind.filter(|&kind| kind != q.kind() && b * t > kernels::MATMUL_MAX_ROWS) {
            let (k, v) = read_as(kind, k, v);
            let h = rotation();
            let y = reduced_prefill_attention(&turned(&q, &h), &k, &v, kind, REDUCED_ATTENTION_MAX_SCORES);
            return self.o_proj.forward(&turn_back(y.to_kind(x.kind()), &h), step.train);
        }
        let (k, v) = as_q(k, v);
        let h = rotation();
        let y = Tensor::scaled_dot_product_attention(&turned(&q, &h), &k, &v, step.mask.as_ref(), 0.0, step.is_causal, None, true);
        self.o_proj.forward(&turn_back(y.transpose(1, 2).reshape([b, t, nh * d]), &h), step.train)
    }
}

/// Attention of one new position per row (`q: [B, heads, 1, d]`) over `k, v: [B, kv_heads,
/// L, d]` (views into the cache), `mask: [B, 1, 1, L]`; returns `[B, 1, heads * d]`. The
/// `heads / kv_heads` query heads of a group share one key/value head, so they attend as
/// that many queries of it, and both matmuls read the cache where it lies (its layout
/// folds `[B, kv_heads]` into one batch dimension without a copy). SDPA's grouped-query
/// path instead expands every layer's whole cache to `heads` copies at each step, which
/// made decoding cost grow steeply with the context and batching gain nothing.
fn decode_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Option<&Tensor>) -> Tensor {
    let (b, heads, _, d) = q.size4().expect("q is [B, heads, 1, d]");
    let kv_heads = k.size()[1];
    let q = q.reshape([b, kv_heads, heads / kv_heads, d]);
    let mut scores = q.matmul(&k.transpose(-1, -2)) * (1.0 / (d as f64).sqrt());
    if let Some(mask) = mask {
        scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    }
    let weights = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    weights.matmul(v).reshape([b, 1, heads * d])
}

/// Most score elements (queries × keys × heads) [`reduced_prefill_attention`] holds
/// at once (16 MB in bf16); longer prompts go by chunks of queries.
const REDUCED_ATTENTION_MAX_SCORES: i64 = 8 << 20;

/// Causal attention of T > 1 new positions `q: [B, heads, T, d]` over `k, v: [B, kv_heads,
/// L, d]` whose last T keys are theirs (any dtype, e.g. the f16 cache), in `kind` (bf16),
/// as transformers' eager attention runs a bf16 model: the scores and both products in
/// `kind` (f32 sums), the softmax accumulated in f32. Returns `[B, T, heads * d]`. Only the
/// last T keys need a mask (every new position sees the whole past), so the triangle is
/// applied to those columns alone; callers pass no other mask (forward_block's
/// `step.mask` is this one). libtorch's CPU flash kernel given bf16 inputs still spent
/// most of its time in f32 GEMMs on an AMD EPYC with AVX512-BF16, so an observation's
/// prefill after a long context gained little from it. The scores are materialised by
/// query chunks of at most `max_scores` elements ([`REDUCED_ATTENTION_MAX_SCORES`]).
fn reduced_prefill_attention(q: &Tensor, k: &Tensor, v: &Tensor, kind: Kind, max_scores: i64) -> Tensor {
    let (b, heads, t, d) = q.size4().expect("q is [B, heads, T, d]");
    let (kv_heads, len) = (k.size()[1], k.size()[2]);
    let group = heads / kv_heads;
    let (k, v) = (k.to_kind(kind), v.to_kind(kind));
    // the `group` query heads of a key/value head attend as group × T queries of it
    let q = (q * (1.0 / (d as f64).sqrt())).to_kind(kind).view([b, kv_heads, group, t, d]);
    // queries by chunks whose scores fit the budget; chunk [s, e) sees keys 0..len - t + e
    let chunk = (max_scores / (heads * len).max(1)).clamp(1, t);
    let mut outs = Vec::new();
    let mut s = 0;
    while s < t {
        let e = (s + chunk).min(t);
        let (n, keys) = (e - s, len - t + e);
        let qc = q.narrow(3, s, n).reshape([b, kv_heads, group * n, d]);
        let scores = qc.matmul(&k.narrow(2, 0, keys).transpose(-1, -2));
        // query s + i (absolute len - t + s + i) sees keys up to that position: above the
        // diagonal of the chunk's last n columns is masked
        let above = Tensor::ones([n, n], (Kind::Bool, q.device())).triu(1);
        let _ = scores.view([b, kv_heads, group, n, keys]).narrow(-1, keys - n, n).masked_fill_(&above, f64::NEG_INFINITY);
        let weights = scores.softmax(-1, kind);
        outs.push(weights.matmul(&v.narrow(2, 0, keys)).view([b, heads, n, d]));
        s = e;
    }
    Tensor::cat(&outs, 2).transpose(1, 2).reshape([b, t, heads * d])
}

/// The additive causal masks of [`blocked_causal_attention`] for one sequence length:
/// block `i` holds queries `i·block ..` (all heads of a key/value group stacked), and its
/// mask `[group · len, end]` is 0 where a query may attend and -inf above the diagonal.
#[derive(Debug)]
struct CausalBlocks {
    block: i64,
    masks: Vec<Tensor>,
}

/// Query rows per block of [`blocked_causal_attention`] (256 was fastest at 1024 tokens;
/// 128 and 256 were within 5%, 512 a third slower).
const ATTENTION_BLOCK: i64 = 256;

/// The most bytes of attention probabilities a training forward may hold for the
/// backward pass before bf16 attention leaves [`blocked_causal_attention`] for SDPA's
/// flash kernel (which saves none). SmolLM2 at 1024 tokens holds 354 MiB over its 30
/// layers; at 2048 tokens it needs activation checkpointing to stay blocked.
const BLOCKED_ATTENTION_BUDGET: i64 = 1 << 30;

/// What [`blocked_causal_attention`] saves per layer: each block's probabilities,
/// `[batch · heads, len, end]` in `dtype`.
fn blocked_attention_saved_bytes(batch: i64, seq: i64, heads: i64, dtype: Dtype) -> i64 {
    let elem = if dtype == Dtype::F32 { 4 } else { 2 };
    let cells: i64 = (0..seq).step_by(ATTENTION_BLOCK as usize).map(|start| ATTENTION_BLOCK.min(seq - start) * (start + ATTENTION_BLOCK.min(seq - start))).sum();
    batch * heads * cells * elem
}

impl CausalBlocks {
    fn new(t: i64, group: i64, kind: Kind, device: Device) -> CausalBlocks {
        let block = ATTENTION_BLOCK;
        let masks = (0..t)
            .step_by(block as usize)
            .map(|start| {
                let len = block.min(t - start);
                let end = start + len;
                let query_pos = (Tensor::arange(len, (Kind::Int64, device)) + start).repeat([group]).unsqueeze(1);
                let key_pos = Tensor::arange(end, (Kind::Int64, device)).unsqueeze(0);
                Tensor::zeros([group * len, end], (kind, device)).masked_fill(&key_pos.gt_tensor(&query_pos), f64::NEG_INFINITY)
            })
            .collect();
        CausalBlocks { block, masks }
    }
}

/// Causal grouped-query attention of a training forward, as plain batched matmuls over
/// blocks of queries: block i's queries (the `heads / kv_heads` query heads of a group
/// stacked, so one matmul per key/value head) score only keys `0..end_i`, so about half
/// the score matrix is never computed, and autograd saves each block's probabilities for
/// the backward pass instead of recomputing them. In bf16 on an AVX512-BF16 CPU the same
/// ops (a PyTorch prototype, SmolLM2's shapes, 1024 tokens, 2 threads) ran fwd + bwd in
/// 22 ms a layer against 40 ms for libtorch's flash-attention kernel, and a whole bf16
/// training step with this function went from 260 to 394 tokens/s; in f32 the two were
/// even (51 ms), and f32 keeps the kernel.
/// `q: [B, T, heads, d]`, `k, v: [B, T, kv_heads, d]`; returns `[B, T, heads · d]`.
fn blocked_causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, blocks: &CausalBlocks) -> Tensor {
    let (b, t, heads, d) = q.size4().expect("q is [B, T, heads, d]");
    let kv_heads = k.size()[2];
    let group = heads / kv_heads;
    let k = k.permute([0, 2, 1, 3]).reshape([b * kv_heads, t, d]);
    let v = v.permute([0, 2, 1, 3]).reshape([b * kv_heads, t, d]);
    let scale = 1.0 / (d as f64).sqrt();
    let mut outs = Vec::with_capacity(blocks.masks.len());
    for (i, mask) in blocks.masks.iter().enumerate() {
        let start = i as i64 * blocks.block;
        let len = blocks.block.min(t - start);
        let end = start + len;
        // [B, len, kv, group, d] → [B·kv, group·len, d]
        let qb = q.narrow(1, start, len).view([b, len, kv_heads, group, d]).permute([0, 2, 3, 1, 4]).reshape([b * kv_heads, group * len, d]);
        let scores = mask.expand([b * kv_heads, group * len, end], false).baddbmm(&qb, &k.narrow(1, 0, end).transpose(1, 2), 1.0, scale);
        let probs = scores.softmax(-1, q.kind());
        let o = probs.bmm(&v.narrow(1, 0, end));
        // [B·kv, group·len, d] → [B, len, kv·group·d]
        outs.push(o.view([b, kv_heads, group, len, d]).permute([0, 3, 1, 2, 4]).reshape([b, len, heads * d]));
    }
    Tensor::cat(&outs, 1)
}

/// `down(silu(gate(x)) * up(x))`, gate and up fused into one projection.
#[derive(Debug)]
pub struct Mlp {
    gate_up_proj: Linear,
    down_proj: Linear,
    intermediate_size: i64,
}

impl Mlp {
    fn load(w: &mut Weights, prefix: &str, c: &ModelConfig) -> Result<Self, ModelError> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let gate = Linear::load(w, &format!("{prefix}.gate_proj"), LoraTarget::Gate, (i, h), false)?;
        let up = Linear::load(w, &format!("{prefix}.up_proj"), LoraTarget::Up, (i, h), false)?;
        Ok(Self {
            gate_up_proj: Linear::fuse(vec![gate, up]),
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), LoraTarget::Down, (h, i), false)?,
            intermediate_size: i,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let gate_up = self.gate_up_proj.forward(x, train);
        let i = self.intermediate_size;
        let gate = gate_up.narrow(-1, 0, i);
        let up = gate_up.narrow(-1, i, i);
        self.down_proj.forward(&(gate.silu() * up), train)
    }
}

/// One pre-norm decoder block.
#[derive(Debug)]
pub struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn load(w: &mut Weights, i: i64, c: &ModelConfig) -> Result<Self, ModelError> {
        let p = format!("model.layers.{i}");
        Ok(Self {
            input_layernorm: RmsNorm::load(w, &format!("{p}.input_layernorm.weight"), c.hidden_size, c.rms_norm_eps)?,
            self_attn: Attention::load(w, &format!("{p}.self_attn"), c)?,
            post_attention_layernorm: RmsNorm::load(
                w,
                &format!("{p}.post_attention_layernorm.weight"),
                c.hidden_size,
                c.rms_norm_eps,
            )?,
            mlp: Mlp::load(w, &format!("{p}.mlp"), c)?,
        })
    }

    fn forward(&self, x: &Tensor, step: &Step, cache: Option<(&mut Tensor, &mut Tensor)>) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), step, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h), step.train)
    }

    fn cast(self, device: Device, kind: Kind) -> Block {
        let cast_norm = |n: RmsNorm| RmsNorm { weight: n.weight.to_device(device).to_kind(kind), eps: n.eps };
        Block {
            input_layernorm: cast_norm(self.input_layernorm),
            self_attn: Attention {
                qkv_proj: self.self_attn.qkv_proj.cast(device, kind),
                o_proj: self.self_attn.o_proj.cast(device, kind),
                ..self.self_attn
            },
            post_attention_layernorm: cast_norm(self.post_attention_layernorm),
            mlp: Mlp {
                gate_up_proj: self.mlp.gate_up_proj.cast(device, kind),
                down_proj: self.mlp.down_proj.cast(device, kind),
                ..self.mlp
            },
        }
    }
}

/// The causal LM: embeddings → blocks → final norm → lm_head (tied to the embeddings
/// when the checkpoint has no `lm_head.weight`).
#[derive(Debug)]
pub struct CausalLm {
    config: ModelConfig,
    embed_tokens: Tensor,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Tensor,
    rotary: Rotary,
    device: Device,
    dtype: Dtype,
    /// What [`CausalLm::new_cache`]'s caches hold (`dtype` unless set otherwise).
    kv_dtype: KvDtype,
    /// The dtype prefills compute in, when not `dtype` ([`CausalLm::set_prefill_dtype`]).
    prefill_dtype: Option<Dtype>,
    /// What decoding steps multiply by ([`CausalLm::set_decode_weights`]).
    decode_weights: DecodeWeights,
    /// The output head's 8-bit copy when `decode_weights` is `Q8`.
    lm_head_q8: Option<kernels::Q8Matrix>,
}

impl CausalLm {
    /// Builds the model from `weights` (every tensor the config implies must be there with
    /// its shape; tensors left over are an error too), cast to `dtype` on `device`.
    pub fn load(config: &ModelConfig, mut weights: Weights, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let c = config;
        let embed_tokens = weights.take("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let kind = dtype.kind();
        let mut layers = Vec::with_capacity(c.num_hidden_layers as usize);
        for i in 0..c.num_hidden_layers {
            // cast layer by layer, so at most one layer exists twice while loading
            layers.push(Block::load(&mut weights, i, c)?.cast(device, kind));
        }
        let norm = RmsNorm::load(&mut weights, "model.norm.weight", c.hidden_size, c.rms_norm_eps)?;
        let lm_head = if weights.contains("lm_head.weight") {
            Some(weights.take("lm_head.weight", &[c.vocab_size, c.hidden_size])?)
        } else if c.tie_word_embeddings {
            None
        } else {
            return Err(ModelError::MissingTensor {
                path: weights.source().into(),
                name: "lm_head.weight (tie_word_embeddings is false)".into(),
            });
        };
        // transformers drops rotary tables some checkpoints carry; everything else must be used
        let leftover: Vec<&str> = weights.names().filter(|n| !n.ends_with("rotary_emb.inv_freq")).collect();
        if !leftover.is_empty() {
            let mut leftover: Vec<String> = leftover.iter().map(|s| s.to_string()).collect();
            leftover.sort();
            return Err(ModelError::UnexpectedTensors { path: weights.source().into(), names: leftover.join(", ") });
        }
        let cast = |t: Tensor| t.to_device(device).to_kind(kind);
        let embed_tokens = cast(embed_tokens);
        let lm_head = match lm_head {
            Some(t) => cast(t),
            None => embed_tokens.shallow_clone(),
        };
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: RmsNorm { weight: cast(norm.weight), eps: norm.eps },
            lm_head,
            rotary: Rotary::new(config, device),
            device,
            dtype,
            kv_dtype: dtype.into(),
            prefill_dtype: None,
            decode_weights: DecodeWeights::F32,
            lm_head_q8: None,
        })
    }

    /// Loads a GGUF checkpoint (config from its metadata, weights dequantized).
    pub fn from_gguf(file: &GgufFile, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        let weights = Weights::from_gguf(file, &config)?;
        weights.check_finite()?;
        Self::load(&config, weights, dtype, device)
    }

    /// Loads an HF folder: `config.json` and `model.safetensors` (or sharded with an index).
    pub fn from_hf_dir(dir: &Path, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let config = ModelConfig::from_hf_file(&config_path(dir))?;
        let files = Weights::safetensors_files(dir)?;
        let weights = Weights::from_safetensors(dir, &files)?;
        weights.check_finite()?;
        Self::load(&config, weights, dtype, device)
    }

    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn dtype(&self) -> Dtype {
        self.dtype
    }

    /// The dtype of the KV caches [`CausalLm::new_cache`] makes.
    pub fn kv_dtype(&self) -> KvDtype {
        self.kv_dtype
    }

    /// Makes later caches hold keys and values in `dtype`. With an f32 model, a 16-bit
    /// cache halves the bytes a decoding step reads per row of context (the attention over
    /// the cache is the part of a step that grows with the rows of a batch); attention
    /// itself still computes in f32. f16 keeps 3 more bits than bf16 (values beyond f16's
    /// range, ±65504, are saturated); see [`auto_kv_dtype`]. [`KvDtype::Q8`] halves the
    /// bytes again, at 8 bits of each key and value (relative to the largest of its head's
    /// row); prefills dequantize what they read of it.
    pub fn set_kv_dtype(&mut self, dtype: impl Into<KvDtype>) {
        self.kv_dtype = dtype.into();
    }

    /// The dtype prefills (and other forward passes of more than
    /// [`kernels::MATMUL_MAX_ROWS`] positions, outside training) compute in. `Bf16` for an
    /// f32 model keeps a bf16 copy of every layer's projection weights (half the f32
    /// bytes again) and runs those products and the prompt's attention in bf16 with f32
    /// sums; decoding steps and the lm_head stay in f32. Where the CPU multiplies bf16
    /// natively (AVX512-BF16, AMX; see [`crate::cpu_multiplies_bf16`]) that halves a
    /// prefill's time: an agent's prefills (observations after long contexts) are
    /// compute-bound, and with several agents the whole batch waits for each one. The
    /// logits move by bf16 rounding (a quantized GGUF's own rounding is coarser). Any other
    /// value, or a model that is not f32, drops the copies. Call it after adapters are loaded or merged
    /// (a merge refreshes the copies).
    pub fn set_prefill_dtype(&mut self, dtype: Dtype) {
        let keep = dtype == Dtype::Bf16 && self.dtype == Dtype::F32;
        let _guard = tch::no_grad_guard();
        for layer in &mut self.layers {
            for linear in [&mut layer.self_attn.qkv_proj, &mut layer.self_attn.o_proj, &mut layer.mlp.gate_up_proj, &mut layer.mlp.down_proj] {
                linear.set_prefill_copy(keep);
            }
        }
        self.prefill_dtype = keep.then_some(Dtype::Bf16);
    }

    /// Makes decoding steps (products of at most [`kernels::Q8_MAX_ROWS`] positions,
    /// outside training) multiply by 8-bit copies of the projection weights and of the
    /// output head (`Q8`), or by the model's own (`F32`). A step streams every weight once,
    /// so its time follows the weights' bytes: int8 with a center and a step per 32 values
    /// is 0.31 of f32 (a Q4_1 GGUF's weights are kept exactly; see `kernels/q8_weights.rs`).
    /// Each input row is quantized to 16 bits inside the product: SmolLM2's logits moved by
    /// up to 0.25 (the crate's tests bound it against the f32 weights). Steps of more rows
    /// read the f32 weights, which the model keeps (on an AVX2 CPU the 8-bit product's
    /// arithmetic per row outgrows what its smaller reads save). `Q8` applies to an f32
    /// model on the CPU with AVX2, to weights whose input size is a multiple of 32;
    /// elsewhere the model keeps its own weights and this returns `F32`. Returns what
    /// decoding now uses. Adapter merges ([`CausalLm::merge_lora`]) remake the copies;
    /// attached adapters add their delta in f32 as before.
    pub fn set_decode_weights(&mut self, weights: DecodeWeights) -> DecodeWeights {
        let keep = weights == DecodeWeights::Q8 && self.dtype == Dtype::F32 && self.device == Device::Cpu && kernels::q8_products_run_here();
        let _guard = tch::no_grad_guard();
        for (_, linear) in self.linears_mut() {
            linear.set_decode_copy(keep);
        }
        self.lm_head_q8 = if keep { kernels::Q8Matrix::quantize(&self.lm_head) } else { None };
        self.decode_weights = if keep { DecodeWeights::Q8 } else { DecodeWeights::F32 };
        self.decode_weights
    }

    /// What decoding steps multiply by ([`CausalLm::set_decode_weights`]).
    pub fn decode_weights(&self) -> DecodeWeights {
        self.decode_weights
    }

    /// Bytes of the weights one decoding step streams: the 8-bit copies where they are
    /// kept, else the model's own projection and output-head weights.
    pub fn decode_weight_bytes(&self) -> usize {
        let own = |t: &Tensor| t.numel() * t.kind().elt_size_in_bytes();
        let mut total = self.lm_head_q8.as_ref().map_or_else(|| own(&self.lm_head), kernels::Q8Matrix::bytes);
        for (_, lin) in self.linears() {
            total += lin.decode.as_ref().map_or_else(|| own(&lin.weight), kernels::Q8Matrix::bytes);
        }
        total
    }

    /// The dtype prefills compute in: [`CausalLm::set_prefill_dtype`]'s, else the weights'.
    pub fn prefill_dtype(&self) -> Dtype {
        self.prefill_dtype.unwrap_or(self.dtype)
    }

    fn prefill_kind(&self) -> Option<Kind> {
        self.prefill_dtype.map(Dtype::kind)
    }

    /// Logits `[B, T, vocab]` (f32) for token ids `input_ids: [B, T]` at positions 0..T,
    /// causal attention, no cache.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.logits(&self.forward_hidden(input_ids))
    }

    /// The final hidden states `[B, T, hidden]` (after the last norm) of [`Self::forward`],
    /// without the lm_head: for callers that need logits at a few positions only (e.g. the
    /// last real token of each row of a right-padded batch; see [`Self::lm_head_weight`]).
    pub fn forward_hidden(&self, input_ids: &Tensor) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        let positions = Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(0).expand([b, t], false);
        let (cos, sin) = self.rotary.tables(&positions, self.dtype.kind());
        let step = Step { cos, sin, mask: None, is_causal: t > 1, write: None, train: false, blocks: None, prefill_kind: self.prefill_kind() };
        self.hidden(input_ids, &step, None)
    }

    /// Logits `[B, T, vocab]` (f32) for `input_ids: [B, T]` following the `cache.len()`
    /// positions already in `cache`, which then holds all of them. An empty cache takes
    /// B rows; later calls must pass the same B.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        if cache.rows() == 0 {
            for _ in 0..b {
                cache.push_row(t);
            }
        }
        assert_eq!(cache.rows() as i64, b, "forward_cached: batch {b} but the cache holds {} rows", cache.rows());
        let hidden = self.forward_block(input_ids, cache, 0);
        self.logits(&hidden)
    }

    /// Feeds `ids` to cache row `row` after the positions it already holds and returns
    /// the logits of the last one (`[vocab]`, f32): a prompt's prefill, or a chunk of it.
    pub fn prefill_row(&self, cache: &mut KvCache, row: usize, ids: &[u32]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let input = self.ids_tensor(ids).unsqueeze(0);
        let hidden = self.forward_block(&input, cache, row);
        self.logits(&hidden.narrow(1, -1, 1)).view([-1])
    }

    /// One decoding step for cache rows `0..ids.len()`: row `b` gets token `ids[b]` at its
    /// own next position. Returns the logits `[rows, vocab]` (f32).
    pub fn decode_rows(&self, cache: &mut KvCache, ids: &[u32]) -> Tensor {
        let _guard = tch::no_grad_guard();
        let n = ids.len();
        assert!(n > 0 && n <= cache.rows(), "decode_rows: {n} tokens for {} cache rows", cache.rows());
        let lens: Vec<i64> = cache.lens[..n].to_vec();
        let input = self.ids_tensor(ids).unsqueeze(1);
        if lens.iter().all(|&l| l == lens[0]) {
            // all rows at the same position: a plain block write, no mask
            let hidden = self.forward_block(&input, cache, 0);
            return self.logits(&hidden).squeeze_dim(1);
        }
        let max_len = lens.iter().copied().max().unwrap_or(0) + 1;
        cache.reserve(n, max_len);
        let positions = Tensor::from_slice(&lens).to_device(self.device);
        let (cos, sin) = self.rotary.tables(&positions.unsqueeze(1), self.dtype.kind());
        // row b sees keys 0..=lens[b]
        let cols = Tensor::arange(max_len, (Kind::Int64, self.device)).unsqueeze(0);
        let mask = cols.le_tensor(&positions.unsqueeze(1)).view([n as i64, 1, 1, max_len]);
        let rows = Tensor::arange(n as i64, (Kind::Int64, self.device));
        let keys = lens.iter().map(|l| l + 1).collect();
        let shared = cache.shared_sources(0..n);
        let write = KvWrite::Scatter { rows, positions, keys, len: max_len, shared };
        let step = Step { cos, sin, mask: Some(mask), is_causal: false, write: Some(write), train: false, blocks: None, prefill_kind: None };
        let hidden = self.hidden(&input, &step, Some(cache));
        for len in &mut cache.lens[..n] {
            *len += 1;
        }
        self.logits(&hidden).squeeze_dim(1)
    }

    /// `input: [B, T]` into cache rows `row0..row0 + B`, which must all hold the same
    /// number of positions. Returns the final hidden states `[B, T, hidden]`.
    fn forward_block(&self, input: &Tensor, cache: &mut KvCache, row0: usize) -> Tensor {
        let (b, t) = input.size2().expect("input_ids must be [batch, seq]");
        let rows = row0..row0 + b as usize;
        let past = cache.lens[rows.clone()][0];
        assert!(cache.lens[rows.clone()].iter().all(|&l| l == past), "rows at different positions need decode_rows");
        cache.reserve(rows.end, past + t);
        let positions = Tensor::arange_start(past, past + t, (Kind::Int64, self.device)).unsqueeze(0).expand([b, t], false);
        let (cos, sin) = self.rotary.tables(&positions, self.dtype.kind());
        let mask = (t > 1 && past > 0).then(|| {
            // query i (absolute past + i) sees keys 0..=past + i
            let q = Tensor::arange(t, (Kind::Int64, self.device)).unsqueeze(1) + past;
            let k = Tensor::arange(past + t, (Kind::Int64, self.device)).unsqueeze(0);
            k.le_tensor(&q)
        });
        let shared = if t == 1 { cache.shared_sources(rows.clone()) } else { Vec::new() };
        let write = KvWrite::Block { row0: row0 as i64, past, shared };
        let step = Step { cos, sin, mask, is_causal: t > 1 && past == 0, write: Some(write), train: false, blocks: None, prefill_kind: self.prefill_kind() };
        let hidden = self.hidden(input, &step, Some(cache));
        for len in &mut cache.lens[rows] {
            *len += t;
        }
        hidden
    }

    /// Embeddings → blocks → final norm.
    fn hidden(&self, input_ids: &Tensor, step: &Step, mut cache: Option<&mut KvCache>) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        let mut x = self.embed_tokens.index_select(0, &input_ids.flatten(0, 1).to_device(self.device)).view([b, t, -1]);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| {
                let (k, v) = &mut c.layers[i];
                (k, v)
            });
            x = layer.forward(&x, step, layer_cache);
        }
        self.norm.forward(&x)
    }

    /// lm_head; f32 logits.
    fn logits(&self, hidden: &Tensor) -> Tensor {
        if let Some(y) = self.lm_head_q8.as_ref().and_then(|q| decode_product(hidden, q, None)) {
            return y;
        }
        linear(hidden, &self.lm_head, None).to_kind(Kind::Float)
    }

    fn ids_tensor(&self, ids: &[u32]) -> Tensor {
        let ids: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
        Tensor::from_slice(&ids).to_device(self.device)
    }

    /// An empty cache for this model (rows are added by `forward_cached` or
    /// [`KvCache::push_row`]; capacity grows on demand).
    pub fn new_cache(&self) -> KvCache {
        let c = &self.config;
        KvCache {
            layers: Vec::new(),
            lens: Vec::new(),
            prefixes: Vec::new(),
            n_layers: c.num_hidden_layers as usize,
            kv_heads: c.num_key_value_heads,
            row_len: if self.kv_dtype == KvDtype::Q8 { kernels::q8_row_len(c.head_dim as usize) as i64 } else { c.head_dim },
            kind: self.kv_dtype.kind(),
            device: self.device,
            capacity_rows: 0,
            capacity_len: 0,
        }
    }

    /// Greedy decoding of one sequence: `prompt` then up to `max_new_tokens` argmax tokens,
    /// stopping after any of `stop_ids`. Returns the new tokens (the stop token included).
    pub fn generate_greedy(&self, prompt: &[u32], max_new_tokens: usize, stop_ids: &[u32]) -> Vec<u32> {
        let mut cache = self.new_cache();
        let row = cache.push_row(prompt.len() as i64 + max_new_tokens as i64);
        let mut out = Vec::new();
        if max_new_tokens == 0 {
            return out;
        }
        let mut logits = self.prefill_row(&mut cache, row, prompt);
        loop {
            let next = logits.argmax(-1, false).int64_value(&[]) as u32;
            out.push(next);
            if stop_ids.contains(&next) || out.len() >= max_new_tokens {
                break;
            }
            logits = self.decode_rows(&mut cache, &[next]).squeeze_dim(0);
        }
        out
    }
}

/// The keys and values of one sequence's positions, taken out of a [`KvCache`] (per layer
/// `[kv_heads, len, head_dim]`), so a later request that continues the same text skips
/// their prefill.
#[derive(Debug)]
pub struct RowKv {
    layers: Vec<(Tensor, Tensor)>,
    len: i64,
    /// The row's shared prefixes that it holds all of ([`KvCache::share_prefix`]).
    prefixes: Vec<SharedPrefix>,
}

/// A prefix that several cache rows hold the same keys and values for: they were
/// computed once and copied ([`KvCache::share_prefix`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SharedPrefix {
    id: u64,
    len: i64,
}

/// Ids of shared prefixes, unique in the process.
static NEXT_PREFIX_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl RowKv {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| k.numel() * k.kind().elt_size_in_bytes() + v.numel() * v.kind().elt_size_in_bytes()).sum()
    }
}

/// Keys and values of past positions for a set of rows (sequences), per layer
/// `[capacity_rows, kv_heads, capacity_len, head_dim]`, with each row's length. Rows are
/// dense (`0..rows()`): a finished sequence is removed by moving the last row into its place.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    lens: Vec<i64>,
    /// Per row: the shared prefixes it starts with, shortest first (a task's first prompt
    /// begins with the system prompt every task shares). Rows with the same prefix id hold
    /// the same keys and values in its positions (only positions after a row's length are
    /// ever written), so a decoding step reads them from one of the rows.
    prefixes: Vec<Vec<SharedPrefix>>,
    n_layers: usize,
    kv_heads: i64,
    /// Elements per position and head: `head_dim`, or `head_dim + 4` bytes for a q8 cache
    /// (the values, then their scale; `kernels::quantize_q8`).
    row_len: i64,
    kind: Kind,
    device: Device,
    capacity_rows: usize,
    capacity_len: i64,
}

impl KvCache {
    /// Positions held by row 0 (for a single sequence or a same-length batch).
    pub fn len(&self) -> i64 {
        self.lens.first().copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rows (sequences) in use.
    pub fn rows(&self) -> usize {
        self.lens.len()
    }

    /// Positions held by `row`.
    pub fn row_len(&self, row: usize) -> i64 {
        self.lens[row]
    }

    /// Adds an empty row (index returned) with room for `expected_len` positions.
    pub fn push_row(&mut self, expected_len: i64) -> usize {
        self.lens.push(0);
        self.prefixes.push(Vec::new());
        self.reserve(self.lens.len(), expected_len);
        self.lens.len() - 1
    }

    /// Removes `row`, moving the last row into its place (returns the old index of the row
    /// that moved, if any).
    pub fn swap_remove_row(&mut self, row: usize) -> Option<usize> {
        let last = self.lens.len() - 1;
        if row != last {
            let len = self.lens[last];
            for (k, v) in &mut self.layers {
                for t in [k, v] {
                    let src = t.narrow(0, last as i64, 1).narrow(2, 0, len);
                    t.narrow(0, row as i64, 1).narrow(2, 0, len).copy_(&src);
                }
            }
        }
        self.lens.swap_remove(row);
        self.prefixes.swap_remove(row);
        (row != last).then_some(last)
    }

    /// Drops every row (keeps the memory).
    pub fn clear(&mut self) {
        self.lens.clear();
        self.prefixes.clear();
    }

    /// Marks the `len` positions `row` holds as a prefix that rows copied from it (by
    /// [`KvCache::snapshot_row`] and [`KvCache::push_row_from`], directly or through other
    /// copies) will share: decoding steps then read those positions from one row of the
    /// batch for all of them. A row keeps its earlier marks (a shorter prefix it shares with
    /// more rows). Returns the prefix's id.
    pub fn share_prefix(&mut self, row: usize, len: i64) -> u64 {
        assert!(len > 0 && len <= self.lens[row], "sharing {len} positions of a row holding {}", self.lens[row]);
        let id = NEXT_PREFIX_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let marks = &mut self.prefixes[row];
        marks.push(SharedPrefix { id, len });
        marks.sort_by_key(|p| p.len);
        id
    }

    /// The longest shared prefix `row` starts with: its id and length.
    pub fn shared_prefix(&self, row: usize) -> Option<(u64, i64)> {
        self.prefixes[row].last().map(|p| (p.id, p.len))
    }

    /// For each row of `rows`: the row of `rows` to read its shared prefix from and the
    /// prefix's length — its longest prefix that an earlier row of `rows` also holds, read
    /// from the first row holding it — or itself and 0 when no earlier row shares one.
    fn shared_sources(&self, rows: std::ops::Range<usize>) -> Vec<(i64, i64)> {
        let start = rows.start;
        let prefixes = &self.prefixes[rows];
        prefixes
            .iter()
            .enumerate()
            .map(|(i, marks)| {
                marks
                    .iter()
                    .rev()
                    .find_map(|p| {
                        let first = prefixes.iter().position(|q| q.iter().any(|q| q.id == p.id))?;
                        (first < i).then_some(((start + first) as i64, p.len))
                    })
                    .unwrap_or(((start + i) as i64, 0))
            })
            .collect()
    }

    /// A copy of the first `len` positions of `row` (keys and values of every layer), to
    /// be put back later by [`KvCache::push_row_from`].
    pub fn snapshot_row(&self, row: usize, len: i64) -> RowKv {
        assert!(len <= self.lens[row], "snapshot of {len} positions from a row holding {}", self.lens[row]);
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| (k.get(row as i64).narrow(1, 0, len).copy(), v.get(row as i64).narrow(1, 0, len).copy()))
            .collect();
        let prefixes = self.prefixes[row].iter().copied().filter(|p| p.len <= len).collect();
        RowKv { layers, len, prefixes }
    }

    /// Adds a row holding the first `keep` positions of `snapshot`, with room for
    /// `expected_len` positions; returns its index.
    pub fn push_row_from(&mut self, snapshot: &RowKv, keep: i64, expected_len: i64) -> usize {
        assert!(keep <= snapshot.len && snapshot.layers.len() == self.n_layers, "snapshot does not fit this cache");
        let row = self.push_row(expected_len.max(keep));
        for ((k, v), (sk, sv)) in self.layers.iter_mut().zip(&snapshot.layers) {
            k.get(row as i64).narrow(1, 0, keep).copy_(&sk.narrow(1, 0, keep));
            v.get(row as i64).narrow(1, 0, keep).copy_(&sv.narrow(1, 0, keep));
        }
        self.lens[row] = keep;
        self.prefixes[row] = snapshot.prefixes.iter().copied().filter(|p| p.len <= keep).collect();
        row
    }

    /// Bytes held by the cache buffers.
    pub fn capacity_bytes(&self) -> usize {
        let elems = self.capacity_rows as i64 * self.capacity_len * self.kv_heads * self.row_len;
        2 * self.n_layers * elems as usize * self.kind.elt_size_in_bytes()
    }

    /// Ensures room for `rows` rows of `len` positions, growing (and copying) when needed:
    /// lengths to the next multiple of 256 (at least 1.5× the old capacity), rows to the
    /// next power of two.
    pub fn reserve(&mut self, rows: usize, len: i64) {
        if rows <= self.capacity_rows && len <= self.capacity_len {
            return;
        }
        let new_rows = rows.max(self.capacity_rows).next_power_of_two();
        let new_len = if len <= self.capacity_len {
            self.capacity_len
        } else {
            let grown = (self.capacity_len * 3 / 2).max(len);
            (grown + 255) / 256 * 256
        };
        let shape = [new_rows as i64, self.kv_heads, new_len, self.row_len];
        let old = std::mem::take(&mut self.layers);
        self.layers = (0..self.n_layers)
            .map(|_| (Tensor::zeros(shape, (self.kind, self.device)), Tensor::zeros(shape, (self.kind, self.device))))
            .collect();
        let used_rows = self.lens.len().min(self.capacity_rows) as i64;
        let used_len = self.lens.iter().copied().max().unwrap_or(0).min(self.capacity_len);
        if used_rows > 0 && used_len > 0 {
            for ((k, v), (ok, ov)) in self.layers.iter_mut().zip(&old) {
                k.narrow(0, 0, used_rows).narrow(2, 0, used_len).copy_(&ok.narrow(0, 0, used_rows).narrow(2, 0, used_len));
                v.narrow(0, 0, used_rows).narrow(2, 0, used_len).copy_(&ov.narrow(0, 0, used_rows).narrow(2, 0, used_len));
            }
        }
        self.capacity_rows = new_rows;
        self.capacity_len = new_len;
    }
}

/// What a training forward shares across layers: RoPE tables for positions `0..T` of a
/// right-padded batch and causal attention (padding sits after every real token, so no
/// real token attends to it).
pub struct TrainStep(Step);

/// Training: the forward pass layer by layer with autograd on (so a trainer can seed each
/// layer's dropout and recompute layers for activation checkpointing), and LoRA layers.
impl CausalLm {
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// The shared inputs of a training forward over `[batch, seq]` tokens; `recompute`:
    /// the caller recomputes each layer in the backward pass (activation checkpointing),
    /// so one layer's saved activations exist at a time.
    ///
    /// bf16 attention on the CPU runs by query blocks ([`blocked_causal_attention`]) when
    /// the probabilities it saves for the backward pass fit [`BLOCKED_ATTENTION_BUDGET`],
    /// and through SDPA's flash kernel otherwise (always in f32, where the two ran even,
    /// and on CUDA, whose flash kernels are the fast path).
    pub fn train_step(&self, batch: i64, seq: i64, recompute: bool) -> TrainStep {
        let positions = Tensor::arange(seq, (Kind::Int64, self.device)).unsqueeze(0).expand([batch, seq], false);
        let (cos, sin) = self.rotary.tables(&positions, self.dtype.kind());
        let c = &self.config;
        let layers_held = if recompute { 1 } else { c.num_hidden_layers };
        let saved = blocked_attention_saved_bytes(batch, seq, c.num_attention_heads, self.dtype) * layers_held;
        let blocks = (self.dtype == Dtype::Bf16 && self.device == Device::Cpu && seq > 1 && saved <= BLOCKED_ATTENTION_BUDGET)
            .then(|| CausalBlocks::new(seq, c.num_attention_heads / c.num_key_value_heads, self.dtype.kind(), self.device));
        TrainStep(Step { cos, sin, mask: None, is_causal: seq > 1, write: None, train: true, blocks, prefill_kind: None })
    }

    /// Token embeddings `[B, T, hidden]` of `input_ids: [B, T]`.
    pub fn embed(&self, input_ids: &Tensor) -> Tensor {
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        self.embed_tokens.index_select(0, &input_ids.flatten(0, 1).to_device(self.device)).view([b, t, -1])
    }

    /// Decoder layer `i` on `x: [B, T, hidden]` (LoRA dropout on).
    pub fn layer_forward(&self, i: usize, x: &Tensor, step: &TrainStep) -> Tensor {
        self.layers[i].forward(x, &step.0, None)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, x: &Tensor) -> Tensor {
        self.norm.forward(x)
    }

    /// The output projection `[vocab, hidden]` (the embeddings when tied).
    pub fn lm_head_weight(&self) -> &Tensor {
        &self.lm_head
    }

    fn linears(&self) -> impl Iterator<Item = (usize, &Linear)> {
        self.layers.iter().enumerate().flat_map(|(i, l)| {
            [&l.self_attn.qkv_proj, &l.self_attn.o_proj, &l.mlp.gate_up_proj, &l.mlp.down_proj].map(|lin| (i, lin))
        })
    }

    fn linears_mut(&mut self) -> impl Iterator<Item = (usize, &mut Linear)> {
        self.layers.iter_mut().enumerate().flat_map(|(i, l)| {
            [&mut l.self_attn.qkv_proj, &mut l.self_attn.o_proj, &mut l.mlp.gate_up_proj, &mut l.mlp.down_proj].map(|lin| (i, lin))
        })
    }

    /// `(out, in)` of every projection `config` targets, by `(layer, target)`.
    pub fn lora_shapes(&self, config: &LoraConfig) -> std::collections::BTreeMap<(usize, LoraTarget), (i64, i64)> {
        let mut shapes = std::collections::BTreeMap::new();
        for (layer, lin) in self.linears() {
            let inp = lin.weight.size()[1];
            for &(target, out) in &lin.parts {
                if config.target_modules.contains(&target) {
                    shapes.insert((layer, target), (out, inp));
                }
            }
        }
        shapes
    }

    /// Attaches LoRA pairs (f32, moved to the model's device), replacing any attached
    /// before; projections without a pair get none.
    pub fn set_lora(&mut self, mut pairs: std::collections::BTreeMap<(usize, LoraTarget), LoraPair>, config: &LoraConfig) {
        let device = self.device;
        for (layer, lin) in self.linears_mut() {
            let parts: Vec<Option<LoraPair>> = lin
                .parts
                .iter()
                .map(|&(target, _)| {
                    pairs.remove(&(layer, target)).map(|p| LoraPair {
                        a: p.a.to_kind(Kind::Float).to_device(device).detach(),
                        b: p.b.to_kind(Kind::Float).to_device(device).detach(),
                    })
                })
                .collect();
            lin.lora = parts.iter().any(Option::is_some).then(|| LoraLayer { pairs: parts, scale: config.scale(), dropout: config.dropout });
        }
    }

    /// Attaches a fresh adapter: A Kaiming-uniform (bound 1/√in, as PEFT), B zero, drawn
    /// from libtorch's generator seeded with `seed`.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(seed as i64);
        let pairs = self
            .lora_shapes(config)
            .into_iter()
            .map(|(key, (out, inp))| {
                let bound = 1.0 / (inp as f64).sqrt();
                let a = Tensor::empty([config.r, inp], (Kind::Float, Device::Cpu)).uniform_(-bound, bound);
                let b = Tensor::zeros([out, config.r], (Kind::Float, Device::Cpu));
                (key, LoraPair { a, b })
            })
            .collect();
        self.set_lora(pairs, config);
    }

    /// Whether any LoRA layer is attached (unmerged).
    pub fn has_lora(&self) -> bool {
        self.linears().any(|(_, l)| l.lora.is_some())
    }

    /// Folds every attached LoRA layer into the base weights (then detached from them).
    pub fn merge_lora(&mut self) {
        for (_, lin) in self.linears_mut() {
            lin.merge_lora();
        }
    }

    /// The LoRA matrices under their PEFT names, ordered by layer, projection, A then B.
    /// The tensors share storage (and autograd state) with the model's.
    pub fn lora_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        let mut entries: Vec<(usize, LoraTarget, &LoraPair)> = Vec::new();
        for (layer, lin) in self.linears() {
            if let Some(lora) = &lin.lora {
                for ((target, _), pair) in lin.parts.iter().zip(&lora.pairs) {
                    if let Some(p) = pair {
                        entries.push((layer, *target, p));
                    }
                }
            }
        }
        entries.sort_by_key(|(layer, target, _)| (*layer, *target));
        for (layer, target, p) in entries {
            let prefix = target.peft_prefix(layer);
            out.push((format!("{prefix}.lora_A.weight"), p.a.shallow_clone()));
            out.push((format!("{prefix}.lora_B.weight"), p.b.shallow_clone()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bf16 prefill attention against f64 attention with GQA and a causal tail:
    /// queries by chunks (as small as one query) or whole give the same result within
    /// bf16's rounding, and the last key is seen only by the last query.
    #[test]
    fn reduced_prefill_attention_matches_f64_attention() {
        let _guard = tch::no_grad_guard();
        tch::manual_seed(7);
        let (b, heads, kv_heads, t, past, d) = (2i64, 6i64, 2i64, 5i64, 11i64, 16i64);
        let len = past + t;
        let opts = (Kind::Float, Device::Cpu);
        let q = Tensor::randn([b, heads, t, d], opts);
        let k = Tensor::randn([b, kv_heads, len, d], opts).to_kind(Kind::Half);
        let v = Tensor::randn([b, kv_heads, len, d], opts).to_kind(Kind::Half);
        // reference: each query head reads its group's key/value head; query i sees keys ≤ past + i
        let group = heads / kv_heads;
        let (k64, v64) = (k.to_kind(Kind::Double).repeat_interleave_self_int(group, 1, None), v.to_kind(Kind::Double).repeat_interleave_self_int(group, 1, None));
        let scores = q.to_kind(Kind::Double).matmul(&k64.transpose(-1, -2)) / (d as f64).sqrt();
        let rows = Tensor::arange(t, (Kind::Int64, Device::Cpu)).unsqueeze(1) + past;
        let allowed = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&rows);
        let want = scores.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY).softmax(-1, Kind::Double).matmul(&v64);
        let want = want.transpose(1, 2).reshape([b, t, heads * d]);
        let whole = reduced_prefill_attention(&q, &k, &v, Kind::BFloat16, REDUCED_ATTENTION_MAX_SCORES);
        assert_eq!(whole.kind(), Kind::BFloat16);
        for max_scores in [1, heads * len * 2, REDUCED_ATTENTION_MAX_SCORES] {
            let got = reduced_prefill_attention(&q, &k, &v, Kind::BFloat16, max_scores).to_kind(Kind::Double);
            let err = (&got - &want).abs().max().double_value(&[]);
            assert!(err < 3e-2, "max_scores {max_scores}: max abs error {err}");
        }
        // a value only the last key holds reaches the last query alone
        let v_last = Tensor::zeros([b, kv_heads, len, d], opts);
        let _ = v_last.narrow(2, len - 1, 1).fill_(1.0);
        let seen = reduced_prefill_attention(&q, &k, &v_last.to_kind(Kind::Half), Kind::BFloat16, heads * len).to_kind(Kind::Float);
        assert_eq!(seen.narrow(1, 0, t - 1).abs().max().double_value(&[]), 0.0);
        assert!(seen.narrow(1, t - 1, 1).min().double_value(&[]) > 0.0);
    }

    /// A cache of 2 layers, 1 key/value head of 8, with rows of the given lengths.
    fn cache_with_rows(lens: &[i64]) -> KvCache {
        let mut cache = KvCache {
            layers: Vec::new(),
            lens: Vec::new(),
            prefixes: Vec::new(),
            n_layers: 2,
            kv_heads: 1,
            row_len: 8,
            kind: Kind::Float,
            device: Device::Cpu,
            capacity_rows: 0,
            capacity_len: 0,
        };
        for &len in lens {
            let row = cache.push_row(len);
            cache.lens[row] = len;
        }
        cache
    }

    /// Which rows a decoding step reads a shared prefix from: the first row of the batch
    /// with the same prefix, through copies of copies; not a row that holds only part of
    /// it; rows that move keep their mark; a row that no earlier row shares with reads its
    /// own.
    #[test]
    fn shared_prefix_marks_follow_copies() {
        let mut cache = cache_with_rows(&[40, 30]);
        let id = cache.share_prefix(1, 20);
        assert_eq!(cache.shared_prefix(1), Some((id, 20)));
        let whole = cache.snapshot_row(1, 30);
        let part = cache.snapshot_row(1, 10);
        let row2 = cache.push_row_from(&whole, 25, 50); // holds the prefix
        let row3 = cache.push_row_from(&part, 10, 50); // holds half of it
        let copy = cache.snapshot_row(row2, 25);
        let row4 = cache.push_row_from(&copy, 21, 50); // a copy of a copy
        let other = cache.share_prefix(0, 5);
        assert_eq!(cache.shared_sources(0..5), vec![(0, 0), (1, 0), (1, 20), (3, 0), (1, 20)]);
        // decoding rows 2.. alone: row 2 is the first to hold the prefix
        assert_eq!(cache.shared_sources(2..5), vec![(2, 0), (3, 0), (2, 20)]);
        assert_eq!((cache.shared_prefix(row3), cache.shared_prefix(row4)), (None, Some((id, 20))));
        // row 4 moves into row 1's place
        assert_eq!(cache.swap_remove_row(1), Some(4));
        assert_eq!(cache.shared_sources(0..4), vec![(0, 0), (1, 0), (1, 20), (3, 0)]);
        assert_eq!(cache.shared_prefix(0), Some((other, 5)));
        cache.clear();
        assert_eq!(cache.shared_sources(0..0), vec![]);
    }

    /// Nested prefixes (a system prompt every task starts with, then one task's whole first
    /// prompt that its k samples start with): a row reads its longest prefix that an earlier
    /// row of the batch holds, so samples of one task share their whole first prompt and
    /// rows of other tasks still share the system prompt.
    #[test]
    fn rows_read_their_longest_prefix_an_earlier_row_holds() {
        let mut cache = cache_with_rows(&[40]);
        let system = cache.share_prefix(0, 10);
        let task_a = cache.share_prefix(0, 30);
        assert_eq!(cache.shared_prefix(0), Some((task_a, 30)));
        let a = cache.snapshot_row(0, 30);
        let system_only = cache.snapshot_row(0, 12);
        let a2 = cache.push_row_from(&a, 30, 50);
        let b = cache.push_row_from(&system_only, 12, 50);
        let task_b = cache.share_prefix(b, 12);
        let b_copy = cache.snapshot_row(b, 12);
        let b2 = cache.push_row_from(&b_copy, 12, 50);
        let a3 = cache.push_row_from(&a, 30, 50);
        assert_eq!((a2, b, b2, a3), (1, 2, 3, 4));
        assert_eq!(cache.shared_prefix(b), Some((task_b, 12)));
        assert_eq!(cache.shared_sources(0..5), vec![(0, 0), (0, 30), (0, 10), (2, 12), (0, 30)]);
        // without row 0 the first copy of task A is the source; task B's first row reads
        // the system prompt from it
        assert_eq!(cache.shared_sources(1..5), vec![(1, 0), (1, 10), (2, 12), (1, 30)]);
        assert_eq!(cache.shared_sources(2..4), vec![(2, 0), (2, 12)]);
        assert!(system != task_a && task_a != task_b);
    }

    /// Output and q/k/v gradients of [`blocked_causal_attention`] against libtorch's SDPA
    /// (causal, grouped-query), for a length that is not a multiple of the block and two
    /// rows; f32 to 1e-5, bf16 to bf16's precision.
    #[test]
    fn blocked_causal_attention_matches_sdpa() {
        tch::manual_seed(7);
        let (b, t, heads, kv_heads, d) = (2i64, ATTENTION_BLOCK * 2 + 37, 6i64, 2i64, 16i64);
        for (kind, tol) in [(Kind::Float, 1e-5), (Kind::BFloat16, 3e-2)] {
            let q0 = Tensor::randn([b, t, heads, d], (Kind::Float, Device::Cpu));
            let k0 = Tensor::randn([b, t, kv_heads, d], (Kind::Float, Device::Cpu));
            let v0 = Tensor::randn([b, t, kv_heads, d], (Kind::Float, Device::Cpu));
            let upstream = Tensor::randn([b, t, heads * d], (Kind::Float, Device::Cpu));
            let run = |blocked: bool| -> Vec<Tensor> {
                let (q, k, v) = (q0.to_kind(kind).set_requires_grad(true), k0.to_kind(kind).set_requires_grad(true), v0.to_kind(kind).set_requires_grad(true));
                let y = if blocked {
                    blocked_causal_attention(&q, &k, &v, &CausalBlocks::new(t, heads / kv_heads, kind, Device::Cpu))
                } else {
                    let sdpa = |x: &Tensor| x.transpose(1, 2);
                    Tensor::scaled_dot_product_attention(&sdpa(&q), &sdpa(&k), &sdpa(&v), None::<&Tensor>, 0.0, true, None, true)
                        .transpose(1, 2)
                        .reshape([b, t, heads * d])
                };
                (y.to_kind(Kind::Float) * &upstream).sum(Kind::Float).backward();
                vec![y.to_kind(Kind::Float), q.grad().to_kind(Kind::Float), k.grad().to_kind(Kind::Float), v.grad().to_kind(Kind::Float)]
            };
            let (got, want) = (run(true), run(false));
            for (name, (g, w)) in ["output", "dq", "dk", "dv"].iter().zip(got.iter().zip(&want)) {
                let diff = (g - w).abs().max().double_value(&[]);
                let scale = w.abs().max().double_value(&[]).max(1.0);
                assert!(diff <= tol * scale, "{kind:?} {name}: max abs diff {diff} (max {scale})");
            }
        }
    }
}

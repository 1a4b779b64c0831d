//! The Llama-family causal LM (Llama, SmolLM2, Qwen2), read top to bottom: RMSNorm →
//! rotary embedding → attention (GQA) → SwiGLU MLP → decoder block → model. Weight names
//! mirror the HF checkpoint (`model.layers.{i}.self_attn.q_proj.weight`, ...), and the
//! arithmetic follows transformers' `modeling_llama.py` so logits match it.

use std::path::Path;

use tch::{Device, Kind, Tensor};

use crate::config::{config_path, ModelConfig};
use crate::gguf::GgufFile;
use crate::weights::Weights;
use crate::ModelError;

/// The dtype weights and activations are kept in (logits are always f32).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    F32,
    Bf16,
    F16,
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

/// `y = x W^T (+ b)`.
#[derive(Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    fn load(w: &mut Weights, prefix: &str, out: i64, inp: i64, bias: bool) -> Result<Self, ModelError> {
        let weight = w.take(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = if bias { Some(w.take(&format!("{prefix}.bias"), &[out])?) } else { None };
        Ok(Self { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        x.linear(&self.weight, self.bias.as_ref())
    }
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

    /// Applies RoPE to `x: [B, H, T, D]` whose positions are `positions: [B, T]` (int64).
    fn apply(&self, x: &Tensor, positions: &Tensor) -> Tensor {
        let cos = self.cos.index_select(0, &positions.flatten(0, 1)).view([positions.size()[0], 1, positions.size()[1], -1]);
        let sin = self.sin.index_select(0, &positions.flatten(0, 1)).view([positions.size()[0], 1, positions.size()[1], -1]);
        let kind = x.kind();
        let (cos, sin) = (cos.to_kind(kind), sin.to_kind(kind));
        let half = x.size()[3] / 2;
        let x1 = x.narrow(3, 0, half);
        let x2 = x.narrow(3, half, half);
        let rotated = Tensor::cat(&[&x2.neg(), &x1], 3);
        x * cos + rotated * sin
    }
}

/// Grouped-query self-attention.
#[derive(Debug)]
pub struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: i64,
    n_kv_heads: i64,
    head_dim: i64,
}

impl Attention {
    fn load(w: &mut Weights, prefix: &str, c: &ModelConfig) -> Result<Self, ModelError> {
        let (h, q_out, kv_out) = (c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim);
        Ok(Self {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj"), q_out, h, c.attention_bias)?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj"), kv_out, h, c.attention_bias)?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj"), kv_out, h, c.attention_bias)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), h, q_out, false)?,
            n_heads: c.num_attention_heads,
            n_kv_heads: c.num_key_value_heads,
            head_dim: c.head_dim,
        })
    }

    /// `x: [B, T, hidden]` → `[B, T, hidden]`. The T new positions attend causally to
    /// each other and to everything in `cache` (which they are then appended to).
    fn forward(&self, x: &Tensor, rotary: &Rotary, positions: &Tensor, cache: Option<&mut LayerCache>) -> Tensor {
        let (b, t) = (x.size()[0], x.size()[1]);
        let q = self.q_proj.forward(x).view([b, t, self.n_heads, self.head_dim]).transpose(1, 2);
        let k = self.k_proj.forward(x).view([b, t, self.n_kv_heads, self.head_dim]).transpose(1, 2);
        let v = self.v_proj.forward(x).view([b, t, self.n_kv_heads, self.head_dim]).transpose(1, 2);
        let q = rotary.apply(&q, positions);
        let k = rotary.apply(&k, positions);
        let (k, v) = match cache {
            None => (k, v),
            Some(cache) => cache.append(k, v),
        };
        let past = k.size()[2] - t;
        let mask = (t > 1 && past > 0).then(|| {
            // query i (absolute past + i) sees keys 0..=past + i
            let rows = Tensor::arange(t, (Kind::Int64, x.device())).unsqueeze(1) + past;
            let cols = Tensor::arange(past + t, (Kind::Int64, x.device())).unsqueeze(0);
            cols.le_tensor(&rows)
        });
        let is_causal = t > 1 && past == 0;
        let (k, v) = (self.repeat_kv(&k), self.repeat_kv(&v));
        let y = Tensor::scaled_dot_product_attention(&q, &k, &v, mask, 0.0, is_causal, None, false);
        self.o_proj.forward(&y.transpose(1, 2).reshape([b, t, self.n_heads * self.head_dim]))
    }

    /// `[B, KV, T, D]` → `[B, H, T, D]`, each kv head serving `H / KV` query heads.
    fn repeat_kv(&self, x: &Tensor) -> Tensor {
        let n_rep = self.n_heads / self.n_kv_heads;
        if n_rep == 1 {
            return x.shallow_clone();
        }
        let (b, kv, t, d) = x.size4().expect("4-d kv");
        x.unsqueeze(2).expand([b, kv, n_rep, t, d], false).reshape([b, kv * n_rep, t, d])
    }
}

/// `down(silu(gate(x)) * up(x))`.
#[derive(Debug)]
pub struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(w: &mut Weights, prefix: &str, c: &ModelConfig) -> Result<Self, ModelError> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(w, &format!("{prefix}.gate_proj"), i, h, false)?,
            up_proj: Linear::load(w, &format!("{prefix}.up_proj"), i, h, false)?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), h, i, false)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.down_proj.forward(&(self.gate_proj.forward(x).silu() * self.up_proj.forward(x)))
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

    fn forward(&self, x: &Tensor, rotary: &Rotary, positions: &Tensor, cache: Option<&mut LayerCache>) -> Tensor {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x), rotary, positions, cache);
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
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
}

impl CausalLm {
    /// Builds the model from `weights` (every tensor the config implies must be there with
    /// its shape; tensors left over are an error too), cast to `dtype` on `device`.
    pub fn load(config: &ModelConfig, mut weights: Weights, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let _guard = tch::no_grad_guard();
        let c = config;
        let embed_tokens = weights.take("model.embed_tokens.weight", &[c.vocab_size, c.hidden_size])?;
        let layers = (0..c.num_hidden_layers).map(|i| Block::load(&mut weights, i, c)).collect::<Result<Vec<_>, _>>()?;
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
        let kind = dtype.kind();
        let cast = |t: Tensor| t.to_device(device).to_kind(kind);
        let embed_tokens = cast(embed_tokens);
        let lm_head = match lm_head {
            Some(t) => cast(t),
            None => embed_tokens.shallow_clone(),
        };
        let cast_linear = |l: Linear| Linear { weight: cast(l.weight), bias: l.bias.map(cast) };
        let cast_norm = |n: RmsNorm| RmsNorm { weight: cast(n.weight), eps: n.eps };
        let layers = layers
            .into_iter()
            .map(|b| Block {
                input_layernorm: cast_norm(b.input_layernorm),
                self_attn: Attention {
                    q_proj: cast_linear(b.self_attn.q_proj),
                    k_proj: cast_linear(b.self_attn.k_proj),
                    v_proj: cast_linear(b.self_attn.v_proj),
                    o_proj: cast_linear(b.self_attn.o_proj),
                    ..b.self_attn
                },
                post_attention_layernorm: cast_norm(b.post_attention_layernorm),
                mlp: Mlp {
                    gate_proj: cast_linear(b.mlp.gate_proj),
                    up_proj: cast_linear(b.mlp.up_proj),
                    down_proj: cast_linear(b.mlp.down_proj),
                },
            })
            .collect();
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm: cast_norm(norm),
            lm_head,
            rotary: Rotary::new(config, device),
            device,
            dtype,
        })
    }

    /// Loads a GGUF checkpoint (config from its metadata, weights dequantized).
    pub fn from_gguf(file: &GgufFile, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let config = ModelConfig::from_gguf(file)?;
        let weights = Weights::from_gguf(file, &config)?;
        Self::load(&config, weights, dtype, device)
    }

    /// Loads an HF folder: `config.json` and `model.safetensors` (or sharded with an index).
    pub fn from_hf_dir(dir: &Path, dtype: Dtype, device: Device) -> Result<Self, ModelError> {
        let config = ModelConfig::from_hf_file(&config_path(dir))?;
        let files = Weights::safetensors_files(dir)?;
        let weights = Weights::from_safetensors(dir, &files)?;
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

    /// Logits `[B, T, vocab]` (f32) for token ids `input_ids: [B, T]` at positions 0..T,
    /// causal attention, no cache.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        self.forward_inner(input_ids, None)
    }

    /// Logits `[B, T, vocab]` (f32) for `input_ids: [B, T]` following the `cache.len()`
    /// positions already in `cache`, which then holds all of them.
    pub fn forward_cached(&self, input_ids: &Tensor, cache: &mut KvCache) -> Tensor {
        self.forward_inner(input_ids, Some(cache))
    }

    fn forward_inner(&self, input_ids: &Tensor, mut cache: Option<&mut KvCache>) -> Tensor {
        let _guard = tch::no_grad_guard();
        let (b, t) = input_ids.size2().expect("input_ids must be [batch, seq]");
        let start = cache.as_ref().map_or(0, |c| c.len());
        let positions = Tensor::arange_start(start, start + t, (Kind::Int64, self.device)).unsqueeze(0).expand([b, t], false);
        let mut x = self.embed_tokens.index_select(0, &input_ids.flatten(0, 1)).view([b, t, -1]);
        for (i, layer) in self.layers.iter().enumerate() {
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, &self.rotary, &positions, layer_cache);
        }
        let x = self.norm.forward(&x);
        x.linear::<Tensor>(&self.lm_head, None).to_kind(Kind::Float)
    }

    /// An empty cache for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache { layers: (0..self.layers.len()).map(|_| LayerCache::default()).collect() }
    }

    /// Greedy decoding of one sequence: `prompt` then up to `max_new_tokens` argmax tokens,
    /// stopping after any of `stop_ids`. Returns the new tokens (the stop token included).
    pub fn generate_greedy(&self, prompt: &[u32], max_new_tokens: usize, stop_ids: &[u32]) -> Vec<u32> {
        let _guard = tch::no_grad_guard();
        let mut cache = self.new_cache();
        let ids: Vec<i64> = prompt.iter().map(|&i| i64::from(i)).collect();
        let mut input = Tensor::from_slice(&ids).unsqueeze(0).to_device(self.device);
        let mut out = Vec::new();
        while out.len() < max_new_tokens {
            let logits = self.forward_cached(&input, &mut cache);
            let next = logits.select(1, -1).argmax(-1, false).int64_value(&[0]) as u32;
            out.push(next);
            if stop_ids.contains(&next) {
                break;
            }
            input = Tensor::from_slice(&[i64::from(next)]).unsqueeze(0).to_device(self.device);
        }
        out
    }
}

/// Keys and values of past positions, per layer (`[B, KV, T, D]`, appended along T).
#[derive(Debug, Default)]
pub struct LayerCache {
    kv: Option<(Tensor, Tensor)>,
}

impl LayerCache {
    fn append(&mut self, k: Tensor, v: Tensor) -> (Tensor, Tensor) {
        let (k, v) = match self.kv.take() {
            None => (k, v),
            Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
        };
        self.kv = Some((k.shallow_clone(), v.shallow_clone()));
        (k, v)
    }

    fn len(&self) -> i64 {
        self.kv.as_ref().map_or(0, |(k, _)| k.size()[2])
    }
}

/// The KV cache of a batch of sequences that share positions (same length).
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<LayerCache>,
}

impl KvCache {
    /// Positions held.
    pub fn len(&self) -> i64 {
        self.layers.first().map_or(0, LayerCache::len)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

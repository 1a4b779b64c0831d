//! Checkpoint tensors by their HF names, read from safetensors files (single or sharded)
//! or from a GGUF file (dequantized, renamed from llama.cpp's names, and with llama.cpp's
//! RoPE permutation of q/k undone as transformers does).

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use safetensors::{Dtype as StDtype, SafeTensors};
use tch::{Kind, Tensor};

use crate::config::{Architecture, ModelConfig};
use crate::gguf::GgufFile;
use crate::ModelError;

/// Tensors keyed by HF name, taken one by one by the model's `load`.
pub struct Weights {
    /// Where they came from (a file or a folder), for error messages.
    source: PathBuf,
    tensors: HashMap<String, Tensor>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Weights").field("source", &self.source).field("n_tensors", &self.tensors.len()).finish()
    }
}

impl Weights {
    /// Tensors made in memory (`source` names them in errors).
    pub fn from_map(source: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self { source: source.to_path_buf(), tensors }
    }

    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    /// Every tensor with its HF name (unordered).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.tensors.iter().map(|(n, t)| (n.as_str(), t))
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Removes and returns `name`, checking its shape; a missing or mis-shaped tensor
    /// fails by name.
    pub fn take(&mut self, name: &str, shape: &[i64]) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .remove(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.source.clone(), name: name.into() })?;
        if t.size() != shape {
            return Err(ModelError::ShapeMismatch {
                path: self.source.clone(),
                name: name.into(),
                found: t.size(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    /// All tensors of safetensors `files` (the shards of one checkpoint), on the CPU in
    /// their stored dtype.
    pub fn from_safetensors(source: &Path, files: &[PathBuf]) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        for path in files {
            let bad = |message: String| ModelError::Safetensors { path: path.clone(), message };
            let file = File::open(path).map_err(|e| bad(e.to_string()))?;
            // SAFETY: read-only map of a checkpoint that is not modified while loading.
            let mmap = unsafe { Mmap::map(&file) }.map_err(|e| bad(e.to_string()))?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| bad(e.to_string()))?;
            for (name, view) in st.tensors() {
                let kind = match view.dtype() {
                    StDtype::F32 => Kind::Float,
                    StDtype::F16 => Kind::Half,
                    StDtype::BF16 => Kind::BFloat16,
                    StDtype::F64 => Kind::Double,
                    StDtype::I64 => Kind::Int64,
                    StDtype::I32 => Kind::Int,
                    other => return Err(bad(format!("tensor {name}: dtype {other:?} is not supported"))),
                };
                let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
                let t = Tensor::f_from_data_size(view.data(), &shape, kind)?;
                tensors.insert(name, t);
            }
        }
        Ok(Self { source: source.to_path_buf(), tensors })
    }

    /// The safetensors files of an HF folder: `model.safetensors`, or the shards listed by
    /// `model.safetensors.index.json`.
    pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
        let single = dir.join("model.safetensors");
        if single.exists() {
            return Ok(vec![single]);
        }
        let index = dir.join("model.safetensors.index.json");
        let bad = |message: String| ModelError::Safetensors { path: index.clone(), message };
        let text = std::fs::read_to_string(&index)
            .map_err(|e| bad(format!("no model.safetensors and no readable index: {e}")))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| bad("no weight_map object".into()))?;
        let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| dir.join(f)).collect();
        files.sort();
        files.dedup();
        Ok(files)
    }

    /// Fails on the first tensor (by name) holding NaN or an infinity: a corrupt file would
    /// otherwise load and give NaN logits, and every reply would be garbage.
    pub fn check_finite(&self) -> Result<(), ModelError> {
        let mut names: Vec<&String> = self.tensors.keys().collect();
        names.sort();
        for name in names {
            let t = &self.tensors[name];
            if !t.is_floating_point() {
                continue;
            }
            let bad = t.f_isfinite()?.f_logical_not()?.f_sum(tch::Kind::Int64)?.int64_value(&[]);
            if bad > 0 {
                return Err(ModelError::NonFinite { path: self.source.clone(), name: name.clone(), count: bad });
            }
        }
        Ok(())
    }

    /// All tensors of a GGUF file, dequantized to f32 on the CPU, under HF names.
    pub fn from_gguf(file: &GgufFile, config: &ModelConfig) -> Result<Self, ModelError> {
        let mut tensors = HashMap::new();
        for info in file.tensors() {
            let Some(name) = hf_name(&info.name) else {
                return Err(ModelError::Config {
                    path: file.path().into(),
                    message: format!("tensor {} has no Llama/Qwen2 counterpart", info.name),
                });
            };
            let (values, shape) = file.dequantize(&info.name)?;
            let mut t = Tensor::f_from_slice(&values)?.f_view(shape.as_slice())?;
            // llama.cpp's convert script permutes q/k rows of Llama checkpoints for its
            // interleaved RoPE; transformers (and this runtime) use rotate-half RoPE.
            if config.architecture == Architecture::Llama {
                if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias") {
                    t = unpermute_rope(&t, config.num_attention_heads)?;
                } else if name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.k_proj.bias") {
                    t = unpermute_rope(&t, config.num_key_value_heads)?;
                }
            }
            tensors.insert(name, t);
        }
        Ok(Self { source: file.path().to_path_buf(), tensors })
    }
}

/// Inverse of llama.cpp's `permute`: rows `[n_head, 2, half, ..]` interleaved back to
/// `[n_head, half, 2, ..]` order, i.e. transformers' `reverse_permute_weights`.
fn unpermute_rope(t: &Tensor, n_head: i64) -> Result<Tensor, ModelError> {
    let shape = t.size();
    let rest: Vec<i64> = shape[1..].to_vec();
    let half = shape[0] / n_head / 2;
    let mut view = vec![n_head, half, 2];
    view.extend(&rest);
    Ok(t.f_reshape(view.as_slice())?.f_transpose(1, 2)?.f_contiguous()?.f_reshape(shape.as_slice())?)
}

/// The HF name of a llama.cpp tensor name.
pub fn hf_name(gguf_name: &str) -> Option<String> {
    Some(match gguf_name {
        "token_embd.weight" => "model.embed_tokens.weight".into(),
        "output_norm.weight" => "model.norm.weight".into(),
        "output.weight" => "lm_head.weight".into(),
        _ => {
            let rest = gguf_name.strip_prefix("blk.")?;
            let (layer, rest) = rest.split_once('.')?;
            let layer: usize = layer.parse().ok()?;
            let (module, param) = rest.rsplit_once('.')?;
            let hf_module = match module {
                "attn_norm" => "input_layernorm",
                "ffn_norm" => "post_attention_layernorm",
                "attn_q" => "self_attn.q_proj",
                "attn_k" => "self_attn.k_proj",
                "attn_v" => "self_attn.v_proj",
                "attn_output" => "self_attn.o_proj",
                "ffn_gate" => "mlp.gate_proj",
                "ffn_up" => "mlp.up_proj",
                "ffn_down" => "mlp.down_proj",
                _ => return None,
            };
            format!("model.layers.{layer}.{hf_module}.{param}")
        }
    })
}

/// Writes `tensors` (by name) to a safetensors file in their own dtype (f32, bf16 or f16;
/// others are written as f32), with PEFT/transformers' `format: pt` metadata. The file
/// appears whole or not at all (written beside it, then renamed).
pub fn save_safetensors(path: &Path, tensors: &[(String, Tensor)]) -> Result<(), ModelError> {
    let bad = |message: String| ModelError::Safetensors { path: path.to_path_buf(), message };
    let mut data: Vec<(String, StDtype, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let (t, dtype) = match t.kind() {
            Kind::BFloat16 => (t.shallow_clone(), StDtype::BF16),
            Kind::Half => (t.shallow_clone(), StDtype::F16),
            _ => (t.to_kind(Kind::Float), StDtype::F32),
        };
        let t = t.detach().to_device(tch::Device::Cpu).contiguous();
        let numel = t.numel();
        let mut bytes = vec![0u8; numel * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, numel)?;
        data.push((name.clone(), dtype, t.size().iter().map(|&d| d as usize).collect(), bytes));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| {
            safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    let tmp = path.with_extension("safetensors.tmp");
    safetensors::serialize_to_file(views, Some(metadata), &tmp).map_err(|e| bad(format!("cannot write: {e}")))?;
    std::fs::rename(&tmp, path).map_err(|e| bad(format!("cannot write: {e}")))
}

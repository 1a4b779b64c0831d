//! LoRA: low-rank adapters on the attention and MLP projections, in PEFT's layout.
//!
//! A target projection `y = x Wᵀ` becomes `y = x Wᵀ + s · B(A(dropout(x)))` with `A: [r, in]`,
//! `B: [out, r]`, `s = α/r` (or `α/√r` with rsLoRA). A starts Kaiming-uniform (PEFT's
//! default), B at zero, so a fresh adapter leaves the model unchanged. The LoRA matrices
//! are kept in f32 whatever the base dtype (PEFT's `autocast_adapter_dtype`); only they
//! take gradients (f32 too). Their products run in the base dtype, as under autocast.
//!
//! On disk an adapter is PEFT's folder: `adapter_config.json` and
//! `adapter_model.safetensors` with `base_model.model.model.layers.{i}.{self_attn|mlp}.{x}_proj.lora_{A|B}.weight`,
//! which PEFT, vLLM and SGLang load. [`load_adapter`] reads ours and PEFT's (with or without
//! the adapter name in the tensor names), unmerged or merged into the base weights.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::json;
use tch::{Kind, Tensor};

use crate::model::CausalLm;
use crate::weights::{save_safetensors, Weights};
use crate::ModelError;

/// A projection LoRA can adapt (PEFT's `target_modules` names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum LoraTarget {
    #[serde(rename = "q_proj")]
    Q,
    #[serde(rename = "k_proj")]
    K,
    #[serde(rename = "v_proj")]
    V,
    #[serde(rename = "o_proj")]
    O,
    #[serde(rename = "gate_proj")]
    Gate,
    #[serde(rename = "up_proj")]
    Up,
    #[serde(rename = "down_proj")]
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] =
        [LoraTarget::Q, LoraTarget::K, LoraTarget::V, LoraTarget::O, LoraTarget::Gate, LoraTarget::Up, LoraTarget::Down];

    pub fn name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The HF submodule holding it (`self_attn` or `mlp`).
    pub fn module(self) -> &'static str {
        match self {
            LoraTarget::Q | LoraTarget::K | LoraTarget::V | LoraTarget::O => "self_attn",
            LoraTarget::Gate | LoraTarget::Up | LoraTarget::Down => "mlp",
        }
    }

    pub fn from_name(name: &str) -> Option<LoraTarget> {
        LoraTarget::ALL.into_iter().find(|t| t.name() == name)
    }

    /// `base_model.model.model.layers.{layer}.{module}.{name}` (the PEFT prefix of its tensors).
    pub fn peft_prefix(self, layer: usize) -> String {
        format!("base_model.model.model.layers.{layer}.{}.{}", self.module(), self.name())
    }
}

/// Rank, scaling, dropout and targets of an adapter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LoraConfig {
    pub r: i64,
    pub alpha: f64,
    pub dropout: f64,
    pub target_modules: Vec<LoraTarget>,
    /// Scale by α/√r instead of α/r.
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// r=16, α=32, no dropout, all seven projections.
    fn default() -> Self {
        LoraConfig { r: 16, alpha: 32.0, dropout: 0.0, target_modules: LoraTarget::ALL.to_vec(), use_rslora: false }
    }
}

impl LoraConfig {
    /// The factor on `B(A(x))`.
    pub fn scale(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    /// Target names (`q_proj`, ...) to targets; an unknown name is an error naming it.
    pub fn parse_targets(names: &[String]) -> Result<Vec<LoraTarget>, String> {
        if names.is_empty() {
            return Err("needs at least one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj".into());
        }
        let mut targets = Vec::new();
        for name in names {
            let t = LoraTarget::from_name(name).ok_or_else(|| {
                format!("unknown target module {name:?} (expected q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj or down_proj)")
            })?;
            if !targets.contains(&t) {
                targets.push(t);
            }
        }
        targets.sort();
        Ok(targets)
    }
}

/// The LoRA matrices of one (possibly fused) projection: one optional `(A, B)` pair per
/// fused part, in output order.
#[derive(Debug)]
pub struct LoraLayer {
    pub(crate) pairs: Vec<Option<LoraPair>>,
    pub(crate) scale: f64,
    pub(crate) dropout: f64,
}

/// `A: [r, in]`, `B: [out, r]`, f32.
#[derive(Debug)]
pub struct LoraPair {
    pub a: Tensor,
    pub b: Tensor,
}

impl LoraLayer {
    /// `y + s · B(A(dropout(x)))` for every part (nothing added to the rows of parts
    /// without a pair). `part_sizes` are the output sizes of the fused parts. All parts'
    /// A matrices run as one matmul, and their B matrices as one block-diagonal matmul
    /// fused into the addition (`addmm`).
    ///
    /// The matmuls run in `y`'s dtype, as under autocast: with a bf16 base, A and B (f32
    /// masters, f32 gradients and optimizer state) are cast to bf16 for the product. Kept in
    /// f32 instead (PEFT's `bf16_weights` way: x cast up, the delta cast down), these skinny
    /// products went to f32 GEMM and a bf16 training step of SmolLM2 took 16% longer
    /// (383 against 445 tokens/s at 1024 tokens, 2 threads) for the same loss curve (1.8651
    /// against 1.8648 after 10 steps).
    pub(crate) fn add_to(&self, y: Tensor, x: &Tensor, part_sizes: &[i64], train: bool) -> Tensor {
        let kind = y.kind();
        let mut xl = x.to_kind(kind);
        if train && self.dropout > 0.0 {
            xl = xl.dropout(self.dropout, true);
        }
        let present: Vec<&LoraPair> = self.pairs.iter().flatten().collect();
        let rank_total: i64 = present.iter().map(|p| p.a.size()[0]).sum();
        let a_cat = if present.len() == 1 { present[0].a.shallow_clone() } else { Tensor::cat(&present.iter().map(|p| &p.a).collect::<Vec<_>>(), 0) };
        // B of every part, side by side in its own rank columns: [sum(out), sum(r)]
        let b_block = if present.len() == self.pairs.len() {
            if present.len() == 1 { present[0].b.shallow_clone() } else { Tensor::block_diag(&present.iter().map(|p| &p.b).collect::<Vec<_>>()) }
        } else {
            let device = present[0].b.device();
            let mut rows = Vec::with_capacity(self.pairs.len());
            let mut col = 0;
            for (pair, &out) in self.pairs.iter().zip(part_sizes) {
                match pair {
                    Some(p) => {
                        let r = p.b.size()[1];
                        let left = Tensor::zeros([out, col], (Kind::Float, device));
                        let right = Tensor::zeros([out, rank_total - col - r], (Kind::Float, device));
                        rows.push(Tensor::cat(&[&left, &p.b, &right], 1));
                        col += r;
                    }
                    None => rows.push(Tensor::zeros([out, rank_total], (Kind::Float, device))),
                }
            }
            Tensor::cat(&rows, 0)
        };
        let in_dim = *xl.size().last().expect("non-scalar input");
        let y_shape = y.size();
        let h = xl.reshape([-1, in_dim]).mm(&a_cat.to_kind(kind).tr()) * self.scale;
        let y2 = y.reshape([-1, *y_shape.last().expect("non-scalar output")]);
        y2.addmm(&h, &b_block.to_kind(kind).tr()).reshape(y_shape.as_slice())
    }
}

/// What `adapter_config.json` says (the fields we read; others are PEFT's and ignored).
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    pub lora: LoraConfig,
    pub base_model_name_or_path: Option<String>,
}

/// The PEFT config keys we read; every other key must hold its default or be absent.
#[derive(Debug, Deserialize)]
struct PeftConfigFile {
    peft_type: Option<String>,
    r: Option<i64>,
    lora_alpha: Option<f64>,
    lora_dropout: Option<f64>,
    target_modules: Option<serde_json::Value>,
    bias: Option<String>,
    use_rslora: Option<bool>,
    use_dora: Option<bool>,
    fan_in_fan_out: Option<bool>,
    modules_to_save: Option<serde_json::Value>,
    rank_pattern: Option<serde_json::Value>,
    alpha_pattern: Option<serde_json::Value>,
    layers_to_transform: Option<serde_json::Value>,
    base_model_name_or_path: Option<String>,
}

fn adapter_error(path: &Path, message: impl Into<String>) -> ModelError {
    ModelError::Adapter { path: path.to_path_buf(), message: message.into() }
}

/// Reads `dir/adapter_config.json`, refusing the PEFT options this runtime does not
/// implement (DoRA, biases, `modules_to_save`, per-layer rank patterns) by name.
pub fn read_adapter_config(dir: &Path) -> Result<AdapterConfig, ModelError> {
    let path = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&path).map_err(|e| adapter_error(&path, format!("cannot read: {e} (is {} a PEFT adapter folder?)", dir.display())))?;
    let raw: PeftConfigFile = serde_json::from_str(&text).map_err(|e| adapter_error(&path, format!("not a PEFT adapter config: {e}")))?;
    if let Some(t) = &raw.peft_type {
        if t != "LORA" {
            return Err(adapter_error(&path, format!("peft_type is {t:?}; only LORA adapters are supported")));
        }
    }
    let r = raw.r.ok_or_else(|| adapter_error(&path, "no `r`"))?;
    if r < 1 {
        return Err(adapter_error(&path, format!("`r` must be at least 1, got {r}")));
    }
    let unsupported = |key: &str, why: &str| Err(adapter_error(&path, format!("`{key}` {why} is not supported by this runtime")));
    if raw.use_dora == Some(true) {
        return unsupported("use_dora", "= true (DoRA)");
    }
    if raw.fan_in_fan_out == Some(true) {
        return unsupported("fan_in_fan_out", "= true");
    }
    if raw.bias.as_deref().is_some_and(|b| b != "none") {
        return unsupported("bias", "other than \"none\"");
    }
    let non_empty = |v: &Option<serde_json::Value>| match v {
        None | Some(serde_json::Value::Null) => false,
        Some(serde_json::Value::Object(m)) => !m.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    if non_empty(&raw.modules_to_save) {
        return unsupported("modules_to_save", "(fully trained extra modules)");
    }
    if non_empty(&raw.rank_pattern) || non_empty(&raw.alpha_pattern) {
        return unsupported("rank_pattern/alpha_pattern", "(per-layer ranks)");
    }
    if non_empty(&raw.layers_to_transform) {
        return unsupported("layers_to_transform", "(a subset of layers)");
    }
    let names: Vec<String> = match &raw.target_modules {
        Some(serde_json::Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        Some(serde_json::Value::String(s)) => s.split(',').map(|p| p.trim().to_string()).collect(),
        _ => return Err(adapter_error(&path, "no `target_modules` list")),
    };
    let target_modules = LoraConfig::parse_targets(&names).map_err(|e| adapter_error(&path, format!("target_modules: {e}")))?;
    Ok(AdapterConfig {
        lora: LoraConfig {
            r,
            alpha: raw.lora_alpha.unwrap_or(8.0),
            dropout: raw.lora_dropout.unwrap_or(0.0),
            target_modules,
            use_rslora: raw.use_rslora.unwrap_or(false),
        },
        base_model_name_or_path: raw.base_model_name_or_path,
    })
}

/// The `adapter_config.json` PEFT writes for `config`.
pub fn adapter_config_json(config: &AdapterConfig) -> serde_json::Value {
    let c = &config.lora;
    json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": config.base_model_name_or_path,
        "r": c.r,
        "lora_alpha": c.alpha,
        "lora_dropout": c.dropout,
        "target_modules": c.target_modules.iter().map(|t| t.name()).collect::<Vec<_>>(),
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "modules_to_save": null,
        "layers_to_transform": null,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "use_rslora": c.use_rslora,
        "use_dora": false,
        "revision": null,
    })
}

/// Writes the model's LoRA matrices as a PEFT adapter folder (`dir` created).
pub fn save_adapter(model: &CausalLm, config: &AdapterConfig, dir: &Path) -> Result<(), ModelError> {
    std::fs::create_dir_all(dir).map_err(|e| adapter_error(dir, format!("cannot create: {e}")))?;
    let config_path = dir.join("adapter_config.json");
    let text = serde_json::to_string_pretty(&adapter_config_json(config)).expect("json");
    std::fs::write(&config_path, text + "\n").map_err(|e| adapter_error(&config_path, format!("cannot write: {e}")))?;
    let tensors = model.lora_tensors();
    if tensors.is_empty() {
        return Err(adapter_error(dir, "the model has no LoRA layers to save"));
    }
    save_safetensors(&dir.join("adapter_model.safetensors"), &tensors)
}

/// The tensor name with PEFT's optional adapter name (`lora_A.default.weight`) removed.
fn canonical_name(name: &str) -> String {
    for ab in ["lora_A", "lora_B"] {
        if let Some((head, tail)) = name.split_once(&format!(".{ab}.")) {
            if tail != "weight" && tail.ends_with(".weight") {
                return format!("{head}.{ab}.weight");
            }
        }
    }
    name.to_string()
}

/// Reads an adapter folder: its config and tensors (names canonical, f32).
pub fn read_adapter(dir: &Path) -> Result<(AdapterConfig, BTreeMap<String, Tensor>), ModelError> {
    let config = read_adapter_config(dir)?;
    let file = dir.join("adapter_model.safetensors");
    if !file.exists() {
        let bin = dir.join("adapter_model.bin");
        let hint = if bin.exists() { " (adapter_model.bin, pickled torch, is not read: re-save with safe_serialization=True)" } else { "" };
        return Err(adapter_error(&file, format!("missing{hint}")));
    }
    let weights = Weights::from_safetensors(dir, std::slice::from_ref(&file))?;
    let tensors = weights.iter().map(|(n, t)| (canonical_name(n), t.to_kind(Kind::Float))).collect();
    Ok((config, tensors))
}

/// Loads the adapter in `dir` onto `model`: kept as separate LoRA layers (`merge = false`,
/// replacing any the model had) or folded into the base weights (`merge = true`). Every
/// tensor the config implies must be there with the shape this model needs; tensors for
/// other modules or layers are an error naming them.
pub fn load_adapter(model: &mut CausalLm, dir: &Path, merge: bool) -> Result<AdapterConfig, ModelError> {
    let (config, mut tensors) = read_adapter(dir)?;
    let file = dir.join("adapter_model.safetensors");
    let shapes = model.lora_shapes(&config.lora);
    let mut pairs = BTreeMap::new();
    for ((layer, target), (out, inp)) in shapes {
        let prefix = target.peft_prefix(layer);
        let mut take = |ab: &str, expected: [i64; 2]| -> Result<Tensor, ModelError> {
            let name = format!("{prefix}.{ab}.weight");
            let t = tensors.remove(&name).ok_or_else(|| {
                adapter_error(&file, format!("missing tensor {name} (the config targets {} with r={})", target.name(), config.lora.r))
            })?;
            if t.size() != expected {
                let why = if t.size().first() != expected.first() && ab == "lora_A" || t.size().get(1) != expected.get(1) && ab == "lora_B" {
                    format!("rank mismatch: adapter_config.json says r={}", config.lora.r)
                } else {
                    "an adapter for another architecture or model size".to_string()
                };
                return Err(adapter_error(&file, format!("tensor {name} has shape {:?}, this model needs {expected:?} ({why})", t.size())));
            }
            // A NaN or inf here would make every logit NaN: the policy would emit garbage
            // (or token 0) with no error anywhere.
            let non_finite = t.isfinite().logical_not().sum(Kind::Int64).int64_value(&[]);
            if non_finite > 0 {
                return Err(adapter_error(
                    &file,
                    format!("tensor {name} has {non_finite} non-finite values (NaN or inf): the training that wrote it diverged; train it again (a lower learning rate, or max_grad_norm)"),
                ));
            }
            Ok(t)
        };
        let a = take("lora_A", [config.lora.r, inp])?;
        let b = take("lora_B", [out, config.lora.r])?;
        pairs.insert((layer, target), LoraPair { a, b });
    }
    if !tensors.is_empty() {
        let names: Vec<&str> = tensors.keys().map(String::as_str).take(5).collect();
        return Err(adapter_error(
            &file,
            format!(
                "{} tensors this model has no place for (another architecture or more layers?), e.g. {}",
                tensors.len(),
                names.join(", ")
            ),
        ));
    }
    model.set_lora(pairs, &config.lora);
    if merge {
        model.merge_lora();
    }
    Ok(config)
}

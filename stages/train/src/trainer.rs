//! The training loop, read top to bottom: load the base model and attach fresh LoRA
//! layers → tokenize the records → plan the micro-batches (seeded shuffle per epoch) →
//! per optimizer step: forward, loss on assistant tokens, backward, clip, AdamW with
//! warm-up + cosine → checkpoint every N steps → the PEFT adapter and a summary.
//!
//! The loss head is computed by hand in chunks of rows: logits, softmax and the gradient
//! of the cross-entropy with respect to the final hidden states, without an autograd graph
//! through the `[tokens, vocab]` logits (which would hold three copies of them). Only the
//! positions that carry loss go through the head. Activation checkpointing keeps each
//! layer's input and recomputes the layer in the backward pass. Dropout is seeded per
//! (step, micro-batch, layer), so a recomputed layer and a resumed run draw the same masks.
//!
//! Resume: `<out>/checkpoint/` holds the LoRA matrices, the AdamW moments and the step
//! counter, written whole (a temporary folder renamed into place). A run that finds one
//! continues after its step; with the same data, config and thread count it ends with the
//! same adapter as an uninterrupted run. (Dropout and the LoRA initialisation draw from
//! libtorch's process-global generator: nothing else in the process may draw from it while
//! [`train`] runs, or runs stop being reproducible.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use swegym_lm::chat::ChatTemplate;
use swegym_lm::lora::{save_adapter, AdapterConfig};
use swegym_lm::{chat_template_for, load_model, CausalLm};
use swegym_schema::sft::SftRecord;
use tch::{Device, Kind, Tensor};

use crate::config::{TrainConfig, TrainDtype};
use crate::data::{tokenize_records, Example};
use crate::optim::{clip_grad_norm, cosine_lr, AdamW};
use crate::{StepLog, TrainError, TrainSummary};

/// One training run's inputs.
pub struct TrainRequest<'a> {
    /// The base model: a GGUF file or an HF folder.
    pub model: &'a Path,
    pub records: &'a [SftRecord],
    /// Where the records came from, for messages.
    pub data_name: &'a str,
    /// The adapter folder (created); also holds `checkpoint/` while training.
    pub out_dir: &'a Path,
    pub config: &'a TrainConfig,
    pub device: Device,
    /// Start from this adapter's LoRA weights (same rank and targets) instead of PEFT's
    /// initialization: training continues it on `records`.
    pub init_adapter: Option<&'a Path>,
}

/// Rows of the loss head per chunk (bounds the `[rows, vocab]` logits held at once).
const HEAD_CHUNK_ROWS: i64 = 256;

/// Below this picked-token probability the loss head takes `lse - logit` instead of
/// `-ln p` (f32 probabilities lose precision near their underflow, 1e-38).
const PICKED_PROB_FLOOR: f64 = 1e-30;

/// Trains a LoRA adapter on `req.records` and writes it to `req.out_dir`; `on_step` sees
/// every optimizer step. Resumes from `<out>/checkpoint/` when one is there.
pub fn train(req: TrainRequest<'_>, on_step: &mut dyn FnMut(&StepLog)) -> Result<TrainSummary, TrainError> {
    let started = Instant::now();
    let cfg = req.config;
    if let Some(n) = cfg.threads {
        tch::set_num_threads(n);
    }
    // `auto` becomes the dtype this device runs fastest; the summary records the one used.
    let resolved = TrainConfig { dtype: TrainDtype::Fixed(cfg.dtype.resolve(req.device)), ..cfg.clone() };
    let cfg = &resolved;
    let (model, tokenizer) = load_model(req.model, cfg.dtype.resolve(req.device), req.device)?;
    let template = chat_template_for(req.model, &tokenizer)
        .or_else(|| ChatTemplate::from_tokenizer(&tokenizer))
        .ok_or_else(|| TrainError::Data {
            path: req.model.to_path_buf(),
            problem: "no chat template found (ChatML or Llama 3); cannot render the SFT chats".into(),
        })?;

    let (examples, report) = tokenize_records(req.records, &tokenizer, &template, cfg.max_seq_len, cfg.overlong);
    if examples.is_empty() {
        let why = if report.total == 0 {
            "no records".to_string()
        } else {
            format!("all {} records were dropped ({:?}; e.g. {})", report.total, report.dropped, report.examples_of_drops.join("; "))
        };
        return Err(TrainError::Data { path: req.data_name.into(), problem: format!("nothing to train on: {why}") });
    }

    let plan = Plan::new(&examples, cfg);
    let pad = tokenizer.pad_id().or(tokenizer.eos_id()).unwrap_or(0);
    let mut trainer = Trainer::new(model, cfg, pad);
    let fingerprint = fingerprint(cfg, &examples, req.model, req.init_adapter);
    let checkpoint_dir = req.out_dir.join("checkpoint");
    let mut state = match load_checkpoint(&checkpoint_dir, &fingerprint, &trainer.named, &mut trainer.optimizer)? {
        Some(state) => state,
        None => {
            if let Some(dir) = req.init_adapter {
                init_from_adapter(&trainer.named, dir)?;
            }
            RunState { fingerprint: fingerprint.clone(), ..RunState::default() }
        }
    };
    let resumed_from_step = state.step;
    std::fs::create_dir_all(req.out_dir).map_err(|source| TrainError::Io { path: req.out_dir.into(), source })?;

    let mut step_tokens_this_process = 0u64;
    let mut train_time = 0.0f64;
    while state.step < plan.steps {
        let step_started = Instant::now();
        let micro: Vec<Vec<&Example>> =
            plan.step_micro_batches(state.step).iter().map(|b| b.iter().map(|&i| &examples[i]).collect()).collect();
        let lr = cosine_lr(cfg.learning_rate, state.step, cfg.warmup_steps, plan.steps);
        let out = trainer.step(&micro, lr, dropout_seed(cfg.seed, state.step));
        let (loss, grad_norm, tokens, step_loss_tokens) = (out.loss, out.grad_norm, out.tokens, out.loss_tokens);
        if !loss.is_finite() {
            return Err(TrainError::NonFiniteLoss { step: state.step + 1, loss });
        }
        state.step += 1;
        state.losses.push(loss);
        state.tokens += tokens;
        state.loss_tokens += step_loss_tokens;
        let dt = step_started.elapsed().as_secs_f64();
        train_time += dt;
        step_tokens_this_process += tokens;
        on_step(&StepLog {
            step: state.step,
            total_steps: plan.steps,
            loss,
            learning_rate: lr,
            grad_norm,
            tokens,
            loss_tokens: step_loss_tokens,
            tokens_per_s: tokens as f64 / dt.max(1e-9),
            elapsed_s: started.elapsed().as_secs_f64(),
        });
        if cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0 && state.step < plan.steps {
            save_checkpoint(&checkpoint_dir, &state, &trainer.named, &trainer.optimizer)?;
        }
    }

    let base_name = cfg.base_model_name.clone().unwrap_or_else(|| req.model.display().to_string());
    let adapter = AdapterConfig { lora: cfg.lora.clone(), base_model_name_or_path: Some(base_name) };
    save_adapter(&trainer.model, &adapter, req.out_dir)?;
    let summary = TrainSummary {
        examples_total: report.total,
        examples_used: examples.len(),
        examples_dropped: report.dropped.clone(),
        examples_truncated: report.truncated,
        steps: state.step,
        tokens: state.tokens,
        loss_tokens: state.loss_tokens,
        loss_first: state.losses.first().copied().unwrap_or(f64::NAN),
        loss_last: state.losses.last().copied().unwrap_or(f64::NAN),
        losses: state.losses.clone(),
        tokens_per_s: step_tokens_this_process as f64 / train_time.max(1e-9),
        wall_s: started.elapsed().as_secs_f64(),
        resumed_from_step,
        adapter_dir: req.out_dir.to_path_buf(),
        config: cfg.clone(),
    };
    let summary_path = req.out_dir.join("train_summary.json");
    let text = serde_json::to_string_pretty(&summary).expect("summary json");
    std::fs::write(&summary_path, text + "\n").map_err(|source| TrainError::Io { path: summary_path, source })?;
    let _ = std::fs::remove_dir_all(&checkpoint_dir);
    Ok(summary)
}

/// The order examples are seen in and how they group into micro-batches and steps.
struct Plan {
    micro_batches: Vec<Vec<usize>>,
    grad_accum: usize,
    steps: usize,
}

impl Plan {
    /// Epoch `e` visits the examples in a permutation drawn from `seed + e`; `epochs`
    /// may be fractional (the last epoch is cut short). Steps are capped by `max_steps`.
    fn new(examples: &[Example], cfg: &TrainConfig) -> Plan {
        let n = examples.len();
        let seen = ((cfg.epochs * n as f64).ceil() as usize).max(1);
        let mut order = Vec::with_capacity(seen);
        let mut epoch = 0u64;
        while order.len() < seen {
            let mut perm: Vec<usize> = (0..n).collect();
            perm.shuffle(&mut ChaCha8Rng::seed_from_u64(cfg.seed.wrapping_add(epoch)));
            order.extend(perm.into_iter().take(seen - order.len()));
            epoch += 1;
        }
        let micro_batches: Vec<Vec<usize>> = order.chunks(cfg.batch_size).map(<[usize]>::to_vec).collect();
        let mut steps = micro_batches.len().div_ceil(cfg.grad_accum);
        if let Some(max) = cfg.max_steps {
            steps = steps.min(max);
        }
        Plan { micro_batches, grad_accum: cfg.grad_accum, steps }
    }

    /// The micro-batches of optimizer step `step` (0-based; the last step may have fewer).
    fn step_micro_batches(&self, step: usize) -> Vec<&[usize]> {
        let start = step * self.grad_accum;
        let end = (start + self.grad_accum).min(self.micro_batches.len());
        self.micro_batches[start..end].iter().map(Vec::as_slice).collect()
    }
}

/// What one micro-batch contributed.
struct MicroOut {
    loss_sum: f64,
    tokens: u64,
}

fn dropout_seed(seed: u64, step: usize) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ ((step as u64) << 20)
}

/// A base model with fresh LoRA layers and their optimizer: one [`Trainer::step`] per
/// optimizer step (also what `swegym bench train` times).
pub struct Trainer {
    pub model: CausalLm,
    /// The LoRA tensors (PEFT names), requiring gradients.
    named: Vec<(String, Tensor)>,
    params: Vec<Tensor>,
    optimizer: AdamW,
    max_grad_norm: f64,
    checkpointing: bool,
    pad: u32,
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy)]
pub struct StepOutcome {
    /// Mean loss per learned token.
    pub loss: f64,
    pub grad_norm: f64,
    pub tokens: u64,
    pub loss_tokens: u64,
}

impl Trainer {
    /// Attaches fresh LoRA layers (`cfg.lora`, seeded by `cfg.seed`) to `model`.
    pub fn new(mut model: CausalLm, cfg: &TrainConfig, pad: u32) -> Trainer {
        model.add_lora(&cfg.lora, cfg.seed);
        let named = model.lora_tensors();
        let params: Vec<Tensor> = named.iter().map(|(_, t)| t.set_requires_grad(true)).collect();
        let optimizer = AdamW::new(&params, cfg.weight_decay);
        Trainer { model, named, params, optimizer, max_grad_norm: cfg.max_grad_norm, checkpointing: cfg.activation_checkpointing, pad }
    }

    /// Trainable parameters (LoRA A and B matrices).
    pub fn n_trainable(&self) -> i64 {
        self.params.iter().map(|p| p.numel() as i64).sum()
    }

    /// One optimizer step over `micro` (the micro-batches of gradient accumulation) at
    /// learning rate `lr`: the loss is the mean over all learned tokens of the step.
    pub fn step(&mut self, micro: &[Vec<&Example>], lr: f64, seed: u64) -> StepOutcome {
        let loss_tokens: usize = micro.iter().flatten().map(|e| e.loss_tokens()).sum();
        let scale = 1.0 / loss_tokens.max(1) as f64;
        let (mut loss_sum, mut tokens) = (0.0, 0u64);
        let t0 = Instant::now();
        for (m, batch) in micro.iter().enumerate() {
            let out = micro_batch(&self.model, batch, self.pad, scale, self.checkpointing, seed ^ m as u64);
            loss_sum += out.loss_sum;
            tokens += out.tokens;
        }
        let t1 = Instant::now();
        let grad_norm = clip_grad_norm(&self.params, self.max_grad_norm);
        self.optimizer.step(&self.params, lr);
        for p in &self.params {
            p.shallow_clone().zero_grad();
        }
        tracing::debug!(
            tokens,
            forward_backward_s = (t1 - t0).as_secs_f64(),
            optimizer_s = t1.elapsed().as_secs_f64(),
            "train step"
        );
        StepOutcome { loss: loss_sum * scale, grad_norm, tokens, loss_tokens: loss_tokens as u64 }
    }
}

/// Forward + backward of one micro-batch (right-padded to its longest example); the
/// gradients of the summed token losses, times `scale`, accumulate into the LoRA tensors.
fn micro_batch(model: &CausalLm, batch: &[&Example], pad: u32, scale: f64, checkpointing: bool, seed: u64) -> MicroOut {
    let device = model.device();
    let b = batch.len() as i64;
    let t = batch.iter().map(|e| e.ids.len()).max().unwrap_or(1) as i64;
    let mut ids = vec![i64::from(pad); (b * t) as usize];
    // flat rows whose hidden state predicts a learned token, and those tokens
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    let mut tokens = 0u64;
    for (bi, ex) in batch.iter().enumerate() {
        let base = bi * t as usize;
        for (ti, &id) in ex.ids.iter().enumerate() {
            ids[base + ti] = i64::from(id);
            if ti > 0 && ex.loss_mask[ti] {
                rows.push((base + ti - 1) as i64);
                targets.push(i64::from(id));
            }
        }
        tokens += ex.ids.len() as u64;
    }
    let input = Tensor::from_slice(&ids).view([b, t]).to_device(device);
    let rows = Tensor::from_slice(&rows).to_device(device);
    let targets = Tensor::from_slice(&targets).to_device(device);
    let step = model.train_step(b, t, checkpointing);
    let n_layers = model.num_layers();
    let seed_layer = |i: usize| tch::manual_seed((seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D)) as i64);

    let loss_sum = if !checkpointing {
        let t0 = Instant::now();
        let mut x = model.embed(&input);
        for i in 0..n_layers {
            seed_layer(i);
            x = model.layer_forward(i, &x, &step);
        }
        let hidden = model.final_norm(&x);
        let forward_s = t0.elapsed().as_secs_f64();
        let loss = head_backward(model, &hidden, &rows, &targets, scale);
        tracing::debug!(forward_s, head_and_backward_s = t0.elapsed().as_secs_f64() - forward_s, "micro-batch");
        loss
    } else {
        // keep each layer's input only; recompute the layer when its gradient is needed
        let mut inputs = Vec::with_capacity(n_layers);
        let last = {
            let _guard = tch::no_grad_guard();
            let mut x = model.embed(&input);
            for i in 0..n_layers {
                inputs.push(x.shallow_clone());
                seed_layer(i);
                x = model.layer_forward(i, &x, &step);
            }
            x
        };
        let last = last.detach().set_requires_grad(true);
        let hidden = model.final_norm(&last);
        let loss_sum = head_backward(model, &hidden, &rows, &targets, scale);
        let mut grad = last.grad();
        for i in (0..n_layers).rev() {
            let x = inputs[i].detach().set_requires_grad(i > 0);
            seed_layer(i);
            let y = model.layer_forward(i, &x, &step);
            (y * &grad).sum(Kind::Float).backward();
            if i > 0 {
                grad = x.grad();
            }
        }
        loss_sum
    };
    MicroOut { loss_sum, tokens }
}

/// Cross-entropy of `targets` predicted from `hidden.view(-1, H)[rows]`, computed in
/// chunks without an autograd graph; back-propagates `scale ·` its gradient into `hidden`.
/// Returns the summed (unscaled) loss.
fn head_backward(model: &CausalLm, hidden: &Tensor, rows: &Tensor, targets: &Tensor, scale: f64) -> f64 {
    let h = hidden.size()[2];
    let selected = hidden.view([-1, h]).index_select(0, rows);
    let n = selected.size()[0];
    if n == 0 {
        return 0.0;
    }
    let weight = model.lm_head_weight();
    let t0 = Instant::now();
    let (loss, grad) = {
        let _guard = tch::no_grad_guard();
        let detached = selected.detach();
        let mut loss = 0.0;
        let mut grads = Vec::new();
        let mut start = 0;
        while start < n {
            let len = HEAD_CHUNK_ROWS.min(n - start);
            let hc = detached.narrow(0, start, len);
            let tc = targets.narrow(0, start, len).unsqueeze(1);
            let logits = hc.linear::<Tensor>(weight, None);
            // one pass: softmax in f32 (from bf16 logits too)
            let mut probs = logits.softmax(-1, Kind::Float);
            let picked = probs.gather(1, &tc, false).to_kind(Kind::Double);
            loss += if picked.min().double_value(&[]) > PICKED_PROB_FLOOR {
                -picked.log().sum(Kind::Double).double_value(&[])
            } else {
                // a probability near f32's underflow: lse - logit, exactly
                let logits = logits.to_kind(Kind::Float);
                (logits.logsumexp([-1], true) - logits.gather(1, &tc, false)).sum(Kind::Double).double_value(&[])
            };
            // d(lse - logit_y)/d logits = softmax - onehot; `scale` goes on the small product
            let _ = probs.scatter_add_(1, &tc, &Tensor::full([len, 1], -1.0, (Kind::Float, probs.device())));
            grads.push(probs.to_kind(weight.kind()).matmul(weight) * scale);
            start += len;
        }
        (loss, Tensor::cat(&grads, 0))
    };
    let head_s = t0.elapsed().as_secs_f64();
    (selected * grad.to_kind(hidden.kind())).sum(Kind::Float).backward();
    tracing::debug!(head_s, backward_s = t0.elapsed().as_secs_f64() - head_s, "loss head");
    loss
}

/// Progress saved in a checkpoint.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct RunState {
    /// What the checkpoint was made for (config, data, model); a mismatch refuses resume.
    fingerprint: String,
    step: usize,
    losses: Vec<f64>,
    tokens: u64,
    loss_tokens: u64,
}

/// Copies an earlier adapter's weights into the trainer's LoRA tensors (by name); the
/// adapter must have exactly the tensors and shapes this training has (same rank, same
/// target modules, same model).
fn init_from_adapter(named: &[(String, Tensor)], dir: &Path) -> Result<(), TrainError> {
    let (_, tensors) = swegym_lm::lora::read_adapter(dir)?;
    let problem = |p: String| TrainError::Data { path: dir.to_path_buf(), problem: format!("cannot start from this adapter: {p}") };
    for (name, t) in named {
        let src = tensors.get(name).ok_or_else(|| problem(format!("it has no tensor {name} (another rank, target modules or model?)")))?;
        if src.size() != t.size() {
            return Err(problem(format!("tensor {name} has shape {:?}, this training needs {:?} (another rank?)", src.size(), t.size())));
        }
        tch::no_grad(|| t.shallow_clone().copy_(&src.to_kind(t.kind()).to_device(t.device())));
    }
    if tensors.len() != named.len() {
        return Err(problem(format!("it has {} tensors, this training {} (other target modules?)", tensors.len(), named.len())));
    }
    Ok(())
}

fn fingerprint(cfg: &TrainConfig, examples: &[Example], model: &Path, init_adapter: Option<&Path>) -> String {
    use std::hash::{Hash, Hasher};
    // FNV-1a over the config, the model path and every token: stable across processes
    struct Fnv(u64);
    impl Hasher for Fnv {
        fn finish(&self) -> u64 {
            self.0
        }
        fn write(&mut self, bytes: &[u8]) {
            for b in bytes {
                self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3);
            }
        }
    }
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    serde_json::to_string(cfg).expect("config json").hash(&mut h);
    model.display().to_string().hash(&mut h);
    if let Some(dir) = init_adapter {
        dir.display().to_string().hash(&mut h);
    }
    for ex in examples {
        ex.ids.hash(&mut h);
        ex.loss_mask.hash(&mut h);
    }
    format!("{:016x}", h.finish())
}

fn ckpt_error(path: &Path, problem: impl Into<String>) -> TrainError {
    TrainError::Checkpoint { path: path.to_path_buf(), problem: problem.into() }
}

/// Writes `dir` whole: into `dir.tmp`, then swapped into place.
fn save_checkpoint(dir: &Path, state: &RunState, named: &[(String, Tensor)], optimizer: &AdamW) -> Result<(), TrainError> {
    let tmp = dir.with_extension("tmp");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|source| TrainError::Io { path: tmp.clone(), source })?;
    swegym_lm::weights::save_safetensors(&tmp.join("lora.safetensors"), named)?;
    let mut moments = Vec::with_capacity(2 * named.len());
    for (i, (m, v)) in optimizer.m.iter().zip(&optimizer.v).enumerate() {
        moments.push((format!("m.{i}"), m.shallow_clone()));
        moments.push((format!("v.{i}"), v.shallow_clone()));
    }
    swegym_lm::weights::save_safetensors(&tmp.join("optimizer.safetensors"), &moments)?;
    let state_path = tmp.join("state.json");
    std::fs::write(&state_path, serde_json::to_string_pretty(state).expect("state json"))
        .map_err(|source| TrainError::Io { path: state_path, source })?;
    let old = dir.with_extension("old");
    let _ = std::fs::remove_dir_all(&old);
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|source| TrainError::Io { path: dir.into(), source })?;
    }
    std::fs::rename(&tmp, dir).map_err(|source| TrainError::Io { path: dir.into(), source })?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Restores a checkpoint into the LoRA tensors and optimizer (`dir`, or `dir.old` when a
/// crash came between the two renames of [`save_checkpoint`]). `None` when there is none.
fn load_checkpoint(dir: &Path, fingerprint: &str, named: &[(String, Tensor)], optimizer: &mut AdamW) -> Result<Option<RunState>, TrainError> {
    let old = dir.with_extension("old");
    let dir: PathBuf = if dir.join("state.json").exists() {
        dir.to_path_buf()
    } else if old.join("state.json").exists() {
        old
    } else {
        return Ok(None);
    };
    let state_path = dir.join("state.json");
    let text = std::fs::read_to_string(&state_path).map_err(|e| ckpt_error(&state_path, format!("cannot read: {e}")))?;
    let state: RunState = serde_json::from_str(&text).map_err(|e| ckpt_error(&state_path, format!("corrupt: {e}")))?;
    if state.fingerprint != fingerprint {
        return Err(ckpt_error(
            &dir,
            "was written for another config, model or data; delete it to start over, or rerun with the same inputs to resume",
        ));
    }
    let load = |file: &str| -> Result<BTreeMap<String, Tensor>, TrainError> {
        let path = dir.join(file);
        let w = swegym_lm::Weights::from_safetensors(&dir, &[path])?;
        Ok(w.iter().map(|(n, t)| (n.to_string(), t.shallow_clone())).collect())
    };
    let lora = load("lora.safetensors")?;
    let moments = load("optimizer.safetensors")?;
    let _guard = tch::no_grad_guard();
    let device = named.first().map(|(_, t)| t.device()).unwrap_or(Device::Cpu);
    for (i, (name, t)) in named.iter().enumerate() {
        let saved = lora.get(name).ok_or_else(|| ckpt_error(&dir, format!("lora.safetensors lacks {name}")))?;
        t.shallow_clone().copy_(&saved.to_device(device));
        for (key, dst) in [(format!("m.{i}"), &mut optimizer.m[i]), (format!("v.{i}"), &mut optimizer.v[i])] {
            let saved = moments.get(&key).ok_or_else(|| ckpt_error(&dir, format!("optimizer.safetensors lacks {key}")))?;
            dst.copy_(&saved.to_device(device));
        }
    }
    optimizer.steps = state.step;
    Ok(Some(state))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Held by every test here that seeds or draws from libtorch's process-global generator
    /// (the tiny model's weights, LoRA init, random inputs): run at once, two such tests
    /// reseed each other's draws mid-test.
    static GLOBAL_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// A target whose probability underflows f32 (loss ~200 here) still gets its exact
    /// loss, through `lse - logit`, and a finite gradient.
    #[test]
    fn loss_head_is_exact_when_a_target_probability_underflows() {
        let _rng = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let tok = swegym_lm::Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
        swegym_lm::export::save_tiny_llama(&tok, None, 2, 64, 0, dir.path()).unwrap();
        let model = CausalLm::from_hf_dir(dir.path(), swegym_lm::Dtype::F32, Device::Cpu).unwrap();
        let weight = model.lm_head_weight();
        let h = weight.size()[1];
        tch::manual_seed(3);
        let base = Tensor::randn([2, h], (Kind::Float, Device::Cpu));
        // stretch row 0 until its logits span 300
        let spread = |x: &Tensor| {
            let l = x.narrow(0, 0, 1).matmul(&weight.tr());
            (l.max() - l.min()).double_value(&[])
        };
        let factor = 300.0 / spread(&base);
        let _ = base.narrow(0, 0, 1).g_mul_scalar_(factor);
        let logits = base.matmul(&weight.tr());
        let targets = Tensor::stack(&[logits.get(0).argmin(0, false), logits.get(1).argmax(0, false)], 0);
        let reference: f64 = {
            let l = logits.to_kind(Kind::Double);
            (l.logsumexp([-1], true) - l.gather(1, &targets.unsqueeze(1), false)).sum(Kind::Double).double_value(&[])
        };
        assert!(reference > 150.0, "the test needs an underflowing target (loss {reference})");
        let hidden = base.view([1, 2, h]).set_requires_grad(true);
        let loss = head_backward(&model, &hidden, &Tensor::from_slice(&[0i64, 1]), &targets, 1.0);
        assert!((loss - reference).abs() <= 1e-5 * reference, "{loss} vs {reference}");
        let grad = hidden.grad();
        assert!(grad.isfinite().all().int64_value(&[]) == 1, "non-finite gradient");
    }

    /// The hand-written loss head gives the gradients autograd gives through full logits
    /// and `cross_entropy`, with and without activation checkpointing.
    #[test]
    fn manual_loss_head_matches_autograd_cross_entropy() {
        let _rng = GLOBAL_RNG.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let tok = swegym_lm::Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
        swegym_lm::export::save_tiny_llama(&tok, None, 2, 64, 0, dir.path()).unwrap();
        let example = Example {
            ids: (0..40).map(|i| (i * 7 % 250) as u32).collect(),
            loss_mask: (0..40).map(|i| i % 3 != 0).collect(),
            record_idx: 0,
        };
        let grads_of = |manual: bool, checkpointing: bool| -> (f64, Vec<Tensor>) {
            let model = CausalLm::from_hf_dir(dir.path(), swegym_lm::Dtype::F32, Device::Cpu).unwrap();
            let cfg = TrainConfig { activation_checkpointing: checkpointing, ..TrainConfig::default() };
            let trainer = Trainer::new(model, &cfg, 0);
            {
                // a non-zero B, so A gets gradients too
                let _guard = tch::no_grad_guard();
                tch::manual_seed(5);
                for (name, t) in &trainer.named {
                    if name.ends_with("lora_B.weight") {
                        t.shallow_clone().copy_(&(Tensor::randn(t.size(), (Kind::Float, Device::Cpu)) * 0.1));
                    }
                }
            }
            let loss = if manual {
                micro_batch(&trainer.model, &[&example], 0, 0.5, checkpointing, 1).loss_sum
            } else {
                let m = &trainer.model;
                let ids: Vec<i64> = example.ids.iter().map(|&i| i64::from(i)).collect();
                let input = Tensor::from_slice(&ids).unsqueeze(0);
                let step = m.train_step(1, ids.len() as i64, false);
                let mut x = m.embed(&input);
                for i in 0..m.num_layers() {
                    x = m.layer_forward(i, &x, &step);
                }
                let logits = m.final_norm(&x).linear::<Tensor>(m.lm_head_weight(), None).squeeze_dim(0);
                let rows: Vec<i64> = (1..ids.len()).filter(|&t| example.loss_mask[t]).map(|t| t as i64 - 1).collect();
                let targets: Vec<i64> = rows.iter().map(|&r| ids[r as usize + 1]).collect();
                let picked = logits.index_select(0, &Tensor::from_slice(&rows));
                let loss = picked.cross_entropy_for_logits(&Tensor::from_slice(&targets)) * rows.len() as f64;
                (&loss * 0.5).backward();
                loss.double_value(&[])
            };
            (loss, trainer.params.iter().map(|p| p.grad().copy()).collect())
        };
        let (reference_loss, reference) = grads_of(false, false);
        for checkpointing in [false, true] {
            let (loss, grads) = grads_of(true, checkpointing);
            assert!((loss - reference_loss).abs() < 1e-3 * reference_loss.abs(), "{loss} vs {reference_loss}");
            for (g, r) in grads.iter().zip(&reference) {
                let d = (g - r).abs().max().double_value(&[]);
                let scale = r.abs().max().double_value(&[]).max(1e-6);
                assert!(d <= 1e-4 * scale + 1e-7, "gradient differs by {d} (max {scale}), checkpointing={checkpointing}");
            }
        }
    }
}

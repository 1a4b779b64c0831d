//! The `local` policy: our own model (crates/lm) on this machine, optionally with a LoRA
//! adapter (PEFT layout; merged into the base weights or kept as separate layers). Every
//! episode's request goes to one [`Engine`], whose thread decodes all pending requests as
//! one batch, so `-j N` concurrent episodes share one model and one forward pass per token.

use std::path::Path;

use swegym_lm::chat::{ChatMessage, ChatTemplate};
use swegym_lm::{chat_template_for, load_model, DeviceChoice, Dtype, Engine, EngineOptions, GenerateError, GenerationRequest};
use swegym_schema::{Message, Role};

use super::{Completion, Policy, PolicyError, PolicyRequest};

/// A model loaded from a GGUF file or an HF folder, serving all episodes of a run.
pub struct LocalPolicy {
    engine: Engine,
    template: ChatTemplate,
    id: String,
}

/// A LoRA adapter to put on the base model when loading.
#[derive(Debug, Clone, Copy)]
pub struct AdapterLoad<'a> {
    /// A PEFT-layout folder (`adapter_config.json` + `adapter_model.safetensors`).
    pub dir: &'a Path,
    /// Fold it into the base weights (generation as fast as the base) instead of keeping
    /// separate LoRA layers.
    pub merge: bool,
}

impl LocalPolicy {
    /// Loads the model and starts its engine thread (`max_batch` rows decode together).
    pub fn load(path: &Path, dtype: Dtype, device: DeviceChoice, max_batch: usize, threads: Option<i32>) -> Result<LocalPolicy, PolicyError> {
        LocalPolicy::load_with_adapter(path, None, dtype, None, device, max_batch, threads)
    }

    /// [`LocalPolicy::load`], with `adapter` applied to the base weights and the KV cache
    /// in `kv_dtype` (None: [`swegym_lm::auto_kv_dtype`]); the policy id names both model
    /// and adapter (`local:<model>+<adapter dir>`).
    pub fn load_with_adapter(
        path: &Path,
        adapter: Option<AdapterLoad<'_>>,
        dtype: Dtype,
        kv_dtype: Option<Dtype>,
        device: DeviceChoice,
        max_batch: usize,
        threads: Option<i32>,
    ) -> Result<LocalPolicy, PolicyError> {
        swegym_lm::init_cpu_runtime();
        let device = device.resolve().map_err(|e| PolicyError::Server(e.to_string()))?;
        // the model is made on the engine's thread, the only one that touches libtorch
        // (see `Engine::spawn_with`)
        let (model_path, adapter_dir) = (path.to_path_buf(), adapter.map(|a| (a.dir.to_path_buf(), a.merge)));
        let options = EngineOptions { max_batch: max_batch.max(1), threads, ..EngineOptions::default() };
        let engine = Engine::spawn_with(options, move || {
            let (mut model, tokenizer) = load_model(&model_path, dtype, device).map_err(|e| PolicyError::Server(e.to_string()))?;
            if let Some((dir, merge)) = adapter_dir {
                swegym_lm::lora::load_adapter(&mut model, &dir, merge).map_err(|e| PolicyError::Server(e.to_string()))?;
            }
            model.set_kv_dtype(kv_dtype.unwrap_or_else(|| swegym_lm::auto_kv_dtype(dtype, device)));
            Ok((model, tokenizer))
        })?;
        let tokenizer = engine.tokenizer();
        let template = chat_template_for(path, tokenizer)
            .or_else(|| ChatTemplate::from_tokenizer(tokenizer))
            .ok_or_else(|| PolicyError::Unsupported(format!("{}: no chat template found (ChatML or Llama 3)", path.display())))?;
        let mut name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_else(|| path.display().to_string());
        if let Some(a) = adapter {
            // The last two path components (`iter-000/adapter`) say which adapter it is.
            let parts: Vec<String> = a.dir.components().rev().take(2).map(|c| c.as_os_str().to_string_lossy().to_string()).collect();
            name.push('+');
            name.push_str(&parts.into_iter().rev().collect::<Vec<_>>().join("/"));
        }
        Ok(LocalPolicy { engine, template, id: format!("local:{name}") })
    }

    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, PolicyError> {
        let chat: Vec<ChatMessage> = messages
            .iter()
            .map(|m| ChatMessage { role: m.role, content: m.content.clone() })
            .collect();
        let tokenized = self.template.tokenize(self.engine.tokenizer(), &chat, true).map_err(|e| PolicyError::Server(e.to_string()))?;
        Ok(tokenized.ids)
    }

    /// How many leading tokens of `prompt` are the system message as rendered alone: the
    /// part every episode starts with, which the engine prefills once and then copies
    /// (`GenerationRequest::shared_prefix`). 0 when there is no system message or its
    /// tokens are not a prefix of the prompt's.
    fn system_prefix(&self, messages: &[Message], prompt: &[u32]) -> usize {
        let Some(system) = messages.first().filter(|m| m.role == Role::System) else { return 0 };
        let chat = [ChatMessage { role: system.role, content: system.content.clone() }];
        match self.template.tokenize(self.engine.tokenizer(), &chat, false) {
            Ok(t) if prompt.starts_with(&t.ids) => t.ids.len(),
            _ => 0,
        }
    }
}

#[async_trait::async_trait]
impl Policy for LocalPolicy {
    fn id(&self) -> String {
        self.id.clone()
    }

    fn engine_stats(&self) -> Option<swegym_lm::GenerationStats> {
        Some(self.engine.stats())
    }

    async fn complete(&self, request: PolicyRequest<'_>) -> Result<Completion, PolicyError> {
        let prompt = self.prompt_ids(request.messages)?;
        let p = request.params;
        let params = swegym_lm::SamplingParams {
            max_new_tokens: p.max_tokens as usize,
            temperature: p.temperature as f32,
            top_p: p.top_p as f32,
            seed: p.seed.unwrap_or(0),
            stop: p.stop.clone(),
            ..swegym_lm::SamplingParams::default()
        };
        let prompt_tokens = prompt.len() as u64;
        // An episode's turns share one seed (the rollout's): it keys the session, so each
        // turn prefills only what the last reply and observation added.
        let shared_prefix = self.system_prefix(request.messages, &prompt);
        let request = GenerationRequest { prompt, params, session: p.seed, shared_prefix };
        match self.engine.generate(request).await {
            Ok(c) => Ok(Completion { text: c.text, prompt_tokens, completion_tokens: c.tokens.len() as u64 }),
            Err(e @ GenerateError::PromptTooLong { .. }) => Err(PolicyError::ContextExceeded(e.to_string())),
            Err(e) => Err(PolicyError::Server(format!("local model: {e}"))),
        }
    }

    fn count_tokens(&self, messages: &[Message]) -> usize {
        self.prompt_ids(messages).map(|ids| ids.len()).unwrap_or_else(|_| crate::prompt::estimate_tokens(messages))
    }
}

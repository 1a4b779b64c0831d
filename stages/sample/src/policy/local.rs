//! The `local` policy: our own model (crates/lm) on this machine, optionally with a LoRA
//! adapter (PEFT layout; merged into the base weights or kept as separate layers). Every
//! episode's request goes to one [`Engine`], whose thread decodes all pending requests as
//! one batch, so `-j N` concurrent episodes share one model and one forward pass per token.
//!
//! An episode's next prompt continues from the tokens its model sampled (token in, token
//! out): the chat template renders the whole conversation, and where that text starts with
//! the last prompt's text followed by the sampled reply's, the prompt is the last prompt's
//! ids, the sampled ids and the new text's tokens, not a fresh tokenization. Re-tokenizing a
//! sampled reply often splits it into other ids than the model chose (the same text), which
//! both changes what the model is conditioned on and makes the engine prefill the reply
//! again from the first differing token.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::Mutex;

use swegym_lm::chat::{ChatMessage, ChatTemplate};
use swegym_lm::{chat_template_for, load_model, DecodeWeights, DeviceChoice, Dtype, Engine, EngineOptions, GenerateError, GenerationRequest, KvDtype};
use swegym_schema::{Message, Role};

use super::{Completion, Policy, PolicyError, PolicyRequest};

/// A model loaded from a GGUF file or an HF folder, serving all episodes of a run.
pub struct LocalPolicy {
    engine: Engine,
    template: ChatTemplate,
    id: String,
    sessions: Mutex<Sessions>,
}

/// What an episode's last request sent and got back.
#[derive(Debug, Clone)]
struct LastTurn {
    /// The rendered conversation the prompt was made of.
    rendered: String,
    prompt: Vec<u32>,
    /// The sampled tokens (a final EOS and a stop string's tokens included).
    reply: Vec<u32>,
}

/// The last turns of the most recent episodes (by rollout seed), oldest dropped first.
#[derive(Debug, Default)]
struct Sessions {
    turns: HashMap<u64, LastTurn>,
    order: VecDeque<u64>,
}

/// Episodes whose last turn is kept (a few times any `-j`; one turn is ~100 KB at 8k tokens).
const KEPT_SESSIONS: usize = 256;

impl Sessions {
    fn put(&mut self, session: u64, turn: LastTurn) {
        if self.turns.insert(session, turn).is_none() {
            self.order.push_back(session);
        }
        while self.order.len() > KEPT_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.turns.remove(&old);
            }
        }
    }
}

/// The prompt ids of `rendered` that continue `last` with its sampled tokens, or None where
/// the text does not continue it (an edited or trimmed conversation, a reply the template
/// rewrote from its first token). The ids decode to `rendered` exactly (checked).
fn continue_turn(tokenizer: &swegym_lm::Tokenizer, last: &LastTurn, rendered: &str) -> Option<Vec<u32>> {
    let added = rendered.strip_prefix(last.rendered.as_str())?;
    let text = |ids: &[u32]| tokenizer.decode(ids, false).ok();
    // the most sampled tokens whose text begins `added` (a stop string or trailing space the
    // episode cut off ends the match early)
    let fits = |m: usize| text(&last.reply[..m]).is_some_and(|t| added.starts_with(t.as_str()));
    let m = if fits(last.reply.len()) {
        last.reply.len()
    } else {
        let (mut lo, mut hi) = (0, last.reply.len() - 1);
        while lo < hi {
            let mid = (lo + hi).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    };
    if m == 0 {
        return None;
    }
    let head = text(&last.reply[..m])?;
    let mut ids = last.prompt.clone();
    ids.extend_from_slice(&last.reply[..m]);
    ids.extend(tokenizer.encode(&added[head.len()..], false).ok()?);
    (text(&ids)? == rendered).then_some(ids)
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

/// The dtypes of a local model: its weights; its KV cache (None:
/// [`swegym_lm::auto_kv_dtype`]); its prefills (None: the weights'; bf16 for an f32 model:
/// [`swegym_lm::CausalLm::set_prefill_dtype`]); what its decoding steps multiply by (None:
/// the model's own weights; see [`swegym_lm::CausalLm::set_decode_weights`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDtypes {
    pub weights: Dtype,
    pub kv: Option<KvDtype>,
    pub prefill: Option<Dtype>,
    pub decode: Option<DecodeWeights>,
}

impl ModelDtypes {
    /// A prefill dtype the model can use: bf16 for f32 weights, or the weights' own. Any
    /// other would be ignored by [`swegym_lm::CausalLm::set_prefill_dtype`], so it is refused.
    pub fn check_prefill(&self) -> Result<(), String> {
        match self.prefill {
            None => Ok(()),
            Some(p) if p == self.weights || (p == Dtype::Bf16 && self.weights == Dtype::F32) => Ok(()),
            Some(p) => Err(format!("{p} prefill with {} weights is not supported; use bf16 with f32 weights, or leave it unset", self.weights)),
        }
    }

    /// Decoding weights the model can use: 8-bit copies are made from f32 weights only
    /// ([`swegym_lm::CausalLm::set_decode_weights`] would ignore them), so q8 with other
    /// weights is refused.
    pub fn check_decode(&self) -> Result<(), String> {
        match self.decode {
            Some(DecodeWeights::Q8) if self.weights != Dtype::F32 => {
                Err(format!("q8 decoding weights are made from f32 weights, and the weights are {}; use f32 weights or leave it unset", self.weights))
            }
            _ => Ok(()),
        }
    }
}

impl From<Dtype> for ModelDtypes {
    fn from(weights: Dtype) -> Self {
        ModelDtypes { weights, kv: None, prefill: None, decode: None }
    }
}

impl LocalPolicy {
    /// Loads the model and starts its engine thread (`max_batch` rows decode together).
    pub fn load(path: &Path, dtype: Dtype, device: DeviceChoice, max_batch: usize, threads: Option<i32>) -> Result<LocalPolicy, PolicyError> {
        LocalPolicy::load_with_adapter(path, None, dtype.into(), device, max_batch, threads)
    }

    /// [`LocalPolicy::load`], with `adapter` applied to the base weights, the KV cache and
    /// prefills in `dtypes`' dtypes; the policy id names both model and adapter
    /// (`local:<model>+<adapter dir>`).
    pub fn load_with_adapter(
        path: &Path,
        adapter: Option<AdapterLoad<'_>>,
        dtypes: ModelDtypes,
        device: DeviceChoice,
        max_batch: usize,
        threads: Option<i32>,
    ) -> Result<LocalPolicy, PolicyError> {
        let device = device.resolve().map_err(|e| PolicyError::Server(e.to_string()))?;
        // the model is made on the engine's thread, the only one that touches libtorch
        // (see `Engine::spawn_with`)
        let (model_path, adapter_dir) = (path.to_path_buf(), adapter.map(|a| (a.dir.to_path_buf(), a.merge)));
        let options = EngineOptions { max_batch: max_batch.max(1), threads, ..EngineOptions::default() };
        let engine = Engine::spawn_with(options, move || {
            let (mut model, tokenizer) = load_model(&model_path, dtypes.weights, device).map_err(|e| PolicyError::Server(e.to_string()))?;
            if let Some((dir, merge)) = adapter_dir {
                swegym_lm::lora::load_adapter(&mut model, &dir, merge).map_err(|e| PolicyError::Server(e.to_string()))?;
            }
            model.set_kv_dtype(dtypes.kv.unwrap_or_else(|| swegym_lm::auto_kv_dtype(dtypes.weights, device).into()));
            model.set_prefill_dtype(dtypes.prefill.unwrap_or(dtypes.weights));
            // after the adapter: the 8-bit copies are made from the merged weights
            let wanted = dtypes.decode.unwrap_or_default();
            let used = model.set_decode_weights(wanted);
            if used != wanted {
                tracing::warn!("{wanted} decoding weights do not apply to this model here (they need f32 weights on a CPU with AVX2): decoding from its {} weights", dtypes.weights);
            }
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
        Ok(LocalPolicy { engine, template, id: format!("local:{name}"), sessions: Mutex::new(Sessions::default()) })
    }

    fn prompt_ids(&self, messages: &[Message]) -> Result<Vec<u32>, PolicyError> {
        self.engine.tokenizer().encode(&self.render(messages), false).map_err(|e| PolicyError::Server(e.to_string()))
    }

    /// The conversation as the chat template renders it, ending with the assistant's turn.
    fn render(&self, messages: &[Message]) -> String {
        let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage { role: m.role, content: m.content.clone() }).collect();
        self.template.render(&chat, true).text
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
        let p = request.params;
        let rendered = self.render(request.messages);
        let tokenizer = self.engine.tokenizer();
        let last = p.seed.and_then(|s| self.sessions.lock().expect("sessions lock").turns.get(&s).cloned());
        let prompt = match last.and_then(|last| continue_turn(tokenizer, &last, &rendered)) {
            Some(ids) => ids,
            None => tokenizer.encode(&rendered, false).map_err(|e| PolicyError::Server(e.to_string()))?,
        };
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
        let request = GenerationRequest { prompt: prompt.clone(), params, session: p.seed, shared_prefix };
        match self.engine.generate(request).await {
            Ok(c) => {
                if let Some(seed) = p.seed {
                    self.sessions.lock().expect("sessions lock").put(seed, LastTurn { rendered, prompt, reply: c.tokens.clone() });
                }
                Ok(Completion { text: c.text, prompt_tokens, completion_tokens: c.tokens.len() as u64 })
            }
            Err(e @ GenerateError::PromptTooLong { .. }) => Err(PolicyError::ContextExceeded(e.to_string())),
            Err(e) => Err(PolicyError::Server(format!("local model: {e}"))),
        }
    }

    fn count_tokens(&self, messages: &[Message]) -> usize {
        self.prompt_ids(messages).map(|ids| ids.len()).unwrap_or_else(|_| crate::prompt::estimate_tokens(messages))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefill_dtype_the_model_would_ignore_is_refused() {
        let ok = |weights, prefill| ModelDtypes { weights, kv: None, prefill, decode: None }.check_prefill();
        assert!(ok(Dtype::F32, None).is_ok() && ok(Dtype::F32, Some(Dtype::Bf16)).is_ok() && ok(Dtype::Bf16, Some(Dtype::Bf16)).is_ok());
        let err = ok(Dtype::F32, Some(Dtype::F16)).unwrap_err();
        assert!(err.contains("f16 prefill with f32 weights") && err.contains("use bf16"), "{err}");
        assert!(ok(Dtype::Bf16, Some(Dtype::F32)).is_err());
    }
    use swegym_lm::Tokenizer;

    fn chat(messages: &[Message]) -> String {
        let chat: Vec<ChatMessage> = messages.iter().map(|m| ChatMessage { role: m.role, content: m.content.clone() }).collect();
        ChatTemplate::smollm2().render(&chat, true).text
    }

    /// A first turn and its sampled `reply` (ids), then the conversation as the episode
    /// continues it: the reply as stored (`stored`) and an observation.
    fn turns(tok: &Tokenizer, reply: Vec<u32>, stored: &str) -> (LastTurn, String) {
        let mut messages = vec![Message::system("You are an agent."), Message::user("Fix the bug.")];
        let rendered = chat(&messages);
        let last = LastTurn { prompt: tok.encode(&rendered, false).unwrap(), rendered, reply };
        messages.push(Message::assistant(stored));
        messages.push(Message::user("EXECUTION RESULT of [finish]:\nok"));
        (last, chat(&messages))
    }

    #[test]
    fn the_next_prompt_keeps_the_sampled_tokens() {
        let tok = Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
        // stopped at `</function` (its tokens sampled, cut from the text); the episode
        // stores the reply with `>` added
        let sampled = tok.encode("Done.\n<function=finish>\n</function", false).unwrap();
        let (last, next) = turns(&tok, sampled.clone(), "Done.\n<function=finish>\n</function>");
        let ids = continue_turn(&tok, &last, &next).expect("continues");
        assert_eq!(&ids[..last.prompt.len()], &last.prompt[..]);
        assert_eq!(&ids[last.prompt.len()..last.prompt.len() + sampled.len()], &sampled[..]);
        assert_eq!(tok.decode(&ids, false).unwrap(), next);
        // a reply that ended with EOS: that token is in the rendered text too
        let mut eos = tok.encode("Done.", false).unwrap();
        eos.push(tok.token_to_id("<|im_end|>").unwrap());
        let (last, next) = turns(&tok, eos.clone(), "Done.");
        let ids = continue_turn(&tok, &last, &next).unwrap();
        assert_eq!(&ids[last.prompt.len()..last.prompt.len() + eos.len()], &eos[..]);
        // trailing text the episode trimmed: the tokens up to it are kept
        let (last, next) = turns(&tok, tok.encode("Done.  \n\n", false).unwrap(), "Done.");
        let ids = continue_turn(&tok, &last, &next).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), next);
        assert_eq!(ids[last.prompt.len()..last.prompt.len() + 5], tok.encode("Done.", false).unwrap()[..]);
    }

    #[test]
    fn a_conversation_that_does_not_continue_is_tokenized_afresh() {
        let tok = Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"]);
        let (last, next) = turns(&tok, tok.encode("Done.", false).unwrap(), "Done.");
        // an earlier message changed (e.g. a truncated observation)
        assert_eq!(continue_turn(&tok, &last, &next.replace("Fix the bug.", "Fix it.")), None);
        // the stored reply differs from its first token on
        let (last, next) = turns(&tok, tok.encode("Done.", false).unwrap(), "Finished.");
        assert_eq!(continue_turn(&tok, &last, &next), None);
        // nothing sampled
        let (last, next) = turns(&tok, Vec::new(), "Done.");
        assert_eq!(continue_turn(&tok, &last, &next), None);
    }

    #[test]
    fn smollm2_keeps_a_split_its_tokenizer_would_not_make() {
        let path = std::env::var_os("SWEGYM_CACHE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| std::path::PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cache/swegym"))
            .join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
        if !path.exists() {
            assert!(std::env::var("SWEGYM_SLOW_TESTS").as_deref() != Ok("1"), "SWEGYM_SLOW_TESTS=1 but {} is missing (`make setup` puts it there)", path.display());
            eprintln!("skipping: {} missing (`make setup` puts it there)", path.display());
            return;
        }
        let tok = Tokenizer::from_gguf(&swegym_lm::GgufFile::open(&path).unwrap()).unwrap();
        // `<function=finish>` sampled in two pieces, as a model may
        let mut sampled = tok.encode("I am done. <func", false).unwrap();
        sampled.extend(tok.encode("tion=finish>\n</function", false).unwrap());
        let stored = "I am done. <function=finish>\n</function>";
        let (last, next) = turns(&tok, sampled.clone(), stored);
        let canonical = tok.encode(&next, false).unwrap();
        let ids = continue_turn(&tok, &last, &next).unwrap();
        assert_ne!(ids, canonical, "the split must be one the tokenizer does not make");
        assert_eq!(&ids[last.prompt.len()..last.prompt.len() + sampled.len()], &sampled[..]);
        assert_eq!(tok.decode(&ids, false).unwrap(), next);
        // the canonical prompt would share only the tokens before the split with what the
        // engine kept of this session
        let kept: Vec<u32> = last.prompt.iter().chain(&sampled).copied().collect();
        let common = kept.iter().zip(&canonical).take_while(|(a, b)| a == b).count();
        assert!(common < kept.len() && ids.starts_with(&kept), "{common} of {}", kept.len());
    }
}

//! Batched generation with continuous batching: a [`Generator`] owns one [`KvCache`] whose
//! rows are the sequences decoding together; requests join (their prompt is prefilled into
//! a new row) and leave (EOS, a stop string, or the token limit) between decoding steps.
//! Each request carries its own [`SamplingParams`] (greedy or temperature / top-k / top-p)
//! and its own seeded RNG, so its output does not depend on what else is in the batch.
//!
//! A request may name a `session` (an agent episode). When it finishes, the keys and values
//! of its prompt and reply are kept (a bounded LRU, [`Generator::set_prefix_budget`]); the
//! session's next request, whose prompt continues the same tokens (the reply and an
//! observation appended), prefills only what is new. The reuse is keyed by the session, not
//! looked up by content, so what a request computes never depends on what other requests
//! happened to run before it. The one exception is exact: a session's first prompt is kept
//! whole with its last logits, and a session whose first prompt is the same token for token
//! (the k samples of one task) starts from them — the very values its own prefill would
//! have computed. A request may also mark a leading part of its prompt as shared
//! (`shared_prefix`: a system prompt that every episode starts with): that part is always
//! prefilled as a chunk of its own and kept by content, so a later request starting with
//! the same tokens copies it instead — again the very values its own prefill computes.
//! The rows holding such a copy are marked ([`KvCache::share_prefix`]), and so are the rows
//! holding a session's kept first prompt (the k samples of a task), and a decoding step
//! reads each row's longest marked prefix that an earlier row of the batch holds from that
//! row (bit for bit the same result; with several rows the later ones find it in the CPU's
//! cache).
//!
//! [`Engine`] puts a generator on its own thread behind a channel, so many tokio tasks
//! (agent episodes) can submit requests to one model: the thread batches whatever is
//! pending.

use std::collections::{HashMap, VecDeque};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::Tensor;

use crate::model::{CausalLm, KvCache, RowKv};
use crate::tokenizer::Tokenizer;

/// How one request is decoded. `temperature == 0` is greedy (argmax); otherwise logits are
/// divided by the temperature, cut to the `top_k` largest (0 = all) and to the smallest set
/// whose probability reaches `top_p` (1 = all), and sampled with a ChaCha8 RNG seeded by
/// `seed` — the order and semantics of transformers' warpers.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    pub max_new_tokens: usize,
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub seed: u64,
    /// Generation ends when the text contains one of these; the text is cut before it.
    pub stop: Vec<String>,
    /// Token ids that end generation besides the tokenizer's EOS.
    pub stop_token_ids: Vec<u32>,
    /// Do not stop at the tokenizer's EOS (benchmarks).
    pub ignore_eos: bool,
}

impl Default for SamplingParams {
    fn default() -> Self {
        Self {
            max_new_tokens: 256,
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            stop_token_ids: Vec::new(),
            ignore_eos: false,
        }
    }
}

impl SamplingParams {
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self { max_new_tokens, ..Self::default() }
    }

    fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// A prompt (token ids) and how to continue it.
#[derive(Debug, Clone)]
pub struct GenerationRequest {
    pub prompt: Vec<u32>,
    pub params: SamplingParams,
    /// The conversation this request belongs to: its keys and values are kept when it
    /// finishes, for the session's next request to continue from (None: nothing kept).
    pub session: Option<u64>,
    /// Leading prompt tokens that many requests share verbatim (a system prompt; 0: none).
    /// They are prefilled as a chunk of their own (so the result does not depend on
    /// whether they were found) and kept by content for later requests that start with
    /// them. At least the prompt's last token is always fed.
    pub shared_prefix: usize,
}

impl GenerationRequest {
    /// A request outside any session.
    pub fn new(prompt: Vec<u32>, params: SamplingParams) -> Self {
        Self { prompt, params, session: None, shared_prefix: 0 }
    }
}

/// Why generation of one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FinishReason {
    /// An EOS or stop token id was generated (it is the last of `tokens`, not in `text`).
    Eos,
    /// The text reached this stop string (`text` ends just before it).
    Stop(String),
    /// `max_new_tokens` were generated, or the model's context is full.
    Length,
}

/// The result of one request.
#[derive(Debug, Clone)]
pub struct Completion {
    /// Every generated token, including a final EOS and the tokens of a stop string.
    pub tokens: Vec<u32>,
    /// The decoded reply: without a final EOS token, cut before a stop string.
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: usize,
    /// Leading prompt tokens whose keys and values were copied instead of prefilled: from
    /// the session's previous request, a kept identical first prompt, or a kept shared
    /// prefix.
    pub cached_prompt_tokens: usize,
    /// Wall time of the prompt's forward pass (up to the first token's logits).
    pub prefill_seconds: f64,
    /// Wall time from the first generated token to the last.
    pub decode_seconds: f64,
}

/// A request that cannot run; the others go on.
#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("the prompt has {prompt} tokens; the model's context is {context}")]
    PromptTooLong { prompt: usize, context: usize },
    #[error("sampling parameters: {0}")]
    BadParams(String),
    #[error("tokenizer: {0}")]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("generation failed: {0}")]
    Failed(String),
    #[error("the generation engine stopped (its thread exited or panicked)")]
    EngineStopped,
}

/// One sequence in the batch; its index in `Generator::active` is its cache row.
struct Sequence {
    id: u64,
    params: SamplingParams,
    prompt_tokens: usize,
    cached_prompt_tokens: usize,
    /// The session and the prompt's ids, kept to park the row when it finishes.
    session: Option<(u64, Vec<u32>)>,
    tokens: Vec<u32>,
    rng: ChaCha8Rng,
    started: Instant,
    prefill_seconds: f64,
}

/// What a [`Generator`] (or an [`Engine`]'s thread) has done: where its time went and how
/// full its batches were — what tells why N concurrent callers do not get N times the
/// tokens/s of one.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct GenerationStats {
    /// Requests admitted (prefilled).
    pub requests: u64,
    /// Prompt tokens run through the model by prefills.
    pub prefill_tokens: u64,
    /// Prompt tokens whose keys and values were reused instead (sessions, shared prompts).
    pub cached_prompt_tokens: u64,
    /// Wall time of prefills (the batch waits while one runs).
    pub prefill_seconds: f64,
    /// Decoding steps, and the tokens they produced (one per row per step).
    pub decode_steps: u64,
    pub decoded_tokens: u64,
    pub decode_seconds: f64,
    /// [`Engine`] only: time its thread waited with an empty batch and nothing queued.
    pub idle_seconds: f64,
}

impl GenerationStats {
    /// Mean rows per decoding step.
    pub fn mean_batch(&self) -> f64 {
        self.decoded_tokens as f64 / self.decode_steps.max(1) as f64
    }
}

/// Continuous batching over one model: [`Generator::add`] prefills a request into the
/// batch, [`Generator::step`] decodes one token for every sequence in it.
pub struct Generator<'m> {
    model: &'m CausalLm,
    tokenizer: Tokenizer,
    cache: KvCache,
    active: Vec<Sequence>,
    eos_ids: Vec<u32>,
    context: usize,
    parked: PrefixCache,
    stats: GenerationStats,
}

/// Kept rows, most recently used last, within a byte budget: finished session requests
/// (for the session's next request), the first prompts of sessions (for another session
/// that starts with exactly the same prompt, as the k samples of one task do) and shared
/// prefixes (for any request that starts with them).
struct PrefixCache {
    entries: VecDeque<Parked>,
    budget_bytes: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ParkedKey {
    /// A finished request of this session: its prompt and reply.
    Session(u64),
    /// A prompt as a whole, with the logits of its last position.
    Prompt,
    /// A shared prefix of prompts (`GenerationRequest::shared_prefix`), without logits.
    Prefix,
}

struct Parked {
    key: ParkedKey,
    /// The tokens whose keys and values `kv` holds (prompt, then the reply as fed).
    tokens: Vec<u32>,
    kv: RowKv,
    /// `ParkedKey::Prompt`: the logits after the last token (`[vocab]`, f32).
    logits: Option<Tensor>,
}

impl PrefixCache {
    fn bytes(&self) -> usize {
        self.entries.iter().map(|p| p.kv.bytes()).sum()
    }

    fn take(&mut self, session: u64) -> Option<Parked> {
        let at = self.entries.iter().position(|p| p.key == ParkedKey::Session(session))?;
        self.entries.remove(at)
    }

    /// The kept entry of kind `key` (a prompt or a shared prefix) whose tokens are exactly
    /// `tokens` (made most recently used).
    fn by_content(&mut self, key: ParkedKey, tokens: &[u32]) -> Option<&Parked> {
        let at = self.entries.iter().position(|p| p.key == key && p.tokens == tokens)?;
        let entry = self.entries.remove(at)?;
        self.entries.push_back(entry);
        self.entries.back()
    }

    fn put(&mut self, parked: Parked) {
        match parked.key {
            ParkedKey::Session(s) => {
                self.take(s);
            }
            key => self.entries.retain(|p| !(p.key == key && p.tokens == parked.tokens)),
        }
        if parked.kv.bytes() > self.budget_bytes {
            return;
        }
        self.entries.push_back(parked);
        self.trim();
    }

    /// Drops the least recently used rows until the rest fit the budget.
    fn trim(&mut self) {
        while self.bytes() > self.budget_bytes {
            self.entries.pop_front();
        }
    }
}

/// Default byte budget of the kept session rows: a few long agent contexts of a small
/// model (SmolLM2-135M in f32 holds 46 KiB per token).
pub const DEFAULT_PREFIX_BUDGET_BYTES: usize = 2 << 30;

impl<'m> Generator<'m> {
    /// A generator over `model`; `tokenizer` decodes replies and gives the EOS id.
    pub fn new(model: &'m CausalLm, tokenizer: Tokenizer) -> Self {
        let eos_ids = tokenizer.eos_id().into_iter().collect();
        let context = model.config().max_position_embeddings as usize;
        let parked = PrefixCache { entries: VecDeque::new(), budget_bytes: DEFAULT_PREFIX_BUDGET_BYTES };
        Self { model, tokenizer, cache: model.new_cache(), active: Vec::new(), eos_ids, context, parked, stats: GenerationStats::default() }
    }

    /// Bytes that finished session rows may keep (0 turns the reuse off).
    pub fn set_prefix_budget(&mut self, bytes: usize) {
        self.parked.budget_bytes = bytes;
        self.parked.trim();
    }

    /// Bytes held by kept session rows.
    pub fn prefix_bytes(&self) -> usize {
        self.parked.bytes()
    }

    /// Sequences decoding now.
    pub fn len(&self) -> usize {
        self.active.len()
    }

    pub fn is_empty(&self) -> bool {
        self.active.is_empty()
    }

    /// What this generator has done so far.
    pub fn stats(&self) -> &GenerationStats {
        &self.stats
    }

    /// Bytes held by the KV cache.
    pub fn cache_bytes(&self) -> usize {
        self.cache.capacity_bytes()
    }

    /// Prefills `request` into a new row and picks its first token. Returns the completion
    /// when it already ended (one-token limit, EOS first), else `None`: [`Generator::step`]
    /// reports it under `id` later.
    pub fn add(&mut self, id: u64, request: GenerationRequest) -> Result<Option<Completion>, GenerateError> {
        let GenerationRequest { prompt, params, session, shared_prefix } = request;
        validate(&params)?;
        if prompt.is_empty() {
            return Err(GenerateError::EmptyPrompt);
        }
        if prompt.len() >= self.context {
            return Err(GenerateError::PromptTooLong { prompt: prompt.len(), context: self.context });
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as i64 >= self.model.config().vocab_size) {
            return Err(GenerateError::BadParams(format!("prompt token id {bad} is outside the vocabulary")));
        }
        let started = Instant::now();
        let expected = (prompt.len() + params.max_new_tokens).min(self.context) as i64;
        // The session's previous request left the keys and values of a prefix of this
        // prompt: start from them (at least the last prompt token is fed, for its logits).
        let reuse = session.and_then(|s| self.parked.take(s)).and_then(|p| {
            let common = p.tokens.iter().zip(&prompt).take_while(|(a, b)| a == b).count();
            let keep = common.min(prompt.len() - 1);
            (keep > 0).then_some((p, keep))
        });
        let (row, cached, logits) = match &reuse {
            Some((p, keep)) => {
                let row = self.cache.push_row_from(&p.kv, *keep as i64, expected);
                (row, *keep, self.model.prefill_row(&mut self.cache, row, &prompt[*keep..]))
            }
            // A session's first prompt: another session may have started with the same
            // one (the k samples of a task). Its rows and last logits are exactly what the
            // prefill computes, so sharing them changes no result.
            None if session.is_some() && self.parked.budget_bytes > 0 => match self.parked.by_content(ParkedKey::Prompt, &prompt) {
                Some(p) => {
                    let row = self.cache.push_row_from(&p.kv, prompt.len() as i64, expected);
                    (row, prompt.len(), p.logits.as_ref().expect("a kept prompt has its logits").shallow_clone())
                }
                None => {
                    let (row, cached, logits) = self.prefill_new_row(&prompt, shared_prefix, expected);
                    // the sessions that copy it and this one read it from one row when
                    // they decode together (besides the system prompt all tasks share)
                    self.cache.share_prefix(row, prompt.len() as i64);
                    let kv = self.cache.snapshot_row(row, prompt.len() as i64);
                    let kept = Parked { key: ParkedKey::Prompt, tokens: prompt.clone(), kv, logits: Some(logits.copy()) };
                    self.parked.put(kept);
                    (row, cached, logits)
                }
            },
            None => self.prefill_new_row(&prompt, shared_prefix, expected),
        };
        drop(reuse);
        let mut seq = Sequence {
            id,
            rng: ChaCha8Rng::seed_from_u64(params.seed),
            params,
            prompt_tokens: prompt.len(),
            cached_prompt_tokens: cached,
            session: session.map(|s| (s, prompt)),
            tokens: Vec::new(),
            started,
            prefill_seconds: 0.0,
        };
        let token = if seq.params.is_greedy() {
            logits.argmax(-1, false).int64_value(&[]) as u32
        } else {
            sample(&Vec::<f32>::try_from(&logits).expect("f32 logits"), &seq.params, &mut seq.rng)
        };
        seq.prefill_seconds = started.elapsed().as_secs_f64();
        seq.started = Instant::now();
        self.stats.requests += 1;
        self.stats.prefill_tokens += (seq.prompt_tokens - cached) as u64;
        self.stats.cached_prompt_tokens += cached as u64;
        self.stats.prefill_seconds += seq.prefill_seconds;
        self.active.push(seq);
        match self.push_token(row, token)? {
            Some(done) => {
                self.park(row);
                self.remove(row);
                Ok(Some(done))
            }
            None => Ok(None),
        }
    }

    /// One decoding step for every sequence; returns those that finished, by id.
    pub fn step(&mut self) -> Result<Vec<(u64, Completion)>, GenerateError> {
        if self.active.is_empty() {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let inputs: Vec<u32> = self.active.iter().map(|s| *s.tokens.last().expect("a first token")).collect();
        let logits = self.model.decode_rows(&mut self.cache, &inputs);
        let greedy: Vec<i64> = if self.active.iter().any(|s| s.params.is_greedy()) {
            Vec::try_from(&logits.argmax(-1, false)).expect("argmax ids")
        } else {
            Vec::new()
        };
        let mut finished = Vec::new();
        // indexed: `push_token` needs `&mut self` inside the loop
        #[allow(clippy::needless_range_loop)]
        for row in 0..self.active.len() {
            let token = if self.active[row].params.is_greedy() {
                greedy[row] as u32
            } else {
                let row_logits = Vec::<f32>::try_from(&logits.get(row as i64)).expect("f32 logits");
                let seq = &mut self.active[row];
                sample(&row_logits, &seq.params, &mut seq.rng)
            };
            if let Some(done) = self.push_token(row, token)? {
                finished.push((row, done));
            }
        }
        self.stats.decode_steps += 1;
        self.stats.decoded_tokens += inputs.len() as u64;
        self.stats.decode_seconds += started.elapsed().as_secs_f64();
        // remove from the highest row down, so each swap-in comes from a live row
        finished.sort_by_key(|(row, _)| std::cmp::Reverse(*row));
        Ok(finished
            .into_iter()
            .map(|(row, done)| {
                let id = self.active[row].id;
                self.park(row);
                self.remove(row);
                (id, done)
            })
            .collect())
    }

    /// Drops the sequence `id` (its caller went away); false when it is not in the batch.
    pub fn cancel(&mut self, id: u64) -> bool {
        match self.active.iter().position(|s| s.id == id) {
            Some(row) => {
                self.remove(row);
                true
            }
            None => false,
        }
    }

    /// Runs `requests` to completion, at most `max_batch` at a time (the rest join as rows
    /// free up), and returns their results in order.
    pub fn run(
        &mut self,
        requests: Vec<GenerationRequest>,
        max_batch: usize,
    ) -> Vec<Result<Completion, GenerateError>> {
        let n = requests.len();
        let mut results: Vec<Option<Result<Completion, GenerateError>>> = (0..n).map(|_| None).collect();
        let mut pending: VecDeque<(usize, GenerationRequest)> = requests.into_iter().enumerate().collect();
        while !pending.is_empty() || !self.active.is_empty() {
            while self.active.len() < max_batch.max(1) {
                let Some((i, request)) = pending.pop_front() else { break };
                match self.add(i as u64, request) {
                    Ok(Some(done)) => results[i] = Some(Ok(done)),
                    Ok(None) => {}
                    Err(e) => results[i] = Some(Err(e)),
                }
            }
            match self.step() {
                Ok(done) => {
                    for (id, c) in done {
                        results[id as usize] = Some(Ok(c));
                    }
                }
                Err(e) => {
                    // a tokenizer failure ends the batch; report it to everything in flight
                    let msg = e.to_string();
                    for seq in std::mem::take(&mut self.active) {
                        results[seq.id as usize] = Some(Err(GenerateError::Failed(msg.clone())));
                    }
                    self.cache.clear();
                }
            }
        }
        results.into_iter().map(|r| r.expect("every request ends")).collect()
    }

    /// Appends `token` to row `row`'s sequence; returns its completion when it ends.
    fn push_token(&mut self, row: usize, token: u32) -> Result<Option<Completion>, GenerateError> {
        let eos = {
            let seq = &self.active[row];
            (!seq.params.ignore_eos && self.eos_ids.contains(&token)) || seq.params.stop_token_ids.contains(&token)
        };
        let cache_len = self.cache.row_len(row) as usize;
        let seq = &mut self.active[row];
        seq.tokens.push(token);
        if eos {
            let text = self.tokenizer.decode(&seq.tokens[..seq.tokens.len() - 1], false)?;
            return Ok(Some(finish(seq, text, FinishReason::Eos)));
        }
        if !seq.params.stop.is_empty() {
            if let Some(done) = check_stop(&self.tokenizer, seq)? {
                return Ok(Some(done));
            }
        }
        // the next step feeds this token at position cache_len; the context must hold it
        if seq.tokens.len() >= seq.params.max_new_tokens || cache_len >= self.context {
            let text = self.tokenizer.decode(&seq.tokens, false)?;
            return Ok(Some(finish(seq, text, FinishReason::Length)));
        }
        Ok(None)
    }

    /// A new row holding `prompt` (room for `expected` positions) and the logits after its
    /// last token; also how many leading tokens were copied rather than computed. The
    /// first `shared_prefix` tokens (if fewer than the prompt's) are their own chunk, copied
    /// from a kept prefix with the same tokens or prefilled and kept.
    fn prefill_new_row(&mut self, prompt: &[u32], shared_prefix: usize, expected: i64) -> (usize, usize, Tensor) {
        let shared = shared_prefix.min(prompt.len() - 1);
        if shared == 0 {
            let row = self.cache.push_row(expected);
            return (row, 0, self.model.prefill_row(&mut self.cache, row, prompt));
        }
        let (head, rest) = prompt.split_at(shared);
        let (row, cached) = match self.parked.by_content(ParkedKey::Prefix, head) {
            Some(p) => (self.cache.push_row_from(&p.kv, shared as i64, expected), shared),
            None => {
                let row = self.cache.push_row(expected);
                let _ = self.model.prefill_row(&mut self.cache, row, head);
                // rows copied from this one (or from its kept copy) read one copy of it
                self.cache.share_prefix(row, shared as i64);
                if self.parked.budget_bytes > 0 {
                    let kv = self.cache.snapshot_row(row, shared as i64);
                    self.parked.put(Parked { key: ParkedKey::Prefix, tokens: head.to_vec(), kv, logits: None });
                }
                (row, 0)
            }
        };
        (row, cached, self.model.prefill_row(&mut self.cache, row, rest))
    }

    /// Keeps a finished session row's keys and values for the session's next request.
    fn park(&mut self, row: usize) {
        if self.parked.budget_bytes == 0 {
            return;
        }
        let Some((session, prompt)) = self.active[row].session.take() else { return };
        let len = self.cache.row_len(row);
        // the cache holds the prompt and every generated token but the last (never fed)
        let mut tokens = prompt;
        let fed = len as usize - tokens.len().min(len as usize);
        tokens.extend_from_slice(&self.active[row].tokens[..fed]);
        tokens.truncate(len as usize);
        let kv = self.cache.snapshot_row(row, len);
        self.parked.put(Parked { key: ParkedKey::Session(session), tokens, kv, logits: None });
    }

    fn remove(&mut self, row: usize) {
        self.cache.swap_remove_row(row);
        self.active.swap_remove(row);
    }
}

fn validate(p: &SamplingParams) -> Result<(), GenerateError> {
    if p.max_new_tokens == 0 {
        return Err(GenerateError::BadParams("max_new_tokens must be at least 1".into()));
    }
    if !p.temperature.is_finite() || p.temperature < 0.0 {
        return Err(GenerateError::BadParams(format!("temperature {} must be >= 0", p.temperature)));
    }
    if !(p.top_p > 0.0 && p.top_p <= 1.0) {
        return Err(GenerateError::BadParams(format!("top_p {} must be in (0, 1]", p.top_p)));
    }
    if p.stop.iter().any(String::is_empty) {
        return Err(GenerateError::BadParams("empty stop string".into()));
    }
    Ok(())
}

fn finish(seq: &Sequence, text: String, finish_reason: FinishReason) -> Completion {
    Completion {
        tokens: seq.tokens.clone(),
        text,
        finish_reason,
        prompt_tokens: seq.prompt_tokens,
        cached_prompt_tokens: seq.cached_prompt_tokens,
        prefill_seconds: seq.prefill_seconds,
        decode_seconds: seq.started.elapsed().as_secs_f64(),
    }
}

/// Looks for a stop string in the text the newest token completed. Only a tail of the
/// tokens is decoded each step (enough bytes for the longest stop string plus slack for
/// multi-byte characters); on a hit the whole reply is decoded and cut at the first stop.
fn check_stop(tokenizer: &Tokenizer, seq: &Sequence) -> Result<Option<Completion>, GenerateError> {
    let longest = seq.params.stop.iter().map(String::len).max().unwrap_or(0);
    let window = (longest + 4).min(seq.tokens.len());
    let tail = tokenizer.decode(&seq.tokens[seq.tokens.len() - window..], false)?;
    if !seq.params.stop.iter().any(|s| tail.contains(s.as_str())) {
        return Ok(None);
    }
    let text = tokenizer.decode(&seq.tokens, false)?;
    let first = seq.params.stop.iter().filter_map(|s| text.find(s.as_str()).map(|at| (at, s))).min_by_key(|(at, _)| *at);
    Ok(first.map(|(at, s)| finish(seq, text[..at].to_string(), FinishReason::Stop(s.clone()))))
}

/// Draws a token from `logits` with temperature, top-k and top-p (transformers' order).
pub fn sample(logits: &[f32], params: &SamplingParams, rng: &mut ChaCha8Rng) -> u32 {
    let t = params.temperature.max(f32::MIN_POSITIVE);
    if params.top_p >= 1.0 && (params.top_k == 0 || params.top_k >= logits.len()) {
        // no cut: every finite token may be drawn, in id order (the weights in vector lanes)
        let mut weights = Vec::new();
        if let Some(total) = crate::kernels::sampling_weights(logits, t, &mut weights) {
            let mut u = rng.random::<f64>() * total;
            let mut last = 0;
            for (i, &w) in weights.iter().enumerate() {
                if w > 0.0 {
                    u -= f64::from(w);
                    if u < 0.0 {
                        return i as u32;
                    }
                    last = i;
                }
            }
            return last as u32;
        }
    }
    let mut order: Vec<usize> = (0..logits.len()).filter(|&i| logits[i].is_finite()).collect();
    // descending by logit; ties by id so the order is total and reproducible
    let descending = |a: &usize, b: &usize| logits[*b].total_cmp(&logits[*a]).then(a.cmp(b));
    if params.top_k > 0 && params.top_k < order.len() {
        // keep everything tied with the k-th logit, as transformers' `< kth value` filter;
        // only the kept ones are sorted (a full sort of the vocabulary per token is a
        // large share of a decode step)
        order.select_nth_unstable_by(params.top_k - 1, descending);
        let kth = logits[order[params.top_k - 1]];
        order.retain(|&i| logits[i] >= kth);
        order.sort_unstable_by(descending);
    } else if params.top_p < 1.0 {
        order.sort_unstable_by(descending);
    }
    // without a nucleus cut every finite token stays, in id order or sorted: the draw is
    // from the same distribution either way
    let max = order.iter().map(|&i| logits[i]).fold(f32::NEG_INFINITY, f32::max) / t;
    let weights: Vec<f64> = order.iter().map(|&i| f64::from(logits[i] / t - max).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut keep = order.len();
    if params.top_p < 1.0 {
        // the smallest prefix whose probability reaches top_p (at least one token)
        let mut cumulative = 0.0;
        for (n, w) in weights.iter().enumerate() {
            cumulative += w / total;
            if cumulative >= f64::from(params.top_p) {
                keep = n + 1;
                break;
            }
        }
    }
    let kept_total: f64 = weights[..keep].iter().sum();
    let mut u = rng.random::<f64>() * kept_total;
    for (n, w) in weights[..keep].iter().enumerate() {
        u -= w;
        if u < 0.0 {
            return order[n] as u32;
        }
    }
    order[keep - 1] as u32
}

/// How an [`Engine`] runs its model thread.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Most sequences decoding together; more requests wait for a free row.
    pub max_batch: usize,
    /// libtorch intra-op threads (None: leave libtorch's default).
    pub threads: Option<i32>,
    /// Bytes of finished session rows kept for their sessions' next requests (0: none).
    pub prefix_budget_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self { max_batch: 16, threads: None, prefix_budget_bytes: DEFAULT_PREFIX_BUDGET_BYTES }
    }
}

struct Job {
    request: GenerationRequest,
    reply: tokio::sync::oneshot::Sender<Result<Completion, GenerateError>>,
}

/// One model on its own thread, shared by many callers: [`Engine::generate`] (async) and
/// [`Engine::generate_blocking`] queue a request; the thread admits pending requests into
/// the batch between decoding steps and answers each when it finishes. A request whose
/// caller went away (future dropped) is removed from the batch. Dropping the engine lets
/// the thread finish what it holds and joins it.
pub struct Engine {
    jobs: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    tokenizer: Tokenizer,
    stats: Arc<Mutex<GenerationStats>>,
}

impl Engine {
    /// Moves `model` onto a new thread and starts serving requests.
    pub fn spawn(model: CausalLm, tokenizer: Tokenizer, options: EngineOptions) -> Engine {
        match Engine::spawn_with(options, move || Ok::<_, std::convert::Infallible>((model, tokenizer))) {
            Ok(engine) => engine,
            Err(never) => match never {},
        }
    }

    /// An engine whose thread makes its model itself (`load`): every libtorch call then
    /// happens on that one thread. Prefer it to [`Engine::spawn`] when this process has
    /// not used libtorch yet. With a second OpenMP thread team alive in the process (the
    /// loader's, idle, beside the engine's), a decoding step at 2 threads took 50 ms
    /// instead of 31 ms (measured; the same happens in plain PyTorch). The likely cause:
    /// libgomp throttles its spin-waiting once the process holds more OpenMP threads than
    /// CPUs, so each of a step's many small parallel regions wakes sleeping workers.
    /// `load`'s error comes back here.
    pub fn spawn_with<E: Send + 'static>(
        options: EngineOptions,
        load: impl FnOnce() -> Result<(CausalLm, Tokenizer), E> + Send + 'static,
    ) -> Result<Engine, E> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (ready_tx, ready_rx) = mpsc::channel::<Result<Tokenizer, E>>();
        let stats = Arc::new(Mutex::new(GenerationStats::default()));
        let thread_stats = Arc::clone(&stats);
        let thread = std::thread::Builder::new()
            .name("swegym-lm-engine".into())
            .spawn(move || {
                if let Some(n) = options.threads {
                    tch::set_num_threads(n);
                }
                match load() {
                    Ok((model, tokenizer)) => {
                        let _ = ready_tx.send(Ok(tokenizer.clone()));
                        serve(&model, tokenizer, &options, &rx, &thread_stats);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .expect("spawn the engine thread");
        match ready_rx.recv() {
            Ok(Ok(tokenizer)) => Ok(Engine { jobs: Some(tx), thread: Some(thread), tokenizer, stats }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            // the loader panicked: pass its panic on
            Err(_) => match thread.join() {
                Err(panic) => std::panic::resume_unwind(panic),
                Ok(()) => unreachable!("the engine thread ended without reporting its model"),
            },
        }
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// What the engine's thread has done so far (updated after every step).
    pub fn stats(&self) -> GenerationStats {
        self.stats.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Queues `request` and waits for its completion without blocking the async runtime.
    pub async fn generate(&self, request: GenerationRequest) -> Result<Completion, GenerateError> {
        let rx = self.submit(request)?;
        rx.await.map_err(|_| GenerateError::EngineStopped)?
    }

    /// Queues `request` and blocks this thread until it completes (not inside async code).
    pub fn generate_blocking(&self, request: GenerationRequest) -> Result<Completion, GenerateError> {
        let rx = self.submit(request)?;
        rx.blocking_recv().map_err(|_| GenerateError::EngineStopped)?
    }

    fn submit(
        &self,
        request: GenerationRequest,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<Completion, GenerateError>>, GenerateError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        let jobs = self.jobs.as_ref().ok_or(GenerateError::EngineStopped)?;
        jobs.send(Job { request, reply }).map_err(|_| GenerateError::EngineStopped)?;
        Ok(rx)
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.jobs.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The engine thread: admit pending jobs, decode a step, answer finished ones; block
/// for the next job when idle; return when every sender is gone and the batch is empty.
fn serve(
    model: &CausalLm,
    tokenizer: Tokenizer,
    options: &EngineOptions,
    jobs: &mpsc::Receiver<Job>,
    stats: &Mutex<GenerationStats>,
) {
    let max_batch = options.max_batch.max(1);
    let mut generator = Generator::new(model, tokenizer);
    generator.set_prefix_budget(options.prefix_budget_bytes);
    let mut pending: VecDeque<Job> = VecDeque::new();
    let mut replies: HashMap<u64, tokio::sync::oneshot::Sender<Result<Completion, GenerateError>>> = HashMap::new();
    let mut next_id = 0u64;
    let mut idle_seconds = 0.0;
    // the counters are published before any reply of a step goes out, so a caller that
    // has its completion sees that step counted
    let publish = |generator: &Generator, idle_seconds: f64| {
        if let Ok(mut s) = stats.lock() {
            *s = GenerationStats { idle_seconds, ..generator.stats().clone() };
        }
    };
    loop {
        publish(&generator, idle_seconds);
        if generator.is_empty() && pending.is_empty() {
            let waiting = Instant::now();
            let job = jobs.recv();
            idle_seconds += waiting.elapsed().as_secs_f64();
            match job {
                Ok(job) => pending.push_back(job),
                Err(_) => return,
            }
        }
        while let Ok(job) = jobs.try_recv() {
            pending.push_back(job);
        }
        // callers that gave up free their rows
        let gone: Vec<u64> = replies.iter().filter(|(_, r)| r.is_closed()).map(|(&id, _)| id).collect();
        for id in gone {
            generator.cancel(id);
            replies.remove(&id);
        }
        while generator.len() < max_batch {
            let Some(job) = pending.pop_front() else { break };
            if job.reply.is_closed() {
                continue;
            }
            let id = next_id;
            next_id += 1;
            match generator.add(id, job.request) {
                Ok(Some(done)) => {
                    publish(&generator, idle_seconds);
                    let _ = job.reply.send(Ok(done));
                }
                Ok(None) => {
                    replies.insert(id, job.reply);
                }
                Err(e) => {
                    let _ = job.reply.send(Err(e));
                }
            }
        }
        let stepped = generator.step();
        publish(&generator, idle_seconds);
        match stepped {
            Ok(done) => {
                for (id, completion) in done {
                    if let Some(reply) = replies.remove(&id) {
                        let _ = reply.send(Ok(completion));
                    }
                }
            }
            Err(e) => {
                let msg = e.to_string();
                for (id, reply) in replies.drain() {
                    generator.cancel(id);
                    let _ = reply.send(Err(GenerateError::Failed(msg.clone())));
                }
            }
        }
    }
}

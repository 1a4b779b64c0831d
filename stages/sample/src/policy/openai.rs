//! A policy served by any OpenAI-compatible chat endpoint (`POST {base_url}/chat/completions`):
//! vLLM, SGLang, llama.cpp's server, or a hosted API.
//!
//! Retries with exponential backoff (1 s, 2 s, 4 s, … capped at 30 s) on 429, 5xx, timeouts
//! and connection errors; other 4xx answers fail at once, and a 400 that mentions the
//! context length is [`PolicyError::ContextExceeded`]. With an adapter name set, the adapter
//! name is sent as `model` (how vLLM and SGLang select a LoRA adapter they host). The API
//! key is a value: the binary reads it from the environment variable the user names.

use std::time::Duration;

use serde::Deserialize;

use super::{Completion, Policy, PolicyError, PolicyRequest};

/// Resolved settings of the endpoint.
#[derive(Debug, Clone)]
pub struct OpenAiConfig {
    /// e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    pub model: String,
    /// Sent as `model` instead of `model` when set (a LoRA adapter the server hosts).
    pub adapter: Option<String>,
    pub api_key: Option<String>,
    /// Limit of one HTTP request.
    pub request_timeout: Duration,
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// First backoff; doubles per retry.
    pub initial_backoff: Duration,
}

impl OpenAiConfig {
    pub fn new(base_url: impl Into<String>, model: impl Into<String>) -> OpenAiConfig {
        OpenAiConfig {
            base_url: base_url.into(),
            model: model.into(),
            adapter: None,
            api_key: None,
            request_timeout: Duration::from_secs(600),
            max_retries: 5,
            initial_backoff: Duration::from_secs(1),
        }
    }
}

pub struct OpenAiPolicy {
    config: OpenAiConfig,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct ChatResponse {
    choices: Vec<Choice>,
    #[serde(default)]
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct Choice {
    message: ChoiceMessage,
}

#[derive(Deserialize)]
struct ChoiceMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(Deserialize)]
struct Usage {
    #[serde(default)]
    prompt_tokens: u64,
    #[serde(default)]
    completion_tokens: u64,
}

/// One attempt's failure: retry or give up.
enum Attempt {
    Retry(String),
    Fatal(PolicyError),
}

impl OpenAiPolicy {
    pub fn new(config: OpenAiConfig) -> Result<OpenAiPolicy, PolicyError> {
        let client = reqwest::Client::builder()
            .timeout(config.request_timeout)
            .connect_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| PolicyError::Unsupported(format!("building the HTTP client: {e}")))?;
        Ok(OpenAiPolicy { config, client })
    }

    fn endpoint(&self) -> String {
        format!("{}/chat/completions", self.config.base_url.trim_end_matches('/'))
    }

    fn model_name(&self) -> &str {
        self.config.adapter.as_deref().unwrap_or(&self.config.model)
    }

    async fn attempt(&self, body: &serde_json::Value) -> Result<ChatResponse, Attempt> {
        let mut req = self.client.post(self.endpoint()).json(body);
        if let Some(key) = &self.config.api_key {
            req = req.bearer_auth(key);
        }
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() || e.is_connect() || e.is_request() => return Err(Attempt::Retry(format!("request failed: {e}"))),
            Err(e) => return Err(Attempt::Fatal(PolicyError::Server(format!("request failed: {e}")))),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(e) => return Err(Attempt::Retry(format!("reading the response ({status}): {e}"))),
        };
        if status.as_u16() == 429 || status.is_server_error() {
            return Err(Attempt::Retry(format!("HTTP {status}: {}", snippet(&text))));
        }
        if !status.is_success() {
            let lower = text.to_ascii_lowercase();
            if status.as_u16() == 400 && (lower.contains("context") || lower.contains("too long") || lower.contains("maximum") && lower.contains("token")) {
                return Err(Attempt::Fatal(PolicyError::ContextExceeded(snippet(&text))));
            }
            return Err(Attempt::Fatal(PolicyError::Server(format!("HTTP {status}: {}", snippet(&text)))));
        }
        serde_json::from_str::<ChatResponse>(&text)
            .map_err(|e| Attempt::Fatal(PolicyError::Server(format!("unexpected response ({e}): {}", snippet(&text)))))
    }
}

fn snippet(text: &str) -> String {
    text.chars().take(500).collect()
}

#[async_trait::async_trait]
impl Policy for OpenAiPolicy {
    fn id(&self) -> String {
        match &self.config.adapter {
            Some(a) => format!("openai:{}@{a}", self.config.model),
            None => format!("openai:{}", self.config.model),
        }
    }

    async fn complete(&self, request: PolicyRequest<'_>) -> Result<Completion, PolicyError> {
        let p = request.params;
        let mut body = serde_json::json!({
            "model": self.model_name(),
            "messages": request.messages,
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
        });
        if !p.stop.is_empty() {
            body["stop"] = serde_json::json!(p.stop);
        }
        if let Some(seed) = p.seed {
            // Servers read the seed as a signed 64-bit (or smaller) integer.
            body["seed"] = serde_json::json!(seed & 0x7fff_ffff);
        }
        let mut backoff = self.config.initial_backoff;
        let mut last = String::new();
        for attempt in 0..=self.config.max_retries {
            if attempt > 0 {
                tracing::warn!(attempt, error = %last, backoff_s = backoff.as_secs_f64(), "retrying the chat request");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            match self.attempt(&body).await {
                Ok(resp) => {
                    let text = resp.choices.into_iter().next().and_then(|c| c.message.content).unwrap_or_default();
                    let (prompt_tokens, completion_tokens) = match resp.usage {
                        Some(u) => (u.prompt_tokens, u.completion_tokens),
                        None => (self.count_tokens(request.messages) as u64, text.chars().count().div_ceil(4) as u64),
                    };
                    return Ok(Completion { text, prompt_tokens, completion_tokens });
                }
                Err(Attempt::Fatal(e)) => return Err(e),
                Err(Attempt::Retry(e)) => last = e,
            }
        }
        Err(PolicyError::Server(format!("{} failed after {} attempts: {last}", self.endpoint(), self.config.max_retries + 1)))
    }
}

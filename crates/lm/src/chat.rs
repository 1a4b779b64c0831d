//! Chat templates — ChatML (SmolLM2, Qwen2.5 / Qwen2.5-Coder) and Llama 3 — rendering the
//! same text as the models' own Jinja templates (checked against transformers'
//! `apply_chat_template` in `tests/chat_template.rs`), plus the assistant-token mask the
//! trainer needs: the tokens of each assistant message's content and its end-of-turn
//! token (`<|im_end|>` / `<|eot_id|>`), and nothing else.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::tokenizer::{Tokenizer, TokenizerError};

/// Who speaks a message: the one `Role` of the project (crates/schema), so rollouts'
/// messages render without conversion.
pub use swegym_schema::Role;

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// SmolLM2's default system prompt (its template adds it when the chat has none).
pub const SMOLLM2_SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// Qwen2.5's (and Qwen2.5-Coder's) default system prompt.
pub const QWEN2_5_SYSTEM: &str = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.";

/// A chat format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>{role}\n{content}<|im_end|>\n` per message; `default_system` is added
    /// first when the chat does not open with a system message.
    ChatMl { default_system: Option<String> },
    /// Meta Llama 3 Instruct: `<|begin_of_text|>` then
    /// `<|start_header_id|>{role}<|end_header_id|>\n\n{content.strip()}<|eot_id|>`.
    Llama3,
}

/// A rendered chat: the text, and the byte ranges of `text` the trainer learns from
/// (assistant content plus its end-of-turn token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedChat {
    pub text: String,
    pub assistant_spans: Vec<Range<usize>>,
}

/// Token ids of a chat and, per token, whether it is assistant content (loss on it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedChat {
    pub ids: Vec<u32>,
    pub assistant_mask: Vec<bool>,
}

impl ChatTemplate {
    pub fn smollm2() -> Self {
        ChatTemplate::ChatMl { default_system: Some(SMOLLM2_SYSTEM.into()) }
    }

    pub fn qwen2_5() -> Self {
        ChatTemplate::ChatMl { default_system: Some(QWEN2_5_SYSTEM.into()) }
    }

    /// Recognises a model's Jinja chat template (`tokenizer.chat_template` in GGUF metadata
    /// or `chat_template` in `tokenizer_config.json` / `chat_template.jinja`): Llama 3
    /// header tokens, or ChatML with the default system prompt the template hard-codes.
    pub fn from_jinja(source: &str) -> Option<Self> {
        if source.contains("<|start_header_id|>") {
            return Some(ChatTemplate::Llama3);
        }
        if !source.contains("<|im_start|>") {
            return None;
        }
        let default_system = ["<|im_start|>system\n", "<|im_start|>system\\n"].iter().find_map(|open| {
            source.match_indices(open).find_map(|(at, _)| {
                let rest = &source[at + open.len()..];
                let end = rest.find("<|im_end|>")?;
                let text = &rest[..end];
                // a literal prompt, not `' + messages[0]['content'] + '`
                (!text.contains('\'') && !text.contains('"') && !text.contains("{{")).then(|| text.to_string())
            })
        });
        Some(ChatTemplate::ChatMl { default_system })
    }

    /// The template a tokenizer's special tokens imply, for models without a template
    /// string: Llama 3 headers, else ChatML without a default system prompt.
    pub fn from_tokenizer(tokenizer: &Tokenizer) -> Option<Self> {
        if tokenizer.token_to_id("<|start_header_id|>").is_some() {
            Some(ChatTemplate::Llama3)
        } else if tokenizer.token_to_id("<|im_start|>").is_some() {
            Some(ChatTemplate::ChatMl { default_system: None })
        } else {
            None
        }
    }

    /// The token that ends an assistant turn (generation stops there).
    pub fn end_of_turn(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "<|im_end|>",
            ChatTemplate::Llama3 => "<|eot_id|>",
        }
    }

    /// Renders `messages`; `add_generation_prompt` appends the opening of an assistant turn.
    pub fn render(&self, messages: &[ChatMessage], add_generation_prompt: bool) -> RenderedChat {
        let mut text = String::new();
        let mut assistant_spans = Vec::new();
        let eot = self.end_of_turn();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                if let Some(system) = default_system {
                    if messages.first().is_none_or(|m| m.role != Role::System) {
                        text.push_str(&format!("<|im_start|>system\n{system}<|im_end|>\n"));
                    }
                }
                for m in messages {
                    text.push_str(&format!("<|im_start|>{}\n", m.role.as_str()));
                    let start = text.len();
                    text.push_str(&m.content);
                    text.push_str(eot);
                    if m.role == Role::Assistant {
                        assistant_spans.push(start..text.len());
                    }
                    text.push('\n');
                }
                if add_generation_prompt {
                    text.push_str("<|im_start|>assistant\n");
                }
            }
            ChatTemplate::Llama3 => {
                text.push_str("<|begin_of_text|>");
                for m in messages {
                    text.push_str(&format!("<|start_header_id|>{}<|end_header_id|>\n\n", m.role.as_str()));
                    let start = text.len();
                    text.push_str(jinja_trim(&m.content));
                    text.push_str(eot);
                    if m.role == Role::Assistant {
                        assistant_spans.push(start..text.len());
                    }
                }
                if add_generation_prompt {
                    text.push_str("<|start_header_id|>assistant<|end_header_id|>\n\n");
                }
            }
        }
        RenderedChat { text, assistant_spans }
    }

    /// Renders and tokenizes `messages` (no BOS added beyond what the template writes);
    /// a token is in the mask when it starts inside an assistant span.
    pub fn tokenize(
        &self,
        tokenizer: &Tokenizer,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Result<TokenizedChat, TokenizerError> {
        let rendered = self.render(messages, add_generation_prompt);
        let encoding = tokenizer
            .inner()
            .encode(rendered.text.as_str(), false)
            .map_err(|e| TokenizerError::Codec(e.to_string()))?;
        let assistant_mask = encoding
            .get_offsets()
            .iter()
            .map(|&(start, end)| end > start && rendered.assistant_spans.iter().any(|s| s.contains(&start)))
            .collect();
        Ok(TokenizedChat { ids: encoding.get_ids().to_vec(), assistant_mask })
    }
}

/// Jinja's `trim` filter: Python's `str.strip()` (Unicode whitespace at both ends).
fn jinja_trim(s: &str) -> &str {
    s.trim_matches(char::is_whitespace)
}

//! The tokenizer: a `tokenizers::Tokenizer` read from an HF `tokenizer.json`, or built from
//! a GGUF file's vocabulary and merges (GPT-2 byte-level BPE, with the pre-tokenizer that
//! `tokenizer.ggml.pre` names), plus the special ids generation needs.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::gguf::{GgufError, GgufFile};

/// A problem building or using a tokenizer; messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{path}: cannot load tokenizer: {message}")]
    Load { path: PathBuf, message: String },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("{path}: GGUF tokenizer model {model:?} is not supported (supported: gpt2 byte-level BPE)")]
    UnsupportedModel { path: PathBuf, model: String },
    #[error("{path}: GGUF pre-tokenizer {pre:?} is not supported (supported: {supported})")]
    UnsupportedPreTokenizer { path: PathBuf, pre: String, supported: &'static str },
    #[error("tokenizer failed: {0}")]
    Codec(String),
}

/// How text is split before BPE, by `tokenizer.ggml.pre` (llama.cpp's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreTokenizer {
    /// The GPT-2 regex (`gpt2`, `default`).
    Gpt2,
    /// Every digit on its own, then the GPT-2 regex (`smollm`, `starcoder`, `refact`): the
    /// upstream SmolLM2/StarCoder `tokenizer.json` pre-tokenizer (Digits(individual_digits)
    /// then ByteLevel) and llama.cpp's split for these names (`\p{N}`, then GPT-2's regex).
    /// A run of whitespace before a digit stays one pre-token (`"x  1"` -> `x`, `ĠĠ`, `1`).
    /// transformers' GGUF loader does not know `smollm` and uses plain GPT-2 ByteLevel,
    /// which gives `x`, `Ġ`, `Ġ`, `1` there: its HF copy is not the reference (issue 28;
    /// tests/tokenizer.rs and scripts/smollm2_tokenizer_reference.py).
    Gpt2DigitsSplit,
    /// Qwen2's regex: single digits, letters with one leading non-letter (`qwen2`).
    Qwen2,
    /// Llama 3's regex: digits in groups of up to three (`llama-bpe`, `llama3`).
    Llama3,
}

const SUPPORTED_PRE: &str = "gpt2, default, smollm, starcoder, refact, qwen2, llama-bpe, llama3";
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

impl PreTokenizer {
    pub fn from_gguf_name(name: &str) -> Option<Self> {
        Some(match name {
            "gpt2" | "default" => Self::Gpt2,
            "smollm" | "starcoder" | "refact" => Self::Gpt2DigitsSplit,
            "qwen2" => Self::Qwen2,
            "llama-bpe" | "llama3" => Self::Llama3,
            _ => return None,
        })
    }

    /// The `pre_tokenizer` (and `normalizer`) of the equivalent `tokenizer.json`.
    fn to_json(self) -> (Value, Value) {
        let byte_level = |use_regex: bool| {
            json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex})
        };
        let split = |pattern: &str| {
            json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false})
        };
        match self {
            Self::Gpt2 => (byte_level(true), Value::Null),
            Self::Gpt2DigitsSplit => (
                json!({"type": "Sequence", "pretokenizers": [
                    {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
                Value::Null,
            ),
            Self::Qwen2 => (
                json!({"type": "Sequence", "pretokenizers": [split(QWEN2_PATTERN), byte_level(false)]}),
                json!({"type": "NFC"}),
            ),
            Self::Llama3 => (
                json!({"type": "Sequence", "pretokenizers": [split(LLAMA3_PATTERN), byte_level(false)]}),
                Value::Null,
            ),
        }
    }
}

/// GGUF token types (llama.cpp `llama_token_type`).
const TOKEN_TYPE_CONTROL: i64 = 3;
const TOKEN_TYPE_USER_DEFINED: i64 = 4;

/// A tokenizer and the special ids that matter for generation.
#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    pad_id: Option<u32>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_id", &self.bos_id)
            .field("eos_id", &self.eos_id)
            .finish()
    }
}

impl Tokenizer {
    /// Reads an HF `tokenizer.json`. Special ids are looked up by the usual token names;
    /// callers with a `config.json` / `generation_config.json` should prefer those ids.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, TokenizerError> {
        let path = path.as_ref();
        let inner = tokenizers::Tokenizer::from_file(path)
            .map_err(|e| TokenizerError::Load { path: path.to_path_buf(), message: one_line(&e.to_string()) })?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        let eos_id = find(&["<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"]);
        let bos_id = find(&["<|begin_of_text|>", "<s>"]);
        Ok(Self { inner, bos_id, eos_id, pad_id: None })
    }

    /// A byte-level BPE without merges (one token per byte, GPT-2's byte-to-char map, ids
    /// 0..256) plus `specials` as ids 256.. (the last is taken as EOS): the tokenizer of
    /// tiny test models.
    pub fn byte_level(specials: &[&str]) -> Self {
        let mut bytes: Vec<u32> = (b'!'..=b'~').chain(0xA1..=0xAC).chain(0xAE..=0xFF).map(u32::from).collect();
        let mut chars = bytes.clone();
        let mut n = 0;
        for b in 0..256u32 {
            if !bytes.contains(&b) {
                bytes.push(b);
                chars.push(256 + n);
                n += 1;
            }
        }
        let mut vocab = serde_json::Map::new();
        for (b, c) in bytes.iter().zip(&chars) {
            vocab.insert(char::from_u32(*c).expect("GPT-2 byte chars are valid").to_string(), (*b).into());
        }
        let mut added = Vec::new();
        for (i, content) in specials.iter().enumerate() {
            vocab.insert((*content).into(), (256 + i).into());
            added.push(serde_json::json!({"id": 256 + i, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true}));
        }
        let spec = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
            "post_processor": null,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": []},
        });
        let inner: tokenizers::Tokenizer = spec.to_string().parse().expect("a valid byte-level tokenizer spec");
        let eos_id = (!specials.is_empty()).then(|| 255 + specials.len() as u32);
        Self { inner, bos_id: None, eos_id, pad_id: None }
    }

    /// Builds the tokenizer from a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(file: &GgufFile) -> Result<Self, TokenizerError> {
        let path = file.path().to_path_buf();
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(TokenizerError::UnsupportedModel { path, model: model.into() });
        }
        let pre_name = match file.get("tokenizer.ggml.pre") {
            Some(_) => file.get_str("tokenizer.ggml.pre")?,
            None => "default",
        };
        let pre = PreTokenizer::from_gguf_name(pre_name).ok_or_else(|| {
            TokenizerError::UnsupportedPreTokenizer { path: path.clone(), pre: pre_name.into(), supported: SUPPORTED_PRE }
        })?;
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let merges = file.get_str_array("tokenizer.ggml.merges")?;
        let types = file.get_i64_array("tokenizer.ggml.token_type")?;
        let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
            match file.get(key) {
                None => Ok(None),
                Some(_) => Ok(Some(file.get_u64(key)? as u32)),
            }
        };
        let bos_id = id("tokenizer.ggml.bos_token_id")?;
        let eos_id = id("tokenizer.ggml.eos_token_id")?;
        let pad_id = id("tokenizer.ggml.padding_token_id")?;
        let add_bos = file.get("tokenizer.ggml.add_bos_token").and_then(|v| v.as_bool()).unwrap_or(false);

        let vocab: serde_json::Map<String, Value> =
            tokens.iter().enumerate().map(|(i, t)| (t.to_string(), json!(i))).collect();
        let mut added = Vec::new();
        if let Some(types) = &types {
            for (i, (&tok, &ty)) in tokens.iter().zip(types).enumerate() {
                if ty == TOKEN_TYPE_CONTROL || ty == TOKEN_TYPE_USER_DEFINED {
                    added.push(json!({"id": i, "content": tok, "single_word": false, "lstrip": false,
                        "rstrip": false, "normalized": false, "special": ty == TOKEN_TYPE_CONTROL}));
                }
            }
        }
        let post_processor = match (add_bos, bos_id) {
            (true, Some(bos)) => {
                let bos_tok = tokens.get(bos as usize).copied().unwrap_or_default();
                json!({"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                    "pair": [{"SpecialToken": {"id": bos_tok, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                             {"SpecialToken": {"id": bos_tok, "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                    "special_tokens": {bos_tok: {"id": bos_tok, "ids": [bos], "tokens": [bos_tok]}}})
            }
            _ => Value::Null,
        };
        let (pre_tokenizer, normalizer) = pre.to_json();
        let spec = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                "vocab": vocab, "merges": merges},
        });
        let inner: tokenizers::Tokenizer = serde_json::from_value(spec)
            .map_err(|e| TokenizerError::Load { path: path.clone(), message: one_line(&e.to_string()) })?;
        Ok(Self { inner, bos_id, eos_id, pad_id })
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS where the tokenizer does.
    /// Special-token text in `text` (e.g. `<|im_start|>`) always maps to its id.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        let enc = self.inner.encode(text, add_special_tokens).map_err(|e| TokenizerError::Codec(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids`, dropping special tokens when `skip_special_tokens`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner.decode(ids, skip_special_tokens).map_err(|e| TokenizerError::Codec(e.to_string()))
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad_id
    }

    /// The underlying `tokenizers` tokenizer (e.g. to save it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

//! SFT records → training examples: each chat rendered with the model's chat template and
//! tokenized, with a loss mask that is true on assistant tokens only (each assistant
//! message's content and its end-of-turn token). Over-long examples are dropped or
//! truncated by the configured rule, and every example left out is counted by reason.

use std::collections::BTreeMap;

use swegym_lm::chat::{ChatMessage, ChatTemplate};
use swegym_lm::Tokenizer;
use swegym_schema::sft::SftRecord;
use swegym_schema::Role;

use crate::config::Overlong;

/// One tokenized chat.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Example {
    pub ids: Vec<u32>,
    /// `loss_mask[t]`: token `t` is learned (predicted from `ids[..t]`).
    pub loss_mask: Vec<bool>,
    /// Index of the record it came from.
    pub record_idx: usize,
}

impl Example {
    pub fn loss_tokens(&self) -> usize {
        // token 0 has no prefix to be predicted from
        self.loss_mask.iter().skip(1).filter(|&&m| m).count()
    }
}

/// What tokenizing a set of records kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TokenizeReport {
    pub total: usize,
    /// Dropped records by reason: `empty` (no messages), `no_assistant_turn`, `too_long`
    /// (with `overlong = "drop"`), `no_assistant_tokens_after_truncation`, `tokenize_error`.
    pub dropped: BTreeMap<String, usize>,
    pub truncated: usize,
    /// The first few dropped records as `record N (instance): reason`, for messages.
    pub examples_of_drops: Vec<String>,
}

impl TokenizeReport {
    fn drop(&mut self, idx: usize, record: &SftRecord, reason: &str) {
        *self.dropped.entry(reason.to_string()).or_default() += 1;
        if self.examples_of_drops.len() < 5 {
            let id = if record.instance_id.is_empty() { String::new() } else { format!(" ({})", record.instance_id) };
            self.examples_of_drops.push(format!("record {idx}{id}: {reason}"));
        }
    }

    pub fn n_dropped(&self) -> usize {
        self.dropped.values().sum()
    }
}

/// Renders and tokenizes `records` with `template`; examples longer than `max_seq_len`
/// tokens follow `overlong` (the SWE-Gym recipe drops them).
pub fn tokenize_records(
    records: &[SftRecord],
    tokenizer: &Tokenizer,
    template: &ChatTemplate,
    max_seq_len: usize,
    overlong: Overlong,
) -> (Vec<Example>, TokenizeReport) {
    let mut report = TokenizeReport { total: records.len(), ..TokenizeReport::default() };
    let mut examples = Vec::with_capacity(records.len());
    for (idx, record) in records.iter().enumerate() {
        if record.messages.is_empty() {
            report.drop(idx, record, "empty");
            continue;
        }
        if !record.messages.iter().any(|m| m.role == Role::Assistant) {
            report.drop(idx, record, "no_assistant_turn");
            continue;
        }
        let chat: Vec<ChatMessage> = record.messages.iter().map(|m| ChatMessage::new(m.role, m.content.clone())).collect();
        let tokenized = match template.tokenize(tokenizer, &chat, false) {
            Ok(t) => t,
            Err(_) => {
                report.drop(idx, record, "tokenize_error");
                continue;
            }
        };
        let (mut ids, mut mask) = (tokenized.ids, tokenized.assistant_mask);
        if ids.len() > max_seq_len {
            match overlong {
                Overlong::Drop => {
                    report.drop(idx, record, "too_long");
                    continue;
                }
                Overlong::Truncate => {
                    ids.truncate(max_seq_len);
                    mask.truncate(max_seq_len);
                    report.truncated += 1;
                }
            }
        }
        let example = Example { ids, loss_mask: mask, record_idx: idx };
        if example.loss_tokens() == 0 {
            let reason = if report.truncated > 0 && example.ids.len() == max_seq_len {
                "no_assistant_tokens_after_truncation"
            } else {
                "no_assistant_turn"
            };
            report.drop(idx, record, reason);
            continue;
        }
        examples.push(example);
    }
    (examples, report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use swegym_schema::Message;

    fn record(messages: Vec<Message>) -> SftRecord {
        let n_turns = SftRecord::assistant_turns(&messages);
        SftRecord {
            messages,
            instance_id: "demo__x-1".into(),
            iteration: None,
            source: "test".into(),
            resolved: Some(true),
            n_turns,
            sample_idx: None,
            exit_reason: None,
            patch: None,
        }
    }

    /// ChatML text through a byte-level tokenizer with the ChatML specials.
    fn tokenizer() -> Tokenizer {
        Tokenizer::byte_level(&["<|im_start|>", "<|im_end|>"])
    }

    #[test]
    fn masks_assistant_content_and_end_of_turn_only() {
        let template = ChatTemplate::ChatMl { default_system: None };
        let recs = vec![record(vec![Message::user("hi"), Message::assistant("ok")])];
        let (ex, report) = tokenize_records(&recs, &tokenizer(), &template, 1000, Overlong::Drop);
        assert_eq!(report.n_dropped(), 0);
        let tok = tokenizer();
        let learned: Vec<u32> = ex[0].ids.iter().zip(&ex[0].loss_mask).filter(|(_, &m)| m).map(|(&i, _)| i).collect();
        assert_eq!(tok.decode(&learned, false).unwrap(), "ok<|im_end|>");
    }

    #[test]
    fn drops_are_counted_by_reason() {
        let template = ChatTemplate::ChatMl { default_system: None };
        let long = "x".repeat(500);
        let recs = vec![
            record(vec![]),
            record(vec![Message::user("only a question")]),
            record(vec![Message::user("q"), Message::assistant(&long)]),
            record(vec![Message::user(&long), Message::assistant("a")]),
            record(vec![Message::user("q"), Message::assistant("a")]),
        ];
        let (ex, report) = tokenize_records(&recs, &tokenizer(), &template, 100, Overlong::Drop);
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0].record_idx, 4);
        let expect: BTreeMap<String, usize> =
            [("empty".to_string(), 1), ("no_assistant_turn".to_string(), 1), ("too_long".to_string(), 2)].into();
        assert_eq!(report.dropped, expect);

        let (ex, report) = tokenize_records(&recs, &tokenizer(), &template, 100, Overlong::Truncate);
        // the long answer is cut but keeps assistant tokens; the long question leaves none
        assert_eq!(ex.iter().map(|e| e.record_idx).collect::<Vec<_>>(), vec![2, 4]);
        assert_eq!(report.truncated, 2);
        assert_eq!(report.dropped.get("no_assistant_tokens_after_truncation"), Some(&1));
        assert!(ex.iter().all(|e| e.ids.len() <= 100));
    }
}

//! Chat templates against transformers' `apply_chat_template` renderings of the models'
//! Jinja templates (`tests/fixtures/chat_templates.json`, made by
//! `scripts/make_chat_fixtures.py`): text, assistant spans, token ids and assistant mask.

mod common;

use common::{fixture, smollm2_gguf};
use swegym_lm::chat::{ChatMessage, ChatTemplate, QWEN2_5_SYSTEM, SMOLLM2_SYSTEM};
use swegym_lm::{GgufFile, Tokenizer};

fn template(name: &str) -> ChatTemplate {
    let source = std::fs::read_to_string(common::fixture_path(&format!("chat_templates/{name}.jinja"))).unwrap();
    ChatTemplate::from_jinja(&source).unwrap()
}

fn messages(case: &serde_json::Value) -> Vec<ChatMessage> {
    serde_json::from_value(case["messages"].clone()).unwrap()
}

#[test]
fn templates_are_recognised_from_the_models_jinja() {
    assert_eq!(template("smollm2"), ChatTemplate::smollm2());
    assert_eq!(template("qwen2_5"), ChatTemplate::qwen2_5());
    assert_eq!(template("llama3"), ChatTemplate::Llama3);
    assert!(SMOLLM2_SYSTEM.contains("SmolLM") && QWEN2_5_SYSTEM.contains("Qwen"));
}

#[test]
fn rendering_matches_transformers_apply_chat_template() {
    let cases = fixture("chat_templates.json");
    let cases = cases["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 12);
    for case in cases {
        let t = template(case["template"].as_str().unwrap());
        let msgs = messages(case);
        let rendered = t.render(&msgs, false);
        assert_eq!(rendered.text, case["text"].as_str().unwrap(), "{}", case["template"]);
        assert_eq!(t.render(&msgs, true).text, case["text_generation_prompt"].as_str().unwrap());
        let spans: Vec<(usize, usize)> = rendered.assistant_spans.iter().map(|s| (s.start, s.end)).collect();
        let want: Vec<(usize, usize)> = serde_json::from_value(case["assistant_spans"].clone()).unwrap();
        assert_eq!(spans, want, "{}", case["template"]);
    }
}

#[test]
fn assistant_mask_matches_the_reference_tokens() {
    let Some(path) = smollm2_gguf() else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let cases = fixture("chat_templates.json");
    let mut masked = 0;
    for case in cases["cases"].as_array().unwrap() {
        let t = template(case["template"].as_str().unwrap());
        let chat = t.tokenize(&tok, &messages(case), false).unwrap();
        let ids: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
        let mask: Vec<bool> = serde_json::from_value(case["assistant_mask"].clone()).unwrap();
        assert_eq!(chat.ids, ids, "{}", case["template"]);
        assert_eq!(chat.assistant_mask, mask, "{}", case["template"]);
        masked += mask.iter().filter(|&&m| m).count();
        // the end-of-turn token closing each assistant turn is in the mask
        if t != ChatTemplate::Llama3 {
            let eot = tok.token_to_id("<|im_end|>").unwrap();
            let n_assistant = messages(case).iter().filter(|m| m.role == swegym_lm::chat::Role::Assistant).count();
            let masked_eot = ids.iter().zip(&mask).filter(|(&i, &m)| m && i == eot).count();
            assert_eq!(masked_eot, n_assistant);
        }
    }
    assert!(masked > 100, "only {masked} masked tokens in all cases");
}

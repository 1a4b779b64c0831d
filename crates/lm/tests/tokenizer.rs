//! The tokenizer built from the SmolLM2 GGUF against transformers' ids (fixtures).

mod common;

use common::{fixture, smollm2_gguf};

use serde_json::Value;
use swegym_lm::{GgufFile, Tokenizer};



fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

#[test]
fn gguf_tokenizer_matches_transformers_on_reference_prompts() {
    let Some(path) = smollm2_gguf() else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    assert_eq!(tok.vocab_size(), 49152);
    assert_eq!((tok.bos_id(), tok.eos_id(), tok.pad_id()), (Some(1), Some(2), Some(2)));
    let r = fixture("smollm2_reference_logits.json");
    let text = r["text"].as_str().unwrap();
    assert_eq!(tok.encode(text, false).unwrap(), ids(&r["input_ids"]));
    assert_eq!(tok.decode(&ids(&r["input_ids"]), false).unwrap(), text);
    // the chat prompt, as the ChatML template renders it for one user message
    let chat = &r["chat_greedy"];
    let prompt = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        chat["messages"][0]["content"].as_str().unwrap()
    );
    assert_eq!(tok.encode(&prompt, false).unwrap(), ids(&chat["prompt_ids"]));
    let generated = ids(&chat["generated_ids"]);
    assert_eq!(tok.decode(&generated, false).unwrap(), chat["generated_text"].as_str().unwrap());
    assert_eq!(tok.encode(chat["generated_text"].as_str().unwrap(), false).unwrap(), generated);
}

#[test]
fn gguf_tokenizer_matches_transformers_on_mixed_corpus() {
    let Some(path) = smollm2_gguf() else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let corpus = fixture("smollm2_tokenizer_corpus.json");
    let cases = corpus["cases"].as_array().unwrap();
    assert!(cases.len() >= 10);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        assert_eq!(tok.encode(text, false).unwrap(), want, "encode {text:?}");
        assert_eq!(tok.decode(&want, false).unwrap(), case["decoded"].as_str().unwrap(), "decode {text:?}");
        assert_eq!(
            tok.decode(&want, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap(),
            "decode skipping special tokens {text:?}"
        );
    }
}

#[test]
fn tokenizer_json_round_trip_gives_the_same_ids() {
    let Some(path) = smollm2_gguf() else { return };
    let tok = Tokenizer::from_gguf(&GgufFile::open(&path).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    tok.inner().save(&json, false).unwrap();
    let reread = Tokenizer::from_file(&json).unwrap();
    assert_eq!(reread.eos_id(), Some(2));
    for case in fixture("smollm2_tokenizer_corpus.json")["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        assert_eq!(reread.encode(text, false).unwrap(), ids(&case["ids"]), "{text:?}");
    }
}

#[test]
fn unreadable_tokenizer_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("tokenizer.json");
    std::fs::write(&json, "{ not json").unwrap();
    let err = Tokenizer::from_file(&json).unwrap_err().to_string();
    assert!(err.contains("tokenizer.json") && !err.contains('\n'), "{err}");
}


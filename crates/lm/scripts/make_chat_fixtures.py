#!/usr/bin/env python3
"""Golden chat renderings from transformers' `apply_chat_template` (Jinja) for
crates/lm/tests/chat_template.rs: for each template in tests/fixtures/chat_templates/ and
each conversation below, the rendered text (with and without the generation prompt) and,
with the SmolLM2 tokenizer, the token ids and the assistant mask. The mask is derived from
Jinja renderings only: an assistant turn's span runs from the end of the conversation
before it rendered with the generation prompt to the end of its end-of-turn token in the
conversation including it; a token is masked when its offset starts inside a span.

Usage: ~/.cache/swegym/venv-ref/bin/python crates/lm/scripts/make_chat_fixtures.py [SMOLLM2_GGUF]
"""
import json
import os
import sys

from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures"))
TEMPLATES = os.path.join(FIXTURES, "chat_templates")
CACHE = os.environ.get("SWEGYM_CACHE", os.path.expanduser("~/.cache/swegym"))
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")

CONVERSATIONS = [
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "system", "content": "You are a careful software engineer."},
     {"role": "user", "content": "Fix the bug in foo.py"},
     {"role": "assistant", "content": "<function=execute_bash><parameter=command>cat foo.py</parameter></function>"},
     {"role": "user", "content": "EXECUTION RESULT:\ndef f(x):\n    return x+1\n"},
     {"role": "assistant", "content": "Done. The fix: `return x + 1`.\n"}],
    [{"role": "user", "content": "  spaces around  \n"},
     {"role": "assistant", "content": "\n  Ünïcödé 日本語 🚀 and digits 12345  "},
     {"role": "user", "content": "again"}],
    [{"role": "user", "content": "first"}, {"role": "assistant", "content": "one"},
     {"role": "system", "content": "a system message mid-chat"},
     {"role": "user", "content": "second"}, {"role": "assistant", "content": ""}],
]

gguf_dir, gguf_file = os.path.split(GGUF)
tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
templates = {"smollm2": tok.chat_template}
with open(os.path.join(TEMPLATES, "smollm2.jinja"), "w") as f:
    f.write(tok.chat_template)
for name in ("qwen2_5", "llama3"):
    templates[name] = open(os.path.join(TEMPLATES, name + ".jinja")).read()
EOT = {"smollm2": "<|im_end|>", "qwen2_5": "<|im_end|>", "llama3": "<|eot_id|>"}


def render(template, msgs, gen):
    return tok.apply_chat_template(msgs, chat_template=template, tokenize=False,
                                   add_generation_prompt=gen, bos_token="<|begin_of_text|>")


cases = []
for name, template in templates.items():
    for conv in CONVERSATIONS:
        text = render(template, conv, False)
        spans = []
        for i, m in enumerate(conv):
            if m["role"] != "assistant":
                continue
            before = render(template, conv[:i], True) if i else None
            upto = render(template, conv[:i + 1], False)
            assert before is not None and upto.startswith(before) and text.startswith(upto)
            end = upto.rindex(EOT[name]) + len(EOT[name])
            spans.append((len(before.encode()), len(upto[:end].encode())))
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        # offsets are in characters; the spans in bytes (as the Rust side)
        starts = [len(text[:s].encode()) for s, e in enc["offset_mapping"]]
        nonempty = [e > s for s, e in enc["offset_mapping"]]
        mask = [ne and any(a <= st < b for a, b in spans) for st, ne in zip(starts, nonempty)]
        cases.append({"template": name, "messages": conv, "text": text,
                      "text_generation_prompt": render(template, conv, True),
                      "assistant_spans": spans, "ids": enc["input_ids"], "assistant_mask": mask})
with open(os.path.join(FIXTURES, "chat_templates.json"), "w") as f:
    json.dump({"renderer": "transformers apply_chat_template", "tokenizer": gguf_file, "cases": cases},
              f, indent=1, ensure_ascii=False)
print(len(cases), "cases")

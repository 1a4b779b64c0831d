#!/usr/bin/env python3
"""Tokenizes texts with llama.cpp (llama-cpp-python, vocab only), for compare_tokenizers.py.

Usage (the llama-cpp-python venv, see stages/sample/scripts/install-llamacpp-server.sh):
  ~/.cache/swegym/venv-llamacpp/bin/python crates/lm/scripts/llamacpp_tokenize.py GGUF IN.json OUT.json
IN.json is a JSON list of strings; OUT.json gets {"special": [[ids]...], "plain": [[ids]...]}:
"special" parses special-token text such as <|im_end|> to its id (what HF tokenizers and
our Tokenizer::encode do), "plain" tokenizes it as text (llama.cpp's special=False).
"""
import json
import sys

from llama_cpp import Llama

gguf, src, dst = sys.argv[1:4]
texts = json.load(open(src, encoding="utf-8"))
llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
out = {
    mode: [llm.tokenize(t.encode("utf-8"), add_bos=False, special=special) if t else [] for t in texts]
    for mode, special in (("special", True), ("plain", False))
}
json.dump(out, open(dst, "w"))

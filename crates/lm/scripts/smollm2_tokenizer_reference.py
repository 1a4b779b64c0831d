#!/usr/bin/env python3
"""The reference SmolLM2 tokenizer, and the fixtures and comparisons of issue 28, point 7.

The reference is what users serve SmolLM2 with: the upstream HuggingFaceTB tokenizer.json
(what vLLM loads from the hub). We have no hub access, so it is rebuilt here from the GGUF's
vocabulary and merges (convert_hf_to_gguf copies both verbatim) with the upstream pipeline:
no normalizer, pre_tokenizer Sequence[Digits(individual_digits=true),
ByteLevel(add_prefix_space=false, trim_offsets=true, use_regex=true)], BPE without dropout or
prefixes, the 17 control tokens (<|endoftext|>, <|im_start|>, ...) as special added tokens.
llama.cpp's "smollm" pre-type (the `tokenizer.ggml.pre` this GGUF carries) is the same split:
regexes ["\\p{N}", GPT-2's], i.e. every digit on its own, then GPT-2's regex on the rest.

transformers' GGUF loader (integrations/gguf/gguf_tokenizer_mapping.py, 5.23) has no entry
for "smollm": it builds a plain GPT2Tokenizer (ByteLevel with GPT-2's regex, no Digits
split), which is what ~/.cache/swegym/models/smollm2-hf/tokenizer.json holds. It differs
wherever a run of whitespace precedes a digit: GPT-2's ` ?\\p{N}+` takes the last space
with the digits, and as SmolLM2's vocabulary has no token "Ġ1" (no merge involves a digit
at all: its merges were learned on individually split digits) that space becomes a token of
its own: "x  1" -> x, Ġ, Ġ, 1 instead of x, ĠĠ, 1.

Usage (the reference venv: tokenizers + gguf; see requirements-ref.txt):
  PY=~/.cache/swegym/venv-ref/bin/python
  $PY crates/lm/scripts/smollm2_tokenizer_reference.py fixtures [GGUF]
      writes tests/fixtures/smollm2_tokenizer_swebench.json (per-document token counts and
      FNV-1a 64 hashes of the reference ids on the swebench corpus) and
      tests/fixtures/smollm2_tokenizer_hard_cases.json (short inputs with their reference ids,
      and the ids the transformers copy and llama.cpp give where those differ)
  $PY crates/lm/scripts/smollm2_tokenizer_reference.py stdlib-ids OUT.json [GGUF]
      the stdlib corpus of this Python with the reference ids (the slow Rust test reads it)
  $PY crates/lm/scripts/smollm2_tokenizer_reference.py compare [GGUF]
      token-for-token comparison of the reference, the transformers copy (smollm2-hf) and
      llama.cpp (via ~/.cache/swegym/venv-llamacpp, when present) on both corpora: tokens
      per tokenizer, differing documents per pair, the kinds of differing spans
"""
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter

from gguf import GGUFReader
from tokenizers import Tokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import tokenizer_corpus  # noqa: E402

FIXTURES = os.path.join(HERE, "..", "tests", "fixtures")
CACHE = os.environ.get("SWEGYM_CACHE", os.path.expanduser("~/.cache/swegym"))
DEFAULT_GGUF = os.path.join(CACHE, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
HF_COPY = os.path.join(CACHE, "models", "smollm2-hf", "tokenizer.json")
LLAMACPP_PY = os.path.join(CACHE, "venv-llamacpp", "bin", "python")

UPSTREAM_PRE_TOKENIZER = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True},
    ],
}


def reference_tokenizer(gguf_path):
    """The upstream SmolLM2 tokenizer.json pipeline over the GGUF's vocabulary and merges."""
    fields = GGUFReader(gguf_path).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    merges = fields["tokenizer.ggml.merges"].contents()
    assert fields["tokenizer.ggml.pre"].contents() == "smollm", fields["tokenizer.ggml.pre"].contents()
    added = [
        {"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 3  # CONTROL
    ]
    spec = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None, "pre_tokenizer": UPSTREAM_PRE_TOKENIZER, "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": {t: i for i, t in enumerate(tokens)}, "merges": merges},
    }
    return Tokenizer.from_str(json.dumps(spec))


def encode_all(tok, texts):
    return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)] if texts else []


def llamacpp_ids(gguf_path, texts):
    """llama.cpp's ids ({"special": ..., "plain": ...}), or None without the llama.cpp venv."""
    if not os.path.exists(LLAMACPP_PY):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        json.dump(texts, open(src, "w", encoding="utf-8"))
        subprocess.run([LLAMACPP_PY, os.path.join(HERE, "llamacpp_tokenize.py"), gguf_path, src, dst], check=True)
        return json.load(open(dst))


def fnv1a64(ids):
    """FNV-1a 64 over the ids as little-endian u32s (tests/tokenizer.rs computes the same)."""
    h = 0xCBF29CE484222325
    for i in ids:
        for b in int(i).to_bytes(4, "little"):
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def hard_case_texts():
    """Short inputs around the rules that differ between pre-tokenizers: whitespace runs before
    digits, digits after letters/punctuation, non-ASCII numerals and spaces, contractions."""
    spaces = [" ", "  ", "   ", "    ", "\t", "\t\t", " \t", "\t ", "\n", "\n\n", "\n ", "\n  ",
              "\n    ", "\r\n", "\r\n  ", " \n", "\u00a0", "\u00a0 ", "\u3000", "\u2009", "\x0b", "\x0c"]
    befores = ["", "x", "(", "=", ","]
    numbers = ["1", "42", "\u00b2", "\u0663"]  # 1, 42, superscript two, Arabic-Indic three
    texts = [b + s + n for b in befores for s in spaces for n in numbers]
    texts += [
        "x  1", "\n  12", "a\t3", "x = 1", "a\n\n1", "(  1, 2)", " 1", "1 ", "1  ", "1\n", "12  \n",
        "abc123def", "v1.2.3", "0x1F", "1e-5", "3.14159", "-42", "+7", "1_000_000", "$1,000.00",
        "  # 1. item", "    return 0\n", "[1,  2,   3]", "f(x)  +  2", "x==1", "x  ==  10",
        "line 1\n    line 2\n        3", "1\t2\t3", "1 2 3", "1  2  3", "12:34:56", "2024-01-02",
        "it's 3", "IT'S 3", "they'll 2", "x's 12", "'s1", "'1", "''1", "don't  1",
        "\u00bd cup", "x\u00b2 + y\u00b2", "\u2160\u2161", "\u0661\u0662\u0663", "\u0967\u0968",
        "\uff11\uff12", "\u00a0\u00a01", "caf\u00e9 2", "\u65e5\u672c 3", "\U0001f680 4", "\u200b5",
        "tab\t\t\t7", "  \n  8", "\r\n\r\n9", " \r\n 0", "x\u3000\u30001",
        "<|im_start|>user\n 1<|im_end|>", "<|endoftext|>  2", "<filename>  3",
    ]
    seen, out = set(), []
    for t in texts:
        if t not in seen:
            seen.add(t)
            out.append(t)
    return out


def write_json_lines(path, obj, list_key):
    """`obj` as JSON with one element of obj[list_key] per line (readable diffs)."""
    head = {k: v for k, v in obj.items() if k != list_key}
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        for k, v in head.items():
            f.write(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=False)},\n")
        f.write(f"{json.dumps(list_key)}: [\n")
        items = [json.dumps(x, ensure_ascii=False, separators=(",", ":")) for x in obj[list_key]]
        f.write(",\n".join(items))
        f.write("\n]}\n")
    json.load(open(path, encoding="utf-8"))  # well-formed


def write_fixtures(gguf_path):
    ref = reference_tokenizer(gguf_path)
    docs = tokenizer_corpus.swebench_documents()
    ids = encode_all(ref, [t for _, t in docs])
    corpus = {
        "about": "reference ids (upstream SmolLM2 pre-tokenizer: Digits(individual) + ByteLevel, over the "
                 "GGUF vocab/merges; tokenizers " + __import__("tokenizers").__version__ + ") of the swebench "
                 "corpus of crates/lm/scripts/tokenizer_corpus.py; fnv1a64 over the ids as little-endian u32s",
        "gguf": os.path.basename(gguf_path),
        "fields": list(tokenizer_corpus.SWEBENCH_FIELDS),
        "documents": len(docs),
        "bytes": sum(len(t.encode("utf-8")) for _, t in docs),
        "tokens": sum(len(x) for x in ids),
        "ids": [{"name": n, "tokens": len(x), "fnv1a64": fnv1a64(x)} for (n, _), x in zip(docs, ids)],
    }
    write_json_lines(os.path.join(FIXTURES, "smollm2_tokenizer_swebench.json"), corpus, "ids")

    texts = hard_case_texts()
    ref_ids = encode_all(ref, texts)
    hf_ids = encode_all(Tokenizer.from_file(HF_COPY), texts) if os.path.exists(HF_COPY) else None
    lc = llamacpp_ids(gguf_path, texts)
    cases = []
    for i, (text, want) in enumerate(zip(texts, ref_ids)):
        case = {"text": text, "ids": want}
        if hf_ids is not None and hf_ids[i] != want:
            case["transformers_copy"] = hf_ids[i]
        if lc is not None and lc["special"][i] != want:
            case["llamacpp"] = lc["special"][i]
        cases.append(case)
    hard = {
        "about": "short inputs with the reference ids (see smollm2_tokenizer_reference.py); "
                 "'transformers_copy' (smollm2-hf/tokenizer.json: plain ByteLevel, no Digits split) and "
                 "'llamacpp' (llama-cpp-python, special=True) are present only where they differ",
        "checked_against": {"transformers_copy": hf_ids is not None, "llamacpp": lc is not None},
        "cases": cases,
    }
    write_json_lines(os.path.join(FIXTURES, "smollm2_tokenizer_hard_cases.json"), hard, "cases")
    differ = Counter(k for c in cases for k in ("transformers_copy", "llamacpp") if k in c)
    print(f"swebench: {corpus['documents']} documents, {corpus['bytes']} bytes, {corpus['tokens']} tokens")
    print(f"hard cases: {len(cases)}; differing from the reference: {dict(differ)}")


def write_stdlib_ids(out, gguf_path):
    ref = reference_tokenizer(gguf_path)
    docs = tokenizer_corpus.stdlib_documents()
    ids = encode_all(ref, [t for _, t in docs])
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"python": sys.version.split()[0],
                   "documents": [{"name": n, "text": t, "ids": x} for (n, t), x in zip(docs, ids)]}, f)
    print(f"stdlib ({sys.version.split()[0]}): {len(docs)} documents, "
          f"{sum(len(t.encode('utf-8')) for _, t in docs)} bytes, {sum(len(x) for x in ids)} tokens")


def differing_spans(tok, text, a, b):
    """The text spans where id lists a and b (a = tok's) part, each widened to whole lines' tail."""
    import difflib
    enc = tok.encode(text, add_special_tokens=False)
    assert enc.ids == a
    spans = []
    for op, i1, i2, _, _ in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        lo = enc.offsets[max(i1 - 1, 0)][0] if a else 0
        hi = enc.offsets[min(i2, len(a) - 1)][1] if a else len(text)
        spans.append(text[lo:hi])
    return spans


def span_kind(span):
    """Classifies a differing span: the whitespace that precedes its first digit."""
    import re
    m = re.search(r"(\s+)(\d)", span)
    if not m:
        return "other: " + repr(span[:40])
    ws = m.group(1)
    return "whitespace run before a digit: " + ("spaces" if set(ws) == {" "} else repr(ws) if len(ws) <= 4 else
                                                "mixed " + "".join(sorted(set(repr(c)[1:-1] for c in ws))))


def compare(gguf_path):
    ref = reference_tokenizer(gguf_path)
    hf = Tokenizer.from_file(HF_COPY) if os.path.exists(HF_COPY) else None
    for kind in ("swebench", "stdlib"):
        docs = tokenizer_corpus.documents(kind)
        texts = [t for _, t in docs]
        result = {"reference": encode_all(ref, texts)}
        if hf is not None:
            result["transformers_copy"] = encode_all(hf, texts)
        lc = llamacpp_ids(gguf_path, texts)
        if lc is not None:
            result["llamacpp"] = lc["special"]
            result["llamacpp_plain"] = lc["plain"]
        size = sum(len(t.encode("utf-8")) for t in texts)
        print(f"== {kind}: {len(docs)} documents, {size} bytes, {sum(t.count(chr(10)) + 1 for t in texts)} lines")
        for name, ids in result.items():
            print(f"  {name:18s} {sum(len(x) for x in ids):8d} tokens")
        for name, ids in result.items():
            if name == "reference":
                continue
            diff = [i for i in range(len(texts)) if ids[i] != result["reference"][i]]
            print(f"  reference vs {name}: {len(diff)} of {len(texts)} documents differ")
            kinds = Counter()
            examples = {}
            for i in diff:
                for span in differing_spans(ref, texts[i], result["reference"][i], ids[i]):
                    k = span_kind(span)
                    kinds[k] += 1
                    examples.setdefault(k, span)
            for k, n in kinds.most_common(12):
                print(f"    {n:6d} spans  {k}   e.g. {examples[k][:60]!r}")


def main(argv):
    if not argv:
        raise SystemExit(__doc__)
    cmd = argv[0]
    if cmd == "fixtures":
        write_fixtures(argv[1] if len(argv) > 1 else DEFAULT_GGUF)
    elif cmd == "stdlib-ids":
        write_stdlib_ids(argv[1], argv[2] if len(argv) > 2 else DEFAULT_GGUF)
    elif cmd == "compare":
        compare(argv[1] if len(argv) > 1 else DEFAULT_GGUF)
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])

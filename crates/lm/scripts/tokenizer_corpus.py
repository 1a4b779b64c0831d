#!/usr/bin/env python3
"""The corpora on which our GGUF-built SmolLM2 tokenizer must agree token for token with the
reference tokenizer (issue 28, point 7). Deterministic: fixed sources, fixed order.

  swebench  issue text and Python: the `problem_statement`, `patch` and `test_patch` fields of
            datasets/swebench-lite/test.json (committed in this repository), in file order, one
            document per non-empty field, named "<instance_id>:<field>". About 1.3 MB.
            crates/lm/tests/tokenizer.rs rebuilds exactly this list (same fields, same order)
            and checks it against the ids in tests/fixtures/smollm2_tokenizer_swebench.json.
  stdlib    Python source: STDLIB_FILES from the standard library of the Python running this
            script, in that order, one document per file. About 1.4 MB with CPython 3.11; the
            text depends on the Python version, so it is only compared live (slow test).

Usage (any Python 3.8+):
  python3 crates/lm/scripts/tokenizer_corpus.py [swebench|stdlib] [--out FILE]
prints the corpus size (bytes, documents); --out writes the documents as JSON lines
({"name": ..., "text": ...}).
"""
import json
import os
import sys
import sysconfig

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", ".."))
DATASET = os.path.join(REPO, "datasets", "swebench-lite", "test.json")
SWEBENCH_FIELDS = ("problem_statement", "patch", "test_patch")

# Modules that are single files in every CPython from 3.8 to 3.13 (not zipfile, pathlib or
# datetime, which became packages or stubs), about 1.4 MB in all.
STDLIB_FILES = (
    "argparse.py", "ast.py", "configparser.py", "dataclasses.py", "difflib.py", "doctest.py",
    "enum.py", "functools.py", "inspect.py", "ipaddress.py", "pickle.py", "shutil.py",
    "statistics.py", "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "tokenize.py",
    "traceback.py", "typing.py", "_pydecimal.py",
)


def swebench_documents(path=DATASET):
    """[(name, text)]: every non-empty SWEBENCH_FIELDS value of every instance, in file order."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    docs = []
    for row in rows:
        for field in SWEBENCH_FIELDS:
            text = row.get(field) or ""
            if text:
                docs.append((f"{row['instance_id']}:{field}", text))
    return docs


def stdlib_documents(stdlib=None):
    """[(name, text)]: the STDLIB_FILES of this Python's standard library (missing ones skipped)."""
    stdlib = stdlib or sysconfig.get_paths()["stdlib"]
    docs = []
    for name in STDLIB_FILES:
        path = os.path.join(stdlib, name)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                docs.append((f"stdlib/{name}", f.read()))
    return docs


def documents(kind):
    if kind == "swebench":
        return swebench_documents()
    if kind == "stdlib":
        return stdlib_documents()
    raise SystemExit(f"unknown corpus {kind!r} (swebench, stdlib)")


def main(argv):
    kind = argv[0] if argv and not argv[0].startswith("-") else "swebench"
    docs = documents(kind)
    size = sum(len(t.encode("utf-8")) for _, t in docs)
    print(f"{kind}: {len(docs)} documents, {size} bytes")
    if "--out" in argv:
        with open(argv[argv.index("--out") + 1], "w", encoding="utf-8") as f:
            for name, text in docs:
                f.write(json.dumps({"name": name, "text": text}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

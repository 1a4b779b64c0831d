#!/usr/bin/env python3
"""LoRA adapter interop between swegym and PEFT, both ways, on the same base model.

1. ours -> PEFT: an adapter `swegym train` wrote (--ours DIR) is loaded with
   `PeftModel.from_pretrained` on the base (transformers, float32). Its last-position logits
   for a fixed text must match `swegym lm logits --adapter DIR` (unmerged and merged).
2. PEFT -> ours: PEFT makes a LoRA with random A *and* B (init_lora_weights=False, so the
   adapter changes the logits), r=8, alpha=16, targets q/v/down only, saves it with
   `save_pretrained`, and `swegym lm logits --adapter` on that folder must match PEFT's logits.

The comparison is on the ids of PEFT's top-K at the last position: max |ours - PEFT| <= --tol
(1e-3 by default, f32). Prints one JSON report; exits 1 on a mismatch.

Usage (the reference venv, see crates/lm/scripts/requirements-ref.txt):
  ~/.cache/swegym/venv-ref/bin/python stages/train/scripts/peft_interop.py \
      --base <HF folder> --swegym target/debug/swegym --ours <adapter dir> --work <scratch dir>
"""
import os

# This VM's CPU reports AMX but faults on it; cap oneDNN before torch initialises it.
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
import argparse
import json
import subprocess
import sys

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

TEXT = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n    if n < 2:\n        return"


def load_base(path):
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    model.eval()
    return model


def last_logits(model, ids):
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, -1].float()


def swegym_logits(args, adapter, merge, top):
    cmd = [args.swegym, "lm", "logits", "--model", args.base, "--device", "cpu", "--threads", "2",
           "--adapter", adapter, "--text", TEXT, "--top", str(top), "--json"]
    if merge:
        cmd.append("--merge-adapter")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def compare(name, peft_logits, ours, tol):
    """max |diff| over our top-K ids (and whether the top-K ids agree)."""
    ids = [t["id"] for t in ours["top"]]
    diffs = [abs(float(peft_logits[t["id"]]) - t["logit"]) for t in ours["top"]]
    peft_top = torch.topk(peft_logits, len(ids)).indices.tolist()
    return {"check": name, "max_abs_diff": max(diffs), "top_ids_equal": peft_top == ids, "ok": max(diffs) <= tol,
            "top5_ours": ids[:5], "top5_peft": peft_top[:5]}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--base", required=True, help="HF folder of the base model")
    p.add_argument("--swegym", required=True, help="the swegym binary")
    p.add_argument("--ours", required=True, help="an adapter folder written by swegym train")
    p.add_argument("--work", required=True, help="scratch folder (the PEFT adapter goes here)")
    p.add_argument("--tol", type=float, default=1e-3)
    p.add_argument("--top", type=int, default=20)
    args = p.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(args.base)
    ids = tok(TEXT, add_special_tokens=False).input_ids
    base_logits = last_logits(load_base(args.base), ids)
    checks = []

    # 1. ours -> PEFT
    peft_ours = PeftModel.from_pretrained(load_base(args.base), args.ours)
    theirs = last_logits(peft_ours, ids)
    for merge in (False, True):
        r = compare(f"ours->peft ({'merged' if merge else 'unmerged'})", theirs, swegym_logits(args, args.ours, merge, args.top), args.tol)
        checks.append(r)
    changed = float((theirs - base_logits).abs().max())
    checks.append({"check": "our adapter changes the logits", "max_abs_change": changed, "ok": changed > 1e-4})

    # 2. PEFT -> ours
    cfg = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"],
                     bias="none", task_type="CAUSAL_LM", init_lora_weights=False)
    peft_model = get_peft_model(load_base(args.base), cfg)
    peft_model.eval()
    peft_dir = os.path.join(args.work, "peft-adapter")
    peft_model.save_pretrained(peft_dir)
    theirs = last_logits(peft_model, ids)
    for merge in (False, True):
        checks.append(compare(f"peft->ours ({'merged' if merge else 'unmerged'})", theirs, swegym_logits(args, peft_dir, merge, args.top), args.tol))
    changed = float((theirs - base_logits).abs().max())
    checks.append({"check": "the PEFT adapter changes the logits", "max_abs_change": changed, "ok": changed > 1e-4})

    ok = all(c["ok"] for c in checks)
    print(json.dumps({"ok": ok, "tol": args.tol, "text_tokens": len(ids), "checks": checks}, indent=1))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

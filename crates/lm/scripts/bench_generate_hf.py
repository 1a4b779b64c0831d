#!/usr/bin/env python3
"""The transformers side of `swegym bench generate`: HF transformers generation throughput
(greedy, KV cache) on CPU. A copy of shared/baselines/bench_generate.py (same method, same
numbers), run by the Rust benchmark in the same session so the ratio compares like with like.

Usage:
  python bench_generate.py                      # all 4 configs, one subprocess each
  python bench_generate.py DTYPE BATCH          # one config (float32|bfloat16, 1|8)
Options via env: MODEL_DIR (baseline-work/smollm2-hf), OUT_DIR (baseline-work/results),
  PROMPT_LEN (512), NEW_TOKENS (256), RUNS (3).

Each config runs in its own process (so peak RSS is per config): load model,
one warm-up generate, then RUNS timed generates; medians (and min/max) reported.
Prompt: PROMPT_LEN random token ids (fixed seed, no padding, all rows same
length). Generation: model.generate(do_sample=False, use_cache=True), EOS
disabled so exactly NEW_TOKENS tokens are produced. Prefill time = start of
generate() -> first logits-processor call (end of the prompt forward); decode
rate = (NEW_TOKENS-1)*BATCH / (last call - first call).
"""
import os

# AMX tile instructions SIGILL on this VM; cap oneDNN below AMX (see README).
os.environ.setdefault("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16")
import json
import statistics
import subprocess
import sys
import time

MODEL_DIR = os.environ.get("MODEL_DIR", "baseline-work/smollm2-hf")
OUT_DIR = os.environ.get("OUT_DIR", "baseline-work/results")
PROMPT_LEN = int(os.environ.get("PROMPT_LEN", 512))
NEW_TOKENS = int(os.environ.get("NEW_TOKENS", 256))
RUNS = int(os.environ.get("RUNS", 3))


def _rss_mib(field):  # VmRSS (current) or VmHWM (peak since last reset), MiB
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024


def _reset_peak_rss():  # Linux: writing 5 to clear_refs resets VmHWM
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def one_config(dtype_name, batch):
    import torch
    from transformers import AutoModelForCausalLM, LogitsProcessor, LogitsProcessorList

    torch.set_num_threads(2)
    dtype = getattr(torch, dtype_name)
    model = AutoModelForCausalLM.from_pretrained(MODEL_DIR, dtype=dtype).eval()
    n_params = sum(p.numel() for p in model.parameters())
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(100, model.config.vocab_size, (batch, PROMPT_LEN), generator=g)
    mask = torch.ones_like(ids)

    class Stamp(LogitsProcessor):  # records when each step's logits are ready
        def __init__(self):
            self.t = []

        def __call__(self, input_ids, scores):
            self.t.append(time.perf_counter())
            return scores

    def run():
        st = Stamp()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, attention_mask=mask, max_new_tokens=NEW_TOKENS,
                                 min_new_tokens=NEW_TOKENS, do_sample=False, use_cache=True,
                                 eos_token_id=None, pad_token_id=2,
                                 logits_processor=LogitsProcessorList([st]))
        t1 = time.perf_counter()
        assert out.shape == (batch, PROMPT_LEN + NEW_TOKENS), out.shape
        prefill = st.t[0] - t0
        decode = st.t[-1] - st.t[0]
        return {"wall_s": t1 - t0, "prefill_s": prefill,
                "prefill_tok_s": batch * PROMPT_LEN / prefill,
                "decode_s": decode,
                "decode_tok_s": batch * (NEW_TOKENS - 1) / decode,
                "decode_ms_per_step": 1000 * decode / (NEW_TOKENS - 1),
                "end_to_end_new_tok_s": batch * NEW_TOKENS / (t1 - t0)}

    rss_loaded = _rss_mib("VmRSS")
    peak_load = _rss_mib("VmHWM")  # peak while loading (f32 file -> dtype)
    _reset_peak_rss()  # so VmHWM below covers only the generate() calls
    warm = run()
    runs = [run() for _ in range(RUNS)]
    res = {"dtype": dtype_name, "batch": batch, "prompt_len": PROMPT_LEN,
           "new_tokens": NEW_TOKENS, "threads": torch.get_num_threads(),
           "attn_implementation": model.config._attn_implementation,
           "n_params": n_params, "warmup": warm, "runs": runs,
           "rss_after_load_mib": rss_loaded,
           "peak_rss_generate_mib": _rss_mib("VmHWM"),
           "peak_rss_load_mib": peak_load}
    res["peak_rss_mib"] = max(peak_load, res["peak_rss_generate_mib"])
    for k in runs[0]:
        vals = [r[k] for r in runs]
        res[k] = {"min": min(vals), "median": statistics.median(vals), "max": max(vals)}
    return res


if __name__ == "__main__":
    os.makedirs(OUT_DIR, exist_ok=True)
    if len(sys.argv) == 3:
        r = one_config(sys.argv[1], int(sys.argv[2]))
        path = os.path.join(OUT_DIR, f"generate_{r['dtype']}_b{r['batch']}.json")
        json.dump(r, open(path, "w"), indent=1)
        print(f"{r['dtype']:8s} b{r['batch']}: prefill {r['prefill_tok_s']['median']:8.1f} tok/s  "
              f"decode {r['decode_tok_s']['median']:7.1f} tok/s  wall {r['wall_s']['median']:6.2f} s  "
              f"peak RSS {r['peak_rss_mib']:.0f} MiB (during generate {r['peak_rss_generate_mib']:.0f})", flush=True)
    else:
        for dt in ("float32", "bfloat16"):
            for b in (1, 8):
                subprocess.run([sys.executable, __file__, dt, str(b)], check=True)

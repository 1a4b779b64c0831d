#!/usr/bin/env bash
# Issue 29, acceptance 5: an outcome verifier scores the *learned* policy's held-out
# rollouts. From a finished run (default runs/learn, `swegym run configs/learn.toml`):
#   1. judge data from the run's own train-split rollouts (iter-NNN/rollouts.parquet of the
#      RFT iterations: the policy's attempts, graded, with mixed outcomes; no held-out task
#      is in any of them, and the oracle's warm-start trajectories are left out);
#   2. a LoRA verifier on the base model (`swegym verifier train`, the paper's recipe, or
#      VERIFIER_TRAIN_CONFIG's keys over it);
#   3. the run's last adapter on the run's held-out split, K rollouts a task with the run's
#      own agent settings (RUN/config.json): rollout 0 greedy (as the run's eval samples it), rollouts
#      1..K-1 at the run's sampling temperature;
#   4. p(YES) of every held-out rollout, then Pass@1, Pass@k, Best@k and Random@k with
#      bootstrap intervals, AUC and accuracy (`swegym verifier eval --ks 1 2 .. K`).
# Not yet run end to end: on runs/learn (session 23) step 1 gave 222 judge examples (111 YES,
# 111 NO) from iteration 1's 226 rollouts in 7 s; the rest needs ~1 hour of this CPU.
# Every step skips what it already wrote (`swegym sample` resumes by rollout), so a killed
# run continues where it stopped.
#
# Usage: scripts/learned_verifier.sh [RUN] [OUT]   (default runs/learn, RUN/verifier-kK)
#   env: K (rollouts a held-out task; default 4), SWEGYM_BIN (default
#   target/release/swegym), VERIFIER_TRAIN_CONFIG (a train.toml whose keys override the
#   verifier recipe), VERIFIER_DTYPE (f32, the default, or bf16 on a CPU with avx512_bf16),
#   JUDGE_MAX_TOKENS (default 4096)
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${1:-runs/learn}
K=${K:-4}
OUT=${2:-$RUN/verifier-k$K}
SW=${SWEGYM_BIN:-target/release/swegym}
[ -x "$SW" ] || { echo "no $SW: run \`cargo build --release -p swegym\` (or set SWEGYM_BIN)" >&2; exit 2; }
[ -f "$RUN/config.json" ] || { echo "$RUN: not a run folder (no config.json); run \`swegym run configs/learn.toml\` first" >&2; exit 2; }
[ "$K" -ge 2 ] 2>/dev/null || { echo "K=$K: Best@k needs at least 2 rollouts a task" >&2; exit 2; }

# The run's train rollouts (iterations ≥ 1 sample the policy; iteration 0 may hold only the
# warm start) and its last adapter.
mapfile -t TRAIN_ROLLOUTS < <(ls "$RUN"/iter-*/rollouts.parquet 2>/dev/null || true)
[ "${#TRAIN_ROLLOUTS[@]}" -gt 0 ] || { echo "$RUN: no iter-NNN/rollouts.parquet yet (the run has not sampled its policy)" >&2; exit 2; }
ADAPTER=$(ls -d "$RUN"/iter-*/adapter 2>/dev/null | tail -1)
[ -n "$ADAPTER" ] || { echo "$RUN: no iter-NNN/adapter yet (no iteration has trained)" >&2; exit 2; }

# The run's model, held-out split and agent settings, as `swegym sample` flags.
mapfile -t SETTINGS < <(python3 - "$RUN/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
p, a, t = c["policy"], c["agent"], c["dataset"]["test"]
print(p["model"]); print(p["temperature"]); print(" ".join(t["files"])); print(" ".join(t["instance_ids"]))
flags = ["--dtype", p["dtype"], "--device", p["device"], "--max-tokens", p["max_new_tokens"],
         "--scaffold", a["scaffold"], "--max-turns", a["eval_max_turns"], "--max-context-tokens", a["max_context_tokens"],
         "--max-observation-chars", a["max_observation_chars"], "--max-format-errors", a["max_format_errors"],
         "--command-timeout", a["command_timeout_s"], "--backend", c["sandbox"]["backend"], "-j", c["sandbox"]["jobs"],
         "--memory-gib", c["sandbox"]["memory_gib"]]
print(" ".join(str(f) for f in flags))
EOF
)
MODEL=${SETTINGS[0]}
TEMPERATURE=${SETTINGS[1]}
read -r -a TEST_FILES <<<"${SETTINGS[2]}"
read -r -a TEST_IDS <<<"${SETTINGS[3]}"
read -r -a FLAGS <<<"${SETTINGS[4]}"
[ "${#TEST_FILES[@]}" -eq 1 ] || { echo "$RUN: the held-out split spans ${#TEST_FILES[@]} files; this script samples one" >&2; exit 2; }
mkdir -p "$OUT"
step() { echo "=== $(date +%T) $*"; }
POL=(--policy local --model "$MODEL" --adapter "$ADAPTER" "${FLAGS[@]}" --evaluate --dataset "${TEST_FILES[0]}" --instance-ids "${TEST_IDS[@]}")

step "verifier judge data from ${TRAIN_ROLLOUTS[*]}"
[ -f "$OUT/judge.parquet" ] || $SW verifier data --rollouts "${TRAIN_ROLLOUTS[@]}" --model "$MODEL" --out "$OUT/judge.parquet" --max-tokens "${JUDGE_MAX_TOKENS:-4096}"
step "verifier training"
[ -f "$OUT/verifier/adapter_config.json" ] || $SW verifier train --model "$MODEL" --data "$OUT/judge.parquet" --out "$OUT/verifier" ${VERIFIER_DTYPE:+--dtype "$VERIFIER_DTYPE"} ${VERIFIER_TRAIN_CONFIG:+--config "$VERIFIER_TRAIN_CONFIG"}

step "held out: $ADAPTER, ${#TEST_IDS[@]} tasks, rollout 0 greedy, then 1..$((K - 1)) at temperature $TEMPERATURE"
$SW sample "${POL[@]}" -k 1 --temperature 0 --seed 7 --out "$OUT/held_out.parquet"
$SW sample "${POL[@]}" -k "$K" --temperature "$TEMPERATURE" --seed 7 --out "$OUT/held_out.parquet"

step "p(YES) of the held-out rollouts"
[ -f "$OUT/held_out.scores.parquet" ] || $SW verifier score --model "$MODEL" --adapter "$OUT/verifier" --rollouts "$OUT/held_out.parquet" --out "$OUT/held_out.scores.parquet"
KS=$(seq -s ' ' 1 "$K")
step "Pass@1 / Pass@k / Best@k / Random@k, k in $KS"
# shellcheck disable=SC2086
$SW verifier eval --scores "$OUT/held_out.scores.parquet" --ks $KS --out "$OUT/eval.json"
step done

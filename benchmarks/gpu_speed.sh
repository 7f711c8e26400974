#!/usr/bin/env bash
# GPU: correctness first, then speed (one GPU, offline). From the repository root:
#   bash benchmarks/gpu_speed.sh            # writes benchmarks/results/gpu_speed.txt (commands + output)
#   GPU_SPEED_SMOKE=1 bash benchmarks/gpu_speed.sh   # tiny model on CPU: the speed part runs; not a result
# 1. benchmarks/gpu_correctness.py: FastRollout's CUDA-graph decode gives generate's greedy tokens
#    (Llama, Qwen2, capture and replay) and samples within binomial error of the exact distribution.
# 2. benchmarks/gpu_check.sh: the resume tests (CUDA variants) and a 20-step FSDP2 fit on 1 device
#    (configs/fsdp_gpu_smoke.yaml) resumed from step 10, compared step by step (needs
#    artifacts/arith-warmstart: made here with `stare-lit warmstart` if missing, ~1-2 min).
# 3. Only if 1 and 2 passed: benchmarks/gpu_speed.py (FastRollout vs HF generate at 64 x 256 tokens,
#    update MFU and peak memory on a Qwen2-0.5B shape), stopped after SPEED_TIMEOUT s (default 240).
# Whole script: about 7-9 min on an H200 (an estimate: it has never run). Under a 10-min limit per command,
# bring artifacts/arith-warmstart along (it is git-ignored) so step 2 does not have to make it first.
set -uo pipefail
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
if [ "${GPU_SPEED_SMOKE:-0}" = "1" ]; then
  out=${OUT:-/tmp}/gpu_speed_smoke.txt
  { timeout 470 "$py" benchmarks/gpu_speed.py; echo "exit: $?"; } 2>&1 | tee "$out"
  exit 0
fi
out=benchmarks/results/gpu_speed.txt
mkdir -p "$(dirname "$out")"
{
  echo "\$ bash benchmarks/gpu_speed.sh   # $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  echo "== 1. CUDA-graph decode correctness: \$ $py benchmarks/gpu_correctness.py"
  timeout 120 "$py" benchmarks/gpu_correctness.py; c1=$?
  echo "exit: $c1"
  [ -d artifacts/arith-warmstart ] || timeout 240 "$py" -m stare_lit.commands.cli warmstart > /tmp/warmstart.log 2>&1
  echo "== 2. FSDP2 1-device fit + exact resume: \$ bash benchmarks/gpu_check.sh runs/gpu_check"
  timeout 240 bash benchmarks/gpu_check.sh runs/gpu_check; c2=$?
  # exact: every "max |first - resumed|" line is 0.0, and the resume tests passed with none failed
  "$py" - <<'PY' || c2=1
import re, sys
s = open("runs/gpu_check/summary.txt").read().split("per metric:")[1].split("first run")[0]
diffs = [float(line.split()[-1]) for line in s.strip().splitlines()]
t = open("runs/gpu_check/pytest_resume.txt").read()
ok = bool(diffs) and all(d == 0.0 for d in diffs) and "passed" in t and "failed" not in t
print("resume exact:", ok, diffs)
sys.exit(0 if ok else 1)
PY
  echo "exit: $c2"
  if [ "$c1" = 0 ] && [ "$c2" = 0 ]; then
    echo "== 3. speed: \$ $py benchmarks/gpu_speed.py"
    timeout "${SPEED_TIMEOUT:-240}" "$py" benchmarks/gpu_speed.py
    echo "exit: $?"
  else
    echo "== 3. speed: NOT RUN (a correctness check failed above)"
  fi
} 2>&1 | tee "$out"

#!/usr/bin/env bash
# GPU speed (one GPU, offline, < 8 min): FastRollout vs HF generate rollout tokens/s at 64 rows x 256 new
# tokens, update MFU and the update's peak memory, on a Qwen2-0.5B-shaped model from a config (vocab 151,936,
# bf16). See benchmarks/gpu_speed.py. From the repository root:
#   bash benchmarks/gpu_speed.sh            # writes benchmarks/results/gpu_speed.txt (command + output)
#   GPU_SPEED_SMOKE=1 bash benchmarks/gpu_speed.sh   # tiny model on CPU: the script runs; not a result
set -uo pipefail
py=${PYTHON:-python3}
if [ "${GPU_SPEED_SMOKE:-0}" = "1" ]; then out=${OUT:-/tmp}/gpu_speed_smoke.txt; else out=benchmarks/results/gpu_speed.txt; fi
mkdir -p "$(dirname "$out")"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
{
  echo "\$ bash benchmarks/gpu_speed.sh   # $(date -u '+%Y-%m-%d %H:%M UTC')"
  command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  timeout 470 "$py" benchmarks/gpu_speed.py
  echo "exit: $?"
} 2>&1 | tee "$out"

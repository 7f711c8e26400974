#!/usr/bin/env bash
# GPU checks on one GPU, offline (what benchmarks/README.md reports under "GPU"):
#   1. the resume-equivalence tests, CUDA variants included (tests/test_resume.py);
#   2. configs/fsdp_gpu_smoke.yaml: FSDP2 (ModelParallelStrategy) with bf16 all-gather/compute, 20 steps,
#      sharded checkpoints every 10;
#   3. a resume from the step-10 sharded checkpoint to step 20, compared step by step with the first run.
# Usage, from the repository root, with artifacts/arith-warmstart made by `stare-lit warmstart`:
#   bash benchmarks/gpu_check.sh OUT_DIR
set -uo pipefail
out=${1:-runs/gpu_check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 CUBLAS_WORKSPACE_CONFIG=:4096:8  # deterministic cuBLAS for the CUDA resume test
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/versions.txt"
python3 -c "import torch, lightning, transformers; print('torch', torch.__version__, '| lightning', lightning.__version__,
'| transformers', transformers.__version__)" | tee -a "$out/versions.txt"

python3 -m pytest -q -p no:warnings tests/test_resume.py 2>&1 | grep -E "^E |passed|failed" | tee "$out/pytest_resume.txt"

run() { python3 -m stare_lit.commands.cli fit --config configs/fsdp_gpu_smoke.yaml --trainer.default_root_dir "$out/$1" \
          --trainer.logger.init_args.save_dir "$out/$1" "${@:2}" > "$out/$1.log" 2>&1; echo "$1: exit $?"; }
run first
ckpt=$(ls -d "$out"/first/version_0/checkpoints/*step=10.ckpt | head -1)
run resumed --ckpt_path "$ckpt"

python3 - "$out" <<'PY' | tee "$out/summary.txt"
import sys, pandas as pd
out = sys.argv[1]
def steps(name):
    m = pd.read_csv(f"{out}/{name}/version_0/metrics.csv")
    return m.groupby("step").first()
a, b = steps("first"), steps("resumed")
cols = ["train/reward", "train/loss", "train/entropy", "train/grad_norm", "scheme/w", "train/lr"]
cols = [c for c in cols if c in a.columns]
both = a.loc[b.index.intersection(a.index), cols]
print("steps compared:", list(both.index))
print("max |first - resumed| per metric:")
print((both - b.loc[both.index, cols]).abs().max().to_string())
print("first run, per step: generate_s, update_s, trained tokens/s (median over steps 2-19)")
print(a[["time/generate_s", "time/update_s", "train/trained_tokens_per_s"]].iloc[2:].median().to_string())
print("val/mean@4 first run:", a["val/mean@4"].dropna().round(4).tolist())
PY

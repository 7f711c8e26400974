#!/usr/bin/env bash
# Re-run every benchmark that needs no GPU, one at a time, on this tree (issue 19, item 3).
#   bash benchmarks/run_all.sh            # from the repository root, with the venv that has ".[bench]"
#   ONLY="code_reward_cost rollout" bash benchmarks/run_all.sh   # a subset, by result name
# Fits in ~25 min on 2 idle CPU cores (sizes cut from the scripts' defaults, listed below). Each results
# file gets the `uptime` before and after its benchmark and the benchmark's wall time appended; the
# total is printed at the end. Run it on a machine with nothing else running: the load is in every file.
# Not re-run here (their tables in benchmarks/README.md stay labelled with their commit):
#   vs_trl.py --vocab 32000 (~8 min, 7.5 GiB) and lora_memory.py (~10 min): they would not fit the budget.
# Cuts: rollout.py --repeats 3 (default 6); memory.py only fwd+bwd at 151,936 and the variants that decide the
# chunk size (naive, head@1024, head@55), 2 processes x 1 pass each; vs_trl.py 2 runs x 8 steps (default).
set -uo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
start=$(date +%s)
bench() {  # bench RESULT_NAME command... : run it, then append uptime before/after and its wall time
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="rollout overhead": a subset
  local before t0 rc; before=$(uptime); t0=$(date +%s)
  echo "== $name: $* (uptime: $before)"
  "$@" > "/tmp/run_all_$name.log" 2>&1; rc=$?
  local after; after=$(uptime)
  printf '\n- run_all.sh: `%s`, exit %s, %ss; commit %s\n- uptime before: %s\n- uptime after: %s\n' \
    "$*" "$rc" "$(( $(date +%s) - t0 ))" "$(git rev-parse --short HEAD)" "$before" "$after" \
    >> "benchmarks/results/$name.md"
  echo "   exit $rc, $(( $(date +%s) - t0 )) s (log: /tmp/run_all_$name.log)"
}
[ -d artifacts/sums-warmstart ] || { echo "== warmstart --task partial_sums"; "$py" -m stare_lit.commands.cli warmstart --task partial_sums > /tmp/run_all_warmstart_sums.log 2>&1; }
[ -d artifacts/arith-warmstart ] || { echo "== warmstart (arithmetic)"; "$py" -m stare_lit.commands.cli warmstart > /tmp/run_all_warmstart_arith.log 2>&1; }
bench step_profile "$py" benchmarks/step_profile.py
bench vs_trl_sums-warmstart "$py" benchmarks/vs_trl.py --task partial_sums --model artifacts/sums-warmstart --skip-equality
bench vs_trl_arith-warmstart "$py" benchmarks/vs_trl.py --model artifacts/arith-warmstart --skip-equality
bench vs_trl "$py" benchmarks/vs_trl.py
bench rollout "$py" benchmarks/rollout.py --repeats 3
bench compile_decode_partial_sums "$py" benchmarks/compile_decode.py --model artifacts/sums-warmstart --task partial_sums
bench overhead "$py" benchmarks/overhead.py
bench update_skip "$py" benchmarks/update_skip.py --model artifacts/arith-warmstart
bench code_reward_cost "$py" benchmarks/code_reward_cost.py
bench scoring_pool "$py" benchmarks/scoring_pool.py
bench code_format_cost "$py" benchmarks/code_format_cost.py
bench memory_chunk_vocab "$py" benchmarks/memory.py --vocab 151936 --modes fwd+bwd --variants naive head@1024 head@55 \
  --repeats 2 --iters 1 --name memory_chunk_vocab
echo "total: $(( $(date +%s) - start )) s"

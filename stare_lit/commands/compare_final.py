"""``stare-lit compare --final_samples N``: pass@k to k = N of every run's last policy, beside the policy it started from.

Validation during training samples ``model.validation.samples`` (16 by default) per prompt. Whether RL narrows the
set of prompts a policy can solve shows only at larger k: Yue et al. (arXiv 2504.13837) measured that at large k the
RL model's pass@k falls below its base model's. So once the runs are done, each run's ``last.ckpt`` and the policy
the runs started from are sampled N times per validation prompt by ``stare-lit evaluate`` — the same prompts, the
same evaluation stream, the same scoring — each in its own process, ``jobs`` at a time::

    OUT/start/final_n<N>/                # the runs' own model.policy before any RL (the warm start)
    OUT/<scheme>/seed<k>/final_n<N>/     # a run's last.ckpt

Each holds evaluate's results.jsonl, summary.md and summary.csv. The start is evaluated with the first run's saved
config, so it sees the data and sampling the runs saw, ``--extra_args`` included. Then OUT/final_pass_at_k.csv (one
row per policy and k) and OUT/final_pass_at_k.png (mean over seeds, a band of ± one std; the start dashed). A
finished evaluation (its summary.csv) is kept when the same compare runs again.
"""

from __future__ import annotations

import csv
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from stare_lit.commands.compare_plots import plot_pass_at_k
from stare_lit.commands.compare_runs import Runs
from stare_lit.errors import check

START = "start"  # the policy the runs started from, as the table and the plot name it


def evaluation_dir(run_or_out: Path, n: int) -> Path:
    return run_or_out / f"final_n{n}"


def evaluate_one(run_config: Path, ckpt_path: Path | None, out: Path, n: int, threads: int, runs: Runs) -> bool:
    """``stare-lit evaluate`` of one policy into ``out`` unless already there; False if the comparison was stopped."""
    if (out / "summary.csv").exists():
        return True
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "stare_lit.commands.cli", "evaluate", "--run_config", str(run_config), "--n", str(n),
           "--out_dir", str(out)] + (["--ckpt_path", str(ckpt_path)] if ckpt_path is not None else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    with open(out / "log.txt", "w") as log:
        code = runs.run(cmd, log, env)
    if code is None or (code != 0 and runs.signum is not None):
        return False
    if code != 0:
        raise RuntimeError(f"compare: evaluate of {ckpt_path or run_config} failed (exit {code}); see {out / 'log.txt'}")
    return True


def evaluate_all(out: Path, run_dirs: dict[tuple[str, int], Path], n: int, jobs: int, threads: int,
                 runs: Runs) -> bool:
    """Evaluate the start policy and every run's last.ckpt with n samples per prompt; False if stopped."""
    first = next(iter(run_dirs.values()))
    missing = next((d for d in run_dirs.values() if not (d / "run" / "checkpoints" / "last.ckpt").is_file()), None)
    check(missing is None, f"compare --final_samples evaluates each run's run/checkpoints/last.ckpt, and {missing} has "
                           "none; give the runs a lightning.pytorch.callbacks.ModelCheckpoint with save_last: true")
    todo = [(first / "run" / "config.yaml", None, evaluation_dir(out / START, n))]
    todo += [(d / "run" / "config.yaml", d / "run" / "checkpoints" / "last.ckpt", evaluation_dir(d, n))
             for d in run_dirs.values()]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return all(pool.map(lambda job: evaluate_one(*job, n, threads, runs), todo))


def read_summary(path: Path) -> dict[str, float]:
    """evaluate's summary.csv as {metric: value}."""
    with open(path) as f:
        return {row["metric"]: float(row["value"]) for row in csv.DictReader(f)}


def final_table(out: Path, run_dirs: dict[tuple[str, int], Path], n: int) -> pd.DataFrame:
    """One row per policy (the start, then every run) and k: columns scheme, seed, k, pass@k, never_solved,
    distinct_correct (the last two per policy, repeated over its k)."""
    policies = [(START, -1, out / START)] + [(scheme, seed, d) for (scheme, seed), d in run_dirs.items()]
    rows = []
    for scheme, seed, where in policies:
        summary = read_summary(evaluation_dir(where, n) / "summary.csv")
        rows += [{"scheme": scheme, "seed": seed, "k": int(key.split("@")[1]), "pass@k": value,
                  "never_solved": summary["never_solved"], "distinct_correct": summary["distinct_correct"]}
                 for key, value in summary.items() if key.startswith("pass@")]
    return pd.DataFrame(rows)


def final_verdict(table: pd.DataFrame, n: int) -> list[str]:
    """One line per policy: pass@1, pass@n and the share never solved in n (mean ± std over seeds)."""
    per_policy = table.pivot_table(index=["scheme", "seed"], columns="k", values="pass@k", sort=False)
    per_policy["never"] = table.groupby(["scheme", "seed"], sort=False)["never_solved"].first()
    lines = [f"pass@k of the last policies, {n} samples per validation prompt (start: before any RL):"]
    for scheme, seeds in per_policy.groupby(level="scheme", sort=False):
        cells = [f"{name} {cell(seeds[col])}" for name, col in (("pass@1", 1), (f"pass@{n}", n))]
        never = seeds["never"]
        lines.append(f"  {scheme}: {', '.join(cells)}, {100 * never.mean():.1f}% never solved"
                     + (f" ± {100 * never.std():.1f}% ({len(seeds)} seeds)" if len(seeds) > 1 else ""))
    return lines


def cell(values: pd.Series) -> str:
    """Mean, and ± std where there are several seeds."""
    return f"{values.mean():.3f}" + (f" ± {values.std():.3f}" if len(values) > 1 else "")


def write_final(out: Path, run_dirs: dict[tuple[str, int], Path], n: int) -> list[str]:
    """The table and the plot into out/; returns the verdict lines and the paths."""
    table = final_table(out, run_dirs, n)
    table.to_csv(out / "final_pass_at_k.csv", index=False)
    plot_pass_at_k(table, out / "final_pass_at_k.png", f"pass@k of the last policies, {n} samples per prompt", START)
    return final_verdict(table, n) + [f"pass@k to {n}: {out / 'final_pass_at_k.png'}, {out / 'final_pass_at_k.csv'}"]

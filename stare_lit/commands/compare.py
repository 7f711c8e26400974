"""``stare-lit compare``: the same task and model under several schemes × seeds, one table.

    stare-lit compare                                   # GRPO vs STARE vs STEER vs ERPO, 3 seeds, offline default
    stare-lit compare --schemes '[configs/schemes/grpo.yaml, configs/schemes/stare_c2.yaml]' --seeds '[0]'

Each run is ``stare-lit fit --config BASE --config SCHEME`` in its own process (a crash or a
leak in one run cannot touch another) writing to OUT/<scheme>/seed<k>/; a finished run is not
repeated, so an interrupted comparison picks up where it stopped. Then it writes
OUT/summary.md, OUT/summary.csv, OUT/runs.csv and OUT/curves.png (entropy, reward and validation
accuracy against step, one line per scheme, mean over seeds).
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from stare_lit.commands.cli import check_fit
from stare_lit.commands.inputs import check_count, check_file, check_output_dir, check_seed
from stare_lit.errors import check

DEFAULT_SCHEMES = ["configs/schemes/grpo.yaml", "configs/schemes/stare.yaml", "configs/schemes/steer.yaml",
                   "configs/schemes/erpo.yaml"]


def fit_arguments(base: str, scheme: str, seed: int, max_steps: int, out: Path, extra: list[str]) -> list[str]:
    """The ``stare-lit fit`` settings of one scheme × seed, writing to ``out``."""
    return ["--config", base, "--config", scheme, "--seed_everything", str(seed), "--trainer.max_steps", str(max_steps),
            "--trainer.default_root_dir", str(out), "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.logger.init_args.version", "run", "--trainer.enable_progress_bar", "false", *extra]


def run_one(base: str, scheme: str, seed: int, max_steps: int, out: Path, extra: list[str], threads: int) -> float:
    """Train one scheme × seed unless already done; returns the wall time in seconds."""
    done = out / "wall_time_s.txt"
    if done.exists():
        return float(done.read_text())
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "stare_lit.commands.cli", "fit", *fit_arguments(base, scheme, seed, max_steps, out, extra)]
    start = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    if code != 0:
        raise RuntimeError(f"compare: {scheme} seed {seed} failed (exit {code}); see {out / 'log.txt'}")
    wall = time.perf_counter() - start
    done.write_text(f"{wall:.1f}")
    return wall


def steps_until_halved(entropy: pd.Series, window: int = 10) -> float:
    """First step whose rolling-mean entropy is at most half the first window's mean (NaN if never)."""
    smooth = entropy.rolling(window, min_periods=1).mean()
    start = entropy.iloc[:window].mean()
    below = smooth[smooth <= start / 2]
    return float(below.index[0]) if len(below) else math.nan


def window_means(series: pd.Series) -> tuple[float, float, float]:
    """Means over the first, middle and last 10% of a per-step series (NaN steps ignored)."""
    n = len(series)
    tenth = max(1, n // 10)
    return (series.iloc[:tenth].mean(), series.iloc[n // 2 - tenth // 2: n // 2 + tenth // 2 + 1].mean(),
            series.iloc[-tenth:].mean())


def summarise_run(metrics_csv: Path) -> tuple[dict, pd.DataFrame]:
    """One run's row of the table, and its per-step curves."""
    df = pd.read_csv(metrics_csv)
    train = df.dropna(subset=["train/entropy"]).set_index("step")
    val_cols = [c for c in df.columns if c.startswith("val/mean@")]
    val = df.dropna(subset=val_cols[:1]).set_index("step") if val_cols else pd.DataFrame()
    n = len(train)
    third = max(1, n // 10)
    entropy = train["train/entropy"]
    start, middle, end = window_means(entropy)
    row = {
        "entropy_start": start, "entropy_middle": middle, "entropy_end": end,
        "steps_to_half_entropy": steps_until_halved(entropy.reset_index(drop=True)),
    }
    fork = train.get("entropy_monitor/forking_entropy_mean")
    if fork is not None:  # EntropyMonitor with forking_entropy set: mean H at forking positions
        row |= dict(zip(["fork_entropy_start", "fork_entropy_middle", "fork_entropy_end"], window_means(fork)))
        row["fork_share_end"] = window_means(train["entropy_monitor/forking_token_share"])[2]
    row |= {
        "reward_start": train["train/reward"].iloc[:third].mean(),
        "reward_end": train["train/reward"].iloc[-third:].mean(),
        "completion_length": train["train/completion_length"].mean(),
    }
    if val_cols:
        k = int(val_cols[0].split("@")[1])
        final = val.iloc[-1]
        row |= {"mean@k_final": final[val_cols[0]], "mean@k_best": val[val_cols[0]].max(),
                "pass@1_final": final.get("val/pass@1", math.nan), "pass@k_final": final[f"val/pass@{k}"],
                "distinct_correct_final": final.get("val/distinct_correct", math.nan)}
    curves = pd.DataFrame({"entropy": entropy, "reward": train["train/reward"]})
    if fork is not None:
        curves["fork_entropy"] = fork
    if val_cols:
        curves = curves.join(val[[val_cols[0]]].rename(columns={val_cols[0]: "val_mean@k"}), how="outer")
    return row, curves


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' own to_markdown needs the optional tabulate package)."""
    header = [table.index.name or ""] + list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in table.iterrows()]
    return "\n".join(lines)


def plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("entropy", 10, "token entropy (10-step mean)"),
              ("fork_entropy", 10, "entropy at forking positions (10-step mean)"),
              ("reward", 10, "train reward (10-step mean)"), ("val_mean@k", 1, "validation mean@k")]
    panels = [p for p in panels if any(p[0] in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for name, c in curves.items():
        for ax, (col, smooth, _) in zip(axes, panels):
            if col in c:
                s = c[col].dropna()
                ax.plot(s.index, s.rolling(smooth, min_periods=1).mean(), label=name)
    for ax, title in zip(axes, [p[2] for p in panels]):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def check_settings(*, schemes: list[str], seeds: list[int], base: str, max_steps: int, out_dir: str, jobs: int) -> None:
    """Every argument but extra_args (checked with the runs' settings by ``check_fit``): one line each."""
    check(len(schemes) > 0, "compare --schemes is empty; give at least one YAML overlay, e.g. "
                            "[configs/schemes/grpo.yaml, configs/schemes/stare.yaml]")
    check(len(seeds) > 0, "compare --seeds is empty; give at least one seed, e.g. [0]")
    for seed in seeds:
        check_seed(seed, "compare --seeds")
    repeated = next((s for i, s in enumerate(seeds) if s in seeds[:i]), None)
    check(repeated is None, f"compare --seeds lists seed {repeated} twice; give each seed once")
    check_file(base, "compare --base", "stare-lit fit YAML config")
    for scheme in schemes:
        check_file(scheme, "compare --schemes", "YAML overlay")
    names = [Path(scheme).stem for scheme in schemes]
    clash = next((n for i, n in enumerate(names) if n in names[:i]), None)
    check(clash is None, f"compare --schemes: two files are named {clash}, and each scheme's runs go to "
                         f"OUT_DIR/{clash}/; rename one")
    check_count(max_steps, "compare --max_steps", meaning="optimizer steps per run")
    check_count(jobs, "compare --jobs", meaning="runs at once")
    check_output_dir(out_dir, "compare --out_dir")


def compare(
    schemes: list[str] = DEFAULT_SCHEMES,
    seeds: list[int] = [0, 1, 2],  # noqa: B006 - jsonargparse shows it as the default
    base: str = "configs/arithmetic_grpo.yaml",
    max_steps: int = 200,
    out_dir: str = "runs/compare",
    extra_args: list[str] = [],  # noqa: B006
    jobs: int = 1,
) -> Path:
    """Train each scheme with each seed on the same task and model; write a table and plots.

    Args:
        schemes: YAML overlays that set the scheme (and anything else), applied on top of ``base``.
        seeds: seeds of the RL runs (the warm-started policy is the same for all).
        base: the base config (task, model, optimizer, logging).
        max_steps: optimizer steps per run.
        out_dir: where runs, the table (summary.md / .csv) and curves.png go.
        extra_args: more ``stare-lit fit`` arguments for every run.
        jobs: runs at once; each gets cpu_count // jobs threads. On a small CPU, tiny models run
            faster as several 1-thread processes than as one multi-threaded one.

    Returns:
        The output directory.
    """
    check_settings(schemes=schemes, seeds=seeds, base=base, max_steps=max_steps, out_dir=out_dir, jobs=jobs)
    out = Path(out_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    grid = [(scheme, seed) for scheme in schemes for seed in seeds]
    run_dir = lambda scheme, seed: out / Path(scheme).stem / f"seed{seed}"  # noqa: E731
    for scheme in schemes:  # what `stare-lit fit` would refuse, refused now: before any run starts
        check_fit(fit_arguments(base, scheme, seeds[0], max_steps, run_dir(scheme, seeds[0]), extra_args),
                  f"compare: the run of --schemes {scheme} (on --base {base}, with --extra_args)")
    with ThreadPoolExecutor(max_workers=jobs) as pool:  # threads only wait on the subprocesses
        walls = list(pool.map(lambda job: run_one(base, job[0], job[1], max_steps, run_dir(*job), extra_args,
                                                  threads), grid))
    rows, per_scheme = [], {}
    for (scheme, seed), wall in zip(grid, walls):
        row, c = summarise_run(run_dir(scheme, seed) / "run" / "metrics.csv")
        rows.append({"scheme": Path(scheme).stem, "seed": seed, **row, "wall_time_s": wall})
        per_scheme.setdefault(Path(scheme).stem, []).append(c)
    curves = {name: pd.concat(cs).groupby(level=0).mean() for name, cs in per_scheme.items()}
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    numeric = runs.drop(columns=["seed"]).groupby("scheme", sort=False)
    mean, std = numeric.mean(), numeric.std()
    mean.to_csv(out / "summary.csv")
    table = mean.map(lambda v: f"{v:.3f}" if abs(v) < 100 else f"{v:.0f}")
    for col in ["mean@k_final", "mean@k_best", "pass@1_final", "pass@k_final", "distinct_correct_final",
                "entropy_end", "fork_entropy_end"]:
        if col in mean:
            table[col] = [f"{m:.3f} ± {s:.3f}" for m, s in zip(mean[col], std[col].fillna(0))]
    (out / "summary.md").write_text(
        f"{len(seeds)} seeds × {max_steps} steps, base {base}; mean over seeds (± std)\n\n" + markdown(table) + "\n")
    plot(curves, out / "curves.png")
    print((out / "summary.md").read_text())
    print(f"table: {out / 'summary.md'}\ncurves: {out / 'curves.png'}")
    return out

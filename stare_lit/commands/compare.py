"""``stare-lit compare``: the same task and model under several schemes × seeds, one table.

    stare-lit compare                                   # GRPO vs STARE vs STEER vs ERPO, 3 seeds, offline default
    stare-lit compare --schemes '[configs/schemes/grpo.yaml, configs/schemes/stare_c2.yaml]' --seeds '[0]'

Each run is ``stare-lit fit --config BASE --config SCHEME`` in its own process (a crash or a
leak in one run cannot touch another) writing to OUT/<scheme>/seed<k>/. A SIGTERM or Ctrl-C stops
every run at the end of its step with a ``last.ckpt``, and compare exits 128 + the signal with the
command that resumes: run again, it keeps the finished runs and resumes the others (``compare_runs``).
While they run, the console says every 15 s where each run is (step, entropy now, time left;
``compare_progress``). Then it writes
OUT/summary.md (the table, headed in words), OUT/summary.csv and OUT/runs.csv (the same by column
key), OUT/curves.png (entropy, reward and validation accuracy against step, one line per scheme,
mean over seeds), OUT/pass_at_k.png and OUT/pass_at_k.csv (pass@k for every k at the last
validation, per scheme), and prints a short verdict: one line per scheme, then those paths. With
``--final_samples N`` it also samples every run's last policy and the policy the runs started from N
times per validation prompt: pass@k to k = N beside the start (``compare_final``).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from stare_lit.commands.cli import check_fit
from stare_lit.commands.inputs import check_count, check_file, check_output_dir, check_seed
from stare_lit.errors import check
from stare_lit.commands.compare_final import evaluate_all, write_final
from stare_lit.commands.compare_plots import plot, plot_pass_at_k
from stare_lit.commands.compare_progress import ProgressWatcher
from stare_lit.commands.compare_runs import Runs, fit_arguments, run_name, run_one

DEFAULT_SCHEMES = ["configs/schemes/grpo.yaml", "configs/schemes/stare.yaml", "configs/schemes/steer.yaml",
                   "configs/schemes/erpo.yaml"]


PROGRESS_EVERY_S = 15.0  # how often the console says where each run is


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


def read_metrics(metrics_csv: Path, max_steps: int | None = None) -> pd.DataFrame:
    """A run's metrics.csv, cut to its first ``max_steps`` steps (a longer run counts as its prefix: training
    does not depend on max_steps, and the validation after step s is logged at step s − 1)."""
    df = pd.read_csv(metrics_csv)
    return df[df["step"] < max_steps] if max_steps is not None else df


def summarise_run(metrics_csv: Path, max_steps: int | None = None) -> tuple[dict, pd.DataFrame]:
    """One run's row of the table, and its per-step curves (of the first ``max_steps`` steps, if given)."""
    df = read_metrics(metrics_csv, max_steps)
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
    row |= reweighting(train)
    row |= {
        "reward_start": train["train/reward"].iloc[:third].mean(),
        "reward_end": train["train/reward"].iloc[-third:].mean(),
        "completion_length": train["train/completion_length"].mean(),
    }
    all_wrong = train.get("train/all_wrong_groups")  # prompts whose G samples are all wrong: no gradient
    if all_wrong is not None:
        row["all_wrong_start"], _, row["all_wrong_end"] = window_means(all_wrong)
    if val_cols:
        k = int(val_cols[0].split("@")[1])
        pass_k = max(int(c.split("@")[1]) for c in val.columns if c.startswith("val/pass@"))
        final, mean_at_k = val.iloc[-1], val[val_cols[0]].dropna()
        row |= {"mean@k_final": final[val_cols[0]], "mean@k_best": mean_at_k.max(),
                "mean@k_last3": mean_at_k.iloc[-3:].mean(),
                "mean@k_peak_step": float(mean_at_k.idxmax() + 1),  # the validation after step s is logged at s − 1
                "pass@1_final": final.get("val/pass@1", math.nan), "pass@k_final": final[f"val/pass@{pass_k}"],
                "never_solved_final": final.get("val/never_solved", math.nan),
                "distinct_correct_final": final.get("val/distinct_correct", math.nan), "val_k": k, "pass_k": pass_k,
                "validations": len(mean_at_k), "val_step": float(final.name)}
    curves = pd.DataFrame({"entropy": entropy, "reward": train["train/reward"]})
    if fork is not None:
        curves["fork_entropy"] = fork
    if all_wrong is not None:
        curves["all_wrong_groups"] = all_wrong
    if val_cols:
        keep = {val_cols[0]: "val_mean@k", "val/distinct_correct": "val_distinct_correct",
                "val/never_solved": "val_never_solved"}
        curves = curves.join(val[[c for c in keep if c in val]].rename(columns=keep), how="outer")
    return row, curves


def reweighting(train: pd.DataFrame) -> dict[str, float]:
    """Which tokens the scheme reweighted over the run (EntropyMonitor's attribution; {} without it).

    ``reweighted_share``: mean share of tokens with ω ≠ 1 per step; ``reweighted_above_entropy_share``:
    of the reweighted tokens, the share with s > H of their position, each step weighted by how many
    tokens it reweighted (NaN if none ever was); ``reweight_entropy_change``: the mean per step of the
    predicted ΔH of the reweighting alone (first order, per unit step size, per token).
    """
    key = "entropy_monitor/reweighted_share"
    if key not in train:
        return {}
    moved = train[key].fillna(0.0)
    above = train["entropy_monitor/reweighted_above_entropy_share"].fillna(0.0)
    return {"reweighted_share": moved.mean(),
            "reweighted_above_entropy_share": (above * moved).sum() / moved.sum() if moved.sum() > 0 else math.nan,
            "reweight_entropy_change": train["entropy_monitor/entropy_change_pred_reweight"].mean()}


def final_pass_at_k(metrics_csv: Path, max_steps: int | None = None) -> pd.Series:
    """pass@k for every k the last validation logged (``val/pass@k``, stare_lit.ops.sample_accuracy), by k."""
    df = read_metrics(metrics_csv, max_steps)
    cols = sorted((int(c.split("@")[1]), c) for c in df.columns if c.startswith("val/pass@"))
    if not cols:
        return pd.Series(dtype=float)
    last = df.dropna(subset=[cols[0][1]]).iloc[-1]
    return pd.Series({k: float(last[c]) for k, c in cols}, name="pass@k")


def column_words(k: int, pass_k: int) -> dict[str, str]:
    """The summary table's headers, in words, for validation with k samples per prompt and pass@k logged up to
    ``pass_k``."""
    return {
        "entropy_start": "entropy start", "entropy_middle": "entropy middle", "entropy_end": "entropy end",
        "steps_to_half_entropy": "steps to half the start entropy (per seed)", "fork_entropy_start": "fork entropy start",
        "fork_entropy_middle": "fork entropy middle", "fork_entropy_end": "fork entropy end",
        "fork_share_end": "forking tokens at the end", "reweighted_share": "tokens reweighted",
        "reweighted_above_entropy_share": "reweighted tokens above their entropy",
        "reweight_entropy_change": "predicted ΔH of the reweighting", "reward_start": "train reward start",
        "reward_end": "train reward end", "completion_length": "completion tokens",
        "mean@k_final": f"val mean@{k}", "mean@k_best": f"best val mean@{k}",
        "mean@k_last3": f"val mean@{k} over the last 3 validations",
        "mean@k_peak_step": f"best val mean@{k} after step (per seed)", "pass@1_final": "val pass@1",
        "pass@k_final": f"val pass@{pass_k}", "never_solved_final": "val prompts never solved",
        "distinct_correct_final": "distinct correct per prompt",
        "all_wrong_start": "train groups all wrong start", "all_wrong_end": "train groups all wrong end",
        "wall_time_s": "wall time (s)",
    }


PERCENT = ("fork_share_end", "reweighted_share", "reweighted_above_entropy_share", "never_solved_final",
           "all_wrong_start", "all_wrong_end")  # shown as percentages
SPREAD = ("entropy_end", "fork_entropy_end", "reweighted_above_entropy_share", "mean@k_final", "mean@k_best",
          "mean@k_last3", "pass@1_final", "pass@k_final", "never_solved_final", "distinct_correct_final")
PER_SEED = ("steps_to_half_entropy", "mean@k_peak_step")  # shown seed by seed: a mean hides a seed that differs  # shown with ± std over seeds


def format_table(runs: pd.DataFrame) -> pd.DataFrame:
    """The summary table as text, one row per scheme: means over seeds, ± std on the columns that decide,
    percentages for shares, the predicted ΔH in two significant digits, steps to half the entropy per seed."""
    numeric = runs.drop(columns=["seed", "val_k", "pass_k", "validations", "val_step"], errors="ignore").groupby(
        "scheme", sort=False)
    mean, std = numeric.mean(), numeric.std()  # std is NaN for a scheme with one seed: no ± then

    def cell(col: str, m: float, sd: float) -> str:
        if math.isnan(m):
            return "—"
        if col in PERCENT:
            text, spread = f"{100 * m:.1f}%", f" ± {100 * sd:.1f}%"
        elif col == "reweight_entropy_change":
            return f"{m:+.2g}"
        elif abs(m) >= 100:
            return f"{m:.0f}"
        else:
            text, spread = f"{m:.3f}", f" ± {sd:.3f}"
        return text + (spread if col in SPREAD and not math.isnan(sd) else "")

    table = pd.DataFrame({col: [cell(col, m, sd) for m, sd in zip(mean[col], std[col])] for col in mean.columns},
                         index=mean.index)
    for col in (c for c in PER_SEED if c in runs):  # "never": the entropy never halved
        table[col] = [per_seed(group) for _, group in runs.groupby("scheme", sort=False)[col]]
    return table


def per_seed(steps: pd.Series) -> str:
    """Steps seed by seed, "never" for a NaN: 101, never, 87."""
    return ", ".join("never" if math.isnan(v) else f"{v:.0f}" for v in steps)


def verdict(runs: pd.DataFrame) -> list[str]:
    """One line per scheme a newcomer can read without the table (means over seeds) and, where every seed
    validated several times, a second: val mean@k over the last three validations, and after which step it
    was best, seed by seed."""
    lines = []
    for scheme, group in runs.groupby("scheme", sort=False):
        m = group.mean(numeric_only=True)
        line = f"{scheme}: entropy {m['entropy_start']:.3f} → {m['entropy_end']:.3f} nats"
        if "pass@k_final" in m:
            line += (f", {m['distinct_correct_final']:.2f} distinct correct solutions per prompt, "
                     f"pass@1 {m['pass@1_final']:.3f}, pass@{int(m['pass_k'])} {m['pass@k_final']:.3f}")
            if not math.isnan(m.get("never_solved_final", math.nan)):
                line += f", {100 * m['never_solved_final']:.1f}% of prompts never solved"
        lines.append(line + (f" (mean of {len(group)} seeds)" if len(group) > 1 else ""))
        if "validations" in m and group["validations"].min() > 1:  # several validations: how they went
            lines.append(f"  val mean@{int(m['val_k'])} {m['mean@k_last3']:.3f} over the last "
                         f"{min(3, int(group['validations'].min()))} validations, "
                         f"best after step {per_seed(group['mean@k_peak_step'])}"
                         + (" (per seed)" if len(group) > 1 else ""))
    return lines


def markdown(table: pd.DataFrame) -> str:
    """A pipe table (pandas' own to_markdown needs the optional tabulate package)."""
    header = [table.index.name or ""] + list(table.columns)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(i)] + [str(v) for v in row]) + " |" for i, row in table.iterrows()]
    return "\n".join(lines)


def check_settings(*, schemes: list[str], seeds: list[int], base: str, max_steps: int, out_dir: str, jobs: int,
                   final_samples: int) -> None:
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
    check(isinstance(final_samples, int) and not isinstance(final_samples, bool) and final_samples >= 0,
          f"compare --final_samples is {final_samples!r}; give 0 (no final evaluation) or the samples per prompt of "
          "the last policies' pass@k, e.g. 64")
    check_output_dir(out_dir, "compare --out_dir")


def write_summary(out: Path, jobs: list[tuple[str, int]], walls: list[float], seeds: list[int], max_steps: int,
                  base: str) -> list[str]:
    """Summarise every run into out/ (tables, curves, pass@k); returns the verdict lines and the paths."""
    rows, per_scheme, pass_rows = [], {}, []
    for (scheme, seed), wall in zip(jobs, walls):
        metrics = out / Path(scheme).stem / f"seed{seed}" / "run" / "metrics.csv"
        row, c = summarise_run(metrics, max_steps)
        rows.append({"scheme": Path(scheme).stem, "seed": seed, **row, "wall_time_s": wall})
        per_scheme.setdefault(Path(scheme).stem, []).append(c)
        pass_rows += [{"scheme": Path(scheme).stem, "seed": seed, "k": k, "pass@k": v}
                      for k, v in final_pass_at_k(metrics, max_steps).items()]
    curves = {name: pd.concat(cs).groupby(level=0).mean() for name, cs in per_scheme.items()}
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    runs.drop(columns=["seed"]).groupby("scheme", sort=False).mean().to_csv(out / "summary.csv")
    k = int(runs["val_k"].iloc[0]) if "val_k" in runs else 0
    pass_k = int(runs["pass_k"].iloc[0]) if "pass_k" in runs else 0
    table = format_table(runs)
    table = table.rename(columns=column_words(k, pass_k))
    (out / "summary.md").write_text(
        f"{len(seeds)} seed(s) × {max_steps} steps, base {base}; mean over seeds (± std). Start, middle and end: means "
        f"over the first, middle and last 10% of the steps; validation: the last one ({k} samples per prompt)\n\n"
        + markdown(table) + "\n")
    plot(curves, out / "curves.png")
    paths = [f"table:  {out / 'summary.md'}", f"curves: {out / 'curves.png'}"]
    if pass_rows:
        pass_at_k = pd.DataFrame(pass_rows)
        pass_at_k.to_csv(out / "pass_at_k.csv", index=False)
        plot_pass_at_k(pass_at_k, out / "pass_at_k.png",
                       f"pass@k at the last validation, k = 1 … {pass_at_k['k'].max()}")
        paths.append(f"pass@k: {out / 'pass_at_k.png'}")
    return verdict(runs) + [""] + paths


def compare(
    schemes: list[str] = DEFAULT_SCHEMES,
    seeds: list[int] = [0, 1, 2],  # noqa: B006 - jsonargparse shows it as the default
    base: str = "configs/arithmetic_grpo.yaml",
    max_steps: int = 200,
    out_dir: str = "runs/compare",
    extra_args: list[str] = [],  # noqa: B006
    jobs: int = 1,
    final_samples: int = 0,
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
        final_samples: after the runs, sample each run's last policy and the policy they started from
            this many times per validation prompt (``stare-lit evaluate``): pass@k to k = final_samples
            into final_pass_at_k.png / .csv. 0: none.

    Returns:
        The output directory.
    """
    check_settings(schemes=schemes, seeds=seeds, base=base, max_steps=max_steps, out_dir=out_dir, jobs=jobs,
                   final_samples=final_samples)
    out = Path(out_dir)
    threads = max(1, (os.cpu_count() or 1) // jobs)
    grid = [(scheme, seed) for scheme in schemes for seed in seeds]
    run_dir = lambda scheme, seed: out / Path(scheme).stem / f"seed{seed}"  # noqa: E731
    for scheme in schemes:  # what `stare-lit fit` would refuse, refused now: before any run starts
        check_fit(fit_arguments(base, scheme, seeds[0], max_steps, run_dir(scheme, seeds[0]), extra_args),
                  f"compare: the run of --schemes {scheme} (on --base {base}, with --extra_args)")
    watch = ProgressWatcher({run_name(*job): run_dir(*job) / "run" / "metrics.csv" for job in grid}, max_steps, jobs,
                            every=PROGRESS_EVERY_S)
    print(f"compare: {len(grid)} runs of {max_steps} steps, {jobs} at a time; each run's console goes to its log.txt",
          flush=True)
    runs = Runs()
    with runs.handling_signals(), watch, ThreadPoolExecutor(max_workers=jobs) as pool:  # threads wait on processes
        walls = list(pool.map(lambda job: run_one(base, job[0], job[1], max_steps, run_dir(*job), extra_args,
                                                  threads, runs, watch), grid))
    evaluated, named_runs = True, {(Path(scheme).stem, seed): run_dir(scheme, seed) for scheme, seed in grid}
    if final_samples and None not in walls:
        print(f"compare: sampling the start policy and {len(grid)} last policies {final_samples} times per "
              "validation prompt", flush=True)
        with runs.handling_signals():
            evaluated = evaluate_all(out, named_runs, final_samples, jobs, threads, runs)
    if runs.signum is not None and (None in walls or not evaluated):
        name = signal.Signals(runs.signum).name
        left = (f"{walls.count(None)} of {len(grid)} runs unfinished (each resumes from its last.ckpt, or starts "
                "again if it saved none)" if None in walls else
                "every run finished, the final evaluations not (the finished ones are kept)")
        print(f"compare: stopped by {name}: {left}; nothing summarised\n"
              f"to resume: {resume_command(schemes, seeds, base, max_steps, out_dir, extra_args, jobs, final_samples)}",
              file=sys.stderr, flush=True)
        sys.exit(128 + runs.signum)
    lines = write_summary(out, grid, walls, seeds, max_steps, base)
    if final_samples:
        lines += [""] + write_final(out, named_runs, final_samples)
    print("\nVerdict (seed mean where several; entropy: first → last 10% of steps; the rest at the last validation):")
    print("\n".join(lines))
    return out


def resume_command(schemes: list[str], seeds: list[int], base: str, max_steps: int, out_dir: str,
                   extra_args: list[str], jobs: int, final_samples: int) -> str:
    """The command that runs the same comparison again, every setting spelt out (a shell line)."""
    settings = {"schemes": json.dumps(schemes), "seeds": json.dumps(seeds), "base": base, "max_steps": max_steps,
                "out_dir": out_dir, "extra_args": json.dumps(extra_args), "jobs": jobs,
                "final_samples": final_samples}
    return shlex.join(["stare-lit", "compare", *(x for key, value in settings.items() for x in (f"--{key}", str(value)))])

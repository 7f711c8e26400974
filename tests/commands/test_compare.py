"""`stare-lit compare`'s per-run summary: the table's columns from a hand-made metrics.csv."""

import math
import os

import pandas as pd
import pytest

from stare_lit.commands.compare import summarise_run, window_means, write_summary
from stare_lit.commands.compare_progress import ProgressWatcher, clock, read_progress
from stare_lit.ops.metrics import pass_at_k, sample_accuracy


def test_window_means_first_middle_last_tenth():
    s = pd.Series(range(20), dtype=float)  # tenth = 2: [0, 1], [9, 10, 11] (n//2 ± 1), [18, 19]
    assert window_means(s) == (0.5, 10.0, 18.5)


def test_summary_has_fork_entropy_pass_at_1_pass_at_n_and_distinct(tmp_path):
    steps = range(20)
    train = pd.DataFrame({"step": steps, "train/entropy": [1.0 - 0.05 * i for i in steps],
                          "train/reward": 0.5, "train/completion_length": 26.0,
                          "entropy_monitor/forking_entropy_mean": [1.2] * 10 + [0.6] * 10,
                          "entropy_monitor/forking_token_share": 0.1})
    val = pd.DataFrame({"step": [9, 19], "val/mean@16": [0.3, 0.5], "val/pass@1": [0.3, 0.5],
                        "val/pass@2": [0.4, 0.6], "val/pass@16": [0.9, 0.8], "val/distinct_correct": [4.0, 2.5]})
    path = tmp_path / "metrics.csv"
    pd.concat([train, val]).to_csv(path, index=False)
    row, curves = summarise_run(path)
    assert row["entropy_start"] == pytest.approx(0.975) and row["entropy_end"] == pytest.approx(0.075)
    assert row["fork_entropy_start"] == 1.2 and row["fork_entropy_end"] == 0.6 and row["fork_share_end"] == 0.1
    # first-10 mean 0.775, half 0.3875; the 10-step rolling mean at step j is 1 - 0.05 (j - 4.5): <= 0.3875 from j = 17
    assert row["steps_to_half_entropy"] == 17
    assert (row["mean@k_final"], row["pass@1_final"], row["pass@k_final"]) == (0.5, 0.5, 0.8)  # pass@16, not @2
    assert row["distinct_correct_final"] == 2.5 and row["mean@k_best"] == 0.5 and row["pass_k"] == 16
    assert row["mean@k_last3"] == 0.4 and row["mean@k_peak_step"] == 20 and math.isnan(row["never_solved_final"])
    assert {"entropy", "fork_entropy", "reward", "val_mean@k", "val_distinct_correct"} <= set(curves.columns)
    assert not math.isnan(curves["val_mean@k"].dropna().iloc[-1])
    # the first 10 steps of the same run: its validation after step 10 (logged at step 9) is the last one
    row, curves = summarise_run(path, max_steps=10)
    assert (row["mean@k_final"], row["pass@k_final"], row["distinct_correct_final"]) == (0.3, 0.9, 4.0)
    assert row["entropy_end"] == pytest.approx(0.55) and curves.index.max() == 9  # the last tenth: step 9


@pytest.mark.parametrize("name", ["main", "protocol", "protocol_baselines", "above_entropy", "above_entropy_long",
                                  "countdown"])
def test_compare_configs_parse_and_name_existing_files(name):
    """configs/compare/*.yaml are `stare-lit compare --config` files whose base and schemes exist."""
    from pathlib import Path

    from jsonargparse import ArgumentParser

    from stare_lit.commands.compare import compare

    root = Path(__file__).parents[2]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(compare)
    cfg = parser.parse_path(str(root / "configs" / "compare" / f"{name}.yaml"))
    assert (root / cfg.base).is_file()
    assert cfg.schemes and all((root / s).is_file() for s in cfg.schemes)
    assert cfg.max_steps >= 300 and cfg.jobs in (2, 3)  # 3: the main job, one 1-thread run per scheme


# ---------------------------------------------------------------- the summary of several runs, pass@k, verdict

# correct samples (of n = 4) per prompt at the last validation, per scheme and seed
CORRECT = {("grpo", 0): [[1, 0, 0, 0], [1, 1, 1, 1]], ("grpo", 1): [[1, 1, 0, 0], [0, 0, 0, 0]],
           ("stare_above_entropy", 0): [[1, 0, 1, 0], [1, 1, 0, 1]]}


# val/mean@4 of the two validations before the last (logged at steps 4 and 9: after steps 5 and 10)
EARLY = {("grpo", 0): (0.0, 0.0), ("grpo", 1): (0.1, 0.5), ("stare_above_entropy", 0): (0.0, 0.0)}


def fake_run(out, scheme, seed, correct, entropy_end, never_solved=False):
    """A run's metrics.csv: 20 train steps (entropy 0.3 → entropy_end, a reweighting on steps 10–19), validations
    logged at steps 4 and 9 (mean@4 from EARLY, the rest 0) and 19, whose numbers are sample_accuracy's on
    ``correct`` (and, with ``never_solved``, the share of prompts no sample solved, as val/never_solved)."""
    steps = range(20)
    train = pd.DataFrame({"step": steps, "train/entropy": [0.3] * 2 + [entropy_end] * 18, "train/reward": 0.5,
                          "train/completion_length": 26.0,
                          "entropy_monitor/reweighted_share": [0.0] * 10 + [0.02] * 5 + [0.04] * 5,
                          "entropy_monitor/reweighted_above_entropy_share": [float("nan")] * 10 + [1.0] * 5 + [0.25] * 5,
                          "entropy_monitor/entropy_change_pred_reweight": [0.0] * 10 + [0.002] * 10})
    texts = [["a", "b", "c", "d"]] * len(correct)
    final = {f"val/{k}": v for k, v in sample_accuracy([[bool(c) for c in row] for row in correct], texts).items()}
    if not never_solved:  # a run from before validation logged it (sample_accuracy's never_solved)
        del final["val/never_solved"]
    else:
        assert final["val/never_solved"] == sum(not any(row) for row in correct) / len(correct)
    early = [{"step": step, **{k: 0.0 for k in final}, "val/mean@4": m} for step, m in zip((4, 9), EARLY[scheme, seed])]
    val = pd.DataFrame([*early, {"step": 19, **final}])
    path = out / scheme / f"seed{seed}" / "run" / "metrics.csv"
    path.parent.mkdir(parents=True)
    pd.concat([train, val]).to_csv(path, index=False)


def test_summary_pass_at_k_plot_and_verdict_from_the_runs(tmp_path):
    for (scheme, seed), correct in CORRECT.items():
        fake_run(tmp_path, scheme, seed, correct, entropy_end=0.1 if scheme == "grpo" else 0.3,
                 never_solved=scheme == "grpo")  # a run without val/never_solved: the verdict leaves it out
    jobs = [(f"configs/schemes/{scheme}.yaml", seed) for scheme, seed in CORRECT]
    lines = write_summary(tmp_path, jobs, [60.0, 70.0, 80.0], [0, 1], 20, "base.yaml")

    # pass@k for every k, from sample_accuracy, and by hand: grpo seed 0 has c = 1 and 4 of n = 4
    curve = pd.read_csv(tmp_path / "pass_at_k.csv")
    assert sorted(curve["k"].unique()) == [1, 2, 3, 4]
    g0 = curve[(curve.scheme == "grpo") & (curve.seed == 0)].set_index("k")["pass@k"]
    assert g0[2] == pytest.approx((pass_at_k(4, 1, 2) + 1.0) / 2) == pytest.approx((0.5 + 1.0) / 2)
    assert g0[3] == pytest.approx((0.75 + 1.0) / 2)
    # the plotted line is the mean over seeds of those numbers
    from stare_lit.commands.compare_plots import plot_pass_at_k

    fig = plot_pass_at_k(curve, tmp_path / "again.png", "pass@k")
    lines_by_label = {line.get_label(): line for line in fig.axes[0].get_lines()}
    grpo = lines_by_label["grpo (2 seeds)"]
    for k, y in zip(grpo.get_xdata(), grpo.get_ydata()):
        expected = [sample_accuracy([[bool(c) for c in row] for row in CORRECT[("grpo", s)]])[f"pass@{k}"] for s in (0, 1)]
        assert y == pytest.approx(sum(expected) / 2)
    assert (tmp_path / "pass_at_k.png").read_bytes()[:4] == b"\x89PNG"

    # the attribution columns: steps weighted by how many tokens they reweighted
    runs = pd.read_csv(tmp_path / "runs.csv")
    row = runs.iloc[0]
    assert row["reweighted_above_entropy_share"] == pytest.approx((5 * 0.02 * 1.0 + 5 * 0.04 * 0.25) / (5 * 0.02 + 5 * 0.04))
    assert row["reweighted_share"] == pytest.approx(0.3 / 20) and row["reweight_entropy_change"] == pytest.approx(0.001)

    # headers in words, not column keys
    table = (tmp_path / "summary.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| scheme"))
    assert "entropy end" in header and "val pass@4" in header and "reweighted tokens above their entropy" in header
    assert "_" not in header.replace("stare_above_entropy", "")  # no column key left
    grpo_row = next(line for line in table.splitlines() if line.startswith("| grpo"))
    assert "| never, never |" in grpo_row  # per seed: 0.1 never reaches half of the first 10 steps' mean 0.14
    assert "| 50.0% ± 0.0% |" in grpo_row and "| 1.5% |" in grpo_row and "| +0.001 |" in grpo_row
    assert "±" not in next(line for line in table.splitlines() if line.startswith("| stare_above"))  # one seed
    # mean@4 at the last validation: grpo 5/8 and 2/8; the mean of the last three validations and the step after which
    # the best one came, per seed (seed 1's best, 0.5, was the validation after step 10)
    assert runs["mean@k_last3"].tolist() == pytest.approx([(0 + 0 + 5 / 8) / 3, (0.1 + 0.5 + 2 / 8) / 3, (5 / 8) / 3])
    assert runs["mean@k_peak_step"].tolist() == [20, 10, 20]
    assert "val mean@4 over the last 3 validations" in header and "best val mean@4 after step (per seed)" in header
    assert "| 20, 10 |" in grpo_row and f"| {((0 + 0 + 5 / 8) / 3 + (0.1 + 0.5 + 2 / 8) / 3) / 2:.3f} ± " in grpo_row
    # never solved: grpo seed 0 solved both prompts, seed 1 one of two
    assert "| 25.0% ± 35.4% |" in grpo_row and "val prompts never solved" in header

    # the verdict: a line per scheme (and one on its validations, as there were several), then the paths
    # distinct correct (the 4 samples' texts all differ): grpo (1 + 4) / 2 and (2 + 0) / 2 → 1.75; stare (2 + 3) / 2
    assert lines[0] == ("grpo: entropy 0.300 → 0.100 nats, 1.75 distinct correct solutions per prompt, "
                        f"pass@1 {(0.25 + 1 + 0.5 + 0) / 4:.3f}, pass@4 {(1 + 1 + 1 + 0) / 4:.3f}, "
                        "25.0% of prompts never solved (mean of 2 seeds)")
    assert lines[1] == (f"  val mean@4 {((0 + 0 + 5 / 8) / 3 + (0.1 + 0.5 + 2 / 8) / 3) / 2:.3f} over the last 3 "
                        "validations, best after step 20, 10 (per seed)")
    assert lines[2] == ("stare_above_entropy: entropy 0.300 → 0.300 nats, 2.50 distinct correct solutions per prompt, "
                        f"pass@1 {5 / 8:.3f}, pass@4 1.000")  # no val/never_solved logged: not said
    assert lines[3] == f"  val mean@4 {5 / 8 / 3:.3f} over the last 3 validations, best after step 20"
    assert lines[5:] == [f"table:  {tmp_path / 'summary.md'}", f"curves: {tmp_path / 'curves.png'}",
                         f"pass@k: {tmp_path / 'pass_at_k.png'}"]


def write_steps(metrics, steps: int, at: float) -> None:
    """A metrics.csv of steps 0 … steps − 1 (entropy 0.5, the last 10 at 0.2), written by the logger at time ``at``."""
    pd.DataFrame({"step": range(steps), "train/entropy": [0.5] * (steps - 10) + [0.2] * 10,
                  "train/reward": 0.25}).to_csv(metrics, index=False)
    os.utime(metrics, (at, at))


def test_read_progress_says_the_last_step_and_when_it_was_written(tmp_path):
    metrics = tmp_path / "metrics.csv"
    assert read_progress(metrics) is None  # not there yet
    metrics.write_text("step,train/entropy,train/reward\n")
    assert read_progress(metrics) is None  # header only
    write_steps(metrics, 30, at=1000.0)
    assert read_progress(metrics) == (29, pytest.approx(0.2), pytest.approx(0.25), 1000.0)  # the last 10 steps


def test_progress_lines_time_left_from_the_steps_after_the_first_logged_one(tmp_path):
    grpo, stopped = tmp_path / "grpo.csv", tmp_path / "stopped.csv"
    write_steps(stopped, 40, at=500.0)  # a run stopped by an earlier compare after 40 steps, to resume
    said = []
    watch = ProgressWatcher({"grpo seed 0": grpo, "stare seed 0": tmp_path / "none.csv", "x seed 1": stopped,
                             "y seed 0": tmp_path / "y.csv"}, max_steps=100, jobs=2,
                            echo=lambda text, flush: said.append(text))
    watch.done("y seed 0", 50.0, earlier=True)  # finished by an earlier compare: done, not queued
    watch.start("grpo seed 0", tmp_path / "log.txt")
    watch.start("stare seed 0", tmp_path / "log2.txt")
    # The first flush (10 steps, after the start-up): one point, no speed yet.
    write_steps(grpo, 10, at=1000.0)
    lines = watch.report()
    assert lines[0].split() == ["grpo", "seed", "0", "step", "10/100", "entropy", "0.200", "reward", "0.25", "time",
                                "left:", "estimating…"]
    assert lines[1].split() == ["stare", "seed", "0", "starting"]
    assert lines[2] == "2 running, 1 queued, 1 of 4 done; all done in: estimating…"
    # 20 more steps in 40 s: 2 s per step (what the start-up took before step 10 does not count), 70 steps left
    write_steps(grpo, 30, at=1040.0)
    lines = watch.report()
    assert lines[0].split()[-2:] == ["~2:20", "left"]
    # left: 70 + 100 (starting) + 60 (the stopped run, queued) steps at 2 s per step, 2 at a time
    assert lines[2] == "2 running, 1 queued, 1 of 4 done; all done in ~3:50"

    watch.stopped("grpo seed 0", tmp_path / "last.ckpt")  # a signal: grpo saved and stopped, no longer running
    assert said[-1].endswith(f"grpo seed 0: stopped; it resumes from {tmp_path / 'last.ckpt'}")
    assert watch.report()[-1].startswith("1 running, 2 queued, 1 of 4 done")
    watch.start("grpo seed 0", tmp_path / "log.txt", resume=tmp_path / "last.ckpt")  # resumed: points anew
    assert said[-1].endswith(f"grpo seed 0: resumed from {tmp_path / 'last.ckpt'} ({tmp_path / 'log.txt'})")
    assert watch.report()[1].startswith("grpo seed 0") and watch.report()[1].endswith("time left: estimating…")
    watch.done("grpo seed 0", 200.0)
    assert said[-1].endswith("grpo seed 0: done in 3:20") and clock(3725) == "1:02:05"


def test_the_resume_command_gives_back_every_setting():
    import shlex

    from jsonargparse import ArgumentParser

    from stare_lit.commands.compare import compare, resume_command

    settings = dict(schemes=["configs/schemes/grpo.yaml", "my dir/stare.yaml"], seeds=[0, 3], base="configs/b.yaml",
                    max_steps=40, out_dir="runs/x y", extra_args=['--trainer.callbacks+={"class_path": "a.B"}'], jobs=2,
                    final_samples=64)
    words = shlex.split(resume_command(**settings))
    assert words[:2] == ["stare-lit", "compare"]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(compare)
    assert vars(parser.parse_args(words[2:])) == settings


def test_summary_has_the_all_wrong_and_never_solved_shares(tmp_path):
    steps = range(20)  # all wrong groups 0.5 in the first tenth (steps 0, 1), 0.25 in the last (18, 19)
    train = pd.DataFrame({"step": steps, "train/entropy": 0.3, "train/reward": 0.5, "train/completion_length": 26.0,
                          "train/all_wrong_groups": [0.5] * 2 + [0.4] * 16 + [0.25] * 2})
    val = pd.DataFrame({"step": [9, 19], "val/mean@4": [0.3, 0.5], "val/pass@1": [0.3, 0.5],
                        "val/pass@4": [0.6, 0.75], "val/never_solved": [0.4, 0.25]})
    path = tmp_path / "metrics.csv"
    pd.concat([train, val]).to_csv(path, index=False)
    row, curves = summarise_run(path)
    assert (row["all_wrong_start"], row["all_wrong_end"], row["never_solved_final"]) == (0.5, 0.25, 0.25)
    assert curves["all_wrong_groups"].iloc[0] == 0.5 and curves["val_never_solved"].dropna().tolist() == [0.4, 0.25]

"""`stare-lit compare`'s per-run summary: the table's columns from a hand-made metrics.csv."""

import math

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
    assert row["distinct_correct_final"] == 2.5 and row["mean@k_best"] == 0.5
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


def fake_run(out, scheme, seed, correct, entropy_end):
    """A run's metrics.csv: 20 train steps (entropy 0.3 → entropy_end, a reweighting on steps 10–19), a validation
    at steps 9 and 19 whose numbers are sample_accuracy's on ``correct``."""
    steps = range(20)
    train = pd.DataFrame({"step": steps, "train/entropy": [0.3] * 2 + [entropy_end] * 18, "train/reward": 0.5,
                          "train/completion_length": 26.0,
                          "entropy_monitor/reweighted_share": [0.0] * 10 + [0.02] * 5 + [0.04] * 5,
                          "entropy_monitor/reweighted_above_entropy_share": [float("nan")] * 10 + [1.0] * 5 + [0.25] * 5,
                          "entropy_monitor/entropy_change_pred_reweight": [0.0] * 10 + [0.002] * 10})
    texts = [["a", "b", "c", "d"]] * len(correct)
    final = {f"val/{k}": v for k, v in sample_accuracy([[bool(c) for c in row] for row in correct], texts).items()}
    val = pd.DataFrame([{"step": 9, **{k: 0.0 for k in final}}, {"step": 19, **final}])
    path = out / scheme / f"seed{seed}" / "run" / "metrics.csv"
    path.parent.mkdir(parents=True)
    pd.concat([train, val]).to_csv(path, index=False)


def test_summary_pass_at_k_plot_and_verdict_from_the_runs(tmp_path):
    for (scheme, seed), correct in CORRECT.items():
        fake_run(tmp_path, scheme, seed, correct, entropy_end=0.1 if scheme == "grpo" else 0.3)
    jobs = [(f"configs/schemes/{scheme}.yaml", seed) for scheme, seed in CORRECT]
    lines = write_summary(tmp_path, jobs, [60.0, 70.0, 80.0], [0, 1], 20, "base.yaml")

    # pass@k for every k, from sample_accuracy, and by hand: grpo seed 0 has c = 1 and 4 of n = 4
    curve = pd.read_csv(tmp_path / "pass_at_k.csv")
    assert sorted(curve["k"].unique()) == [1, 2, 3, 4]
    g0 = curve[(curve.scheme == "grpo") & (curve.seed == 0)].set_index("k")["pass@k"]
    assert g0[2] == pytest.approx((pass_at_k(4, 1, 2) + 1.0) / 2) == pytest.approx((0.5 + 1.0) / 2)
    assert g0[3] == pytest.approx((0.75 + 1.0) / 2)
    # the plotted line is the mean over seeds of those numbers
    from stare_lit.commands.compare import plot_pass_at_k

    fig = plot_pass_at_k(curve, tmp_path / "again.png")
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

    # the verdict: one line per scheme, then the paths
    # distinct correct (the 4 samples' texts all differ): grpo (1 + 4) / 2 and (2 + 0) / 2 → 1.75; stare (2 + 3) / 2
    assert lines[0] == ("grpo: entropy 0.300 → 0.100 nats, 1.75 distinct correct solutions per prompt, "
                        f"pass@1 {(0.25 + 1 + 0.5 + 0) / 4:.3f}, pass@4 {(1 + 1 + 1 + 0) / 4:.3f} (mean of 2 seeds)")
    assert lines[1].startswith("stare_above_entropy: entropy 0.300 → 0.300 nats, 2.50 distinct correct")
    assert lines[3:] == [f"table:  {tmp_path / 'summary.md'}", f"curves: {tmp_path / 'curves.png'}",
                         f"pass@k: {tmp_path / 'pass_at_k.png'}"]


def test_progress_lines_say_step_entropy_and_time_left(tmp_path, monkeypatch):
    metrics = tmp_path / "metrics.csv"
    assert read_progress(metrics) is None  # not there yet
    metrics.write_text("step,train/entropy,train/reward\n")
    assert read_progress(metrics) is None  # header only
    pd.DataFrame({"step": range(30), "train/entropy": [0.5] * 20 + [0.2] * 10, "train/reward": 0.25}).to_csv(
        metrics, index=False)
    assert read_progress(metrics) == (29, pytest.approx(0.2), pytest.approx(0.25))  # the last 10 steps
    said = []
    watch = ProgressWatcher({"grpo seed 0": metrics, "stare seed 0": tmp_path / "none.csv", "x seed 1": metrics},
                            max_steps=100, jobs=2, echo=lambda text, flush: said.append(text))
    clock_now = [1000.0]
    monkeypatch.setattr("stare_lit.commands.compare_progress.time.monotonic", lambda: clock_now[0])
    watch.start("grpo seed 0", tmp_path / "log.txt")
    watch.start("stare seed 0", tmp_path / "log2.txt")
    clock_now[0] = 1060.0  # 30 steps in 60 s: 2 s per step, 70 steps left
    lines = watch.report()
    assert lines[0].split() == ["grpo", "seed", "0", "step", "30/100", "entropy", "0.200", "reward", "0.25", "~2:20", "left"]
    assert lines[1].split() == ["stare", "seed", "0", "starting"]
    # left: 70 + 100 (starting) + 100 (queued) steps at 2 s per step, 2 at a time
    assert lines[2] == "2 running, 1 queued, 0 of 3 done; all done in ~4:30"
    watch.done("grpo seed 0", 200.0)
    assert said[-1].endswith("grpo seed 0: done in 3:20") and clock(3725) == "1:02:05"


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

"""`stare-lit compare`'s per-run summary: the table's columns from a hand-made metrics.csv."""

import math

import pandas as pd
import pytest

from stare_lit.commands.compare import summarise_run, window_means


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
    assert {"entropy", "fork_entropy", "reward", "val_mean@k"} <= set(curves.columns)
    assert not math.isnan(curves["val_mean@k"].dropna().iloc[-1])


@pytest.mark.parametrize("name", ["main", "protocol", "protocol_baselines"])
def test_compare_configs_parse_and_name_existing_files(name):
    """configs/compare/*.yaml are `stare-lit compare --config` files whose base and schemes exist."""
    from pathlib import Path

    from jsonargparse import ArgumentParser

    from stare_lit.commands.compare import compare

    root = Path(__file__).parents[1]
    parser = ArgumentParser(exit_on_error=False)
    parser.add_function_arguments(compare)
    cfg = parser.parse_path(str(root / "configs" / "compare" / f"{name}.yaml"))
    assert (root / cfg.base).is_file()
    assert cfg.schemes and all((root / s).is_file() for s in cfg.schemes)
    assert cfg.max_steps >= 300 and cfg.jobs == 2

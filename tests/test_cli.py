"""The command line: bad settings end with one line that names the setting; nothing is lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stare_lit.cli import main

ROOT = Path(__file__).parents[1]
STARE_CONFIG = str(ROOT / "configs" / "arithmetic_stare.yaml")


def run_main(args: list[str], capsys) -> str:
    """Run the CLI in-process; return what it printed on its way out (it must exit non-zero)."""
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    message = exit_info.value.code if isinstance(exit_info.value.code, str) else ""
    return message + captured.err + captured.out


def fit_args(tiny_model_dir: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", STARE_CONFIG, "--model.policy.name_or_path", tiny_model_dir,
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.max_steps", "1", "--data.init_args.num_val_prompts", "4", *extra]


BAD_SETTINGS = [
    # (extra args, words the one-line error must contain)
    (["--model.group_size", "1"], "model.group_size"),
    (["--model.scheme.init_args.top_ratio", "1.5"], "top_ratio"),
    (["--model.scheme.init_args.w", "0"], "model.scheme.init_args.w"),
    (["--model.scheme.init_args.m", "-1"], "model.scheme.init_args.m"),
    (["--model.scheme", "stare_lit.weighting.NoSuchScheme"], "NoSuchScheme"),
    (["--model.no_such_key", "1"], "no_such_key"),
    (["--model.loss.dual_clip", "0.5"], "model.loss.dual_clip"),
    (["--model.sampling.temperature", "0"], "model.sampling.temperature"),
    (["--model.policy.name_or_path", "./no/such/model"], "model.policy.name_or_path"),
    (["--data.init_args.batch_size", "0"], "batch_size"),
]


@pytest.mark.parametrize("extra,expected", BAD_SETTINGS, ids=[e[1] for e in BAD_SETTINGS])
def test_bad_setting_names_the_setting(extra, expected, tiny_model_dir, tmp_path, capsys):
    output = run_main(fit_args(tiny_model_dir, tmp_path, *extra), capsys)
    assert expected in output
    assert "Traceback" not in output


def test_dataset_without_the_mapped_column(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"question": "1+1=", "answer": "2"}\n' * 20)
    output = run_main(fit_args(tiny_model_dir, tmp_path, "--data", "stare_lit.data.PromptDataModule",
                               "--data.init_args.path", str(data), "--data.init_args.prompt_column", "prompt",
                               "--data.init_args.batch_size", "2"), capsys)
    assert "prompt_column" in output and "question" in output


def test_raising_reward_is_reported_and_earlier_results_survive(tiny_model_dir, tmp_path, capsys):
    """A good run writes a checkpoint and metrics; a later bad run in the same folder keeps them."""
    main(fit_args(tiny_model_dir, tmp_path))
    written = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file() and p.suffix in (".ckpt", ".csv")}
    assert any(p.suffix == ".ckpt" for p in written) and any(p.suffix == ".csv" for p in written)

    output = run_main(fit_args(tiny_model_dir, tmp_path, "--model.rewards+=tests.helpers.RaisingReward"), capsys)
    assert "raising_reward" in output and "RuntimeError" in output
    for path, content in written.items():
        assert path.read_bytes() == content, f"{path} changed"


def test_cli_prints_where_results_are(tiny_model_dir, tmp_path, capsys):
    main(fit_args(tiny_model_dir, tmp_path))
    out = capsys.readouterr().out
    assert "metrics:" in out and "metrics.csv" in out


def test_print_config_and_help_run_as_a_program(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stare_lit.cli", "fit", "--config", STARE_CONFIG, "--print_config"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "class_path: stare_lit.weighting.STARE" in done.stdout and "target_entropy" in done.stdout
    done = subprocess.run([sys.executable, "-m", "stare_lit.cli", "warmstart", "--help"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "target_accuracy" in done.stdout

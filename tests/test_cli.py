"""The command line as a program: results, --print_config, --help. Bad input: tests/test_bad_input.py."""

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

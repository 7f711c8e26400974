"""The command line as a program: results, --print_config, --help. Bad input: tests/commands/test_bad_input.py."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from stare_lit.commands.cli import main
from tests.cli import ROOT, STARE_CONFIG, fit_args, run_main


@pytest.mark.slow
def test_cli_prints_where_results_are(tiny_model_dir, tmp_path, capsys):
    main(fit_args(tiny_model_dir, tmp_path))
    out = capsys.readouterr().out
    assert "metrics:" in out and "metrics.csv" in out


@pytest.mark.slow
def test_print_config_and_help_run_as_a_program(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "stare_lit.commands.cli", "fit", "--config", STARE_CONFIG, "--print_config"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "class_path: stare_lit.schemes.STARE" in done.stdout and "target_entropy" in done.stdout
    done = subprocess.run([sys.executable, "-m", "stare_lit.commands.cli", "warmstart", "--help"], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)
    assert done.returncode == 0 and "target_accuracy" in done.stdout


def test_help_lists_every_command_with_a_line_each(capsys):
    from stare_lit.commands.cli import COMMANDS, DESCRIPTION

    main(["--help"])
    out = capsys.readouterr().out
    assert "reinforcement learning with verifiable rewards" in out and "STARE" in out
    assert "Lightning Trainer command line tool" not in out
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == list(COMMANDS) == ["fit", "validate", "evaluate", "export", "warmstart", "compare"]
    for name, (_, summary) in COMMANDS.items():
        assert f"  {name}" in out and summary in out
    assert DESCRIPTION.split()[0] in out


@pytest.mark.parametrize("command", ["fit", "validate", "evaluate", "export", "warmstart", "compare"])
def test_every_command_has_its_own_help(command, capsys):
    with pytest.raises(SystemExit, match=r"^0?$") as exit_info:  # status 0 (or None): a clean exit
        main([command, "--help"])
    assert exit_info.value.code in (0, None)
    out = capsys.readouterr().out
    assert "--help" in out and (f"stare-lit {command}" in out or command in out.splitlines()[0])


def test_unknown_or_missing_command_gets_one_line(capsys):
    message = run_main(["tset"], capsys)
    assert "unknown command 'tset'" in message and "evaluate" in message
    import stare_lit.commands.cli as cli

    with pytest.raises(SystemExit, match="the nope command is not in this installation"):
        cli.command_function("nope", "stare_lit.no_such_module:run")

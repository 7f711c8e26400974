"""The command line run in-process, for the tests that drive `stare-lit fit` (commands/, train/).

``fit_args`` is one short `fit` on the shipped STARE config with the tiny policy, writing under a test's
folder; ``run_main`` runs a command that must fail and returns what it printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from stare_lit.commands.cli import main

ROOT = Path(__file__).parents[1]  # the repository
STARE_CONFIG = str(ROOT / "configs" / "arithmetic_stare.yaml")


def run_main(args: list[str], capsys) -> str:
    """Run the CLI in-process; return what it printed on its way out (it must exit non-zero)."""
    with pytest.raises(SystemExit, match=r"^(?!0$)\S") as exit_info:  # a message or a non-zero status
        main(args)
    assert exit_info.value.code not in (0, None)
    captured = capsys.readouterr()
    message = exit_info.value.code if isinstance(exit_info.value.code, str) else ""
    return message + captured.err + captured.out


def fit_args(tiny_model_dir: str, tmp_path: Path, *extra: str) -> list[str]:
    return ["fit", "--config", STARE_CONFIG, "--model.policy.name_or_path", tiny_model_dir,
            "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
            "--trainer.max_steps", "1", "--data.init_args.num_val_prompts", "4", *extra]

"""``stare-lit``: the command line.

    stare-lit fit --config configs/arithmetic_stare.yaml     # train (LightningCLI: fit, validate, ...)
    stare-lit fit --config ... --print_config                # the full, resolved config
    stare-lit warmstart [--help]                             # the offline default's warm start
    stare-lit compare [--help]                               # schemes × seeds → table and plots

Bad settings end with one line naming the setting and the fix, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from jsonargparse import CLI
from lightning.pytorch.cli import LightningCLI

from stare_lit.compare import compare
from stare_lit.errors import ConfigError
from stare_lit.module import GRPOModule
from stare_lit.rewards import RewardError
from stare_lit.warmstart import warmstart


class StareLitCLI(LightningCLI):
    """LightningCLI over GRPOModule and any LightningDataModule (chosen by class_path)."""

    def after_fit(self) -> None:
        trainer = self.trainer
        log_dir = trainer.log_dir  # a collective under multi-process strategies: every rank must ask
        if not trainer.is_global_zero:
            return
        lines = [f"results in {log_dir}"]
        for logger in trainer.loggers:
            metrics = Path(logger.log_dir or "") / "metrics.csv"
            if metrics.exists():
                lines.append(f"  metrics: {metrics}")
        if trainer.checkpoint_callback is not None and trainer.checkpoint_callback.dirpath:
            lines.append(f"  checkpoints: {trainer.checkpoint_callback.dirpath}")
        print("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["warmstart"]:
            CLI(warmstart, args=argv[1:])
            return
        if argv[:1] == ["compare"]:
            CLI(compare, args=argv[1:])
            return
        StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=argv,
                    save_config_kwargs={"overwrite": True})
    except Exception as err:  # noqa: BLE001 - only our own errors are turned into one line
        cause = _user_error(err)
        if cause is None:
            raise
        sys.exit(f"stare-lit: error: {cause}")


def _user_error(err: BaseException | None) -> BaseException | None:
    """The ConfigError / RewardError behind ``err`` (jsonargparse and Lightning wrap them), if any."""
    while err is not None:
        if isinstance(err, (ConfigError, RewardError)):
            return err
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()

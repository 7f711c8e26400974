"""``stare-lit``: the command line.

    stare-lit fit --config configs/arithmetic_stare.yaml     # train (LightningCLI: fit, validate, ...)
    stare-lit fit --config ... --print_config                # the full, resolved config
    stare-lit warmstart [--task partial_sums] [--help]       # a built-in task's warm start
    stare-lit compare [--help]                               # schemes × seeds → table and plots

Bad settings end with one line naming the setting and the fix, not a traceback.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from jsonargparse import CLI, ArgumentError
from lightning.pytorch.cli import LightningCLI

from stare_lit.checkpoint import check_checkpoint_file
from stare_lit.compare import compare
from stare_lit.errors import StareLitError
from stare_lit.module import GRPOModule
from stare_lit.warmstart import warmstart


class StareLitCLI(LightningCLI):
    """LightningCLI over GRPOModule and any LightningDataModule (chosen by class_path).

    Checkpoints are written atomically by default (``stare_lit.checkpoint.AtomicCheckpointIO`` in
    ``trainer.plugins``): an interrupted save never leaves a truncated ``last.ckpt``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.plugins": [{"class_path": "stare_lit.checkpoint.AtomicCheckpointIO"}]})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # LightningCLI reads --ckpt_path right after parsing; a bad file gets one line here, not a traceback.
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            check_checkpoint_file(ckpt_path)

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
    from_shell = argv is None  # LightningCLI warns when given args that merely repeat sys.argv
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] == ["warmstart"]:
            CLI(warmstart, args=argv[1:])
            return
        if argv[:1] == ["compare"]:
            CLI(compare, args=argv[1:])
            return
        StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=None if from_shell else argv,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:  # a bad key, type or file in the settings, found while parsing them
        command = " ".join(["stare-lit", *argv[:1]])
        sys.exit(f"stare-lit: error: {' '.join(str(err).split())} (every setting: {command} --help)")
    except Exception as err:  # noqa: BLE001 - only our own errors are turned into one line
        cause = _user_error(err)
        if cause is None:
            raise
        sys.exit(f"stare-lit: error: {cause}")


def _user_error(err: BaseException | None) -> BaseException | None:
    """The StareLitError (bad setting, bad input, reward failure, NaN stop) behind ``err``, if any:
    jsonargparse and Lightning wrap the errors raised in constructors and hooks."""
    while err is not None:
        if isinstance(err, StareLitError):
            return err
        err = err.__cause__ or err.__context__
    return None


if __name__ == "__main__":
    main()

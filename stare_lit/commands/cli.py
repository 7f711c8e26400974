"""``stare-lit``: the command line.

    stare-lit --help                                         # every command, one line each
    stare-lit fit --config configs/arithmetic_stare.yaml     # train (LightningCLI: fit, validate)
    stare-lit fit --config ... --print_config                # the full, resolved config
    stare-lit warmstart [--task partial_sums] [--help]       # a built-in task's warm start
    stare-lit evaluate [--help]                              # n samples per prompt → pass@k table
    stare-lit export [--help]                                # a checkpoint → a Hugging Face model directory
    stare-lit compare [--help]                               # schemes × seeds → table and plots

``COMMANDS`` is the registry: a command is a plain function (its signature is its settings, its
docstring its ``--help``, run by jsonargparse) imported only when called, or Lightning's own.

Bad settings end with one line naming the setting and the fix, not a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
import textwrap
import warnings
from contextlib import contextmanager
from pathlib import Path

import lightning as L
from jsonargparse import CLI, ArgumentError
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

from stare_lit import blame
from stare_lit.train import preemption
from stare_lit.train.checkpoint import check_checkpoint_file
from stare_lit.commands.console import quiet_lightning, use_step_progress_bar
from stare_lit.commands.trainer_settings import check_run_settings, trainer_error
from stare_lit.errors import ConfigError, StareLitError
from stare_lit.module import GRPOModule
from stare_lit.train.strategy import refuse_fsdp1

DESCRIPTION = ("stare-lit: reinforcement learning with verifiable rewards for Hugging Face language models on "
               "Lightning: GRPO with token-level entropy control (STARE, STEER, ERPO, clip-cov, ...).")
LIGHTNING = "lightning"  # the target of commands that LightningCLI runs
#: name -> (target, one-line summary); a target "module:function" is imported when the command runs.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": (LIGHTNING, "train a policy from a YAML config (--config configs/arithmetic_stare.yaml)"),
    "validate": (LIGHTNING, "run the validation loop (mean@k, pass@k) of a config, e.g. on --ckpt_path"),
    "evaluate": ("stare_lit.commands.evaluate:evaluate", "sample n completions per prompt from a model or checkpoint; "
                                                 "write pass@k, mean@n and per-prompt results"),
    "export": ("stare_lit.commands.export:export", "turn a checkpoint into a Hugging Face model directory"),
    "warmstart": ("stare_lit.commands.warmstart:warmstart", "train a built-in task's tiny policy from scratch "
                                                   "(--task arithmetic | partial_sums)"),
    "compare": ("stare_lit.commands.compare:compare", "train several schemes x seeds; one table and curves"),
}


class StareLitCLI(LightningCLI):
    """LightningCLI over GRPOModule and any LightningDataModule (chosen by class_path).

    Checkpoints are written atomically by default (``stare_lit.train.AtomicCheckpointIO`` in
    ``trainer.plugins``): an interrupted save never leaves a truncated ``last.ckpt``.
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"trainer.plugins": [{"class_path": "stare_lit.train.AtomicCheckpointIO"}]})

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        # Checked before anything is built (tokenizer, data, model) or written: one line each, not a traceback.
        subcommand = self.config.get("subcommand")
        settings = self.config[subcommand] if subcommand else self.config  # run=False: a fit's settings
        ckpt_path = settings.get("ckpt_path")
        if ckpt_path and ckpt_path not in ("last", "best", "hpc", "registry"):
            check_checkpoint_file(ckpt_path)
        refuse_fsdp1((settings.get("trainer") or {}).get("strategy"))
        check_run_settings(settings, subcommand or "fit")

    def instantiate_trainer(self, **kwargs):
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except (MisconfigurationException, ValueError, TypeError) as e:  # Trainer.__init__ refusing a setting
            raise trainer_error(e) from None
        use_step_progress_bar(trainer)  # "Step k/max_steps", not "Epoch 0/-2"
        return trainer

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
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] not in COMMANDS:
        sys.exit(f"stare-lit: error: unknown command {argv[0]!r}; the commands are {', '.join(COMMANDS)} "
                 "(stare-lit --help)")
    target = COMMANDS[argv[0]][0]
    quiet_lightning()
    try:
        if target != LIGHTNING:  # a bad type or a missing argument: one line below, as for fit, not a usage dump
            CLI(command_function(argv[0], target), args=argv[1:], prog=f"stare-lit {argv[0]}", exit_on_error=False)
            return
        StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=None if from_shell else argv,
                    save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
    except SystemExit as err:
        stop = preemption.stop_behind(err)  # Lightning's stop after a signal (stare_lit.train.preemption)
        if stop is None:
            raise
        if stop.rank_zero:
            print(stop.message(), file=sys.stderr, flush=True)
        sys.exit(stop.exit_code)
    except ArgumentError as err:  # a bad key, type or file in the settings, found while parsing them
        command = " ".join(["stare-lit", *argv[:1]])
        sys.exit(f"stare-lit: error: {' '.join(str(err).split())} (every setting: {command} --help)")
    except Exception as err:  # noqa: BLE001 - only our own errors are turned into one line
        cause = _user_error(err)
        if cause is None:
            blame.announce(err)  # a user's reward, scheme or callback raised: its traceback follows
            raise
        blame.print_kept_traceback(cause)
        sys.exit(f"stare-lit: error: {cause}")


def check_fit(args: list[str], what: str) -> None:
    """Parse and build, without running, ``stare-lit fit ARGS`` (settings, tokenizer, data, trainer): what it
    would refuse is refused now, as one ConfigError starting with ``what``. For commands that start fits in
    other processes (compare), so that a typo fails before the first run instead of after it."""
    try:
        with _quiet_build():
            cli = StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=args, run=False,
                              parser_kwargs={"exit_on_error": False})
    except ArgumentError as err:
        raise ConfigError(f"{what}: {' '.join(str(err).split())}") from None
    except Exception as err:  # noqa: BLE001 - only our own errors become one line, as in main()
        cause = _user_error(err)
        if cause is None:
            raise
        raise ConfigError(f"{what}: {cause}") from None
    cli.model.experience.close()  # the reward runner's worker process, had the settings started one


@contextmanager
def _quiet_build():
    """Without Lightning's lines of a Trainer being built ("Seed set to 0", "GPU available: ..."): a check
    prints nothing when it passes."""
    names = ("lightning.fabric.utilities.seed", "lightning.pytorch.utilities.rank_zero")
    loggers = [logging.getLogger(name) for name in names]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():  # stare-lit compare's own argv is not these args: nothing to warn about
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended to run")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def usage() -> str:
    """What ``stare-lit --help`` prints: what stare-lit is, then every command with its summary."""
    width = max(map(len, COMMANDS)) + 2
    lines = ["usage: stare-lit COMMAND [--help] [settings]", "", textwrap.fill(DESCRIPTION, 100), "", "commands:"]
    lines += [f"  {name:<{width}}{summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Every command's settings: stare-lit COMMAND --help"]
    return "\n".join(lines)


def command_function(name: str, target: str):
    """The function behind a command, imported now (so --help and the other commands never pay for it)."""
    module_name, function = target.split(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name != module_name:
            raise  # a dependency of the command is missing: the real error
        sys.exit(f"stare-lit: error: the {name} command is not in this installation ({module_name} is missing)")
    return getattr(module, function)


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

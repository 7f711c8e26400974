"""A quiet console: Lightning's messages that do not apply to a stare-lit run, and a step progress bar.

Each filter below names a message whose cause is understood and which says nothing true about this
module; each is scoped to its message *and* the module that emits it, so the same words from a
user's code, and every other warning, still show (tests/commands/test_console.py checks both).
"""

from __future__ import annotations

import logging
import warnings

from lightning.pytorch.callbacks import RichProgressBar


def quiet_lightning() -> None:
    """Install the filters; called by ``stare-lit`` before a command runs (idempotent)."""
    # ModelCheckpoint warns, at every save, that under manual optimisation the checkpoint holds the
    # weights AFTER the optimizer step, and suggests stashing the pre-step weights. That is what a
    # stare-lit checkpoint must hold: step k's checkpoint is the state after k optimizer steps,
    # which exact resume continues from (tests/test_resume.py). Nothing to fix, so nothing to say.
    warnings.filterwarnings("ignore", message=r"Using ModelCheckpoint with manual optimization and every_n_train_steps",
                            category=UserWarning, module=r"lightning\.pytorch\.")
    # An advertisement for Lightning's cloud logger, printed by every Trainer that has none: says nothing
    # about the run.
    _drop_log_message("lightning.pytorch.utilities.rank_zero", "💡 Tip: For seamless cloud logging")
    # Lightning's copy of torch's tree_flatten (lightning/pytorch/utilities/_pytree.py) builds
    # torch.utils._pytree.LeafSpec, which torch 2.13 marks deprecated (a FutureWarning at every
    # construction, attributed to Lightning's file). Lightning's code, harmless; a Lightning release fixes it.
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
                            category=FutureWarning, module=r"lightning\.pytorch\.utilities\._pytree")


class _DropMessage(logging.Filter):
    def __init__(self, start: str) -> None:
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


def _drop_log_message(logger: str, start: str) -> None:
    target = logging.getLogger(logger)
    if not any(isinstance(f, _DropMessage) and f.start == start for f in target.filters):
        target.addFilter(_DropMessage(start))


class StepProgressBar(RichProgressBar):
    """Lightning's rich progress bar, counting optimizer steps out of ``trainer.max_steps``.

    A stare-lit run is bounded by max_steps (max_epochs is -1), where the stock bar reads
    "Epoch 0/-2" and counts the batches of an epoch that never ends. With ``max_steps`` set this
    bar reads "Step" and shows ``trainer.global_step / max_steps`` (a batch is μ steps when
    ``model.update.updates_per_batch`` > 1). Without it, it is the stock bar.
    """

    def _by_steps(self) -> bool:
        return self.trainer.max_steps is not None and self.trainer.max_steps > 0

    @property
    def total_train_batches(self) -> int | float:
        return self.trainer.max_steps if self._by_steps() else super().total_train_batches

    def _get_train_description(self, current_epoch: int) -> str:
        if not self._by_steps():
            return super()._get_train_description(current_epoch)
        return f"{'Step':{len(self.validation_description)}}"  # padded as the stock bar pads "Epoch N"

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self._by_steps():
            self._update(self.train_progress_bar_id, trainer.global_step)
            self.refresh()


def use_step_progress_bar(trainer) -> None:
    """Swap Lightning's default RichProgressBar (exactly that class) for a StepProgressBar with its settings."""
    for i, callback in enumerate(trainer.callbacks):
        if type(callback) is RichProgressBar:
            trainer.callbacks[i] = StepProgressBar(refresh_rate=callback.refresh_rate, leave=callback._leave,
                                                   theme=callback.theme, console_kwargs=callback._console_kwargs)

"""A quiet console: only the Lightning messages that do not apply are dropped; real warnings still show."""

from __future__ import annotations

import warnings

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, RichProgressBar
from lightning.pytorch.utilities import rank_zero_warn

from stare_lit.commands.console import StepProgressBar, quiet_lightning, use_step_progress_bar
from stare_lit.module import GRPOModule
from stare_lit.rollout.base import Sampling
from stare_lit.train.update import UpdateSettings
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule, ArithmeticReward

MANUAL_OPT = ("Using ModelCheckpoint with manual optimization and every_n_train_steps, but no pre-optimization "
              "state was saved.")


def shown(message: str, module: str, category=UserWarning) -> bool:
    """Whether a warning with this message, raised from this module, reaches the console."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_lightning()  # after "always": its filters come first, as in a real run
        warnings.warn_explicit(message, category, filename=f"{module.replace('.', '/')}.py", lineno=1, module=module)
    return len(caught) == 1


def test_only_the_named_messages_from_their_modules_are_dropped():
    assert not shown(MANUAL_OPT, "lightning.pytorch.callbacks.model_checkpoint")
    assert shown(MANUAL_OPT, "my_training_script")  # the same words from a user's code still show
    assert shown("The 'train_dataloader' does not have many workers",
                 "lightning.pytorch.trainer.connectors.data_connector")
    assert shown("my reward returned None for half the batch", "my_rewards")
    leaf = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec) and treespec.is_leaf()`"
    assert not shown(leaf, "lightning.pytorch.utilities._pytree", FutureWarning)
    assert shown(leaf, "my_training_script", FutureWarning)
    assert shown("some other deprecation", "lightning.pytorch.utilities._pytree", FutureWarning)


class Warns(Callback):
    """A user's callback with something to say, and a record of the progress bar as the run goes."""

    def __init__(self) -> None:
        self.bar: list[tuple[str, float, float]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        warnings.warn("user warning: reward cache is cold", UserWarning)
        rank_zero_warn("a real problem: the learning rate is NaN")
        bar = trainer.progress_bar_callback
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.bar.append((task.description.strip(), task.completed, task.total))


@pytest.mark.slow
def test_a_run_keeps_real_warnings_and_counts_steps(tiny_policy, tmp_path, recwarn):
    quiet_lightning()
    module = GRPOModule(policy=tiny_policy, rewards=[ArithmeticReward()], group_size=2,
                        update=UpdateSettings(updates_per_batch=2),
                        sampling=Sampling(max_new_tokens=4), optimizer=lambda p: torch.optim.AdamW(p, lr=1e-3))
    data = ArithmeticDataModule(batch_size=2, num_train_prompts=8, num_val_prompts=2)
    user = Warns()
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2), RichProgressBar(), user])
    use_step_progress_bar(trainer)
    assert isinstance(trainer.progress_bar_callback, StepProgressBar)
    trainer.fit(module, data)
    messages = [str(w.message) for w in recwarn]
    assert not any("manual optimization" in m for m in messages)
    assert "user warning: reward cache is cold" in messages
    assert "a real problem: the learning rate is NaN" in messages
    # μ = 2: a batch is two optimizer steps; the bar counts steps out of max_steps.
    assert user.bar == [("Step", 2, 4), ("Step", 4, 4)]

"""The skeleton every generated task's DataModule shares: a fixed pool of training prompts and a set
of held-out validation prompts, both made in ``setup`` from the seed, served by the resumable
training loader and the in-order validation loader.

A task subclasses ``GeneratedDataModule``, checks its own settings, passes the shared ones to
``super().__init__`` (which checks them), calls ``self.save_hyperparameters()`` in its own
``__init__`` (so the checkpoint and ``hparams`` hold the task's arguments, not only these), and
writes ``make_rows``.
"""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from stare_lit.data.datamodule import SETTING, train_loader, val_loader
from stare_lit.data.loader import PromptLoader
from stare_lit.errors import check


class GeneratedDataModule(L.LightningDataModule):
    """Generated prompts: ``train_rows`` and ``val_rows`` are built in ``setup`` by ``make_rows``.

    A subclass's ``hparams`` must hold ``batch_size``, ``val_batch_size`` and ``seed`` (its ``__init__``
    arguments of those names, saved with ``save_hyperparameters``).

    Args:
        batch_size: prompts per training step (per device); each is sampled G times.
        num_train_prompts: size of the (generated, fixed) training pool; an epoch is one pass.
        val_batch_size: prompts per validation batch.
    """

    def __init__(self, batch_size: int, num_train_prompts: int, val_batch_size: int) -> None:
        super().__init__()
        check(batch_size >= 1, f"{SETTING}.batch_size must be >= 1, got {batch_size}")
        check(num_train_prompts >= batch_size, f"{SETTING}.num_train_prompts must be >= batch_size")
        check(val_batch_size >= 1, f"{SETTING}.val_batch_size must be >= 1, got {val_batch_size}")
        self.train_rows: list[dict] = []
        self.val_rows: list[dict] = []

    def make_rows(self) -> tuple[list[dict], list[dict]]:
        """(training rows, validation rows), each row ``{"prompt": ..., other reward columns}``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        self.train_rows, self.val_rows = self.make_rows()

    def train_dataloader(self) -> PromptLoader:
        return train_loader(self, self.train_rows, self.hparams.batch_size, self.hparams.seed)

    def val_dataloader(self) -> DataLoader:
        return val_loader(self.val_rows, self.hparams.val_batch_size)

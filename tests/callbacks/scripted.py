"""A scripted stand-in for the GRPO module and a real Trainer fit around it, for the callback tests.

``ScriptedModule`` is a one-Linear manual-optimisation module whose training_step returns given per-token
statistics; ``fit`` runs it through a single-process CPU ``lightning.Trainer`` with a CSVLogger, and
``read_metrics`` reads what was logged. The outputs: ``hand_outputs`` (hand-computed values, with a padded
token that must not count), ``scripted_outputs`` (one entropy everywhere) and ``trace_outputs`` (an
entropy whose predicted change points up or down), with the short collapsing trace the forecast tests use.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader, TensorDataset

from stare_lit.train.step_log import STEP, StepOutput


def given(step: StepOutput) -> dict[str, StepOutput]:
    """What Lightning hands ``on_train_batch_end`` as ``outputs``: training_step's return."""
    return {STEP: step}


def hand_outputs() -> StepOutput:
    """B=2, T=3; the last token of row 0 is padding (masked out) and carries values that would
    change every statistic if it were counted."""
    mask = torch.tensor([[True, True, False], [True, True, True]])
    entropy = torch.tensor([[1.0, 2.0, 99.0], [0.5, 1.5, 3.0]])
    surprisal = torch.tensor([[0.5, 3.0, 99.0], [2.0, 1.0, 3.0]])
    advantages = torch.tensor([[1.0, 1.0, 5.0], [1.0, 0.0, -2.0]])
    return StepOutput(
        loss=torch.tensor(0.0),
        entropy=entropy,
        surprisal=surprisal,
        advantages=advantages,
        weights=torch.ones(2, 3),
        mask=mask,
        rewards=torch.tensor([1.0, float("nan")]),
    )


def scripted_outputs(entropy: float) -> StepOutput:
    """Every valid token has entropy ``entropy``; the padded token has a huge one that must be ignored."""
    out = hand_outputs()
    out.entropy = torch.where(out.mask, torch.full((2, 3), entropy), torch.full((2, 3), 1e6))
    return out


class ScriptedModule(pl.LightningModule):
    """Manual optimisation, one nn.Linear; training_step returns outputs[i] for the i-th batch."""

    def __init__(self, outputs: list[StepOutput]) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.layer = torch.nn.Linear(1, 1)
        self.scripted = outputs
        self.calls = 0

    def training_step(self, batch, batch_idx):
        opt = self.optimizers()
        loss = self.layer(batch[0]).pow(2).mean()
        opt.zero_grad()
        self.manual_backward(loss)
        opt.step()
        out = given(replace(self.scripted[self.calls], loss=loss.detach()))
        self.calls += 1
        return out

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(len(self.scripted), 1)), batch_size=1)


def fit(tmp_path: Path, outputs, callbacks, **trainer_kwargs) -> tuple[pl.Trainer, ScriptedModule]:
    module = ScriptedModule(outputs)
    kwargs = dict(
        accelerator="cpu",
        devices=1,
        max_steps=len(outputs),
        max_epochs=1,
        logger=CSVLogger(tmp_path),
        log_every_n_steps=1,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    kwargs.update(trainer_kwargs)
    trainer = pl.Trainer(callbacks=callbacks, **kwargs)
    trainer.fit(module)
    return trainer, module


def read_metrics(trainer: pl.Trainer) -> dict[int, dict[str, float]]:
    """metrics.csv as {step: {name: value}} (empty cells dropped)."""
    rows: dict[int, dict[str, float]] = {}
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        for row in csv.DictReader(f):
            step = int(row.pop("step"))
            rows.setdefault(step, {}).update({k: float(v) for k, v in row.items() if v != ""})
    return rows


def trace_outputs(entropy: float, push: float) -> StepOutput:
    """Two completions of three tokens, all with token entropy ``entropy``; the predicted change has the
    sign of ``push``: down = confident tokens of the rewarded row (A>0, s<H) and surprising tokens of
    the penalised one (A<0, s>H); up = the opposite."""
    low, high = entropy / 2, 2 * entropy
    surprisal = [[low] * 3, [high] * 3] if push < 0 else [[high] * 3, [low] * 3]
    return StepOutput(
        loss=torch.tensor(0.0),
        entropy=torch.full((2, 3), entropy),
        surprisal=torch.tensor(surprisal),
        advantages=torch.tensor([[1.0] * 3, [-1.0] * 3]),
        weights=torch.ones(2, 3),
        mask=torch.ones(2, 3, dtype=torch.bool),
        rewards=torch.tensor([1.0, 0.0]),
    )


THRESHOLD = 0.3  # the forecast tests' entropy floor (min_entropy)
# 10 steps at 1.0, then -5 % per step: below 0.3 from step 34 on
SHORT = [1.0] * 10 + [0.95**k for k in range(1, 31)]
SHORT_SETTINGS = dict(min_entropy=THRESHOLD, max_relative_drop=None, horizon=15, window=8, patience=2)

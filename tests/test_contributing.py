"""CONTRIBUTING.md's "Add a callback" example, run as written in a real two-step fit."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning as L
import pandas as pd
import pytest
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from stare_lit.train import StepOutput
from tests.live import live_module

ROOT = Path(__file__).resolve().parents[1]


def callback_example() -> str:
    """The python block of CONTRIBUTING.md's "Add a callback" section, verbatim."""
    section = (ROOT / "CONTRIBUTING.md").read_text().split("## Add a callback", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


class Steps(Callback):
    """Keeps every step's StepOutput, to compute by hand what the example should log."""

    def __init__(self) -> None:
        self.steps: list[StepOutput] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps.append(StepOutput.of(outputs))


def test_the_callback_example_logs_the_entropy_by_advantage_sign(tiny_policy, tmp_path):
    namespace: dict = {}
    exec(compile(callback_example(), "CONTRIBUTING.md", "exec"), namespace)
    steps = Steps()
    L.seed_everything(0)
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=CSVLogger(tmp_path, name=""), log_every_n_steps=1,
                        callbacks=[namespace["EntropyBySign"](), steps], limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    trainer.fit(live_module(tiny_policy), ArithmeticDataModule(batch_size=4, num_train_prompts=16, num_val_prompts=4))
    logged = pd.read_csv(Path(trainer.logger.log_dir) / "metrics.csv").groupby("step").first()
    assert trainer.global_step == 2 and list(logged.index) == [0, 1]
    for i, step in enumerate(steps.steps):
        for name, side in (("pos", step.advantages > 0), ("neg", step.advantages < 0)):
            tokens = step.mask & side
            assert tokens.any(), "a flat step: the example's numbers would all be NaN"
            expected = step.entropy[tokens].mean().item()
            value = logged.loc[i, f"entropy_by_sign/{name}"]
            assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-6), (i, name)

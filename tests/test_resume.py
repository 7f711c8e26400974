"""Exact resume: stop at step k, resume from the step-k checkpoint, get the uninterrupted run's numbers.

Everything that decides a later step is covered: weights, AdamW moments, the LR schedule, the data
position (mid-epoch and at an epoch boundary), the rollout sampling streams, the global RNGs, STARE's
adaptive W/M and gate, and the callbacks' states. The comparison is exact (==), not approximate: on
one CPU process the same inputs give the same bits.
"""

from __future__ import annotations

import math

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from callbacks import EntropyCollapseAlert, EntropyMonitor, EntropyReport
from stare_lit.train.checkpoint import AtomicCheckpointIO
from stare_lit.train.lora import LoRA
from stare_lit.module import GRPOModule, LossSettings
from stare_lit.train.policy import Policy
from stare_lit.rollout.base import Sampling
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from stare_lit.experience import ValidationSettings
from stare_lit.schemes.stare import STARE
from tests.helpers import DigitShare

pytestmark = pytest.mark.slow  # training runs stopped and resumed, compared with uninterrupted ones

STEPS = 6  # 3 batches per epoch: two epochs
ACCELERATORS = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def train(policy, folder, max_steps: int, ckpt_path=None, accelerator: str = "cpu", loss: LossSettings | None = None):
    L.seed_everything(0)
    module = GRPOModule(
        policy=policy, rewards=[DigitShare()], group_size=4, sampling=Sampling(max_new_tokens=8), loss=loss,
        validation=ValidationSettings(samples=2),
        scheme=STARE(target_entropy=100.0, top_ratio=0.5, adaptive=True, alpha=0.05),  # gate open: W/M move
        optimizer=lambda params: torch.optim.AdamW(params, lr=3e-3),
        lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5))
    data = ArithmeticDataModule(batch_size=4, num_train_prompts=12, num_val_prompts=4, val_batch_size=4)
    callbacks = [ModelCheckpoint(dirpath=folder / "ckpt", filename="{step}", every_n_train_steps=1, save_top_k=-1,
                                 save_last=True),
                 EntropyMonitor(histogram_every_n_steps=0),
                 EntropyCollapseAlert(max_relative_drop=0.01, baseline_steps=2, patience=1, horizon=3, window=3,
                                      forecast_actions=["log"], collapse_actions=["log"]),
                 EntropyReport(every_n_steps=0)]  # its history (drawn at the end) must survive a resume too
    trainer = L.Trainer(accelerator=accelerator, devices=1, max_steps=max_steps, logger=CSVLogger(folder, name=""), callbacks=callbacks,
                        plugins=[AtomicCheckpointIO()], val_check_interval=2, check_val_every_n_epoch=None,
                        num_sanity_val_steps=0, log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, deterministic=accelerator != "cpu")  # GPU: no atomics
    trainer.fit(module, data, ckpt_path=ckpt_path)
    metrics = pd.read_csv(trainer.logger.log_dir + "/metrics.csv")
    return trainer, module, callbacks, metrics


@pytest.fixture(scope="module", params=ACCELERATORS)
def uninterrupted(request, tmp_path_factory, tokenizer_dir):
    from tests.conftest import tiny_config

    folder = tmp_path_factory.mktemp("uninterrupted")
    policy = Policy(config=tiny_config(), tokenizer=tokenizer_dir)
    return policy, request.param, train(policy, folder, STEPS, accelerator=request.param)


def by_step(metrics: pd.DataFrame, after: int) -> pd.DataFrame:
    """One row per logged step (train and validation rows merged) for optimizer steps after ``after``,
    timings dropped. The logger's step of optimizer step s (1-based) is s - 1."""
    noisy = [c for c in metrics.columns if c.startswith("time/") or c.endswith("_per_s") or c == "train/mfu"]
    rows = metrics.drop(columns=noisy).groupby("step").first()
    return rows[rows.index >= after].sort_index(axis=1)


@pytest.mark.parametrize("stop_at", [3, 4], ids=["epoch-boundary", "mid-epoch"])
def test_resumed_run_matches_the_uninterrupted_run(uninterrupted, stop_at, tmp_path):
    policy, accelerator, full = uninterrupted
    assert_resume_is_exact(policy, accelerator, full, stop_at, tmp_path)


def test_resumed_lora_run_matches_the_uninterrupted_run(tiny_model_dir, tmp_path):
    """LoRA adapters (with dropout, and β > 0: the base, adapters off, is the reference) resume exactly."""
    policy = Policy(name_or_path=tiny_model_dir, lora=LoRA(rank=4, alpha=8.0, dropout=0.1))
    loss = LossSettings(beta=0.05)
    full = train(policy, tmp_path / "full", STEPS, loss=loss)
    assert all(".lora_" in k for k, p in full[1].model.named_parameters() if p.requires_grad)
    saved = torch.load(tmp_path / "full" / "ckpt" / "last.ckpt", weights_only=True)["state_dict"]
    assert any(".lora_B." in k for k in saved)  # the checkpoint holds the adapters
    assert_resume_is_exact(policy, "cpu", full, 4, tmp_path, loss=loss)


def assert_resume_is_exact(policy, accelerator, full, stop_at: int, tmp_path, loss=None) -> None:
    _, full_module, full_callbacks, full_metrics = full
    # The interrupted run: stops at step k (as a killed job would after its step-k checkpoint) ...
    train(policy, tmp_path / "first", stop_at, accelerator=accelerator, loss=loss)
    # ... and is resumed from its last.ckpt to the end.
    _, module, callbacks, metrics = train(policy, tmp_path / "second", STEPS, accelerator=accelerator,
                                          ckpt_path=tmp_path / "first" / "ckpt" / "last.ckpt", loss=loss)

    expected, got = by_step(full_metrics, stop_at), by_step(metrics, stop_at)
    assert list(got.index) == list(expected.index) == list(range(stop_at, STEPS))
    columns = sorted(set(expected.columns) | set(got.columns))  # a CSV has only what its own run logged
    expected, got = expected.reindex(columns=columns), got.reindex(columns=columns)
    assert got["val/mean@2"].notna().any() and got["train/reward"].notna().all() and got["train/lr"].nunique() > 1
    differ = {column: (expected[column].tolist(), got[column].tolist()) for column in expected.columns
              if not all(x == y or (math.isnan(x) and math.isnan(y))
                         for x, y in zip(expected[column].tolist(), got[column].tolist()))}
    assert not differ, f"uninterrupted vs resumed: {differ}"

    for name, value in full_module.state_dict().items():
        assert torch.equal(value, module.state_dict()[name]), name
    assert full_module.scheme.state_dict() == module.scheme.state_dict()
    assert full_module.experience.rollouts == module.experience.rollouts == STEPS
    for full, resumed in zip(full_callbacks[1:], callbacks[1:]):
        assert full.state_dict() == resumed.state_dict(), type(full).__name__


def test_rollouts_do_not_depend_on_what_ran_before(tiny_policy):
    """The sampling stream of rollout n is a function of (seed, n, rank): draws on the global RNG in
    between (a callback, validation, a resume) change nothing."""
    from stare_lit.rollout.streams import TRAIN, stream_seed

    module = GRPOModule(policy=tiny_policy, rewards=[DigitShare()], group_size=4, sampling=Sampling(max_new_tokens=8))
    module.configure_model()
    seed = stream_seed(0, TRAIN, 5, 0)
    first = module.experience.sample(module.model, ["12+34="], 4, seed=seed)
    torch.rand(1000)  # someone else draws
    again = module.experience.sample(module.model, ["12+34="], 4, seed=seed)
    assert torch.equal(first.input_ids, again.input_ids)
    other = module.experience.sample(module.model, ["12+34="], 4, seed=stream_seed(0, TRAIN, 6, 0))
    assert not torch.equal(first.input_ids, other.input_ids)


def test_checkpoint_loads_with_weights_only(uninterrupted):
    _, _, (trainer, *_rest) = uninterrupted
    state = torch.load(trainer.checkpoint_callback.dirpath + "/last.ckpt", weights_only=True)
    assert state["run_state"]["rollouts"] == STEPS
    assert state["loops"]["fit_loop"]["state_dict"]["combined_loader"][0] == {"epoch": 1, "consumed": 3, "seed": 1234,
                                                                          "world_size": 1}  # the data position

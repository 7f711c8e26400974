"""Numerical faults: a step with NaN/±inf anywhere is skipped and counted; too many in a row stop the run
with the last good state saved. Degenerate completions (empty, only EOS, cut at max length) are counted.

Faults are injected where they arise in practice: the logits (an fp16 overflow), the sampler's
probabilities, the advantages, the loss and the gradients.
"""

from __future__ import annotations

import math

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger

import stare_lit.module as module_file
import stare_lit.train.update as update_file
from stare_lit.train.checkpoint import AtomicCheckpointIO
from stare_lit.errors import NonFiniteError
from stare_lit.module import GRPOModule
from stare_lit.rollout.base import Sampling
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from stare_lit.train.update import UpdateSettings
from tests.helpers import DigitShare

pytestmark = pytest.mark.slow  # faults injected into Trainer fits of the GRPO module


class NaNLogits(Callback):
    """From the given batches on, the policy's logits are NaN: in the loss's forward (``when="train"``,
    grad enabled) or also while sampling (``when="always"``)."""

    def __init__(self, batches: set[int], when: str = "train") -> None:
        self.batches, self.when, self.armed = batches, when, False

    def on_train_start(self, trainer, module):
        def poison(_, __, output):
            if self.armed and (self.when == "always" or torch.is_grad_enabled()):
                return output.masked_fill(torch.ones_like(output, dtype=torch.bool), math.nan)
            return output

        module.model.get_output_embeddings().register_forward_hook(poison)

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.armed = batch_idx in self.batches


def trainer_and_module(policy, tmp_path, steps: int, callbacks=(), batches: int | None = None, **module_kwargs):
    L.seed_everything(0)
    module = GRPOModule(policy=policy, rewards=[DigitShare()], group_size=4, sampling=Sampling(max_new_tokens=8),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2), **module_kwargs)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, limit_train_batches=batches, max_epochs=1 if batches else None,
                        logger=CSVLogger(tmp_path, name=""), callbacks=list(callbacks), plugins=[AtomicCheckpointIO()],
                        limit_val_batches=0, log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    return trainer, module


def data() -> ArithmeticDataModule:
    return ArithmeticDataModule(batch_size=2, num_train_prompts=40, num_val_prompts=2)


def metrics_of(trainer) -> pd.DataFrame:
    return pd.read_csv(trainer.logger.log_dir + "/metrics.csv")


def weights(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.model.state_dict().items()}


@pytest.mark.parametrize("when", ["train", "always"], ids=["logits-in-loss", "logits-while-sampling"])
def test_a_nonfinite_step_is_skipped_and_counted(tiny_policy, tmp_path, when):
    seen = {}

    class Snapshot(Callback):  # the weights before and after the poisoned batch
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == 1:
                seen["before"] = weights(module)

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                seen["after"] = weights(module)

    trainer, module = trainer_and_module(tiny_policy, tmp_path, steps=-1, batches=4, callbacks=[NaNLogits({1}, when), Snapshot()])
    with pytest.warns(UserWarning, match="non-finite logits" if when == "always" else "non-finite log-probs"):
        trainer.fit(module, data())
    assert trainer.global_step == 3  # 4 batches, one skipped: no optimizer step for it
    assert all(torch.equal(seen["before"][k], seen["after"][k]) for k in seen["before"])
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    metrics = metrics_of(trainer)
    assert metrics["train/nonfinite_skipped"].dropna().tolist() == [0.0, 1.0, 0.0, 0.0]
    skipped = metrics[metrics["train/nonfinite_skipped"] == 1.0]
    assert skipped[["train/loss", "train/entropy", "train/reward"]].isna().all().all()  # NaN, not step 0's values
    assert metrics["train/nonfinite_steps"].dropna().tolist() == [0.0, 1.0, 1.0, 1.0]
    assert module.nonfinite_in_a_row == 0


@pytest.mark.parametrize("where", ["advantages", "loss", "gradients"])
def test_nonfinite_advantages_loss_or_gradients_skip_the_step(tiny_policy, tmp_path, monkeypatch, where):
    calls = {"n": 0}
    if where == "advantages":
        real = module_file.group_advantages

        def advantages(*args, **kwargs):
            calls["n"] += 1
            out = real(*args, **kwargs)
            return out.fill_(math.inf) if calls["n"] == 2 else out

        monkeypatch.setattr(module_file, "group_advantages", advantages)
    elif where == "loss":
        real = update_file.policy_loss

        def loss(*args, **kwargs):
            calls["n"] += 1
            value, stats = real(*args, **kwargs)
            return (value * math.nan if calls["n"] == 2 else value), stats

        monkeypatch.setattr(update_file, "policy_loss", loss)

    class NaNGradients(Callback):
        def on_train_start(self, trainer, module):
            p = next(module.model.parameters())
            p.register_hook(lambda g: g * math.nan if trainer.fit_loop.epoch_loop.batch_idx == 1 else g)

    callbacks = [NaNGradients()] if where == "gradients" else []
    trainer, module = trainer_and_module(tiny_policy, tmp_path, steps=-1, batches=3, callbacks=callbacks)
    with pytest.warns(UserWarning, match=f"non-finite {where}"):
        trainer.fit(module, data())
    assert trainer.global_step == 2
    assert metrics_of(trainer)["train/nonfinite_skipped"].dropna().tolist() == [0.0, 1.0, 0.0]
    assert all(p.grad is None for p in module.model.parameters())  # nothing left over for the next step


def test_too_many_in_a_row_stop_with_the_last_good_state(tiny_policy, tmp_path):
    seen = {}

    class Snapshot(Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if batch_idx == 1:
                seen["good"] = weights(module)

    # skip_inert_rows off: a batch of flat groups would otherwise run no forward with grad, the one NaNLogits poisons
    trainer, module = trainer_and_module(tiny_policy, tmp_path, steps=10, callbacks=[NaNLogits({2, 3, 4, 5}), Snapshot()],
                                         update=UpdateSettings(max_nonfinite_steps=3, skip_inert_rows=False))
    with pytest.raises(NonFiniteError, match="3 steps in a row had non-finite log-probs") as error:
        trainer.fit(module, data())
    path = tmp_path / "version_0" / "checkpoints" / "last-good-step=2.ckpt"
    assert str(path) in str(error.value)
    state = torch.load(path, weights_only=True)
    assert state["global_step"] == 2
    saved = {k.removeprefix("model."): v for k, v in state["state_dict"].items()}
    assert all(torch.equal(saved[k], v) for k, v in seen["good"].items())
    # The metrics of the run, the skipped steps included, are on disk.
    assert metrics_of(trainer)["train/nonfinite_steps"].dropna().max() == 3.0

    # And the run resumes from it (here without the fault) to the end.
    resumed, module = trainer_and_module(tiny_policy, tmp_path / "resumed", steps=4)
    resumed.fit(module, data(), ckpt_path=path)
    assert resumed.global_step == 4 and module.nonfinite_steps == 3 and module.nonfinite_in_a_row == 0


def test_degenerate_completions_are_counted(tiny_policy, tmp_path):
    """A policy that says EOS at once: every completion is only EOS (empty text); one that never does:
    every completion is cut at max_new_tokens. Both train without NaN."""
    for token, column in [(1, "train/frac_eos_only"), (3, "train/frac_truncated")]:  # 1 = EOS, 3 = '0'
        class Always(Callback):
            def on_train_start(self, trainer, module, token=token):
                head = module.model.get_output_embeddings()
                head.register_forward_hook(lambda _, __, out: out.index_fill(-1, torch.tensor([token]), 50.0))

        for agg in ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]:
            folder = tmp_path / f"{token}-{agg}"
            trainer, module = trainer_and_module(tiny_policy, folder, steps=2, callbacks=[Always()],
                                  loss=module_file.LossSettings(agg=agg))
            trainer.fit(module, data())
            metrics = metrics_of(trainer)
            assert (metrics[column].dropna() == 1.0).all(), (column, agg)
            assert (metrics["train/frac_empty"].dropna() == float(token == 1)).all()
            assert metrics["train/loss"].dropna().map(math.isfinite).all()
            assert (metrics["train/nonfinite_skipped"].dropna() == 0).all()


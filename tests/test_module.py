"""The LightningModule end to end on a tiny model: steps, micro-batching, resume, validation."""

from __future__ import annotations

import math

import lightning as L
import pandas as pd
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger

from stare_lit.experience import ValidationSettings
from stare_lit.module import GRPOModule, LossSettings
from stare_lit.ops.advantages import AdvantageSettings
from stare_lit.train.update import UpdateSettings
from stare_lit.train.policy import Policy
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from stare_lit.schemes.stare import STARE
from tests.helpers import MixedReward
from tests.live import assert_live, assert_same_update, live_module, make_module, step_once


def fit(module, tmp_path, steps=2, callbacks=(), **trainer_kwargs) -> tuple[L.Trainer, pd.DataFrame]:
    L.seed_everything(0)
    data = ArithmeticDataModule(batch_size=4, num_train_prompts=64, num_val_prompts=8, val_batch_size=8)
    trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=CSVLogger(tmp_path, name=""),
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        callbacks=list(callbacks), log_every_n_steps=1, default_root_dir=tmp_path,
                        **({"enable_checkpointing": False} | trainer_kwargs))
    trainer.fit(module, data)
    return trainer, pd.read_csv(trainer.logger.log_dir + "/metrics.csv")


@pytest.mark.slow
def test_two_steps_with_stare_log_everything(tiny_policy, tmp_path):
    scheme = STARE(target_entropy=100.0, top_ratio=0.5, w=1.5)  # gate always open
    trainer, metrics = fit(make_module(tiny_policy, scheme=scheme, rewards=[MixedReward()]), tmp_path, steps=2)
    assert trainer.global_step == 2
    steps = metrics.dropna(subset=["train/loss"])
    assert len(steps) == 2
    assert (steps["train/frac_zero_std"] < 1).all() and (steps["train/grad_norm"] > 0).all()  # live steps
    assert (steps["scheme/mean_weight"] > 1).all() and (steps["scheme/positive_reweight_ratio"] > 0).all()
    for column in ["train/reward", "train/entropy", "train/surprisal", "train/clip_frac", "train/grad_norm",
                   "train/trained_tokens_per_s", "train/generated_tokens_per_s",
                   "scheme/gate_on", "scheme/mean_weight", "reward/mixed_reward", "time/generate_s"]:
        assert steps[column].notna().all(), column
    assert (steps["scheme/gate_on"] == 1.0).all()
    assert (steps["train/entropy"] > 0).all()
    assert scheme.entropy == pytest.approx(steps["train/entropy"].iloc[-1], rel=1e-5)


@pytest.mark.slow
def test_a_closed_loop_scheme_shows_its_gate_alone_or_composed(tiny_policy, tmp_path):
    """The progress bar shows what the scheme reports (TokenWeighting.progress): STARE's gate, also inside
    a Compose; GRPO reports nothing. The report callback reads the same."""
    from callbacks import EntropyReport
    from stare_lit.schemes.base import Compose
    from stare_lit.schemes.baselines import EntropyAdvantage

    for name, scheme, gate in [("stare", STARE(target_entropy=100.0), 1.0),
                               ("compose", Compose([EntropyAdvantage(), STARE(target_entropy=100.0)]), 1.0),
                               ("grpo", None, None)]:
        report = EntropyReport(every_n_steps=0, dpi=30)
        trainer, _ = fit(make_module(tiny_policy, scheme=scheme, rewards=[MixedReward()]), tmp_path / name, steps=1,
                         callbacks=[report])
        assert trainer.progress_bar_metrics.get("gate") == gate, name
        (gate_on,) = report.history["gate_on"]
        assert gate_on == gate if gate is not None else math.isnan(gate_on), name


@pytest.mark.slow
def test_micro_batches_and_old_pass_give_the_fused_loss(tiny_policy):
    """One live step three ways on the same rollout: μ=1 fused (one forward), an explicit old pass + 4
    micro-batches, and an explicit old pass + one micro-batch (μ=2, its first update). Same loss, same
    gradients, same parameters after the optimizer step (float32 sums in another order: rtol 1e-4)."""
    fused = step_once(live_module(tiny_policy))
    micro = step_once(live_module(tiny_policy, update=UpdateSettings(micro_batch_size=4)))
    old_pass = step_once(live_module(tiny_policy, update=UpdateSettings(updates_per_batch=2)))
    out = fused.outputs
    assert_live(out.rewards, out.advantages, out.mask)
    assert fused.stats["grad_norm"] > 0 and fused.stats["loss"] != 0
    for other in (micro, old_pass):
        assert torch.equal(other.outputs.rewards, out.rewards)  # same samples
        assert other.stats["loss"] == pytest.approx(fused.stats["loss"], rel=1e-5, abs=1e-7)
        assert other.stats["grad_norm"] == pytest.approx(fused.stats["grad_norm"], rel=1e-4)
        assert_same_update(fused, other)
    # On-policy, ρ = 1: the token-mean loss is −Σ Â / (loss tokens), computed here from the step's own tensors.
    mask = out.mask
    assert fused.stats["loss"] == pytest.approx(-(out.advantages * mask).sum().item() / mask.sum().item(), rel=1e-5)


@pytest.mark.slow
def test_several_updates_per_batch_count_optimizer_steps(tiny_policy, tmp_path):
    trainer, metrics = fit(make_module(tiny_policy, update=UpdateSettings(updates_per_batch=2)), tmp_path, steps=4)
    assert trainer.global_step == 4  # 2 rollout batches × μ=2
    assert metrics["train/loss"].notna().sum() == 2


def test_kl_to_reference_builds_a_frozen_reference(tiny_model_dir):
    """β = 0.1 on live steps: the reference is frozen and not checkpointed; KL is 0 while π_θ = π_ref (step 1)
    and > 0 after a live update (step 2), where the loss is the surrogate plus β·KL."""
    module = live_module(Policy(name_or_path=tiny_model_dir), loss=LossSettings(beta=0.1))
    run = step_once(module, steps=2)
    ref = module._ref_model[0]
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())
    first, second = run.history
    assert first["kl"] == 0.0 and first["grad_norm"] > 0  # the first update moves π_θ away from π_ref
    out = run.outputs
    assert_live(out.rewards, out.advantages, out.mask)
    assert second["kl"] > 1e-6
    surrogate = -(out.advantages * out.mask).sum().item() / out.mask.sum().item()  # on-policy: ρ = 1
    assert second["loss"] == pytest.approx(surrogate + 0.1 * second["kl"], rel=1e-5)
    assert not any(k.startswith("_ref") for k in module.state_dict())  # not checkpointed


@pytest.mark.slow
def test_reference_model_adds_one_forward_not_an_old_pass(tiny_policy, tmp_path):
    """μ = 1, one micro-batch, β > 0: per step one policy forward (with grad) and one reference forward."""
    module = make_module(tiny_policy, loss=LossSettings(beta=0.1))
    calls, inner = [], module.updater.token_logprobs

    def counted(model, *args):
        calls.append((model is module.model, torch.is_grad_enabled()))  # (policy?, with grad?)
        return inner(model, *args)

    module.updater.token_logprobs = counted
    fit(module, tmp_path, steps=2)
    assert calls == [(False, False), (True, True)] * 2  # per step: the reference (no grad), then the update


@pytest.mark.slow
def test_dynamic_sampling_drops_flat_groups_without_crashing(tiny_policy, tmp_path):
    # A random tiny model never answers right: every group is flat, every update is skipped — and
    # a skipped update is no optimizer step, so bound the run by batches, not steps.
    trainer, metrics = fit(make_module(tiny_policy, advantages=AdvantageSettings(dynamic_sampling=True)), tmp_path,
                           steps=-1, max_epochs=1, limit_train_batches=2)
    assert trainer.global_step == 0
    assert (metrics["train/frac_zero_std"].dropna() == 1.0).all()
    assert (metrics["train/skipped_update"].dropna() == 1.0).all()


@pytest.mark.slow
def test_validation_logs_mean_and_pass_at_k(tiny_policy, tmp_path):
    _, metrics = fit(make_module(tiny_policy), tmp_path, steps=2, val_check_interval=2, check_val_every_n_epoch=None)
    mean_at_k, pass_at_k = metrics["val/mean@2"].dropna(), metrics["val/pass@2"].dropna()
    assert len(mean_at_k) == 1 and 0.0 <= mean_at_k.iloc[0] <= pass_at_k.iloc[0] <= 1.0


@pytest.mark.slow
def test_resume_restores_stare_state(tiny_policy, tmp_path):
    scheme = STARE(target_entropy=100.0, adaptive=True, alpha=0.05, w=1.1, m=0.9)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True, every_n_train_steps=1)
    fit(make_module(tiny_policy, scheme=scheme), tmp_path, steps=3, callbacks=[ckpt], enable_checkpointing=True)
    assert scheme.w == pytest.approx(1.1 + 3 * 0.05) and scheme.m == pytest.approx(0.9 - 3 * 0.05)
    state = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)
    assert state["weighting_scheme"]["w"] == pytest.approx(scheme.w)

    fresh = STARE(target_entropy=100.0, adaptive=True, alpha=0.05, w=1.1, m=0.9)
    module = make_module(tiny_policy, scheme=fresh)
    module.on_load_checkpoint(state)
    assert (fresh.w, fresh.m, fresh.gate_on) == (scheme.w, scheme.m, scheme.gate_on)
    assert math.isclose(fresh.entropy, scheme.entropy)
    # And a real resume through the Trainer continues from step 3 with the restored W.
    L.seed_everything(0)
    data = ArithmeticDataModule(batch_size=4, num_train_prompts=64, num_val_prompts=8)
    resumed = STARE(target_entropy=100.0, adaptive=True, alpha=0.05, w=1.1, m=0.9)
    trainer = L.Trainer(accelerator="cpu", max_steps=4, logger=False, enable_progress_bar=False,
                        enable_checkpointing=False, enable_model_summary=False)
    trainer.fit(make_module(tiny_policy, scheme=resumed), data, ckpt_path=tmp_path / "ckpt" / "last.ckpt")
    assert trainer.global_step == 4
    assert resumed.w == pytest.approx(1.1 + 4 * 0.05)


@pytest.mark.slow
def test_stare_step_scope_with_micro_batches(tiny_policy, tmp_path):
    scheme = STARE(target_entropy=100.0, top_ratio=0.5, scope="step")
    trainer, metrics = fit(make_module(tiny_policy, scheme=scheme, update=UpdateSettings(micro_batch_size=4),
                                       rewards=[MixedReward()]), tmp_path, steps=2)
    assert trainer.global_step == 2
    assert (metrics["scheme/gate_on"].dropna() == 1.0).all()
    steps = metrics.dropna(subset=["train/loss"])
    assert (steps["train/frac_zero_std"] < 1).all() and (steps["train/grad_norm"] > 0).all()  # live steps
    assert (steps["scheme/positive_reweight_ratio"] > 0).all()  # the step-scope set reached the micro-batches
    assert (steps["scheme/mean_weight"] > 1).all()  # and W = 1.1 was applied to it


@pytest.mark.slow
def test_mfu_is_logged_when_peak_flops_is_given(tiny_policy, tmp_path):
    _, metrics = fit(make_module(tiny_policy, peak_flops=1e12, update=UpdateSettings(skip_inert_rows=False)),
                     tmp_path / "a", steps=1)
    mfu = metrics["train/mfu"].dropna()
    assert len(mfu) == 1 and 0 < mfu.iloc[0] < 1
    # The tiny random policy earns no reward, so every group is flat: with skipping nothing is trained on.
    _, metrics = fit(make_module(tiny_policy, peak_flops=1e12), tmp_path / "b", steps=1)
    assert metrics["train/mfu"].dropna().tolist() == [0.0] and metrics["train/trained_tokens_per_s"].dropna().tolist() == [0.0]

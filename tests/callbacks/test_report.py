"""EntropyReport writes its PNG (periodically and at the end, with or without a logger), resumes its history,
and the whole set of entropy callbacks runs on the real GRPO module (progress bar: reward, entropy, gate)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import lightning as L
import pytest
import torch
from matplotlib.image import imread

from callbacks import EntropyCollapseAlert, EntropyMonitor, EntropyReport
from callbacks.report import moving_average
from stare_lit.errors import ConfigError
from stare_lit.module import GRPOModule
from stare_lit.rollout.base import Sampling
from stare_lit.data.tasks.arithmetic import ArithmeticDataModule
from stare_lit.schemes.stare import STARE
from tests.helpers import MixedReward
from tests.callbacks.scripted import SHORT, SHORT_SETTINGS, fit, trace_outputs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_report_png_written_beside_the_logs(tmp_path):
    report = EntropyReport(every_n_steps=20, smoothing=3)
    alert = EntropyCollapseAlert(**SHORT_SETTINGS, forecast_actions=[], collapse_actions=[])
    outputs = [trace_outputs(h, -1.0) for h in SHORT]
    written = []
    original = report.write
    report.write = lambda trainer: written.append(trainer.global_step) or original(trainer)
    trainer, _ = fit(tmp_path, outputs, [alert, report])
    path = Path(trainer.log_dir) / "entropy_report.png"
    assert report.report_path == str(path)
    assert path.read_bytes()[:8] == PNG_MAGIC and 20_000 < path.stat().st_size < 300_000
    assert imread(path).shape[:2] == (800, 1200)  # 12 x 8 inches at dpi 100
    assert written == [20, 40]  # every 20 steps; the end of fit (step 40) is not drawn twice
    assert not list(Path(trainer.log_dir).glob("*.tmp.png"))
    h = report.history
    assert h["step"] == [float(s) for s in range(1, len(SHORT) + 1)]
    assert h["entropy_mean"] == pytest.approx(SHORT)
    assert h["reward_mean"] == pytest.approx([0.5] * len(SHORT))
    assert all(x < 0 for x in h["entropy_change_pred"])
    assert all(math.isnan(g) for g in h["gate_on"])  # the scripted module has no scheme


@pytest.mark.slow
def test_report_without_logger_goes_to_default_root_dir_and_resumes(tmp_path):
    report = EntropyReport(every_n_steps=0, filename="dynamics.png", position_buckets=2, dpi=30)
    fit(tmp_path, [trace_outputs(h, -1.0) for h in SHORT[:5]], [report], logger=False)
    assert (tmp_path / "dynamics.png").read_bytes()[:8] == PNG_MAGIC
    assert set(report.history) >= {"entropy_position_1of2", "entropy_position_2of2"}

    resumed = EntropyReport(position_buckets=2)
    resumed.load_state_dict(report.state_dict())
    assert resumed.history == report.history
    changed = EntropyReport(position_buckets=3, dpi=30)  # settings changed on resume: new keys start as NaN
    changed.load_state_dict(report.state_dict())
    changed.dirpath = str(tmp_path / "again")
    fit(tmp_path / "b", [trace_outputs(0.5, -1.0)], [changed], logger=False)
    third = changed.history["entropy_position_3of3"]
    assert len(third) == 6 and math.isnan(third[0])
    assert (tmp_path / "again" / "entropy_report.png").exists()


def test_moving_average_skips_non_finite():
    assert moving_average([1.0, 3.0, math.nan, 5.0], 2) == [1.0, 2.0, 3.0, 5.0]
    assert math.isnan(moving_average([math.nan], 3)[0])


@pytest.mark.parametrize("kwargs, setting", [(dict(every_n_steps=-1), "every_n_steps"),
                                             (dict(filename="report.jpg"), "filename"),
                                             (dict(position_buckets=0), "position_buckets")])
def test_report_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        EntropyReport(**kwargs)


@pytest.mark.slow
def test_entropy_callbacks_on_the_grpo_module(tiny_policy, tmp_path):
    """Two real steps of GRPO + STARE with all three callbacks: they read the real training_step output."""
    L.seed_everything(0)
    module = GRPOModule(policy=tiny_policy, rewards=[MixedReward()], group_size=4,  # mixed groups: live steps
                        sampling=Sampling(max_new_tokens=8), scheme=STARE(target_entropy=100.0),  # gate open
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    data = ArithmeticDataModule(batch_size=2, num_train_prompts=16, num_val_prompts=4)
    report = EntropyReport(every_n_steps=0, dpi=30)
    callbacks = [EntropyMonitor(histogram_every_n_steps=0), EntropyCollapseAlert(min_entropy=0.01), report]
    trainer = L.Trainer(accelerator="cpu", max_steps=2, logger=L.pytorch.loggers.CSVLogger(tmp_path, name=""),
                        enable_progress_bar=True, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=callbacks, log_every_n_steps=1, enable_checkpointing=False,
                        default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, data)
    assert {"reward", "entropy", "gate"} <= set(trainer.progress_bar_metrics)
    assert trainer.progress_bar_metrics["gate"] == 1.0
    assert Path(report.report_path).parent == Path(trainer.log_dir) and Path(report.report_path).exists()
    assert report.history["gate_on"] == [1.0, 1.0]
    logged = {k: float(v) for k, v in trainer.logged_metrics.items()}
    assert logged["entropy_monitor/entropy_mean"] == pytest.approx(logged["train/entropy"], rel=1e-5)
    assert logged["train/frac_zero_std"] < 1 and logged["train/grad_norm"] > 0  # a live step
    for name in ("entropy_change_pred", "entropy_change_pred_reweight", "entropy_position_1of4", "forking_token_share"):
        assert math.isfinite(logged[f"entropy_monitor/{name}"]), name
    # Both predictions sum Â·ω·π(a)·(s − H) over tokens (stare_lit.ops.entropy_dynamics): 0 on a flat batch.
    assert logged["entropy_monitor/entropy_change_pred"] != 0.0
    assert logged["entropy_monitor/entropy_change_pred_reweight"] != 0.0


@pytest.mark.slow
def test_report_shows_which_tokens_the_weights_moved(tmp_path):
    """hand_outputs with w = 1.5 on a token below its entropy and on one above it, 0.5 on one at s = H:
    a third of the reweighted tokens are above their entropy; with w ≡ 1 the panel says none."""
    from tests.callbacks.scripted import hand_outputs

    moved = hand_outputs()
    moved.weights = torch.tensor([[1.5, 1.5, 1.0], [1.0, 1.0, 0.5]])
    report = EntropyReport(every_n_steps=0, dpi=30)
    fit(tmp_path, [moved] * 3 + [hand_outputs()], [report], logger=False)
    h = report.history
    assert h["reweighted_share"] == pytest.approx([0.6, 0.6, 0.6, 0.0])
    assert h["reweighted_above_entropy_share"][:3] == pytest.approx([1 / 3] * 3)
    assert math.isnan(h["reweighted_above_entropy_share"][3])
    titles = [ax.get_title() for ax in report.figure().axes]
    pred = (-0.25 * math.exp(-0.5) + 0.5 * math.exp(-3)) / 5 * 3 / 4  # the mean over the four steps
    assert f"Reweighted: 33% above their entropy; ΔH from the weights {pred:+.2g}/token" in titles
    plain = EntropyReport(every_n_steps=0, dpi=30)
    fit(tmp_path / "plain", [hand_outputs()] * 2, [plain], logger=False)
    assert any(t.startswith("Reweighted: none") for t in (ax.get_title() for ax in plain.figure().axes))

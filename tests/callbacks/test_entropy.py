"""Tests for callbacks/entropy.py: hand-computed metrics, the alert's collapse rule, checkpoint/stop, resume state.

The attribution, the forecast and the report have their own files (test_attribution.py,
test_forecast.py, test_report.py).

Most tests drive the callbacks through a real single-process CPU ``lightning.Trainer`` with a CSVLogger and
a one-Linear manual-optimisation module whose training_step returns scripted per-token statistics.
"""

from __future__ import annotations

import math
import random
import warnings
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch

from callbacks import EntropyCollapseAlert, EntropyMonitor
from callbacks.entropy import quantile_name, quantiles
from stare_lit.errors import ConfigError
from tests.callbacks.scripted import ScriptedModule, fit, given, hand_outputs, read_metrics, scripted_outputs

# --------------------------------------------------------------------------------------------
# helpers

# Valid tokens (H, s, A): (1.0, 0.5, +1) (2.0, 3.0, +1) (0.5, 2.0, +1) (1.5, 1.0, 0) (3.0, 3.0, -2)
# entropy mean 8.0 / 5 = 1.6; sorted 0.5 1.0 1.5 2.0 3.0 -> q10 = 0.5 + 0.4 * 0.5 = 0.7,
# q50 = 1.5, q90 = 2.0 + 0.6 * 1.0 = 2.6; surprisal mean 9.5 / 5 = 1.9.
# quadrants: A>0 & s>H: tokens 2, 3 -> 0.4; A>0 & s<=H: token 1 -> 0.2; A<0 & s>H: none -> 0.0;
# A<0 & s<=H: token 5 (tie s == H counts as low) -> 0.2; A == 0: token 4 -> 0.2.
# predicted dH = A * w * exp(-s) * (s - H), w = 1: token 1 -0.5 e^-0.5, token 2 e^-3, token 3 1.5 e^-2, tokens 4, 5 zero
# (A = 0; s == H); per quadrant divided by the 5 valid tokens; shares over |moved| = e^-3 + 1.5 e^-2 + 0.5 e^-0.5.
# Relative positions (j + 0.5) / n: row 0 -> 0.25, 0.75 (buckets 1, 3); row 1 -> 1/6, 1/2, 5/6 (buckets 0, 2, 3):
# bucket entropies 0.5, 1.0, 1.5, (2.0 + 3.0) / 2. Forking (H > 0.672): 1.0, 2.0, 1.5, 3.0 -> 0.8.
_UP = math.exp(-3) + 1.5 * math.exp(-2)
_DOWN = -0.5 * math.exp(-0.5)
HAND_EXPECTED = {
    "entropy_monitor/entropy_mean": 1.6,
    "entropy_monitor/entropy_q10": 0.7,
    "entropy_monitor/entropy_q50": 1.5,
    "entropy_monitor/entropy_q90": 2.6,
    "entropy_monitor/surprisal_mean": 1.9,
    "entropy_monitor/quadrant_pos_adv_high_surprisal": 0.4,
    "entropy_monitor/quadrant_pos_adv_low_surprisal": 0.2,
    "entropy_monitor/quadrant_neg_adv_high_surprisal": 0.0,
    "entropy_monitor/quadrant_neg_adv_low_surprisal": 0.2,
    "entropy_monitor/zero_adv_share": 0.2,
    "entropy_monitor/entropy_change_pred_pos_adv_high_surprisal": _UP / 5,
    "entropy_monitor/entropy_change_pred_pos_adv_low_surprisal": _DOWN / 5,
    "entropy_monitor/entropy_change_pred_neg_adv_high_surprisal": 0.0,
    "entropy_monitor/entropy_change_pred_neg_adv_low_surprisal": 0.0,
    "entropy_monitor/entropy_change_share_pos_adv_high_surprisal": _UP / (_UP - _DOWN),
    "entropy_monitor/entropy_change_share_pos_adv_low_surprisal": _DOWN / (_UP - _DOWN),
    "entropy_monitor/entropy_change_share_neg_adv_high_surprisal": 0.0,
    "entropy_monitor/entropy_change_share_neg_adv_low_surprisal": 0.0,
    "entropy_monitor/entropy_change_pred": (_UP + _DOWN) / 5,
    "entropy_monitor/entropy_change_pred_reweight": 0.0,
    "entropy_monitor/entropy_position_1of4": 0.5,
    "entropy_monitor/entropy_position_2of4": 1.0,
    "entropy_monitor/entropy_position_3of4": 1.5,
    "entropy_monitor/entropy_position_4of4": 2.5,
    "entropy_monitor/forking_token_share": 0.8,
    "entropy_monitor/forking_entropy_mean": 7.5 / 4,  # H > 0.672: 1.0, 2.0, 1.5, 3.0 (the padded 99 is not counted)
    "entropy_monitor/reweighted_share": 0.0,  # ω ≡ 1: nothing reweighted ...
    "entropy_monitor/reweighted_above_entropy_share": float("nan"),  # ... so no share of it is above H
}


def fake_trainer(batches_done: int = 0, global_step: int = 0, should_update_logs: bool = True, tmp_path=None):
    """The few Trainer attributes the callbacks read, for calling hooks directly."""
    saved = []
    trainer = SimpleNamespace(
        fit_loop=SimpleNamespace(epoch_loop=SimpleNamespace(_batches_that_stepped=batches_done)),
        _logger_connector=SimpleNamespace(should_update_logs=should_update_logs),
        global_step=global_step,
        should_stop=False,
        log_dir=str(tmp_path) if tmp_path else None,
        default_root_dir=str(tmp_path) if tmp_path else ".",
        save_checkpoint=lambda path, weights_only=None: saved.append(path),
        saved=saved,
    )
    return trainer


class RecordingModule:
    """Stands in for pl_module: records what the callbacks log and how."""

    def __init__(self) -> None:
        self.logged: dict[str, float] = {}
        self.kwargs: list[dict] = []

    def log(self, name, value, **kwargs):
        self.logged[name] = float(value)
        self.kwargs.append(kwargs)


# --------------------------------------------------------------------------------------------
# EntropyMonitor


@pytest.mark.parametrize("padded_advantage", [5.0, 0.0, -5.0])  # padding must count in no share
def test_monitor_hand_computed_values_direct_hook(padded_advantage):
    monitor = EntropyMonitor()
    module = RecordingModule()
    outputs = hand_outputs()
    outputs.advantages[0, 2] = padded_advantage
    monitor.on_train_batch_end(fake_trainer(), module, given(outputs), None, 0)
    assert module.logged.keys() == HAND_EXPECTED.keys()
    for name, expected in HAND_EXPECTED.items():
        assert module.logged[name] == pytest.approx(expected, abs=1e-6, nan_ok=True), name
    assert all(kw["on_step"] and not kw["sync_dist"] for kw in module.kwargs)
    shares = [v for k, v in module.logged.items() if "quadrant" in k or "zero_adv" in k]
    assert sum(shares) == pytest.approx(1.0)
    moved = [v for k, v in module.logged.items() if "entropy_change_share_" in k]
    assert sum(abs(v) for v in moved) == pytest.approx(1.0)


def test_monitor_logs_through_real_trainer_and_csv_logger(tmp_path):
    trainer, _ = fit(tmp_path, [hand_outputs(), scripted_outputs(0.25)], [EntropyMonitor()])
    rows = read_metrics(trainer)
    assert sorted(rows) == [0, 1]
    for name, expected in HAND_EXPECTED.items():
        assert rows[0][name] == pytest.approx(expected, abs=1e-6, nan_ok=True), name
    # step 1: every valid token has entropy 0.25 (the padded 1e6 is ignored), surprisal as before
    for q in ("mean", "q10", "q50", "q90"):
        assert rows[1][f"entropy_monitor/entropy_{q}"] == pytest.approx(0.25)
    assert rows[1]["entropy_monitor/surprisal_mean"] == pytest.approx(1.9)
    assert "entropy_monitor/entropy_change_realised" not in rows[0]  # nothing to compare with yet
    assert rows[1]["entropy_monitor/entropy_change_realised"] == pytest.approx(0.25 - 1.6)


def test_monitor_log_every_n_steps_and_prefix(tmp_path):
    outputs = [scripted_outputs(float(i + 1)) for i in range(6)]
    monitor = EntropyMonitor(quantiles=(0.5,), log_every_n_steps=3, prefix="ent/")
    trainer, _ = fit(tmp_path, outputs, [monitor], log_every_n_steps=3)
    rows = read_metrics(trainer)
    logged = {step: row["ent/entropy_mean"] for step, row in rows.items() if "ent/entropy_mean" in row}
    assert logged == {2: 3.0, 5: 6.0}  # batches 3 and 6, the logger's steps 2 and 5
    assert "ent/entropy_q50" in rows[2] and "ent/entropy_q10" not in rows[2]

    computed = []
    for batches_done in range(6):  # direct hook: computes only on every third batch
        module = RecordingModule()
        monitor.on_train_batch_end(fake_trainer(batches_done=batches_done), module, given(hand_outputs()), None, 0)
        computed.append(bool(module.logged))
    assert computed == [False, False, True, False, False, True]


def test_monitor_skips_when_trainer_will_not_write_or_nothing_is_valid():
    monitor = EntropyMonitor()
    module = RecordingModule()
    monitor.on_train_batch_end(fake_trainer(should_update_logs=False), module, given(hand_outputs()), None, 0)
    assert module.logged == {}
    empty = hand_outputs()
    empty.mask = torch.zeros(2, 3, dtype=torch.bool)
    monitor.on_train_batch_end(fake_trainer(), module, given(empty), None, 0)
    assert module.logged == {}


def test_monitor_without_the_step_names_it():
    out = {"entropy": hand_outputs().entropy}  # a training_step that returns a dict of its own
    with pytest.raises(TypeError, match="StepOutput"):
        EntropyMonitor().on_train_batch_end(fake_trainer(), RecordingModule(), out, None, 0)


def test_quantiles_large_path_matches_torch_quantile():
    torch.manual_seed(0)
    values = torch.randn(1001)
    qs = (0.0001, 0.1, 0.5, 0.9, 0.999)
    expected = torch.quantile(values, torch.tensor(qs))
    torch.testing.assert_close(quantiles(values, qs, limit=10), expected)  # sort-and-interpolate path
    torch.testing.assert_close(quantiles(values, qs), expected)


def test_quantile_names():
    assert [quantile_name(q) for q in (0.1, 0.5, 0.9, 0.05, 0.99, 0.025)] == [
        "q10", "q50", "q90", "q05", "q99", "q2p5"
    ]


# --------------------------------------------------------------------------------------------
# EntropyCollapseAlert

# five steps at 1.0 (early level 1.0, threshold 0.5), then decay by 0.8 per step:
# step 6 0.8, 7 0.64, 8 0.512, 9 0.4096 (collapsed 1), 10 0.328 (2), 11 0.262 (3 -> fires), 12..15 lower.
DECAY = [1.0] * 5 + [0.8**k for k in range(1, 11)]
FIRE_STEP = 11


def test_alert_fires_once_at_the_right_step_and_saves_checkpoint(tmp_path):
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=5, patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, module = fit(tmp_path, [scripted_outputs(h) for h in DECAY], [alert])
    alerts = [w for w in caught if "collapsed" in str(w.message)]
    assert len(alerts) == 1, [str(w.message) for w in alerts]
    message = str(alerts[0].message)
    assert f"step {FIRE_STEP}" in message and "0.2621" in message and "threshold 0.5" in message

    assert module.calls == len(DECAY)  # stop=False: training ran to the end
    assert alert.fired_step == FIRE_STEP
    ckpt = Path(trainer.log_dir) / f"entropy-collapse-step{FIRE_STEP}.ckpt"
    assert ckpt.is_file() and alert.checkpoint_path == str(ckpt)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == FIRE_STEP
    assert saved["callbacks"][alert.state_key]["fired_step"] == FIRE_STEP  # a resume will not fire again
    assert len(list(Path(tmp_path).rglob("*.ckpt"))) == 1

    rows = read_metrics(trainer)  # logger step = batch index (0-based); fired at batch FIRE_STEP - 1
    fired = [rows[s]["entropy_alert/fired"] for s in range(len(DECAY))]
    assert fired == [0.0] * (FIRE_STEP - 1) + [1.0] * (len(DECAY) - FIRE_STEP + 1)
    assert [rows[s]["entropy_alert/entropy_smoothed"] for s in range(len(DECAY))] == pytest.approx(DECAY)
    assert "entropy_alert/threshold" not in rows[4]  # not defined during the baseline
    assert rows[5]["entropy_alert/threshold"] == pytest.approx(0.5)


def test_alert_stops_trainer_without_checkpoint(tmp_path):
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=5, patience=3, collapse_actions=["warn", "stop"])
    with pytest.warns(UserWarning, match="Stopping training"):
        trainer, module = fit(tmp_path, [scripted_outputs(h) for h in DECAY], [alert])
    assert module.calls == FIRE_STEP and trainer.global_step == FIRE_STEP
    assert alert.checkpoint_path is None and not list(Path(tmp_path).rglob("*.ckpt"))


def test_alert_quiet_on_stable_noisy_trace(tmp_path):
    rng = random.Random(0)
    trace = [1.0 + rng.uniform(-0.3, 0.3) for _ in range(20)]  # never below 0.5 x early level
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=5, patience=1, min_entropy=0.6)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, module = fit(tmp_path, [scripted_outputs(h) for h in trace], [alert])
    assert not [w for w in caught if "collapsed" in str(w.message)]
    assert alert.fired_step is None and module.calls == 20
    assert all(row["entropy_alert/fired"] == 0.0 for row in read_metrics(trainer).values())


def test_alert_patience_resets_and_smoothing_delays(tmp_path):
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=2, patience=2, collapse_actions=["warn"])
    module = RecordingModule()
    # early level 1.0 -> threshold 0.5; dips of one batch never reach patience 2 until steps 6, 7
    trace = [1.0, 1.0, 0.4, 0.9, 0.4, 0.4, 0.4]
    fired_at = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for step, h in enumerate(trace, start=1):
            alert.on_train_batch_end(fake_trainer(global_step=step), module, given(scripted_outputs(h)), None, 0)
            if module.logged["entropy_alert/fired"] == 1.0 and not fired_at:
                fired_at.append(step)
    assert fired_at == [6]

    smoothed = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=2, patience=1, smoothing=3)
    results = [smoothed.update(h, step) for step, h in enumerate([1.0, 1.0, 0.2, 0.2, 0.2], start=1)]
    # means of the last 3: 1.0, 1.0, 0.733, 0.467 (< 0.5: fires), 0.2 (already fired)
    assert [r[2] for r in results] == [False, False, False, True, False]
    assert results[3][0] == pytest.approx(1.4 / 3) and smoothed.fired_step == 4


def test_alert_min_entropy_only_and_empty_or_nan_batches_are_skipped(tmp_path):
    alert = EntropyCollapseAlert(min_entropy=0.3, max_relative_drop=None, patience=2, collapse_actions=["warn"])
    module = RecordingModule()
    empty = scripted_outputs(0.1)
    empty.mask = torch.zeros(2, 3, dtype=torch.bool)
    nan = scripted_outputs(float("nan"))
    sequence = [scripted_outputs(0.2), empty, nan, scripted_outputs(0.2)]  # skipped ones don't reset
    with pytest.warns(UserWarning, match="step 4"):
        for step, out in enumerate(sequence, start=1):
            alert.on_train_batch_end(fake_trainer(global_step=step), module, given(out), None, 0)
    assert alert.fired_step == 4
    assert alert.threshold() == 0.3


def test_alert_checkpoint_dirpath_direct_hook(tmp_path):
    target = tmp_path / "alerts"
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=1, patience=1, dirpath=str(target),
                                 collapse_actions=["warn", "checkpoint", "stop"])
    trainer = fake_trainer(global_step=7, tmp_path=tmp_path / "logs")
    module = RecordingModule()
    alert.on_train_batch_end(trainer, module, given(scripted_outputs(1.0)), None, 0)
    with pytest.warns(UserWarning, match="collapsed at step 7"):
        alert.on_train_batch_end(trainer, module, given(scripted_outputs(0.1)), None, 0)
    assert trainer.saved == [str(target / "entropy-collapse-step7.ckpt")] and trainer.should_stop
    assert module.logged == {"entropy_alert/entropy_smoothed": pytest.approx(0.1),
                             "entropy_alert/threshold": 0.5, "entropy_alert/fired": 1.0,
                             "entropy_alert/forecast_fired": 0.0}  # 2 batches: no forecast window yet


def test_alert_state_dict_round_trip_resumes_exactly():
    settings = dict(max_relative_drop=0.5, baseline_steps=3, patience=3, smoothing=2)
    first = EntropyCollapseAlert(**settings)
    for h in [1.0, 1.2, 0.8, 0.4, 0.4]:  # baseline 1.0; smoothed 0.6 (ok), then 0.4 (collapsed 1)
        first.update(h)
    state = first.state_dict()
    assert {k: state[k] for k in ("baseline", "window", "collapsed_steps", "fired_step")} == {
        "baseline": [1.0, 1.2, 0.8], "window": [0.4, 0.4], "collapsed_steps": 1, "fired_step": None}

    resumed = EntropyCollapseAlert(**settings)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == state and resumed.threshold() == pytest.approx(0.5)
    assert resumed.update(0.4)[2] is False and resumed.update(0.4)[2] is True  # same as the original would do
    assert first.update(0.4)[2] is False and first.update(0.4)[2] is True

    fired = dict(state, fired_step=12)
    after = EntropyCollapseAlert(**settings)
    after.load_state_dict(fired)
    assert after.fired_step == 12 and all(after.update(0.0)[2] is False for _ in range(5))  # never fires twice

    assert EntropyCollapseAlert(min_entropy=0.1).state_key != EntropyCollapseAlert(min_entropy=0.2).state_key


def test_alert_state_restored_by_trainer_on_resume(tmp_path):
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=5, patience=3)
    with pytest.warns(UserWarning, match="collapsed"):
        fit(tmp_path / "a", [scripted_outputs(h) for h in DECAY[:FIRE_STEP]], [alert])
    resumed = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=5, patience=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer2 = pl.Trainer(
            accelerator="cpu", devices=1, max_steps=FIRE_STEP + 3, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=[resumed], default_root_dir=tmp_path,
        )
        module = ScriptedModule([scripted_outputs(0.01)] * (FIRE_STEP + 3))  # collapsed all along
        trainer2.fit(module, ckpt_path=alert.checkpoint_path)
    assert module.calls >= 2 and trainer2.global_step == FIRE_STEP + 3  # it did train on after the resume
    assert resumed.fired_step == FIRE_STEP
    assert not [w for w in caught if "collapsed" in str(w.message)]


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        (dict(min_entropy=None, max_relative_drop=None), "min_entropy"),
        (dict(max_relative_drop=0.0), "max_relative_drop"),
        (dict(max_relative_drop=1.0), "max_relative_drop"),
        (dict(max_relative_drop=-0.2), "max_relative_drop"),
        (dict(min_entropy=-1.0), "min_entropy"),
        (dict(min_entropy=math.inf), "min_entropy"),
        (dict(patience=0), "patience"),
        (dict(baseline_steps=0), "baseline_steps"),
        (dict(smoothing=0), "smoothing"),
        (dict(patience=1.5), "patience"),
    ],
)
def test_alert_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        EntropyCollapseAlert(**kwargs)


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        (dict(quantiles=(0.0, 0.5)), "quantiles"),
        (dict(quantiles=(0.5, 1.0)), "quantiles"),
        (dict(quantiles=(0.5, 0.5)), "quantiles"),
        (dict(log_every_n_steps=0), "log_every_n_steps"),
    ],
)
def test_monitor_bad_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        EntropyMonitor(**kwargs)

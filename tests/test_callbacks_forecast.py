"""The collapse forecast of EntropyCollapseAlert: synthetic traces, actions, hook, resume, settings.

Synthetic traces (entropy H_t and first-order predicted change p_t per step, seeded noise):

- collapsing: H decays 0.6 % per step from 1.0 (crosses the 0.3 threshold at step ~201) and the updates
  push it down all along; the forecast must fire well before the crossing.
- stable-noisy: H wobbles around 1.0 (5 % noise, a slow +-5 % wave), the updates push slightly down on
  average; never.
- recovering: H falls 1.2 % per step, the scheme's controller switches on at step 40 (the predicted
  change turns positive at once), H follows 5 steps later and climbs back to ~0.9; never. The same
  trace with the trend alone (use_predicted_change=False) fires: the predicted change is what tells
  a dip that is being corrected from a collapse.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from pathlib import Path

import pytest
import torch
from jsonargparse import ArgumentParser

from callbacks import AlertEvent, EntropyCollapseAlert
from callbacks.forecast import EntropyForecaster, linear_fit
from stare_lit.errors import ConfigError
from stare_lit.train.step_log import StepOutput
from tests.test_callbacks import ScriptedModule, fit, read_metrics

THRESHOLD = 0.3


def collapsing(n: int = 300, seed: int = 0) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    for t in range(1, n + 1):
        h = math.exp(-0.006 * t) * (1 + rng.gauss(0, 0.03))
        out.append((h, -0.006 * h * (1 + rng.gauss(0, 0.3))))
    return out


def stable_noisy(n: int = 800, seed: int = 1) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    return [(1.0 + 0.05 * math.sin(2 * math.pi * t / 200) + rng.gauss(0, 0.05), -0.004 + rng.gauss(0, 0.002))
            for t in range(1, n + 1)]


def recovering(n: int = 300, seed: int = 2) -> list[tuple[float, float]]:
    rng = random.Random(seed)
    out = []
    for t in range(1, n + 1):
        if t <= 45:
            h = math.exp(-0.012 * t)
        else:
            h = math.exp(-0.012 * 45 + 0.006 * min(t - 45, 75))
        h *= 1 + rng.gauss(0, 0.03)
        push = -0.012 if t < 40 else 0.006  # the controller switches on at step 40
        out.append((h, push * h * (1 + rng.gauss(0, 0.3))))
    return out


def first_below(trace, threshold=THRESHOLD) -> int | None:
    return next((t for t, (h, _) in enumerate(trace, start=1) if h < threshold), None)


def replay(trace, **kwargs) -> EntropyCollapseAlert:
    """Feed a trace to the alert's bookkeeping (steps 1, 2, ...) exactly as on_train_batch_end does."""
    settings = dict(min_entropy=THRESHOLD, max_relative_drop=None, horizon=100, window=50, patience=3)
    alert = EntropyCollapseAlert(**(settings | kwargs))
    for step, (h, p) in enumerate(trace, start=1):
        alert.update(h, step)
        alert.update_forecast(h, step, p)
    return alert


@pytest.mark.parametrize("use_predicted_change", [True, False])
def test_forecast_fires_early_on_a_collapsing_trace(use_predicted_change):
    trace = collapsing()
    crossing = first_below(trace)
    assert 190 <= crossing <= 205
    alert = EntropyCollapseAlert(min_entropy=THRESHOLD, max_relative_drop=None, horizon=100, window=50,
                                 patience=3, use_predicted_change=use_predicted_change)
    forecasts = {}
    for step, (h, p) in enumerate(trace, start=1):
        alert.update(h, step)
        forecasts[step] = alert.update_forecast(h, step, p)[0]
    fired = alert.forecast_fired_step
    assert fired is not None and fired <= crossing - 50  # warned well ahead (~100 steps here, >= 66 over 30 seeds)
    assert alert.fired_step is not None and alert.fired_step > crossing - 5  # the collapse rule still fires later
    f = forecasts[fired]
    assert f.within_horizon and f.steps_to_threshold <= 100
    assert f.crossing_step == pytest.approx(crossing, abs=20)  # the forecast says when, not only that
    assert f.trend_rate == pytest.approx(-0.006, rel=0.15)


@pytest.mark.parametrize("use_predicted_change", [True, False])
def test_forecast_quiet_on_a_stable_noisy_trace(use_predicted_change):
    trace = stable_noisy()
    alert = replay(trace, use_predicted_change=use_predicted_change)
    assert alert.forecast_fired_step is None and alert.fired_step is None
    # the slow wave does give significant declines, but none that reaches the threshold within the horizon
    assert alert.last_forecast is not None


def test_forecast_quiet_on_a_recovering_trace_thanks_to_the_predicted_change():
    trace = recovering()
    assert min(h for h, _ in trace) > 0.5 and trace[-1][0] > 0.85
    alert = replay(trace)
    assert alert.forecast_fired_step is None and alert.fired_step is None
    trend_only = replay(trace, use_predicted_change=False)
    assert trend_only.forecast_fired_step is not None and trend_only.forecast_fired_step < 70  # cries wolf


def test_forecaster_arithmetic():
    # exact exponential decay: level and rate recovered, steps to threshold = log ratio / rate
    f = EntropyForecaster(window=10, confidence=3.0, use_predicted_change=False)
    for step in range(1, 11):
        forecast = f.update(step, 0.8 * math.exp(-0.01 * step), None, threshold=0.4, horizon=200)
    assert forecast.level == pytest.approx(0.8 * math.exp(-0.1))
    assert forecast.trend_rate == pytest.approx(-0.01) and forecast.t_stat < -1e6  # no residual
    assert forecast.steps_to_threshold == pytest.approx(math.log(0.8 * math.exp(-0.1) / 0.4) / 0.01)
    assert forecast.within_horizon and forecast.crossing_step == pytest.approx(10 + forecast.steps_to_threshold)
    assert f.update(11, 0.5, None, threshold=None, horizon=200) is None  # no threshold, no forecast

    # the predicted change scales the rate: recent push half the window's -> half the rate
    g = EntropyForecaster(window=10, confidence=0.0, recent=2)
    for step in range(1, 11):
        forecast = g.update(step, math.exp(-0.01 * step), -2.0 if step <= 8 else -0.5, threshold=0.1, horizon=1)
    p_window = (8 * -2.0 + 2 * -0.5) / 10
    assert forecast.dynamics_ratio == pytest.approx(-0.5 / p_window)
    assert forecast.rate == pytest.approx(-0.01 * -0.5 / p_window)
    for step in (11, 12):  # the push turned up (recent mean > 0): no crossing, however steep the trend
        forecast = g.update(step, math.exp(-0.01 * step), 0.3, threshold=0.1, horizon=1000)
    assert forecast.rate == 0.0 and forecast.steps_to_threshold is None and not forecast.within_horizon
    # below the threshold already: 0 steps; NaN predicted changes are ignored
    h = EntropyForecaster(window=3, confidence=0.0)
    for step, value in enumerate([0.3, 0.2, 0.1], start=1):
        forecast = h.update(step, value, math.nan, threshold=0.25, horizon=5)
    assert forecast.steps_to_threshold == 0.0 and forecast.dynamics_ratio is None

    assert linear_fit([1.0, 1.0], [2.0, 3.0]) == (2.5, 0.0, math.inf)  # one distinct x: no slope


# --------------------------------------------------------------------------------------------
# through a real Trainer


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


# 10 steps at 1.0, then -5 % per step: below 0.3 from step 34 on
SHORT = [1.0] * 10 + [0.95**k for k in range(1, 31)]
SHORT_SETTINGS = dict(min_entropy=THRESHOLD, max_relative_drop=None, horizon=15, window=8, patience=2)


def test_forecast_actions_through_the_trainer(tmp_path):
    events: list[AlertEvent] = []
    alert = EntropyCollapseAlert(**SHORT_SETTINGS, forecast_actions=["warn", "checkpoint", "hook"],
                                 collapse_actions=["warn", "hook"],
                                 hook=lambda trainer, module, event: events.append(event))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer, module = fit(tmp_path, [trace_outputs(h, -1.0) for h in SHORT], [alert])
    crossing = next(t for t, h in enumerate(SHORT, start=1) if h < THRESHOLD)
    fired = alert.forecast_fired_step
    assert fired is not None and fired < crossing - 5 and alert.fired_step >= crossing
    assert [e.kind for e in events] == ["forecast", "collapse"]
    forecast = events[0]
    assert forecast.step == fired and forecast.threshold == THRESHOLD and forecast.steps_to_threshold <= 15
    assert forecast.checkpoint_path == alert.forecast_checkpoint_path
    assert Path(forecast.checkpoint_path).name == f"entropy-forecast-step{fired}.ckpt"
    saved = torch.load(forecast.checkpoint_path, weights_only=False)
    assert saved["global_step"] == fired
    assert saved["callbacks"][alert.state_key]["forecast_fired_step"] == fired
    assert events[1].checkpoint_path is None  # the collapse event had no checkpoint action

    messages = [str(w.message) for w in caught if "EntropyCollapseAlert" in str(w.message)]
    assert len(messages) == 2 and messages[0] == forecast.message and messages[1] == events[1].message
    assert f"collapse forecast at step {fired}" in messages[0]
    assert "confident tokens of rewarded completions (A>0, s<=H)" in messages[0]
    assert f"Saved {forecast.checkpoint_path}" in messages[0]
    assert "collapsed at step" in messages[1]

    rows = read_metrics(trainer)  # logger step = batch index = global_step - 1
    assert [rows[s]["entropy_alert/forecast_fired"] for s in range(len(SHORT))] == \
        [0.0] * (fired - 1) + [1.0] * (len(SHORT) - fired + 1)
    assert "entropy_alert/trend_rate" not in rows[6] and "entropy_alert/trend_rate" in rows[7]  # window 8
    assert rows[fired - 1]["entropy_alert/forecast_steps_to_threshold"] <= 15
    assert rows[fired - 1]["entropy_alert/trend_rate"] < 0


def test_forecast_stop_and_log_actions(tmp_path, caplog):
    alert = EntropyCollapseAlert(**SHORT_SETTINGS, forecast_actions=["log", "stop"])
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        trainer, module = fit(tmp_path, [trace_outputs(h, -1.0) for h in SHORT], [alert])
    assert module.calls == alert.forecast_fired_step == trainer.global_step  # stopped at the forecast
    assert not [w for w in caught if "EntropyCollapseAlert" in str(w.message)]  # logged, not warned
    assert any("collapse forecast" in r.getMessage() and "Stopping training" in r.getMessage() for r in caplog.records)


def test_forecast_quiet_when_the_updates_push_entropy_up(tmp_path):
    # the same decline, but the predicted change says the updates now push entropy up: no forecast
    alert = EntropyCollapseAlert(**SHORT_SETTINGS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fit(tmp_path, [trace_outputs(h, +1.0) for h in SHORT[:25]], [alert])
    assert alert.forecast_fired_step is None and alert.last_forecast.rate == 0.0
    assert not [w for w in caught if "forecast" in str(w.message)]


def test_forecast_state_survives_checkpoint_and_resume(tmp_path):
    first = EntropyCollapseAlert(**SHORT_SETTINGS, forecast_actions=["checkpoint"], collapse_actions=[])
    fit(tmp_path / "a", [trace_outputs(h, -1.0) for h in SHORT[:25]], [first])
    fired = first.forecast_fired_step
    assert fired is not None and fired < 25
    state = first.state_dict()  # at the end of the run
    saved = torch.load(first.forecast_checkpoint_path, weights_only=False)["callbacks"][first.state_key]
    assert saved["forecast_fired_step"] == fired and len(saved["forecaster"]["history"]) == 8

    # direct round trip: same forecasts from here on
    twin = EntropyCollapseAlert(**SHORT_SETTINGS)
    twin.load_state_dict(state)
    assert twin.state_dict() == state
    for step, h in enumerate(SHORT[25:], start=26):
        a, b = first.update_forecast(h, step, -0.1), twin.update_forecast(h, step, -0.1)
        assert a[0] == b[0] and a[1] is b[1] is False  # identical forecasts, never fires twice

    # resume from the forecast checkpoint with a fresh alert: restored, does not fire again
    resumed = EntropyCollapseAlert(**SHORT_SETTINGS, forecast_actions=["warn", "stop"], collapse_actions=[])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        import lightning.pytorch as pl

        trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=len(SHORT), logger=False,
                             enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                             callbacks=[resumed], default_root_dir=tmp_path)
        module = ScriptedModule([trace_outputs(h, -1.0) for h in SHORT])
        trainer.fit(module, ckpt_path=first.forecast_checkpoint_path)
    assert resumed.forecast_fired_step == fired and trainer.global_step == len(SHORT)  # no stop: did not fire
    assert not [w for w in caught if "forecast" in str(w.message)]


def test_old_checkpoint_state_without_forecast_keys_loads():
    alert = EntropyCollapseAlert(max_relative_drop=0.5, baseline_steps=2)
    alert.load_state_dict({"baseline": [1.0, 1.0], "window": [0.9], "collapsed_steps": 0, "fired_step": None})
    assert alert.forecast_fired_step is None and alert.threshold() == 0.5


# --------------------------------------------------------------------------------------------
# settings


def record_hook(trainer, pl_module, event) -> None:
    """A hook a YAML config names by import path."""


def test_hook_and_actions_from_yaml():
    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(EntropyCollapseAlert, "alert")
    config = parser.parse_string(
        "alert:\n  min_entropy: 0.1\n  forecast_actions: [warn, hook]\n"
        "  hook: tests.test_callbacks_forecast.record_hook\n"
    )
    alert = parser.instantiate_classes(config).alert
    assert alert.hook is record_hook and alert.forecast_actions == ("warn", "hook")


@pytest.mark.parametrize(
    "kwargs, setting",
    [
        (dict(horizon=0), "horizon"),
        (dict(window=2), "window"),
        (dict(confidence=-1.0), "confidence"),
        (dict(forecast_actions=["email"]), "forecast_actions"),
        (dict(collapse_actions="warn"), "collapse_actions"),
        (dict(forecast_actions=["hook"]), "hook"),
    ],
)
def test_alert_bad_forecast_settings(kwargs, setting):
    with pytest.raises(ConfigError, match=setting):
        EntropyCollapseAlert(**kwargs)


def test_no_forecast_when_horizon_is_none():
    alert = replay(collapsing(), horizon=None)
    assert alert.forecast_fired_step is None and alert.last_forecast is None and alert.fired_step is not None

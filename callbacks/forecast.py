"""Forecast when the token entropy will cross a collapse threshold: recent trend, corrected by the dynamics.

Pure Python bookkeeping (no torch, no Lightning, no collectives), so it is the same on every rank and
can be fed synthetic traces in tests. ``EntropyCollapseAlert`` owns one and checkpoints its state.

The model, per step t with world token-mean entropy H_t and predicted change p_t (the first-order
``entropy_change_pred`` of ``callbacks.stats``, per unit step size):

1. Trend: entropy decays roughly exponentially as it collapses (it slows down near zero), so the fit
   is least squares log H ~ a + b * step over the last ``window`` steps: the fitted current level
   H_fit, the rate b (relative change per step; -0.002 is -0.2 % per step) and its standard error
   se(b). The trend counts only when it is significant: b / se(b) < -confidence. (A straight-line
   fit of H forecasts the crossing too early on a decelerating decline.)
2. Dynamics: the first-order prediction says which way the updates push the entropy *now*, before the
   trend can show it (a controller that just switched on, a quadrant that stopped dominating). With
   p_recent the mean of p over the last ``recent`` steps and p_window over the fitting window:

   - p_recent >= 0: the updates push entropy up (or not at all): no crossing is forecast.
   - p_window < 0: the rate is scaled by r = p_recent / p_window clipped to [0, 2]: the trend, as
     steep as the updates push now compared with how they pushed while the trend was measured.
   - otherwise (the window's decline is not explained by the first-order term): the trend as is.

3. Steps to threshold: (log H_fit - log threshold) / -rate (0 once H_fit is at or below it). The
   forecast is "within horizon" when this is <= horizon.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

__all__ = ["EntropyForecaster", "Forecast"]

_TINY = 1e-12  # entropies at or below this are taken as this before the log


@dataclass(frozen=True)
class Forecast:
    """One step's forecast. ``steps_to_threshold`` is None when no crossing is forecast."""

    step: int
    level: float  # fitted current entropy H_fit (nats)
    trend_rate: float  # least-squares slope b of log H (relative change per step)
    t_stat: float  # b / se(b); very negative = a clear decline
    rate: float  # the rate the forecast uses, after the dynamics correction
    dynamics_ratio: float | None  # r, or None when the dynamics did not enter
    steps_to_threshold: float | None
    within_horizon: bool

    @property
    def crossing_step(self) -> float | None:
        """The step at which the entropy is forecast to reach the threshold."""
        return None if self.steps_to_threshold is None else self.step + self.steps_to_threshold


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares y ~ a + b x: (fitted y at the last x, b, standard error of b).

    The standard error is inf with fewer than 3 distinct points (a slope is then not meaningful).
    """
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx <= 0:
        return my, 0.0, math.inf
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx
    a = my - b * mx
    residual = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys))
    se = math.sqrt(residual / (n - 2) / sxx) if n > 2 else math.inf
    return a + b * xs[-1], b, se


class EntropyForecaster:
    """Keeps the last ``window`` (step, entropy, predicted change) and forecasts the threshold crossing.

    Args:
        window: Number of latest steps in the trend fit; no forecast until that many are in.
        confidence: The trend counts only when its slope is at least this many standard errors below 0.
        use_predicted_change: Correct the trend by the first-order predicted change (see the module).
        recent: Steps averaged for the current predicted change; default ``max(1, window // 5)``.
    """

    def __init__(self, window: int = 50, confidence: float = 3.0, use_predicted_change: bool = True,
                 recent: int | None = None) -> None:
        self.window = window
        self.confidence = confidence
        self.use_predicted_change = use_predicted_change
        self.recent = recent if recent is not None else max(1, window // 5)
        self._history: deque[tuple[int, float, float]] = deque(maxlen=window)

    def update(self, step: int, entropy: float, predicted_change: float | None, threshold: float | None,
               horizon: float) -> Forecast | None:
        """Add one step and forecast; None until ``window`` steps are in or while no threshold is set.

        A non-finite ``predicted_change`` (or None) is stored as NaN and left out of the dynamics.
        """
        p = float(predicted_change) if predicted_change is not None else math.nan
        self._history.append((int(step), float(entropy), p if math.isfinite(p) else math.nan))
        if len(self._history) < self.window or threshold is None:
            return None
        steps = [float(s) for s, _, _ in self._history]
        log_level, trend, se = linear_fit(steps, [math.log(max(h, _TINY)) for _, h, _ in self._history])
        t_stat = trend / se if se > 0 else (-math.inf if trend < 0 else math.inf)
        rate, ratio = trend, None
        if self.use_predicted_change:
            rate, ratio = self._dynamics(trend)
        steps_to = None
        if t_stat < -self.confidence and rate < 0 and threshold > 0:
            steps_to = max(0.0, (log_level - math.log(threshold)) / -rate)
        return Forecast(step=int(step), level=math.exp(log_level), trend_rate=trend, t_stat=t_stat, rate=rate,
                        dynamics_ratio=ratio, steps_to_threshold=steps_to,
                        within_horizon=steps_to is not None and steps_to <= horizon)

    def _dynamics(self, trend: float) -> tuple[float, float | None]:
        ps = [p for _, _, p in self._history]
        window_ps = [p for p in ps if not math.isnan(p)]
        recent_ps = [p for p in ps[-self.recent:] if not math.isnan(p)]
        if not recent_ps or not window_ps:
            return trend, None  # nothing to correct with
        p_recent = sum(recent_ps) / len(recent_ps)
        p_window = sum(window_ps) / len(window_ps)
        if p_recent >= 0:
            return 0.0, 0.0  # the updates now push entropy up: no decline to extrapolate
        if p_window < 0:
            ratio = min(max(p_recent / p_window, 0.0), 2.0)
            return trend * ratio, ratio
        return trend, None

    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(x) for x in self._history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._history = deque(((int(s), float(h), float(p)) for s, h, p in state["history"]), maxlen=self.window)

"""Callbacks that watch the policy's token entropy: a monitor that logs and attributes it, an alert that
forecasts its collapse.

Both read the typed step the LightningModule's ``training_step`` returns (Lightning hands it to
``on_train_batch_end`` inside ``outputs``; ``StepOutput.of(outputs)`` takes it out). Its fields, from
``stare_lit.train.StepOutput``::

    loss        # ()     float32
    entropy     # (B, T) float32  H = -sum_v pi(v|.) log pi(v|.), the whole next-token distribution
    surprisal   # (B, T) float32  s = -log pi(o_t|.), the *sampled* token only
    advantages  # (B, T) float32  per-token advantage A
    weights     # (B, T) float32  token weights of the weighting scheme (1 = plain GRPO)
    mask        # (B, T) bool     True on the loss's completion tokens
    rewards     # (N,)   float32  NaN for an unscorable completion

Entropy and surprisal are different numbers (E_{a~pi}[s_a] = H); every metric name says which one it
is. Every statistic is token-weighted over the valid tokens of *all* ranks (``callbacks.stats``),
so every rank computes the same value: the alert's decisions (save a checkpoint, stop) therefore
agree across ranks, which matters because ``trainer.save_checkpoint`` is a collective call.

Callbacks only observe, log, alert, save checkpoints or stop; nothing here touches gradients or the
weighting scheme.

Usage in YAML::

    trainer:
      callbacks:
        - class_path: callbacks.EntropyMonitor
        - class_path: callbacks.EntropyCollapseAlert
          init_args:
            min_entropy: 0.1
            horizon: 100
            forecast_actions: [warn, checkpoint]
            collapse_actions: [warn, stop]
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor

from callbacks.forecast import EntropyForecaster, Forecast
from callbacks.stats import QUADRANTS, batches_done, step_stats
from stare_lit.ops.distributed import gather_valid
from stare_lit.errors import check
from stare_lit.train.step_log import StepKeys, StepOutput

__all__ = ["AlertEvent", "EntropyCollapseAlert", "EntropyMonitor"]

# torch.quantile refuses inputs with more than 2**24 elements; above that we sort and interpolate.
_QUANTILE_LIMIT = 2**24


def quantile_name(q: float) -> str:
    """Metric suffix for quantile ``q``: 0.1 -> ``q10``, 0.05 -> ``q05``, 0.025 -> ``q2p5``."""
    pct = 100.0 * q
    if abs(pct - round(pct)) < 1e-9:
        return f"q{round(pct):02d}"
    return "q" + f"{pct:g}".replace(".", "p")


def quantiles(values: Tensor, qs: Sequence[float], limit: int = _QUANTILE_LIMIT) -> Tensor:
    """Quantiles of a 1-D tensor with linear interpolation, exactly as ``torch.quantile`` computes them.

    ``torch.quantile`` rejects more than 2**24 elements; above ``limit`` elements the values are
    sorted and the same interpolation is done by hand (exact, deterministic, no subsampling).

    Example: values [0.5, 1.0, 1.5, 2.0, 3.0], qs (0.1, 0.5, 0.9) -> [0.7, 1.5, 2.6].
    """
    q = torch.tensor(list(qs), dtype=values.dtype, device=values.device)  # (Q,)
    if values.numel() <= limit:
        return torch.quantile(values, q)
    ordered = values.sort().values  # (n,)
    pos = q * (ordered.numel() - 1)  # (Q,) fractional rank
    lo = pos.floor().long()
    hi = pos.ceil().long()
    return ordered[lo] + (pos - lo.to(pos.dtype)) * (ordered[hi] - ordered[lo])


class EntropyMonitor(pl.Callback):
    """Logs the token entropy, which tokens move it (quadrant attribution), and where in the completion it sits.

    All values are over the valid (``mask``) tokens of all ranks, token-weighted (``callbacks.stats``).
    With the default ``prefix="entropy_monitor/"`` the logged metrics are:

    - ``entropy_monitor/entropy_mean``: mean token entropy H of the sampling policy.
    - ``entropy_monitor/entropy_q10``, ``entropy_q50``, ``entropy_q90`` (one per ``quantiles`` entry;
      0.05 -> ``entropy_q05``, 0.025 -> ``entropy_q2p5``): quantiles of the token entropy.
    - ``entropy_monitor/surprisal_mean``: mean surprisal s = -log pi of the sampled tokens.
    - Share of valid tokens in each quadrant of the first-order entropy change
      dH ~ A * pi_a * (s - H) (methods.md, "Why entropy collapses"); "high surprisal" means s > H of
      the same token, "low surprisal" means s <= H (a tie, which leaves H unchanged, counts as low):

      - ``entropy_monitor/quadrant_pos_adv_high_surprisal``: A > 0, s > H (raises H).
      - ``entropy_monitor/quadrant_pos_adv_low_surprisal``: A > 0, s <= H (lowers H; drives collapse).
      - ``entropy_monitor/quadrant_neg_adv_high_surprisal``: A < 0, s > H (lowers H).
      - ``entropy_monitor/quadrant_neg_adv_low_surprisal``: A < 0, s <= H (raises H).
    - ``entropy_monitor/zero_adv_share``: share of valid tokens with A == 0 (groups whose rewards are
      all equal; they carry no policy gradient). The four quadrants plus this add up to 1.
    - Attribution of the predicted entropy change, per unit step size
      (``stare_lit.ops.predicted_entropy_change``: A * w * pi(a) * (s - H), w the scheme's
      token weight), for each quadrant ``<q>`` above:

      - ``entropy_monitor/entropy_change_pred_<q>``: the quadrant's sum divided by the number of valid
        tokens; the four add up to
      - ``entropy_monitor/entropy_change_pred``: the predicted change of the batch-mean entropy.
      - ``entropy_monitor/entropy_change_share_<q>``: the quadrant's signed share of the predicted
        movement (negative: lowers H; absolute values add up to 1).
      - ``entropy_monitor/entropy_change_pred_reweight``: what the scheme's weights add to
        ``entropy_change_pred`` compared with w = 1 (0 for plain GRPO; > 0 offsets collapse): the sum
        over valid tokens of A * (w - 1) * pi(a) * (s - H) divided by their number, i.e. the predicted
        change of the mean entropy due to the reweighting alone (first order, per unit step size).
    - Which tokens the scheme reweighted (any scheme; w the weights the first update used):

      - ``entropy_monitor/reweighted_share``: share of valid tokens with w != 1.
      - ``entropy_monitor/reweighted_above_entropy_share``: of those, the share whose surprisal is
        above their own position's entropy (s > H); NaN on a step where no token was reweighted (STARE's
        gate closed). Upweighting an A > 0 token, or damping an A < 0 one, raises H only on that side:
        STARE's paper rule puts most of its weight below H on the forking task, ``selection:
        above_entropy`` all of it above.
      - ``entropy_monitor/entropy_change_realised``: the realised change of ``entropy_mean`` per batch
        since the previous batch the monitor computed (the step size's true effect, measured on a new
        batch: compare it, noisy, with the previous step's ``entropy_change_pred``). Absent on the
        first computed batch.
    - ``entropy_monitor/entropy_position_<k>of<K>``: mean H of the tokens in relative-position bucket
      k of K of their completion (``position_buckets``; a bucket no token falls in is left out).
    - ``entropy_monitor/forking_token_share``: share of tokens with H > ``forking_entropy``, and
      ``entropy_monitor/forking_entropy_mean``: the mean H of those tokens (NaN on a step with none).
      A *forking position* is thus one whose entropy under π_old exceeds the threshold (not a task's
      known choice points): as a policy collapses its forks fall below the threshold, so read the
      mean beside the share (fewer forks, and those left less open).

    Histograms of the token entropy and surprisal (``<prefix>token_entropy``, ``<prefix>token_surprisal``)
    go every ``histogram_every_n_steps`` batches to every logger whose ``experiment`` has an
    ``add_histogram(tag, values, global_step)`` method (TensorBoard's ``SummaryWriter``); other
    loggers are left alone. Nothing is logged on a step where no rank has a valid token.

    Args:
        quantiles: Entropy quantiles to log, each strictly between 0 and 1.
        log_every_n_steps: Compute and log every this many training batches (counted like
            ``Trainer(log_every_n_steps)``). The callback also skips the work (and its collectives) on
            batches the logger will not write, so the default 1 follows the Trainer's cadence; prefer
            setting that. Lightning writes the last step value again at each later logging step of the
            epoch, so a value larger than ``trainer.log_every_n_steps`` shows repeated points.
        position_buckets: Number K of relative-position buckets for the entropy by position (0: off).
        forking_entropy: Entropy (nats) above which a token counts as a high-entropy "forking" token
            (arXiv 2506.01939 reports 0.672 as the 80th percentile for Qwen3-8B; pick one near the upper
            tail of your model's token entropy). None: not logged.
        histogram_every_n_steps: Write the entropy and surprisal histograms every this many batches
            (0: never). Needs a gather of every token, so keep it sparse.
        prefix: Prefix of every metric name.
    """

    def __init__(
        self,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        log_every_n_steps: int = 1,
        position_buckets: int = 4,
        forking_entropy: float | None = 0.672,
        histogram_every_n_steps: int = 50,
        prefix: str = "entropy_monitor/",
    ) -> None:
        super().__init__()
        quantiles = tuple(float(q) for q in quantiles)
        check(
            all(0.0 < q < 1.0 for q in quantiles),
            f"EntropyMonitor.quantiles must lie strictly between 0 and 1, got {list(quantiles)}; "
            "use e.g. [0.1, 0.5, 0.9] (the mean is logged separately)",
        )
        names = [quantile_name(q) for q in quantiles]
        check(
            len(set(names)) == len(names),
            f"EntropyMonitor.quantiles has duplicates ({list(quantiles)} -> {names}); list each quantile once",
        )
        for name, value, low in (
            ("log_every_n_steps", log_every_n_steps, 1),
            ("position_buckets", position_buckets, 0),
            ("histogram_every_n_steps", histogram_every_n_steps, 0),
        ):
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"EntropyMonitor.{name} must be an integer >= {low}, got {value!r}",
            )
        check(
            forking_entropy is None or (math.isfinite(forking_entropy) and forking_entropy >= 0),
            f"EntropyMonitor.forking_entropy must be an entropy >= 0 in nats (or null), got {forking_entropy!r}",
        )
        self.quantiles = quantiles
        self.log_every_n_steps = log_every_n_steps
        self.position_buckets = position_buckets
        self.forking_entropy = forking_entropy
        self.histogram_every_n_steps = histogram_every_n_steps
        self.prefix = prefix
        self._previous: tuple[int, float] | None = None  # (batch index, entropy_mean) last computed
        self._keys = StepKeys()

    @property
    def state_key(self) -> str:
        return self._generate_state_key(prefix=self.prefix)

    def compute(self, step: StepOutput, batch: int | None = None) -> dict[str, float]:
        """The metrics (names without prefix) from one step; empty if no rank has a valid token.

        ``batch`` is the index of the training batch (``entropy_change_realised`` needs it; None leaves
        that metric and the monitor's state alone). Collective under torch.distributed: every rank must
        call it on the same steps.
        """
        stats = step_stats(step, self.position_buckets, self.forking_entropy)
        if not stats:
            return {}
        metrics = {"entropy_mean": stats["entropy_mean"]}
        all_entropy = gather_valid(step.entropy, step.mask.bool())  # (n_world,)
        for q, value in zip(self.quantiles, quantiles(all_entropy, self.quantiles).tolist()):
            metrics[f"entropy_{quantile_name(q)}"] = value
        metrics |= {k: v for k, v in stats.items() if k not in ("token_count", "entropy_mean")}
        if batch is not None and math.isfinite(stats["entropy_mean"]):
            if self._previous is not None and batch > self._previous[0]:
                metrics["entropy_change_realised"] = (stats["entropy_mean"] - self._previous[1]) / (
                    batch - self._previous[0]
                )
            self._previous = (batch, stats["entropy_mean"])
        return metrics

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = StepOutput.of(outputs, type(self).__name__)
        done = batches_done(trainer)
        if self.histogram_every_n_steps and (done + 1) % self.histogram_every_n_steps == 0 and trainer.loggers:
            self._histograms(trainer, step, done)
        # Both conditions are identical on every rank, so the collectives in compute() stay matched.
        if (done + 1) % self.log_every_n_steps != 0:
            return
        if not trainer._logger_connector.should_update_logs:
            return
        for name, value in self._keys.fill(self.compute(step, batch=done)).items():  # NaN, not stale, if none
            pl_module.log(self.prefix + name, value, on_step=True, on_epoch=False, sync_dist=False)

    def _histograms(self, trainer: pl.Trainer, out: StepOutput, step: int) -> None:
        valid = out.mask.bool()
        values = {
            "token_entropy": gather_valid(out.entropy, valid),  # (n_world,) collective
            "token_surprisal": gather_valid(out.surprisal, valid),
        }
        if not trainer.is_global_zero or values["token_entropy"].numel() == 0:
            return
        for logger in trainer.loggers:
            add_histogram = getattr(logger.experiment, "add_histogram", None)
            if callable(add_histogram):
                for name, v in values.items():
                    add_histogram(self.prefix + name, v.cpu(), global_step=step)

    def state_dict(self) -> dict[str, Any]:
        return {"previous": None if self._previous is None else list(self._previous)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        previous = state_dict.get("previous")
        self._previous = None if previous is None else (int(previous[0]), float(previous[1]))


Action = Literal["log", "warn", "checkpoint", "stop", "hook"]
_ACTIONS = ("log", "warn", "checkpoint", "stop", "hook")

# How an alert names the quadrant that drives the predicted entropy change.
_QUADRANT_WORDS = {
    "pos_adv_high_surprisal": "surprising tokens of rewarded completions (A>0, s>H)",
    "pos_adv_low_surprisal": "confident tokens of rewarded completions (A>0, s<=H)",
    "neg_adv_high_surprisal": "surprising tokens of penalised completions (A<0, s>H)",
    "neg_adv_low_surprisal": "confident tokens of penalised completions (A<0, s<=H)",
}


@dataclass(frozen=True)
class AlertEvent:
    """What an ``EntropyCollapseAlert`` hook receives when the alert fires.

    Attributes:
        kind: "forecast" (collapse is coming within the horizon) or "collapse" (it has happened).
        step: ``trainer.global_step`` when it fired.
        entropy: the fitted current entropy (forecast) or the smoothed entropy (collapse), nats.
        threshold: the collapse threshold, nats.
        steps_to_threshold: forecast steps until the entropy reaches the threshold (forecast only).
        message: the text that is warned or logged.
        checkpoint_path: where the "checkpoint" action saved, or None.
    """

    kind: Literal["forecast", "collapse"]
    step: int
    entropy: float
    threshold: float
    steps_to_threshold: float | None
    message: str
    checkpoint_path: str | None = None


class EntropyCollapseAlert(pl.Callback):
    """Forecasts token-entropy collapse and alerts before it happens, and again if it does happen.

    Every training batch it takes the world token-mean entropy and the first-order predicted entropy
    change (``callbacks.stats.step_stats``, one all_reduce; the same on every rank, so every rank takes
    the same decisions). The *threshold* is ``max(min_entropy, (1 - max_relative_drop) * early level)``,
    the early level being the mean over the first ``baseline_steps`` batches (the relative part applies
    from the batch after the baseline is complete; an unset part is left out).

    Two events, each fired at most once per run (their state is checkpointed, so a resume does not fire
    them again), each running its own list of actions:

    - **forecast** (``horizon`` set): an exponential trend (least squares on log entropy) over the last
      ``window`` batches, corrected by the predicted entropy change (``callbacks.forecast``: when the
      updates stop pushing the entropy down, no crossing is forecast), says the entropy will reach the
      threshold within ``horizon`` steps, with a trend at least ``confidence`` standard errors below
      zero, for ``patience`` consecutive batches. The message names the quadrant that drives the
      predicted drop and how much the scheme's token weights offset (or add to) it.
    - **collapse**: the entropy smoothed over the last ``smoothing`` batches is below the threshold for
      ``patience`` consecutive batches.

    Actions: ``"warn"`` (a UserWarning on rank zero), ``"log"`` (the same message at INFO level on rank
    zero, no warning), ``"checkpoint"`` (save ``<dir>/entropy-forecast-step{global_step}.ckpt`` or
    ``entropy-collapse-step{global_step}.ckpt`` on all ranks), ``"stop"`` (set ``trainer.should_stop``),
    ``"hook"`` (call ``hook(trainer, pl_module, event)`` with an ``AlertEvent`` on every rank; guard
    side effects with ``trainer.is_global_zero``). Batches with no valid token on any rank, or a
    non-finite entropy, are skipped (they neither count nor reset a counter).

    Logged every batch, with the default ``prefix="entropy_alert/"``:

    - ``entropy_alert/fired``: 0 until the collapse event fires, 1 from that batch on (a step curve, so
      it survives the logger writing only every ``trainer.log_every_n_steps`` batches).
    - ``entropy_alert/forecast_fired``: the same for the forecast event.
    - ``entropy_alert/entropy_smoothed``: the smoothed token-mean entropy compared with the threshold.
    - ``entropy_alert/threshold``: the threshold, once it is defined.
    - ``entropy_alert/trend_rate``: least-squares slope of log entropy per step over the window (the
      relative change per step; -0.002 = -0.2 % per step), and ``entropy_alert/forecast_rate``: the
      rate after the predicted-change correction (both once the window is full).
    - ``entropy_alert/forecast_steps_to_threshold``: forecast steps until the threshold, on batches
      where a significant decline is forecast to reach it.

    Args:
        min_entropy: Absolute floor on the token-mean entropy (nats); None to not use one.
        max_relative_drop: Largest allowed drop relative to the early level, in (0, 1); 0.5 fires when
            entropy falls below half its early level. None to use only ``min_entropy``.
        baseline_steps: Number of first training batches whose mean entropy is the early level.
        patience: Consecutive batches a condition must hold before its event fires.
        horizon: Forecast horizon in optimizer steps (``trainer.global_step``): the forecast event
            fires when the threshold is forecast to be reached within this many steps. None: no
            forecast, only the collapse event.
        window: Number of latest batches in the trend fit; no forecast before that many batches.
        confidence: The trend must be at least this many standard errors below zero (a t-statistic)
            before anything is forecast; larger is quieter on noisy runs.
        use_predicted_change: Correct the trend by the first-order predicted entropy change (off: the
            trend alone).
        forecast_actions: Actions of the forecast event: any of log, warn, checkpoint, stop, hook.
        collapse_actions: Actions of the collapse event: any of log, warn, checkpoint, stop, hook.
        hook: Callable ``hook(trainer, pl_module, event)`` for the "hook" action (in YAML, its import
            path, e.g. ``my_pkg.alerts.page_me``).
        dirpath: Folder for the checkpoints; default the logger's ``log_dir`` or else
            ``trainer.default_root_dir``.
        smoothing: Number of latest batches averaged for the collapse rule (1 = none).
        prefix: Prefix of every metric name (give a second alert in the same run its own prefix).
    """

    def __init__(
        self,
        min_entropy: float | None = None,
        max_relative_drop: float | None = 0.5,
        baseline_steps: int = 5,
        patience: int = 3,
        horizon: int | None = 100,
        window: int = 50,
        confidence: float = 3.0,
        use_predicted_change: bool = True,
        forecast_actions: Sequence[Action] = ("warn", "checkpoint"),
        collapse_actions: Sequence[Action] = ("warn", "checkpoint"),
        hook: Callable[..., Any] | None = None,
        dirpath: str | None = None,
        smoothing: int = 1,
        prefix: str = "entropy_alert/",
    ) -> None:
        super().__init__()
        who = "EntropyCollapseAlert"
        check(
            min_entropy is not None or max_relative_drop is not None,
            f"{who} needs a threshold: set min_entropy (nats) and/or max_relative_drop (e.g. 0.5)",
        )
        check(
            min_entropy is None or (math.isfinite(min_entropy) and min_entropy >= 0),
            f"{who}.min_entropy must be a finite entropy >= 0 in nats (or null), got {min_entropy!r}",
        )
        check(
            max_relative_drop is None or 0.0 < max_relative_drop < 1.0,
            f"{who}.max_relative_drop must lie strictly between 0 and 1 (or be null), "
            f"got {max_relative_drop!r}; 0.5 fires below half the early entropy",
        )
        for name, value, low in (
            ("baseline_steps", baseline_steps, 1), ("patience", patience, 1), ("smoothing", smoothing, 1),
            ("window", window, 3), ("horizon", 1 if horizon is None else horizon, 1),
        ):
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= low,
                f"{who}.{name} must be an integer >= {low}"
                + (" (or null: no forecast)" if name == "horizon" else "") + f", got {value!r}",
            )
        check(
            math.isfinite(confidence) and confidence >= 0,
            f"{who}.confidence must be a number of standard errors >= 0 (e.g. 3), got {confidence!r}",
        )
        for name, actions in (("forecast_actions", forecast_actions), ("collapse_actions", collapse_actions)):
            check(
                not isinstance(actions, str) and all(a in _ACTIONS for a in actions),
                f"{who}.{name} must be a list of actions from {list(_ACTIONS)}, got {actions!r}",
            )
            check(
                "hook" not in actions or callable(hook),
                f"{who}.{name} has 'hook' but hook is not a callable; set hook to the import path of "
                "a function hook(trainer, pl_module, event)",
            )
        self.min_entropy = min_entropy
        self.max_relative_drop = max_relative_drop
        self.baseline_steps = baseline_steps
        self.patience = patience
        self.horizon = horizon
        self.window = window
        self.confidence = confidence
        self.use_predicted_change = use_predicted_change
        self.forecast_actions = tuple(forecast_actions)
        self.collapse_actions = tuple(collapse_actions)
        self.hook = hook
        self.dirpath = dirpath
        self.smoothing = smoothing
        self.prefix = prefix
        self.forecaster = EntropyForecaster(window, confidence, use_predicted_change)
        self._baseline: list[float] = []  # token-mean entropy of the first baseline_steps batches
        self._keys = StepKeys()
        self._window: list[float] = []  # the last `smoothing` token-mean entropies
        self._collapsed_steps = 0  # consecutive collapsed batches
        self._forecast_steps = 0  # consecutive batches with the crossing forecast within the horizon
        self._fired_step: int | None = None  # global_step at which the collapse event fired
        self._forecast_fired_step: int | None = None  # global_step at which the forecast event fired
        self.last_forecast: Forecast | None = None  # the latest forecast (not checkpointed)
        self.checkpoint_path: str | None = None  # where the collapse checkpoint went (this run only)
        self.forecast_checkpoint_path: str | None = None  # where the forecast checkpoint went (this run only)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(min_entropy=self.min_entropy, max_relative_drop=self.max_relative_drop)

    @property
    def fired_step(self) -> int | None:
        """``trainer.global_step`` at which the collapse event fired, or None."""
        return self._fired_step

    @property
    def forecast_fired_step(self) -> int | None:
        """``trainer.global_step`` at which the forecast event fired, or None."""
        return self._forecast_fired_step

    def threshold(self) -> float | None:
        """Entropy below which a batch counts as collapsed; None while no rule is defined yet."""
        bounds = []
        if self.min_entropy is not None:
            bounds.append(self.min_entropy)
        if self.max_relative_drop is not None and len(self._baseline) >= self.baseline_steps:
            early = sum(self._baseline) / len(self._baseline)
            bounds.append((1.0 - self.max_relative_drop) * early)
        return max(bounds) if bounds else None

    def update(self, entropy: float, step: int = 0) -> tuple[float, float | None, bool]:
        """Feed one batch's world token-mean entropy to the collapse rule; returns (smoothed, threshold, fire now).

        Pure bookkeeping, no collectives: the same on every rank because ``entropy`` is. When it
        returns fire=True it has recorded ``step`` as the firing step, so it never fires again.
        """
        threshold = self.threshold()  # before this batch joins the baseline
        if len(self._baseline) < self.baseline_steps:
            self._baseline.append(entropy)
        self._window = (self._window + [entropy])[-self.smoothing :]
        smoothed = sum(self._window) / len(self._window)
        if self._fired_step is not None:
            return smoothed, threshold, False
        self._collapsed_steps = self._collapsed_steps + 1 if threshold is not None and smoothed < threshold else 0
        if self._collapsed_steps < self.patience:
            return smoothed, threshold, False
        self._fired_step = step
        return smoothed, threshold, True

    def update_forecast(
        self, entropy: float, step: int, predicted_change: float | None
    ) -> tuple[Forecast | None, bool]:
        """Feed one batch to the forecaster (after ``update``); returns (forecast, fire the forecast event now).

        Pure bookkeeping like ``update``. No forecast event once either event has fired.
        """
        if self.horizon is None:
            return None, False
        forecast = self.forecaster.update(step, entropy, predicted_change, self.threshold(), self.horizon)
        self.last_forecast = forecast
        if self._forecast_fired_step is not None or self._fired_step is not None:
            return forecast, False
        self._forecast_steps = self._forecast_steps + 1 if forecast is not None and forecast.within_horizon else 0
        if self._forecast_steps < self.patience:
            return forecast, False
        self._forecast_fired_step = step
        return forecast, True

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        stats = step_stats(StepOutput.of(outputs, type(self).__name__))  # world totals, identical on every rank
        values = {"fired": float(self._fired_step is not None)}
        if stats and math.isfinite(stats["entropy_mean"]):
            step = trainer.global_step
            smoothed, threshold, fire = self.update(stats["entropy_mean"], step)
            forecast, forecast_fire = self.update_forecast(stats["entropy_mean"], step, stats["entropy_change_pred"])
            if forecast_fire:
                self._fire_forecast(trainer, pl_module, forecast, stats)
            if fire:
                self._fire_collapse(trainer, pl_module, smoothed, threshold)
            values |= {"entropy_smoothed": smoothed, "fired": float(self._fired_step is not None)}
            if threshold is not None:
                values["threshold"] = threshold
            if forecast is not None:
                values |= {"trend_rate": forecast.trend_rate, "forecast_rate": forecast.rate}
                if forecast.steps_to_threshold is not None:
                    values["forecast_steps_to_threshold"] = forecast.steps_to_threshold
        if self.horizon is not None:
            values["forecast_fired"] = float(self._forecast_fired_step is not None)
        for name, value in self._keys.fill(values).items():  # a value this step lacks is NaN, not stale
            pl_module.log(self.prefix + name, value, on_step=True, on_epoch=False, sync_dist=False)

    def _fire_forecast(self, trainer: pl.Trainer, pl_module: pl.LightningModule, forecast: Forecast,
                       stats: dict[str, float]) -> None:
        threshold = self.threshold()
        text = (
            f"{type(self).__name__}: token entropy collapse forecast at step {forecast.step}: at the current "
            f"trend it falls below the threshold {threshold:.4g} in about {forecast.steps_to_threshold:.0f} "
            f"steps (around step {forecast.crossing_step:.0f}); fitted entropy {forecast.level:.4g}, trend "
            f"{100 * forecast.trend_rate:+.2g} % per step over the last {self.window} batches "
            f"({-forecast.t_stat:.1f} standard errors below 0)"
        )
        if forecast.dynamics_ratio is not None:
            text += f", scaled x{forecast.dynamics_ratio:.2f} by the recent predicted entropy change"
        text += ". " + self._drivers(stats)
        self.forecast_checkpoint_path = self._act(
            trainer, pl_module, self.forecast_actions, "forecast", text,
            AlertEvent("forecast", forecast.step, forecast.level, threshold, forecast.steps_to_threshold, ""),
        )

    @staticmethod
    def _drivers(stats: dict[str, float]) -> str:
        """Which quadrant drives the predicted drop, and how much of it the scheme's weights offset."""
        share, quadrant = min((stats[f"entropy_change_share_{q}"], q) for q in QUADRANTS)
        if share >= 0:
            return ""
        text = f"Driving it: {_QUADRANT_WORDS[quadrant]}, {-share:.0%} of the predicted entropy movement."
        reweight = stats["entropy_change_pred_reweight"]
        plain = stats["entropy_change_pred"] - reweight  # with w = 1
        if plain < 0 and reweight > 0:
            text += f" The scheme's token weights offset {reweight / -plain:.0%} of the predicted drop."
        elif plain < 0 and reweight < 0:
            text += f" The scheme's token weights add {reweight / plain:.0%} to the predicted drop."
        return text + " "

    def _fire_collapse(self, trainer: pl.Trainer, pl_module: pl.LightningModule, smoothed: float,
                       threshold: float) -> None:
        # Runs on every rank (the decision comes from world totals); update() has already recorded the
        # firing step, so the checkpoint says the alert has fired and a resume will not fire it again.
        early = sum(self._baseline) / len(self._baseline) if self._baseline else float("nan")
        text = (
            f"{type(self).__name__}: token entropy collapsed at step {trainer.global_step}: smoothed entropy "
            f"{smoothed:.4g} < threshold {threshold:.4g} for {self.patience} consecutive batches "
            f"(early level {early:.4g} over the first {len(self._baseline)} batches). "
        )
        self.checkpoint_path = self._act(
            trainer, pl_module, self.collapse_actions, "collapse", text,
            AlertEvent("collapse", trainer.global_step, smoothed, threshold, None, ""),
        )

    def _act(self, trainer: pl.Trainer, pl_module: pl.LightningModule, actions: Sequence[str], kind: str,
             text: str, event: AlertEvent) -> str | None:
        """Run ``actions`` for one event on every rank; returns the checkpoint path, if one was saved."""
        path, done = None, []
        if "checkpoint" in actions:
            folder = self.dirpath or trainer.log_dir or trainer.default_root_dir  # log_dir is collective
            path = os.path.join(folder, f"entropy-{kind}-step{trainer.global_step}.ckpt")
            # weights_only=False: a full checkpoint (optimizer, callbacks), one a run can resume from; said
            # explicitly, or Lightning logs "`weights_only` was not set, defaulting to `False`".
            trainer.save_checkpoint(path, weights_only=False)
            done.append(f"Saved {path}")
        if "stop" in actions:
            trainer.should_stop = True
            done.append("Stopping training")
        message = text + ("; ".join(done) + "." if done else "Training continues.")
        if "warn" in actions:
            rank_zero_warn(message)
        if "log" in actions:
            rank_zero_info(message)
        if "hook" in actions:
            self.hook(trainer, pl_module, replace(event, message=message, checkpoint_path=path))
        return path

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": list(self._baseline),
            "window": list(self._window),
            "collapsed_steps": self._collapsed_steps,
            "fired_step": self._fired_step,
            "forecast_steps": self._forecast_steps,
            "forecast_fired_step": self._forecast_fired_step,
            "forecaster": self.forecaster.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # baseline_steps / smoothing / window may have been lowered since the state was saved: trim to
        # fit. Checkpoints written before the forecast existed have no forecast keys.
        self._baseline = [float(x) for x in state_dict["baseline"]][: self.baseline_steps]
        self._window = [float(x) for x in state_dict["window"]][-self.smoothing :]
        self._collapsed_steps = int(state_dict["collapsed_steps"])
        fired = state_dict["fired_step"]
        self._fired_step = None if fired is None else int(fired)
        self._forecast_steps = int(state_dict.get("forecast_steps", 0))
        fired = state_dict.get("forecast_fired_step")
        self._forecast_fired_step = None if fired is None else int(fired)
        if "forecaster" in state_dict:
            self.forecaster.load_state_dict(state_dict["forecaster"])

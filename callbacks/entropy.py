"""Callbacks that watch the policy's token entropy: a monitor that logs it, an alert that fires on collapse.

Both read the per-token statistics the LightningModule's ``training_step`` returns (Lightning hands
them to ``on_train_batch_end`` as ``outputs``)::

    outputs = {
        "loss": ...,        # 0-dim
        "entropy": ...,     # (B, T) float32  H = -sum_v pi(v|.) log pi(v|.), the whole next-token distribution
        "surprisal": ...,   # (B, T) float32  s = -log pi(o_t|.), the *sampled* token only
        "advantages": ...,  # (B, T) float32  per-token advantage A
        "weights": ...,     # (B, T) float32  token weights of the weighting scheme (1 = plain GRPO)
        "mask": ...,        # (B, T) bool     True on completion tokens
        "rewards": ...,     # (N,)   float32  NaN for an unscorable completion
    }

Entropy and surprisal are different numbers (E_{a~pi}[s_a] = H); every metric name says which one it
is. Every statistic is token-weighted over the valid tokens of *all* ranks (``stare_lit.distributed``),
so every rank computes the same value: the alert's decisions (save a checkpoint, stop) therefore
agree across ranks, which matters because ``trainer.save_checkpoint`` is a collective call.

Callbacks only observe, log, alert, save checkpoints or stop; nothing here touches gradients or the
weighting scheme.

Usage in YAML::

    trainer:
      callbacks:
        - class_path: callbacks.EntropyMonitor
        - class_path: callbacks.EntropyCollapseAlert
          init_args: {max_relative_drop: 0.5, patience: 3, stop: false}
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from stare_lit.distributed import all_reduce_sum, gather_valid
from stare_lit.errors import check

__all__ = ["EntropyCollapseAlert", "EntropyMonitor"]

# torch.quantile refuses inputs with more than 2**24 elements; above that we sort and interpolate.
_QUANTILE_LIMIT = 2**24


def _field(outputs: Any, key: str, who: str) -> Tensor:
    """``outputs[key]`` with an error that says what the training_step must return."""
    if not isinstance(outputs, Mapping) or key not in outputs:
        raise KeyError(
            f"{who} needs training_step to return a dict with {key!r} (see callbacks/entropy.py); "
            f"got {type(outputs).__name__} with keys {sorted(outputs) if isinstance(outputs, Mapping) else None}"
        )
    return outputs[key]


def _sum_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps token counts exact past 2**24 tokens; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def _batches_done(trainer: pl.Trainer) -> int:
    """Training batches finished before the current one: the counter Lightning's logger uses as ``step``."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


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
    """Logs the token entropy distribution, mean surprisal and the advantage/surprisal quadrants.

    All values are over the valid (``mask``) tokens of all ranks, token-weighted. With the default
    ``prefix="entropy_monitor/"`` the logged metrics are:

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

    Nothing is logged on a step where no rank has a valid token.

    Args:
        quantiles: Entropy quantiles to log, each strictly between 0 and 1.
        log_every_n_steps: Compute and log every this many training batches (counted like
            ``Trainer(log_every_n_steps)``). The callback also skips the work (and its collectives) on
            batches the logger will not write, so the default 1 follows the Trainer's cadence; prefer
            setting that. Lightning writes the last step value again at each later logging step of the
            epoch, so a value larger than ``trainer.log_every_n_steps`` shows repeated points.
        prefix: Prefix of every metric name.
    """

    def __init__(
        self,
        quantiles: Sequence[float] = (0.1, 0.5, 0.9),
        log_every_n_steps: int = 1,
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
        check(
            isinstance(log_every_n_steps, int) and log_every_n_steps >= 1,
            f"EntropyMonitor.log_every_n_steps must be an integer >= 1, got {log_every_n_steps!r}",
        )
        self.quantiles = quantiles
        self.log_every_n_steps = log_every_n_steps
        self.prefix = prefix

    def compute(self, outputs: Mapping[str, Tensor]) -> dict[str, float]:
        """The metrics (names without prefix) from one step's outputs; empty if no rank has a valid token.

        Collective under torch.distributed: every rank must call it on the same steps.
        """
        who = type(self).__name__
        entropy = _field(outputs, "entropy", who).detach()  # (B, T)
        surprisal = _field(outputs, "surprisal", who).detach()  # (B, T)
        adv = _field(outputs, "advantages", who).detach()  # (B, T)
        valid = _field(outputs, "mask", who).bool()  # (B, T)

        dtype = _sum_dtype(entropy.device)
        high = surprisal > entropy  # (B, T) s > H of the same token; a tie counts as low
        pos, neg = valid & (adv > 0), valid & (adv < 0)
        parts = [
            valid,  # token count
            torch.where(valid, entropy, 0.0),
            torch.where(valid, surprisal, 0.0),
            pos & high,
            pos & ~high,
            neg & high,
            neg & ~high,
            valid & (adv == 0),
        ]
        sums = all_reduce_sum(torch.stack([p.to(dtype).sum() for p in parts]))  # (8,) world totals
        count, h_sum, s_sum, *shares = sums.tolist()
        if count == 0:
            return {}

        metrics = {"entropy_mean": h_sum / count}
        all_entropy = gather_valid(entropy, valid)  # (n_world,)
        for q, value in zip(self.quantiles, quantiles(all_entropy, self.quantiles).tolist()):
            metrics[f"entropy_{quantile_name(q)}"] = value
        metrics["surprisal_mean"] = s_sum / count
        names = [
            "quadrant_pos_adv_high_surprisal",
            "quadrant_pos_adv_low_surprisal",
            "quadrant_neg_adv_high_surprisal",
            "quadrant_neg_adv_low_surprisal",
            "zero_adv_share",
        ]
        metrics.update({name: n / count for name, n in zip(names, shares)})
        return metrics

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # Both conditions are identical on every rank, so the collectives in compute() stay matched.
        if (_batches_done(trainer) + 1) % self.log_every_n_steps != 0:
            return
        if not trainer._logger_connector.should_update_logs:
            return
        for name, value in self.compute(outputs).items():
            pl_module.log(self.prefix + name, value, on_step=True, on_epoch=False, sync_dist=False)


class EntropyCollapseAlert(pl.Callback):
    """Warns (and optionally saves a checkpoint and stops) once the token entropy has collapsed.

    Every training batch it takes the token-mean entropy over all ranks' valid tokens (smoothed over the
    last ``smoothing`` batches). The *early level* is the mean over the first ``baseline_steps``
    batches. A batch counts as collapsed when the smoothed entropy is below the threshold
    ``max(min_entropy, (1 - max_relative_drop) * early level)`` (the relative part applies from the
    batch after the baseline is complete; an unset part is left out). After ``patience`` consecutive
    collapsed batches the alert fires, once per run (and not again after a resume, since its state is
    checkpointed): it warns on rank zero with the step, entropy and threshold; if ``save_checkpoint``
    it saves ``<dir>/entropy-collapse-step{global_step}.ckpt`` on all ranks; if ``stop`` it sets
    ``trainer.should_stop``. Batches with no valid token on any rank, or a non-finite entropy, are
    skipped (they neither count nor reset the counter).

    Logged every batch, with the default ``prefix="entropy_alert/"``:

    - ``entropy_alert/fired``: 0 until the alert fires, 1 from that batch on (a step curve, so it
      survives the logger writing only every ``trainer.log_every_n_steps`` batches).
    - ``entropy_alert/entropy_smoothed``: the smoothed token-mean entropy compared with the threshold.
    - ``entropy_alert/threshold``: the threshold, once it is defined.

    Args:
        min_entropy: Absolute floor on the smoothed token-mean entropy (nats); None to not use one.
        max_relative_drop: Largest allowed drop relative to the early level, in (0, 1); 0.5 fires when
            entropy falls below half its early level. None to use only ``min_entropy``.
        baseline_steps: Number of first training batches whose mean entropy is the early level.
        patience: Consecutive collapsed batches before the alert fires.
        save_checkpoint: Save a checkpoint when the alert fires.
        stop: Stop training when the alert fires.
        dirpath: Folder for the checkpoint; default the logger's ``log_dir`` or else
            ``trainer.default_root_dir``.
        smoothing: Number of latest batches averaged before comparing with the threshold (1 = none).
        prefix: Prefix of every metric name (give a second alert in the same run its own prefix).
    """

    def __init__(
        self,
        min_entropy: float | None = None,
        max_relative_drop: float | None = 0.5,
        baseline_steps: int = 5,
        patience: int = 3,
        save_checkpoint: bool = True,
        stop: bool = False,
        dirpath: str | None = None,
        smoothing: int = 1,
        prefix: str = "entropy_alert/",
    ) -> None:
        super().__init__()
        check(
            min_entropy is not None or max_relative_drop is not None,
            "EntropyCollapseAlert needs a threshold: set min_entropy (nats) and/or max_relative_drop (e.g. 0.5)",
        )
        check(
            min_entropy is None or (math.isfinite(min_entropy) and min_entropy >= 0),
            f"EntropyCollapseAlert.min_entropy must be a finite entropy >= 0 in nats (or null), got {min_entropy!r}",
        )
        check(
            max_relative_drop is None or 0.0 < max_relative_drop < 1.0,
            f"EntropyCollapseAlert.max_relative_drop must lie strictly between 0 and 1 (or be null), "
            f"got {max_relative_drop!r}; 0.5 fires below half the early entropy",
        )
        for name, value in (("baseline_steps", baseline_steps), ("patience", patience), ("smoothing", smoothing)):
            check(
                isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                f"EntropyCollapseAlert.{name} must be an integer >= 1, got {value!r}",
            )
        self.min_entropy = min_entropy
        self.max_relative_drop = max_relative_drop
        self.baseline_steps = baseline_steps
        self.patience = patience
        self.save_checkpoint = save_checkpoint
        self.stop = stop
        self.dirpath = dirpath
        self.smoothing = smoothing
        self.prefix = prefix
        self._baseline: list[float] = []  # token-mean entropy of the first baseline_steps batches
        self._window: list[float] = []  # the last `smoothing` token-mean entropies
        self._collapsed_steps = 0  # consecutive collapsed batches
        self._fired_step: int | None = None  # global_step at which the alert fired
        self.checkpoint_path: str | None = None  # where the collapse checkpoint went (this run only)

    @property
    def state_key(self) -> str:
        return self._generate_state_key(min_entropy=self.min_entropy, max_relative_drop=self.max_relative_drop)

    @property
    def fired_step(self) -> int | None:
        """``trainer.global_step`` at which the alert fired, or None."""
        return self._fired_step

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
        """Feed one batch's world token-mean entropy; returns (smoothed, threshold, fire now).

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

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        who = type(self).__name__
        entropy = _field(outputs, "entropy", who).detach()  # (B, T)
        valid = _field(outputs, "mask", who).bool()  # (B, T)
        dtype = _sum_dtype(entropy.device)
        sums = all_reduce_sum(torch.stack([torch.where(valid, entropy, 0.0).to(dtype).sum(), valid.to(dtype).sum()]))
        h_sum, count = sums.tolist()  # world totals, identical on every rank
        if count > 0 and math.isfinite(h_sum):
            smoothed, threshold, fire = self.update(h_sum / count, trainer.global_step)
            if fire:
                self._fire(trainer, smoothed, threshold)
            self._log(pl_module, "entropy_smoothed", smoothed)
            if threshold is not None:
                self._log(pl_module, "threshold", threshold)
        self._log(pl_module, "fired", float(self._fired_step is not None))

    def _log(self, pl_module: pl.LightningModule, name: str, value: float) -> None:
        pl_module.log(self.prefix + name, value, on_step=True, on_epoch=False, sync_dist=False)

    def _fire(self, trainer: pl.Trainer, smoothed: float, threshold: float) -> None:
        # Runs on every rank (the decision comes from world totals); update() has already recorded the
        # firing step, so the checkpoint says the alert has fired and a resume will not fire it again.
        step = trainer.global_step
        early = sum(self._baseline) / len(self._baseline) if self._baseline else float("nan")
        actions = []
        if self.save_checkpoint:
            folder = self.dirpath or trainer.log_dir or trainer.default_root_dir  # log_dir is collective
            self.checkpoint_path = os.path.join(folder, f"entropy-collapse-step{step}.ckpt")
            trainer.save_checkpoint(self.checkpoint_path)
            actions.append(f"Saved {self.checkpoint_path}")
        if self.stop:
            trainer.should_stop = True
            actions.append("Stopping training")
        rank_zero_warn(
            f"{type(self).__name__}: token entropy collapsed at step {step}: smoothed entropy {smoothed:.4g} "
            f"< threshold {threshold:.4g} for {self.patience} consecutive batches "
            f"(early level {early:.4g} over the first {len(self._baseline)} batches). "
            + ("; ".join(actions) + "." if actions else "Training continues (set stop: true to stop).")
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "baseline": list(self._baseline),
            "window": list(self._window),
            "collapsed_steps": self._collapsed_steps,
            "fired_step": self._fired_step,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # baseline_steps / smoothing may have been lowered since the state was saved: trim to fit.
        self._baseline = [float(x) for x in state_dict["baseline"]][: self.baseline_steps]
        self._window = [float(x) for x in state_dict["window"]][-self.smoothing :]
        self._collapsed_steps = int(state_dict["collapsed_steps"])
        fired = state_dict["fired_step"]
        self._fired_step = None if fired is None else int(fired)

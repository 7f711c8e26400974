"""A picture of the entropy dynamics of a run: one PNG beside the logs, rewritten as training goes.

``EntropyReport`` keeps a per-step history of a few world-level statistics (``callbacks.stats``) and
draws, every ``every_n_steps`` optimizer steps and at the end of fit, a 2 x 2 figure:

1. token-mean entropy and mean reward against step, with the collapse threshold, the steps at which
   an ``EntropyCollapseAlert`` fired (forecast, collapse), the scheme's target entropy and the steps
   its gate was open (when the scheme has a ``target_entropy`` and reports a ``gate`` in its
   ``progress()``, e.g. STARE, alone or in a Compose);
2. the predicted first-order entropy change per quadrant (A>0/A<0 x s>H/s<=H), stacked: raising
   quadrants above zero, lowering ones below, the net prediction and what the scheme's token weights
   add on top; beneath it, which tokens the scheme reweighted: the share of them above their own
   position's entropy (s > H) and their share of all tokens, with the run's means in the title;
3. token entropy by relative position in the completion, early / middle / late in the run;
4. the share of tokens in each quadrant (and with A = 0), stacked to 1.

Only Matplotlib's Agg canvas is used (no pyplot, no global backend change), on rank zero. It works
with any logger, or none: the history is kept here, not read back from a logger.

Usage in YAML::

    trainer:
      callbacks:
        - class_path: callbacks.EntropyReport
          init_args: {every_n_steps: 100}
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import lightning.pytorch as pl

from callbacks.entropy import EntropyCollapseAlert
from callbacks.stats import QUADRANTS, position_bucket_name, step_stats
from stare_lit.errors import check
from stare_lit.train.step_log import StepOutput

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["EntropyReport"]

_QUADRANT_LABELS = {
    "pos_adv_high_surprisal": "A>0, s>H (raises H)",
    "pos_adv_low_surprisal": "A>0, s≤H (lowers H)",
    "neg_adv_high_surprisal": "A<0, s>H (lowers H)",
    "neg_adv_low_surprisal": "A<0, s≤H (raises H)",
}
_QUADRANT_COLORS = {
    "pos_adv_high_surprisal": "#74add1",
    "pos_adv_low_surprisal": "#d73027",
    "neg_adv_high_surprisal": "#fdae61",
    "neg_adv_low_surprisal": "#4575b4",
}


def moving_average(values: Sequence[float], n: int) -> list[float]:
    """Trailing mean over the last ``n`` finite values (fewer at the start); NaN where none is finite."""
    out, window = [], []
    for v in values:
        window = (window + [v])[-n:]
        finite = [x for x in window if math.isfinite(x)]
        out.append(sum(finite) / len(finite) if finite else math.nan)
    return out


class EntropyReport(pl.Callback):
    """Writes a PNG report of the run's entropy dynamics beside the logs (see the module docstring).

    Each training batch it reduces (one all_reduce, token-weighted over all ranks) the token-mean
    entropy, the mean reward, the per-quadrant predicted entropy change and token shares, and the
    entropy per relative-position bucket, and keeps them with ``trainer.global_step`` (the history is
    checkpointed, so a resumed run's report covers the whole run). Rank zero draws.

    Args:
        every_n_steps: Redraw every this many optimizer steps (0: only at the end of fit).
        filename: Name of the PNG.
        dirpath: Folder of the PNG; default the logger's ``log_dir`` or else ``trainer.default_root_dir``.
        position_buckets: Number of relative-position buckets for the entropy by position (>= 1).
        smoothing: Trailing moving-average window (steps) of the plotted curves; the raw entropy is
            drawn faintly beneath its average.
        dpi: Resolution of the PNG (100 gives a 1200 x 800 image of about 150 KB).
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        filename: str = "entropy_report.png",
        dirpath: str | None = None,
        position_buckets: int = 4,
        smoothing: int = 10,
        dpi: int = 100,
    ) -> None:
        super().__init__()
        for name, value, low in (("every_n_steps", every_n_steps, 0), ("position_buckets", position_buckets, 1),
                                 ("smoothing", smoothing, 1), ("dpi", dpi, 10)):
            check(isinstance(value, int) and not isinstance(value, bool) and value >= low,
                  f"EntropyReport.{name} must be an integer >= {low}, got {value!r}")
        check(filename.lower().endswith(".png") and os.sep not in filename,
              f"EntropyReport.filename must be a file name ending in .png (the folder is dirpath), got {filename!r}")
        self.every_n_steps = every_n_steps
        self.filename = filename
        self.dirpath = dirpath
        self.position_buckets = position_buckets
        self.smoothing = smoothing
        self.dpi = dpi
        self.history: dict[str, list[float]] = {}
        self.report_path: str | None = None  # where the PNG was last written (rank zero)
        self._folder: str | None = None
        self._last_drawn_step = -1

    @property
    def state_key(self) -> str:
        return self._generate_state_key(filename=self.filename, dirpath=self.dirpath)

    # ------------------------------------------------------------------ collecting
    def _keys(self) -> list[str]:
        keys = ["step", "entropy_mean", "reward_mean", "gate_on", "entropy_change_pred", "entropy_change_pred_reweight"]
        keys += [f"entropy_change_pred_{q}" for q in QUADRANTS] + [f"quadrant_{q}" for q in QUADRANTS]
        keys += ["zero_adv_share", "reweighted_share", "reweighted_above_entropy_share"]
        keys += [position_bucket_name(k, self.position_buckets) for k in range(self.position_buckets)]
        return keys

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._folder = self.dirpath or trainer.log_dir or trainer.default_root_dir  # log_dir is collective

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = StepOutput.of(outputs, type(self).__name__)
        stats = step_stats(step, self.position_buckets, rewards=True)  # collective
        if stats:
            scheme = getattr(pl_module, "scheme", None)
            gate = scheme.progress().get("gate") if scheme is not None else None
            stats |= {"step": float(trainer.global_step), "gate_on": math.nan if gate is None else float(gate)}
            n = len(self.history.get("step", []))
            for key in self._keys():  # a key missing so far (settings changed on resume) starts as NaN
                self.history.setdefault(key, [math.nan] * n).append(float(stats.get(key, math.nan)))
        step, n = trainer.global_step, self.every_n_steps
        if n and step > 0 and step // n > max(self._last_drawn_step, 0) // n:  # crossed a multiple of n
            self.write(trainer)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step != self._last_drawn_step:  # not drawn at this very step already
            self.write(trainer)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self._folder is not None:  # no collective here: the folder was resolved at the start
            self.write(trainer)

    # ------------------------------------------------------------------ drawing
    def write(self, trainer: pl.Trainer) -> str | None:
        """Draw the report now (rank zero; the others return None). Returns the PNG's path."""
        self._last_drawn_step = trainer.global_step
        if not trainer.is_global_zero or not self.history.get("step"):
            return None
        folder = self._folder or self.dirpath or trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, self.filename)
        figure = self.figure(alert=_find_alert(trainer), scheme=getattr(trainer.lightning_module, "scheme", None))
        tmp = path + ".tmp.png"
        figure.savefig(tmp, dpi=self.dpi)
        os.replace(tmp, path)  # readers never see half a file
        self.report_path = path
        return path

    def figure(self, alert: EntropyCollapseAlert | None = None, scheme: Any = None) -> Figure:
        """The report as a Matplotlib ``Figure`` (Agg canvas) from the history kept so far."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # here: importing callbacks stays light
        from matplotlib.figure import Figure

        h = self.history
        steps = h["step"]
        smooth = lambda key: moving_average(h[key], self.smoothing)  # noqa: E731
        fig = Figure(figsize=(12, 8), layout="constrained")
        FigureCanvasAgg(fig)
        grid = fig.add_gridspec(2, 2)
        top_left = grid[0, 0].subgridspec(2, 1, height_ratios=(2.3, 1))
        ax_h = fig.add_subplot(top_left[0])
        ax_r = fig.add_subplot(top_left[1], sharex=ax_h)
        top_right = grid[0, 1].subgridspec(2, 1, height_ratios=(2.3, 1))
        ax_dh = fig.add_subplot(top_right[0])
        ax_rw = fig.add_subplot(top_right[1], sharex=ax_dh)
        ax_pos, ax_share = fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
        fig.suptitle(f"Entropy dynamics, steps {steps[0]:.0f}–{steps[-1]:.0f}", fontsize=13)

        # 1. entropy and reward
        ax_h.plot(steps, h["entropy_mean"], color="#1f77b4", alpha=0.25, linewidth=0.8)
        ax_h.plot(steps, smooth("entropy_mean"), color="#1f77b4", linewidth=2, label="token entropy H")
        gate = h["gate_on"]
        if any(g == 1.0 for g in gate):
            ax_h.fill_between(steps, 0, 1, where=[g == 1.0 for g in gate], step="mid", color="#2ca02c",
                              alpha=0.08, transform=ax_h.get_xaxis_transform(), label="scheme gate on")
        target = getattr(scheme, "target_entropy", None)
        if isinstance(target, (int, float)):
            ax_h.axhline(target, color="#2ca02c", linestyle=":", label=f"target entropy {target:.3g}")
        if alert is not None:
            threshold = alert.threshold()
            if threshold is not None:
                ax_h.axhline(threshold, color="#d62728", linestyle="--", label=f"collapse threshold {threshold:.3g}")
            if alert.forecast_fired_step is not None:
                ax_h.axvline(alert.forecast_fired_step, color="#ff7f0e", linewidth=1.5,
                             label=f"collapse forecast (step {alert.forecast_fired_step})")
            if alert.fired_step is not None:
                ax_h.axvline(alert.fired_step, color="#d62728", linewidth=1.5,
                             label=f"collapsed (step {alert.fired_step})")
        ax_h.set(ylabel="entropy (nats)", title="Token-mean entropy and reward")
        ax_h.tick_params(labelbottom=False)
        ax_h.legend(fontsize=7, loc="best", framealpha=0.8)
        ax_r.plot(steps, h["reward_mean"], color="#9467bd", alpha=0.25, linewidth=0.8)
        ax_r.plot(steps, smooth("reward_mean"), color="#9467bd", linewidth=1.5)
        ax_r.set(xlabel="step", ylabel="mean reward")

        # 2. predicted entropy change per quadrant, stacked
        ups = [q for q in QUADRANTS if q in ("pos_adv_high_surprisal", "neg_adv_low_surprisal")]
        downs = [q for q in QUADRANTS if q not in ups]
        for group in (ups, downs):
            ax_dh.stackplot(steps, *[smooth(f"entropy_change_pred_{q}") for q in group],
                            labels=[_QUADRANT_LABELS[q] for q in group],
                            colors=[_QUADRANT_COLORS[q] for q in group], alpha=0.8)
        ax_dh.plot(steps, smooth("entropy_change_pred"), color="black", linewidth=1.8, label="net predicted ΔH")
        reweight = h["entropy_change_pred_reweight"]
        if any(math.isfinite(x) and x != 0 for x in reweight):
            ax_dh.plot(steps, smooth("entropy_change_pred_reweight"), color="#2ca02c", linestyle="--",
                       linewidth=1.5, label="added by the scheme's weights")
        ax_dh.axhline(0, color="grey", linewidth=0.6)
        ax_dh.set(ylabel="A·ω·π(a)·(s−H), mean per token", title="Predicted entropy change by quadrant (first order)")
        ax_dh.tick_params(labelbottom=False)
        ax_dh.legend(fontsize=7, loc="best")
        self.draw_reweighted(ax_rw)

        # 3. entropy by relative position, early / middle / late
        centers = [(k + 0.5) / self.position_buckets for k in range(self.position_buckets)]
        n = len(steps)
        span = max(1, n // 10)
        phases = {"early": (0, span), "middle": (n // 2 - span // 2, n // 2 - span // 2 + span), "late": (n - span, n)}
        for (name, (lo, hi)), color in zip(phases.items(), ("#9ecae1", "#4292c6", "#08306b")):
            profile = []
            for k in range(self.position_buckets):
                values = [v for v in h[position_bucket_name(k, self.position_buckets)][lo:hi] if math.isfinite(v)]
                profile.append(sum(values) / len(values) if values else math.nan)
            ax_pos.plot(centers, profile, marker="o", color=color,
                        label=f"{name}: steps {steps[lo]:.0f}–{steps[hi - 1]:.0f}")
        ax_pos.set(xlabel="relative position in the completion", ylabel="token-mean entropy (nats)",
                   title="Entropy by position in the completion", xlim=(0, 1))
        ax_pos.legend(fontsize=8, loc="best")

        # 4. token shares per quadrant
        ax_share.stackplot(steps, *[smooth(f"quadrant_{q}") for q in QUADRANTS], smooth("zero_adv_share"),
                           labels=[_QUADRANT_LABELS[q] for q in QUADRANTS] + ["A = 0 (no gradient)"],
                           colors=[_QUADRANT_COLORS[q] for q in QUADRANTS] + ["#d9d9d9"], alpha=0.85)
        ax_share.set(xlabel="step", ylabel="share of tokens", title="Tokens per quadrant", ylim=(0, 1))
        ax_share.legend(fontsize=8, loc="lower left")
        return fig

    def draw_reweighted(self, ax) -> None:
        """Which tokens the weights moved: the share above their position's entropy, and of all tokens."""
        h, steps = self.history, self.history["step"]
        above = [x for x in h["reweighted_above_entropy_share"] if math.isfinite(x)]
        pred = [x for x in h["entropy_change_pred_reweight"] if math.isfinite(x)]
        if above:
            ax.plot(steps, moving_average(h["reweighted_above_entropy_share"], self.smoothing), color="#2ca02c",
                    linewidth=1.5, label="reweighted tokens with s>H (share of them)")
        ax.plot(steps, moving_average(h["reweighted_share"], self.smoothing), color="#7f7f7f", linewidth=1.2,
                label="reweighted tokens (share of all)")
        title = "Reweighted: " + (f"{100 * sum(above) / len(above):.0f}% above their entropy" if above else "none")
        if pred:
            title += f"; ΔH from the weights {sum(pred) / len(pred):+.2g}/token"
        ax.set(xlabel="step", ylabel="share", ylim=(0, 1.02), title=title)
        ax.title.set_fontsize(9)
        ax.legend(fontsize=7, loc="best")

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        return {"history": {k: list(v) for k, v in self.history.items()}, "last_drawn_step": self._last_drawn_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = {k: [float(x) for x in v] for k, v in state_dict.get("history", {}).items()}
        self._last_drawn_step = int(state_dict.get("last_drawn_step", -1))


def _find_alert(trainer: pl.Trainer) -> EntropyCollapseAlert | None:
    """The run's first ``EntropyCollapseAlert``, if any (for its threshold and firing steps)."""
    return next((c for c in trainer.callbacks if isinstance(c, EntropyCollapseAlert)), None)

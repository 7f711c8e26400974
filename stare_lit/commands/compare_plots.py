"""The plots of ``stare-lit compare``: the curves over steps, and pass@k against k."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def plot(curves: dict[str, pd.DataFrame], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("entropy", 10, "token entropy (10-step mean)"),
              ("fork_entropy", 10, "entropy at forking positions (10-step mean)"),
              ("reward", 10, "train reward (10-step mean)"), ("val_mean@k", 1, "validation mean@k (accuracy)"),
              ("val_distinct_correct", 1, "validation: distinct correct per prompt"),
              ("all_wrong_groups", 10, "train groups all wrong (10-step mean)"),
              ("val_never_solved", 1, "validation: prompts never solved in k")]
    panels = [p for p in panels if any(p[0] in c for c in curves.values())]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4))
    for name, c in curves.items():
        for ax, (col, smooth, _) in zip(axes, panels):
            if col in c:
                s = c[col].dropna()
                ax.plot(s.index, s.rolling(smooth, min_periods=1).mean(), label=name)
    for ax, title in zip(axes, [p[2] for p in panels]):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_pass_at_k(curves: pd.DataFrame, path: Path, title: str, start: str | None = None):
    """pass@k against k, one line per scheme (mean over seeds, a band of ± one std when several); the scheme named
    ``start`` (the policy before RL), if any, dashed.

    ``curves``: one row per run and k (columns scheme, seed, k, pass@k). Returns the Figure (for tests).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for scheme, runs in curves.groupby("scheme", sort=False):
        by_k = runs.groupby("k")["pass@k"]
        mean, std, seeds = by_k.mean(), by_k.std().fillna(0.0), runs["seed"].nunique()
        if scheme == start:
            ax.plot(mean.index, mean.values, "k--", marker="o", markersize=3, label=f"{start} (before RL)")
            continue
        ax.plot(mean.index, mean.values, marker="o", markersize=3, label=f"{scheme} ({seeds} seed{'s' * (seeds > 1)})")
        if seeds > 1:
            ax.fill_between(mean.index, mean - std, mean + std, alpha=0.15)
    ks = [k for k in sorted(curves["k"].unique()) if k & (k - 1) == 0]  # ticks at the powers of two
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, labels=[str(k) for k in ks])
    ax.set(xlabel="k (samples per prompt)", ylabel="pass@k (unbiased)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=90)
    return fig

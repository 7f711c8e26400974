"""Where a training step's time goes, on the project's own configs (issue 19, item 1).

    python benchmarks/step_profile.py                       # the forking task's main job, then arithmetic
    python benchmarks/step_profile.py --configs configs/arithmetic_stare.yaml --steps 10

Each config runs through the real ``stare-lit fit`` machinery (StareLitCLI with ``run=False``: the
config's Trainer, callbacks, logger, data and warm-started policy), for ``--warmup`` + ``--steps``
optimizer steps, on one torch thread. Nothing in the project is changed: the script wraps the
module's, the scheme's, the callbacks' and the logger's methods from outside with timers. Timers are
*exclusive* (a part nested in another, e.g. the forward inside the update, is taken out of its
parent), so the parts and "other" add up to the step. A step is timed from one
``on_train_batch_start`` to the next (Lightning's loop, the data loader and the progress bar are
in "other").

Checkpoints, validation and ``EntropyReport``'s redraw happen every 100 steps in these configs, so
a short profile meets none of them; their cost is timed separately at the end (one ``report.write``,
one ``trainer.save_checkpoint``) and shown per step amortised over their interval.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import fmt, header, load, median, table, write_result  # noqa: E402

CONFIGS = ["configs/partial_sums_stare.yaml", "configs/arithmetic_stare.yaml"]
# Rows of the table, in order: (part, what it times).
PARTS = [
    ("rollout", "Experience.sample (FastRollout: prefill + decode + sampling)"),
    ("scoring", "Experience.score (the reward functions)"),
    ("old/reference pass", "UpdateEngine.old_pass + reference_pass (no grad)"),
    ("update: forward", "UpdateEngine.token_logprobs inside the update (with grad)"),
    ("update: loss", "stare_lit.train.update.policy_loss"),
    ("update: backward", "GRPOModule.manual_backward"),
    ("update: optimizer", "UpdateEngine.clip_and_step (clip + AdamW)"),
    ("update: rest", "the rest of UpdateEngine.update/learn (row selection, bookkeeping)"),
    ("scheme", "the scheme's update/prepare/advantages/mask/weights/extra_loss/metrics"),
    ("logging", "GRPOModule.log_step + the logger's log_metrics/save"),
    ("step: rest", "the rest of train_on (advantages, masks, outputs)"),
]


class Clock:
    """Exclusive timers: entering a part pauses the part it is nested in."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[tuple[str, float]] = []

    def enter(self, part: str) -> None:
        now = time.perf_counter()
        if self.stack:
            outer, since = self.stack[-1]
            self.totals[outer] += now - since
        self.stack.append((part, now))

    def leave(self) -> None:
        now = time.perf_counter()
        part, since = self.stack.pop()
        self.totals[part] += now - since
        if self.stack:
            self.stack[-1] = (self.stack[-1][0], now)

    def wrap(self, owner, attr: str, part: str) -> None:
        inner = getattr(owner, attr)

        def timed(*args, **kwargs):
            self.enter(part)
            try:
                return inner(*args, **kwargs)
            finally:
                self.leave()

        setattr(owner, attr, timed)

    def take(self) -> dict[str, float]:
        out, self.totals = dict(self.totals), defaultdict(float)
        return out


def build(config: str, steps: int, out_dir: str):
    """The config's trainer, module and data, as ``stare-lit fit --config`` builds them (not run)."""
    from stare_lit.commands.cli import StareLitCLI
    from stare_lit.module import GRPOModule
    import lightning as L

    args = ["--config", config, "--trainer.max_steps", str(steps), "--trainer.default_root_dir", out_dir,
            "--trainer.logger.init_args.save_dir", out_dir, "--trainer.enable_progress_bar", "false"]
    cli = StareLitCLI(GRPOModule, L.LightningDataModule, subclass_mode_data=True, args=args, run=False,
                      save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False})
    return cli.trainer, cli.model, cli.datamodule


def instrument(clock: Clock, trainer, module) -> list[str]:
    """Wrap every timed part; returns the callbacks' row names."""
    import lightning as L

    import stare_lit.train.update as update_code

    m, engine = module, module.updater
    clock.wrap(m, "train_on", "step: rest")
    clock.wrap(m.experience, "sample", "rollout")
    clock.wrap(m.experience, "score", "scoring")
    clock.wrap(engine, "old_pass", "old/reference pass")
    clock.wrap(engine, "reference_pass", "old/reference pass")
    clock.wrap(engine, "learn", "update: rest")
    clock.wrap(m, "manual_backward", "update: backward")
    clock.wrap(engine, "clip_and_step", "update: optimizer")
    clock.wrap(m, "log_step", "logging")
    # token_logprobs: the update's forward, unless inside the old/reference pass (then theirs: the
    # clock's stack says which part is running).
    inner_lp = engine.token_logprobs

    def token_logprobs(*args, **kwargs):
        part = clock.stack[-1][0] if clock.stack and clock.stack[-1][0] == "old/reference pass" else "update: forward"
        clock.enter(part)
        try:
            return inner_lp(*args, **kwargs)
        finally:
            clock.leave()

    engine.token_logprobs = token_logprobs
    clock.wrap(update_code, "policy_loss", "update: loss")
    for attr in ("update", "prepare", "advantages", "mask", "weights", "extra_loss", "metrics"):
        if hasattr(m.scheme, attr):
            clock.wrap(m.scheme, attr, "scheme")
    for logger in trainer.loggers:
        clock.wrap(logger, "log_metrics", "logging")
        clock.wrap(logger, "save", "logging")
    names = []
    for cb in trainer.callbacks:
        name = type(cb).__name__
        if name == "_Timer":
            continue
        if name in ("TQDMProgressBar", "RichProgressBar", "ModelSummary", "StepProgressBar"):
            name = "Lightning's own callbacks"
        for hook in ("on_train_batch_start", "on_train_batch_end", "on_before_backward", "on_after_backward",
                     "on_before_optimizer_step", "on_before_zero_grad"):
            if getattr(type(cb), hook) is not getattr(L.Callback, hook):  # hooks the callback overrides
                clock.wrap(cb, hook, f"callback: {name}")
        if f"callback: {name}" not in names:
            names.append(f"callback: {name}")
    return names


class StepTimer:
    """A callback, first in the list: a step is the time from one on_train_batch_start to the next.
    The last batch has no next start (its interval would hold on_train_end's work): run one batch more."""

    def __init__(self, clock: Clock, warmup: int) -> None:
        self.clock, self.warmup, self.last, self.steps = clock, warmup, None, []

    def callback(self):
        import lightning as L

        timer = self

        class _Timer(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                now, parts = time.perf_counter(), timer.clock.take()
                if timer.last is not None and timer.last[0] >= timer.warmup:
                    timer.steps.append((now - timer.last[1], parts))
                timer.last = (batch_idx, now)

        return _Timer()


def amortised_extras(trainer, module, out_dir: str) -> list[tuple[str, float, int]]:
    """(what, seconds once, every how many steps) for the periodic work a short profile does not meet."""
    extras = []
    for cb in trainer.callbacks:
        if type(cb).__name__ == "EntropyReport":
            t0 = time.perf_counter()
            cb.write(trainer)
            extras.append(("EntropyReport redraw (write)", time.perf_counter() - t0, cb.every_n_steps))
        if type(cb).__name__ == "ModelCheckpoint" and getattr(cb, "_every_n_train_steps", 0):
            t0 = time.perf_counter()
            trainer.save_checkpoint(os.path.join(out_dir, "profile.ckpt"))
            extras.append(("checkpoint save", time.perf_counter() - t0, cb._every_n_train_steps))
    return extras


def profile(config: str, a) -> tuple[str, dict]:
    import torch

    torch.set_num_threads(a.threads)
    clock = Clock()
    with tempfile.TemporaryDirectory() as out_dir:
        trainer, module, data = build(config, a.warmup + a.steps + 1, out_dir)
        timer = StepTimer(clock, a.warmup)
        trainer.callbacks.insert(0, timer.callback())
        cb_rows = instrument(clock, trainer, module)
        load_before = load()
        t0 = time.perf_counter()
        trainer.fit(module, datamodule=data)
        fit_s = time.perf_counter() - t0
        extras = amortised_extras(trainer, module, out_dir)
        load_after = load()
    steps = timer.steps
    totals = [s for s, _ in steps]
    rows_order = [p for p, _ in PARTS] + cb_rows
    seen = {k for _, parts in steps for k in parts}
    rows_order += sorted(seen - set(rows_order))
    med_total = median(totals)
    rows = []
    for part in rows_order:
        xs = [parts.get(part, 0.0) * 1000 for _, parts in steps]
        if part.startswith("callback:") and max(xs) < 0.001 and "Entropy" not in part:
            continue  # Lightning's SaveConfigCallback, model summary: nothing per step
        what = dict(PARTS).get(part, "its hooks (on_train_batch_start/end, ...)")
        rows.append([part, what, f"{fmt(median(xs))} ({fmt(min(xs))}–{fmt(max(xs))})",
                     f"{100 * median(xs) / 1000 / med_total:.1f} %"])
    others = [(s - sum(parts.values())) * 1000 for s, parts in steps]
    rows.append(["other", "Lightning's loop, data loader, hooks not listed", f"{fmt(median(others))} "
                 f"({fmt(min(others))}–{fmt(max(others))})", f"{100 * median(others) / 1000 / med_total:.1f} %"])
    rows.append(["**step**", "one on_train_batch_start to the next", f"**{fmt(med_total * 1000)}** "
                 f"({fmt(min(totals) * 1000)}–{fmt(max(totals) * 1000)})", "100 %"])
    cb_share = [sum(v for k, v in parts.items() if k.startswith("callback:")) / s for s, parts in steps]
    md = [f"#### Step profile: `{config}`\n",
          f"- {a.steps} timed steps after {a.warmup} warm-up steps, one process, torch threads: {a.threads}; "
          f"`fit` took {fit_s:.1f} s; load average before/after: {load_before} / {load_after}\n",
          table(["part", "what", "ms per step, median (min–max)", "share of the median step"], rows), "",
          f"Callbacks together: {100 * median(cb_share):.2f} % of a step (median; max "
          f"{100 * max(cb_share):.2f} %).", ""]
    if extras:
        md.append("Periodic work, timed once after the run and spread over its interval:\n")
        md.append(table(["what", "s once", "every n steps", "ms per step", "share of the median step"],
                        [[w, fmt(s), n, fmt(1000 * s / n), f"{100 * s / n / med_total:.2f} %"] for w, s, n in extras]))
        md.append("")
    return "\n".join(md), {"step_s": med_total, "callbacks_share": median(cb_share)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--configs", nargs="+", default=CONFIGS)
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--steps", type=int, default=15, help="timed steps per config")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: see README, 'The machine')")
    p.add_argument("--name", default="step_profile", help="benchmarks/results/<name>.md")
    a = p.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parts = [header("Where a training step's time goes"), ""]
    for config in a.configs:
        md, _ = profile(config, a)
        print(md, flush=True)
        parts.append(md)
    parts.append(f"Load average at the end: {load()}.")
    print("wrote", write_result(a.name, "\n".join(parts)))


if __name__ == "__main__":
    main()

"""What a token-weighting scheme costs: GRPO vs STARE vs STEER vs ERPO ... on the same batch.

    python benchmarks/overhead.py                     # ~1 minute on 2 CPU cores
    python benchmarks/overhead.py --schemes stare_lit.schemes.GRPO stare_lit.schemes.STARE

Default schemes: every ``TokenWeighting`` subclass defined in ``stare_lit.schemes`` (base, stare, steer) and
``stare_lit.schemes.erpo`` when the script runs (``--baselines`` adds ``stare_lit.schemes.baselines``), each built
with its defaults except STARE, whose gate is forced open (target_entropy 1e9) so it always
reweights. Schemes that cannot be built without arguments (``Compose``) are listed as skipped.

How: one batch of completions is sampled once from the initial weights and scored with a
graded reward (so advantages are non-zero and the schemes have work to do). Each scheme then
runs the real ``GRPOModule.training_step`` inside a Lightning ``Trainer`` for ``--warmup +
--steps`` steps, in rounds (GRPO, STARE, ..., then the next round in rotated order) so that
machine noise hits every scheme alike. Every step still *runs* generation (so the step costs what
a real step costs) but trains on the cached batch (so every scheme sees the same tokens). Timers
wrap the module's pieces: ``rollout`` (generate), ``score``, ``token_logprobs`` (forward, with
and without grad), the scheme's ``update/prepare/advantages/mask/weights/extra_loss/metrics`` (weighting),
``policy_loss``, ``manual_backward`` and ``clip_and_step`` (optimizer); the rest of the step is
Lightning, logging and bookkeeping.
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import sys
import time
from collections import defaultdict
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import header, median, save_tiny_policy, spread, table, write_result  # noqa: E402

SCHEME_MODULES = ["stare_lit.schemes.base", "stare_lit.schemes.stare", "stare_lit.schemes.steer", "stare_lit.schemes.erpo"]
BASELINE_MODULES = ["stare_lit.schemes.baselines"]
OVERRIDES = {"STARE": {"target_entropy": 1e9}}  # gate always open: the selection and the reweighting run
SCHEME_METHODS = ["update", "prepare", "advantages", "mask", "weights", "extra_loss", "metrics"]
PARTS = ["generate", "score", "forward (grad)", "forward (no grad: old/ref pass)", "weighting", "loss",
         "backward", "optimizer", "other"]


def discover(modules: list[str]) -> list[str]:
    """Class paths of every TokenWeighting subclass defined in ``modules`` (in definition order)."""
    from stare_lit.schemes.base import TokenWeighting

    found = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        classes = [c for _, c in inspect.getmembers(mod, inspect.isclass)
                   if issubclass(c, TokenWeighting) and c is not TokenWeighting and c.__module__ == name]
        classes.sort(key=lambda c: inspect.getsourcelines(c)[1])
        found += [f"{name}.{c.__name__}" for c in classes]
    return found


def build_scheme(path: str):
    module, _, cls = path.rpartition(".")
    klass = getattr(importlib.import_module(module), cls)
    return klass(**OVERRIDES.get(cls, {}))


def graded_reward_class():
    from stare_lit.rewards.base import Reward

    class GradedReward(Reward):
        """Digit count mod 5, scaled to [0, 1]: a reward with spread for a random-weight policy."""

        def __call__(self, prompts, completions, **columns):
            return [(sum(ch.isdigit() for ch in text) % 5) / 4 for text in completions]

    return GradedReward


class StepClock:
    """Accumulates seconds per part of the current step; wraps callables as instance attributes."""

    def __init__(self) -> None:
        self.current: dict[str, float] = defaultdict(float)
        self.steps: list[dict[str, float]] = []

    def wrap(self, owner, attr: str, part: str | None = None, replacement=None) -> None:
        inner = getattr(owner, attr)
        call = replacement or inner

        def timed(*args, **kwargs):
            key = part or ("forward (grad)" if torch.is_grad_enabled() else "forward (no grad: old/ref pass)")
            t0 = time.perf_counter()
            try:
                return call(*args, **kwargs)
            finally:
                self.current[key] += time.perf_counter() - t0

        setattr(owner, attr, timed)


def run_scheme(path: str, a, model_dir: str, rows: list[dict], cached: dict) -> list[dict]:
    """Fit ``warmup + steps`` steps of one scheme on the cached batch; per-step part times."""
    import lightning as L
    from torch.utils.data import DataLoader

    import stare_lit.train.update as update_file
    from stare_lit.data.datamodule import collate_prompts
    from stare_lit.module import GRPOModule, LossSettings
    from stare_lit.train.policy import Policy
    from stare_lit.train.step_log import StepOutput
    from stare_lit.rollout.base import Sampling

    clock = StepClock()
    module = GRPOModule(policy=Policy(name_or_path=model_dir), rewards=[graded_reward_class()()],
                        scheme=build_scheme(path), group_size=a.group_size,
                        sampling=Sampling(temperature=1.0, max_new_tokens=a.max_new_tokens),
                        loss=LossSettings(), optimizer=partial(torch.optim.AdamW, lr=a.lr, weight_decay=0.0))
    real_sample = module.experience.sample

    def sample_then_cached(model, prompts, group_size, seed=None, greedy=False, sampling=None):
        real_sample(model, prompts, group_size, seed, greedy, sampling)  # the real cost of a step's generation ...
        return cached["rollout"]  # ... but every scheme trains on the same completions

    clock.wrap(module.experience, "sample", "generate", sample_then_cached)
    clock.wrap(module.experience, "score", "score")
    clock.wrap(module.updater, "token_logprobs")
    for method in SCHEME_METHODS:
        if hasattr(module.scheme, method):  # the interface may grow; time what exists
            clock.wrap(module.scheme, method, "weighting")
    clock.wrap(module, "manual_backward", "backward")
    clock.wrap(module.updater, "clip_and_step", "optimizer")
    original_loss = update_file.policy_loss

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            clock.current = defaultdict(float)
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            step = dict(clock.current)
            step["step"] = time.perf_counter() - self.t0
            step["other"] = step["step"] - sum(v for k, v in step.items() if k != "step")
            step["tokens"] = int(StepOutput.of(outputs).mask.sum())
            clock.steps.append(step)

    L.seed_everything(a.seed, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=a.warmup + a.steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[Clock()])
    loader = DataLoader(rows * (a.warmup + a.steps), batch_size=a.prompts, shuffle=False, collate_fn=collate_prompts)
    try:
        clock.wrap(update_file, "policy_loss", "loss")
        trainer.fit(module, train_dataloaders=loader)
    finally:
        update_file.policy_loss = original_loss
    return clock.steps[a.warmup:]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--schemes", nargs="+", help="class paths (default: every TokenWeighting subclass in "
                                                 + ", ".join(SCHEME_MODULES) + ")")
    p.add_argument("--baselines", action="store_true", help="also every scheme in stare_lit.schemes.baselines")
    p.add_argument("--model", help="a saved policy directory; default: the tiny Llama from a config, random weights")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--group-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--steps", type=int, default=4, help="timed steps per scheme per round")
    p.add_argument("--warmup", type=int, default=1, help="untimed steps at the start of each fit")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (0: torch's default); see vs_trl.py")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    import tempfile

    import lightning as L

    from benchmarks.vs_trl import prompt_rows
    from stare_lit.module import GRPOModule
    from stare_lit.train.policy import Policy
    from stare_lit.rollout.base import Sampling

    paths = a.schemes or discover(SCHEME_MODULES + (BASELINE_MODULES if a.baselines else []))
    schemes, skipped = [], []
    for path in paths:
        try:
            build_scheme(path)
            schemes.append(path)
        except Exception as e:  # noqa: BLE001 - a scheme that needs arguments: report, go on
            skipped.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0][:80]})")
    print("schemes:", ", ".join(s.rsplit(".", 1)[1] for s in schemes), "| skipped:", "; ".join(skipped) or "none")

    with tempfile.TemporaryDirectory() as tmp:
        model_dir = a.model or str(save_tiny_policy(Path(tmp) / "policy", seed=a.seed))
        rows = prompt_rows(a.prompts, a.seed)
        L.seed_everything(a.seed, verbose=False)
        sampler = GRPOModule(policy=Policy(name_or_path=model_dir), rewards=[graded_reward_class()()],
                             group_size=a.group_size, sampling=Sampling(max_new_tokens=a.max_new_tokens))
        sampler.configure_model()
        cached = {"rollout": sampler.experience.sample(sampler.model, [r["prompt"] for r in rows], a.group_size)}
        batch = {"prompt": [r["prompt"] for r in rows], "answer": [r["answer"] for r in rows]}
        rewards = sampler.experience.score(batch, cached["rollout"], a.group_size).total
        tokens = int(cached["rollout"].completion_mask.sum())
        print(f"batch: {len(rewards)} completions, {tokens} tokens, reward mean {rewards.mean():.2f}, "
              f"std {rewards.std():.2f}", flush=True)

        steps: dict[str, list[dict]] = {s: [] for s in schemes}
        for r in range(a.rounds):
            order = schemes[r % len(schemes):] + schemes[: r % len(schemes)]
            for path in order:
                got = run_scheme(path, a, model_dir, rows, cached)
                steps[path] += got
                print(f"round {r + 1}/{a.rounds} {path.rsplit('.', 1)[1]:>18s}: "
                      f"{median([s['step'] for s in got]):.3f} s/step, weighting "
                      f"{1e3 * median([s.get('weighting', 0.0) for s in got]):.2f} ms", flush=True)

    base = median([s["step"] for s in steps[schemes[0]]])
    rows_out = []
    for path in schemes:
        st = steps[path]
        step = [s["step"] for s in st]
        share = [100 * s.get("weighting", 0.0) / s["step"] for s in st]
        extra = [100 * (s.get("weighting", 0.0) + s.get("forward (no grad: old/ref pass)", 0.0)) / s["step"]
                 for s in st]
        rows_out.append([path.rsplit(".", 1)[1], spread(step), f"{median(step) / base:.3f}",
                         spread([1e3 * s.get("weighting", 0.0) for s in st]), f"{median(share):.2f} %",
                         f"{median(extra):.1f} %", "yes" if median(share) <= 2.0 else "**no**"])
    md = [header("Weighting overhead: GRPO vs the token-level schemes on the same batch")]
    md.append(f"- model: {a.model or 'tiny Llama from a config (h128, 3 layers, vocab 16, random weights)'}; "
              f"one cached batch of {a.prompts} prompts × G={a.group_size} ({tokens} completion tokens, graded "
              f"reward), ≤ {a.max_new_tokens} new tokens; {a.rounds} rounds × {a.steps} timed steps (+{a.warmup} "
              f"warm-up) per scheme, rotated order; torch threads: {torch.get_num_threads()}\n"
              f"- schemes present: {', '.join(s.rsplit('.', 1)[1] for s in schemes)}"
              f"{'; skipped: ' + '; '.join(skipped) if skipped else ''}\n")
    md.append(table(["scheme", "s/step median (min–max)", f"step / {schemes[0].rsplit('.', 1)[1]} step",
                     "weighting calls (ms)", "weighting share of step", "weighting + extra no-grad passes",
                     "≤ 2 %"], rows_out))
    split_rows = []
    for path in schemes:
        st = steps[path]
        step = median([s["step"] for s in st])
        parts = [median([s.get(part, 0.0) for s in st]) for part in PARTS]
        split_rows.append([path.rsplit(".", 1)[1]] + [f"{1e3 * m:.1f} ({100 * m / step:.1f} %)" for m in parts])
    md.append("\n#### Time split of a step: milliseconds, median over steps (share of the median step)\n\n"
              + table(["scheme", *PARTS], split_rows))
    text = "\n".join(md) + "\n"
    print("\n" + text)
    name = "overhead" + ("_custom" if a.schemes else "_baselines" if a.baselines else "")
    print(f"written to {write_result(name, text)}")


if __name__ == "__main__":
    main()

"""The update with and without skipping zero-gradient rows (``skip_inert_rows``), on the main job's work.

    python benchmarks/update_skip.py --model artifacts/arith-warmstart     # ~3 minutes on 2 CPU cores
    python benchmarks/update_skip.py --flat-share 0.45                     # a DAPO-style share of flat groups

The main job (configs/arithmetic_stare.yaml): STARE O1 (gate open), 16 prompts × G = 8, ≤ 40 new
tokens, AdamW lr 1e-4, μ = 1 (the fused old pass), fp32, one torch thread. One rollout is sampled
from the policy (``--model``, else the warm start's architecture with random weights) and scored with
the task's reward. Its second half has more flat groups than a warm start (the main job logs
``train/frac_zero_std``): ``--flat-share S`` replays that by making the first round(S·16) groups
flat (each row gets its group's first reward), the others keep their sampled rewards (where those
are all equal: seeded random 0/1 rewards with both values, so the share is S whatever the policy). Then
``GRPOModule.learn`` — the whole update: forwards, loss, backward, AdamW step — runs on that same
rollout from the same weights, skipping on and off alternating (A B B A ...), ``--repeats`` times
each. Both must give the same loss (checked with ==).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks.common import fmt, header, load, median, save_tiny_policy, spread, table, write_result  # noqa: E402


def build(model_dir: str, skip: bool):
    from stare_lit.module import GRPOModule
    from stare_lit.train.policy import Policy
    from stare_lit.rollout.base import Sampling
    from stare_lit.data.tasks.arithmetic import ArithmeticReward
    from stare_lit.schemes.stare import STARE
    from stare_lit.train.update import UpdateSettings

    module = GRPOModule(policy=Policy(name_or_path=model_dir), rewards=[ArithmeticReward()], group_size=8,
                        scheme=STARE(target_entropy=100.0, top_ratio=0.1, w=1.1),
                        update=UpdateSettings(skip_inert_rows=skip),
                        sampling=Sampling(max_new_tokens=40, temperature=1.0),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0))
    module.configure_model()
    # learn() outside a Trainer: the optimizer, backward and clip without Lightning's loop
    module.optimizers = lambda: module._bench_optimizer
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    return module


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="policy directory (default: the warm start's architecture, random weights)")
    p.add_argument("--flat-share", type=float, default=0.15, help="share of groups made flat (replay; -1: as sampled)")
    p.add_argument("--repeats", type=int, default=6, help="timed updates per variant")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--name", default="update_skip", help="results/NAME.md is written")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    model_dir = a.model or str(save_tiny_policy(Path(tempfile.mkdtemp()) / "tiny"))

    from benchmarks.vs_trl import prompt_rows
    from stare_lit.ops.advantages import group_advantages

    modules = {True: build(model_dir, True), False: build(model_dir, False)}
    start = {k: v.detach().clone() for k, v in modules[True].model.state_dict().items()}
    module = modules[True]
    rows = prompt_rows(16, seed=0)
    batch = {k: [r[k] for r in rows] for k in rows[0]}
    rollout = module.experience.sample(module.model, batch["prompt"], 8, seed=1)
    rewards = module.experience.score(batch, rollout, 8).total.view(16, 8)  # (P, G)
    sampled_flat = (rewards == rewards[:, :1]).all(-1).float().mean().item()
    if a.flat_share >= 0:
        n_flat = round(a.flat_share * 16)
        rewards[:n_flat] = rewards[:n_flat, :1]
        g = torch.Generator().manual_seed(0)
        for i in range(n_flat, 16):  # a group the policy got all right or all wrong: mixed 0/1 instead
            if (rewards[i] == rewards[i, 0]).all():
                rewards[i] = (torch.randperm(8, generator=g) < 1 + torch.randint(7, (1,), generator=g)).float()
    rewards = rewards.reshape(-1)
    advantages = group_advantages(rewards, 8)
    keep = ~torch.isnan(rewards)
    rollout = replace(rollout, completion_mask=rollout.completion_mask & keep[:, None])

    times, losses, skipped = {True: [], False: []}, {True: [], False: []}, 0.0
    order = [True, False, False, True] * ((a.repeats + 1) // 2)
    for skip in order[:2 * a.repeats]:
        m = modules[skip]
        m.model.load_state_dict(start)
        m._bench_optimizer = m.configure_optimizers()
        t0 = time.perf_counter()
        _, stats = m.learn(rollout, advantages)
        times[skip].append(time.perf_counter() - t0)
        losses[skip].append(stats["loss"])
        skipped = stats["rows_skipped"] if skip else skipped
    same_loss = losses[True][0] == losses[False][0]
    t_on, t_off = median(times[True]), median(times[False])
    rows_md = [["off (every row forwarded with grad)", spread(times[False]), "1.00", "0 %"],
               ["on (zero-gradient rows: a no-grad forward only)", spread(times[True]), f"{t_off / t_on:.2f}",
                f"{100 * skipped:.1f} %"]]
    md = [header("Update with and without skipping zero-gradient rows")]
    md.append(f"- policy: {a.model or 'warm-start architecture, random weights'}; 16 prompts × G = 8, ≤ 40 new tokens; "
              f"STARE O1, μ = 1; {a.repeats} updates per variant, alternating; torch threads {a.threads}\n"
              f"- flat groups: {100 * sampled_flat:.0f} % as sampled; replayed share "
              f"{'as sampled' if a.flat_share < 0 else f'{100 * a.flat_share:.0f} %'}; completion tokens "
              f"{int(rollout.completion_mask.sum())}, of which in skipped rows "
              f"{int(rollout.completion_mask[advantages == 0].sum())}\n"
              f"- same loss both ways (==): {same_loss} ({losses[True][0]!r} vs {losses[False][0]!r}); "
              f"load average at the end: {load()}\n")
    md.append(table(["skip_inert_rows", "update s, median (min–max)", "speed-up", "rows skipped"], rows_md))
    text = "\n".join(md) + "\n"
    print(text)
    print(f"written to {write_result(a.name, text)}")


if __name__ == "__main__":
    main()

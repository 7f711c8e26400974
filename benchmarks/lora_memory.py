"""What LoRA adapters save: parameters, optimizer state and peak memory of GRPO steps, full vs LoRA.

    python benchmarks/lora_memory.py                     # ~3 minutes on 2 CPU cores
    python benchmarks/lora_memory.py --hidden 512 --layers 6 --vocab 32000 --rank 16 --repeats 2

One GRPO run of ``--steps`` steps per variant, each in a fresh process (the only honest CPU peak
is the process's own ``ru_maxrss``), alternating full, lora, lora, full, ... Both train a
random-weight Llama (``benchmarks.common.save_tiny_policy`` at the given size) with β > 0, so full
fine-tuning holds a frozen reference copy of the model while LoRA uses its frozen base, adapters
off. Reported per variant:

- parameters: trainable, and all held in memory (policy + reference copy);
- optimizer state: bytes of every tensor in AdamW's state after the run (exact, not estimated);
- peak RSS: the process's peak resident memory during the run, above its resident memory after
  the imports (policy, reference, gradients, optimizer state, activations of the step);
- step time: median over the steps after the first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import (emit, fmt, header, median, peak_rss_mib, rss_mib, run_worker,  # noqa: E402
                               save_tiny_policy, spread, table, write_result)

PROMPTS = [f"{a}+{b}=" for a, b in [(123, 456), (234, 567), (345, 678), (456, 789)]]


def worker(a) -> None:
    import lightning as L
    import torch
    from lightning.pytorch.callbacks import Callback

    from stare_lit.train.lora import LoRA
    from stare_lit.module import GRPOModule, LossSettings
    from stare_lit.train.policy import Policy
    from stare_lit.rewards.base import Reward
    from stare_lit.rollout.base import Sampling

    torch.set_num_threads(a.threads)
    base_rss = rss_mib()

    class DigitShare(Reward):
        def __call__(self, prompts, completions, **columns):
            return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in completions]

    class Timer(Callback):
        times: list[float] = []

        def on_train_batch_start(self, *args):
            self.t0 = time.perf_counter()

        def on_train_batch_end(self, *args):
            self.times.append(time.perf_counter() - self.t0)

    class Prompts(L.LightningDataModule):
        def train_dataloader(self):
            from stare_lit.data.datamodule import collate_prompts

            rows = [{"prompt": p, "answer": ""} for p in PROMPTS] * a.steps
            return torch.utils.data.DataLoader(rows, batch_size=len(PROMPTS), collate_fn=collate_prompts)

    lora = LoRA(rank=a.rank, alpha=2.0 * a.rank) if a.variant == "lora" else None
    module = GRPOModule(policy=Policy(name_or_path=a.model, lora=lora), rewards=[DigitShare()], group_size=8,
                        sampling=Sampling(max_new_tokens=a.max_new_tokens), loss=LossSettings(beta=0.05),
                        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-4))
    timer = Timer()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=a.steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
                        callbacks=[timer], default_root_dir=tempfile.mkdtemp())
    trainer.fit(module, Prompts())
    held = [module.model] + ([module._ref_model[0]] if module._ref_model[0] is not None else [])
    state = trainer.optimizers[0].state.values()
    emit({"trainable": sum(p.numel() for p in module.model.parameters() if p.requires_grad),
          "held": sum(p.numel() for m in held for p in m.parameters()),
          "optimizer_mib": sum(t.numel() * t.element_size() for s in state for t in s.values()
                               if torch.is_tensor(t)) / 2**20,
          "peak_mib": peak_rss_mib() - base_rss, "step_s": median(timer.times[1:])})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", action="store_true")
    p.add_argument("--variant", choices=["full", "lora"])
    p.add_argument("--model")
    a = p.parse_args()
    if a.worker:
        return worker(a)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_tiny_policy(Path(tmp) / "policy", vocab_size=a.vocab, hidden_size=a.hidden,
                                 num_layers=a.layers, num_heads=8)
        order = [v for i in range(a.repeats) for v in (["full", "lora"] if i % 2 == 0 else ["lora", "full"])]
        runs = {"full": [], "lora": []}
        for variant in order:
            args = ["--worker", "--variant", variant, "--model", str(model), "--rank", str(a.rank),
                    "--steps", str(a.steps), "--max-new-tokens", str(a.max_new_tokens), "--threads", str(a.threads)]
            runs[variant].append(run_worker(Path(__file__), args))
    rows = []
    for variant, results in runs.items():
        r = results[0]
        rows.append([variant if variant == "full" else f"LoRA r={a.rank}, all-linear", f"{r['trainable']:,}",
                     f"{r['held']:,}", fmt(r["optimizer_mib"]), spread([x["peak_mib"] for x in results]),
                     spread([x["step_s"] for x in results])])
    full, lora = runs["full"][0], runs["lora"][0]
    ratio = median([x["peak_mib"] for x in runs["lora"]]) / median([x["peak_mib"] for x in runs["full"]])
    markdown = (header("LoRA vs full fine-tuning: memory of GRPO steps (β > 0)")
                + f"- model: random-weight Llama, hidden {a.hidden}, {a.layers} layers, vocab {a.vocab}, fp32; "
                  f"G=8 × {len(PROMPTS)} prompts, {a.max_new_tokens} new tokens, {a.steps} steps, AdamW\n\n"
                + table(["variant", "trainable params", "params held (policy + reference)", "AdamW state (MiB)",
                         "peak RSS above baseline (MiB), median (min–max)", "step (s), median (min–max)"], rows)
                + f"\n\nLoRA: {lora['trainable'] / full['trainable']:.2%} of the trainable parameters, "
                  f"{lora['optimizer_mib'] / full['optimizer_mib']:.2%} of the optimizer state, "
                  f"{ratio:.2f}× the peak memory.\n")
    print(markdown)
    write_result("lora_memory", markdown)


if __name__ == "__main__":
    main()

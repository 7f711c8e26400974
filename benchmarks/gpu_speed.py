"""GPU speed on a Qwen2-0.5B-shaped model built from a config (random weights, the real 151,936 vocabulary, bf16).

    bash benchmarks/gpu_speed.sh                 # on a GPU: < 8 min, writes benchmarks/results/gpu_speed.txt
    GPU_SPEED_SMOKE=1 python benchmarks/gpu_speed.py   # a tiny model on CPU: checks the script runs end to end

1. Rollout tokens/s of stare_lit.rollout.FastRollout (CUDA graphs) vs Hugging Face generate
   (stare_lit.rollout.HFGenerate) at 8 prompts × G = 8 = 64 rows × 256 new tokens, alternating
   H F F H ... after one warm-up each (FastRollout captures its graphs there).
2. The update of a real training step (``stare-lit``'s GRPOModule under a Lightning Trainer, μ = 1, one
   micro-batch, AdamW): its model FLOPs utilisation as the module logs it (train/mfu = 6 · params ·
   trained tokens / update time / PEAK_FLOPS, default 989e12: H100/H200 dense bf16) and the peak
   CUDA memory allocated during the update (rollout excluded).
"""

from __future__ import annotations

import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SMOKE = os.environ.get("GPU_SPEED_SMOKE") == "1"
PEAK_FLOPS = float(os.environ.get("PEAK_FLOPS", "989e12"))
if SMOKE:  # a tiny stand-in, float32 on CPU
    SHAPE = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000)
    PROMPTS, G, NEW_TOKENS, DTYPE, ROUNDS, STEPS = 2, 4, 8, "float32", 1, 2
    torch.set_num_threads(1)  # a shared CPU: see benchmarks/README.md, "The machine, and threads"
else:  # Qwen/Qwen2.5-0.5B's shape
    SHAPE = dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2, vocab_size=151936)
    PROMPTS, G, NEW_TOKENS, DTYPE, ROUNDS, STEPS = 8, 8, 256, "bfloat16", 3, 4


def config():
    from transformers import Qwen2Config

    return Qwen2Config(**SHAPE, max_position_embeddings=1024, tie_word_embeddings=True, rope_theta=1e6,
                       pad_token_id=0, eos_token_id=1, bos_token_id=1)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def rollout_speed(device: torch.device, tokenizer) -> list[str]:
    from transformers import AutoModelForCausalLM

    from stare_lit.rollout.fast import FastRollout
    from stare_lit.train.policy import DTYPES
    from stare_lit.rollout.hf import HFGenerate
    from stare_lit.rollout.base import Sampling

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config(), dtype=DTYPES[DTYPE]).to(device).eval()
    rng = random.Random(0)
    prompts = [f"{rng.randint(100, 999)}+{rng.randint(100, 999)}=" for _ in range(PROMPTS)]
    sampling = Sampling(max_new_tokens=NEW_TOKENS)
    engines = {"HF generate": HFGenerate(), "FastRollout": FastRollout()}
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for key, engine in engines.items():  # warm-up: allocations, CUDA graph capture
        t0 = time.perf_counter()
        engine(model, tokenizer, prompts, G, sampling)
        sync()
        print(f"warm-up {key}: {time.perf_counter() - t0:.1f} s", flush=True)
    order = list(engines)
    for r in range(ROUNDS):
        for key in (order if r % 2 == 0 else order[::-1]):
            torch.manual_seed(r)
            sync()
            t0 = time.perf_counter()
            out = engines[key](model, tokenizer, prompts, G, sampling)
            sync()
            dt = time.perf_counter() - t0
            rates[key].append(int(out.completion_mask.sum()) / dt)
            print(f"round {r} {key}: {rates[key][-1]:,.0f} tok/s ({dt:.2f} s)", flush=True)
    med = {k: sorted(v)[len(v) // 2] for k, v in rates.items()}
    ratio = med["FastRollout"] / med["HF generate"]
    lines = [f"rollout, {PROMPTS} prompts x G={G} = {PROMPTS * G} rows x {NEW_TOKENS} new tokens, {DTYPE}:"]
    lines += [f"  {k}: median {med[k]:,.0f} tok/s (min {min(v):,.0f}, max {max(v):,.0f})" for k, v in rates.items()]
    lines.append(f"  FastRollout / HF generate: {ratio:.2f}x (goal >= 3x: {'met' if ratio >= 3 else 'NOT met'})")
    del model, engines
    return lines


def update_speed(tokenizer_dir: str) -> list[str]:
    import lightning as L
    from lightning.pytorch.callbacks import Callback

    from stare_lit.experience import ValidationSettings
    from stare_lit.module import GRPOModule
    from stare_lit.train.policy import Policy
    from stare_lit.rollout.base import Sampling
    from stare_lit.data.tasks.arithmetic import ArithmeticDataModule, ArithmeticReward

    class Measured(GRPOModule):
        """Peak CUDA memory of the update alone: the counter is reset after the rollout."""

        peaks: list[float] = []

        def learn(self, rollout, advantages):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            out = super().learn(rollout, advantages)
            if torch.cuda.is_available():
                self.peaks.append(torch.cuda.max_memory_allocated() / 2**30)
            return out

    class Record(Callback):
        def __init__(self) -> None:
            self.rows: list[dict] = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            m = trainer.callback_metrics
            self.rows.append({k: float(m[k]) for k in ("train/mfu", "time/update_s", "time/generate_s",
                                                        "train/trained_tokens_per_s") if k in m})
            print(f"step {trainer.global_step}: {self.rows[-1]}", flush=True)

    policy = Policy(config=config(), tokenizer=tokenizer_dir, dtype=DTYPE)
    module = Measured(policy=policy, rewards=[ArithmeticReward()], group_size=G,
                      sampling=Sampling(max_new_tokens=NEW_TOKENS), peak_flops=PEAK_FLOPS,
                      validation=ValidationSettings(samples=1),
                      optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6))
    record = Record()
    with tempfile.TemporaryDirectory() as root:
        trainer = L.Trainer(accelerator="auto", devices=1, max_steps=STEPS, logger=False, enable_progress_bar=False,
                            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                            limit_val_batches=0, default_root_dir=root, callbacks=[record])
        trainer.fit(module, datamodule=ArithmeticDataModule(batch_size=PROMPTS, num_train_prompts=64))
    timed = record.rows[1:] or record.rows  # the first step pays for allocations and kernel selection
    mfu = sorted(r.get("train/mfu", float("nan")) for r in timed)
    upd = sorted(r["time/update_s"] for r in timed)
    params = sum(p.numel() for p in module.model.parameters())
    lines = [f"update ({params / 1e6:.0f}M parameters, {PROMPTS * G} rows, mu = 1, one micro-batch, AdamW, {DTYPE}), "
             f"steps 2-{len(record.rows)}:",
             f"  update time: median {upd[len(upd) // 2]:.2f} s (min {upd[0]:.2f}, max {upd[-1]:.2f})",
             f"  MFU (peak {PEAK_FLOPS:.3g} FLOP/s): median {mfu[len(mfu) // 2]:.3f} (min {mfu[0]:.3f}, max {mfu[-1]:.3f})"]
    if Measured.peaks:
        lines.append(f"  peak CUDA memory allocated in the update: {max(Measured.peaks):.1f} GiB")
    else:
        lines.append("  peak CUDA memory: n/a (no CUDA)")
    return lines


def main() -> None:
    from benchmarks.common import char_tokenizer_with_vocab, versions

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if not SMOKE and device.type != "cuda":
        raise SystemExit("gpu_speed.py: no CUDA device (GPU_SPEED_SMOKE=1 runs a tiny CPU check)")
    print(f"gpu_speed.py{' (SMOKE: tiny model, not a result)' if SMOKE else ''}: {versions()}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name()}")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        char_tokenizer_with_vocab(SHAPE["vocab_size"]).save_pretrained(tmp)
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tmp)
        tokenizer.padding_side = "left"
        lines = rollout_speed(device, tokenizer)
        if device.type == "cuda":
            torch.cuda.empty_cache()
        lines += update_speed(tmp)
    print("\n".join(["", "== summary =="] + lines + [f"total {time.perf_counter() - t0:.0f} s"]))


if __name__ == "__main__":
    main()

"""A tiny GRPO run with FSDP2 (ModelParallelStrategy) on CPU processes, for tests/train/test_fsdp.py.

    python tests/train/fsdp_script.py --model DIR --out OUT.json --devices 2 [--ckpt DIR] [--no-gather]

It must run as its own process: Lightning re-launches this script (not pytest) as rank 1.

Completions are made independent of how prompts are split over ranks so that a 2-rank run and a
1-process run see the same rollout: every prompt is generated on its own, with the RNG seeded from
the prompt and the step. The world batch is the same 4 prompts per step either way (1 × 4 or 2 × 2).
With ``--ckpt`` the run saves a (sharded) checkpoint after its last step, then a second Trainer
resumes it in the same processes for one more step. Rank 0 writes what it measured to ``--out``
as JSON. ``--no-gather`` rolls out without ``full_parameters`` (to time what gathering saves).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from contextlib import contextmanager
from pathlib import Path

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

sys.path.insert(0, str(Path(__file__).parents[2]))

import stare_lit.rollout.hf as rollout_lib  # noqa: E402
from stare_lit.data.datamodule import collate_prompts  # noqa: E402
from stare_lit.ops.distributed import all_reduce_sum  # noqa: E402
from stare_lit.module import GRPOModule, LossSettings  # noqa: E402
from stare_lit.train.policy import Policy  # noqa: E402
from stare_lit.rewards.base import Reward  # noqa: E402
from stare_lit.rollout.base import Rollout, Sampling  # noqa: E402
from stare_lit.experience import ValidationSettings  # noqa: E402
from stare_lit.train.step_log import StepOutput  # noqa: E402
from stare_lit.train.strategy import AtomicModelParallelStrategy  # noqa: E402

PROMPTS = [f"{a}+{b}=" for a, b in [(123, 456), (234, 567), (345, 678), (456, 789),
                                    (567, 891), (678, 912), (789, 123), (891, 234),
                                    (912, 345), (135, 246), (246, 357), (357, 468)]]

PROBE_IDS = [4, 5, 13, 6, 7, 14]  # "12+34=" in the character tokenizer


class DigitShare(Reward):
    """Share of the completion's characters that are digits: varies across samples of a random model."""

    def __call__(self, prompts, completions, **columns):
        return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


def cat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Stack per-prompt rollouts (same prompt length) into one, padding completions on the right."""
    T = max(r.completion_ids.shape[1] for r in parts)
    ids, attn, masks = [], [], []
    for r in parts:
        extra = T - r.completion_ids.shape[1]
        ids.append(F.pad(r.input_ids, (0, extra), value=pad_id))
        attn.append(F.pad(r.attention_mask, (0, extra), value=0))
        masks.append(F.pad(r.completion_mask, (0, extra), value=False))
    return Rollout(input_ids=torch.cat(ids), attention_mask=torch.cat(attn), completion_mask=torch.cat(masks),
                   prompt_length=parts[0].prompt_length, completions=[c for r in parts for c in r.completions],
                   truncated=torch.cat([r.truncated for r in parts]))


class SeededRollouts(GRPOModule):
    """GRPOModule whose rollout of a prompt does not depend on the other prompts in the batch.

    ``replayed``: rollouts by "step:prompt" (``recorded`` of an earlier run, through a file): replayed
    instead of sampled, so two runs that differ in precision train on identical tokens by construction.
    """

    replayed: dict | None = None

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.recorded, sample = {}, self.experience.sample

        def per_prompt(model, prompts, group_size, seed=None, greedy=False, sampling=None):  # seeds per prompt
            parts = []
            for p in prompts:
                key = f"{self.global_step}:{p}"
                if self.replayed is not None:
                    parts.append(self.replayed[key])  # a KeyError here: the run asked for a rollout never recorded
                    continue
                torch.manual_seed(zlib.crc32(p.encode()) + 1000 * self.global_step)
                parts.append(sample(model, [p], group_size, greedy=greedy, sampling=sampling))
                self.recorded[key] = parts[-1]
            return cat_rollouts(parts, self.tokenizer.pad_token_id)

        self.experience.sample = per_prompt


def save_rollouts(rollouts: dict, path: str) -> None:
    torch.save({k: vars(r) for k, r in rollouts.items()}, path)


def load_rollouts(path: str) -> dict:
    return {k: Rollout(**fields) for k, fields in torch.load(path, weights_only=False).items()}


class Record(Callback):
    """World-level numbers per step, weights checksums, and whether the parameters are sharded."""

    def __init__(self) -> None:
        self.steps: list[dict] = []
        self.info: dict = {}

    def on_train_start(self, trainer, module):
        self.info.setdefault("start_checksums", []).append(checksum(module))
        opt = trainer.optimizers[0]
        steps = [float(s["step"]) for s in opt.state.values() if "step" in s]
        self.info.setdefault("start_adam_steps", []).append(max(steps) if steps else 0.0)
        self.info.setdefault("start_global_step", []).append(trainer.global_step)
        p = next(module.model.parameters())
        self.info["param_type"] = type(p).__name__
        self.info["local_numel"] = sum(getattr(q, "_local_tensor", q).numel() for q in module.model.parameters())
        self.info["full_numel"] = sum(q.numel() for q in module.model.parameters())
        self.info["param_dtype"] = str(p.dtype)
        if hasattr(module.model, "_get_fsdp_state"):  # FSDP2: the dtype it all-gathers and computes in
            self.info["fsdp_compute_dtype"] = str(module.model._get_fsdp_state()._mp_policy.param_dtype)

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        world = trainer.world_size
        m = trainer.callback_metrics
        step = StepOutput.of(outputs)
        mask = step.mask
        n_tokens = all_reduce_sum(mask.sum().float()).item()
        reward = all_reduce_sum(step.rewards.sum()).item() / all_reduce_sum(
            torch.tensor(float(step.rewards.numel()))).item()
        self.steps.append({
            "step": trainer.global_step,
            "logged_loss": float(m["train/loss"]),  # rank 0's share of the world loss (× world)
            "world_loss": all_reduce_sum(step.loss.float()).item() / world,
            "grad_norm": float(m["train/grad_norm"]),
            "reward": reward,
            "tokens": n_tokens,
            "generate_s": all_reduce_sum(torch.tensor(float(m["time/generate_s"]))).item() / world,
            "tok_per_s": all_reduce_sum(torch.tensor(float(m["train/generated_tokens_per_s"]))).item(),
        })

    def on_train_end(self, trainer, module):
        self.info.setdefault("end_checksums", []).append(checksum(module))
        with torch.no_grad():  # every rank: the sharded forward all-gathers (compared with the exported model)
            logits = module.model(input_ids=torch.tensor([PROBE_IDS], device=module.device)).logits
        self.info.setdefault("end_logits", []).append(logits.double().cpu().tolist())


def checksum(module) -> float:
    """Sum over all parameters of sum(p * index-weights), over full (gathered) tensors."""
    total = 0.0
    for p in module.model.parameters():
        full = p.full_tensor() if hasattr(p, "full_tensor") else p
        total += float((full.detach().double().flatten() * torch.linspace(0.5, 1.5, full.numel(),
                                                                          dtype=torch.float64)).sum())
    return total


@contextmanager
def no_gather(model):
    """The rollout without full_parameters: FSDP re-gathers every layer at every decoded token.

    Ranks may then stop decoding at different steps, so let transformers keep them in lockstep.
    """
    model._is_fsdp_managed_module = True  # transformers' flag for synced_gpus
    yield False


class Prompts(L.LightningDataModule):
    """PROMPTS in order; rank r of w takes rows r, r+w, ... so each step's world batch is 4 consecutive rows."""

    def __init__(self, per_step: int) -> None:
        super().__init__()
        self.per_step = per_step

    def train_dataloader(self):
        rank, world = self.trainer.global_rank, self.trainer.world_size
        rows = [{"prompt": p, "answer": ""} for p in PROMPTS][rank::world]
        return torch.utils.data.DataLoader(rows, batch_size=self.per_step // world, collate_fn=collate_prompts)


def make_module(model_dir: str, max_new_tokens: int, group_size: int, beta: float,
                mixed_precision: bool = False) -> GRPOModule:
    policy = Policy(name_or_path=model_dir, fsdp_mixed_precision=mixed_precision)
    return SeededRollouts(policy=policy, rewards=[DigitShare()], group_size=group_size,
                          sampling=Sampling(max_new_tokens=max_new_tokens), loss=LossSettings(beta=beta),
                          optimizer=lambda params: torch.optim.AdamW(params, lr=1e-2),
                          validation=ValidationSettings(samples=1))


def make_trainer(devices: int, steps: int, root: Path, record: Record, ckpt: Path | None) -> L.Trainer:
    strategy = (AtomicModelParallelStrategy(data_parallel_size=devices, tensor_parallel_size=1,
                                            process_group_backend="gloo") if devices > 1 else "auto")
    callbacks: list = [record]
    if ckpt is not None:  # every step: the step-2 save replaces the step-1 one (the atomic swap)
        callbacks.append(ModelCheckpoint(dirpath=ckpt, save_last=True, save_top_k=0, every_n_train_steps=1))
    return L.Trainer(accelerator="cpu", devices=devices, strategy=strategy, max_steps=steps, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     limit_val_batches=0, enable_checkpointing=ckpt is not None, default_root_dir=root,
                     callbacks=callbacks, use_distributed_sampler=False)


def run(model_dir: str, out: str | None, devices: int = 2, steps: int = 2, prompts_per_step: int = 4,
        max_new_tokens: int = 8, group_size: int = 4, beta: float = 0.05, ckpt: str | None = None,
        gather: bool = True, mixed_precision: bool = False, save_rollouts_to: str | None = None,
        replay: str | None = None) -> dict:
    if not gather:
        rollout_lib.full_parameters = no_gather
    L.seed_everything(0, verbose=False)
    data = Prompts(prompts_per_step)
    record = Record()
    root = Path(out or ".").parent
    t0 = time.perf_counter()
    trainer = make_trainer(devices, steps, root, record, Path(ckpt) if ckpt else None)
    module = make_module(model_dir, max_new_tokens, group_size, beta, mixed_precision)
    module.replayed = load_rollouts(replay) if replay else None
    trainer.fit(module, datamodule=data)
    if save_rollouts_to is not None:  # one process: every prompt's rollout is here
        save_rollouts(module.recorded, save_rollouts_to)
    result = {"devices": devices, "steps": list(record.steps), "seconds": time.perf_counter() - t0}
    if ckpt is not None:  # resume the sharded checkpoint in the same processes, one more step
        saved = Path(ckpt) / "last.ckpt"
        result["checkpoint_is_dir"] = saved.is_dir()
        result["checkpoint_files"] = sorted(p.name for p in saved.iterdir()) if saved.is_dir() else []
        result["checkpoint_dir"] = sorted(p.name for p in Path(ckpt).iterdir())  # no .tmp / .old left
        record.steps.clear()
        trainer = make_trainer(devices, steps + 1, root, record, None)
        trainer.fit(make_module(model_dir, max_new_tokens, group_size, beta, mixed_precision), datamodule=data,
                    ckpt_path=saved)
        result["resumed_steps"] = list(record.steps)
        result["resumed_global_step"] = trainer.global_step
    result |= record.info
    if out is not None and trainer.is_global_zero:
        Path(out).write_text(json.dumps(result, indent=1))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a saved tiny policy (weights + tokenizer)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--prompts-per-step", type=int, default=4, help="world batch of prompts")
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--group-size", type=int, default=4)
    parser.add_argument("--beta", type=float, default=0.05)
    parser.add_argument("--ckpt", default=None, help="save a checkpoint here after --steps, then resume it")
    parser.add_argument("--no-gather", action="store_true", help="roll out without full_parameters (timing)")
    parser.add_argument("--mixed-precision", action="store_true", help="policy.fsdp_mixed_precision (bf16)")
    parser.add_argument("--replay", default=None, help="train on the rollouts another run recorded (identical tokens)")
    a = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(1)  # one core per rank
    run(a.model, a.out, a.devices, a.steps, a.prompts_per_step, a.max_new_tokens, a.group_size, a.beta, a.ckpt,
        gather=not a.no_gather, mixed_precision=a.mixed_precision, replay=a.replay)


if __name__ == "__main__":
    main()

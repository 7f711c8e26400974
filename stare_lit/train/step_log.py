"""What a training step hands to the callbacks, and what it logs.

:class:`StepOutput` is the one typed object a step returns: the callbacks read its fields.

Step metrics without stale values: Lightning writes, at every step, the last value of each key logged
with ``on_step=True`` earlier in the epoch — also at the steps that did not log it. A key logged only
some of the time (the loss on a skipped step, a forecast that exists only once enough steps are in)
would show an old value as if it were new. :class:`StepKeys` remembers every key logged so far and gives
the missing ones NaN.

:func:`step_metrics` is what one training step logs (``train/``, ``time/``, ``reward/``, ``scheme/``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from stare_lit.ops.distributed import all_reduce_sum, masked_mean
from stare_lit.ops.metrics import all_wrong_share
from stare_lit.rewards.runner import ScoredBatch, none_fraction
from stare_lit.rollout.base import Rollout

#: The key of ``training_step``'s return that holds the :class:`StepOutput`.
STEP = "step"


@dataclass
class StepOutput:
    """What one training step hands to the callbacks; every tensor is detached.

    N = the step's completions (prompts × G, prompt-major: rows g·G … g·G+G−1 are prompt g's),
    T = completion positions. Per-token values are of π_old, the policy that sampled the batch; the
    advantages, mask and weights are the ones the scheme handed the loss of the first update (μ = 1:
    the only one). A step skipped for a NaN/±inf (``stare_lit.train.faults``) has no valid token:
    N × 1 tensors, mask all False, loss and rewards NaN — a callback that reduces over ``mask`` sees
    nothing and logs nothing for it.

    ``training_step`` returns it as ``{"step": StepOutput}`` (read it with :meth:`of`): in manual
    optimisation Lightning passes on only a Tensor or a Mapping (it copies the mapping and detaches
    its ``"loss"``) and refuses anything else, a dataclass included.
    """

    loss: Tensor  # () float32: the first update's loss over the world; 0 when nothing was learnt
    entropy: Tensor  # (N, T) float32: H = −Σ_v π(v|·) log π(v|·), the whole next-token distribution
    surprisal: Tensor  # (N, T) float32: s = −log π(o_t|·), the sampled token only (E_π[s] = H)
    advantages: Tensor  # (N, T) float32: the per-token advantage Â the loss used
    weights: Tensor  # (N, T) float32: the scheme's token weights ω (1 = plain GRPO)
    mask: Tensor  # (N, T) bool: the loss tokens (completion tokens of scored, kept rows, after the scheme's mask)
    rewards: Tensor  # (N,) float32: each completion's total reward; NaN = no reward could judge it

    @classmethod
    def of(cls, outputs: Any, who: str = "a callback") -> StepOutput:
        """The step in what ``on_train_batch_end`` received as ``outputs`` (``training_step``'s return)."""
        step = outputs.get(STEP) if isinstance(outputs, Mapping) else None
        if not isinstance(step, cls):
            raise TypeError(f"{who} reads the step that stare_lit.module.GRPOModule.training_step returns, "
                            f"{{'{STEP}': StepOutput}} (stare_lit.train.StepOutput); got {type(outputs).__name__}"
                            + (f" with keys {sorted(outputs)}" if isinstance(outputs, Mapping) else ""))
        return step


class StepKeys:
    """The keys logged so far; ``fill`` adds the ones a step lacks, as NaN."""

    def __init__(self) -> None:
        self.keys: set[str] = set()

    def fill(self, metrics: dict[str, float]) -> dict[str, float]:
        self.keys |= metrics.keys()
        return {key: float(metrics.get(key, math.nan)) for key in sorted(self.keys)}


def step_metrics(generated: Rollout, kept_mask: Tensor, scored: ScoredBatch, flat: Tensor, correct: Tensor,
                 entropy: Tensor, old_logprobs: Tensor, stats: dict[str, float], times: tuple[float, float, float]) -> dict[str, float]:
    """The metrics of one training step.

    Args:
        generated: the rollout as sampled.
        kept_mask: (N, T) the completion tokens that entered the loss.
        scored: the rewards (``total`` (N,), NaN where unscorable) and per-reward values and counts.
        flat: (P,) groups whose rewards were all equal.
        correct: (P, G) bool, each completion correct by the accuracy reward (value >= 1, as validation counts).
        entropy, old_logprobs: (N, T) of π_old: the logged token entropy and surprisal.
        stats: the update's own stats (loss, grad_norm, trained_tokens, ...), logged as ``train/<key>``.
        times: seconds of (generate, score, update).
    """
    lengths = generated.completion_mask.sum(-1)  # (N,) tokens, EOS included
    rewards = scored.total
    ok = ~torch.isnan(rewards)
    reward_sum = all_reduce_sum(torch.stack([rewards[ok].sum(), ok.sum().float()]))  # world-level
    metrics = {
        "train/reward": (reward_sum[0] / reward_sum[1]).item() if reward_sum[1] > 0 else math.nan,
        "train/frac_zero_std": flat.float().mean().item(),
        # Prompts whose G samples are all wrong: no gradient, and a collapsed policy never learns them.
        "train/all_wrong_groups": all_wrong_share(correct).item(),
        "train/frac_unscored": (~ok).float().mean().item(),
        "train/completion_length": lengths.float().mean().item(),
        # Degenerate completions, counted: cut at max_new_tokens; no text at all; nothing but EOS.
        "train/frac_truncated": generated.truncated.float().mean().item(),
        "train/frac_empty": sum(not text.strip() for text in generated.completions) / len(generated.completions),
        "train/frac_eos_only": ((lengths == 1) & ~generated.truncated).float().mean().item(),
        "train/entropy": masked_mean(entropy, kept_mask).item(),
        "train/surprisal": masked_mean(-old_logprobs, kept_mask).item(),
        "time/generate_s": times[0], "time/score_s": times[1], "time/update_s": times[2],
        "train/generated_tokens_per_s": lengths.sum().item() / max(times[0], 1e-9),
        # tokens forwarded and backwarded with grad, × μ (skipped rows not counted; 0 when nothing was learnt)
        "train/trained_tokens_per_s": stats.get("trained_tokens", 0.0) / max(times[2], 1e-9),
    }
    metrics |= {f"train/{k}": v for k, v in stats.items()}
    for name, values in scored.per_reward.items():
        valid = values[~torch.isnan(values)]
        metrics[f"reward/{name}"] = valid.mean().item() if len(valid) else math.nan
    metrics |= {f"reward/{name}_none_frac": v for name, v in none_fraction(scored.per_reward).items()}
    metrics |= {f"reward/{name}_errors": float(n) for name, n in scored.errors.items()}  # this rank's
    metrics |= {f"reward/{name}_timeouts": float(n) for name, n in scored.timeouts.items()}
    return metrics


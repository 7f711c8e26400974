"""Group-relative advantages (GRPO) from per-completion rewards.

Completions arrive grouped: rows ``g*G .. g*G+G-1`` are the G samples of prompt g.

Example (G=2, scale="group", eps=0):
    rewards [1, 0, 1, 1] -> group means [0.5, 1] -> advantages [0.7071, -0.7071, 0, 0]
    (unbiased std of [1, 0] is 0.7071; the all-equal group gets 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from stare_lit.errors import check

AdvantageScale = Literal["group", "none", "batch"]


@dataclass(frozen=True)
class AdvantageSettings:
    """How rewards become advantages (``model.advantages`` in YAML; see :func:`group_advantages`).

    Args:
        scale: "group" (GRPO), "none" (Dr. GRPO) or "batch" std scaling.
        eps: added to the std.
        dynamic_sampling: drop groups whose rewards are all equal from the loss (DAPO); they carry
            no policy gradient but would otherwise dilute token-mean.
    """

    scale: AdvantageScale = "group"
    eps: float = 1e-6
    dynamic_sampling: bool = False

    def __post_init__(self) -> None:
        number = isinstance(self.eps, (int, float)) and not isinstance(self.eps, bool)
        check(number and math.isfinite(self.eps) and self.eps >= 0,
              f"model.advantages.eps must be >= 0, got {self.eps}")


def group_advantages(
    rewards: Tensor, group_size: int, scale: AdvantageScale = "group", eps: float = 1e-6
) -> Tensor:
    """Â_i = (r_i − mean_g r) / (std_g r + eps), one value per completion.

    Args:
        rewards: (N,) rewards, N = num_prompts * group_size. NaN marks a completion no reward
            applied to: it is left out of its group's statistics and gets advantage 0.
        group_size: G, samples per prompt (>= 2).
        scale: "group" divides by the group's std (GRPO); "none" keeps r − mean (Dr. GRPO,
            arXiv 2503.20783); "batch" divides by the std of all the batch's rewards (group mean,
            batch std: TRL's ``scale_rewards="batch"``).
        eps: added to the std so a near-constant group does not explode.

    Returns:
        (N,) float32 advantages. Std is the unbiased one (torch.std, as TRL and verl use). A group
        whose valid rewards are all equal gets exactly 0.
    """
    check(group_size >= 2, f"group_size must be >= 2 to compare samples, got {group_size}")
    check(rewards.numel() % group_size == 0,
          f"{rewards.numel()} rewards do not split into groups of {group_size}")
    r = rewards.detach().float().view(-1, group_size)  # (P, G)
    valid = ~torch.isnan(r)  # (P, G)
    n = valid.sum(-1, keepdim=True)  # (P, 1)
    r0 = torch.where(valid, r, torch.zeros_like(r))
    mean = r0.sum(-1, keepdim=True) / n.clamp_min(1)  # (P, 1)
    centred = torch.where(valid, r - mean, torch.zeros_like(r))  # (P, G)
    if scale == "group":
        var = centred.pow(2).sum(-1, keepdim=True) / (n - 1).clamp_min(1)
        adv = centred / (var.sqrt() + eps)
    elif scale == "batch":
        std = r[valid].std() if valid.sum() > 1 else r.new_zeros(())
        adv = centred / (std + eps)
    elif scale == "none":
        adv = centred
    else:
        raise ValueError(f"scale must be 'group', 'none' or 'batch', got {scale!r}")
    # Exactly zero for all-equal groups (centred is 0 there already; this removes -0.0 and
    # rounding noise) and for groups with a single valid sample.
    flat = equal_groups(rewards, group_size).unsqueeze(-1) | (n < 2)
    return torch.where(flat, torch.zeros_like(adv), adv).view(-1)


def equal_groups(rewards: Tensor, group_size: int) -> Tensor:
    """(P,) bool: True for groups whose valid rewards are all equal (no learning signal)."""
    r = rewards.detach().float().view(-1, group_size)  # (P, G)
    valid = ~torch.isnan(r)
    hi = torch.where(valid, r, torch.full_like(r, -torch.inf)).amax(-1)
    lo = torch.where(valid, r, torch.full_like(r, torch.inf)).amin(-1)
    return (hi == lo) | (valid.sum(-1) == 0)

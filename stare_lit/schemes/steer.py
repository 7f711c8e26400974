"""STEER (arXiv 2510.10150): damp the tokens predicted to move entropy most, either way."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from stare_lit.ops.distributed import gather_valid
from stare_lit.errors import check

from stare_lit.schemes.base import TokenBatch, TokenWeighting

def steer_omega(logprobs: Tensor, old_logprobs: Tensor, entropy: Tensor, advantages: Tensor) -> Tensor:
    """STEER's predicted per-token entropy change Ω (arXiv 2510.10150), non-finite → 0.

    Ω = (Â / π_old(o)) · x(1−x) · (log x + H),  x = π_θ(o) clamped to [1e-8, 1−1e-8],
    π_old clamped to [1e-8, 1], H the entropy of π_old at that position. All (B, T), detached.
    """
    x = logprobs.detach().exp().clamp(1e-8, 1 - 1e-8)
    old_p = old_logprobs.detach().exp().clamp(1e-8, 1.0)
    omega = advantages / old_p * x * (1 - x) * (x.log() + entropy.detach())
    return torch.where(torch.isfinite(omega), omega, torch.zeros_like(omega))


def steer_token_weights(
    logprobs: Tensor,
    old_logprobs: Tensor,
    entropy: Tensor,
    advantages: Tensor,
    mask: Tensor,
    mapping: Literal["exp", "linear"] = "exp",
    w_min: float = 0.8,
    w_max: float = 1.0,
) -> Tensor:
    """STEER weights: damp the tokens predicted to move entropy most, either way.

    exp:    k = −ln(w_min) / max(max|Ω|, 0.02),  ω = clamp(exp(−k|Ω|), w_min, 1)   (w_max unused)
    linear: ω = w_max − (|Ω| − min|Ω|)(w_max − w_min)/(max|Ω| − min|Ω|), clamped to [w_min, w_max];
            all-equal |Ω| → (w_min + w_max)/2.  The paper's linear range is [0.8, 1.2].
    min/max run over the valid tokens of all ranks. Returns (B, T) float32 (1 off the mask).
    """
    valid = mask.bool()
    size = steer_omega(logprobs, old_logprobs, entropy, advantages).abs().float()  # (B, T)
    pooled = gather_valid(size, valid)
    weights = torch.ones_like(size)
    if pooled.numel() == 0:
        return weights
    lo, hi = pooled.min(), pooled.max()
    if mapping == "exp":
        k = -math.log(w_min) / torch.clamp(hi, min=0.02)
        mapped = torch.exp(-k * size).clamp(w_min, 1.0)
    elif mapping == "linear":
        if hi > lo:
            mapped = (w_max - (size - lo) * (w_max - w_min) / (hi - lo)).clamp(w_min, w_max)
        else:
            mapped = torch.full_like(size, (w_min + w_max) / 2)
    else:
        raise ValueError(f"mapping must be 'exp' or 'linear', got {mapping!r}")
    return torch.where(valid, mapped, weights)


class STEER(TokenWeighting):
    """STEER: stabilise token-level entropy change by reweighting (arXiv 2510.10150).

    Each token's first-order entropy change Ω is predicted from its probability, advantage and
    the position's entropy; tokens with large |Ω| — in either direction — are damped. Follows the
    official code (github.com/zz-haooo/STEER, compute_token_weights), with H from π_old as in the
    paper's formula (equal to the current entropy in value when μ = 1).

    Args:
        mapping: "exp" (the paper's λ mapping) or "linear".
        w_min: smallest weight (λ_min = 0.8 in the paper; the linear range's lower end).
        w_max: largest weight of the linear mapping (1.2 in the paper); exp caps at 1.
    """

    zero_advantage_inert = True  # Ω = Â·(...) = 0 there, whatever π_θ is

    def __init__(self, mapping: Literal["exp", "linear"] = "exp", w_min: float = 0.8, w_max: float = 1.0) -> None:
        key = "model.scheme.init_args"
        check(mapping in ("exp", "linear"), f"{key}.mapping must be 'exp' or 'linear', got {mapping!r}")
        check(0 < w_min <= 1, f"{key}.w_min must be in (0, 1], got {w_min}")
        check(w_max >= w_min, f"{key}.w_max must be >= w_min, got {w_max} < {w_min}")
        self.mapping, self.w_min, self.w_max = mapping, w_min, w_max
        self._stats: dict[str, float] = {}

    def weights(self, tokens: TokenBatch) -> Tensor:
        entropy = tokens.old_entropy if tokens.old_entropy is not None else tokens.entropy
        check(entropy is not None, "STEER needs the entropy of π_old; the module did not provide it")
        weights = steer_token_weights(tokens.logprobs, tokens.old_logprobs, entropy, tokens.advantages,
                                      tokens.mask, self.mapping, self.w_min, self.w_max)
        valid = weights[tokens.mask.bool()]
        if valid.numel():
            self._stats = {"mean_weight": valid.mean().item(), "min_weight": valid.min().item(),
                           "damped_ratio": (valid < 1.0).float().mean().item()}
        return weights

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)

"""Token-weighting schemes: a per-token weight ω that multiplies the clipped surrogate.

A scheme is picked in YAML by class_path (``stare_lit.weighting.STARE``). The module calls
``update(batch_entropy)`` once per training step, before any update, with the world-level
token-mean entropy of π_old, then ``weights(tokens)`` for every loss computation. Anything that
changes gradients — STARE's closed-loop gate and its adaptive W/M — lives here, and the module
checkpoints it through ``state_dict()`` / ``load_state_dict()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from stare_lit.errors import check


@dataclass
class TokenBatch:
    """What a scheme may look at for one loss computation. All (B, T)."""

    logprobs: Tensor  # log π_θ of the sampled tokens (may carry grad: detach before use)
    old_logprobs: Tensor  # log π_old
    advantages: Tensor  # Â broadcast over each completion's tokens
    mask: Tensor  # bool, True on completion tokens
    entropy: Tensor | None = None  # entropy of π_θ per position (detached), if computed


class TokenWeighting:
    """Base scheme: ω ≡ 1 (plain GRPO). Subclass and override ``weights``."""

    def update(self, batch_entropy: float) -> None:
        """Called once per training step with the token-mean entropy of π_old over the batch."""

    def weights(self, tokens: TokenBatch) -> Tensor | None:
        """(B, T) detached weights, or None for ω ≡ 1 (the loss then skips the multiply)."""
        return None

    def metrics(self) -> dict[str, float]:
        """Scalars to log after the last ``weights`` call."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GRPO(TokenWeighting):
    """Uniform credit: every completion token gets its sequence's advantage (ω ≡ 1)."""


def stare_selection(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, top_ratio: float, negative: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STARE's entropy-critical sets: top-P surprisal tokens inside T+ (and T−).

    Returns (L+, L−, T+, T−) as (B, T) bool masks; L− is empty unless ``negative``.
    k = ceil(P·|T|) computed as int(P·|T| + 0.999999), clamped to [1, |T|], as in the official
    code; ties are broken by torch.topk.
    """
    valid = mask.bool()
    t_pos = valid & (advantages > 0)
    t_neg = valid & (advantages < 0)
    surprisal = -logprobs.detach()  # (B, T)

    def top(candidates: Tensor) -> Tensor:
        chosen = torch.zeros_like(candidates)
        n = int(candidates.sum())
        if n == 0 or top_ratio <= 0.0:
            return chosen
        k = min(max(1, int(n * top_ratio + 0.999999)), n)
        idx = candidates.reshape(-1).nonzero().squeeze(-1)  # (n,) flat positions
        best = torch.topk(surprisal.reshape(-1)[idx], k).indices
        chosen.view(-1)[idx[best]] = True
        return chosen

    l_neg = top(t_neg) if negative else torch.zeros_like(valid)
    return top(t_pos), l_neg, t_pos, t_neg


def stare_token_weights(
    logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    top_ratio: float = 0.1,
    w: float = 1.1,
    m: float = 0.9,
    variant: Literal["O1", "C2"] = "O1",
    gate_on: bool = True,
) -> Tensor:
    """STARE weights ω (arXiv 2606.19236, §4): W on L+, M on L− (variant C2 only), 1 elsewhere.

    Args:
        logprobs: (B, T) log π_θ of the sampled tokens; surprisal s = −logprobs (detached).
        advantages: (B, T) per-token advantages; Â = 0 tokens are never reweighted.
        mask: (B, T) 1 on completion tokens.
        top_ratio: P, the share of T+ (and T−) with the highest surprisal that is reweighted.
        w: W, weight of L+ (> 1 amplifies the entropy-raising positive tokens).
        m: M, weight of L− (< 1 damps the entropy-lowering negative tokens; C2 only).
        variant: "O1" one-sided (W only) or "C2" dual-sided (W and M).
        gate_on: the closed-loop gate; off gives ω ≡ 1.

    Returns:
        (B, T) float32 weights, detached.
    """
    weights = torch.ones_like(advantages, dtype=torch.float32)
    if not gate_on:
        return weights
    l_pos, l_neg, _, _ = stare_selection(logprobs, advantages, mask, top_ratio, negative=variant == "C2")
    weights[l_pos] = w
    weights[l_neg] = m
    return weights


class STARE(TokenWeighting):
    """STARE: surprisal-guided token-level advantage reweighting with a target-entropy gate.

    Each step the gate opens when the batch-mean entropy of π_old falls below ``target_entropy``;
    while open, the top ``top_ratio`` highest-surprisal tokens with positive advantage get weight
    ``w`` (their update raises entropy) and, in variant C2, the top ones with negative advantage
    get ``m`` (their update lowers entropy). Selection is per loss computation (micro-batch), as
    in the official code (github.com/hp-luo/STARE, compute_stare_token_weights).

    Args:
        target_entropy: H_tgt; the gate is on while the batch entropy is below it.
        top_ratio: P in [0, 1].
        w: W > 0 (paper: 1.1 at 7B, 1.05 at 14B/32B).
        m: M > 0 (paper: 0.9 at 7B, 0.95 at 14B/32B); used by variant C2 only.
        variant: "O1" (W only, the paper's default) or "C2" (W and M).
        adaptive: move W and M each step by ``alpha`` towards more reweighting while the entropy
            is below target and less while above (paper §4.4; off by default).
        alpha: step of the adaptive schedule.
        w_max: upper bound of W under the adaptive schedule (lower bound 1).
        m_min: lower bound of M under the adaptive schedule (upper bound 1).
    """

    def __init__(
        self,
        target_entropy: float = 0.3,
        top_ratio: float = 0.1,
        w: float = 1.1,
        m: float = 0.9,
        variant: Literal["O1", "C2"] = "O1",
        adaptive: bool = False,
        alpha: float = 0.01,
        w_max: float = 1.5,
        m_min: float = 0.5,
    ) -> None:
        key = "model.scheme.init_args"
        check(0.0 <= top_ratio <= 1.0, f"{key}.top_ratio must be in [0, 1] (a share of tokens), got {top_ratio}")
        check(w > 0, f"{key}.w must be > 0 (W multiplies the loss of L+ tokens; the paper uses 1.1), got {w}")
        check(m > 0, f"{key}.m must be > 0 (M multiplies the loss of L- tokens; the paper uses 0.9), got {m}")
        check(variant in ("O1", "C2"), f"{key}.variant must be 'O1' or 'C2', got {variant!r}")
        check(target_entropy > 0, f"{key}.target_entropy must be > 0 (nats), got {target_entropy}")
        check(alpha >= 0, f"{key}.alpha must be >= 0, got {alpha}")
        check(w_max >= 1 and 0 < m_min <= 1, f"{key}: need w_max >= 1 and 0 < m_min <= 1, got {w_max}, {m_min}")
        self.target_entropy = target_entropy
        self.top_ratio = top_ratio
        self.variant = variant
        self.adaptive = adaptive
        self.alpha = alpha
        self.w_max = w_max
        self.m_min = m_min
        # Mutable state (checkpointed): the live weights, the gate, the entropy it last saw.
        self.w = w
        self.m = m
        self.gate_on = True
        self.entropy = math.nan
        self._stats: dict[str, float] = {}

    def update(self, batch_entropy: float) -> None:
        if not math.isfinite(batch_entropy):
            return  # as the official controller: a NaN/inf reading changes nothing
        self.entropy = float(batch_entropy)
        self.gate_on = batch_entropy < self.target_entropy
        if self.adaptive and self.alpha > 0:
            sign = math.copysign(1.0, self.target_entropy - batch_entropy) if batch_entropy != self.target_entropy else 0.0
            self.w = min(max(self.w + self.alpha * sign, 1.0), self.w_max)
            self.m = min(max(self.m - self.alpha * sign, self.m_min), 1.0)

    def weights(self, tokens: TokenBatch) -> Tensor:
        l_pos, l_neg, t_pos, t_neg = stare_selection(
            tokens.logprobs, tokens.advantages, tokens.mask, self.top_ratio, negative=self.variant == "C2")
        weights = torch.ones_like(tokens.advantages, dtype=torch.float32)
        if self.gate_on:
            weights[l_pos] = self.w
            weights[l_neg] = self.m
        n = tokens.mask.sum().clamp_min(1).item()
        self._stats = {
            "gate_on": float(self.gate_on),
            "controller_entropy": self.entropy,
            "target_entropy": self.target_entropy,
            "top_ratio": self.top_ratio,
            "positive_candidate_ratio": t_pos.sum().item() / n,
            "negative_candidate_ratio": t_neg.sum().item() / n,
            "positive_reweight_ratio": l_pos.sum().item() / n,
            "negative_reweight_ratio": l_neg.sum().item() / n,
            "mean_weight": weights[tokens.mask.bool()].mean().item() if tokens.mask.any() else 1.0,
            "w": self.w,
            "m": self.m,
        }
        return weights

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)

    def state_dict(self) -> dict:
        return {"w": self.w, "m": self.m, "gate_on": self.gate_on, "entropy": self.entropy}

    def load_state_dict(self, state: dict) -> None:
        self.w, self.m = float(state["w"]), float(state["m"])
        self.gate_on, self.entropy = bool(state["gate_on"]), float(state["entropy"])

"""The clipped policy-gradient loss of GRPO / DAPO, with a per-token weight ω.

    ℓ_t = −min(ρ_t Â_t, clip(ρ_t, 1−ε_low, 1+ε_high) Â_t),   ρ_t = exp(log π_θ − log π_old)
    (dual clip, Â_t < 0:  ℓ_t = min(ℓ_t, −c Â_t))
    L   = agg_t( ω_t ℓ_t + β k3_t + e_t ),   e_t: a scheme's extra per-token loss (optional)   k3_t = exp(log π_ref − log π_θ) − (log π_ref − log π_θ) − 1

ω comes from a token-weighting scheme (stare_lit.schemes) and is detached; with ω ≡ 1 (or None)
this is plain GRPO, bit for bit. The KL term is not reweighted (as in the STARE code).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from stare_lit.errors import check
from stare_lit.ops.distributed import masked_mean

Aggregation = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]


def aggregate(per_token: Tensor, mask: Tensor, agg: Aggregation = "token-mean", norm: float | None = None) -> Tensor:
    """Reduce a (B, T) per-token loss to a scalar over the masked tokens.

    token-mean: Σ ℓM / ΣM over the whole batch (DAPO; every token counts the same).
    seq-mean-token-mean: mean over sequences of each sequence's token mean.
    seq-mean-token-sum-norm: mean over sequences of Σ_t ℓM / norm (Dr. GRPO; norm defaults to T,
        the padded completion length, a constant that does not favour short answers).
    """
    m = mask.to(per_token.dtype)  # (B, T)
    if agg == "token-mean":
        return (per_token * m).sum() / m.sum().clamp_min(1.0)
    if agg == "seq-mean-token-mean":
        seq = (per_token * m).sum(-1) / m.sum(-1).clamp_min(1.0)  # (B,)
        return seq.mean()
    if agg == "seq-mean-token-sum-norm":
        seq = (per_token * m).sum(-1) / (norm if norm is not None else per_token.shape[-1])  # (B,)
        return seq.mean()
    raise ValueError(f"agg must be one of token-mean, seq-mean-token-mean, seq-mean-token-sum-norm; got {agg!r}")


def policy_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    weights: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.28,
    dual_clip: float | None = None,
    agg: Aggregation = "token-mean",
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    norm: float | None = None,
    extra: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate loss and its diagnostics.

    Args:
        logprobs: (B, T) log π_θ of the sampled tokens (carries the gradient).
        old_logprobs: (B, T) log π_old, from the policy that sampled.
        advantages: (B, T) per-token advantages (the completion's Â broadcast over its tokens).
        mask: (B, T) 1 on completion tokens.
        weights: (B, T) token weights ω ≥ 0 from a weighting scheme, or None for ω ≡ 1.
        clip_low, clip_high: ε_low, ε_high of the ratio clip (clip-higher when ε_high > ε_low).
        dual_clip: c > 1 of dual-clip PPO for Â < 0, or None.
        agg: aggregation over tokens (see ``aggregate``).
        ref_logprobs: (B, T) log π_ref for the k3 KL term; needed when beta > 0.
        beta: KL coefficient.
        norm: constant of seq-mean-token-sum-norm (defaults to T).
        extra: (B, T) differentiable per-token term added before aggregation (a scheme's extra
            loss: KL-Cov's penalty, an entropy bonus), or None.

    Returns:
        (loss, stats): stats are detached scalars — clip fractions, KL, mean ratio — over this rank's
        tokens (``masked_mean(world=False)``): the loss holds no collective, and its stats are logged
        as each rank sees them.
    """
    m = mask.to(logprobs.dtype)
    log_ratio = (logprobs - old_logprobs).clamp(-20.0, 20.0)  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # = −min(ρÂ, clip(ρ)Â)
    stats = {"clip_frac": masked_mean((clipped > unclipped).float(), m, world=False)}
    if dual_clip is not None:
        bound = -advantages * dual_clip
        dual = torch.minimum(per_token, bound)
        stats["dual_clip_frac"] = masked_mean(((per_token > bound) & (advantages < 0)).float(), m, world=False)
        per_token = torch.where(advantages < 0, dual, per_token)
    if weights is not None:
        per_token = per_token * weights.detach()
    if beta > 0.0:
        if ref_logprobs is None:
            raise ValueError("beta > 0 needs ref_logprobs")
        d = ref_logprobs - logprobs
        kl = torch.exp(d) - d - 1.0  # k3, ≥ 0
        per_token = per_token + beta * kl
        stats["kl"] = masked_mean(kl.detach(), m, world=False)
    if extra is not None:
        per_token = per_token + extra
    loss = aggregate(per_token, mask, agg, norm)
    stats["ratio_mean"] = masked_mean(ratio.detach(), m, world=False)
    stats["approx_kl_old"] = masked_mean(-log_ratio.detach(), m, world=False)
    return loss, stats


@dataclass
class LossSettings:
    """The clipped surrogate's settings (``model.loss`` in YAML; see :func:`policy_loss`).

    Args:
        clip_low: ε_low of the ratio clip.
        clip_high: ε_high ("clip-higher", DAPO); equal to clip_low for symmetric PPO clipping.
        dual_clip: c > 1 of dual-clip PPO for negative advantages (STARE recipe: 10), or None.
        agg: token-mean (DAPO, default), seq-mean-token-mean, or seq-mean-token-sum-norm (Dr. GRPO,
            normalised by sampling.max_new_tokens).
        beta: coefficient of the k3 KL to a frozen reference model; 0 builds no reference model.
    """

    clip_low: float = 0.2
    clip_high: float = 0.28
    dual_clip: float | None = None
    agg: Aggregation = "token-mean"
    beta: float = 0.0

    def __post_init__(self) -> None:
        check(0 <= self.clip_low < 1 and self.clip_high >= 0,
              f"model.loss: need 0 <= clip_low < 1 and clip_high >= 0, got {self.clip_low}, {self.clip_high}")
        check(self.dual_clip is None or self.dual_clip > 1,
              f"model.loss.dual_clip must be > 1 (verl uses 3, STARE 10) or null, got {self.dual_clip}")
        check(self.beta >= 0, f"model.loss.beta must be >= 0, got {self.beta}")

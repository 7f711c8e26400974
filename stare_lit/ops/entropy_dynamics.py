"""First-order entropy dynamics of a policy-gradient step: which tokens raise or lower the entropy.

For a softmax π = softmax(z) over the vocabulary, with surprisal s_k = −log π_k and entropy
H = −Σ_k π_k log π_k (methods.md, "Why entropy collapses"; Cui et al. arXiv 2505.22617)::

    ∂H/∂z_k = −π_k (log π_k + H) = π_k (s_k − H)

A policy-gradient step on the sampled token a with advantage A and token weight ω moves z_a by
η·A·ω, so to first order the entropy of that position changes by::

    ΔH_t ≈ η · A · ω · π_a · (s_a − H)

Four quadrants follow from the signs: A>0 & s<H lowers H (confident tokens of good answers: the
majority, drives collapse), A>0 & s>H raises H, A<0 & s<H raises H, A<0 & s>H lowers H. A tie
s == H leaves H unchanged and is counted with the low-surprisal side.

Under the full softmax gradient, ∇_z log π_a = e_a − π, every logit moves and the change gains a
position-wide baseline term −η·A·ω·Σ_k π_k² (s_k − H), which needs the whole distribution; the
per-token statistics a training step keeps (H and s of the sampled token) give the z_a term only,
which is what ``predicted_entropy_change`` returns. ``softmax_entropy_gradient`` gives the exact
∂H/∂z when the logits are at hand.

Pure tensor functions: no Lightning, no collectives; callers reduce over tokens and ranks.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["QUADRANTS", "predicted_entropy_change", "quadrant_masks", "softmax_entropy_gradient"]

# Names of the four quadrants, in the order ``quadrant_masks`` returns them.
QUADRANTS = (
    "pos_adv_high_surprisal",  # A > 0, s > H: raises H
    "pos_adv_low_surprisal",  # A > 0, s <= H: lowers H (drives collapse)
    "neg_adv_high_surprisal",  # A < 0, s > H: lowers H
    "neg_adv_low_surprisal",  # A < 0, s <= H: raises H
)


def predicted_entropy_change(
    entropy: Tensor,
    surprisal: Tensor,
    advantages: Tensor,
    weights: Tensor | None = None,
    mask: Tensor | None = None,
) -> Tensor:
    """Per-token first-order entropy change of a unit policy-gradient step: A · ω · π(a) · (s − H).

    π(a) = exp(−s) is the probability of the sampled token. Multiply by the step size η for the
    change itself; with a shared network the effective η is unknown, so callers compare signs,
    shares and trends, not absolute values.

    Args:
        entropy: (B, T) H of the whole next-token distribution at each position.
        surprisal: (B, T) s = −log π(a) of the sampled token.
        advantages: (B, T) per-token advantage A.
        weights: (B, T) token weights ω of the weighting scheme, or None for ω ≡ 1.
        mask: (B, T) bool, True on tokens to count; None counts all. Masked-out tokens get exactly 0
            whatever values (even inf or NaN) they hold.

    Returns:
        (B, T) float32 predicted ΔH per token (per unit step size).

    Example: H = 1.0, s = 0.5 (π(a) = 0.607), A = +1, ω = 1.1 -> 1.1 · 0.607 · (−0.5) = −0.334.
    """
    h = entropy.detach().float()  # (B, T)
    s = surprisal.detach().float()  # (B, T)
    a = advantages.detach().float()  # (B, T)
    dh = a * torch.exp(-s) * (s - h)  # (B, T)
    if weights is not None:
        dh = dh * weights.detach().float()
    if mask is not None:
        dh = torch.where(mask.bool(), dh, torch.zeros((), dtype=dh.dtype, device=dh.device))
    return dh


def quadrant_masks(entropy: Tensor, surprisal: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Which quadrant each valid token is in, as a (4, B, T) bool tensor in ``QUADRANTS`` order.

    Tokens with A == 0 (and masked-out tokens) are in no quadrant. "High surprisal" is s > H of the
    same token; a tie counts as low.

    Args:
        entropy: (B, T) H per position.
        surprisal: (B, T) s of the sampled token.
        advantages: (B, T) A per token.
        mask: (B, T) bool, True on valid tokens.
    """
    valid = mask.bool()  # (B, T)
    high = surprisal > entropy  # (B, T)
    pos, neg = valid & (advantages > 0), valid & (advantages < 0)  # (B, T) each
    return torch.stack([pos & high, pos & ~high, neg & high, neg & ~high])  # (4, B, T)


def softmax_entropy_gradient(logits: Tensor) -> Tensor:
    """Exact ∂H/∂z of H(softmax(z)) = π_k (s_k − H), over the last dimension.

    Args:
        logits: (..., V) any float dtype.

    Returns:
        (..., V) float32 gradient of the entropy with respect to each logit. It sums to 0 over V
        (adding a constant to every logit leaves π unchanged).
    """
    log_p = torch.log_softmax(logits.float(), dim=-1)  # (..., V)
    p = log_p.exp()  # (..., V)
    h = -(p * log_p).sum(-1, keepdim=True)  # (..., 1)
    return p * (-log_p - h)  # (..., V)

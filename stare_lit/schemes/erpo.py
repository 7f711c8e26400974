"""ERPO (arXiv 2603.28204): entropy-aware token advantages, as a token-weighting scheme.

There is no official code. What follows the paper's text: the three components and their roles —
entropy-aware gating of tokens, bucket-based implicit normalisation of the per-token "implicit
progress", and result-anchored synthesis into a token-level advantage. What is a reconstruction
(from the abstract and a public reimplementation; every constant is configurable):

    gate      W_t = σ(γ·(H_t − μ_H,G)/σ_H,G + δ)           entropy z-scored over the group's tokens
    progress  s_t = β·(log π_θ − log π_ref)                 detached; π_ref is the frozen reference
    bucket    k   = ⌊K·t/|o_i|⌋,  s̃_t = (s_t − μ_k,G)/σ_k,G + δ_s   stats pooled over the group, same bucket
    synthesis Ψ_t = W_t·sgn(Â_i)·s̃_t,   Â_t = Â_i + η·Ψ_t

γ=5 and η=0.2 come from the reimplementation and are unverified against the paper.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stare_lit.errors import check
from stare_lit.schemes.base import TokenBatch, TokenWeighting

KEY = "model.scheme.init_args"


def _group_view(x: Tensor, group_size: int) -> Tensor:
    return x.reshape(-1, group_size * x.shape[-1])  # (P, G*T): a prompt's group as one row


def erpo_entropy_gate(entropy: Tensor, mask: Tensor, group_size: int, gamma: float = 5.0, delta: float = 0.0) -> Tensor:
    """W = σ(γ·z + δ), z = entropy z-scored over the valid tokens of its group. (B, T) → (B, T)."""
    h, m = _group_view(entropy.detach().float(), group_size), _group_view(mask.float(), group_size)
    n = m.sum(-1, keepdim=True).clamp_min(1)
    mean = (h * m).sum(-1, keepdim=True) / n
    std = (((h - mean) ** 2 * m).sum(-1, keepdim=True) / n).sqrt()
    z = (h - mean) / (std + 1e-6)
    return torch.sigmoid(gamma * z + delta).reshape(entropy.shape) * mask


def relative_buckets(mask: Tensor, num_buckets: int) -> Tensor:
    """Bucket k = ⌊K·t/|o|⌋ ∈ [0, K) of each token by its relative position in its completion. (B, T) long."""
    t = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    length = mask.long().sum(-1, keepdim=True).clamp_min(1)
    return (t * num_buckets // length).clamp(max=num_buckets - 1)


def erpo_bucket_normalise(progress: Tensor, mask: Tensor, group_size: int, num_buckets: int = 4,
                          delta: float = 0.0) -> Tensor:
    """s̃ = (s − μ_k,G)/σ_k,G + δ with statistics over the group's valid tokens in the same bucket. (B, T)."""
    buckets = relative_buckets(mask, num_buckets)
    s = _group_view(progress.detach().float(), group_size)
    m = _group_view(mask.float(), group_size)
    onehot = torch.nn.functional.one_hot(_group_view(buckets, group_size), num_buckets).float() * m[..., None]  # (P, GT, K)
    n = onehot.sum(1).clamp_min(1)  # (P, K)
    mean = torch.einsum("pnk,pn->pk", onehot, s) / n
    var = torch.einsum("pnk,pn->pk", onehot, s**2) / n - mean**2
    std = var.clamp_min(0).sqrt()
    mean_t = torch.einsum("pnk,pk->pn", onehot, mean)  # each token's bucket mean (0 off the mask)
    std_t = torch.einsum("pnk,pk->pn", onehot, std)
    return (((s - mean_t) / (std_t + 1e-6) + delta) * m).reshape(progress.shape)


def erpo_token_advantages(advantages: Tensor, gate: Tensor, normalised: Tensor, eta: float = 0.2) -> Tensor:
    """Â_t = Â + η·W_t·sgn(Â)·s̃_t; tokens with Â = 0 stay at 0. All (B, T)."""
    return advantages + eta * gate * torch.sign(advantages) * normalised


class ERPO(TokenWeighting):
    """ERPO: entropy-aware gating + bucket-normalised implicit progress → token-level advantages.

    See the module docstring for which parts follow the paper and which are a reconstruction.
    Needs a frozen reference model for the implicit progress (the module builds one for it).

    Args:
        gamma: γ, sharpness of the entropy gate.
        delta: δ, offset inside the gate's sigmoid.
        beta: β of the implicit progress β·(log π_θ − log π_ref).
        num_buckets: K relative-position windows.
        bucket_delta: δ added after bucket normalisation.
        eta: η, weight of the synthesised token term.
    """

    needs_reference = True
    needs_whole_groups = True

    def __init__(self, gamma: float = 5.0, delta: float = 0.0, beta: float = 0.1, num_buckets: int = 4,
                 bucket_delta: float = 0.0, eta: float = 0.2) -> None:
        check(gamma >= 0, f"{KEY}.gamma must be >= 0, got {gamma}")
        check(beta > 0, f"{KEY}.beta must be > 0, got {beta}")
        check(num_buckets >= 1, f"{KEY}.num_buckets must be >= 1, got {num_buckets}")
        check(eta >= 0, f"{KEY}.eta must be >= 0, got {eta}")
        self.gamma, self.delta, self.beta = gamma, delta, beta
        self.num_buckets, self.bucket_delta, self.eta = num_buckets, bucket_delta, eta
        self._stats: dict[str, float] = {}

    def advantages(self, tokens: TokenBatch) -> Tensor:
        check(tokens.ref_logprobs is not None, "ERPO needs log π_ref; the module did not build a reference model")
        entropy = tokens.old_entropy if tokens.old_entropy is not None else tokens.entropy
        mask = tokens.mask.bool()
        gate = erpo_entropy_gate(entropy, mask, tokens.group_size, self.gamma, self.delta)
        progress = self.beta * (tokens.logprobs.detach() - tokens.ref_logprobs)
        normalised = erpo_bucket_normalise(progress, mask, tokens.group_size, self.num_buckets, self.bucket_delta)
        out = erpo_token_advantages(tokens.advantages, gate, normalised, self.eta)
        if mask.any():
            self._stats = {"mean_gate": gate[mask].mean().item(),
                           "mean_abs_token_term": (out - tokens.advantages)[mask].abs().mean().item()}
        return out

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)

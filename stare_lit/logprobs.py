"""Per-token log-probabilities and entropy from logits, one pass, in chunks.

log π(a) of the sampled token and the entropy H = −Σ_v π(v) log π(v) of the whole next-token
distribution both need a log-softmax over the vocabulary. In fp32 at a 150k vocabulary that is
0.6 MB per token: the (B, T, V) fp32 tensor for a 64×1024 batch would be 40 GB. We therefore walk
the tokens in chunks of about ``chunk_size`` positions, and the backward pass is written by hand
(``_LogprobEntropy``) from what the forward keeps per position — logsumexp and H, two floats — so
no (chunk, V) fp32 intermediate outlives its chunk and backward recomputes only π, one chunk at a
time. The gradients:

    ∂ log π(a) / ∂z_k = 1[k = a] − π_k          ∂H / ∂z_k = −π_k (log π_k + H)        z = logits / τ

The forward is one ``log_softmax`` per chunk with H = −Σ π log π. Activation checkpointing of each
chunk, the earlier way, re-ran the chunk's forward and then autograd's backward through it:
forward+backward took 1.9× (32k vocabulary) / 1.3× (150k) the time of the unchunked pass at 0.7×
its memory; this takes 0.74× / 0.51× of its time at 0.40× its memory (``benchmarks/memory.py``).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor


def _blocks(B: int, T: int, chunk_size: int) -> Iterator[tuple[slice, slice]]:
    """(batch rows, positions) blocks of at most ``max(chunk_size, 1)`` positions, in order.

    Blocks index the (B, T, V) logits directly, so a non-contiguous view (the model's logits with
    the last position sliced off) is never flattened into a full-size copy.
    """
    chunk_size = max(chunk_size, 1)
    if T >= chunk_size:
        for b in range(B):
            for t in range(0, T, chunk_size):
                yield slice(b, b + 1), slice(t, min(t + chunk_size, T))
    else:
        rows = chunk_size // T
        for b in range(0, B, rows):
            yield slice(b, min(b + rows, B)), slice(0, T)


class _LogprobEntropy(torch.autograd.Function):
    """(B, T, V) logits, (B, T) ids → log π(ids), H — both (B, T) float32 — chunk by chunk."""

    @staticmethod
    def forward(ctx, logits: Tensor, ids: Tensor, temperature: float, chunk_size: int):
        B, T, _ = logits.shape
        lp = logits.new_empty((B, T), dtype=torch.float32)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        for b, t in _blocks(B, T, chunk_size):
            idx = ids[b, t].unsqueeze(-1)  # (b, t, 1)
            z = logits[b, t].float() / temperature  # (b, t, V), a new fp32 tensor
            logp = torch.log_softmax(z, dim=-1)  # (b, t, V)
            lp_a = logp.gather(-1, idx)
            lse[b, t] = (z.gather(-1, idx) - lp_a).squeeze(-1)  # log Σ exp z = z_a − log π(a), for backward
            del z
            lp[b, t] = lp_a.squeeze(-1)
            ent[b, t] = -logp.exp().mul_(logp).sum(-1)  # H = −Σ π log π
            del logp  # before the next chunk allocates: one chunk's buffers at a time
        ctx.save_for_backward(logits, ids, lse, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp: Tensor, g_ent: Tensor):
        logits, ids, lse, ent = ctx.saved_tensors
        tau = ctx.temperature
        grad = torch.empty_like(logits)
        B, T, _ = logits.shape
        for b, t in _blocks(B, T, ctx.chunk_size):
            logp = (logits[b, t].float() / tau).sub_(lse[b, t].unsqueeze(-1))  # log π, (b, t, V)
            p = logp.exp()
            c_lp = (g_lp[b, t] / tau).unsqueeze(-1)  # (b, t, 1); ∂z/∂logits = 1/τ folded in
            c_ent = (g_ent[b, t] / -tau).unsqueeze(-1)
            # (g_lp·(onehot − π) − g_H·π (log π + H)) / τ
            gz = logp.add_(ent[b, t].unsqueeze(-1)).mul_(c_ent).sub_(c_lp).mul_(p)
            gz.scatter_add_(-1, ids[b, t].unsqueeze(-1), c_lp)
            grad[b, t] = gz  # cast to the logits' dtype
            del logp, p, gz
        return grad, None, None, None


def token_logprobs_and_entropy(
    logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """log π(token_ids) and the entropy of π, with π = softmax(logits / temperature).

    Args:
        logits: (B, T, V) any float dtype, contiguous or not; row t predicts token_ids[:, t].
        token_ids: (B, T) long.
        temperature: the sampling temperature (the policy that sampled is softmax(z / τ)).
        chunk_size: token positions processed at once; bounds the fp32 working memory to a few
            chunk_size × V floats, forward and backward.

    Returns:
        logprobs (B, T) float32 and entropy (B, T) float32, both differentiable w.r.t. logits.
    """
    return _LogprobEntropy.apply(logits, token_ids, float(temperature), int(chunk_size))

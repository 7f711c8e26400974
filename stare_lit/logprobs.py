"""Per-token log-probabilities and entropy from logits, one pass, in chunks.

log π(a) of the sampled token and the entropy H = −Σ_v π(v) log π(v) of the whole next-token
distribution both need a log-softmax over the vocabulary. In fp32 at a 150k vocabulary that is
0.6 MB per token: the (B, T, V) fp32 tensor for a 64×1024 batch would be 40 GB. We therefore walk
the flattened tokens in chunks of ``chunk_size`` rows; under autograd each chunk is wrapped in
activation checkpointing so its fp32 intermediates are recomputed in backward instead of kept.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint


def _logprob_entropy_rows(logits: Tensor, ids: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    z = logits.float() / temperature  # (n, V)
    lse = torch.logsumexp(z, dim=-1)  # (n,)
    logp_tok = z.gather(-1, ids.unsqueeze(-1)).squeeze(-1) - lse  # (n,)
    p = torch.softmax(z, dim=-1)  # (n, V)
    entropy = lse - (p * z).sum(-1)  # H = logsumexp(z) − E_p[z]
    return logp_tok, entropy


def token_logprobs_and_entropy(
    logits: Tensor, token_ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """log π(token_ids) and the entropy of π, with π = softmax(logits / temperature).

    Args:
        logits: (B, T, V) any float dtype; row t predicts token_ids[:, t].
        token_ids: (B, T) long.
        temperature: the sampling temperature (the policy that sampled is softmax(z / τ)).
        chunk_size: rows of B*T processed at once; bounds the fp32 working memory to
            chunk_size × V floats.

    Returns:
        logprobs (B, T) float32 and entropy (B, T) float32, both differentiable w.r.t. logits.
    """
    B, T, V = logits.shape
    flat_logits = logits.reshape(B * T, V)  # (N, V), a view
    flat_ids = token_ids.reshape(B * T)  # (N,)
    need_grad = torch.is_grad_enabled() and logits.requires_grad
    lps, ents = [], []
    for start in range(0, B * T, chunk_size):
        rows = slice(start, start + chunk_size)
        if need_grad:
            lp, ent = checkpoint(_logprob_entropy_rows, flat_logits[rows], flat_ids[rows], temperature,
                                 use_reentrant=False)
        else:
            lp, ent = _logprob_entropy_rows(flat_logits[rows], flat_ids[rows], temperature)
        lps.append(lp)
        ents.append(ent)
    return torch.cat(lps).view(B, T), torch.cat(ents).view(B, T)

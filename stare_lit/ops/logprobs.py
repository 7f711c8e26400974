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

The module does not hand this pass the logits: ``model_logprobs_and_entropy`` runs the model with
its LM head swapped for ``head_logprobs_and_entropy``, which takes the final hidden states and the
head's weight and computes each chunk's logits inside the chunk loop (backward recomputes them), so
no (B, T, V) tensor of any dtype exists in the update or the old pass.
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


# ---------------------------------------------------------------- from hidden states: no (B, T, V) tensor
def _head_logits(h: Tensor, weight: Tensor, bias: Tensor | None, temperature: float) -> Tensor:
    """z = (h Wᵀ + b) / τ of one block in float32, computed in the head's dtype as the model would. (b, t, V)"""
    z = h @ weight.T if bias is None else torch.addmm(bias, h.flatten(0, -2), weight.T).view(*h.shape[:-1], -1)
    return z.float().div_(temperature) if z.dtype != torch.float32 else z.div_(temperature)


class _HeadLogprobEntropy(torch.autograd.Function):
    """(B, T, H) hidden states, LM head (V, H) [+ (V,)] and (B, T) ids → log π(ids), H, both (B, T) fp32.

    The logits of one block of positions exist only while that block is worked on, forward and
    backward (which recomputes them from the hidden states: one matmul more than keeping them).
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, temperature: float,
                chunk_size: int):
        B, T, _ = hidden.shape
        lp = hidden.new_empty((B, T), dtype=torch.float32)
        ent = torch.empty_like(lp)
        lse = torch.empty_like(lp)
        for b, t in _blocks(B, T, chunk_size):
            idx = ids[b, t].unsqueeze(-1)  # (b, t, 1)
            z = _head_logits(hidden[b, t], weight, bias, temperature)  # (b, t, V)
            lse_bt = torch.logsumexp(z, dim=-1, keepdim=True)  # (b, t, 1)
            logp = z.sub_(lse_bt)  # log π, in place: one (b, t, V) buffer
            lp[b, t] = logp.gather(-1, idx).squeeze(-1)
            lse[b, t] = lse_bt.squeeze(-1)
            ent[b, t] = -logp.exp().mul_(logp).sum(-1)  # H = −Σ π log π
            del z, logp
        ctx.save_for_backward(hidden, weight, bias, ids, lse, ent)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp: Tensor, g_ent: Tensor):
        hidden, weight, bias, ids, lse, ent = ctx.saved_tensors
        tau = ctx.temperature
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        B, T, H = hidden.shape
        grad_h = torch.zeros_like(hidden) if need_h else None
        # Accumulated over blocks in fp32, cast to the head's dtype once at the end.
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        for b, t in _blocks(B, T, ctx.chunk_size):
            h = hidden[b, t]  # (b, t, H)
            logp = _head_logits(h, weight, bias, tau).sub_(lse[b, t].unsqueeze(-1))  # log π, (b, t, V)
            p = logp.exp()
            c_lp = (g_lp[b, t] / tau).unsqueeze(-1)  # (b, t, 1); ∂z/∂logits = 1/τ folded in
            c_ent = (g_ent[b, t] / -tau).unsqueeze(-1)
            # ∂L/∂logits = (g_lp·(onehot − π) − g_H·π (log π + H)) / τ, as in _LogprobEntropy
            gz = logp.add_(ent[b, t].unsqueeze(-1)).mul_(c_ent).sub_(c_lp).mul_(p)
            del p
            gz.scatter_add_(-1, ids[b, t].unsqueeze(-1), c_lp)
            gz = gz.to(weight.dtype).flatten(0, -2)  # (b·t, V)
            if need_h:
                grad_h[b, t] = (gz @ weight).view(h.shape)
            if need_w:
                hw = h.flatten(0, -2).to(weight.dtype)  # (b·t, H)
                if grad_w.dtype == gz.dtype:
                    grad_w.addmm_(gz.T, hw)
                else:
                    grad_w.add_(gz.T @ hw)
            if need_b:
                grad_b.add_(gz.sum(0, dtype=torch.float32))
            del logp, gz
        return (grad_h, None if grad_w is None else grad_w.to(weight.dtype),
                None if grad_b is None else grad_b.to(weight.dtype), None, None, None)


#: Floats in one chunk's (positions, V) logits when the chunk size follows the vocabulary: 2**23 = 32 MiB in fp32.
CHUNK_LOGITS = 2**23


def chunk_for_vocab(vocab_size: int, budget: int = CHUNK_LOGITS, most: int = 1024) -> int:
    """Positions per chunk of the log-prob pass so that a chunk's logits hold at most ``budget`` floats.

    Why: the pass keeps a few (chunk, V) fp32 buffers at once, so a fixed chunk costs memory in
    proportion to V: 1,024 positions were 0.32× the naive pass's peak at 32k and more at 151,936
    (benchmarks/README.md). 1,024 (the earlier fixed default) up to an 8,192 vocabulary, 256 at
    32,000, 55 at 151,936.
    """
    return max(1, min(most, budget // max(vocab_size, 1)))


def head_logprobs_and_entropy(
    hidden: Tensor, weight: Tensor, token_ids: Tensor, bias: Tensor | None = None, temperature: float = 1.0,
    chunk_size: int = 1024,
) -> tuple[Tensor, Tensor]:
    """log π(token_ids) and the entropy of π = softmax((hidden Wᵀ + b) / τ), without the (B, T, V) logits.

    The same values as ``token_logprobs_and_entropy(hidden @ weight.T + bias, ...)``; the logits of
    ``chunk_size`` positions at a time exist, forward and backward.

    Args:
        hidden: (B, T, H) final hidden states (after the model's last norm); row t predicts token_ids[:, t].
        weight: (V, H) the LM head's weight (a tied embedding gets its gradient through it).
        token_ids: (B, T) long.
        bias: (V,) the LM head's bias, or None.
        temperature: the sampling temperature τ.
        chunk_size: token positions processed at once.

    Returns:
        logprobs (B, T) float32 and entropy (B, T) float32, differentiable w.r.t. hidden, weight and bias.
    """
    return _HeadLogprobEntropy.apply(hidden, weight, bias, token_ids, float(temperature), int(chunk_size))


class _Captured:
    """What the patched LM head computed during one forward (see ``model_logprobs_and_entropy``)."""

    def __init__(self) -> None:
        self.out: tuple[Tensor, Tensor] | None = None
        self.marker: Tensor | None = None


def model_logprobs_and_entropy(
    model: torch.nn.Module, token_ids: Tensor, temperature: float = 1.0, chunk_size: int = 1024, **inputs
) -> tuple[Tensor, Tensor]:
    """log π and entropy of ``token_ids`` (B, T) under a Hugging Face causal LM, no (B, T, V) logits.

    Runs ``model(**inputs, logits_to_keep=T + 1)`` with its LM head (``get_output_embeddings()``, an
    ``nn.Linear``) swapped, for this call only, for ``head_logprobs_and_entropy`` over the kept hidden
    states but the last (position P−1+t predicts completion token t). Calling the head inside the
    model's own forward keeps FSDP2 working: the head's weight is gathered there. A model that does
    anything to its logits after the head (a soft cap, a scale) is detected — the forward would not hand
    back what the head returned — and goes through the full logits instead, as does a head with forward
    hooks (they expect the logits).

    Returns:
        logprobs (B, T) and entropy (B, T), float32.
    """
    T = token_ids.shape[1]
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    hooked = head is not None and bool(head._forward_hooks or head._forward_pre_hooks)  # they expect logits
    if isinstance(head, torch.nn.Linear) and not hooked:
        captured = _Captured()

        def fused_forward(hidden: Tensor) -> Tensor:  # hidden (B, T+1, H)
            captured.out = head_logprobs_and_entropy(hidden[:, :-1], head.weight, token_ids, head.bias,
                                                     temperature, chunk_size)
            captured.marker = hidden.new_empty(0)
            return captured.marker

        head.forward = fused_forward  # an instance attribute: shadows Linear.forward for this call
        try:
            out = model(**inputs, logits_to_keep=T + 1)
        finally:
            del head.forward
        if captured.out is not None and out.logits is captured.marker:
            return captured.out
    out = model(**inputs, logits_to_keep=T + 1)
    return token_logprobs_and_entropy(out.logits[:, :-1], token_ids, temperature, chunk_size)

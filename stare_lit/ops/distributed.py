"""World-level reductions that work the same with one process or many.

Statistics that steer the loss (STARE's gate entropy, a top-P surprisal quantile) and the ones the
callbacks log must be token-weighted over *all* ranks, not a mean of per-rank means: a rank with
short completions would otherwise count as much as one with long ones. Every function here is a
no-op wrapper when torch.distributed is not initialised, so the pure tensor code stays testable.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(x: Tensor) -> Tensor:
    """Sum of ``x`` over ranks (a new tensor; ``x`` is left untouched)."""
    x = x.detach().clone()
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def masked_mean(values: Tensor, mask: Tensor, world: bool = True) -> Tensor:
    """Token-weighted mean of ``values`` where ``mask`` is set, over all ranks if ``world``.

    values, mask: (B, T). Returns a 0-dim float tensor (0.0 when no token is masked in).
    """
    m = mask.to(torch.float32)
    total = torch.stack([(values.detach().float() * m).sum(), m.sum()])  # (2,)
    if world:
        total = all_reduce_sum(total)
    return total[0] / total[1].clamp_min(1.0)


def gather_valid(values: Tensor, mask: Tensor, world: bool = True) -> Tensor:
    """The 1-D tensor of ``values[mask]`` from every rank, concatenated in rank order.

    Ranks hold different numbers of valid tokens, so counts are exchanged first and each rank pads
    its slice to the largest count before ``all_gather``.
    """
    local = values.detach()[mask.bool()].float()  # (n_local,)
    if not (world and is_distributed()):
        return local
    counts = [torch.zeros(1, dtype=torch.long, device=local.device) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, torch.tensor([local.numel()], device=local.device))
    longest = int(max(c.item() for c in counts))
    padded = torch.zeros(longest, dtype=local.dtype, device=local.device)
    padded[: local.numel()] = local
    slices = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(slices, padded)
    return torch.cat([s[: int(c.item())] for s, c in zip(slices, counts)])

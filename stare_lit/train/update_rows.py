"""Which rows of a rollout the update forwards, and their model inputs with the padding trimmed.

A row moves the weights only through its loss tokens' gradient. With β = 0, a row whose advantage is
0 under a scheme that declares such rows inert (``TokenWeighting.zero_advantage_inert``) has a zero
gradient, and so has a row without loss tokens (dropped or unscorable); the update skips their
forward and backward and hands the scheme and the loss their π_old values instead (exact: the
clipped surrogate of Â = 0 is 0 whatever π_θ is). Rows that are forwarded are cut to the columns
they use: prompt columns that are padding in every one of them, completion columns after the
longest of them.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from stare_lit.ops.distributed import all_reduce_sum, is_distributed
from stare_lit.rollout.base import Rollout

# log π and entropy (n, T) of the selected rows of the step's rollout, from the model being trained
RowsPass = Callable[[slice | Tensor], tuple[Tensor, Tensor]]


def inert_rows(advantages: Tensor, mask: Tensor, zero_advantage_inert: bool) -> Tensor:
    """(N,) bool: rows whose gradient is 0 — no loss token, or Â = 0 — when the scheme and β allow it.

    Args:
        advantages: (N,) sequence advantages.
        mask: (N, T) bool loss tokens.
        zero_advantage_inert: β = 0 and the scheme declares zero-advantage rows inert; else no row is.
    """
    if not zero_advantage_inert:
        return torch.zeros_like(advantages, dtype=torch.bool)
    return (advantages == 0) | ~mask.any(-1)


def row_inputs(rollout: Rollout, rows: slice | Tensor) -> tuple[dict[str, Tensor], Tensor]:
    """Model inputs of ``rows`` (a slice or (n,) indices) cut to the columns they use, and their
    completion ids (n, T') with T' <= T. Position ids come from the full attention mask, so the cut
    changes no position; cut columns are padding every kept row masks out (left) or comes before (right)."""
    P = rollout.prompt_length
    attention = rollout.attention_mask[rows]  # (n, P+T)
    used = attention.any(0)  # (P+T,)
    first = int(used[:P].float().argmax()) if used[:P].any() else P  # first prompt column any row uses
    last = P + int(used[P:].nonzero().max()) + 1 if used[P:].any() else P + 1  # keep >= 1 completion column
    cols = slice(first, last)
    inputs = {"input_ids": rollout.input_ids[rows][:, cols], "attention_mask": attention[:, cols],
              "position_ids": rollout.position_ids[rows][:, cols]}
    return inputs, rollout.input_ids[rows][:, P:last]


def pad_columns(x: Tensor, T: int) -> Tensor:
    """(n, T') → (n, T) with zeros after column T' (positions past every row's completion)."""
    return x if x.shape[1] == T else torch.nn.functional.pad(x, (0, T - x.shape[1]))


def merge_rows(base: Tensor, idx: Tensor, values: Tensor) -> Tensor:
    """``base`` (n, T) with rows ``idx`` (k,) replaced by ``values`` (k, T), out of place: the gradient
    flows to ``values`` only. ``values`` take ``base``'s dtype: π_old's values are float32, a bf16-true
    model's forward is not."""
    return base.index_put((idx,), values.to(base.dtype))


def length_sorted_chunks(lengths: Tensor, size: int | None) -> list[Tensor]:
    """Row indices in chunks of ``size`` (None: one chunk), rows sorted by length so that each chunk
    pads to about its own rows' length. For passes whose rows are independent (no_grad log-probs)."""
    order = torch.argsort(lengths, stable=True)
    size = size or max(len(order), 1)
    return [order[i:i + size] for i in range(0, len(order), size)]


def forwarded(rows: Tensor, fallback: Tensor) -> Tensor:
    """``rows`` (k,) indices, or ``fallback`` when this rank has none and another rank has some:
    FSDP's collectives need every rank to run the same forwards. Every rank must call it."""
    if not is_distributed():
        return rows
    anyone = all_reduce_sum(torch.tensor(float(len(rows) > 0), device=rows.device)).item() > 0
    return fallback if anyone and len(rows) == 0 else rows


@torch.no_grad()
def skipped_rows_old(forward: RowsPass, shape: torch.Size, skip: Tensor) -> tuple[Tensor, Tensor]:
    """log π_old and entropy (N, T) of the skipped rows (0 on the others), for the fused pass (μ = 1,
    one micro-batch): the loss, the scheme's gate and the callbacks see every row."""
    lp = torch.zeros(shape, dtype=torch.float32, device=skip.device)
    ent = torch.zeros_like(lp)
    idx = skip.nonzero().squeeze(-1)
    fwd = forwarded(idx, fallback=idx.new_zeros(1))  # a fallback row's values are not kept
    if len(fwd):
        lp_fwd, ent_fwd = forward(fwd)
        if len(idx):
            lp[idx], ent[idx] = lp_fwd, ent_fwd
    return lp, ent


def micro_logprobs(forward: RowsPass, rows: slice, skip: Tensor, old: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
    """log π_θ and entropy (n, T) of one micro-batch: forwarded with grad for the rows that are not
    skipped, π_old's values ``old`` ((N, T) each, constants) for the others."""
    local = torch.arange(rows.start, rows.stop, device=skip.device)
    active = forwarded(local[~skip[rows]], fallback=local[:1])
    if len(active) == len(local):
        return forward(rows)
    base_lp, base_ent = old[0][rows], old[1][rows]
    if len(active) == 0:
        return base_lp, base_ent
    lp, ent = forward(active)
    return merge_rows(base_lp, active - rows.start, lp), merge_rows(base_ent, active - rows.start, ent)


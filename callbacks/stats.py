"""World-level, token-weighted statistics of one training step, shared by the entropy callbacks.

Every callback reads the step that ``training_step`` returns (``stare_lit.train.StepOutput``: its
fields, their meaning and shapes) and reduces it over the valid tokens of *all* ranks with a single
``all_reduce`` of sums, so every rank gets the same numbers: a rank with long completions counts for
more tokens than one with short ones, never as one mean among others. The per-token first-order
entropy change comes from ``stare_lit.ops.entropy_dynamics``.
"""

from __future__ import annotations

import math

import lightning.pytorch as pl
import torch
from torch import Tensor

from stare_lit.ops.distributed import all_reduce_sum
from stare_lit.ops.entropy_dynamics import QUADRANTS, predicted_entropy_change, quadrant_masks
from stare_lit.train.step_log import StepOutput

__all__ = ["QUADRANTS", "batches_done", "position_bucket_name", "relative_position_buckets", "step_stats"]


def sum_dtype(device: torch.device) -> torch.dtype:
    # float64 keeps token counts exact past 2**24 tokens; MPS has no float64.
    return torch.float32 if device.type == "mps" else torch.float64


def batches_done(trainer: pl.Trainer) -> int:
    """Training batches finished before the current one: the counter Lightning's logger uses as ``step``."""
    return trainer.fit_loop.epoch_loop._batches_that_stepped


def position_bucket_name(k: int, buckets: int) -> str:
    """Metric name of relative-position bucket ``k`` (0-based) of ``buckets``: 0, 4 -> ``entropy_position_1of4``."""
    return f"entropy_position_{k + 1}of{buckets}"


def relative_position_buckets(mask: Tensor, buckets: int) -> Tensor:
    """Bucket of each valid token's relative position in its completion; -1 off the mask.

    The j-th valid token (0-based) of a row with n valid tokens sits at (j + 0.5) / n in (0, 1), so the
    first and last tokens are placed symmetrically; bucket k covers [k/K, (k+1)/K).

    Args:
        mask: (B, T) bool, True on completion tokens.
        buckets: K >= 1.

    Returns:
        (B, T) long in [0, K) on valid tokens, -1 elsewhere.

    Example: mask [[1, 1, 0]], K = 4 -> positions 0.25, 0.75 -> [[1, 3, -1]].
    """
    valid = mask.bool()  # (B, T)
    m = valid.to(torch.float64)
    index = torch.cumsum(m, dim=-1) - 1.0  # (B, T) j of each valid token
    n = m.sum(-1, keepdim=True).clamp_min(1.0)  # (B, 1)
    bucket = torch.floor((index + 0.5) / n * buckets).long().clamp(0, buckets - 1)  # (B, T)
    return torch.where(valid, bucket, torch.full_like(bucket, -1))


def step_stats(
    step: StepOutput,
    position_buckets: int = 0,
    forking_entropy: float | None = None,
    rewards: bool = False,
) -> dict[str, float]:
    """Token-weighted statistics of one step over all ranks; empty when no rank has a valid token.

    Collective under torch.distributed (one ``all_reduce``): every rank must call it on the same steps
    with the same settings. Names, without a prefix:

    - ``entropy_mean``, ``surprisal_mean``: token means of H and of s = -log pi(a).
    - ``quadrant_<q>`` for q in ``QUADRANTS``: share of valid tokens in the quadrant; ``zero_adv_share``:
      share with A == 0. The five add up to 1.
    - ``entropy_change_pred_<q>``: the first-order entropy change A * w * pi(a) * (s - H) (per unit step
      size, ``predicted_entropy_change``) summed over the quadrant's tokens and divided by the number of
      valid tokens, so the four add up to ``entropy_change_pred``, the predicted change of the batch-mean
      entropy.
    - ``entropy_change_share_<q>``: the quadrant's signed share of the predicted movement,
      ``entropy_change_pred_<q> / sum_q |entropy_change_pred_<q>|`` (negative: it lowers H; the absolute
      values add up to 1; all 0 when nothing moves).
    - ``entropy_change_pred_reweight``: ``entropy_change_pred`` minus the same with w = 1: what the
      scheme's token weights add (> 0: the reweighting pushes entropy up, offsetting collapse). Exactly
      sum over valid tokens of A * (w - 1) * pi(a) * (s - H), divided by the number of valid tokens: the
      predicted change of the batch-mean entropy due to the reweighting alone, per unit step size, first
      order, the sampled token's logit term only (``predicted_entropy_change``).
    - ``reweighted_share``: share of valid tokens whose weight is not 1 (the tokens the scheme moved);
      ``reweighted_above_entropy_share``: the share of those with s > H of the same position (NaN when
      the scheme moved none). For an upweighted A > 0 token or a damped A < 0 one, s > H is the side
      on which the reweighting raises H; read it beside ``entropy_change_pred_reweight``, which has the
      signs of A and w - 1 in it.
    - ``entropy_position_<k>of<K>`` (``position_buckets`` K > 0): mean H of the tokens whose relative
      position in their completion falls in bucket k (``relative_position_buckets``); a bucket with no
      token on any rank is left out.
    - ``forking_token_share`` (``forking_entropy`` set): share of valid tokens with H > forking_entropy,
      the high-entropy "forking" tokens of arXiv 2506.01939; ``forking_entropy_mean``: their mean H
      (NaN when there is none).
    - ``reward_mean`` (``rewards``): mean of the finite rewards of all ranks (absent if there is none).
    - ``token_count``: number of valid tokens over all ranks.

    Args:
        step: what ``training_step`` returned (``StepOutput.of(outputs)`` in ``on_train_batch_end``).
        position_buckets: number of relative-position buckets K (0: none).
        forking_entropy: entropy (nats) above which a token counts as forking (None: not computed).
        rewards: also reduce the mean reward.
    """
    entropy = step.entropy.detach()  # (B, T)
    surprisal = step.surprisal.detach()  # (B, T)
    adv = step.advantages.detach()  # (B, T)
    weights = step.weights.detach()  # (B, T)
    valid = step.mask.bool()  # (B, T)
    dtype = sum_dtype(entropy.device)

    def total(x: Tensor) -> Tensor:
        return x.to(dtype).sum()

    zero = torch.zeros((), dtype=entropy.dtype, device=entropy.device)
    quads = quadrant_masks(entropy, surprisal, adv, valid)  # (4, B, T)
    dh = predicted_entropy_change(entropy, surprisal, adv, weights, valid)  # (B, T)
    dh_plain = predicted_entropy_change(entropy, surprisal, adv, None, valid)  # (B, T)
    moved = valid & (weights != 1)  # (B, T) tokens the scheme reweighted
    parts = [total(valid), total(torch.where(valid, entropy, zero)), total(torch.where(valid, surprisal, zero))]
    parts += [total(q) for q in quads]  # 4 token counts
    parts.append(total(valid & (adv == 0)))
    parts += [total(torch.where(q, dh, 0.0)) for q in quads]  # 4 predicted-change sums
    parts.append(total(dh_plain))
    parts += [total(moved), total(moved & (surprisal > entropy))]
    if forking_entropy is not None:
        forking = valid & (entropy > forking_entropy)  # (B, T)
        parts += [total(forking), total(torch.where(forking, entropy, zero))]
    if position_buckets > 0:
        bucket = relative_position_buckets(valid, position_buckets)  # (B, T)
        for k in range(position_buckets):
            in_k = bucket == k  # (B, T)
            parts += [total(torch.where(in_k, entropy, zero)), total(in_k)]
    if rewards:
        r = step.rewards.detach().to(entropy.device)  # (N,)
        finite = torch.isfinite(r)
        parts += [total(torch.where(finite, r, 0.0)), total(finite)]
    sums = all_reduce_sum(torch.stack(parts)).tolist()  # world totals, identical on every rank

    count, h_sum, s_sum = sums[:3]
    if count == 0:
        return {}
    shares, zero_adv, dh_q, dh_plain_sum = sums[3:7], sums[7], sums[8:12], sums[12]
    n_moved, n_moved_above = sums[13:15]
    rest = sums[15:]
    stats = {"token_count": count, "entropy_mean": h_sum / count, "surprisal_mean": s_sum / count}
    stats |= {f"quadrant_{q}": n / count for q, n in zip(QUADRANTS, shares)}
    stats["zero_adv_share"] = zero_adv / count
    moved = sum(abs(x) for x in dh_q)
    for q, x in zip(QUADRANTS, dh_q):
        stats[f"entropy_change_pred_{q}"] = x / count
        stats[f"entropy_change_share_{q}"] = x / moved if moved > 0 else 0.0
    stats["entropy_change_pred"] = sum(dh_q) / count
    stats["entropy_change_pred_reweight"] = (sum(dh_q) - dh_plain_sum) / count
    stats["reweighted_share"] = n_moved / count
    stats["reweighted_above_entropy_share"] = n_moved_above / n_moved if n_moved > 0 else math.nan
    if forking_entropy is not None:
        n_fork, h_fork = rest.pop(0), rest.pop(0)
        stats["forking_token_share"] = n_fork / count
        stats["forking_entropy_mean"] = h_fork / n_fork if n_fork > 0 else math.nan
    for k in range(position_buckets):
        b_sum, b_count = rest.pop(0), rest.pop(0)
        if b_count > 0:
            stats[position_bucket_name(k, position_buckets)] = b_sum / b_count
    if rewards:
        r_sum, r_count = rest.pop(0), rest.pop(0)
        if r_count > 0:
            stats["reward_mean"] = r_sum / r_count
    return stats

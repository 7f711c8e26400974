"""STARE (arXiv 2606.19236): surprisal-targeted advantage reweighting with a closed-loop entropy gate."""

from __future__ import annotations

import math
from typing import Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from stare_lit.ops.distributed import all_reduce_sum, gather_valid, is_distributed
from stare_lit.errors import check

from stare_lit.schemes.base import TokenBatch, TokenWeighting

def kth_largest(values: Tensor, k_share: float, world: bool = True) -> tuple[Tensor | None, int]:
    """The value of rank k = int(k_share·n + 0.999999) (clamped to [1, n]) among ``values`` of all ranks.

    Returns (threshold, n): tokens with value >= threshold are the top k (more on ties).
    """
    pooled = gather_valid(values, torch.ones_like(values, dtype=torch.bool), world=world)
    n = pooled.numel()
    if n == 0 or k_share <= 0:
        return None, n
    k = min(max(1, int(n * k_share + 0.999999)), n)
    return torch.topk(pooled, k).values[-1], n


def stare_selection(
    logprobs: Tensor, advantages: Tensor, mask: Tensor, top_ratio: float, negative: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STARE's entropy-critical sets: top-P surprisal tokens inside T+ (and T−).

    Returns (L+, L−, T+, T−) as (B, T) bool masks; L− is empty unless ``negative``.
    k = ceil(P·|T|) computed as int(P·|T| + 0.999999), clamped to [1, |T|], as in the official
    code; ties are broken by torch.topk. Under several processes the set is world-level: tokens at
    or above the k-th largest surprisal of all ranks' candidates (ties may add a few).
    """
    valid = mask.bool()
    t_pos = valid & (advantages > 0)
    t_neg = valid & (advantages < 0)
    surprisal = -logprobs.detach()  # (B, T)

    def top(candidates: Tensor) -> Tensor:
        chosen = torch.zeros_like(candidates)
        if is_distributed():  # world-level: the k-th largest surprisal over every rank's candidates
            threshold, _ = kth_largest(surprisal[candidates], top_ratio)
            return candidates & (surprisal >= threshold) if threshold is not None else chosen
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


def capped_k(n: int, top_ratio: float) -> int:
    """How many of n candidates STARE reweights: int(P·n + 0.999999) clamped to [1, n] (0 if n or P is 0).

    The official code's ceil, kept exactly (a product just above an integer does not round up).
    """
    if n == 0 or top_ratio <= 0.0:
        return 0
    return min(max(1, int(n * top_ratio + 0.999999)), n)


def above_entropy_selection(
    logprobs: Tensor, entropy: Tensor, advantages: Tensor, mask: Tensor, top_ratio: float, negative: bool,
    margin: float = 0.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """STARE by the position's own entropy: the tokens whose update raises entropy, at most P of T+ (T−).

    **stare-lit's extension, not the published code.** It is derived from the paper's own first-order
    analysis (STARE §3; ``stare_lit.ops.entropy_dynamics``): a step on a sampled token with surprisal s at a
    position of entropy H moves that entropy by ∝ A·π(a)·(s − H), so upweighting an A > 0 token raises
    H exactly when s > H, and damping an A < 0 token raises H exactly when s > H too. The official
    top-P surprisal quantile (``stare_selection``) is a proxy for s > H that fails at forks, where the
    likelier branch has s just below H. Here:

        L+ = tokens of T+ with s − H > margin, ranked by s − H, at most k+ = int(P·|T+| + 0.999999)
        L− = the same inside T− (variant C2 only), at most k− = int(P·|T−| + 0.999999)

    with k as in the official code (``capped_k``): the cap is a share of T+, not of the eligible
    tokens, so a batch with few tokens above their entropy reweights only those (possibly none).
    s = −log π_old(a) and H the entropy of π_old at the same position: both of the same distribution
    (at μ = 1 they equal π_θ's values), both detached. s = H exactly is not selected at margin 0.

    Ties at the cap are broken by position (row-major, earlier first), so the local result is exactly
    min(k, eligible) tokens. Under several processes the ranking is world-level: k from the world's
    |T+|, the threshold the k-th largest s − H of all ranks' eligible tokens; ties at the threshold
    may add a few.

    Args:
        logprobs: (B, T) log π_old of the sampled tokens.
        entropy: (B, T) entropy of π_old at each position.
        advantages: (B, T) per-token Â; Â = 0 is never selected.
        mask: (B, T) 1 on completion tokens.
        top_ratio: P, the most of T+ (and of T−) that is selected.
        negative: also select L− (variant C2).
        margin: nats by which s must exceed H (>= 0).

    Returns:
        (L+, L−, T+, T−) as (B, T) bool masks; L− is empty unless ``negative``.

    Example: T+ tokens with (s, H) = (1.2, 1.0), (0.9, 1.1), (2.0, 0.5), (0.1, 0.1), P = 0.5 → k = 2;
    s − H = 0.2, −0.2, 1.5, 0 → eligible: the first and third → L+ = both.
    """
    valid = mask.bool()  # (B, T)
    t_pos = valid & (advantages > 0)
    t_neg = valid & (advantages < 0)
    gap = (-logprobs.detach().float()) - entropy.detach().float()  # (B, T) s − H

    def top(candidates: Tensor) -> Tensor:
        eligible = candidates & (gap > margin)  # (B, T)
        n = int(all_reduce_sum(candidates.sum().float()).item()) if is_distributed() else int(candidates.sum())
        k = capped_k(n, top_ratio)
        return largest_k(gap, eligible, k)

    l_neg = top(t_neg) if negative else torch.zeros_like(valid)
    return top(t_pos), l_neg, t_pos, t_neg


def largest_k(values: Tensor, eligible: Tensor, k: int) -> Tensor:
    """(B, T) bool: the k largest ``values`` among ``eligible`` (all of them if fewer), world-level.

    One process: exactly min(k, |eligible|), ties broken by flat position (earlier first). Several:
    every eligible token at or above the world's k-th largest value.
    """
    chosen = torch.zeros_like(eligible)
    if is_distributed():
        pooled = gather_valid(values, eligible)  # (n_world,)
        k = min(k, pooled.numel())
        return eligible & (values >= torch.topk(pooled, k).values[-1]) if k > 0 else chosen
    idx = eligible.reshape(-1).nonzero().squeeze(-1)  # (n,) flat positions, in order
    k = min(k, idx.numel())
    if k == 0:
        return chosen
    order = torch.sort(values.reshape(-1)[idx].float(), descending=True, stable=True).indices[:k]
    chosen.view(-1)[idx[order]] = True
    return chosen


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
    get ``m`` (their update lowers entropy). Following the official code
    (github.com/hp-luo/STARE, compute_stare_token_weights).

    Which tokens (``selection``): "top_surprisal" (the paper's rule and code) takes the top ``top_ratio``
    of T+ by surprisal; "above_entropy" (**stare-lit's extension, not the published code**; see
    ``above_entropy_selection``) takes the tokens of T+ whose surprisal exceeds their own position's
    entropy under π_old by more than ``margin``, largest excess first, at most ``top_ratio`` of T+ —
    the exact condition under which upweighting a token raises entropy in the paper's first-order
    analysis. In C2 the same holds inside T− for M. Gate, W, M, the adaptive schedule and the
    saturation warning are the same for both.

    Scope of the top-P selection (``scope``): "micro_batch" (official) ranks the tokens of each loss
    computation by their surprisal under π_θ; "step" ranks all tokens of the step batch (every
    micro-batch) once per update by their surprisal under π_old and keeps that set for its
    micro-batches ("above_entropy" uses π_old's surprisal and entropy in either scope). With one
    micro-batch and μ = 1 the two are the same. Either way, under several processes the ranking is
    over all ranks.

    The target is absolute (``target_entropy``, nats) or relative (``relative_target``: a fraction of
    the mean controller entropy over the first ``baseline_steps`` steps, so one YAML serves any warm
    start; the gate stays closed, ω ≡ 1, until the baseline is in). Set exactly one of the two.

    With the adaptive schedule, a controller that has held W at ``w_max`` (and, in C2, M at ``m_min``)
    for ``saturation_window`` steps in a row while the entropy stayed below target has no authority
    left: it warns once and logs ``saturated`` = 1 from then on (``saturated_steps`` counts the run).

    Args:
        target_entropy: H_tgt in nats; the gate is on while the batch entropy is below it. Null
            when ``relative_target`` is set.
        relative_target: H_tgt as a fraction (> 0) of the mean controller entropy over the first
            ``baseline_steps`` steps, or null for an absolute target.
        baseline_steps: steps whose mean entropy is the base of ``relative_target``.
        saturation_window: steps in a row at the adaptive schedule's bound, entropy below target,
            after which the saturation warning fires.
        top_ratio: P in [0, 1].
        w: W > 0 (paper: 1.1 at 7B, 1.05 at 14B/32B).
        m: M > 0 (paper: 0.9 at 7B, 0.95 at 14B/32B); used by variant C2 only.
        variant: "O1" (W only, the paper's default) or "C2" (W and M).
        adaptive: move W and M each step by ``alpha`` towards more reweighting while the entropy
            is below target and less while above (paper §4.4; off by default).
        alpha: step of the adaptive schedule.
        w_max: upper bound of W under the adaptive schedule (lower bound 1).
        m_min: lower bound of M under the adaptive schedule (upper bound 1).
        scope: "micro_batch" or "step" (see above).
        selection: "top_surprisal" (paper) or "above_entropy" (stare-lit's extension; see above).
        margin: for "above_entropy", the nats by which s must exceed H (>= 0); must be 0 otherwise.
    """

    zero_advantage_inert = True  # Â = 0 tokens are never candidates; the counts use the mask only

    def __init__(
        self,
        target_entropy: float | None = 0.3,
        top_ratio: float = 0.1,
        w: float = 1.1,
        m: float = 0.9,
        variant: Literal["O1", "C2"] = "O1",
        adaptive: bool = False,
        alpha: float = 0.01,
        w_max: float = 1.5,
        m_min: float = 0.5,
        scope: Literal["micro_batch", "step"] = "micro_batch",
        relative_target: float | None = None,
        baseline_steps: int = 10,
        saturation_window: int = 50,
        selection: Literal["top_surprisal", "above_entropy"] = "top_surprisal",
        margin: float = 0.0,
    ) -> None:
        key = "model.scheme.init_args"
        check(scope in ("micro_batch", "step"), f"{key}.scope must be 'micro_batch' or 'step', got {scope!r}")
        check(0.0 <= top_ratio <= 1.0, f"{key}.top_ratio must be in [0, 1] (a share of tokens), got {top_ratio}")
        check(w > 0, f"{key}.w must be > 0 (W multiplies the loss of L+ tokens; the paper uses 1.1), got {w}")
        check(m > 0, f"{key}.m must be > 0 (M multiplies the loss of L- tokens; the paper uses 0.9), got {m}")
        check(variant in ("O1", "C2"), f"{key}.variant must be 'O1' or 'C2', got {variant!r}")
        check((target_entropy is None) != (relative_target is None),
              f"{key}: set exactly one of target_entropy (nats) and relative_target (a fraction of the early "
              f"entropy), got {target_entropy} and {relative_target}; write target_entropy: null to use relative_target")
        check(target_entropy is None or target_entropy > 0, f"{key}.target_entropy must be > 0 (nats), got {target_entropy}")
        check(relative_target is None or relative_target > 0,
              f"{key}.relative_target must be > 0 (e.g. 0.9 holds 90% of the early entropy), got {relative_target}")
        check(baseline_steps >= 1, f"{key}.baseline_steps must be >= 1, got {baseline_steps}")
        check(saturation_window >= 1, f"{key}.saturation_window must be >= 1, got {saturation_window}")
        check(selection in ("top_surprisal", "above_entropy"),
              f"{key}.selection must be 'top_surprisal' (the paper's rule) or 'above_entropy', got {selection!r}")
        check(math.isfinite(margin) and margin >= 0,
              f"{key}.margin must be a finite number of nats >= 0 (s must exceed H by more than it), got {margin}")
        check(margin == 0 or selection == "above_entropy",
              f"{key}.margin applies to selection: above_entropy only; set margin: 0 or selection: above_entropy")
        check(alpha >= 0, f"{key}.alpha must be >= 0, got {alpha}")
        check(w_max >= 1 and 0 < m_min <= 1, f"{key}: need w_max >= 1 and 0 < m_min <= 1, got {w_max}, {m_min}")
        self.relative_target = relative_target
        self.baseline_steps = baseline_steps
        self.saturation_window = saturation_window
        self.top_ratio = top_ratio
        self.variant = variant
        self.adaptive = adaptive
        self.alpha = alpha
        self.w_max = w_max
        self.m_min = m_min
        self.scope = scope
        self.selection = selection
        self.margin = margin
        self._step_selection: tuple[Tensor, Tensor, Tensor, Tensor] | None = None
        # Mutable state (checkpointed): the live weights, the gate, the entropy it last saw.
        self.w = w
        self.m = m
        self.gate_on = relative_target is None  # a relative target is unknown until the baseline is in
        self.entropy = math.nan
        self.target_entropy = target_entropy if target_entropy is not None else math.nan
        self.baseline: list[float] = []  # the first baseline_steps readings (relative target only)
        self.saturated_steps = 0  # steps in a row at the schedule's bound with entropy below target
        self.saturated = False  # the warning has fired
        self._stats: dict[str, float] = {}

    def update(self, batch_entropy: float) -> None:
        if not math.isfinite(batch_entropy):
            return  # as the official controller: a NaN/inf reading changes nothing
        self.entropy = float(batch_entropy)
        if self.relative_target is not None and len(self.baseline) < self.baseline_steps:
            self.baseline.append(self.entropy)
            if len(self.baseline) < self.baseline_steps:
                return  # gate closed (ω ≡ 1) while the baseline is being measured
            self.target_entropy = self.relative_target * sum(self.baseline) / len(self.baseline)
        self.gate_on = batch_entropy < self.target_entropy
        if self.adaptive and self.alpha > 0:
            sign = math.copysign(1.0, self.target_entropy - batch_entropy) if batch_entropy != self.target_entropy else 0.0
            self.w = min(max(self.w + self.alpha * sign, 1.0), self.w_max)
            self.m = min(max(self.m - self.alpha * sign, self.m_min), 1.0)
            self.watch_saturation()

    def watch_saturation(self) -> None:
        """Count steps at the schedule's bound with entropy below target; warn once after the window."""
        at_bound = self.w >= self.w_max and (self.variant == "O1" or self.m <= self.m_min)
        self.saturated_steps = self.saturated_steps + 1 if at_bound and self.gate_on else 0
        if self.saturated_steps >= self.saturation_window and not self.saturated:
            self.saturated = True
            rank_zero_warn(f"STARE: the adaptive schedule has held W at w_max={self.w_max}"
                           + (f" and M at m_min={self.m_min}" if self.variant == "C2" else "")
                           + f" for {self.saturated_steps} steps while the entropy ({self.entropy:.4g}) stayed below "
                           f"the target ({self.target_entropy:.4g}): the controller has no authority left. Raise "
                           f"w_max (or lower m_min), raise top_ratio, or lower the target")

    def select(self, tokens: TokenBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(L+, L−, T+, T−) of ``tokens`` by the configured rule (π_θ for the paper's rule, as the official
        code; π_old's surprisal and entropy for above_entropy)."""
        negative = self.variant == "C2"
        if self.selection == "top_surprisal":
            return stare_selection(tokens.logprobs, tokens.advantages, tokens.mask, self.top_ratio, negative)
        if tokens.old_entropy is None:
            raise ValueError("STARE(selection='above_entropy') needs TokenBatch.old_entropy (π_old's entropy per position)")
        return above_entropy_selection(tokens.old_logprobs, tokens.old_entropy, tokens.advantages, tokens.mask,
                                       self.top_ratio, negative, self.margin)

    def prepare(self, step_tokens: TokenBatch) -> None:
        self._step_selection = None
        if self.scope == "step":
            self._step_selection = self.select(step_tokens)

    def weights(self, tokens: TokenBatch) -> Tensor:
        if self._step_selection is not None:
            rows = tokens.rows if tokens.rows is not None else slice(None)
            l_pos, l_neg, t_pos, t_neg = (sel[rows] & tokens.mask.bool() for sel in self._step_selection)
        else:
            l_pos, l_neg, t_pos, t_neg = self.select(tokens)
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
        if self.adaptive:
            self._stats |= {"saturated": float(self.saturated), "saturated_steps": float(self.saturated_steps)}
        return weights

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)

    def progress(self) -> dict[str, float]:
        return {"gate": float(self.gate_on)}  # 1: the closed loop is reweighting, 0: ω ≡ 1

    def state_dict(self) -> dict:
        return {"w": self.w, "m": self.m, "gate_on": self.gate_on, "entropy": self.entropy,
                "target_entropy": self.target_entropy, "baseline": list(self.baseline),
                "saturated_steps": self.saturated_steps, "saturated": self.saturated}

    def load_state_dict(self, state: dict) -> None:
        self.w, self.m = float(state["w"]), float(state["m"])
        self.gate_on, self.entropy = bool(state["gate_on"]), float(state["entropy"])
        if "target_entropy" in state:  # checkpoints from before the relative target lack these
            self.target_entropy = float(state["target_entropy"])
            self.baseline = [float(x) for x in state["baseline"]]
            self.saturated_steps, self.saturated = int(state["saturated_steps"]), bool(state["saturated"])

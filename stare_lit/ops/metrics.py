"""Sample metrics: unbiased pass@k, mean@n, distinct correct solutions and never-solved prompts; the share of
training groups with no correct sample."""

from __future__ import annotations

from torch import Tensor


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021, arXiv 2107.03374).

    pass@k = 1 − C(n−c, k) / C(n, k), computed as 1 − Π_{i=n−c+1..n} (1 − k/i) so that no binomial
    coefficient is formed. Not the max over the first k samples: that is a higher-variance estimate
    of the same quantity. Example: n=4, c=1, k=2 → 1 − C(3,2)/C(4,2) = 1 − 3/6 = 0.5.
    """
    if not 1 <= k <= n or not 0 <= c <= n:
        raise ValueError(f"pass_at_k needs 1 <= k <= n and 0 <= c <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0  # every k-subset holds a correct sample
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def pass_at_k_levels(n: int) -> list[int]:
    """k = 1, 2, 4, …, up to n, and n itself: the levels at which pass@k is reported."""
    levels = [1 << j for j in range(n.bit_length()) if 1 << j <= n]
    return levels if levels[-1] == n else [*levels, n]


def sample_accuracy(correct: list[list[bool]], solutions: list[list[str]] | None = None,
                    levels: list[int] | None = None) -> dict[str, float]:
    """What n samples per prompt say about a policy, averaged over prompts.

    Args:
        correct: for each prompt, whether each of its n samples is correct (n the same for all).
        solutions: the samples' texts (normalised as the caller sees fit), to count distinct correct ones.
        levels: the k of pass@k; default every k = 1 … n (the whole pass@k curve: validation logs it so
            that a run's curve can be drawn from its metrics), e.g. :func:`pass_at_k_levels` for a short table.

    Returns ``mean@n`` (the mean fraction correct), ``pass@k`` for k in ``levels`` (the unbiased
    estimator), ``never_solved`` (the share of prompts with no correct sample in n: 1 − pass@n, the
    prompts a policy has lost or never had) and, with ``solutions``, ``distinct_correct`` (distinct
    correct texts per prompt).
    Example: correct=[[1, 0], [0, 0]] → mean@2 0.25, pass@1 0.25, pass@2 0.5, never_solved 0.5.
    """
    if not correct:
        return {}
    n = len(correct[0])
    if any(len(row) != n for row in correct):
        raise ValueError("sample_accuracy: every prompt needs the same number of samples")
    counts = [sum(map(bool, row)) for row in correct]
    out = {f"mean@{n}": sum(counts) / (n * len(counts))}
    for k in levels if levels is not None else range(1, n + 1):
        out[f"pass@{k}"] = sum(pass_at_k(n, c, k) for c in counts) / len(counts)
    out["never_solved"] = sum(c == 0 for c in counts) / len(counts)
    if solutions is not None:
        distinct = [len({s for s, ok in zip(texts, row) if ok}) for texts, row in zip(solutions, correct)]
        out["distinct_correct"] = sum(distinct) / len(distinct)
    return out


def all_wrong_share(correct: Tensor) -> Tensor:
    """The share of groups with no correct sample: prompts whose G completions are all wrong.

    Such a group gives GRPO no gradient (every advantage is 0), so a policy that keeps sampling the same
    wrong path on a prompt never learns it. ``correct`` is (P, G) bool; returns a 0-dim float tensor.
    Example: [[1, 0], [0, 0], [0, 0], [0, 1]] → 0.5.
    """
    return (~correct.any(dim=1)).float().mean()  # (P, G) → (P,) → ()

"""The entropy methods users compare against, as token-weighting schemes.

Each follows ``../shared/design/methods.md``; the paper is named in its docstring. All statistics
(quantiles, batch means) are world-level: pooled over the valid tokens of every rank.
"""

from __future__ import annotations

import torch
from torch import Tensor

from stare_lit.ops.distributed import is_distributed, masked_mean
from stare_lit.errors import check
from stare_lit.schemes.base import TokenBatch, TokenWeighting
from stare_lit.schemes.stare import kth_largest

KEY = "model.scheme.init_args"


class HighEntropyTokens(TokenWeighting):
    """80/20 rule (arXiv 2506.01939): only the top ``top_ratio`` tokens by entropy keep a gradient.

    The others leave the loss (their mask is cleared), so token-mean averages over the kept
    "forking" tokens. Entropy is that of π_old (detached).

    Args:
        top_ratio: ρ, share of the batch's tokens kept (0.2 in the paper).
    """

    zero_advantage_inert = True  # the percentile is of π_old's entropy (the module always gives it)

    def __init__(self, top_ratio: float = 0.2) -> None:
        check(0 < top_ratio <= 1, f"{KEY}.top_ratio must be in (0, 1], got {top_ratio}")
        self.top_ratio = top_ratio
        self._stats: dict[str, float] = {}

    def mask(self, tokens: TokenBatch) -> Tensor:
        entropy = (tokens.old_entropy if tokens.old_entropy is not None else tokens.entropy).detach()
        valid = tokens.mask.bool()
        threshold, _ = kth_largest(entropy[valid], self.top_ratio)
        if threshold is None:
            return valid
        kept = valid & (entropy >= threshold)
        self._stats = {"entropy_threshold": threshold.item(), "kept_ratio": kept.sum().item() / max(valid.sum().item(), 1)}
        return kept

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)


def token_covariance(logprobs: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """Cov_t = (log π_t − mean log π)(Â_t − mean Â), means over the valid tokens of all ranks. (B, T)."""
    lp = logprobs.detach()
    return (lp - masked_mean(lp, mask)) * (advantages - masked_mean(advantages, mask))


class ClipCov(TokenWeighting):
    """Clip-Cov (Cui et al., arXiv 2505.22617): stop the gradient of a few high-covariance tokens.

    Among tokens with cov_low < Cov < cov_high, ``ratio``·N (N = valid tokens) are picked at random
    and get ω = 0 (they stay in the token-mean denominator, as in the paper's code). The random
    generator is seeded and checkpointed, so a resumed run picks the same tokens.

    Args:
        ratio: r, share of all tokens to clip (2e-4 in the paper).
        cov_low: lower covariance bound ω_low (1).
        cov_high: upper covariance bound ω_high (5).
        seed: seed of the token picker.
    """

    def __init__(self, ratio: float = 2e-4, cov_low: float = 1.0, cov_high: float = 5.0, seed: int = 0) -> None:
        check(0 <= ratio <= 1, f"{KEY}.ratio must be in [0, 1], got {ratio}")
        check(cov_low < cov_high, f"{KEY}: cov_low must be < cov_high, got {cov_low} >= {cov_high}")
        self.ratio, self.cov_low, self.cov_high = ratio, cov_low, cov_high
        self.generator = torch.Generator().manual_seed(seed)
        self._stats: dict[str, float] = {}

    def weights(self, tokens: TokenBatch) -> Tensor:
        valid = tokens.mask.bool()
        cov = token_covariance(tokens.logprobs, tokens.advantages, valid)
        candidates = (valid & (cov > self.cov_low) & (cov < self.cov_high)).reshape(-1).nonzero().squeeze(-1)
        # The share is of the local tokens: each rank clips its own ratio·N_local.
        n_clip = min(int(self.ratio * valid.sum().item()), candidates.numel())
        picked = candidates[torch.randperm(candidates.numel(), generator=self.generator)[:n_clip].to(candidates.device)]
        weights = torch.ones_like(tokens.advantages, dtype=torch.float32)
        weights.view(-1)[picked] = 0.0
        self._stats = {"clipped_ratio": n_clip / max(valid.sum().item(), 1),
                       "candidate_ratio": candidates.numel() / max(valid.sum().item(), 1)}
        return weights

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class KLCov(TokenWeighting):
    """KL-Cov (Cui et al., arXiv 2505.22617): a KL penalty on the highest-covariance tokens.

    The top ``ratio``·N tokens by Cov (world-level) swap their clipped surrogate for
    −Â·ρ + coef·|log π_θ − log π_old| (ω = 0 on the surrogate, the rest as an extra loss).

    Args:
        ratio: k, share of tokens penalised (2e-3 at 7B in the paper).
        coef: β of the |log-ratio| penalty (1).
    """

    def __init__(self, ratio: float = 2e-3, coef: float = 1.0) -> None:
        check(0 < ratio <= 1, f"{KEY}.ratio must be in (0, 1], got {ratio}")
        check(coef >= 0, f"{KEY}.coef must be >= 0, got {coef}")
        self.ratio, self.coef = ratio, coef
        self._stats: dict[str, float] = {}
        self._chosen: Tensor | None = None

    def selected(self, tokens: TokenBatch) -> Tensor:
        """The penalised tokens: exactly k = int(ratio·N + 0.999999) (clamped to [1, N]) by Cov, ties broken
        by torch.topk, as the paper's code. Under several processes: tokens at or above the k-th largest
        Cov of all ranks (ties may add some)."""
        valid = tokens.mask.bool()
        cov = token_covariance(tokens.logprobs, tokens.advantages, valid)
        if is_distributed():
            threshold, _ = kth_largest(cov[valid], self.ratio)
            return valid & (cov >= threshold) if threshold is not None else torch.zeros_like(valid)
        chosen = torch.zeros_like(valid)
        n = int(valid.sum())
        if n == 0:
            return chosen
        k = min(max(1, int(n * self.ratio + 0.999999)), n)
        idx = valid.reshape(-1).nonzero().squeeze(-1)  # (N,) flat positions of the valid tokens
        chosen.view(-1)[idx[torch.topk(cov.reshape(-1)[idx], k).indices]] = True
        return chosen

    def weights(self, tokens: TokenBatch) -> Tensor:
        self._chosen = chosen = self.selected(tokens)  # extra_loss, called next on the same tokens, reuses it
        self._stats = {"penalised_ratio": chosen.sum().item() / max(tokens.mask.sum().item(), 1)}
        return (~chosen).float()

    def extra_loss(self, tokens: TokenBatch) -> Tensor:
        chosen = self._chosen if self._chosen is not None else self.selected(tokens)
        self._chosen = None
        log_ratio = (tokens.logprobs - tokens.old_logprobs).clamp(-20.0, 20.0)
        penalty = -tokens.advantages * log_ratio.exp() + self.coef * log_ratio.abs()
        return torch.where(chosen, penalty, torch.zeros_like(penalty))

    def metrics(self) -> dict[str, float]:
        return dict(self._stats)


class EntropyAdvantage(TokenWeighting):
    """Entropy advantage (Cheng et al., arXiv 2506.14758): Â' = Â + min(α·H, |Â|/κ), H detached.

    The bonus can never flip the sign of a negative advantage (it is capped at |Â|/κ, κ > 1), and
    it is 0 where Â = 0.

    Args:
        alpha: α > 0, entropy scale (0.4 in the paper).
        kappa: κ > 1, the cap divisor (2 in the paper).
    """

    zero_advantage_inert = True  # Â' = 0 + min(α·H_old, 0) = 0

    def __init__(self, alpha: float = 0.4, kappa: float = 2.0) -> None:
        check(alpha > 0, f"{KEY}.alpha must be > 0, got {alpha}")
        check(kappa > 1, f"{KEY}.kappa must be > 1, got {kappa}")
        self.alpha, self.kappa = alpha, kappa

    def advantages(self, tokens: TokenBatch) -> Tensor:
        entropy = (tokens.old_entropy if tokens.old_entropy is not None else tokens.entropy).detach()
        return tokens.advantages + torch.minimum(self.alpha * entropy, tokens.advantages.abs() / self.kappa)


class EntropyBonus(TokenWeighting):
    """Entropy regularisation: −coef · H per token, aggregated like the loss (token-mean: −coef·mean H).

    Args:
        coef: c_H ≥ 0.
    """

    def __init__(self, coef: float = 1e-3) -> None:
        check(coef >= 0, f"{KEY}.coef must be >= 0, got {coef}")
        self.coef = coef

    def extra_loss(self, tokens: TokenBatch) -> Tensor:
        check(tokens.entropy is not None, "EntropyBonus needs the entropy of π_θ with its gradient")
        return -self.coef * tokens.entropy


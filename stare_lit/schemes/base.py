"""Token-weighting schemes: how each completion token's share of the policy gradient is set.

A scheme is picked in YAML by class_path (``stare_lit.schemes.STARE``). Per loss computation
the module hands it a ``TokenBatch`` and asks, in this order:

    advantages(tokens) -> (B, T)   per-token advantages (ERPO, entropy advantage reshape them)
    mask(tokens)       -> (B, T)   which tokens enter the loss (80/20 keeps the high-entropy ones)
    weights(tokens)    -> (B, T)   ω multiplying the clipped surrogate (STARE, STEER, Clip-Cov)
    extra_loss(tokens) -> (B, T)   a differentiable per-token addend (KL-Cov, entropy bonus)

and once per training step, before any update, ``update(batch_entropy)`` with the world-level
token-mean entropy of π_old (STARE's gate). After the step the module logs ``metrics()`` (as
``scheme/<name>``) and shows ``progress()`` on the progress bar. Anything that changes gradients lives
here and is checkpointed through ``state_dict()`` / ``load_state_dict()``; callbacks only watch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from stare_lit.errors import check

@dataclass
class TokenBatch:
    """What a scheme may look at for one loss computation. All (B, T); rows come in groups of G."""

    logprobs: Tensor  # log π_θ of the sampled tokens (carries grad: detach unless you mean it)
    old_logprobs: Tensor  # log π_old
    advantages: Tensor  # Â broadcast over each completion's tokens
    mask: Tensor  # bool, True on completion tokens
    entropy: Tensor | None = None  # entropy of π_θ per position (carries grad)
    old_entropy: Tensor | None = None  # entropy of π_old per position
    ref_logprobs: Tensor | None = None  # log π_ref, when the module has a reference model
    group_size: int = 1  # G: rows g*G .. g*G+G-1 are one prompt's completions
    rows: slice | None = None  # where these rows sit in the step batch (None: they are all of it)


class TokenWeighting:
    """Base scheme: plain GRPO (ω ≡ 1, advantages and mask unchanged). Override what you change."""

    needs_reference: bool = False  # ask the module for log π_ref even when the KL coefficient is 0
    needs_whole_groups: bool = False  # statistics within a prompt's group: micro-batches must hold whole groups
    # True only if a row with Â = 0 reaches this scheme's advantages, mask, weights, extra loss and statistics
    # through its π_old values and its mask alone (never π_θ, whose gradient is 0 there): with β = 0 the
    # update then skips such rows' forward and backward and hands the scheme their π_old values.
    zero_advantage_inert: bool = False

    def update(self, batch_entropy: float) -> None:
        """Called once per training step with the token-mean entropy of π_old over the batch."""

    def prepare(self, step_tokens: TokenBatch) -> None:
        """Called before each update's micro-batches with the whole step batch under π_old
        (logprobs = old log-probs); for statistics over the step rather than the micro-batch.
        Not called when the step is one micro-batch and μ = 1 (the two scopes coincide)."""

    def advantages(self, tokens: TokenBatch) -> Tensor:
        return tokens.advantages

    def mask(self, tokens: TokenBatch) -> Tensor:
        return tokens.mask

    def weights(self, tokens: TokenBatch) -> Tensor | None:
        """(B, T) detached weights, or None for ω ≡ 1 (the loss then skips the multiply)."""
        return None

    def extra_loss(self, tokens: TokenBatch) -> Tensor | None:
        """(B, T) differentiable per-token loss added before aggregation, or None."""
        return None

    def metrics(self) -> dict[str, float]:
        """Scalars to log after the last loss computation."""
        return {}

    def progress(self) -> dict[str, float]:
        """What the progress bar shows of the scheme after a step (a closed loop's state, e.g. STARE's
        gate), by name; {} for a scheme with nothing to show."""
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GRPO(TokenWeighting):
    """Uniform credit: every completion token gets its sequence's advantage (ω ≡ 1)."""

    zero_advantage_inert = True


class Compose(TokenWeighting):
    """Several schemes at once: advantages and masks chained in order, weights multiplied, extra
    losses summed, each scheme's state and metrics kept under its index, their progress merged.

    Args:
        schemes: the schemes, applied in order (e.g. EntropyAdvantage then STARE).
    """

    def __init__(self, schemes: list[TokenWeighting]) -> None:
        check(len(schemes) >= 1, "model.scheme.init_args.schemes is empty; list at least one scheme")
        self.schemes = schemes
        self.needs_reference = any(s.needs_reference for s in schemes)
        self.needs_whole_groups = any(s.needs_whole_groups for s in schemes)
        self.zero_advantage_inert = all(s.zero_advantage_inert for s in schemes)

    def update(self, batch_entropy: float) -> None:
        for s in self.schemes:
            s.update(batch_entropy)

    def prepare(self, step_tokens: TokenBatch) -> None:
        for s in self.schemes:
            s.prepare(step_tokens)

    def advantages(self, tokens: TokenBatch) -> Tensor:
        for s in self.schemes:
            tokens = replace(tokens, advantages=s.advantages(tokens))
        return tokens.advantages

    def mask(self, tokens: TokenBatch) -> Tensor:
        for s in self.schemes:
            tokens = replace(tokens, mask=s.mask(tokens))
        return tokens.mask

    def weights(self, tokens: TokenBatch) -> Tensor | None:
        out = None
        for s in self.schemes:
            w = s.weights(tokens)
            out = w if out is None else (out if w is None else out * w)
        return out

    def extra_loss(self, tokens: TokenBatch) -> Tensor | None:
        terms = [t for t in (s.extra_loss(tokens) for s in self.schemes) if t is not None]
        return sum(terms[1:], terms[0]) if terms else None

    def metrics(self) -> dict[str, float]:
        return {f"{i}_{type(s).__name__}/{k}": v for i, s in enumerate(self.schemes) for k, v in s.metrics().items()}

    def progress(self) -> dict[str, float]:
        """Every part's progress, merged (a later part's value wins a shared name)."""
        return {k: v for s in self.schemes for k, v in s.progress().items()}

    def state_dict(self) -> dict:
        return {str(i): s.state_dict() for i, s in enumerate(self.schemes)}

    def load_state_dict(self, state: dict) -> None:
        for i, s in enumerate(self.schemes):
            s.load_state_dict(state[str(i)])

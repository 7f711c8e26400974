"""Non-finite numbers in a step: detected on every rank at once, the step skipped, the run stopped after
too many in a row with the last good state saved.

A NaN or ±inf in log-probs, entropy (which is how non-finite logits show up), the sampler's
probabilities, advantages, loss or gradient norm makes :func:`require_finite` raise
:class:`NonFiniteStep` on every rank together (one all-reduce): a rank that skipped backward alone
would leave the others waiting in FSDP's collectives. The module then makes no optimizer step, drops
the step's gradients and warns; ``model.update.max_nonfinite_steps`` skips in a row save
``last-good-step=K.ckpt`` and stop with one line.
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch
from torch import Tensor

from stare_lit.errors import NonFiniteError
from stare_lit.ops.distributed import all_reduce_sum
from stare_lit.rollout.base import Rollout
from stare_lit.train.step_log import StepOutput


class NonFiniteStep(Exception):
    """Raised inside a step on every rank when a rank saw a non-finite ``what``; the step is skipped."""

    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


def require_finite(what: str, *values: Tensor, mask: Tensor | None = None, device=None) -> None:
    """Raise ``NonFiniteStep(what)`` if any rank has a NaN/±inf in ``values`` (where ``mask``, if given).
    Every rank must call it: the check is one all-reduce."""
    bad = torch.zeros((), device=device if device is not None else values[0].device)
    for v in values:
        nonfinite = ~torch.isfinite(v.detach())
        bad += (nonfinite if mask is None else nonfinite & mask).sum()
    if all_reduce_sum(bad).item() > 0:
        raise NonFiniteStep(what)


def sampler_fault(error: RuntimeError) -> bool:
    """torch.multinomial met NaN/±inf probabilities ("probability tensor contains either inf, nan or
    element < 0"): non-finite logits while sampling, a NonFiniteStep like any other."""
    return "inf" in str(error) or "nan" in str(error)


def finite_sampling(sample: Callable[[], Rollout], device) -> Rollout:
    """``sample()``; a sampler that met NaN/±inf probabilities (non-finite logits) is a NonFiniteStep on
    every rank, like any other non-finite number of the step. Every rank must call it."""
    try:
        rollout, bad = sample(), torch.zeros((), device=device)
    except RuntimeError as e:
        if not sampler_fault(e):
            raise
        rollout, bad = None, torch.tensor(math.nan, device=device)
    require_finite("logits while sampling the rollout", bad)  # every rank takes part
    return rollout


def skipped_step_outputs(rows: int, device) -> StepOutput:
    """What a skipped step hands the callbacks: ``rows`` rows with no valid token (they skip it)."""
    zeros = torch.zeros(rows, 1, device=device)  # (N, 1)
    return StepOutput(loss=torch.tensor(math.nan), entropy=zeros, surprisal=zeros, advantages=zeros,
                      weights=zeros, mask=zeros.bool(), rewards=torch.full((rows,), math.nan, device=device))


def save_last_good_and_stop(trainer, fault: NonFiniteStep, in_a_row: int, step: int) -> None:
    """Save the last good state next to the run's checkpoints (the skipped steps changed nothing), then
    raise the one-line error that stops the run."""
    callback = trainer.checkpoint_callback
    folder = (callback.dirpath if callback is not None and callback.dirpath
              else os.path.join(trainer.log_dir or trainer.default_root_dir, "checkpoints"))  # collective
    path = os.path.join(folder, f"last-good-step={step}.ckpt")
    trainer.save_checkpoint(path, weights_only=False)  # full, to resume from; explicit, or Lightning logs its default
    raise NonFiniteError(
        f"{in_a_row} steps in a row had non-finite {fault.what} (the last at step {step}); stopped. The last "
        f"good state is in {path} (the skipped steps changed nothing); resume from it with --ckpt_path after "
        f"lowering model.optimizer's lr, using model.policy.dtype: float32, or raising "
        "model.update.max_nonfinite_steps")

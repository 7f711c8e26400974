"""One real training step on a fixed rollout with mixed rewards, and the check that it is live; and the
GRPOModule the end-to-end tests fit (``make_module``).

End-to-end tests that claim an equality or a scheme's effect run on a batch whose advantages are not
all 0 (``assert_live``): on a flat batch the loss, the gradients and every scheme's weights are 0 or
inert, and any two settings "agree".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from stare_lit.data.tasks.arithmetic import ArithmeticReward
from stare_lit.experience import ValidationSettings
from stare_lit.ops.advantages import equal_groups
from stare_lit.rollout.base import Sampling
from stare_lit.module import GRPOModule
from stare_lit.train.step_log import StepOutput
from tests.helpers import MixedReward

G = 4
# The group of "9+1=" is flat by construction (MixedReward); the others are mixed on this seed.
PROMPTS = ["1+2=", "3+4=", "9+1=", "2+5="]
SEED = 7


def assert_live(rewards: Tensor, advantages: Tensor, mask: Tensor, group_size: int = G) -> float:
    """Assert that some group has unequal rewards and some loss token a nonzero advantage.

    Args:
        rewards: (N,) the step's rewards (NaN: unscorable).
        advantages: (N, T) the advantages the loss used.
        mask: (N, T) its loss tokens.
    Returns the share of non-flat groups.
    """
    live = (~equal_groups(rewards, group_size)).float().mean().item()
    assert live > 0, "every group is flat: advantages, loss and gradients are all 0"
    assert (advantages[mask.bool()] != 0).any(), "no loss token has a nonzero advantage"
    return live


def live_module(policy, **kwargs) -> GRPOModule:
    """A GRPOModule on MixedReward with plain SGD (the step is p − lr·g: parameters compare like gradients)."""
    defaults = dict(policy=policy, rewards=[MixedReward()], group_size=G, sampling=Sampling(max_new_tokens=8),
                    optimizer=lambda params: torch.optim.SGD(params, lr=0.1))
    return GRPOModule(**(defaults | kwargs))


def make_module(policy, **kwargs) -> GRPOModule:
    """A GRPOModule on the arithmetic task's reward with AdamW, as the end-to-end tests fit it."""
    defaults = dict(policy=policy, rewards=[ArithmeticReward()], group_size=4,
                    sampling=Sampling(max_new_tokens=10), validation=ValidationSettings(samples=2),
                    optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3))
    return GRPOModule(**(defaults | kwargs))


@dataclass
class Step:
    outputs: StepOutput  # what training_step returns (rewards, advantages, weights, mask, loss, ...)
    stats: dict  # what the last step logged of its first update (loss, grad_norm, kl, rows_skipped, ...)
    history: list[dict]  # the same per step
    grads: list[dict[str, Tensor]]  # per optimizer step, before clipping
    params: list[dict[str, Tensor]]  # per optimizer step, after it
    extra: list  # the scheme's extra loss per loss computation (None: none)


def step_once(module: GRPOModule, prompts: list[str] = PROMPTS, steps: int = 1) -> Step:
    """``steps`` real training steps (``GRPOModule.train_on``) outside a Trainer: seeded rollout, rewards,
    advantages, old pass, scheme, loss, clipping and the optimizer step, as in a fit."""
    torch.manual_seed(0)
    module.configure_model()
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    module.optimizers = lambda: optimizer
    module.lr_schedulers = lambda: None
    module.manual_backward = lambda loss: loss.backward()
    module.experience.seed = SEED
    grads, params, extra, history = [], [], [], []
    clip_and_step = module.updater.clip_and_step

    def recorded_step(model, opt):
        grads.append({n: p.grad.clone() for n, p in module.model.named_parameters() if p.grad is not None})
        norm = clip_and_step(model, opt)
        params.append({n: p.detach().clone() for n, p in module.model.named_parameters()})
        return norm

    extra_loss = module.scheme.extra_loss

    def recorded_extra(tokens):
        e = extra_loss(tokens)
        extra.append(None if e is None else e.detach().clone())
        return e

    module.updater.clip_and_step = recorded_step
    module.scheme.extra_loss = recorded_extra
    module.log_step = lambda generated, kept, scored, flat, correct, tokens, step_stats, times: history.append(step_stats)
    outputs = None
    for _ in range(steps):
        outputs = module.train_on({"prompt": list(prompts)})
    return Step(outputs, history[-1], history, grads, params, extra)


def assert_same_update(a: Step, b: Step, index: int = 0, rtol: float = 1e-4, atol: float = 1e-6) -> None:
    """Same gradients before, and same parameters after, optimizer step ``index``; and the gradient is not 0.

    The tolerance: the same sums in another order (micro-batches, chunked passes) in float32.
    """
    norm = sum(g.double().square().sum() for g in a.grads[index].values()) ** 0.5
    assert norm > 1e-6, "zero gradient: the comparison would pass for any setting"
    assert a.grads[index].keys() == b.grads[index].keys()
    for n in a.grads[index]:
        torch.testing.assert_close(a.grads[index][n], b.grads[index][n], rtol=rtol, atol=atol, msg=n)
        torch.testing.assert_close(a.params[index][n], b.params[index][n], rtol=0, atol=atol, msg=n)

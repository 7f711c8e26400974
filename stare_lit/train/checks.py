"""Up-front checks of the module's settings that need more than a comparison: each bad value gets one
``ConfigError`` naming its YAML key and the fix, in ``GRPOModule.__init__``, before anything is written.

The optimizer and the LR scheduler are ``OptimizerCallable`` / ``LRSchedulerCallable`` (a class and
its ``init_args``, called later on the model's parameters): torch checks their arguments only when
they are built, after the run has started. So they are built here once on a dummy parameter, and
torch's ``ValueError`` (a negative lr, betas outside [0, 1), ...) becomes one line naming the setting.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Any

import torch

from stare_lit.errors import ConfigError, check


def is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    return is_number(value) and math.isfinite(value)


def check_optimizer(optimizer, lr_scheduler) -> None:
    """Build ``optimizer`` (and ``lr_scheduler`` on it) on a dummy parameter; a ValueError or TypeError
    from torch becomes a ConfigError naming model.optimizer / model.lr_scheduler.

    Other errors are left to the real construction: a dummy CPU parameter may not support what the
    real ones do (``fused=True`` wants them on a GPU, say), and that is not a bad setting.
    """
    try:
        built = optimizer([torch.nn.Parameter(torch.zeros(1))])
    except (ValueError, TypeError) as e:
        raise ConfigError(f"model.optimizer: {_describe(optimizer)} refuses its settings ({_first_line(e)}); "
                          "fix model.optimizer.init_args") from None
    except Exception:  # noqa: BLE001 - see the docstring
        return
    if lr_scheduler is None:
        return
    try:
        lr_scheduler(built)
    except (ValueError, TypeError, ZeroDivisionError) as e:
        raise ConfigError(f"model.lr_scheduler: {_describe(lr_scheduler)} refuses its settings "
                          f"({_first_line(e)}); fix model.lr_scheduler.init_args") from None
    except Exception:  # noqa: BLE001
        return


def check_finite_floats(settings: object, key: str) -> None:
    """No float constructor argument of ``settings`` (a scheme, say), as stored under its name, is ±inf:
    ``inf`` passes ``x > 0`` style checks and would make every step non-finite. NaN is left to the
    constructors' own checks (it fails every comparison), because a scheme may store NaN for a value
    it does not know yet (STARE's relative target before its baseline steps are in)."""
    for name in inspect.signature(type(settings).__init__).parameters:
        value = getattr(settings, name, None)
        if isinstance(value, float):
            check(not math.isinf(value), f"{key}.{name} must be a finite number, got {value}")


def _describe(factory) -> str:
    """The class a factory builds (jsonargparse hands a functools.partial holding it), else its name."""
    for part in (*getattr(factory, "args", ()), factory):
        if isinstance(part, type):
            return f"{part.__module__}.{part.__qualname__}"
    name = getattr(factory, "__qualname__", "")
    return name if name and "<" not in name else "the given callable"


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text[:200]


def check_module_settings(*, rewards: int, updates_per_batch: int, micro_batch_size: int | None,
                          accuracy_reward: int, val_samples: int, val_temperature: float,
                          max_nonfinite_steps: int, grad_clip: float | None, advantage_eps: float,
                          logprob_chunk_size: int | None, peak_flops: float | None, system_prompt: str | None,
                          chat_template: bool) -> None:
    """GRPOModule's plain settings (``rewards``: how many), each checked with one line naming its key."""
    check(updates_per_batch >= 1, f"model.updates_per_batch must be >= 1, got {updates_per_batch}")
    check(micro_batch_size is None or micro_batch_size >= 1, "model.micro_batch_size must be >= 1 or null")
    check(0 <= accuracy_reward < rewards, f"model.accuracy_reward must index model.rewards, got {accuracy_reward}")
    check(val_samples >= 1, f"model.val_samples must be >= 1, got {val_samples}")
    check(finite(val_temperature) and val_temperature >= 0,
          f"model.val_temperature must be >= 0 (0 = greedy), got {val_temperature}")
    check(val_temperature > 0 or val_samples == 1, "model.val_temperature 0 (greedy) needs model.val_samples 1")
    check(max_nonfinite_steps >= 1, f"model.max_nonfinite_steps must be >= 1, got {max_nonfinite_steps}")
    # A negative grad_clip would make clip_grad_norm_ flip every gradient: the run would climb the loss.
    check(grad_clip is None or (finite(grad_clip) and grad_clip > 0),
          f"model.grad_clip must be > 0 (the max global gradient norm, e.g. 1.0) or null for no clipping, got {grad_clip}")
    check(finite(advantage_eps) and advantage_eps >= 0, f"model.advantage_eps must be >= 0, got {advantage_eps}")
    check(logprob_chunk_size is None or logprob_chunk_size >= 1,
          f"model.logprob_chunk_size must be >= 1 (positions per log-prob pass) or null (follow the vocabulary), "
          f"got {logprob_chunk_size}")
    check(peak_flops is None or (finite(peak_flops) and peak_flops > 0),
          f"model.peak_flops must be > 0 (FLOP/s, e.g. 989e12) or null, got {peak_flops}")
    check(system_prompt is None or chat_template,
          "model.system_prompt is set but model.chat_template is false, so it would never be used; "
          "set model.chat_template: true or remove model.system_prompt")

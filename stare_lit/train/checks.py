"""Up-front checks of the module's settings that need more than a comparison: each bad value gets one
``ConfigError`` naming its YAML key and the fix, in ``GRPOModule.__init__``, before anything is written.
(A settings group — ``model.update``, ``model.validation``, ... — checks its own values when it is built.)

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


def check_module_settings(*, rewards: int, group_size: int, accuracy_reward: int, peak_flops: float | None) -> None:
    """GRPOModule's settings that are not in a settings group that checks itself (``rewards``: how many),
    each with one line naming its key. ``stare-lit evaluate`` checks a run config with it too."""
    check(group_size >= 2, f"model.group_size must be >= 2 (GRPO compares samples of a prompt), got {group_size}")
    check(0 <= accuracy_reward < rewards,
          f"model.validation.accuracy_reward must index model.rewards, got {accuracy_reward}")
    check(peak_flops is None or (finite(peak_flops) and peak_flops > 0),
          f"model.peak_flops must be > 0 (FLOP/s, e.g. 989e12) or null, got {peak_flops}")

"""Verifiable rewards: the reward classes, the runner that scores a batch (errors, time limits, a
worker process), and the sandbox that runs model-written code.

The names below load on first use (PEP 562), so that a process can import the sandbox and the judge
(``stare_lit.rewards.sandbox``, ``stare_lit.rewards.judge``: the standard library only) without
torch and math-verify.
"""

import importlib

_EXPORTS = {"ErrorScore": "base", "Reward": "base", "MathAnswerReward": "base", "ExactMatchReward": "base",
            "FormatReward": "base", "OverlongPenalty": "base", "CodeTestReward": "code", "RewardError": "runner",
            "RewardRunner": "runner", "Scoring": "runner", "Sandbox": "sandbox"}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'stare_lit.rewards' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"stare_lit.rewards.{_EXPORTS[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

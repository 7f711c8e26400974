"""Rollout engines: G sampled completions per prompt → :class:`Rollout`.

``base``: the engine interface and the Rollout it returns; ``hf``: the Hugging Face ``generate``
reference; ``fast``: FastRollout, the default (static KV cache, CUDA-graph decode); ``streams``:
random streams that a resumed run reproduces exactly.
"""

from stare_lit.rollout.base import Sampling, Rollout, RolloutEngine
from stare_lit.rollout.hf import HFGenerate
from stare_lit.rollout.fast import FastRollout

__all__ = ["Sampling", "Rollout", "RolloutEngine", "HFGenerate", "FastRollout"]

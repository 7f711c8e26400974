"""Random numbers a resumed run can reproduce exactly.

Two mechanisms, for two kinds of randomness:

- **Rollout sampling** draws from a generator seeded per rollout: ``stream_seed(base, stream,
  counter, rank)`` inside :func:`seeded`. What rollout n samples then depends only on (base seed, n,
  rank) — not on how much randomness validation, a callback or a resume consumed before it. A
  resumed run therefore samples exactly what the uninterrupted run sampled, and two schemes run with
  the same seed see the same sampling noise at every step (common random numbers: their difference
  is less noisy).
- **Everything else** on the global RNGs (dropout in a user's model, a user's callback) is saved
  with :func:`rng_states` and put back with :func:`set_rng_states` (torch CPU and current CUDA
  device, Python ``random``, NumPy). The states are plain tensors, lists and numbers, so a
  checkpoint holding them still loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import random
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

#: Streams of :func:`stream_seed`: training, validation and ``stare-lit evaluate`` rollouts never share a seed.
TRAIN, VALIDATION, EVALUATION = 0, 1, 2


def stream_seed(*parts: int) -> int:
    """A 63-bit seed from integers; distinct tuples give unrelated seeds (a hash, not a sum)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@contextmanager
def seeded(seed: int, device: torch.device):
    """Run the block on torch's global RNG (CPU, and ``device`` if CUDA) seeded with ``seed``; restore it after.

    Hugging Face ``generate`` samples with ``torch.multinomial`` on the global RNG, which takes no
    generator argument: forking the global state is how a rollout gets its own stream.
    """
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)  # the current device only
        yield


def rng_states() -> dict[str, Any]:
    """The global RNG states of this process, as tensors, lists and numbers."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "python": list(random.getstate()),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Put back what :func:`rng_states` returned."""
    torch.set_rng_state(states["torch"])
    version, internal, gauss_next = states["python"]
    random.setstate((version, tuple(internal), gauss_next))
    n = states["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])

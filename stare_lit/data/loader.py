"""A resumable training loader: prompt batches that pick up mid-epoch exactly where a run stopped.

``PromptLoader`` is what both DataModules return from ``train_dataloader``. Lightning saves its
``state_dict`` in every checkpoint (any train loader with ``state_dict``/``load_state_dict`` is
"stateful" to Lightning) and hands it back on resume, so a run killed at step k and resumed from
its step-k checkpoint sees batch k+1 next — not batch 0 of the epoch again, which is what a plain
``DataLoader`` gives (Lightning then only warns).

Why not a ``DataLoader`` with a shuffling sampler:
- its position is the index of the last batch it *yielded*, and nothing else in it is saved;
- under several processes Lightning swaps its sampler for a ``DistributedSampler``, whose order
  we would then have to checkpoint too;
- prompt rows are pre-formatted text, so worker processes would buy nothing.

The order of epoch e is a permutation drawn from a generator seeded with ``seed + e``: it depends
on nothing but (seed, epoch), never on the global RNG, so a resumed run and an uninterrupted run
see the same batches. Under several processes each rank takes every world_size-th index of the
permutation (trimmed to a multiple of world_size, so all ranks make the same number of steps).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from stare_lit.errors import check


class PromptLoader:
    """Batches of rows from ``dataset``, reshuffled every epoch, resumable mid-epoch.

    Args:
        dataset: anything indexable whose items are row dicts (a list, a ``datasets.Dataset``).
        batch_size: rows per batch; incomplete batches are dropped (a GRPO step wants them full).
        collate: turns a list of rows into a batch.
        seed: seeds the order of every epoch (epoch e uses ``seed + e``).
        shuffle: False keeps the dataset's order.
        rank: this process's index among ``world_size`` (its share of every epoch).
        world_size: processes sharing the data.
    """

    def __init__(self, dataset: Sequence[dict], batch_size: int, collate: Callable[[list[dict]], Any],
                 seed: int = 0, shuffle: bool = True, rank: int = 0, world_size: int = 1) -> None:
        check(0 <= rank < world_size, f"PromptLoader: rank {rank} is outside world_size {world_size}")
        self.dataset, self.batch_size, self.collate = dataset, batch_size, collate
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.epoch = 0  # the epoch being (or about to be) read
        self.consumed = 0  # batches of ``epoch`` already handed out
        self._next_epoch = False  # __iter__ starts a new epoch, unless a checkpoint just set the position

    def __len__(self) -> int:
        return (len(self.dataset) // self.world_size) // self.batch_size

    def indices(self, epoch: int) -> list[int]:
        """This rank's row indices for ``epoch``, in order."""
        n = len(self.dataset)
        if self.shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        else:
            order = list(range(n))
        order = order[: n - n % self.world_size]
        return order[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[Any]:
        if self._next_epoch or self.consumed >= len(self):
            self.epoch, self.consumed = self.epoch + 1, 0
        self._next_epoch = True
        rows = self.indices(self.epoch)
        while self.consumed < len(self):
            start = self.consumed * self.batch_size
            batch = self.collate([self.dataset[i] for i in rows[start : start + self.batch_size]])
            self.consumed += 1  # counted on hand-out: a checkpoint taken after this step resumes after it
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "consumed": self.consumed, "seed": self.seed, "world_size": self.world_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        check(state.get("world_size", 1) == self.world_size,
              f"the checkpoint's data position is for {state.get('world_size')} processes, this run has "
              f"{self.world_size}; resume on the same number of devices × nodes")
        self.epoch, self.consumed, self.seed = int(state["epoch"]), int(state["consumed"]), int(state["seed"])
        self._next_epoch = False  # the next __iter__ continues this epoch

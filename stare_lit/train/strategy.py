"""FSDP2 through Lightning, with sharded checkpoints that are swapped in whole.

Lightning's ``ModelParallelStrategy`` writes a sharded checkpoint (a directory: one ``.distcp`` file
per rank, ``.metadata`` and ``meta.pt``) into its final place. Saving ``last.ckpt`` again writes over
the previous one's files in place, so a crash mid-save leaves a directory of old and new shards that
may load without complaint. :class:`AtomicModelParallelStrategy` has every rank write into
``.NAME.tmp`` beside it; once all ranks are done, rank 0 swaps it in (the old directory is renamed
aside, the new one renamed into place, the old one deleted). A crash before the swap leaves the
previous checkpoint untouched under its name; a crash inside the swap — between two renames —
leaves it complete as ``.NAME.old``. A single-file checkpoint (``save_distributed_checkpoint: false``)
goes through the trainer's checkpoint plugin, which stare-lit makes atomic
(:class:`stare_lit.train.AtomicCheckpointIO`).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from lightning.pytorch.strategies import ModelParallelStrategy

from stare_lit.train.checkpoint import fsync_dir
from stare_lit.errors import ConfigError


class AtomicModelParallelStrategy(ModelParallelStrategy):
    """``ModelParallelStrategy`` (same arguments) whose sharded checkpoints are written, then swapped in whole."""

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath, storage_options: Any | None = None) -> None:
        if not self._save_distributed_checkpoint:
            return super().save_checkpoint(checkpoint, filepath, storage_options)
        path = Path(self.broadcast(str(filepath)))  # every rank writes under rank 0's name
        tmp = path.with_name(f".{path.name}.tmp")
        if self.global_rank == 0:
            _remove(tmp)  # what a crashed save left
        self.barrier("stare_lit.save.start")
        super().save_checkpoint(checkpoint, tmp, storage_options)
        self.barrier("stare_lit.save.written")
        if self.global_rank == 0:
            swap_in(tmp, path)
        self.barrier("stare_lit.save.swapped")


def swap_in(new: Path, path: Path) -> None:
    """Put the finished directory ``new`` at ``path``, replacing what is there (a file or a directory)."""
    old = path.with_name(f".{path.name}.old")
    _remove(old)
    if path.exists() or path.is_symlink():
        os.rename(path, old)
    os.rename(new, path)
    fsync_dir(path.parent)
    _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


# Lightning's names of FSDPStrategy (FSDP1) in ``trainer.strategy`` (its strategy registry).
_FSDP1_NAMES = {"fsdp", "fsdp_cpu_offload"}


def refuse_fsdp1(strategy: Any) -> None:
    """One ConfigError, before anything runs, for Lightning's FSDPStrategy (FSDP1) in ``trainer.strategy``.

    stare-lit's rollout under gathered weights, per-layer wrapping and sharded resume are written for
    FSDP2 (``fully_shard``) and were checked on a GPU with :class:`AtomicModelParallelStrategy` only;
    FSDP1's flat parameters would need their own gather for generation, untested here.

    Args:
        strategy: ``trainer.strategy`` as given: a registry name, a class_path config, or a Strategy.
    """
    from lightning.pytorch.strategies import FSDPStrategy

    if isinstance(strategy, str):
        fsdp1 = strategy.lower() in _FSDP1_NAMES
    elif isinstance(strategy, FSDPStrategy):
        fsdp1 = True
    else:  # a class_path config (jsonargparse Namespace or dict)
        path = strategy.get("class_path", "") if hasattr(strategy, "get") else ""
        fsdp1 = str(path).rsplit(".", 1)[-1] == "FSDPStrategy"
    if fsdp1:
        raise ConfigError(
            "trainer.strategy: fsdp (Lightning's FSDPStrategy, FSDP1) is not supported: stare-lit's rollout "
            "under gathered weights and its sharded checkpoints are built and GPU-checked for FSDP2 only; use "
            "class_path: stare_lit.train.AtomicModelParallelStrategy (see configs/fsdp_gpu.yaml)")

"""Checkpoint files that are either complete or absent, and load without running pickled code.

``stare-lit fit`` installs :class:`AtomicCheckpointIO` as the trainer's checkpoint plugin by default
(``trainer.plugins`` in ``--print_config``). Lightning's own ``TorchCheckpointIO`` opens the target
file and writes into it: a crash, a full disk or a pre-empted node mid-write leaves a truncated
``last.ckpt`` — the one file a resume needs. Here every file is written next to its target under a
temporary name, flushed to disk, then renamed over the target (``os.replace`` is atomic on POSIX
and Windows); the directory entry is synced too. A reader therefore sees the old checkpoint or the
new one, never half of one, and ``last.ckpt`` is always complete.

Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only, so
a checkpoint from elsewhere cannot run code. stare-lit's own checkpoints hold nothing else (the
module's RNG states and run counters are stored as tensors and numbers for that reason).

Sharded checkpoints (``ModelParallelStrategy``, a directory per checkpoint) are written by
``torch.distributed.checkpoint``, not through this plugin; ``stare_lit.train.AtomicModelParallelStrategy``
makes them atomic.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from stare_lit.errors import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints atomically (temp file, fsync, rename); load them with ``weights_only``.

    Args:
        weights_only: load with ``torch.load(weights_only=True)``. Turn off only for a checkpoint you
            trust that holds other Python objects (it will run their pickled code).
    """

    def __init__(self, weights_only: bool = True) -> None:
        super().__init__()
        self.weights_only = weights_only

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)  # atomic: readers see the old file or the new one
        finally:
            tmp.unlink(missing_ok=True)  # only left when the write failed
        fsync_dir(path.parent)

    def load_checkpoint(self, path, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        weights_only = self.weights_only if weights_only is None else weights_only
        path = Path(path)
        check_checkpoint_file(path)
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=weights_only)
        except pickle.UnpicklingError as e:
            if weights_only and "weights_only" in str(e):
                raise ConfigError(
                    f"ckpt_path: '{path}' holds Python objects that weights_only loading refuses "
                    f"({_first_line(e)}); if you trust the file, set trainer.plugins: [{{class_path: "
                    f"stare_lit.train.AtomicCheckpointIO, init_args: {{weights_only: false}}}}]") from None
            raise _unreadable(path, e) from None
        except (RuntimeError, EOFError, OSError) as e:
            raise _unreadable(path, e) from None


def check_checkpoint_file(path) -> None:
    """Fail with one line unless ``path`` is a complete checkpoint file (cheap: reads the zip directory only).

    ``torch.save`` writes a zip archive whose directory sits at the end of the file, so a truncated
    file, or one that is not a checkpoint, is caught here before anything is loaded.
    """
    path = Path(path)
    if path.is_dir() and (path / ".metadata").is_file():
        return  # a sharded checkpoint (torch.distributed.checkpoint): checked by its own loader
    if not path.is_file():
        raise ConfigError(f"ckpt_path: '{path}' is not a checkpoint; give the path of a .ckpt file or of a "
                          "sharded checkpoint's directory (e.g. <run>/checkpoints/last.ckpt)")
    try:
        with zipfile.ZipFile(path):
            pass
    except (zipfile.BadZipFile, OSError) as e:
        raise _unreadable(path, e) from None


def _unreadable(path: Path, error: BaseException) -> ConfigError:
    return ConfigError(f"ckpt_path: '{path}' is not a readable checkpoint ({type(error).__name__}: "
                       f"{_first_line(error)}); it is truncated or not a checkpoint — use an earlier one")


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def fsync_dir(folder: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_same_model(mine: dict[str, torch.Tensor], saved: dict[str, torch.Tensor] | None) -> None:
    """One clear error, before Lightning's wall of size mismatches, when a checkpoint's ``state_dict``
    (``saved``) holds another model than the module's own (``mine``)."""
    if not saved:
        return  # a sharded checkpoint: torch.distributed.checkpoint checks it while loading
    missing = sorted(set(mine) - set(saved))
    wrong = [(k, tuple(saved[k].shape), tuple(v.shape)) for k, v in mine.items()
             if k in saved and tuple(saved[k].shape) != tuple(v.shape)]
    if missing:
        detail = f"{len(missing)} of this model's parameters are not in it, e.g. {missing[0]}"
    elif wrong:
        name, theirs, ours = wrong[0]
        detail = f"{name} is {theirs} in the checkpoint, {ours} here"
    else:
        return
    raise ConfigError(f"ckpt_path: the checkpoint holds another model than model.policy builds ({detail}); "
                      "resume with the model.policy the run was started with")


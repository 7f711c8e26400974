"""Up-front checks of a command's arguments: each bad one is one ``ConfigError`` naming the argument
(``compare --jobs``, ``evaluate --out_dir``) and the fix, raised before the command trains, loads a
model, downloads or starts a process — and so before it writes anything.

Writability is tested by creating (and at once removing) a file in the nearest folder that exists:
``os.access`` answers from the permission bits, which root ignores, and it cannot see a read-only
mount or a filesystem that takes no new entries (procfs).
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from stare_lit.errors import ConfigError, check


def check_count(value: int, setting: str, minimum: int = 1, meaning: str = "") -> None:
    """``value`` is an int >= ``minimum``; ``meaning`` says what it counts, for the message."""
    why = f" ({meaning})" if meaning else ""
    check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"{setting} must be >= {minimum}{why}, got {value!r}")


def check_positive(value: float, setting: str, meaning: str = "") -> None:
    """``value`` is a finite number > 0."""
    why = f" ({meaning})" if meaning else ""
    check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0,
          f"{setting} must be > 0{why}, got {value!r}")


def check_seed(value: int, setting: str) -> None:
    """A seed numpy (and so Lightning's seed_everything) takes: 0 <= seed < 2**32."""
    check(isinstance(value, int) and 0 <= value < 2**32, f"{setting} must be an integer in [0, 2**32), got {value!r}")


def check_file(path: str, setting: str, what: str = "file") -> Path:
    """``path`` is an existing regular file."""
    check(bool(path), f"{setting} is empty; give the path of a {what}")
    file = Path(path)
    check(not file.is_dir(), f"{setting}: '{path}' is a directory; give the path of a {what}")
    check(file.is_file(), f"{setting}: '{path}' does not exist; give the path of a {what}")
    return file


def read_yaml_mapping(path: str, setting: str, what: str = "YAML config") -> dict[str, Any]:
    """The mapping in the YAML file ``path``; a missing file, a directory, bad YAML or a non-mapping is one line."""
    file = check_file(path, setting, what)
    try:
        loaded = yaml.safe_load(file.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{setting}: '{path}' is not valid YAML ({_first_line(e)}); fix the file") from None
    check(isinstance(loaded, dict), f"{setting}: '{path}' is not a YAML mapping of settings (key: value)")
    return loaded


def check_output_dir(path: str, setting: str) -> None:
    """``path`` can be created, or exists, as a directory this process can write in."""
    check(bool(path), f"{setting} is empty; give the directory to write")
    folder = Path(path).expanduser()
    check(not folder.exists() or folder.is_dir(), f"{setting}: '{path}' is a file; give a directory")
    existing = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    check(existing.is_dir(), f"{setting}: '{path}' cannot be created: '{existing}' is a file, not a directory")
    try:
        fd, probe = tempfile.mkstemp(prefix=".stare-lit-write-test-", dir=existing)
    except OSError as e:
        raise ConfigError(f"{setting}: '{path}' cannot be written: nothing can be created in '{existing}' "
                          f"({e.strerror or type(e).__name__}); give a directory you can write to") from None
    os.close(fd)
    os.unlink(probe)


def check_device(device: str | None, setting: str) -> None:
    """``device`` is a torch device this machine has (None: the command picks one)."""
    if device is None:
        return
    import torch

    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"{setting}: {device!r} is not a device; give cpu, cuda or cuda:N") from None
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        check(count > 0, f"{setting} {device}: this machine has no CUDA device; use cpu")
        check(chosen.index is None or chosen.index < count,
              f"{setting} {device}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    elif chosen.type == "mps":
        check(torch.backends.mps.is_available(), f"{setting} {device}: MPS is not available here; use cpu")


def _first_line(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__

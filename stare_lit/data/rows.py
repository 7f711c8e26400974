"""Rows whose prompt cannot be generated from are dropped, counted and reported, before training starts.

A prompt that is empty (or only whitespace), ``None`` or not text at all (a number from a JSON file,
say) cannot be rolled out: Hugging Face ``generate`` fails on a batch of empty prompts with an
``IndexError`` deep inside, and a ``None`` fails the tokenizer. One such row in a large dataset is a
data problem, not a reason to refuse the whole run, so the choice here is: **drop** the row, and
warn once per split with the count and the first one (so it can be fixed). A run refuses with one
line only when what remains cannot train: no row at all, or no full batch.

Both data modules build their loaders with :func:`stare_lit.data.datamodule.train_loader` and
:func:`stare_lit.data.datamodule.val_loader`, which call :func:`usable_rows`; a DataModule of the user's own
that hands the module such a prompt anyway gets one error from ``GRPOModule.rollout`` before
``generate`` (:func:`check_prompts`).
"""

from __future__ import annotations

import warnings
from typing import Any

from stare_lit.errors import ConfigError


class DroppedRowsWarning(UserWarning):
    """Some rows of the data had an empty or non-text prompt and were left out."""


def usable(prompt: Any) -> bool:
    return isinstance(prompt, str) and prompt.strip() != ""


def usable_rows(rows, split: str):
    """``rows`` (a list of row dicts or a ``datasets.Dataset``) without those whose ``prompt`` is unusable."""
    prompts = rows["prompt"] if hasattr(rows, "column_names") else [row.get("prompt") for row in rows]
    bad = [i for i, prompt in enumerate(prompts) if not usable(prompt)]
    if not bad:
        return rows
    n = len(prompts)
    if len(bad) == n:
        raise ConfigError(f"data: all {n} {split} rows have an empty or non-text prompt (e.g. row {bad[0]}: "
                          f"{prompts[bad[0]]!r:.60}); check the prompt column (data.init_args.prompt_column) "
                          "and the data")
    warnings.warn(f"data: dropped {len(bad)} of {n} {split} rows whose prompt is empty or not text (first: row "
                  f"{bad[0]}, {prompts[bad[0]]!r:.60}); fix or remove them in the data", DroppedRowsWarning,
                  stacklevel=3)
    keep = sorted(set(range(n)) - set(bad))
    return rows.select(keep) if hasattr(rows, "select") else [rows[i] for i in keep]


def check_prompts(prompts: list) -> None:
    """One error, before ``generate``, for a batch holding a prompt that cannot be generated from."""
    for i, prompt in enumerate(prompts):
        if not usable(prompt):
            raise ConfigError(f"data: prompt {i} of a batch is empty or not text ({prompt!r:.60}); the data "
                              "module must give non-empty text prompts (stare_lit.data.rows.usable_rows drops others)")

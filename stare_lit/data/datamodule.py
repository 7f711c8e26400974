r"""Prompt data for RL with verifiable rewards: a dataset of questions with gold answers.

A ``PromptDataModule`` turns any Hugging Face dataset (``openai/gsm8k``) or local file(s) into
batches of prompts. Each row becomes ``{"prompt": <formatted text>, "answer": <gold>, ...}`` with
every other column kept, and a batch is the column-wise dict that :func:`collate_prompts` builds:

    rows  = [{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+3=", "answer": "5"}]
    batch = {"prompt": ["1+1=", "2+3="], "answer": ["2", "5"]}

The LightningModule reads ``batch["prompt"]`` and passes every other key, aligned with the
prompts, to the reward functions. There are no tensors here: tokenising is the module's job.

GSM8K, in the run's YAML:

    data:
      class_path: stare_lit.data.PromptDataModule
      init_args:
        path: openai/gsm8k
        name: main
        val_split: test
        prompt_column: question
        prompt_template: "Question: {question}\nAnswer step by step, then give \\boxed{{answer}}."
        answer_regex: "#### (.*)"

Design choices:
- Hub or local by what ``path`` looks like: an existing file or directory, a name ending in
  ``.json/.jsonl/.parquet/.csv``, or one starting with ``/``, ``./`` or ``~`` is local; anything
  else is a Hub dataset name. Nothing from the data is executed (no ``trust_remote_code``).
- Prompts are formatted with ``datasets.map`` (batched, cached) only on the rows that are used:
  the hold-out split and the ``max_*_prompts`` caps come first, so a capped run over a large
  dataset formats only what it trains on.
- A bad setting fails in ``__init__`` or ``setup`` with one ``ConfigError`` naming the YAML key;
  a missing gold or a regex that does not match is an error, never a silent placeholder answer.
- Training batches are full (incomplete ones are dropped): a GRPO step wants ``batch_size`` prompts.
  The training loader is a :class:`~stare_lit.data.PromptLoader`: its order depends only on
  ``seed`` and the epoch, each rank takes its own share of every epoch, and it resumes mid-epoch
  from a checkpoint. A prompt's group of completions is formed inside the module, so it stays on
  one rank.
"""

from __future__ import annotations

import codecs
import math
import os
import re
import string
from pathlib import Path
from typing import Any

import lightning as L
import torch
from datasets import Dataset, Value, load_dataset
from lightning.pytorch.utilities import rank_zero_info
from torch.utils.data import DataLoader

from stare_lit.errors import ConfigError, check
from stare_lit.data.loader import PromptLoader
from stare_lit.data.rows import usable, usable_rows

#: How the settings are spelled in YAML (``data: {class_path: ..., init_args: {...}}``).
SETTING = "data.init_args"

#: File extension → the ``datasets`` packaged builder that reads it.
BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv",
            ".jsonl.gz": "json", ".json.gz": "json"}  # gzipped JSON lines: HumanEval ships that way

_FORMAT_HINTS = {
    "json": "UTF-8 JSON: one object per line (.jsonl) or a list of objects (.json)",
    "parquet": "a Parquet table",
    "csv": "UTF-8 CSV with a header row",
}


def _key(name: str) -> str:
    return f"{SETTING}.{name}"


def collate_prompts(rows: list[dict[str, Any]]) -> dict[str, list]:
    """Turn a list of row dicts into a dict of aligned column lists (the training batch).

    Example: ``[{"prompt": "1+1=", "answer": "2"}, {"prompt": "2+3=", "answer": "5"}]``
    → ``{"prompt": ["1+1=", "2+3="], "answer": ["2", "5"]}``. Values are left as they are.
    """
    if not rows:
        raise ValueError("collate_prompts: got no rows")
    keys = list(rows[0])
    for row in rows:
        if set(row) != set(keys):
            raise ValueError(f"collate_prompts: rows have different keys: {sorted(keys)} vs {sorted(row)}")
    return {k: [row[k] for row in rows] for k in keys}


def _root_cause(exc: BaseException) -> str:
    """The innermost exception of a chain as one short line (what the user can act on)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:300]}"


def _check_text_file(path: Path) -> None:
    """Non-empty and UTF-8: pyarrow's JSON/CSV readers accept invalid UTF-8 and fail later, row by
    row, and an empty file fails deep inside ``datasets``: check both up front."""
    check(path.stat().st_size > 0, f"{_key('path')}: '{path}' is empty; it needs at least one row")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
                offset += len(chunk)
            except UnicodeDecodeError as e:
                raise ConfigError(
                    f"{_key('path')}: could not read '{path}': it is not UTF-8 text (byte {offset + e.start}: "
                    f"{e.reason}); re-save it as UTF-8"
                ) from None
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{_key('path')}: could not read '{path}': it is not UTF-8 text (it ends inside "
                          f"a character: {e.reason}); re-save it as UTF-8") from None


def _template_fields(template: str) -> list[str]:
    """Column names a ``str.format`` template refers to (``{question}``, ``{row.x}`` → ``row``)."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as e:
        raise ConfigError(
            f"{_key('prompt_template')}: {template!r} is not a valid format string ({e}); "
            "write a literal brace as '{{' or '}}'"
        ) from None
    fields = []
    for _, field, _, _ in parsed:
        if field is None:
            continue
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        check(
            root != "" and not root.isdigit(),
            f"{_key('prompt_template')}: {template!r} has a positional field '{{{field}}}'; "
            "name a column instead, e.g. '{question}' (write a literal brace as '{{' or '}}')",
        )
        fields.append(root)
    return fields


def _format_rows(
    batch: dict[str, list],
    *,
    prompt_column: str | None,
    answer_column: str | None,
    template: str,
    answer_regex: str | None,
    stringify_answer: bool,
    split: str,
) -> dict[str, list]:
    """``datasets.map`` function (batched): add the formatted ``prompt`` and the gold ``answer``."""
    n = len(next(iter(batch.values())))
    columns = list(batch)
    pattern = re.compile(answer_regex) if answer_regex else None
    prompts, answers = [], []
    for i in range(n):
        row = {c: batch[c][i] for c in columns}
        text = row[prompt_column] if prompt_column is not None else None
        if prompt_column is not None and not usable(text):  # empty or None: the row is dropped with a count (stare_lit.data.rows)
            prompts.append("")
            if answer_column is not None:
                answers.append(None)
            continue
        try:
            prompts.append(template.format(**(row if prompt_column is None else {**row, "prompt": text})))
        except (KeyError, IndexError, AttributeError, TypeError, ValueError) as e:
            raise ConfigError(
                f"{_key('prompt_template')}: formatting {template!r} failed on a row of split "
                f"'{split}' ({type(e).__name__}: {e}); refer to columns by name, e.g. '{{question}}'"
            ) from None
        if answer_column is None:
            continue
        gold = row[answer_column]
        check(
            gold is not None,
            f"{_key('answer_column')}: a row of split '{split}' has no answer in column "
            f"'{answer_column}' (prompt {text!r:.80}); remove such rows from the data",
        )
        if pattern is not None:
            match = pattern.search(str(gold))
            check(
                match is not None,
                f"{_key('answer_regex')}: {answer_regex!r} does not match the answer {str(gold)!r:.120} "
                f"in split '{split}' (prompt {text!r:.80}); fix the regex or the data",
            )
            gold = (match.group(1) if pattern.groups else match.group(0)).strip()
        elif stringify_answer:
            gold = str(gold)
        answers.append(gold)
    out = {"prompt": prompts}
    if answer_column is not None:
        out["answer"] = answers
    return out


class PromptDataModule(L.LightningDataModule):
    """Prompts with gold answers from a Hugging Face dataset or local files.

    Each row becomes ``{"prompt": prompt_template formatted over the row, "answer": gold, ...}``
    (all other columns kept; original columns named ``prompt``/``answer`` are replaced), and a
    batch is ``{column: [value per prompt]}`` (see :func:`collate_prompts`).

    Args:
        path: A Hugging Face dataset name (``"openai/gsm8k"``), or a local ``.json``, ``.jsonl``,
            ``.parquet`` or ``.csv`` file, or a directory of such files (files named
            ``train*``/``test*``/``validation*`` become those splits). A single file is the
            ``train`` split.
        name: The dataset's config/subset on the Hub (``"main"`` for GSM8K); leave null for files.
        split: The split to train on. Slices work: ``"train[:90%]"``.
        val_split: A named split to validate on (``"test"``, or ``"train[90%:]"``). If null,
            ``val_size`` of the training split is held out (seeded, disjoint from training).
        val_size: The hold-out when ``val_split`` is null: a fraction in (0, 1) or a row count
            (a whole number >= 1).
        prompt_column: The column holding the question text; ``{prompt}`` in the template is its
            value. Null for data with no question text (TinyZero's Countdown: columns ``nums`` and
            ``target``): the prompt is the template over the row's columns, which it must name.
        answer_column: The column holding the gold answer, passed to rewards as ``"answer"``
            (numbers are turned into text). Null for a dataset without gold answers.
        prompt_template: A Python format string over the row's columns; the result is the
            ``"prompt"`` the model sees, e.g.
            ``"Question: {question}\\nAnswer step by step, then give \\\\boxed{{answer}}."``
            (a literal brace is written ``{{`` or ``}}``).
        answer_regex: Extract the gold from the answer column with this regex's first group
            (the whole match if it has no group), e.g. GSM8K's ``"#### (.*)"``. A row it does not
            match is an error. Empty: the whole answer column is the gold. (Typed ``str``, not
            ``str | None``: jsonargparse reads an optional string through YAML, which turns
            ``"#### (.*)"`` into a comment, i.e. null.)
        batch_size: Prompts per training step on each device (incomplete batches are dropped).
        val_batch_size: Prompts per validation batch.
        max_val_prompts: Validate on at most this many prompts (the first ones); null for all.
        max_train_prompts: Train on at most this many prompts (a seeded random subset); null for
            all.
        seed: Seeds the hold-out split, the training subset and the shuffling order.
    """

    def __init__(
        self,
        path: str,
        name: str | None = None,
        split: str = "train",
        val_split: str | None = None,
        val_size: float | int = 0.05,
        prompt_column: str | None = "prompt",
        answer_column: str | None = "answer",
        prompt_template: str = "{prompt}",
        answer_regex: str = "",
        batch_size: int = 16,
        val_batch_size: int = 32,
        max_val_prompts: int | None = 256,
        max_train_prompts: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        check(isinstance(path, str) and path.strip() != "", f"{_key('path')}: give a dataset name or a file path")
        check(isinstance(split, str) and split != "", f"{_key('split')}: give a split name such as 'train'")
        check(val_split != split, f"{_key('val_split')}: '{val_split}' is also the training split; "
              "use another split, or null to hold out val_size of the training split")
        check(prompt_column is None or (isinstance(prompt_column, str) and prompt_column != ""),
              f"{_key('prompt_column')}: give a column name, or null to build the prompt from the template alone")
        check(answer_column is None or (isinstance(answer_column, str) and answer_column != ""),
              f"{_key('answer_column')}: give a column name, or null for no gold answers")
        check(isinstance(prompt_template, str) and prompt_template != "",
              f"{_key('prompt_template')}: give a format string such as '{{prompt}}'")
        self._template_fields = _template_fields(prompt_template)
        check(prompt_column is not None or self._template_fields,
              f"{_key('prompt_template')}: with {_key('prompt_column')} null the prompt is the template alone, "
              f"and {prompt_template!r} names no column; write e.g. 'Using the numbers {{nums}}, make {{target}}.'")
        answer_regex = answer_regex or None  # "" (and None from Python callers): no extraction
        if answer_regex is not None:
            check(answer_column is not None,
                  f"{_key('answer_regex')}: needs {_key('answer_column')} to say which column to search")
            try:
                re.compile(answer_regex)
            except re.error as e:
                raise ConfigError(f"{_key('answer_regex')}: {answer_regex!r} is not a valid regex ({e})") from None
        self.val_size = self._check_val_size(val_size)
        for key, value in [("batch_size", batch_size), ("val_batch_size", val_batch_size)]:
            check(_is_int(value) and value >= 1, f"{_key(key)}: must be an integer >= 1, got {value!r}")
        for key, value in [("max_val_prompts", max_val_prompts), ("max_train_prompts", max_train_prompts)]:
            check(value is None or (_is_int(value) and value >= 1),
                  f"{_key(key)}: must be an integer >= 1 or null (no cap), got {value!r}")
        check(_is_int(seed), f"{_key('seed')}: must be an integer, got {seed!r}")

        self.path = path
        self.name = name
        self.split = split
        self.val_split = val_split
        self.prompt_column = prompt_column
        self.answer_column = answer_column
        self.prompt_template = prompt_template
        self.answer_regex = answer_regex
        self.batch_size = batch_size
        self.val_batch_size = val_batch_size
        self.max_val_prompts = max_val_prompts
        self.max_train_prompts = max_train_prompts
        self.seed = seed
        self.train_dataset: Dataset | None = None
        self.val_dataset: Dataset | None = None
        self.save_hyperparameters()

    # ----------------------------------------------------------------------------------- checks

    @staticmethod
    def _check_val_size(val_size: float | int) -> float | int:
        """A fraction in (0, 1) stays a float; a whole number >= 1 (YAML ``10`` may arrive as
        ``10.0``) becomes a row count."""
        ok = isinstance(val_size, (int, float)) and not isinstance(val_size, bool)
        if ok and 0 < val_size < 1:
            return float(val_size)
        if ok and val_size >= 1 and float(val_size).is_integer():
            return int(val_size)
        raise ConfigError(
            f"{_key('val_size')}: {val_size!r} is out of range; give a fraction in (0, 1) "
            "such as 0.05, or a whole number of rows >= 1"
        )

    # ---------------------------------------------------------------------------------- loading

    def _local_files(self) -> tuple[str, list[str]] | None:
        """``(builder, files)`` for a single local file, ``None`` for a directory or a Hub name."""
        p = Path(self.path).expanduser()
        suffix = "".join(p.suffixes[-2:]).lower() if p.suffix.lower() == ".gz" else p.suffix.lower()
        looks_local = suffix in BUILDERS or self.path.startswith(("/", "./", "../", "~"))
        if not p.exists():
            check(not looks_local, f"{_key('path')}: file '{self.path}' does not exist; fix the path, "
                  "or give a Hugging Face dataset name like 'openai/gsm8k'")
            return None
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if f.is_file() and BUILDERS.get(f.suffix.lower()) in ("json", "csv"):
                    _check_text_file(f)
            return None
        builder = BUILDERS.get(suffix)
        check(builder is not None, f"{_key('path')}: '{self.path}' is not a {'/'.join(BUILDERS)} file; "
              "convert it, or point the path at a directory of such files")
        if builder != "parquet" and not suffix.endswith(".gz"):  # gzip: datasets checks what it decompresses
            _check_text_file(p)
        return builder, [str(p)]

    def _load(self, split: str, key: str) -> Dataset:
        """Load one split (``key`` is the setting that named it, for errors)."""
        local = self._local_files()
        if local is not None:
            builder, files = local
            check(self.name is None, f"{_key('name')}: a subset name is for Hub datasets; "
                  f"set it to null for the local file '{self.path}'")
            check(split.split("[")[0] == "train",
                  f"{_key(key)}: a single local file has only the 'train' split, got '{split}'; "
                  "use 'train' (or a slice like 'train[90%:]'), or put train*/test* files in a directory")
            try:
                ds = load_dataset(builder, data_files={"train": files}, split=split)
            except Exception as e:  # datasets wraps parser errors several layers deep
                raise ConfigError(
                    f"{_key('path')}: could not read '{self.path}' ({_root_cause(e)}); it should be "
                    f"{_FORMAT_HINTS[builder]}"
                ) from None
        else:
            where = "the local directory" if os.path.isdir(os.path.expanduser(self.path)) else "the Hugging Face Hub"
            try:
                ds = load_dataset(os.path.expanduser(self.path), self.name, split=split)
            except Exception as e:
                raise ConfigError(
                    f"{_key('path')}: could not load split '{split}' of '{self.path}' (name={self.name!r}) "
                    f"from {where} ({_root_cause(e)}); check {_key('path')}, {_key('name')} and "
                    f"{_key(key)}"
                ) from None
        check(isinstance(ds, Dataset), f"{_key(key)}: '{split}' did not give one split of '{self.path}'")
        return ds

    def _check_columns(self, ds: Dataset, split: str) -> None:
        columns = list(ds.column_names)
        available = ", ".join(columns) or "(none)"
        check(self.prompt_column is None or self.prompt_column in columns,
              f"{_key('prompt_column')}: no column '{self.prompt_column}' in split '{split}' of "
              f"'{self.path}'; available columns: {available}. Set it to the column holding the question")
        check(self.answer_column is None or self.answer_column in columns,
              f"{_key('answer_column')}: no column '{self.answer_column}' in split '{split}' of "
              f"'{self.path}'; available columns: {available}. Set it to the gold-answer column, "
              "or null for none")
        feature = ds.features[self.prompt_column] if self.prompt_column is not None else Value("string")
        check(isinstance(feature, Value) and feature.dtype in ("string", "large_string"),
              f"{_key('prompt_column')}: column '{self.prompt_column}' of split '{split}' holds "
              f"{feature.dtype if isinstance(feature, Value) else type(feature).__name__.lower()} values, not text; "
              "point it at a text column")
        missing = [f for f in self._template_fields
                   if f not in columns and (f != "prompt" or self.prompt_column is None)]
        check(not missing,
              f"{_key('prompt_template')}: refers to {', '.join('{' + f + '}' for f in missing)}, "
              f"not a column of '{self.path}'; available columns: {available} "
              f"({{prompt}} is the {_key('prompt_column')} column)")

    def _format(self, ds: Dataset, split: str) -> Dataset:
        # Scalar golds (numbers included) become text; a list-valued gold column is kept as is.
        answer_feature, stringify = None, False
        if self.answer_column is not None:
            feature = ds.features[self.answer_column]
            stringify = self.answer_regex is None and isinstance(feature, Value)
            answer_feature = Value("string") if (self.answer_regex or stringify) else feature
        features = ds.features.copy()
        features["prompt"] = Value("string")
        if answer_feature is not None:
            features["answer"] = answer_feature
        return ds.map(
            _format_rows,
            batched=True,
            features=features,
            desc=f"Formatting {split} prompts",
            fn_kwargs=dict(
                prompt_column=self.prompt_column,
                answer_column=self.answer_column,
                template=self.prompt_template,
                answer_regex=self.answer_regex,
                stringify_answer=stringify,
                split=split,
            ),
        )

    def _splits(self) -> tuple[Dataset, Dataset]:
        """The raw (unformatted) training and validation rows, held out and capped."""
        train = self._load(self.split, "split")
        check(len(train) > 0, f"{_key('split')}: split '{self.split}' of '{self.path}' has no rows")
        self._check_columns(train, self.split)
        if self.val_split is not None:
            val = self._load(self.val_split, "val_split")
            check(len(val) > 0, f"{_key('val_split')}: split '{self.val_split}' of '{self.path}' has no rows")
            self._check_columns(val, self.val_split)
        else:
            n = len(train)
            frac = self.val_size
            n_val = frac if isinstance(frac, int) else math.ceil(round(frac * n, 6))
            check(1 <= n_val < n,
                  f"{_key('val_size')}: holding out {self.val_size} of the {n} rows of split '{self.split}' "
                  f"leaves {n - n_val} for training and {n_val} for validation; both need rows. Lower "
                  f"val_size or set {_key('val_split')}")
            parts = train.train_test_split(test_size=n_val, shuffle=True, seed=self.seed)
            train, val = parts["train"], parts["test"]
        if self.max_train_prompts is not None and len(train) > self.max_train_prompts:
            train = train.shuffle(seed=self.seed).select(range(self.max_train_prompts))
        if self.max_val_prompts is not None and len(val) > self.max_val_prompts:
            val = val.select(range(self.max_val_prompts))
        return train, val

    def prepare_data(self) -> None:
        """Download / build the dataset cache once (Lightning calls this on one process per node)."""
        self._load(self.split, "split")
        if self.val_split is not None:
            self._load(self.val_split, "val_split")

    def setup(self, stage: str | None = None) -> None:
        if self.train_dataset is not None:
            return
        train, val = self._splits()
        # Unusable rows dropped here, in setup, which Lightning runs before it loads the model: data that
        # cannot train is refused first (the loaders drop them again, a no-op then, for other DataModules).
        train = usable_rows(self._format(train, "train"), "training")
        world = self.trainer.world_size if self.trainer is not None else 1
        check(len(train) // world >= self.batch_size,
              f"{_key('batch_size')}: {self.batch_size} prompts per step, but the {len(train)} usable training "
              f"prompts give each of {world} device(s) only {len(train) // world}, so no full batch exists; "
              f"lower batch_size, or train on more prompts ({_key('max_train_prompts')}, {_key('val_size')})")
        self.train_dataset = train
        self.val_dataset = usable_rows(self._format(val, "validation"), "validation")
        rank_zero_info(f"data: {len(self.train_dataset)} training prompts, {len(self.val_dataset)} "
                       f"validation prompts from '{self.path}'")

    # ------------------------------------------------------------------------------ dataloaders

    def train_dataloader(self) -> PromptLoader:
        """Shuffled per epoch (``seed + epoch``), split across ranks, resumable mid-epoch."""
        check(self.train_dataset is not None, "PromptDataModule.setup() must run before train_dataloader()")
        return train_loader(self, self.train_dataset, self.batch_size, self.seed)

    def val_dataloader(self) -> DataLoader:
        check(self.val_dataset is not None, "PromptDataModule.setup() must run before val_dataloader()")
        return val_loader(self.val_dataset, self.val_batch_size)


def train_loader(datamodule: L.LightningDataModule, rows, batch_size: int, seed: int) -> PromptLoader:
    """The resumable training loader over ``rows``, with this process's share of every epoch."""
    trainer = datamodule.trainer
    rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
    rows = usable_rows(rows, "training")
    check(len(rows) // world >= batch_size,
          f"{_key('batch_size')}: {batch_size} prompts per step, but the {len(rows)} usable training prompts give "
          f"each of {world} device(s) only {len(rows) // world}, so no full batch exists; lower batch_size or "
          "train on more prompts")
    return PromptLoader(rows, batch_size, collate_prompts, seed=seed, rank=rank, world_size=world)


def val_loader(rows, batch_size: int) -> DataLoader:
    """In order, all rows (Lightning splits it across ranks). Its own generator: creating its iterator
    must not draw from the global RNG, or validation would shift every later training step's RNG."""
    rows = usable_rows(rows, "validation")
    return DataLoader(rows, batch_size=batch_size, shuffle=False, drop_last=False, collate_fn=collate_prompts,
                      generator=torch.Generator().manual_seed(0))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

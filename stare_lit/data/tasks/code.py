"""The built-in code task: 36 small Python functions with assert tests, written for this project.

The rows (``data/code_tasks.jsonl``, shipped in the package) have a ``prompt``, a ``tests`` list
of assert statements for stare_lit.rewards.CodeTestReward, and a reference ``solution`` (which
the rewards never see; tests check that each one passes its tests). ``code_tokenizer`` is a
character-level tokenizer over printable ASCII for a model built from a config, saved in
``data/code_tokenizer`` too, so that configs/code_grpo.yaml trains offline.
"""

from __future__ import annotations

from pathlib import Path

from stare_lit.data.datamodule import PromptDataModule

DATA = Path(__file__).with_name("data")
TASKS = DATA / "code_tasks.jsonl"
TOKENIZER = DATA / "code_tokenizer"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
CHARACTERS = "\n\t" + "".join(chr(c) for c in range(32, 127))


def code_tokenizer():
    """One token per character of printable ASCII, newline and tab (left padding)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2} | {c: 3 + i for i, c in enumerate(CHARACTERS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left")


class CodeTasks(PromptDataModule):
    """The built-in code tasks (or your own file of the same shape) as prompts with a ``tests`` column.

    Args:
        path: A ``.jsonl`` with ``prompt`` and ``tests`` columns; ``None`` is the built-in file.
        val_size: Rows held out for validation (a count or a fraction).
        batch_size: Prompts per training step.
        val_batch_size: Prompts per validation batch.
        seed: Seeds the hold-out split and the order.
    """

    def __init__(self, path: str | None = None, val_size: float | int = 4, batch_size: int = 4,
                 val_batch_size: int = 4, seed: int = 0) -> None:
        super().__init__(path=str(TASKS) if path is None else path, answer_column=None, val_size=val_size,
                         batch_size=batch_size, val_batch_size=val_batch_size, seed=seed)

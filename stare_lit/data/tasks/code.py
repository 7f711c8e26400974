"""The built-in code task (36 small Python functions with assert tests, written for this project), and CodeTasks,
which reads any code dataset in the layouts of stare_lit.rewards.formats.

The rows (``data/code_tasks.jsonl``, shipped in the package) have a ``prompt``, a ``tests`` list
of assert statements for stare_lit.rewards.CodeTestReward, and a reference ``solution`` (which
the rewards never see; tests check that each one passes its tests). ``code_tokenizer`` is a
character-level tokenizer over printable ASCII for a model built from a config, saved in
``data/code_tokenizer`` too, so that configs/code_grpo.yaml trains offline. Beside them, small hand-written
sets in the MBPP, stdin/stdout and function-call layouts (``data/{mbpp,stdio,call}_sample.jsonl``): each row
has its reference program (``code`` or ``solution``), a ``wrong`` one, and ``refused`` — empty, or the reason
the reward refuses the row (tests/rewards/test_code_formats.py).
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
    """Code problems as prompts, every other column (the tests) passed to the reward as it ships.

    The built-in tasks by default; or any code dataset, local (``.jsonl``, ``.jsonl.gz``, ``.parquet``)
    or by Hub name, in the layout its test format reads — the format is named once, in the reward
    (``CodeTestReward init_args.tests``, stare_lit.rewards.formats)::

        data: {class_path: stare_lit.data.CodeTasks, init_args: {path: openai_humaneval, split: test}}
        data: {class_path: stare_lit.data.CodeTasks, init_args: {path: mbpp, name: full, prompt_column: text}}

    Args:
        path: A file or Hub name; ``None`` is the built-in file (``prompt``, ``tests``, ``solution``).
        name: The Hub dataset's subset (``full`` or ``sanitized`` for mbpp); null for files.
        split: The split to train on (HumanEval has only ``test``).
        val_split: A split to validate on; null holds out ``val_size`` of ``split``.
        val_size: Rows held out for validation (a count or a fraction).
        prompt_column: The column holding the problem text (HumanEval's ``prompt``, MBPP's ``text``).
        prompt_template: A format string over the row's columns. HumanEvalTests runs the prompt the
            reward is given followed by the completion, so keep ``{prompt}`` for HumanEval.
        batch_size: Prompts per training step.
        val_batch_size: Prompts per validation batch.
        seed: Seeds the hold-out split and the order.
    """

    def __init__(self, path: str | None = None, name: str | None = None, split: str = "train",
                 val_split: str | None = None, val_size: float | int = 4, prompt_column: str = "prompt",
                 prompt_template: str = "{prompt}", batch_size: int = 4, val_batch_size: int = 4, seed: int = 0) -> None:
        super().__init__(path=str(TASKS) if path is None else path, name=name, split=split, val_split=val_split,
                         val_size=val_size, prompt_column=prompt_column, answer_column=None,
                         prompt_template=prompt_template, batch_size=batch_size, val_batch_size=val_batch_size,
                         seed=seed)

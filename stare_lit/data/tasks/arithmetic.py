"""The built-in task: multi-digit addition written out column by column. No download needed.

Prompt ``358+467=``; the worked completion adds the columns right to left, carrying, then states
the answer after the last ``;``::

    8+7=15;5+6+1=12;3+4+1=8;825

That is ~25 tokens at 3 digits (~35 at 4) of a 16-symbol character vocabulary: long enough that
token-level credit assignment has something to act on (a bare 3-token answer leaves none), small
enough that a 0.6M-parameter model learns it on two CPU cores in a minute.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

from stare_lit.data.tasks.generated import GeneratedDataModule
from stare_lit.errors import check
from stare_lit.rewards.base import Reward

SYMBOLS = "0123456789+=;"
PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"


def char_tokenizer(symbols: str = SYMBOLS):
    """A character-level Hugging Face tokenizer over ``symbols`` (left padding); every built-in generated task
    uses it with its own ``SYMBOLS`` (default: this task's)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2} | {c: 3 + i for i, c in enumerate(symbols)}
    core = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per char
    core.decoder = decoders.Fuse()  # join characters back without spaces
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   padding_side="left")


def worked_solution(a: int, b: int) -> str:
    """Column-by-column addition of a + b, right to left, then the answer after the last ';'."""
    steps, carry = [], 0
    da, db = str(a)[::-1], str(b)[::-1]
    for i in range(max(len(da), len(db))):
        x, y = int(da[i]) if i < len(da) else 0, int(db[i]) if i < len(db) else 0
        total = x + y + carry
        steps.append(f"{x}+{y}+{carry}={total}" if carry else f"{x}+{y}={total}")
        carry = total // 10
    return ";".join(steps) + f";{a + b}"


def sample_problems(n: int, min_digits: int, max_digits: int, seed: int, exclude: set | None = None) -> list[tuple[int, int]]:
    """n distinct-from-``exclude`` pairs (a, b), each operand with min..max digits."""
    rng = random.Random(seed)
    exclude = exclude or set()
    out = []
    while len(out) < n:
        da, db = rng.randint(min_digits, max_digits), rng.randint(min_digits, max_digits)
        pair = (rng.randint(10 ** (da - 1), 10**da - 1), rng.randint(10 ** (db - 1), 10**db - 1))
        if pair not in exclude:
            out.append(pair)
    return out


def as_row(a: int, b: int) -> dict:
    return {"prompt": f"{a}+{b}=", "answer": str(a + b)}


class ArithmeticReward(Reward):
    """1.0 when the number after the completion's last ';' equals the gold sum, else 0.0.

    A completion with no ';' or a non-number there is wrong (0.0), not unscorable; a missing gold
    answer gives None.

    Args:
        answer_column: column holding the gold sum.
        name: name used in logs.
    """

    _final = re.compile(r";\s*(\d+)\s*$")

    def __init__(self, answer_column: str = "answer", name: str | None = None) -> None:
        super().__init__(name=name)
        self.answer_column = answer_column

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float | None]:
        golds = columns.get(self.answer_column)
        check(golds is not None, f"ArithmeticReward needs the column '{self.answer_column}'")
        out: list[float | None] = []
        for text, gold in zip(completions, golds):
            if gold is None or str(gold).strip() == "":
                out.append(None)
                continue
            found = self._final.search(text)
            out.append(float(found is not None and found.group(1) == str(gold).strip()))
        return out


class ArithmeticDataModule(GeneratedDataModule):
    """Generated addition problems; validation prompts never appear in training.

    Args:
        min_digits: fewest digits of an operand.
        max_digits: most digits of an operand.
        batch_size: prompts per training step (per device); each is sampled G times.
        num_train_prompts: size of the (generated, fixed) training pool; an epoch is one pass.
        num_val_prompts: held-out prompts for accuracy / pass@k.
        val_batch_size: prompts per validation batch.
        seed: seed of the generator (the same seed gives the same problems).
    """

    def __init__(self, min_digits: int = 3, max_digits: int = 3, batch_size: int = 16,
                 num_train_prompts: int = 50_000, num_val_prompts: int = 128, val_batch_size: int = 64,
                 seed: int = 1234) -> None:
        key = "data.init_args"
        check(1 <= min_digits <= max_digits <= 12,
              f"{key}: need 1 <= min_digits <= max_digits <= 12, got {min_digits}, {max_digits}")
        super().__init__(batch_size, num_train_prompts, val_batch_size)
        check(num_val_prompts >= 1, f"{key}.num_val_prompts must be >= 1, got {num_val_prompts}")
        operands = sum(9 * 10 ** (d - 1) for d in range(min_digits, max_digits + 1))
        check(num_val_prompts < operands**2,  # else the validation pairs could leave none for training
              f"{key}.num_val_prompts: {num_val_prompts} held-out problems would use up all {operands**2} "
              f"pairs of {min_digits}..{max_digits}-digit operands; lower it or raise max_digits")
        self.save_hyperparameters()

    def make_rows(self) -> tuple[list[dict], list[dict]]:
        h = self.hparams
        val = sample_problems(h.num_val_prompts, h.min_digits, h.max_digits, seed=h.seed + 1)
        train = sample_problems(h.num_train_prompts, h.min_digits, h.max_digits, seed=h.seed, exclude=set(val))
        return [as_row(a, b) for a, b in train], [as_row(a, b) for a, b in val]

"""A forking-path task: add four numbers in any order, writing the running sums. No download needed.

Prompt ``5,12,3,8=``; a correct completion adds the numbers one at a time, in an order of its
choice, writing each partial sum, then states the total after the last ``;``::

    12+3=15;15+8=23;23+5=28;28        or   3+5=8;8+12=20;20+8=28;28     (24 orders in all)

Why this task and not Countdown: a correct completion here is a *path through forks* — which
number goes first (4 choices), second (3), third (2) — with near-certain tokens in between (the
arithmetic, once the choice is made). That is the structure of reasoning traces (a minority of
high-entropy forking tokens, arXiv 2506.01939) that token-level entropy control acts on, and every
one of the 4! = 24 orders is right, so a policy that collapses onto one order loses nothing in
reward but loses every other solution. Countdown (+ − × to a target) has the same forks but needs a
search a 0.8M-parameter model does not learn on two CPU cores in minutes; running sums of numbers
1..12 (totals <= 42) are learnt in about a minute. Completions are ~26 tokens of a 17-symbol
character vocabulary.

Train and validation prompts are disjoint by content: a validation prompt's *set* of numbers never
appears in training, in any order.
"""

from __future__ import annotations

import itertools
import random
import re
from typing import Sequence

from stare_lit.data.tasks.generated import GeneratedDataModule
from stare_lit.errors import check
from stare_lit.rewards.base import Reward

SYMBOLS = "0123456789+=;,"
_NUMBER = re.compile(r"0|[1-9]\d*")  # canonical decimal: no leading zeros, so each solution has one spelling
_STEP = re.compile(r"(0|[1-9]\d*)\+(0|[1-9]\d*)=(0|[1-9]\d*)")


def prompt_of(numbers: Sequence[int]) -> str:
    return ",".join(map(str, numbers)) + "="


def numbers_of(prompt: str) -> list[int]:
    """The numbers of a prompt ``5,12,3,8=``."""
    return [int(x) for x in prompt.strip().rstrip("=").split(",")]


def written_sum(order: Sequence[int]) -> str:
    """The completion that adds ``order`` left to right: ``a+b=s1;s1+c=s2;...;total``."""
    steps, total = [], order[0]
    for x in order[1:]:
        steps.append(f"{total}+{x}={total + x}")
        total += x
    return ";".join(steps) + f";{total}"


def all_solutions(numbers: Sequence[int]) -> set[str]:
    """Every correct completion for ``numbers`` (one per distinct order: 24 for four distinct numbers)."""
    return {written_sum(order) for order in itertools.permutations(numbers)}


def is_valid(numbers: Sequence[int], completion: str) -> bool:
    """Whether ``completion`` adds exactly ``numbers`` (each once, any order) with every partial sum right.

    Shape: ``a+b=s;s+c=t;...;total`` with len(numbers) − 1 steps, each step's left operand the
    previous step's sum (the first's: one of the numbers), each right operand one of the numbers
    not yet used, and the last field the total. Anything else (a wrong sum, a number used twice or
    not at all, a number not in the prompt, leading zeros, spaces, trailing text) is invalid.
    """
    fields = completion.split(";")
    if len(numbers) < 2 or len(fields) != len(numbers) or not _NUMBER.fullmatch(fields[-1]):
        return False
    left = list(numbers)
    running = None
    for field in fields[:-1]:
        step = _STEP.fullmatch(field)
        if step is None:
            return False
        a, b, s = map(int, step.groups())
        if running is None:  # the first step takes two of the numbers
            if a not in left:
                return False
            left.remove(a)
        elif a != running:
            return False
        if b not in left or a + b != s:
            return False
        left.remove(b)
        running = s
    return not left and int(fields[-1]) == running


def number_sets(count: int, low: int, high: int) -> list[tuple[int, ...]]:
    """All sets of ``count`` distinct numbers in low..high, sorted, in a fixed order."""
    return list(itertools.combinations(range(low, high + 1), count))


def split_sets(count: int, low: int, high: int, num_val: int, seed: int) -> tuple[list, list]:
    """(train sets, validation sets): a seeded split of every set, validation ``num_val`` of them."""
    sets = number_sets(count, low, high)
    random.Random(seed).shuffle(sets)
    return sets[num_val:], sets[:num_val]


def shuffled(numbers: Sequence[int], rng: random.Random) -> list[int]:
    out = list(numbers)
    rng.shuffle(out)
    return out


class PartialSumsReward(Reward):
    """1.0 for a completion that adds every number of the prompt once, in any order, with every running
    sum right and the total last (``is_valid``); 0.0 for anything else, malformed text included.

    Args:
        name: name used in logs.
    """

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float | None]:
        return [float(is_valid(numbers_of(p), c.strip())) for p, c in zip(prompts, completions)]


class PartialSumsDataModule(GeneratedDataModule):
    """Generated partial-sum problems; validation number sets never appear in training.

    Every set of ``count`` distinct numbers in ``low..high`` is split once (seeded) into training and
    validation sets; a training prompt is a training set in a random order (a new order each time the
    pool is drawn), a validation prompt a validation set in a fixed random order.

    Args:
        count: numbers per prompt (>= 2).
        low: smallest number.
        high: largest number.
        batch_size: prompts per training step (per device); each is sampled G times.
        num_train_prompts: size of the (generated, fixed) training pool; an epoch is one pass.
        num_val_prompts: held-out prompts (distinct number sets) for mean@n / pass@k.
        val_batch_size: prompts per validation batch.
        seed: seed of the split and the orders (the same seed gives the same problems).
    """

    def __init__(self, count: int = 4, low: int = 1, high: int = 12, batch_size: int = 16,
                 num_train_prompts: int = 20_000, num_val_prompts: int = 64, val_batch_size: int = 64,
                 seed: int = 1234) -> None:
        key = "data.init_args"
        check(count >= 2, f"{key}.count must be >= 2 (a sum of one number has no steps), got {count}")
        check(0 <= low and high - low + 1 >= count,
              f"{key}: need 0 <= low and at least count numbers in low..high, got {low}..{high} for count {count}")
        super().__init__(batch_size, num_train_prompts, val_batch_size)
        n_sets = len(number_sets(count, low, high))
        check(1 <= num_val_prompts < n_sets,
              f"{key}.num_val_prompts must be in 1..{n_sets - 1} (there are {n_sets} sets), got {num_val_prompts}")
        self.save_hyperparameters()

    def make_rows(self) -> tuple[list[dict], list[dict]]:
        h = self.hparams
        train, val = split_sets(h.count, h.low, h.high, h.num_val_prompts, h.seed)
        rng = random.Random(h.seed + 1)
        val_rows = [{"prompt": prompt_of(shuffled(s, rng))} for s in val]  # drawn first, then training
        train_rows = [{"prompt": prompt_of(shuffled(rng.choice(train), rng))} for _ in range(h.num_train_prompts)]
        return train_rows, val_rows

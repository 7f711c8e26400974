"""Countdown: combine the given numbers with + − × ÷ to reach a target, each number used once. No download needed.

Prompt ``7,3,5,11:28=`` (the numbers, then the target); a correct completion writes one step at a time, each
combining two values still free, and states the result after the last ``;``. This prompt has three (written
larger operand first, as the warm start does)::

    11+3=14;7-5=2;14*2=28;28      7-5=2;11+3=14;14*2=28;28      5*3=15;15-11=4;7*4=28;28

while ``7,3,5,11:26=`` has 18 (every order of 7+3+5+11). Which two values to combine first is a fork, and on
most prompts only a few branches still reach the target: a policy that settles on habitual operation orders
fails the prompts that need other ones. That is why exploration matters here, unlike on ``partial_sums`` where every
order is right (the community's standard small RLVR task; TinyZero, github Jiayi-Pan/TinyZero).

The verifier's rules (``is_valid``; never ``eval``, exact rationals):

- ``len(numbers) − 1`` steps ``a<op>b=c`` then the final value: each step takes two values still free — a
  given number not yet used, or an earlier step's result not yet used — and frees its result. So every
  given number is used exactly once (TinyZero's rule: a prompt is one puzzle, not "any subset"; it also
  makes the final value the last step's result) and every result at most once.
- Only the prompt's operators (the row's ``operators`` column; ``/`` only where allowed); each step is
  arithmetically true: ``a<op>b`` equals ``c`` as an exact rational. A wrong intermediate step
  (``7*3=22;...``) fails the completion even if the final value is right: the chain is the answer.
- Every value written is a non-negative integer in canonical decimal (no sign, no leading zeros), the
  classic Countdown rule: a step whose true value is negative or a fraction (``3-7``, ``7/2``) cannot be
  written and fails, and division by zero fails.
- The final field equals the last result and the target. Anything else — text around it, a space, a
  step too many or too few, garbage of any length — scores 0.0; work is bounded (``MAX_CHARS``).

Every prompt is solvable: its target is the value of a random solution over its numbers. Training and
validation problems are disjoint by content: a validation problem (its numbers as a set, and its target)
never appears in training.

TinyZero's real-model path: :class:`CountdownAnswerReward` scores their answer format
``<answer>(93-43)+1</answer>`` against the ``nums`` and ``target`` columns of their data
(Hub ``Jiayi-Pan/Countdown-Tasks-3to4``, loaded with ``stare_lit.data.PromptDataModule``; docs/tasks.md).
"""

from __future__ import annotations

import random
import re
from collections import Counter
from fractions import Fraction
from functools import lru_cache
from typing import Sequence

from stare_lit.data.tasks.generated import GeneratedDataModule
from stare_lit.errors import ConfigError, check
from stare_lit.rewards.base import Reward

SYMBOLS = "0123456789+-*/=;,:"
OPERATORS = "+-*/"
MAX_CHARS = 400  # longer completions score 0 unread: a correct one over 4-digit values is under 100
_NUMBER = re.compile(r"0|[1-9][0-9]*")  # canonical decimal, ASCII digits only
_STEP = re.compile(r"(0|[1-9][0-9]*)([-+*/])(0|[1-9][0-9]*)=(0|[1-9][0-9]*)")
_PROMPT = re.compile(r"([0-9]+(?:,[0-9]+)*):([0-9]+)=")


def prompt_of(numbers: Sequence[int], target: int) -> str:
    return ",".join(map(str, numbers)) + f":{target}="


def problem_of(prompt: str) -> tuple[list[int], int]:
    """(numbers, target) of a prompt ``7,3,5,11:26=``."""
    found = _PROMPT.fullmatch(prompt.strip())
    check(found is not None, f"countdown: {prompt!r} is not a Countdown prompt such as '7,3,5,11:26='")
    return [int(x) for x in found.group(1).split(",")], int(found.group(2))


def combine(a: Fraction, op: str, b: Fraction) -> Fraction | None:
    """``a op b`` exactly; None for division by zero."""
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    return a / b if b != 0 else None


def is_valid(numbers: Sequence[int], target: int, completion: str, operators: str = OPERATORS) -> bool:
    """Whether ``completion`` reaches ``target`` from ``numbers`` by the module's rules (see its docstring).

    Example: numbers (7, 3, 5), target 26: ``7*3=21;21+5=26;26`` and ``5+21=26`` after ``3*7=21`` are
    valid; ``7*3=21;21+5=26;26;`` (trailing field), ``7*3=21;21+3=24;...`` (3 twice) and
    ``7*3=22;22+4=26;26`` (a wrong step) are not.
    """
    if len(completion) > MAX_CHARS or len(numbers) < 2:
        return False
    fields = completion.split(";")
    if len(fields) != len(numbers) or not _NUMBER.fullmatch(fields[-1]):
        return False
    free = Counter(numbers)  # the values still free to combine: given numbers, then results
    result = None
    for field in fields[:-1]:
        step = _STEP.fullmatch(field)
        if step is None or step.group(2) not in operators:
            return False
        a, op, b, result = int(step.group(1)), step.group(2), int(step.group(3)), int(step.group(4))
        free[a] -= 1
        free[b] -= 1
        if free[a] < 0 or free[b] < 0 or combine(Fraction(a), op, Fraction(b)) != result:
            return False
        free[result] += 1
    # n − 1 steps each took two free values and freed one, so one is left: the last result.
    return result == target == int(fields[-1])


def _canonical_steps(values: tuple[int, ...], operators: str):
    """Every (i, j, op, result) step on ``values`` whose result is a non-negative integer, larger operand first
    (the form the warm start writes: ``7*3`` not ``3*7``; the verifier accepts both). Integer arithmetic is
    exact here: a >= b >= 0, and ÷ only where it divides."""
    for i in range(len(values)):
        for j in range(len(values)):
            a, b = values[i], values[j]
            if i == j or a < b or (a == b and i > j):
                continue
            for op in operators:
                if op != "/":
                    yield i, j, op, a + b if op == "+" else a - b if op == "-" else a * b
                elif b != 0 and a % b == 0:
                    yield i, j, op, a // b


@lru_cache(maxsize=4096)
def solutions_by_target(numbers: tuple[int, ...], operators: str = OPERATORS) -> dict[int, tuple[str, ...]]:
    """Every reachable target → its correct completions in canonical form (sorted), for the sorted ``numbers``.

    Small: 4 numbers with + − × have at most 6·3 · 3·3 · 1·3 = 486 step sequences.
    """
    found: dict[int, set[str]] = {}

    def walk(values: tuple[int, ...], steps: list[str]) -> None:
        if len(values) == 1:
            found.setdefault(values[0], set()).add(";".join(steps) + f";{values[0]}")
            return
        for i, j, op, value in _canonical_steps(values, operators):
            rest = tuple(v for k, v in enumerate(values) if k not in (i, j))
            walk((*rest, value), [*steps, f"{values[i]}{op}{values[j]}={value}"])

    walk(tuple(sorted(numbers)), [])
    return {target: tuple(sorted(texts)) for target, texts in found.items()}


def all_solutions(numbers: Sequence[int], target: int, operators: str = OPERATORS) -> tuple[str, ...]:
    """The canonical correct completions of a problem (empty if it has none)."""
    return solutions_by_target(tuple(sorted(numbers)), operators).get(target, ())


def random_problem(count: int, low: int, high: int, operators: str, max_target: int,
                   rng: random.Random) -> tuple[list[int], int]:
    """``count`` distinct numbers in low..high and a target in 1..max_target reached by a random solution of
    them (so every problem is solvable); redrawn until the target is in range."""
    while True:
        numbers = rng.sample(range(low, high + 1), count)
        values = tuple(numbers)
        while len(values) > 1:
            i, j, _, value = rng.choice(list(_canonical_steps(values, operators)))
            values = (*(v for k, v in enumerate(values) if k not in (i, j)), value)
        if 1 <= values[0] <= max_target:
            return numbers, values[0]


def problem_key(numbers: Sequence[int], target: int) -> tuple:
    """What makes two prompts the same problem: the numbers as a multiset, and the target."""
    return tuple(sorted(numbers)), target


def check_operators(operators: str, key: str) -> None:
    check(operators != "" and set(operators) <= set(OPERATORS) and len(set(operators)) == len(operators),
          f"{key} must be some of '+-*/', each once (e.g. '+-*'), got {operators!r}")


class CountdownReward(Reward):
    """1.0 for a completion whose steps reach the prompt's target from its numbers (``is_valid``), with the
    row's ``operators`` column saying which operators are allowed; 0.0 for anything else, garbage included.

    Args:
        operators_column: the column holding the allowed operators (CountdownDataModule writes it).
        name: name used in logs.
    """

    def __init__(self, operators_column: str = "operators", name: str | None = None) -> None:
        super().__init__(name=name)
        self.operators_column = operators_column

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float | None]:
        operators = columns.get(self.operators_column)
        check(operators is not None, f"CountdownReward needs the column '{self.operators_column}' (the allowed "
                                     "operators, e.g. '+-*'); stare_lit.data.CountdownDataModule writes it")
        out = []
        for prompt, completion, ops in zip(prompts, completions, operators):
            numbers, target = problem_of(prompt)
            out.append(float(is_valid(numbers, target, completion.strip(), ops)))
        return out


# ------------------------------------------------------------------ TinyZero's answer format

class _Expression:
    """A recursive-descent parser of ``+ - * /`` and parentheses over non-negative integers, exact rationals.

    expr := term (('+' | '-') term)* ; term := factor (('*' | '/') factor)* ; factor := number | '(' expr ')'.
    Binary operators only (no unary minus: the puzzle combines the given numbers). ``value`` is None for
    anything that does not parse, divides by zero or nests deeper than ``MAX_DEPTH``.
    """

    MAX_DEPTH = 32
    _TOKEN = re.compile(r"[0-9]+|\S")  # a number, or any one other visible character

    def __init__(self, text: str) -> None:
        self.tokens = self._TOKEN.findall(text)
        self.at = 0
        self.numbers: list[int] = []

    def parse(self) -> Fraction | None:
        value = self._expr(0)
        return value if self.at == len(self.tokens) else None

    def _peek(self) -> str | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _expr(self, depth: int) -> Fraction | None:
        value = self._term(depth)
        while value is not None and self._peek() in ("+", "-"):
            op = self.tokens[self.at]
            self.at += 1
            right = self._term(depth)
            value = None if right is None else combine(value, op, right)
        return value

    def _term(self, depth: int) -> Fraction | None:
        value = self._factor(depth)
        while value is not None and self._peek() in ("*", "/"):
            op = self.tokens[self.at]
            self.at += 1
            right = self._factor(depth)
            value = None if right is None else combine(value, op, right)
        return value

    def _factor(self, depth: int) -> Fraction | None:
        token = self._peek()
        if token is None or depth > self.MAX_DEPTH:
            return None
        self.at += 1
        if token[0] in "0123456789":
            self.numbers.append(int(token))
            return Fraction(int(token))
        if token != "(":
            return None
        value = self._expr(depth + 1)
        if value is None or self._peek() != ")":
            return None
        self.at += 1
        return value


def answer_of(completion: str) -> str | None:
    """The text inside the completion's last ``<answer>…</answer>``, or None (found from the end: linear time)."""
    end = completion.rfind("</answer>")
    start = completion.rfind("<answer>", 0, end) if end >= 0 else -1
    return completion[start + len("<answer>"):end] if start >= 0 else None


def expression_reaches(numbers: Sequence[int], target: int, expression: str) -> bool:
    """Whether ``expression`` (TinyZero's answer) uses exactly ``numbers``, each once, and equals ``target``."""
    if len(expression) > MAX_CHARS:
        return False
    parsed = _Expression(expression)
    value = parsed.parse()
    return value is not None and value == target and Counter(parsed.numbers) == Counter(numbers)


class CountdownAnswerReward(Reward):
    """TinyZero's Countdown reward: 1.0 when the last ``<answer>…</answer>`` of the completion holds an
    expression over + − × ÷ and parentheses that uses every number of the row once and equals its target
    (exact rationals, parsed, never ``eval``); ``format_score`` when there is an answer but it is wrong; 0.0
    when there is none. Their data layout: columns ``nums`` (a list of integers) and ``target``.

    Args:
        nums_column: the column holding the numbers.
        target_column: the column holding the target.
        format_score: the score of a wrong answer in the right format (TinyZero uses 0.1; the default 0.0
            keeps "correct" and "rewarded" the same thing).
        name: name used in logs.
    """

    def __init__(self, nums_column: str = "nums", target_column: str = "target", format_score: float = 0.0,
                 name: str | None = None) -> None:
        super().__init__(name=name)
        check(0.0 <= format_score < 1.0, f"CountdownAnswerReward init_args.format_score must be in [0, 1), got "
                                         f"{format_score}; TinyZero uses 0.1")
        self.nums_column, self.target_column, self.format_score = nums_column, target_column, format_score

    def __call__(self, prompts: Sequence[str], completions: Sequence[str], **columns) -> list[float | None]:
        for column in (self.nums_column, self.target_column):
            check(column in columns, f"CountdownAnswerReward needs the column '{column}'; the data has "
                                     f"{sorted(columns) or 'no other columns'}")
        out: list[float | None] = []
        for completion, numbers, target in zip(completions, columns[self.nums_column], columns[self.target_column]):
            if numbers is None or target is None:
                out.append(None)  # a row without its puzzle cannot be judged
                continue
            answer = answer_of(completion)
            if answer is None:
                out.append(0.0)
            else:
                out.append(1.0 if expression_reaches(list(numbers), int(target), answer) else self.format_score)
        return out


class CountdownDataModule(GeneratedDataModule):
    """Generated Countdown problems; validation problems never appear in training.

    Each row is ``{"prompt": "7,3,5,11:26=", "operators": "+-*"}``. The validation problems are drawn
    first (distinct), then the training pool, leaving out every validation problem.

    Args:
        count: numbers per prompt (3 or 4).
        low: smallest number.
        high: largest number.
        operators: the allowed operators, some of "+-*/".
        max_target: largest target (targets are 1..max_target).
        batch_size: prompts per training step (per device); each is sampled G times.
        num_train_prompts: size of the (generated, fixed) training pool; an epoch is one pass.
        num_val_prompts: held-out problems for mean@n / pass@k.
        val_batch_size: prompts per validation batch.
        seed: seed of the problems (the same seed gives the same problems).
    """

    def __init__(self, count: int = 4, low: int = 1, high: int = 12, operators: str = "+-*", max_target: int = 100,
                 batch_size: int = 16, num_train_prompts: int = 20_000, num_val_prompts: int = 64,
                 val_batch_size: int = 64, seed: int = 1234) -> None:
        key = "data.init_args"
        check(count in (3, 4), f"{key}.count must be 3 or 4, got {count}")
        check(1 <= low and high - low + 1 >= count + 2,
              f"{key}: need 1 <= low and at least count + 2 numbers in low..high, got {low}..{high} for count {count}")
        check_operators(operators, f"{key}.operators")
        check(max_target >= 10, f"{key}.max_target must be >= 10, got {max_target}")
        check(num_val_prompts >= 1, f"{key}.num_val_prompts must be >= 1, got {num_val_prompts}")
        super().__init__(batch_size, num_train_prompts, val_batch_size)
        self.save_hyperparameters()

    def make_rows(self) -> tuple[list[dict], list[dict]]:
        h = self.hparams
        val, val_keys = split_problems(h.count, h.low, h.high, h.operators, h.max_target, h.num_val_prompts, h.seed)
        rng = random.Random(h.seed + 1)
        train = []
        while len(train) < h.num_train_prompts:
            numbers, target = random_problem(h.count, h.low, h.high, h.operators, h.max_target, rng)
            if problem_key(numbers, target) not in val_keys:
                train.append(prompt_of(numbers, target))
        as_rows = lambda prompts: [{"prompt": p, "operators": h.operators} for p in prompts]  # noqa: E731
        return as_rows(train), as_rows(val)


def split_problems(count: int, low: int, high: int, operators: str, max_target: int, num_val: int,
                   seed: int) -> tuple[list[str], set[tuple]]:
    """(the validation prompts, their problem keys): ``num_val`` distinct problems drawn from ``seed``."""
    rng = random.Random(seed)
    prompts, keys = [], set()
    for _ in range(100 * num_val):
        numbers, target = random_problem(count, low, high, operators, max_target, rng)
        if problem_key(numbers, target) not in keys:
            keys.add(problem_key(numbers, target))
            prompts.append(prompt_of(numbers, target))
            if len(prompts) == num_val:
                return prompts, keys
    raise ConfigError(f"data.init_args.num_val_prompts {num_val}: found only {len(prompts)} distinct problems of "
                 f"{count} numbers in {low}..{high}; lower num_val_prompts or widen the range")


def max_completion_chars(count: int, high: int, max_target: int) -> int:
    """A bound on a correct completion's length: ``count − 1`` steps ``a<op>b=c;`` whose values are at most
    high^count (the most + and × make of ``count`` numbers up to ``high`` >= 3; − and ÷ only shrink), then the target."""
    digits = len(str(high**count))
    return (count - 1) * (3 * digits + 3) + len(str(max_target))

"""Verifiable rewards: one number per completion, or ``None`` where a reward cannot judge it.

A reward is a class whose constructor arguments are its config, chosen in YAML by class path::

    rewards:
      - class_path: stare_lit.rewards.MathAnswerReward
      - class_path: stare_lit.rewards.FormatReward
        init_args:
          pattern: '<think>.*</think>\\s*<answer>.*</answer>'
    reward_weights: [1.0, 0.1]

A reward returns ``None`` for a completion it cannot judge (the gold answer is missing or does not
parse). It never falls back to 1.0: that would reward the policy for the dataset's gaps. How the
rewards are run and combined — errors, time limits, a worker process — is stare_lit.rewards.runner.
"""

import re
import threading
from abc import ABC, abstractmethod
from typing import ClassVar, Optional

from math_verify import parse, verify

from stare_lit.errors import ConfigError, StareLitError, check

class Reward(ABC):
    """Scores completions; one value per completion, ``None`` where the reward does not apply.

    Args:
        name: Name in logs and metrics; defaults to the class name in snake_case.
    """

    concurrent: ClassVar[bool] = False
    """Set ``True`` in a subclass whose time goes to waiting (a subprocess, a remote call), not to Python code
    that holds the GIL, and whose ``__call__`` is safe on several threads at once: the runner then scores its
    completions one at a time, ``model.scoring.workers`` of them at once on threads (stare_lit.rewards.runner).
    A fact about the class's code, so not a constructor argument."""

    def __init__(self, name: Optional[str] = None) -> None:
        check(
            name is None or bool(name.strip()),
            f"{type(self).__name__} init_args.name is empty; give a name or leave it unset.",
        )
        self._name = name

    @property
    def name(self) -> str:
        """The name this reward is logged under."""
        return self._name or _snake_case(type(self).__name__)

    @abstractmethod
    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        """Score a batch.

        Args:
            prompts: The prompt of each completion (repeated for each completion of a prompt).
            completions: The generated texts.
            **columns: The dataset's other columns (e.g. ``answer=[...]``), aligned with ``completions``.

        Returns:
            One value per completion: a number, or ``None`` if the reward does not apply to it.
        """


class ErrorScore(float):
    """A score a reward gives because its own check went wrong on a completion, not because it judged it.

    The runner uses the value and counts the completion in ``reward/<name>_errors``, under either
    ``model.scoring.on_error`` (it never stops training): ``CodeTestReward`` returns ``ErrorScore(0.0)``
    when the sandbox's report breaks the protocol, which a program can cause on purpose.
    """


class RewardError(StareLitError, RuntimeError):
    """A reward raised, or returned something other than one number (or ``None``) per completion.

    Raised by the runner (stare_lit.rewards.runner) and its worker. A ``StareLitError``, so ``stare-lit``
    prints its message (which names the completion, its prompt and the fix) as one line.
    """


class MathAnswerReward(Reward):
    """1.0 if the completion's final answer is mathematically equal to the gold answer, else 0.0.

    Uses math-verify: ``\\frac{1}{2}``, ``1/2`` and ``0.5`` are equal, as are equivalent
    expressions and sets. The prediction is the completion's ``\\boxed{}`` answer, or else its last
    answer-like expression. A bare gold (``72``, ``x^2+1``) is read as LaTeX; a gold that already
    has ``$``, ``\\(``, ``\\[`` or ``\\boxed`` is parsed as written.

    Returns ``None`` when the gold answer is missing or does not parse. A completion that makes
    math-verify fail (pathological text, a time-out) scores 0.0: it is a wrong answer, not a crash.

    Args:
        answer_column: Dataset column holding the gold answer.
        timeout_seconds: math-verify's time limit per parse and per comparison. It uses
            ``signal.alarm``, which only works on the main thread, so off the main thread (e.g. in a
            thread pool) it is off; bound the time there yourself. ``None`` turns it off everywhere.
        name: Name in logs and metrics; defaults to ``math_answer_reward``.
    """

    def __init__(
        self, answer_column: str = "answer", timeout_seconds: Optional[int] = 5, name: Optional[str] = None
    ) -> None:
        super().__init__(name)
        check(
            timeout_seconds is None or timeout_seconds >= 1,
            f"MathAnswerReward init_args.timeout_seconds={timeout_seconds}; use a whole number of seconds >= 1,"
            " or null for no time limit.",
        )
        self.answer_column = answer_column
        self.timeout_seconds = timeout_seconds

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        golds = _answer_column(self, self.answer_column, columns)
        # signal.alarm raises off the main thread; there math-verify must run without its timer.
        timeout = self.timeout_seconds if threading.current_thread() is threading.main_thread() else None
        parsed_golds: dict[str, Optional[list]] = {}  # GRPO repeats each gold G times: parse it once
        scores: list[Optional[float]] = []
        for completion, gold in zip(completions, golds):
            key = "" if gold is None else str(gold)
            if key not in parsed_golds:
                parsed_golds[key] = _parse_gold(key, timeout)
            parsed_gold = parsed_golds[key]
            scores.append(None if parsed_gold is None else _verify(parsed_gold, completion, timeout))
        return scores


class ExactMatchReward(Reward):
    """1.0 if the completion's answer equals the gold answer as a string, else 0.0.

    The answer is the first group of the last match of ``pattern`` (the whole match if it has no
    group); a completion where it does not match scores 0.0. Without a pattern the answer is the
    last non-empty line. Returns ``None`` when the gold answer is missing or empty.

    Args:
        answer_column: Dataset column holding the gold answer.
        pattern: Regular expression that extracts the answer, e.g. ``<answer>(.*?)</answer>``
            (``.`` also matches newlines).
        strip: Ignore leading and trailing whitespace of the answer and the gold.
        case_sensitive: Compare case-sensitively.
        name: Name in logs and metrics; defaults to ``exact_match_reward``.
    """

    def __init__(
        self,
        answer_column: str = "answer",
        pattern: Optional[str] = None,
        strip: bool = True,
        case_sensitive: bool = True,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name)
        self.answer_column = answer_column
        self.pattern = None if pattern is None else _compile(type(self).__name__, pattern)
        self.strip = strip
        self.case_sensitive = case_sensitive

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        golds = _answer_column(self, self.answer_column, columns)
        scores: list[Optional[float]] = []
        for completion, gold in zip(completions, golds):
            gold = None if gold is None else self._normalise(str(gold))
            if not gold:
                scores.append(None)
                continue
            answer = self._extract(completion)
            scores.append(float(answer is not None and self._normalise(answer) == gold))
        return scores

    def _extract(self, completion: str) -> Optional[str]:
        if self.pattern is None:
            lines = [line for line in completion.splitlines() if line.strip()]
            return lines[-1] if lines else completion
        matches = list(self.pattern.finditer(completion))
        if not matches:
            return None
        last = matches[-1]
        return last.group(1) if self.pattern.groups else last.group(0)

    def _normalise(self, text: str) -> str:
        text = text.strip() if self.strip else text
        return text if self.case_sensitive else text.casefold()


class FormatReward(Reward):
    """1.0 if the completion matches a regular expression, else 0.0.

    Args:
        pattern: Regular expression, e.g. ``<think>.*</think>\\s*<answer>.*</answer>``
            (``.`` also matches newlines).
        full_match: Require the whole completion to match, not just a part of it.
        name: Name in logs and metrics; defaults to ``format_reward``.
    """

    def __init__(self, pattern: str, full_match: bool = False, name: Optional[str] = None) -> None:
        super().__init__(name)
        check(bool(pattern), "FormatReward init_args.pattern is empty; give the regular expression to match.")
        self.pattern = _compile(type(self).__name__, pattern)
        self.full_match = full_match

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        match = self.pattern.fullmatch if self.full_match else self.pattern.search
        return [float(match(completion) is not None) for completion in completions]


def _answer_column(reward: Reward, column: str, columns: dict[str, list]) -> list:
    check(
        column in columns,
        f"{type(reward).__name__} init_args.answer_column='{column}' is not a dataset column;"
        f" set it to one of {sorted(columns)}.",
    )
    return columns[column]


def _parse_gold(gold: str, timeout: Optional[int]) -> Optional[list]:
    """The parsed gold answer, or ``None`` if it is empty or does not parse to a math expression."""
    if not gold.strip():
        return None
    # Bare, a number parses but `2x` reads as `2`: boxing it makes math-verify read it whole as LaTeX.
    delimited = any(mark in gold for mark in ("$", "\\(", "\\[", "\\boxed"))
    text = gold if delimited else f"\\boxed{{{gold}}}"
    try:
        parsed = parse(text, parsing_timeout=timeout)
    except Exception:
        return None
    # When LaTeX fails, math-verify keeps only the raw string: that is no answer to compare with.
    return parsed if any(not isinstance(item, str) for item in parsed) else None


def _verify(gold: list, completion: str, timeout: Optional[int]) -> float:
    try:
        return float(verify(gold, parse(completion, parsing_timeout=timeout), timeout_seconds=timeout))
    except Exception:
        return 0.0  # text that breaks math-verify is a wrong answer, not a crash


def _compile(owner: str, pattern: str) -> re.Pattern:
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as error:
        raise ConfigError(
            f"{owner} init_args.pattern={pattern!r} is not a valid regular expression ({error}); fix the pattern."
        ) from None


def _snake_case(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


class OverlongPenalty(Reward):
    """DAPO's soft overlong punishment (arXiv 2503.14476): a length penalty added to the reward.

    r = min(−(|y| − (max_length − cache_length)) / cache_length, 0): zero up to
    max_length − cache_length tokens, then falling linearly to −1 at max_length. |y| is the
    completion's length in tokens (the module passes it as the ``completion_length`` column).

    Args:
        max_length: L_max, usually model.sampling.max_new_tokens.
        cache_length: L_c, the soft band before L_max.
        name: name in logs.
    """

    def __init__(self, max_length: int, cache_length: int, name: Optional[str] = None) -> None:
        super().__init__(name=name)
        check(0 < cache_length <= max_length,
              f"OverlongPenalty: need 0 < cache_length <= max_length, got {cache_length}, {max_length}")
        self.max_length, self.cache_length = max_length, cache_length

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        lengths = columns.get("completion_length")
        check(lengths is not None, "OverlongPenalty needs the completion_length column (the GRPO module passes it)")
        start = self.max_length - self.cache_length
        return [min(-(n - start) / self.cache_length, 0.0) for n in lengths]

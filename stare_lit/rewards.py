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
rewards are run and combined — errors, time limits, a worker process — is stare_lit.scoring.
"""

import ast
import operator
import re
import threading
from abc import ABC, abstractmethod
from typing import Any, Literal, Optional

from math_verify import parse, verify

from stare_lit.errors import ConfigError, check
from stare_lit.sandbox import Sandbox


class Reward(ABC):
    """Scores completions; one value per completion, ``None`` where the reward does not apply.

    Args:
        name: Name in logs and metrics; defaults to the class name in snake_case.
    """

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


class CodeTestReward(Reward):
    """Unit-test reward for Python completions: the share of the row's tests the program passes.

    The program is the completion's last fenced code block (```` ```python ```` or a bare
    ```` ``` ````), or the whole completion; a completion without a block scores 0.0. A row whose
    tests are missing or empty gives ``None``. A test that is not valid Python is a data error
    (the reward raises, and ``model.scoring.on_error`` decides).

    Tests, in ``tests_column``:

    - ``asserts``: a list of assert statements (or one string of them, one test per statement),
      run after the program, in its namespace, with the builtins as they were before it ran (so a
      program's own ``len`` or ``sum`` is not what a test calls: name task functions otherwise). For
      ``assert A`` and ``assert A <op> B`` (one comparison: ``==``, ``<``, ``in``, ``is``...),
      only the sides that are not literals go into the sandbox; their values come back as plain
      data (numbers, text, None, and lists, tuples, sets, dicts of them) and the comparison, with
      the literals, is done outside. So an object that equals everything, a forged report or a
      patched helper earns nothing, and a forger would need the right answer. Any other test
      (several statements, a chained comparison) is judged inside the sandbox, where a program
      that reads the harness's memory could fake it.
    - ``stdio``: a list of ``{"input": ..., "output": ...}``; the program runs once per pair with
      that stdin and passes if it exits with status 0 and its stdout equals the output (trailing
      whitespace of each line and trailing blank lines ignored).

    Every run is a stare_lit.sandbox.Sandbox: a separate process in a fresh directory, a scrubbed
    environment, resource limits and, where the kernel allows, no network, its own PID and
    mount namespaces and a read-only file system. **A resource-and-mistake sandbox, not a security
    boundary against a determined adversary**: for that, run rewards in a container or a sandbox
    service (README, "Code rewards"). Set ``model.scoring.timeout`` above
    ``sandbox.timeout_seconds`` times the runs per completion, so the worker bounds a stuck reward.

    Args:
        tests_column: Dataset column holding each row's tests.
        test_format: ``asserts`` or ``stdio``, as above.
        extract: ``fenced`` (the last fenced code block) or ``whole`` (the whole completion).
        all_or_nothing: Score 1.0 only when every test passes, else 0.0; off, the share passed.
        sandbox: Limits of each run; ``None`` is ``Sandbox()``.
        name: Name in logs and metrics; defaults to ``code_test_reward``.
    """

    _fenced = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

    def __init__(
        self,
        tests_column: str = "tests",
        test_format: Literal["asserts", "stdio"] = "asserts",
        extract: Literal["fenced", "whole"] = "fenced",
        all_or_nothing: bool = False,
        sandbox: Optional[Sandbox] = None,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name)
        check(test_format in ("asserts", "stdio"),
              f"CodeTestReward init_args.test_format={test_format!r}; use asserts or stdio.")
        check(extract in ("fenced", "whole"), f"CodeTestReward init_args.extract={extract!r}; use fenced or whole.")
        self.tests_column = tests_column
        self.test_format = test_format
        self.extract = extract
        self.all_or_nothing = all_or_nothing
        self.sandbox = sandbox if sandbox is not None else Sandbox()

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        check(self.tests_column in columns,
              f"CodeTestReward init_args.tests_column='{self.tests_column}' is not a dataset column;"
              f" set it to one of {sorted(columns)}.")
        tests = columns[self.tests_column]
        return [self._score(completion, row_tests) for completion, row_tests in zip(completions, tests)]

    def _score(self, completion: str, row_tests: Any) -> Optional[float]:
        if not row_tests:
            return None
        program = self.program(completion)
        if program is None:
            return 0.0
        if self.test_format == "asserts":
            passed = _passed_asserts(self.sandbox, program, _assert_tests(row_tests))
        else:
            passed = [_passed_stdio(self.sandbox, program, case) for case in _stdio_tests(row_tests)]
        if self.all_or_nothing:
            return float(all(passed))
        return sum(passed) / len(passed)

    def program(self, completion: str) -> Optional[str]:
        """The code to run: the last fenced block, or the whole completion (``extract``)."""
        if self.extract == "whole":
            return completion
        blocks = self._fenced.findall(completion)
        return blocks[-1] if blocks else None


def _assert_tests(row_tests: Any) -> list[tuple[dict, Optional[tuple]]]:
    """Each test as (what the sandbox runs, how to judge its values here, or ``None`` if it judges itself)."""
    if isinstance(row_tests, str):  # one string: each top-level statement is a test
        sources = [ast.get_source_segment(row_tests, node) for node in ast.parse(row_tests).body]
    else:
        sources = [str(source) for source in row_tests]
    return [_judged_outside(ast.parse(source), source) for source in sources]  # a SyntaxError names the test


_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}


def _judged_outside(tree: ast.Module, source: str) -> tuple[dict, Optional[tuple]]:
    """``assert A`` or ``assert A <op> B`` (one comparison): the sandbox evaluates the sides that are not
    literals and returns them as plain data; the comparison, and the literals, stay here. Any other
    test runs in the sandbox as it is."""
    if not (len(tree.body) == 1 and isinstance(tree.body[0], ast.Assert)):
        return {"kind": "statement", "source": source}, None
    test = tree.body[0].test
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _COMPARE:
        sides, exprs = [], []
        for node in (test.left, test.comparators[0]):
            try:
                sides.append(("literal", ast.literal_eval(node)))
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                sides.append(("value", len(exprs)))
                exprs.append(ast.unparse(node))
        return {"kind": "values", "exprs": exprs}, (_COMPARE[type(test.ops[0])], sides)
    return {"kind": "values", "exprs": [ast.unparse(test)]}, (bool, [("value", 0)])


def _passed_asserts(sandbox: Sandbox, program: str, tests: list[tuple[dict, Optional[tuple]]]) -> list[bool]:
    run = sandbox.run(program, "asserts", [sent for sent, _ in tests])
    passed = [False] * len(tests)
    for record, (_, judge) in zip(run.tests(), tests):
        if record.get("passed"):
            passed[record["index"]] = judge is None or _judge_values(judge, record.get("values"))
    return passed


def _judge_values(judge: tuple, reprs: Any) -> bool:
    """Apply the test's comparison here to the values the sandbox returned (plain data, parsed as literals)."""
    compare, sides = judge
    try:
        values = [ast.literal_eval(text) for text in reprs]
        operands = [value if kind == "literal" else values[value] for kind, value in sides]
        return bool(compare(*operands))
    except Exception:  # a value that is not a literal, or a comparison that raises, fails the test
        return False


def _stdio_tests(row_tests: Any) -> list[dict]:
    cases = list(row_tests)
    for case in cases:
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)):
            raise ValueError(f"a stdio test must be {{'input': str, 'output': str}}, got {case!r:.120}")
    return cases


def _passed_stdio(sandbox: Sandbox, program: str, case: dict) -> bool:
    run = sandbox.run(program, "stdio", stdin=case["input"])
    ok = run.exit_code == 0 and not run.tampered and not run.overflowed and len(run.records) == 1
    return ok and _normalise_output(run.stdout) == _normalise_output(case["output"])


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()

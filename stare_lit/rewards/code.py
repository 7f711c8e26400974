"""CodeTestReward: the share of a row's unit tests a Python completion passes, run in the sandbox, judged outside it."""

from __future__ import annotations

import ast
import functools
import re
from typing import Any, Literal, Optional

from stare_lit.errors import check
from stare_lit.rewards.base import ErrorScore, Reward
from stare_lit.sandbox import Sandbox, Session, Test, UnjudgeableTest, compile_test

_FORMS = ("a test is one `assert EXPRESSION`; the program's calls run in the sandbox and must return plain data"
          " (numbers, text, bytes, None, lists/tuples/sets/dicts of them); comparisons, and/or/not, arithmetic,"
          " comprehensions, math.<name> and the judge's builtins run outside it (docs/code_rewards.md)")


class CodeTestReward(Reward):
    """Unit-test reward for Python completions: the share of the row's tests the program passes.

    The program is the completion's last fenced code block (```` ```python ```` or a bare
    ```` ``` ````), or the whole completion; a completion without a block scores 0.0. A row whose
    tests are missing or empty gives ``None``.

    Tests, in ``tests_column``:

    - ``asserts``: a list of ``assert`` statements (or one string of them, one test per
      statement). The program runs once, in stare_lit.sandbox.Sandbox; the trainer then decides each
      test with stare_lit.sandbox.judge: the sandbox evaluates only the test's *program expressions*
      (``add(2, 3)``) and returns their values as plain data; the comparisons, ``and``/``or``/``not``,
      arithmetic and builtins of the test are evaluated here. The program never holds the expected
      values and never decides a verdict. A test the judge cannot decide that way is refused with a
      ``ValueError`` (one line: which test, why, what is accepted) when the row is first scored, and
      ``model.scoring.on_error`` decides.
    - ``stdio``: a list of ``{"input": ..., "output": ...}``; the program runs once per pair with
      that stdin and passes if it exits with status 0 and its stdout equals the output (trailing
      whitespace of each line and trailing blank lines ignored), compared here.

    A run whose report breaks the protocol (a program that writes into the harness's channel, say)
    scores ``ErrorScore(0.0)``: 0, counted in ``reward/<name>_errors``. Set ``model.scoring.timeout``
    above ``sandbox.timeout_seconds`` times the runs per completion, so the worker bounds a stuck reward.

    Args:
        tests_column: Dataset column holding each row's tests.
        test_format: ``asserts`` or ``stdio``, as above.
        extract: ``fenced`` (the last fenced code block) or ``whole`` (the whole completion).
        all_or_nothing: Score 1.0 only when every test passes, else 0.0; off, the share passed.
        sandbox: Limits and isolation of each run; ``None`` is ``Sandbox()``.
        name: Name in logs and metrics; defaults to ``code_test_reward``.
    """

    concurrent = True  # its time is a sandboxed subprocess's: threads overlap them (runner: model.scoring.workers)
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
        if self.test_format == "asserts":
            tests = compiled_tests(_sources(row_tests))  # refused before anything runs
        else:
            cases = _stdio_tests(row_tests)
        program = self.program(completion)
        if program is None:
            return 0.0
        if self.test_format == "asserts":
            passed, tampered = _passed_asserts(self.sandbox, program, tests)
        else:
            runs = [_passed_stdio(self.sandbox, program, case) for case in cases]
            passed, tampered = [ok for ok, _ in runs], any(bad for _, bad in runs)
        if tampered:
            return ErrorScore(0.0)
        if self.all_or_nothing:
            return float(all(passed))
        return sum(passed) / len(passed)

    def program(self, completion: str) -> Optional[str]:
        """The code to run: the last fenced block, or the whole completion (``extract``)."""
        if self.extract == "whole":
            return completion
        blocks = self._fenced.findall(completion)
        return blocks[-1] if blocks else None


def _sources(row_tests: Any) -> tuple[str, ...]:
    if isinstance(row_tests, str):  # one string: each top-level statement is a test
        try:
            body = ast.parse(row_tests).body
        except SyntaxError as error:
            raise UnjudgeableTest(f"CodeTestReward: the row's tests are not valid Python ({error.msg}); {_FORMS}") from None
        return tuple(ast.get_source_segment(row_tests, node) for node in body)
    return tuple(str(source) for source in row_tests)


@functools.lru_cache(maxsize=4096)
def compiled_tests(sources: tuple[str, ...]) -> tuple[Test, ...]:
    """The row's tests, compiled for the judge (cached: a row is scored once per completion).

    Raises:
        UnjudgeableTest: A test the judge cannot decide without the program deciding it.
    """
    compiled = []
    for i, source in enumerate(sources):
        try:
            test = compile_test(source)
            if not test.leaves:
                raise UnjudgeableTest("it evaluates nothing of the program")
        except UnjudgeableTest as why:
            raise UnjudgeableTest(f"CodeTestReward: test {i + 1} of the row ({source!r:.80}) cannot be judged:"
                                  f" {why}; {_FORMS}") from None
        compiled.append(test)
    return tuple(compiled)


def _passed_asserts(sandbox: Sandbox, program: str, tests: tuple[Test, ...]) -> tuple[list[bool], bool]:
    """Each test's verdict, and whether the run's report was tampered with (then the verdicts do not count)."""
    with sandbox.session(program) as session:
        if not session.loaded:
            passed = [False] * len(tests)
        else:
            passed = [test.passed(functools.partial(_ask, session), session.deadline) for test in tests]
    return passed, session.run.tampered


def _ask(session: Session, leaf, names: dict) -> Any:
    return session.value(leaf.source, names, leaf.iterate)


def _stdio_tests(row_tests: Any) -> list[dict]:
    cases = list(row_tests)
    for case in cases:
        if not (isinstance(case, dict) and isinstance(case.get("input"), str) and isinstance(case.get("output"), str)):
            raise ValueError(f"a stdio test must be {{'input': str, 'output': str}}, got {case!r:.120}")
    return cases


def _passed_stdio(sandbox: Sandbox, program: str, case: dict) -> tuple[bool, bool]:
    run = sandbox.run(program, stdin=case["input"])
    ok = run.exit_code == 0 and not run.timed_out and not run.overflowed
    return ok and _normalise_output(run.stdout) == _normalise_output(case["output"]), run.tampered


def _normalise_output(text: str) -> str:
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines()).rstrip()

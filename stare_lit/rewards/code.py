"""CodeTestReward: the share of a row's unit tests a Python completion passes, run in the sandbox."""

import ast
import operator
import re
import threading
from abc import ABC, abstractmethod
from typing import Any, Literal, Optional

from math_verify import parse, verify

from stare_lit.errors import ConfigError, check
from stare_lit.rewards.sandbox import Sandbox

from stare_lit.rewards.base import Reward

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

    Every run is a stare_lit.rewards.Sandbox: a separate process in a fresh directory, a scrubbed
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

"""CodeTestReward: the share of a row's tests a Python completion passes, run in the sandbox, judged outside it."""

from __future__ import annotations

import re
from typing import Literal, Optional

from stare_lit.errors import check
from stare_lit.rewards.base import ErrorScore, Reward
from stare_lit.rewards.formats import AssertTests, CodeTests
from stare_lit.sandbox import Sandbox


class CodeTestReward(Reward):
    """Unit-test reward for Python completions: the share of the row's tests the program passes.

    The code is the completion's last fenced code block (```` ```python ```` or a bare ```` ``` ````),
    or the whole completion; a completion without a block scores 0.0. ``tests`` says how the row's
    tests are shaped and where each is decided (stare_lit.rewards.formats): ``AssertTests`` (the
    default), ``StdioTests``, ``CallTests``, ``HumanEvalTests``, ``MBPPTests`` — never where the
    program runs. A row whose tests are missing or empty gives ``None``; a row the format cannot
    judge raises ``UnjudgeableTest`` (a ``ValueError`` of one line) when it is first scored, and
    ``model.scoring.on_error`` decides.

    A run whose report breaks the protocol (a program that writes into the harness's channel, say)
    scores ``ErrorScore(0.0)``: 0, counted in ``reward/<name>_errors``. Set ``model.scoring.timeout``
    above ``sandbox.timeout_seconds`` times the runs per completion, so the worker bounds a stuck reward.

    Each completion is scored on its own (one sandboxed run, or one per stdio test), so a batch may
    be split across workers in any way.

    Args:
        tests: The shape of the row's tests, by class_path; ``None`` is ``AssertTests()`` (column ``tests``).
        extract: ``fenced`` (the last fenced code block) or ``whole`` (the whole completion).
        all_or_nothing: Score 1.0 only when every test passes, else 0.0; off, the share passed.
        sandbox: Limits and isolation of each run; ``None`` is ``Sandbox()``.
        name: Name in logs and metrics; defaults to ``code_test_reward``.
    """

    concurrent = True  # its time is a sandboxed subprocess's: threads overlap them (runner: model.scoring.workers)
    _fenced = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)

    def __init__(
        self,
        tests: Optional[CodeTests] = None,
        extract: Literal["fenced", "whole"] = "fenced",
        all_or_nothing: bool = False,
        sandbox: Optional[Sandbox] = None,
        name: Optional[str] = None,
    ) -> None:
        super().__init__(name)
        check(tests is None or isinstance(tests, CodeTests),
              f"CodeTestReward init_args.tests={tests!r}; give a class_path such as stare_lit.rewards.AssertTests,"
              " HumanEvalTests, MBPPTests, StdioTests or CallTests (docs/code_rewards.md).")
        check(extract in ("fenced", "whole"), f"CodeTestReward init_args.extract={extract!r}; use fenced or whole.")
        self.tests = tests if tests is not None else AssertTests()
        self.extract = extract
        self.all_or_nothing = all_or_nothing
        self.sandbox = sandbox if sandbox is not None else Sandbox()

    def __call__(self, prompts: list[str], completions: list[str], **columns: list) -> list[Optional[float]]:
        columns = {"prompt": prompts, **columns}  # the prompt as the data module formatted it (HumanEval's code)
        for column in self.tests.columns:
            check(column in columns,
                  f"CodeTestReward init_args.tests ({type(self.tests).__name__}) reads the column '{column}', which"
                  f" is not a dataset column; set it to one of {sorted(columns)}.")
        names = [c for c in (*self.tests.columns, *self.tests.optional) if c in columns]
        return [self.score(completion, {c: columns[c][i] for c in names}) for i, completion in enumerate(completions)]

    def score(self, completion: str, row: dict) -> Optional[float]:
        """One completion's score against its row (the format's columns)."""
        cases = self.tests.cases(row)  # refused before anything runs
        if not cases:
            return None
        code = self.program(completion)
        if code is None:
            return 0.0
        passed, tampered = self.tests.verdicts(self.sandbox, self.tests.program(code, row), cases)
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

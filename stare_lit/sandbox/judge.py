"""The judge: decides a test's ``assert`` here, in the trainer, from plain values the sandbox computed.

A test is one ``assert EXPRESSION``. :func:`compile_test` splits the expression, once, when the
reward first sees the row:

- **program expressions** (evaluated in the sandbox): every sub-expression that uses a name the
  program defines — ``add(2, 3)``, ``Stack().push(1).size()``, ``CONSTANT`` — taken whole, with the
  test's own comprehension variables passed in as plain values. A call of a builtin whose arguments
  are all program expressions goes with them (``len(gen(3))``, ``str(Fraction(1, 2))``, and
  ``map``/``filter``/``sorted`` given a program function), because it only turns the program's
  value into data. The sandbox returns each result as plain data (``stare_lit.sandbox.wire``):
  ``None``, ``bool``, ``int``, ``float``, ``complex``, ``str``, ``bytes`` and ``list``, ``tuple``,
  ``set``, ``frozenset``, ``dict`` of them, exact types only; where the judge only iterates the
  result (``all(... for x in gen())``, ``sorted(gen(), reverse=True)``) the sandbox sends ``list(result)``.
- **everything else** (evaluated here, on those values): literals, comparisons (chained too),
  ``and``/``or``/``not``, arithmetic, ``x if c else y``, indexing and slicing, list/tuple/set/dict
  displays and comprehensions, f-strings, ``lambda`` as a ``key=``, the builtins in ``FUNCTIONS``,
  ``math.<name>`` for the names in ``MATH``, and the plain types' methods in ``METHODS``.

So the program only ever produces values; it never compares, adds, negates or tests the truth of
anything the verdict depends on, and it never sees the expected values. An object whose ``__eq__``,
``__sub__`` or ``__bool__`` lies, a patched ``math.isclose``, a forged report or a harness read from
memory gains nothing a plain return value would not. A program result that is not plain data (or a
program expression that raises, or never answers) fails that test.

Refused when the row is loaded, with :class:`UnjudgeableTest` (one line: which test, why, what is
accepted): anything but one ``assert``; ``:=``, ``await``, ``yield``; ``is`` unless one side is
``None``, ``True``, ``False``, ``...`` or a type name; a sub-expression that names no program value
yet is not one the judge evaluates (``bytes([1])``, ``"ab".center(9)``: the expected side must never
be computed where the program runs); a standard-library module other than ``math.<name>``
(``re.match``, ``json.loads``: a module the program can import is one it can patch).

What a test that hands the program the expected value (``assert check(f(3), 42)``, ``assert
f(3).equals(42)``) means is up to the program's code: write tests so the program only produces.

The judge's own work is bounded (steps, sizes of what it builds, a deadline), so a program value
such as ``10**9`` used as ``range(...)``, ``"x" * ...`` or an exponent fails the test instead of
stalling the trainer.
"""

from __future__ import annotations

import ast
import builtins
import math
import operator
import re
import sys
import time
from typing import Any, Callable, Optional

from stare_lit.errors import short
from stare_lit.sandbox.wire import NoValue

MAX_ITEMS = 1_000_000  # the longest sequence the judge builds
MAX_STEPS = 300_000  # nodes the judge may evaluate for one test (~1 s at worst)
_MAX_BITS = 1_000_000  # the largest integer the judge computes with ** or <<

# Builtins the judge evaluates (guarded where an argument could make them huge).
FUNCTIONS = ("abs", "all", "any", "bin", "bool", "chr", "complex", "dict", "divmod", "enumerate", "filter",
             "float", "frozenset", "hex", "int", "isinstance", "len", "list", "map", "max", "min", "oct", "ord",
             "pow", "range", "repr", "reversed", "round", "set", "sorted", "str", "sum", "tuple", "type", "zip")
TYPES = ("bool", "bytes", "complex", "dict", "float", "frozenset", "int", "list", "set", "str", "tuple")
MATH = ("ceil", "copysign", "degrees", "e", "exp", "fabs", "floor", "fsum", "gcd", "hypot", "inf", "isclose",
        "isfinite", "isinf", "isnan", "lcm", "log", "log10", "log2", "nan", "pi", "radians", "sqrt", "tau", "trunc",
        "sin", "cos", "tan", "atan", "atan2")
_STR = ("capitalize", "casefold", "count", "endswith", "find", "index", "isalnum", "isalpha", "isdigit",
        "islower", "isspace", "isupper", "join", "lower", "lstrip", "replace", "rfind", "rindex", "rsplit",
        "rstrip", "split", "splitlines", "startswith", "strip", "swapcase", "title", "upper")
_SET = ("difference", "intersection", "isdisjoint", "issubset", "issuperset", "symmetric_difference", "union")
METHODS = {str: _STR, bytes: _STR, list: ("count", "index"), tuple: ("count", "index"),
           dict: ("get", "items", "keys", "values"), set: _SET, frozenset: _SET}
ATTRIBUTES = ("real", "imag", "numerator", "denominator")
_SINGLETONS = (None, True, False, Ellipsis)
# Where a builtin takes a function: given a program function, the whole call is a program expression.
_FUNCTION_ARGS = {"map": 0, "filter": 0, "sorted": "key", "min": "key", "max": "key"}
# Where a builtin only iterates an argument: a program value there is sent as list(value).
_ITERATED = {"all": (0,), "any": (0,), "list": (0,), "tuple": (0,), "set": (0,), "frozenset": (0,),
             "sorted": (0,), "sum": (0,), "enumerate": (0,), "reversed": (0,), "dict": (0,), "min": (0,),
             "max": (0,), "zip": range(64), "map": range(1, 64), "filter": (1,)}
# Builtins the judge keeps even when all their arguments are program values: their results are not data.
_KEPT = frozenset({"type", "range", "enumerate", "zip", "reversed"})
_STDLIB = frozenset(sys.stdlib_module_names)
_ALL_METHODS = frozenset(m for methods in METHODS.values() for m in methods)
_BUILTIN_NAMES = frozenset(dir(builtins))

PROGRAM, JUDGE = "program", "judge"  # where a sub-expression is evaluated


class UnjudgeableTest(ValueError):
    """A test the judge cannot decide without letting the program decide it; refused when the row loads."""


class _Budget(Exception):
    """The judge's own bounds were reached: the test fails."""


class Leaf:
    """A program expression: its source, the test's variables it uses, and whether the judge only iterates it."""

    def __init__(self, source: str, names: tuple[str, ...], iterate: bool) -> None:
        self.source, self.names, self.iterate = source, names, iterate

    def __repr__(self) -> str:
        return f"Leaf({self.source!r}, names={self.names}, iterate={self.iterate})"


# ---------------------------------------------------------------------------------------- compile
def compile_test(source: str) -> "Test":
    """The test ``source`` split into program expressions and the judge's part; :class:`UnjudgeableTest` if it cannot be."""
    try:
        tree = ast.parse(source)
    except SyntaxError as error:
        raise UnjudgeableTest(f"it is not valid Python ({error.msg})") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise UnjudgeableTest("it is not one `assert EXPRESSION` statement")
    expression = tree.body[0].test
    leaves: dict[int, Leaf] = {}
    if _Splitter(leaves).kind(expression, frozenset()) == PROGRAM:
        _Splitter(leaves).leaf(expression, frozenset(), iterate=False)
    return Test(source, expression, leaves)


class _Splitter:
    """Decides, node by node, what the sandbox evaluates (``PROGRAM``) and what the judge does; records the leaves."""

    def __init__(self, leaves: dict[int, Leaf]) -> None:
        self.leaves = leaves

    def leaf(self, node: ast.expr, bound: frozenset, iterate: bool) -> None:
        loaded = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
        local = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
        local |= {a.arg for n in ast.walk(node) if isinstance(n, ast.Lambda) for a in n.args.args}
        modules = {n.value.id for n in ast.walk(node) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)}
        if not loaded - bound - local - _BUILTIN_NAMES - (modules & _STDLIB):  # `random(3)` may be the program's
            # It names nothing of the program, so it computes an expected value: never where the program runs.
            raise UnjudgeableTest(f"`{_short(node)}` names nothing the program defines, yet the judge does not"
                                  " evaluate it; the expected side must be computed by the judge")
        self.leaves[id(node)] = Leaf(ast.unparse(node), tuple(sorted(loaded & bound)), iterate)

    def judge(self, node: ast.expr, bound: frozenset, iterate: bool = False) -> str:
        """Classify ``node`` in a judge context; if it is a program expression, make it a leaf."""
        kind = self.kind(node, bound)
        if kind == PROGRAM:
            self.leaf(node, bound, iterate)
        return kind

    def kind(self, node: ast.expr, bound: frozenset) -> str:
        handler = getattr(self, "_" + type(node).__name__, None)
        if handler is None:
            raise UnjudgeableTest(f"the judge does not evaluate `{_short(node)}` ({type(node).__name__})")
        return handler(node, bound)

    def _children(self, nodes, bound: frozenset, iterate: bool = False) -> str:
        for node in nodes:
            self.judge(node, bound, iterate)
        return JUDGE

    def _Constant(self, node, bound):
        return JUDGE

    def _Name(self, node, bound):
        if node.id in bound or node.id in FUNCTIONS or node.id in TYPES:
            return JUDGE
        if node.id in _STDLIB:
            raise UnjudgeableTest(f"it uses the module `{node.id}` itself; only `math.<name>` is evaluated by the judge")
        if node.id in _BUILTIN_NAMES:
            raise UnjudgeableTest(f"`{node.id}` is not a builtin the judge evaluates ({', '.join(FUNCTIONS)})")
        return PROGRAM

    def _Attribute(self, node, bound):
        if isinstance(node.value, ast.Name) and node.value.id not in bound and node.value.id in _STDLIB:
            if node.value.id == "math" and node.attr in MATH:
                return JUDGE
            raise UnjudgeableTest(f"it uses `{_short(node)}`: of the standard library the judge evaluates only"
                                  f" math.{{{', '.join(MATH)}}}; a module the program can import is one it can patch")
        if self.kind(node.value, bound) == PROGRAM:
            return PROGRAM  # an attribute of a program value: the program's own
        if node.attr not in ATTRIBUTES:
            raise UnjudgeableTest(f"`{_short(node)}`: the judge reads only {', '.join(ATTRIBUTES)} of a value it holds")
        return JUDGE

    def _Call(self, node, bound):
        if any(k.arg is None for k in node.keywords):
            raise UnjudgeableTest(f"`{_short(node)}`: `**` arguments are not evaluated by the judge")
        func = node.func
        if isinstance(func, ast.Attribute) and not _is_module(func.value, bound):
            if self.kind(func.value, bound) == PROGRAM:
                return PROGRAM  # a method of a program value: the program's own code, arguments included
            if func.attr not in _ALL_METHODS:
                raise UnjudgeableTest(f"`{_short(node)}`: `.{func.attr}()` is not a method the judge calls")
            return self._arguments(node, bound)
        if isinstance(func, ast.Attribute):  # math.<name>(...); any other module is refused there
            self._Attribute(func, bound)
            return self._arguments(node, bound)
        if isinstance(func, ast.Name) and func.id not in bound and func.id in _BUILTIN_NAMES:
            return self._builtin(node, func.id, bound)
        return PROGRAM  # a program function, or a call of a program value

    def _builtin(self, node: ast.Call, name: str, bound: frozenset) -> str:
        function_arg, iterated = _FUNCTION_ARGS.get(name), _ITERATED.get(name, ())
        parts = [(a.value if isinstance(a, ast.Starred) else a, i in iterated or isinstance(a, ast.Starred),
                  i == function_arg) for i, a in enumerate(node.args)]
        parts += [(k.value, False, k.arg == function_arg) for k in node.keywords]
        kinds = [JUDGE if isinstance(arg, ast.Lambda) else self.kind(arg, bound) for arg, _, _ in parts]
        if parts and all(kind == PROGRAM for kind in kinds) and name not in _KEPT:
            return PROGRAM  # it only turns the program's values into data: len(gen()), str(Fraction(1, 2))
        if any(kind == PROGRAM and is_function for kind, (_, _, is_function) in zip(kinds, parts)):
            return PROGRAM  # map(f, xs), sorted(xs, key=f): the test's values are arguments of the program's code
        if name not in FUNCTIONS:
            raise UnjudgeableTest(f"`{_short(node)}`: `{name}` is not a builtin the judge evaluates"
                                  f" ({', '.join(FUNCTIONS)}), and it must not be evaluated where the program runs")
        for (arg, iterate, _), kind in zip(parts, kinds):
            if isinstance(arg, ast.Lambda):
                self._lambda(arg, bound)
            elif kind == PROGRAM:
                self.leaf(arg, bound, iterate)
        return JUDGE

    def _arguments(self, node: ast.Call, bound: frozenset) -> str:
        for arg in node.args:
            self._argument(arg.value if isinstance(arg, ast.Starred) else arg, bound, isinstance(arg, ast.Starred))
        for keyword in node.keywords:
            self._argument(keyword.value, bound, iterate=False)
        return JUDGE

    def _argument(self, node, bound, iterate: bool) -> None:
        if isinstance(node, ast.Lambda):
            self._lambda(node, bound)
        else:
            self.judge(node, bound, iterate)

    def _lambda(self, node: ast.Lambda, bound: frozenset) -> None:
        args = node.args
        if args.vararg or args.kwarg or args.kwonlyargs or args.defaults or args.posonlyargs:
            raise UnjudgeableTest(f"`{_short(node)}`: the judge's lambdas take plain positional parameters only")
        self.judge(node.body, bound | {a.arg for a in args.args})

    def _Lambda(self, node, bound):
        raise UnjudgeableTest(f"`{_short(node)}`: a lambda is evaluated by the judge only as a builtin's argument")

    def _BoolOp(self, node, bound):
        return self._children(node.values, bound)

    def _UnaryOp(self, node, bound):
        return self._children([node.operand], bound)

    def _BinOp(self, node, bound):
        if isinstance(node.op, ast.MatMult):
            raise UnjudgeableTest(f"`{_short(node)}`: the judge does not evaluate `@`")
        return self._children([node.left, node.right], bound)

    def _Compare(self, node, bound):
        operands = [node.left, *node.comparators]
        for i, op in enumerate(node.ops):
            if isinstance(op, (ast.Is, ast.IsNot)) and not (_singleton(operands[i]) or _singleton(operands[i + 1])):
                raise UnjudgeableTest(f"`{_short(node)}`: `is` compares identity, which plain data does not keep;"
                                      " use it with None, True, False or a type name, or use ==")
        return self._children(operands, bound)

    def _IfExp(self, node, bound):
        return self._children([node.test, node.body, node.orelse], bound)

    def _Subscript(self, node, bound):
        return self._children([node.value, node.slice], bound)

    def _Slice(self, node, bound):
        return self._children([n for n in (node.lower, node.upper, node.step) if n is not None], bound)

    def _List(self, node, bound):
        return self._display(node.elts, bound)

    _Tuple = _Set = _List

    def _display(self, elements, bound):
        for element in elements:
            if isinstance(element, ast.Starred):
                self.judge(element.value, bound, iterate=True)
            else:
                self.judge(element, bound)
        return JUDGE

    def _Dict(self, node, bound):
        if any(key is None for key in node.keys):
            raise UnjudgeableTest(f"`{_short(node)}`: `**` in a dict display is not evaluated by the judge")
        return self._children(node.keys + node.values, bound)

    def _comprehension(self, node, parts, bound):
        for generator in node.generators:
            if generator.is_async:
                raise UnjudgeableTest(f"`{_short(node)}`: async comprehensions are not evaluated by the judge")
            self.judge(generator.iter, bound, iterate=True)
            bound = bound | _targets(generator.target, node)
            self._children(generator.ifs, bound)
        return self._children(parts, bound)

    def _ListComp(self, node, bound):
        return self._comprehension(node, [node.elt], bound)

    _SetComp = _GeneratorExp = _ListComp

    def _DictComp(self, node, bound):
        return self._comprehension(node, [node.key, node.value], bound)

    def _JoinedStr(self, node, bound):
        return self._children(node.values, bound)

    def _FormattedValue(self, node, bound):
        return self._children([node.value] + ([node.format_spec] if node.format_spec else []), bound)


def _is_module(node: ast.expr, bound: frozenset) -> bool:
    return isinstance(node, ast.Name) and node.id not in bound and node.id in _STDLIB


def _singleton(node: ast.expr) -> bool:
    return (isinstance(node, ast.Constant) and any(node.value is s for s in _SINGLETONS)) or (
        isinstance(node, ast.Name) and node.id in TYPES)


def _targets(target: ast.expr, where: ast.expr) -> set[str]:
    if isinstance(target, ast.Name):
        return {target.id}
    if isinstance(target, (ast.Tuple, ast.List)) and not any(isinstance(t, ast.Starred) for t in target.elts):
        return set().union(*(_targets(t, where) for t in target.elts))
    raise UnjudgeableTest(f"`{_short(where)}`: a comprehension's variables must be names or tuples of names")


def _short(node: ast.AST) -> str:
    return short(ast.unparse(node), 60)


# ---------------------------------------------------------------------------------------- evaluate
Ask = Callable[[Leaf, dict], Any]  # (leaf, the test's variables it uses) -> plain value, or raises NoValue


class Test:
    """One compiled test. :meth:`passed` evaluates it here, asking for each program expression's value."""

    def __init__(self, source: str, expression: ast.expr, leaves: dict[int, Leaf]) -> None:
        self.source, self.expression, self._leaves = source, expression, leaves

    @property
    def leaves(self) -> list[Leaf]:
        """The program expressions the judge asks for (none inside another)."""
        found, todo = [], [self.expression]
        while todo:
            node = todo.pop(0)
            if id(node) in self._leaves:
                found.append(self._leaves[id(node)])
            else:
                todo.extend(ast.iter_child_nodes(node))
        return found

    def passed(self, ask: Ask, deadline: float = float("inf")) -> bool:
        """Whether the assertion holds with the program's values; a value that does not come, or a judge
        bound reached, fails it (never raises for those)."""
        evaluator = _Evaluator(self._leaves, ask, deadline)
        try:
            return bool(_truth(evaluator.value(self.expression, {})))
        except (NoValue, _Budget, ArithmeticError, AttributeError, TypeError, ValueError, LookupError, RecursionError,
                MemoryError):
            return False  # as a Python assert whose expression raises: the test fails


_truth = bool  # of a plain value, a range or a judge iterator: Python's own


class _Closure:
    """A test's ``lambda``, evaluated by the judge."""

    def __init__(self, evaluator: "_Evaluator", node: ast.Lambda, env: dict) -> None:
        self.evaluator, self.node, self.env = evaluator, node, env

    def __call__(self, *args):
        names = [a.arg for a in self.node.args.args]
        if len(args) != len(names):
            raise TypeError("wrong number of arguments to a lambda")
        return self.evaluator.value(self.node.body, {**self.env, **dict(zip(names, args))})


class _Evaluator:
    def __init__(self, leaves: dict[int, Leaf], ask: Ask, deadline: float) -> None:
        self.leaves, self.ask, self.deadline, self.steps = leaves, ask, deadline, 0

    def value(self, node: ast.expr, env: dict) -> Any:
        self.steps += 1
        if self.steps > MAX_STEPS or (self.steps % 1024 == 0 and time.monotonic() > self.deadline):
            raise _Budget("too many steps")
        leaf = self.leaves.get(id(node))
        if leaf is not None:
            return self.ask(leaf, {name: env[name] for name in leaf.names})
        return getattr(self, "_" + type(node).__name__)(node, env)

    def _Constant(self, node, env):
        return node.value

    def _Name(self, node, env):
        if node.id in env:
            return env[node.id]
        return _JUDGE_NAMES[node.id]

    def _Attribute(self, node, env):
        if isinstance(node.value, ast.Name) and node.value.id == "math" and "math" not in env:
            return _MATH[node.attr]
        value = self.value(node.value, env)
        if type(value) not in (int, bool, float, complex):
            raise TypeError(f"no attribute {node.attr} here")
        return getattr(value, node.attr)

    def _BoolOp(self, node, env):
        value = None
        for operand in node.values:
            value = self.value(operand, env)
            if _truth(value) == isinstance(node.op, ast.Or):
                return value
        return value

    def _UnaryOp(self, node, env):
        operand = self.value(node.operand, env)
        if isinstance(node.op, ast.Not):
            return not _truth(operand)
        return _UNARY[type(node.op)](_plain(operand))

    def _BinOp(self, node, env):
        left, right = _plain(self.value(node.left, env)), _plain(self.value(node.right, env))
        _check_binop(node.op, left, right)
        return _BINARY[type(node.op)](left, right)

    def _Compare(self, node, env):
        left = self.value(node.left, env)
        for op, right_node in zip(node.ops, node.comparators):
            right = self.value(right_node, env)
            if not _COMPARE[type(op)](_comparable(left), _comparable(right)):
                return False
            left = right
        return True

    def _IfExp(self, node, env):
        return self.value(node.body if _truth(self.value(node.test, env)) else node.orelse, env)

    def _Subscript(self, node, env):
        container = _plain(self.value(node.value, env))
        if type(container) not in (str, bytes, list, tuple, dict, range):
            raise TypeError("not subscriptable here")
        return container[self.value(node.slice, env)]

    def _Slice(self, node, env):
        parts = [None if n is None else _index(self.value(n, env)) for n in (node.lower, node.upper, node.step)]
        return slice(*parts)

    def _elements(self, elements, env):
        for element in elements:
            if isinstance(element, ast.Starred):
                yield from self.iterate(element.value, env)
            else:
                yield self.value(element, env)

    def _List(self, node, env):
        return _sized(list(self._elements(node.elts, env)))

    def _Tuple(self, node, env):
        return tuple(self._List(node, env))

    def _Set(self, node, env):
        return set(self._List(node, env))

    def _Dict(self, node, env):
        return {self.value(k, env): self.value(v, env) for k, v in zip(node.keys, node.values)}

    def iterate(self, node, env):
        """Iterate a value the judge holds (a program value arrives as a list)."""
        value = self.value(node, env)
        if type(value) not in (str, bytes, list, tuple, set, frozenset, dict, range) and not _is_iterator(value):
            raise TypeError("not iterable here")
        return iter(value)

    def _generate(self, generators, env, emit):
        if not generators:
            yield emit(env)
            return
        first, rest = generators[0], generators[1:]
        for item in self.iterate(first.iter, env):
            inner = {**env, **_bind(first.target, item)}
            if all(_truth(self.value(test, inner)) for test in first.ifs):
                yield from self._generate(rest, inner, emit)

    def _ListComp(self, node, env):
        return _sized(list(self._generate(node.generators, env, lambda e: self.value(node.elt, e))))

    def _SetComp(self, node, env):
        return set(self._ListComp(node, env))

    def _GeneratorExp(self, node, env):
        return _JudgeIterator(self._generate(node.generators, env, lambda e: self.value(node.elt, e)))

    def _DictComp(self, node, env):
        pairs = self._generate(node.generators, env, lambda e: (self.value(node.key, e), self.value(node.value, e)))
        return dict(_sized(list(pairs)))

    def _JoinedStr(self, node, env):
        return "".join(str(self.value(part, env)) for part in node.values)

    def _FormattedValue(self, node, env):
        value = _plain(self.value(node.value, env))
        value = {-1: value, 115: str(value), 114: repr(value), 97: ascii(value)}[node.conversion]
        spec = self.value(node.format_spec, env) if node.format_spec else ""
        if re.search(r"\d{4,}", spec):
            raise _Budget("a format width of 1000 or more")
        return format(value, spec)

    def _Call(self, node, env):
        args = []
        for arg in node.args:
            if isinstance(arg, ast.Starred):
                args.extend(self.iterate(arg.value, env))
            else:
                args.append(self._argument(arg, env))
        kwargs = {k.arg: self._argument(k.value, env) for k in node.keywords}
        func = node.func
        if isinstance(func, ast.Attribute) and not (isinstance(func.value, ast.Name) and func.value.id == "math"
                                                    and "math" not in env):
            return _call_method(self.value(func.value, env), func.attr, args, kwargs)
        return _call(self.value(func, env), args, kwargs)

    def _argument(self, node, env):
        return _Closure(self, node, env) if isinstance(node, ast.Lambda) else self.value(node, env)


class _JudgeIterator:
    """A generator expression of the test: lazy, so ``all``/``any`` stop early as in Python."""

    def __init__(self, items) -> None:
        self.items = items

    def __iter__(self):
        return self

    def __next__(self):
        return next(self.items)


def _is_iterator(value: Any) -> bool:
    return type(value) in (_JudgeIterator, map, filter, zip, enumerate, reversed, type(iter([])), type(iter(())),
                           type(iter("")), type(iter(range(0))), type(iter({})), type({}.keys()), type({}.values()),
                           type({}.items()), type(iter(set())))


def _plain(value: Any) -> Any:
    if type(value) in (_Closure, _JudgeIterator):
        raise TypeError("a lambda or generator is not a value here")
    return value


def _comparable(value: Any) -> Any:
    if _is_iterator(value) or type(value) is _Closure:
        raise TypeError("comparing an iterator")
    return value


def _bind(target: ast.expr, item: Any) -> dict:
    if isinstance(target, ast.Name):
        return {target.id: item}
    items = list(item) if type(item) in (list, tuple, str, bytes, range) else None
    if items is None or len(items) != len(target.elts):
        raise ValueError("cannot unpack")
    bound = {}
    for sub, value in zip(target.elts, items):
        bound.update(_bind(sub, value))
    return bound


def _index(value: Any) -> Optional[int]:
    if value is not None and type(value) not in (int, bool):
        raise TypeError("slice indices must be integers")
    return value


def _sized(items: list) -> list:
    if len(items) > MAX_ITEMS:
        raise _Budget("a sequence longer than the judge builds")
    return items


def _check_binop(op: ast.operator, left: Any, right: Any) -> None:
    """Refuse the operations whose result a program value could make enormous."""
    ints = (int, bool)
    if isinstance(op, ast.Mult):
        for seq, n in ((left, right), (right, left)):
            if type(seq) in (str, bytes, list, tuple) and type(n) in ints and len(seq) * max(n, 0) > MAX_ITEMS:
                raise _Budget("repetition too long")
    elif isinstance(op, ast.Pow) and type(left) in ints and type(right) in ints:
        if abs(left) > 1 and right > 0 and left.bit_length() * right > _MAX_BITS:
            raise _Budget("a power too large")
    elif isinstance(op, ast.LShift) and type(left) in ints and type(right) in ints:
        if right > 0 and left.bit_length() + right > _MAX_BITS:
            raise _Budget("a shift too large")
    elif isinstance(op, ast.Mod) and type(left) in (str, bytes):
        if re.search(rb"\d{4,}|\*" if type(left) is bytes else r"\d{4,}|\*", left):
            raise _Budget("a format width of 1000 or more")


_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
           ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
           ast.BitXor: operator.xor, ast.BitAnd: operator.and_}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.LtE: operator.le,
            ast.Gt: operator.gt, ast.GtE: operator.ge, ast.In: lambda a, b: a in b,
            ast.NotIn: lambda a, b: a not in b, ast.Is: operator.is_, ast.IsNot: operator.is_not}


# ---------------------------------------------------------------------------------------- builtins
def _call(func: Any, args: list, kwargs: dict) -> Any:
    if type(func) is _Closure:
        return func(*args)
    guarded = _GUARDED.get(func)
    if guarded is None and func not in _ALLOWED:
        raise TypeError("not a function the judge calls")
    return (guarded or func)(*args, **kwargs)


def _call_method(receiver: Any, name: str, args: list, kwargs: dict) -> Any:
    kind = type(receiver)
    if name not in METHODS.get(kind, ()):
        raise TypeError(f"no method {name} here")
    if name == "replace":
        _check_replace(receiver, *args)
    return getattr(kind, name)(receiver, *args, **kwargs)


def _check_replace(text, old=None, new=None, *rest) -> None:
    if type(old) is type(text) and type(new) is type(text):
        count = len(text) + 1 if not old else text.count(old)
        if len(text) + count * max(len(new) - len(old), 0) > MAX_ITEMS:
            raise _Budget("a replacement too long")


def _range(*args):
    made = range(*args)
    if len(made) > MAX_ITEMS:
        raise _Budget("a range longer than the judge builds")
    return made


def _sum(iterable, start=0):
    items = _sized(list(iterable))
    if not all(type(x) in (int, bool, float, complex) for x in items + [start]):
        raise TypeError("the judge sums numbers only")
    return sum(items, start)


def _int(value=0, *base):
    if type(value) in (str, bytes) and len(value) > 4300:
        raise _Budget("an integer of more than 4300 digits")
    return int(value, *base)


def _pow(base, exp, mod=None):
    if mod is None:
        _check_binop(ast.Pow(), base, exp)
    return pow(base, exp, mod)


def _materialise(kind):
    return lambda *args: kind(_sized(list(args[0]))) if args else kind()


_GUARDED = {range: _range, sum: _sum, int: _int, pow: _pow, list: _materialise(list), tuple: _materialise(tuple),
            set: _materialise(set), frozenset: _materialise(frozenset)}
_ALLOWED = {abs, all, any, bin, bool, chr, complex, dict, divmod, enumerate, filter, float, hex, isinstance, len, map,
            max, min, oct, ord, repr, reversed, round, sorted, str, type, zip}
_JUDGE_NAMES = {name: getattr(builtins, name) for name in FUNCTIONS + TYPES}
_MATH = {name: getattr(math, name) for name in MATH}
_ALLOWED |= {value for value in _MATH.values() if callable(value)}

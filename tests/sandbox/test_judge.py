"""The judge (what runs where, the verdicts, what is refused, its bounds) and the wire it reads (fuzzed).

No sandbox here: the program's values come from a dictionary, so each verdict is checked by hand.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time

import pytest

from stare_lit.sandbox import wire
from stare_lit.sandbox.judge import UnjudgeableTest, compile_test
from stare_lit.sandbox.sandbox import parse_record
from stare_lit.sandbox.wire import Malformed, NoValue, NotPlain


def leaves(test: str) -> list[tuple]:
    return [(leaf.source, leaf.names, leaf.iterate) for leaf in compile_test(test).leaves]


@pytest.mark.parametrize("test, sent", [
    ("assert add(2, 3) == 5", [("add(2, 3)", (), False)]),
    ("assert abs(add(0.1, 0.2) - 0.3) < 1e-9", [("add(0.1, 0.2)", (), False)]),  # the - and < stay here
    ("assert math.isclose(add(0.1, 0.2), 0.3)", [("add(0.1, 0.2)", (), False)]),
    ("assert all(add(x, 1) == x + 1 for x in range(3))", [("add(x, 1)", ("x",), False)]),
    ("assert add(2, 3) == 5 and not add(1, 1) != 2", [("add(2, 3)", (), False), ("add(1, 1)", (), False)]),
    ("assert sorted(gen(3), reverse=True) == [2, 1, 0]", [("gen(3)", (), True)]),  # only iterated: a list
    ("assert sorted(gen(3)) == [0, 1, 2]", [("sorted(gen(3))", (), False)]),  # of program values only: goes whole
    ("assert str(Frac(1, 2)) == '1/2'", [("str(Frac(1, 2))", (), False)]),  # str of a program value only
    ("assert list(map(f, [1, 2])) == [2, 3]", [("list(map(f, [1, 2]))", (), False)]),
    ("assert type(add(1, 1)) is int", [("add(1, 1)", (), False)]),  # type(...) is the judge's
    ("assert Stack().push(1).size() == 1", [("Stack().push(1).size()", (), False)]),
    ("assert [1, 2].count(add(1, 0)) == 1", [("add(1, 0)", (), False)]),
    ("assert is_even(4)", [("is_even(4)", (), False)]),
    ("assert random(3) == 4", [("random(3)", (), False)]),  # a program function named like a module
])
def test_what_the_sandbox_is_asked(test, sent):
    """Only program expressions go; never an expected value, a comparison, or arithmetic on the program's value."""
    assert leaves(test) == sent


class Values:
    """A program's answers by expression (with the test's variables substituted), and what was asked."""

    def __init__(self, answers: dict) -> None:
        self.answers, self.asked = answers, []

    def __call__(self, leaf, names):
        key = leaf.source if not names else (leaf.source, tuple(sorted(names.items())))
        self.asked.append(key)
        if key not in self.answers:
            raise NoValue(leaf.source)
        return self.answers[key]


@pytest.mark.parametrize("test, answers, passed, asked", [
    ("assert add(2, 3) == 5", {"add(2, 3)": 5}, True, 1),
    ("assert add(2, 3) == 5", {"add(2, 3)": 5.0}, True, 1),  # 5.0 == 5, as in Python
    ("assert add(2, 3) == 5", {"add(2, 3)": "5"}, False, 1),
    ("assert add(2, 3) == 5", {}, False, 1),  # no plain value: it raised, or was not plain data
    ("assert 1 < add(1, 1) < 3", {"add(1, 1)": 2}, True, 1),
    ("assert 1 < add(1, 1) < 3", {"add(1, 1)": 3}, False, 1),
    ("assert add(1, 1) == 3 and add(2, 2) == 4", {"add(1, 1)": 2, "add(2, 2)": 4}, False, 1),  # short circuit
    ("assert add(1, 1) == 2 or add(2, 2) == 5", {"add(1, 1)": 2}, True, 1),
    ("assert all(add(x, 1) == x + 1 for x in range(3))",
     {("add(x, 1)", (("x", 0),)): 1, ("add(x, 1)", (("x", 1),)): 3}, False, 2),  # stops at x = 1, as all() does
    ("assert abs(add(0.1, 0.2) - 0.3) < 1e-9", {"add(0.1, 0.2)": 0.30000000000000004}, True, 1),
    ("assert abs(add(0.1, 0.2) - 0.3) < 1e-9", {"add(0.1, 0.2)": 0.31}, False, 1),
    ("assert math.isclose(add(0.1, 0.2), 0.3)", {"add(0.1, 0.2)": 0.30000000000000004}, True, 1),
    ("assert sorted(gen(3), reverse=True) == [2, 1, 0]", {"gen(3)": [0, 1, 2]}, True, 1),
    ("assert add('a', 'b').upper() == 'AB'", {"add('a', 'b').upper()": "AB"}, True, 1),
    ("assert {k: v for k, v in pairs()} == {'a': 1}", {"pairs()": [("a", 1)]}, True, 1),
    ("assert f'{add(1, 1)}!' == '2!'", {"add(1, 1)": 2}, True, 1),
    ("assert is_even(4) is True", {"is_even(4)": True}, True, 1),
    ("assert is_even(4) is True", {"is_even(4)": 1}, False, 1),  # 1 is not True
    ("assert sorted(words(), key=lambda w: -len(w))[0] == 'ccc'", {"words()": ["a", "ccc", "bb"]}, True, 1),
    ("assert not add(2, 3) != 5", {"add(2, 3)": 5}, True, 1),
    ("assert isinstance(add(1, 1), int) and add(1, 1) > 1", {"add(1, 1)": 2}, True, 2),
])
def test_verdicts_on_plain_values(test, answers, passed, asked):
    values = Values(answers)
    assert compile_test(test).passed(values) is passed
    assert len(values.asked) == asked


@pytest.mark.parametrize("test, why", [
    ("x = add(1, 1)", "not one `assert EXPRESSION`"),
    ("assert add(1, 1) == 2; assert add(2, 2) == 4", "not one `assert EXPRESSION`"),
    ("assert add(1,", "not valid Python"),
    ("assert (y := add(1, 1)) == 2", "does not evaluate `(y := add(1, 1))`"),
    ("assert add(1, 1) is [2]", "`is` compares identity"),
    ("assert re.fullmatch(r'\\d+', add('1', '2'))", "a module the program can import is one it can patch"),
    ("assert add(1, 1) == json.loads('2')", "a module the program can import is one it can patch"),
    ("assert add(1, 1) == bytes([2])", "`bytes` is not a builtin the judge evaluates"),
    ("assert 'ab'.center(9) == add('a', 'b')", "`.center()` is not a method the judge calls"),
    ("assert all(g(1) for g in [len])", "names nothing the program defines"),
    ("assert add(1, 1) @ 2", "does not evaluate `@`"),
    ("assert (lambda: add(1, 1))() == 2", None),  # a call of a lambda is the program's: accepted
])
def test_forms_the_judge_refuses(test, why):
    if why is None:
        assert leaves(test) == [("(lambda: add(1, 1))()", (), False)]
        return
    with pytest.raises(UnjudgeableTest, match=__import__("re").escape(why)):
        compile_test(test)


@pytest.mark.parametrize("test, value", [
    ("assert range(f(1))", 10 ** 9),
    ("assert len('x' * f(1)) > 0", 10 ** 8),
    ("assert 10 ** f(1) > 0", 10 ** 7),
    ("assert 1 << f(1)", 10 ** 8),
    ("assert f'{1:{f(1)}}'", 10 ** 9),
    ("assert ('%' + str(f(1)) + 'd') % 1", 10 ** 9),
    ("assert ('a' * 1000).replace('a', 'b' * f(1))", 10 ** 5),
    ("assert sum([[1]] * f(1), [])", 10 ** 5),
    ("assert all(True for _ in range(f(1)) for _ in range(f(1)))", 10 ** 6),
])
def test_the_judges_own_work_is_bounded(test, value):
    """A program value that would make the judge build or loop enormously fails the test, fast."""
    started = time.monotonic()
    assert compile_test(test).passed(Values({"f(1)": value})) is False
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------------------- the wire
def random_plain(rng: random.Random, depth: int = 0):
    """A random plain value: scalars of each type, containers of them, hashable keys where needed."""
    kind = rng.randrange(12 if depth < 5 else 7)
    scalars = [None, rng.random() < 0.5, rng.randint(-10 ** 30, 10 ** 30), rng.choice([0.5, -0.0, 1e300, math.inf,
               -math.inf, math.nan, rng.uniform(-1e6, 1e6)]), complex(rng.random(), -rng.random()),
               "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(6))) + "\ud800" * (kind == 5),
               bytes(rng.randrange(256) for _ in range(rng.randrange(6)))]
    if kind < 7:
        return scalars[kind]
    items = [random_plain(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = [k for k in (random_hashable(rng) for _ in range(rng.randrange(5)))]
    return [items, tuple(items), set(map(_hashable, items)), frozenset(map(_hashable, items)),
            {k: v for k, v in zip(keys, items)}][kind - 7]


def random_hashable(rng: random.Random):
    return rng.choice([rng.randint(-99, 99), str(rng.random()), (rng.randint(0, 9), "t"), frozenset({1, 2}), None])


def _hashable(value):
    try:
        hash(value)
        return value
    except TypeError:
        return repr(value)


def same(a, b) -> bool:
    """Equal, with the same exact types all the way down (and nan equal to nan, -0.0 not to 0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if type(a) in (set, frozenset):  # matched item by item: a set holds nan only as the object it is
        rest = list(b)
        for x in a:
            match = next((i for i, y in enumerate(rest) if same(x, y)), None)
            if match is None:
                return False
            rest.pop(match)
        return not rest
    return a == b


def test_plain_values_cross_the_wire_exactly():
    rng = random.Random(0)
    for _ in range(1500):
        value = random_plain(rng)
        line = wire.dumps({"kind": "value", "id": 0, "value": wire.encode(value)})
        assert same(parse_record(line.rstrip(b"\n"))["value"], value)


def test_what_is_not_plain_data_does_not_cross():
    class Int(int):
        pass

    deep = 5
    for _ in range(40):
        deep = [deep]
    cyclic = []
    cyclic.append(cyclic)
    for value in [Int(3), [Int(3)], object(), {1: object()}, range(3), iter([1]), deep, cyclic, 10 ** 5000,
                  list(range(wire.MAX_NODES + 1)), type]:
        with pytest.raises(NotPlain, match=r"is not plain data|digits|more than \d+ values|nested deeper"):
            wire.encode(value)


SHAPES = {("isolation",), ("loaded",), ("value",), ("raised",), ("unplain",)}


def valid_records(rng: random.Random) -> list[bytes]:
    values = [wire.encode(random_plain(rng)) for _ in range(3)]
    records = [{"kind": "isolation", "isolation": {"user_namespace": True, "proc": "pids_only", "uid_inside": 1000}},
               {"kind": "loaded"}, {"kind": "raised", "id": 3}, {"kind": "unplain", "id": 0}]
    records += [{"kind": "value", "id": i, "value": v} for i, v in enumerate(values)]
    return [wire.dumps(r).rstrip(b"\n") for r in records]


def mutate(rng: random.Random, line: bytes) -> bytes:
    data = bytearray(line)
    for _ in range(rng.randrange(1, 4)):
        where = rng.randrange(len(data) + 1)
        choice = rng.randrange(6)
        if choice == 0 and data:
            data[min(where, len(data) - 1)] = rng.randrange(256)
        elif choice == 1:
            data[where:where] = bytes(rng.choice(b'[]{}",:0123456789-etrufalsnNIe\\\xff'))
        elif choice == 2:
            del data[where:where + rng.randrange(1, 8)]
        elif choice == 3:
            data = data[:where]
        elif choice == 4:
            data[where:where] = data[rng.randrange(len(data) + 1):][:rng.randrange(1, 30)]
        else:
            data = data.replace(b'"id":', rng.choice([b'"id":true,"x":', b'"id":-', b'"id":1.5,"id":', b'"id":"'])) \
                if rng.random() < 0.5 else data.replace(b'["i","', b'["i","1' * rng.randrange(1, 5))
    return bytes(data)


def random_json(rng: random.Random, depth: int = 0):
    pick = rng.randrange(8 if depth < 6 else 5)
    if pick < 5:
        return [None, rng.random() < 0.5, rng.randint(-10 ** 20, 10 ** 20), rng.random(),
                rng.choice(["kind", "value", "id", "i", "s", "d", "l", "loaded", "isolation", "x" * rng.randrange(9)])][pick]
    if pick == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["kind", "id", "value", "isolation", "refused", "extra"]): random_json(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def check_parse(line: bytes) -> None:
    """parse_record either returns a record of a known shape, or raises Malformed: nothing else."""
    try:
        record = parse_record(line)
    except Malformed:
        return
    assert (record["kind"],) in SHAPES
    if record["kind"] in ("value", "raised", "unplain"):
        assert type(record["id"]) is int and record["id"] >= 0
    if record["kind"] == "isolation":
        assert all(type(v) in (bool, int, str) for v in record["isolation"].values())


# Each is refused, as Malformed: too deep (json recurses in C), too big, duplicate keys or set items, a bool or
# negative id, NaN, an unhashable key, bad hex, not UTF-8, empty, too long, an unknown field or kind, a value
# nested past MAX_DEPTH, a wrong payload type.
NASTY = [b"[" * n + b"]" * n for n in (100, 1000, 100_000)] + [b'{"a":' * 50_000 + b"1" + b"}" * 50_000] + [
    b'{"kind":"value","id":0,"value":["i","' + b"9" * 5000 + b'"]}', b'{"kind":"value","id":1e400}',
    b'{"kind":"loaded","kind":"loaded"}', b'{"kind":"value","id":true,"value":["N",0]}',
    b'{"kind":"raised","id":-1}', b'{"kind":"value","id":0,"value":["f","NaN"]}',
    b'{"kind":"value","id":0,"value":NaN}', b'{"kind":"value","id":0,"value":["S",[["i","1"],["i","1"]]]}',
    b'{"kind":"value","id":0,"value":["d",[[["l",[]],["N",0]]]]}', b"\xff\xfe", b"",
    b'{"kind":"value","id":0,"value":["y","0g"]}', b"x" * (wire.MAX_LINE_BYTES + 1),
    b'{"kind":"loaded","extra":1}', b'{"kind":"passed"}', b'{"kind":"value","id":0}',
    b'{"kind":"value","id":0,"value":' + b'["l",[' * 40 + b'["N",0]' + b"]]" * 40 + b"}",
    b'{"kind":"value","id":0,"value":["b",1]}', b'{"kind":"value","id":0,"value":["s",5]}',
    b'{"kind":"isolation","isolation":{"a":[1]}}', b'{"kind":"isolation","isolation":{},"refused":3}']


def test_report_lines_fuzzed_never_raise_anything_but_malformed():
    """Random bytes, random JSON, mutated valid records, and the nasty ones: 6,000 lines, seeded, in seconds."""
    rng = random.Random(20)
    lines = [bytes(rng.randrange(256) for _ in range(rng.randrange(80))) for _ in range(1500)]
    lines += [json.dumps(random_json(rng)).encode() for _ in range(1500)]
    for _ in range(600):
        lines += [mutate(rng, line) for line in valid_records(rng)[:5]]
    lines += NASTY
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1_000_000)  # a trainer may raise it: the depth check must not lean on it
    started = time.monotonic()
    try:
        for line in lines:
            check_parse(line)
    finally:
        sys.setrecursionlimit(limit)
    assert len(lines) > 6000 and time.monotonic() - started < 30
    for line in NASTY:
        with pytest.raises(Malformed, match=r"^(not |nested too deep|too deep|a duplicate|an unhashable|a record of|"
                                                r"unknown tag|a payload|a dict item|a complex|a value|bytes|None's|a bad isolation)"):
            parse_record(line)

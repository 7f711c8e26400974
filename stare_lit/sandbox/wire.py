"""Plain data on the wire between the sandbox and the judge. Stdlib only: the confined child loads it too.

A *plain* value is built from exactly these types, never a subclass: ``None``, ``bool``, ``int``,
``float``, ``complex``, ``str``, ``bytes``, and ``list``, ``tuple``, ``set``, ``frozenset``, ``dict``
of plain values; at most ``MAX_DEPTH`` containers deep and ``MAX_NODES`` values in all. Each value
is written as a two-item JSON list ``[tag, payload]``, so that a tuple stays a tuple, a set a set,
and ``nan``, ``-0.0`` or an integer of 4,000 digits survive::

    None -> ["N", 0]     True -> ["b", true]     12 -> ["i", "12"]     0.5 -> ["f", "0.5"]
    "hi" -> ["s", "hi"]  b"\\x00" -> ["y", "00"]  (1, "a") -> ["t", [["i", "1"], ["s", "a"]]]
    {1: 2} -> ["d", [[["i", "1"], ["i", "2"]]]]

:func:`encode` runs in the child and calls no method a program could have defined (it looks at
``type(value)`` and walks built-in containers); a value that is not plain raises :class:`NotPlain`.
:func:`decode` runs in the judge on whatever arrived and trusts none of it: anything but the format
above (a wrong tag or payload type, an unhashable key, a duplicate key or set item, too deep, too
many values) raises :class:`Malformed`, and nothing else. :func:`loads` reads one report line the
same way: size and nesting are checked before ``json`` sees it, integers and floats are bounded,
duplicate keys and ``NaN``/``Infinity`` constants are refused.
"""

import json
import re

MAX_DEPTH = 32  # containers inside containers
MAX_NODES = 200_000  # values in one encoded value, containers included
MAX_LINE_BYTES = 1 << 20  # one report line
MAX_INT_DIGITS = 4300  # Python's own default limit for int <-> str
_JSON_DEPTH = 2 * MAX_DEPTH + 8  # each value level is two JSON levels; records add a few


class NotPlain(Exception):
    """A value the sandbox cannot send: not plain data, or too deep or too large."""


class Malformed(Exception):
    """What arrived is not a well-formed value or report line."""


class NoValue(Exception):
    """The sandbox gave no plain value for a program expression: it raised, was not plain data, or never came."""


_SCALARS = {type(None): "N", bool: "b", int: "i", float: "f", complex: "c", str: "s", bytes: "y"}
_CONTAINERS = {list: "l", tuple: "t", set: "S", frozenset: "F", dict: "d"}


def encode(value):
    """``value`` as its JSON-ready wire form; :class:`NotPlain` if it is not plain data."""
    budget = [MAX_NODES]
    return _encode(value, 0, budget)


def _encode(value, depth, budget):
    budget[0] -= 1
    if budget[0] < 0:
        raise NotPlain(f"more than {MAX_NODES} values")
    kind = type(value)
    if kind in _SCALARS:
        return [_SCALARS[kind], _scalar_payload(kind, value)]
    tag = _CONTAINERS.get(kind)
    if tag is None:
        raise NotPlain(f"a {kind.__name__} is not plain data")
    if depth >= MAX_DEPTH:
        raise NotPlain(f"nested deeper than {MAX_DEPTH}")
    if kind is dict:
        return [tag, [[_encode(k, depth + 1, budget), _encode(v, depth + 1, budget)] for k, v in dict.items(value)]]
    return [tag, [_encode(item, depth + 1, budget) for item in value]]


def _scalar_payload(kind, value):
    if kind is int:
        try:
            return int.__repr__(value)
        except ValueError:  # more digits than int <-> str allows
            raise NotPlain(f"an int of more than {MAX_INT_DIGITS} digits") from None
    if kind is float:
        return float.__repr__(value)
    if kind is complex:
        return [float.__repr__(value.real), float.__repr__(value.imag)]
    if kind is bytes:
        return bytes.hex(value)
    if kind is type(None):
        return 0
    return value  # bool, str: JSON has them


_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_FLOAT = re.compile(r"-?(?:inf|nan|[0-9]+(?:\.[0-9]*)?(?:e[-+]?[0-9]+)?)\Z")
_HEX = re.compile(r"(?:[0-9a-f]{2})*\Z")


def decode(wire):
    """The plain value ``wire`` stands for; :class:`Malformed` for anything else."""
    budget = [MAX_NODES]
    return _decode(wire, 0, budget)


def _decode(wire, depth, budget):
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_DEPTH:
        raise Malformed("too deep or too many values")
    if type(wire) is not list or len(wire) != 2 or type(wire[0]) is not str:
        raise Malformed("a value is not [tag, payload]")
    tag, payload = wire
    if tag in _DECODE_SCALAR:
        return _DECODE_SCALAR[tag](payload)
    if tag not in ("l", "t", "S", "F", "d") or type(payload) is not list:
        raise Malformed(f"unknown tag or payload of tag {tag[:8]!r}")
    if tag == "d":
        pairs = [_pair(item) for item in payload]
        items = [(_decode(k, depth + 1, budget), _decode(v, depth + 1, budget)) for k, v in pairs]
        return _unique(dict, items, len(items))
    items = [_decode(item, depth + 1, budget) for item in payload]
    if tag == "l":
        return items
    if tag == "t":
        return tuple(items)
    return _unique(set if tag == "S" else frozenset, items, len(items))


def _pair(item):
    if type(item) is not list or len(item) != 2:
        raise Malformed("a dict item is not [key, value]")
    return item


def _unique(kind, items, count):
    try:
        made = kind(items)
    except TypeError:  # an unhashable key or item
        raise Malformed("an unhashable key or set item") from None
    if len(made) != count:  # an encoder never writes one key twice
        raise Malformed("a duplicate key or set item")
    return made


def _expect(kind, payload):
    if type(payload) is not kind:
        raise Malformed(f"a payload is not {kind.__name__}")
    return payload


def _int(payload):
    text = _expect(str, payload)
    if len(text) > MAX_INT_DIGITS + 1 or not _INT.match(text):
        raise Malformed("not an integer of at most 4300 digits")
    return int(text)


def _float(payload):
    text = _expect(str, payload)
    if len(text) > 32 or not _FLOAT.match(text):
        raise Malformed("not a float")
    return float(text)


def _complex(payload):
    if type(payload) is not list or len(payload) != 2:
        raise Malformed("a complex is not [real, imag]")
    return complex(_float(payload[0]), _float(payload[1]))


def _bytes(payload):
    text = _expect(str, payload)
    if not _HEX.match(text):
        raise Malformed("bytes are not lowercase hex")
    return bytes.fromhex(text)


def _none(payload):
    if type(payload) is not int or payload != 0:
        raise Malformed("None's payload is not 0")


_DECODE_SCALAR = {"N": _none, "b": lambda p: _expect(bool, p), "i": _int, "f": _float, "c": _complex,
                  "s": lambda p: _expect(str, p), "y": _bytes}


# ---------------------------------------------------------------------------------------- one line
def dumps(record) -> bytes:
    """One report or request line (ASCII JSON and a newline)."""
    return (json.dumps(record, ensure_ascii=True, allow_nan=False, separators=(",", ":")) + "\n").encode("ascii")


def loads(line: bytes):
    """One line of JSON that the peer may have forged: bounded before and while ``json`` reads it."""
    if type(line) is not bytes or len(line) > MAX_LINE_BYTES:
        raise Malformed("not a line of at most 1 MiB")
    if _json_depth(line) > _JSON_DEPTH:
        raise Malformed("nested too deep")
    try:
        return json.loads(line.decode("utf-8"), object_pairs_hook=_no_duplicates, parse_int=_small_int,
                          parse_float=_short_float, parse_constant=_no_constant)
    except (ValueError, RecursionError, MemoryError) as error:  # UnicodeDecodeError and JSONDecodeError too
        raise Malformed(f"not JSON: {type(error).__name__}") from None


_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(c for c in range(256) if c not in b"[]{}")


def _json_depth(line: bytes) -> int:
    """The deepest bracket nesting outside strings: json's decoder recurses once per level, in C."""
    brackets = _STRINGS.sub(b"", line).translate(None, _NOT_BRACKETS)
    if len(brackets) <= 2 * _JSON_DEPTH:  # the common case: too few brackets to be too deep
        return 0
    depth = deepest = 0
    for byte in brackets:
        depth += 1 if byte in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _no_duplicates(pairs):
    record = dict(pairs)
    if len(record) != len(pairs):
        raise ValueError("duplicate key")
    return record


def _small_int(text: str) -> int:
    if len(text) > 20:
        raise ValueError("integer too long")
    return int(text)


def _short_float(text: str) -> float:
    if len(text) > 32:
        raise ValueError("float too long")
    return float(text)


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")

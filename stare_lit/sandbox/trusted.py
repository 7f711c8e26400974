"""A dataset's own test code, run as trusted code in a checker process, calling the sandboxed program as plain data.

HumanEval's ``check(candidate)`` and MBPP's asserts with their setup are Python the judge cannot
split into program expressions (loops, helpers, ``random``, tolerances). They are the dataset's,
not the program's, so :func:`run_checks` runs them in a process of their own
(stare_lit.sandbox.checker: ``python -I -S``, an empty environment, killed at the run's deadline), and
relays each call of a program function there to the program's :class:`~stare_lit.sandbox.Session`:
the arguments go in as plain data, the result comes back as plain data (stare_lit.sandbox.wire), or
the call raises in the checker. The program never sees the test, its constants or its verdict, and
the test never holds an object of the program's.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stare_lit.sandbox import wire
from stare_lit.sandbox.judge import UnjudgeableTest
from stare_lit.sandbox.sandbox import Session
from stare_lit.sandbox.wire import Malformed, NoValue

_CHECKER = Path(__file__).with_name("checker.py")  # run by path under -I -S, as the sandbox's child is
_ARGS, _KWARGS = "__stare_args__", "__stare_kwargs__"  # the call's arguments, bound as plain values in the sandbox


def run_checks(session: Session, setup: str, proxies: tuple[str, ...], tests: tuple[str, ...]) -> list[bool]:
    """Whether each test source runs to its end, with ``proxies`` (names) calling the program in ``session``.

    ``setup`` runs first, then the names in ``proxies`` are bound to the program's functions, then
    each test runs on its own. A program that did not load fails every test; the checker is killed
    at ``session.deadline`` and then fails the tests it had not finished.

    Raises:
        UnjudgeableTest: The row's setup raised, or a test gave the program a value that is not
            plain data (a function as ``key=``): the row cannot be judged this way.
    """
    if not session.loaded:
        return [False] * len(tests)
    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    try:
        child = subprocess.Popen([sys.executable, "-I", "-S", str(_CHECKER), str(request_w), str(reply_r)],
                                 stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={}, cwd=tempfile.gettempdir(), pass_fds=(request_w, reply_r),
                                 start_new_session=True)
    finally:
        os.close(request_w), os.close(reply_r)
    try:
        child.stdin.write(wire.dumps({"setup": setup, "proxies": list(proxies), "tests": list(tests)}))
        child.stdin.close()
        return _relay(session, child, request_r, reply_w, proxies, len(tests))
    except BrokenPipeError:  # the checker died: nothing it decided counts
        return [False] * len(tests)
    finally:
        os.close(request_r), os.close(reply_w)
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        child.wait()


def _relay(session: Session, child: subprocess.Popen, requests: int, replies: int, proxies: tuple[str, ...],
           count: int) -> list[bool]:
    lines = _Lines(requests)
    while True:
        line = lines.next(session.deadline)
        if line is None:  # killed at the deadline, or died without a verdict
            return [False] * count
        try:
            record = wire.loads(line)
        except Malformed:
            return [False] * count
        kind = record.get("kind") if type(record) is dict else None
        if kind == "verdicts":
            passed = record.get("passed")
            return [ok is True for ok in passed] if type(passed) is list and len(passed) == count else [False] * count
        if kind == "refused":
            raise UnjudgeableTest(str(record.get("why"))[:300])
        if kind != "call" or record.get("name") not in proxies:
            return [False] * count
        reply = wire.dumps(_call(session, record))
        while reply:  # the checker is waiting for it: it cannot block long
            reply = reply[os.write(replies, reply):]


def _call(session: Session, record: dict) -> dict:
    try:
        args, kwargs = wire.decode(record["args"]), wire.decode(record["kwargs"])
        value = session.value(f"{record['name']}(*{_ARGS}, **{_KWARGS})", {_ARGS: args, _KWARGS: kwargs})
    except (NoValue, Malformed, KeyError):
        return {"kind": "raised", "id": record.get("id")}
    return {"kind": "value", "id": record.get("id"), "value": wire.encode(value)}


class _Lines:
    """Lines from the checker, each bounded, read until a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd, self.buffer = fd, bytearray()

    def next(self, deadline: float):
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                return line
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self.buffer) > wire.MAX_LINE_BYTES:
                return None
            if not select.select([self.fd], [], [], remaining)[0]:
                return None
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return None
            self.buffer += chunk

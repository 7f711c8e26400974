"""The checker: runs a dataset's own test code (trusted) in a process of its own, never where the program runs.

Started by stare_lit.sandbox.trusted as ``python -I -S checker.py REQUEST_FD REPLY_FD`` with an empty
environment, stdout and stderr discarded, and the job (JSON) on stdin:
``{"setup": source, "proxies": [name, ...], "tests": [source, ...]}``.

It runs ``setup`` (HumanEval's prompt, MBPP's ``test_imports`` and ``test_setup_code``), then binds each
name in ``proxies`` to a *proxy*: a function that sends its arguments as plain data
(stare_lit.sandbox.wire) to the parent, which asks the sandboxed program for the value of
``name(*args, **kwargs)`` and sends the plain result back. Then it runs each test source on its own
and writes, per test, whether it ran to its end without raising (HumanEval's ``check(candidate)``,
one MBPP ``assert``). Everything a test compares, adds or tests the truth of is plain data here, in
a process the program cannot reach: a lying ``__eq__``, a patched ``math`` or ``random``, a forged
line or an early exit of the program gains nothing.

Lines to the parent (REQUEST_FD): ``{"kind": "call", "id", "name", "args", "kwargs"}``, then at the
end ``{"kind": "verdicts", "passed": [bool, ...]}``; or ``{"kind": "refused", "why"}`` when the test
hands the program something that is not plain data (a function as ``key=``, say): the row cannot be
judged. Replies (REPLY_FD): ``{"kind": "value", "id", "value"}`` or ``{"kind": "raised", "id"}``.
"""

import json
import os
import sys

if __name__ == "__main__":  # run by path under -I -S: load the wire format from beside this file
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import wire
    del sys.path[0]
else:
    from stare_lit.sandbox import wire


class ProgramError(Exception):
    """A call into the program raised, returned something that is not plain data, or never answered."""


class _Refused(BaseException):
    """The test gave the program something that cannot cross as plain data: the row is unjudgeable.

    A BaseException, so that a test's own ``except Exception`` cannot swallow it."""


class _Channel:
    def __init__(self, request_fd: int, reply_fd: int) -> None:
        self.out = os.fdopen(request_fd, "wb", buffering=0)
        self.replies = os.fdopen(reply_fd, "rb")
        self.next_id = 0

    def send(self, record: dict) -> None:
        data = wire.dumps(record)
        while data:
            data = data[self.out.write(data):]

    def call(self, name: str, args: tuple, kwargs: dict):
        try:
            record = {"kind": "call", "id": self.next_id, "name": name, "args": wire.encode(list(args)),
                      "kwargs": wire.encode(kwargs)}
        except wire.NotPlain as why:
            raise _Refused(f"the test calls {name}() with an argument that is not plain data ({why})") from None
        self.next_id += 1
        self.send(record)
        reply = json.loads(self.replies.readline())
        if reply.get("id") != record["id"] or reply.get("kind") != "value":
            raise ProgramError(f"{name}() gave no plain value")
        return wire.decode(reply["value"])


def _proxy(channel: _Channel, name: str):
    def call(*args, **kwargs):
        return channel.call(name, args, kwargs)

    call.__name__ = call.__qualname__ = name
    return call


def main() -> None:
    request_fd, reply_fd = (int(arg) for arg in sys.argv[1:3])
    job = json.loads(sys.stdin.read())
    channel = _Channel(request_fd, reply_fd)
    namespace = {"__name__": "__checker__"}
    proxies = {name: _proxy(channel, name) for name in job["proxies"]}
    passed = []
    try:
        exec(compile(job["setup"], "<setup>", "exec"), namespace)  # before the proxies: a stub of the same name yields
    except Exception as error:  # the row's own code fails before the program is asked anything
        channel.send({"kind": "refused", "why": f"its setup code raised {type(error).__name__}: {error}"[:300]})
        return
    namespace.update(proxies)
    try:
        for source in job["tests"]:
            try:
                exec(compile(source, "<test>", "exec"), namespace)
                passed.append(True)
            except Exception:  # an assert, a program error, the test's own error: the test fails
                passed.append(False)
    except _Refused as why:
        channel.send({"kind": "refused", "why": str(why)[:300]})
        return
    channel.send({"kind": "verdicts", "passed": passed})


if __name__ == "__main__":
    main()

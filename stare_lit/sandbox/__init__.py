"""The sandbox: run model-written Python confined, and decide its tests outside, from the plain values it returns.

sandbox (``Sandbox``: limits and isolation; a ``Session`` asks the running program for values), child
(the confined side, run by path as ``python -I -S child.py``), wire (the plain data between them),
judge (``compile_test``: splits a test's ``assert`` and decides it here), trusted and checker (a dataset's own
test code, run in a process of its own, each call of the program crossing as plain data).

The standard library only (of stare_lit, ``errors``), so a process can run programs and judge their
tests without torch or math-verify; stare_lit.rewards.CodeTestReward is the reward built on it.
"""

from stare_lit.sandbox.judge import Test, UnjudgeableTest, compile_test
from stare_lit.sandbox.sandbox import Run, Sandbox, SandboxWarning, Session, probe
from stare_lit.sandbox.wire import NoValue

__all__ = ["NoValue", "Run", "Sandbox", "SandboxWarning", "Session", "Test", "UnjudgeableTest", "compile_test",
           "probe"]

"""CodeTestReward and its sandbox: hostile programs score what they earn, and the host stays out of reach.

The hostile table (``hostile_rows``) is run twice: as this process's user (root here and on CI) and
as uid 65534 from a child process (``tests/sandbox/_as_nobody.py``), so that both ways the sandbox is set
up are proven. Each row says what the program must score and how many errors the reward counts;
rows with a *control* first run the same program and tests bare — ``python -c program+tests`` as
the trainer, the naive judge — where the attack must work, so a row cannot pass because the attack
was broken; and rows that reach for the host are checked from outside the sandbox after the run (a
listener that must have accepted nothing, IPC objects that must not exist, a pty that must have
received nothing, core_pattern unchanged, no process left).

Limit rows prove the limit that stopped the program: their extra tests ask the program, through the
judge, what stopped it (``ENOSPC``, ``EFBIG``, ``EAGAIN``, ``MemoryError``) and how far it got.
"""

from __future__ import annotations

import ctypes
import json
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import pytest

import stare_lit.sandbox.sandbox as sandbox_module
from stare_lit.errors import ConfigError
from stare_lit.rewards.code import CodeTestReward
from stare_lit.rewards.formats import AssertTests, StdioTests
from stare_lit.rewards.base import ErrorScore
from stare_lit.sandbox.judge import UnjudgeableTest
from stare_lit.sandbox.sandbox import Sandbox, SandboxWarning, probe

ROOT = Path(__file__).parents[2]
ISOLATION = probe()
CONFINED = "refused" not in ISOLATION
# Where the machine refuses the sandbox (no user namespaces), the reward's own logic is still tested, in the
# documented weaker mode; the rows that need the namespaces are skipped, and the refusal is checked.
MODE = "namespaces" if CONFINED else "limits_only"
LIMITS = dict(timeout_seconds=15.0, cpu_seconds=1, memory_mb=256, max_processes=16, isolation=MODE)
TESTS = ["assert add(2, 3) == 5", "assert add(1, 1) == 2", "assert 0 == add(-4, 4)", "assert add(10, 5) > 14"]
SECRET = "hf_stare_lit_test_secret_0123456789"
CORRECT = "def add(a, b):\n    return a + b\n"
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long
_KEYCTL, _ADD_KEY = {"x86_64": (250, 248), "aarch64": (219, 217)}.get(platform.machine(), (None, None))

needs_namespaces = pytest.mark.skipif(not CONFINED, reason=f"this machine refuses the sandbox: {ISOLATION}")
pytestmark = pytest.mark.slow  # programs run in the sandbox, in worker and child processes


def reward(**kwargs) -> CodeTestReward:
    limits = {**LIMITS, **kwargs.pop("limits", {})}
    return CodeTestReward(extract="whole", sandbox=Sandbox(**limits), **kwargs)


def score(program: str, tests=TESTS, format=None, **kwargs) -> float:
    (value,) = reward(tests=format, **kwargs)(["prompt"], [textwrap.dedent(program)], tests=[tests])
    return value


def score_and_errors(program: str, tests=TESTS, limits: Optional[dict] = None) -> tuple[float, int]:
    """The value, and 1 if it is an ``ErrorScore`` (what the runner counts in reward/<name>_errors; see
    ``test_a_tampered_report_is_counted_and_never_raises``). No runner here: the table also runs as uid
    65534 in a child process (``nobody_table``), where the reward alone is what is tested."""
    (value,) = reward(limits=limits or {})(["prompt"], [textwrap.dedent(program)], tests=[tests])
    return value, int(isinstance(value, ErrorScore))


def bare_passes(program: str, tests: list[str]) -> bool:
    """The naive judge: the program and its asserts in one interpreter, as the trainer; exit status 0 is a pass."""
    source = textwrap.dedent(program) + "\n" + "\n".join(tests) + "\n"
    done = subprocess.run([sys.executable, "-I", "-S", "-c", source], capture_output=True, timeout=30)
    return done.returncode == 0


def leftover_processes() -> list[str]:
    """Sandbox processes this test process started that are still alive (none may be)."""
    mine = f" {os.getpid()}"
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "sandbox/child.py" in cmdline and cmdline.rstrip().endswith(mine):
            found.append(cmdline)
    return found


# ---------------------------------------------------------------------------------------- the outside
class Outside:
    """The trainer's side of the hostile table: what a program must not reach, watched from here.

    A canary file and a world-writable directory, a unix-socket and a TCP listener, a pty, a secret
    in this process's (new) session keyring and in its user keyring, an IPC key and queue name.
    """

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="stare-lit-outside-"))
        self.dir.chmod(0o755)
        self.canary = self.dir / "canary"
        self.canary.write_text(SECRET)
        self.canary.chmod(0o644)
        self.writable = self.dir / "writable"
        self.writable.mkdir()
        self.writable.chmod(0o777)
        self.accepted = {"unix": 0, "tcp": 0}
        self.unix = socket.socket(socket.AF_UNIX)
        self.unix.bind(str(self.dir / "listener.sock"))
        os.chmod(self.dir / "listener.sock", 0o777)
        self.tcp = socket.create_server(("127.0.0.1", 0))
        self.listeners = {"unix": self.unix, "tcp": self.tcp}
        for server in self.listeners.values():
            server.listen()
            server.setblocking(False)
        self.pty_master, slave = os.openpty()  # a terminal of the trainer's, as the terminal it runs in would be
        os.set_blocking(self.pty_master, False)
        self.pty = os.ttyname(slave)
        os.close(slave)
        self.key_description = f"stare-lit-canary-{os.getpid()}"
        self.keys = self._add_keys()
        self.ipc_key = 0x5A000000 + os.getpid() % 0xFFFF
        self.mq_name = f"/stare-lit-{os.getpid()}"

    def _accept_pending(self) -> None:
        """Count the connections waiting in each listener's queue, here and now.

        Not an accepting thread: under load it could count a control's connection after the sandboxed
        run's "before" snapshot and blame the sandbox (CI saw exactly that). A finished program's
        connect has already landed in the queue, so draining it at each snapshot counts it in time.
        """
        for kind, server in self.listeners.items():
            while True:
                try:
                    connection, _ = server.accept()
                except (BlockingIOError, InterruptedError):
                    break
                self.accepted[kind] += 1
                connection.close()

    def _add_keys(self) -> list[int]:
        if _KEYCTL is None:
            return []
        _LIBC.syscall(_KEYCTL, 1, None)  # a new session keyring for this process: the login's stays clean
        keys = [_LIBC.syscall(_ADD_KEY, b"user", self.key_description.encode(), SECRET.encode(), len(SECRET), ring)
                for ring in (-3, -4)]  # the session keyring, and the user keyring
        return [key for key in keys if key >= 0]

    @staticmethod
    def dummy() -> dict:
        """Placeholders for reading the table without an outside (its names, a program's shape)."""
        return {"canary": "", "writable": "", "unix": "", "port": 0, "pty": "", "key": "", "ipc_key": 0, "mq_name": "",
                "secret": SECRET}

    def placeholders(self) -> dict:
        return {"canary": str(self.canary), "writable": str(self.writable), "unix": str(self.dir / "listener.sock"),
                "port": self.tcp.getsockname()[1], "pty": self.pty, "key": self.key_description,
                "ipc_key": self.ipc_key, "mq_name": self.mq_name, "secret": SECRET}

    def snapshot(self) -> dict:
        self._accept_pending()
        return {"accepted": dict(self.accepted), "core_pattern": Path("/proc/sys/kernel/core_pattern").read_text(),
                "pty": self._drain_pty()}

    def changes(self, before: dict) -> list[str]:
        """What the run changed out here (each must be nothing)."""
        time.sleep(0.05)  # a connection in flight is counted
        after = self.snapshot()
        found = [f"the {kind} listener accepted a connection" for kind in self.accepted
                 if after["accepted"][kind] != before["accepted"][kind]]
        found += ["core_pattern changed"] if after["core_pattern"] != before["core_pattern"] else []
        found += [f"the pty received {after['pty']!r}"] if after["pty"] else []
        found += [f"{what} left behind" for what in self.ipc_left()]
        found += [f"{path} written" for path in self.writable.iterdir()]
        found += [f"process left: {p}" for p in leftover_processes()]
        return found

    def _drain_pty(self) -> bytes:
        try:
            return os.read(self.pty_master, 4096)
        except (BlockingIOError, OSError):
            return b""

    def ipc_left(self) -> list[str]:
        """SysV objects with the table's key, and its POSIX queue, in the trainer's IPC namespace."""
        key = str(self.ipc_key)
        left = []
        for kind in ("shm", "sem", "msg"):
            rows = Path(f"/proc/sysvipc/{kind}").read_text().splitlines()[1:]
            left += [f"SysV {kind}" for row in rows if row.split()[0] == key]
        queue = _LIBC.mq_open(self.mq_name.encode(), os.O_RDONLY)
        if queue >= 0:
            _LIBC.mq_close(queue)
            left.append("a POSIX message queue")
        return left

    def clean_up_after_control(self) -> None:
        for path in self.writable.iterdir():
            path.unlink()
        self._drain_pty()

    def close(self) -> None:
        self.unix.close(), self.tcp.close(), os.close(self.pty_master)
        for key in self.keys:
            _LIBC.syscall(_KEYCTL, 21, key)  # KEYCTL_INVALIDATE: out of the user keyring too
        shutil.rmtree(self.dir, ignore_errors=True)


# ---------------------------------------------------------------------------------------- the table
@dataclass
class Row:
    """A hostile program, what it must score and how many errors that must count; its control and limits."""

    program: str
    expect: float = 0.0
    tests: list = field(default_factory=lambda: list(TESTS))
    errors: Optional[int] = 0  # None: either (a race the row does not pin down)
    control: str = "never"  # "always" or "root": the attack works when run bare as the trainer
    limits: dict = field(default_factory=dict)


LIAR = """
class Liar:
    def __eq__(self, other): return True
    def __ne__(self, other): return False
    def __lt__(self, other): return True
    def __le__(self, other): return True
    def __gt__(self, other): return True
    def __ge__(self, other): return True
    def __bool__(self): return True
    def __hash__(self): return 0
    def __sub__(self, other): return 0.0
    def __rsub__(self, other): return 0.0
    def __abs__(self): return 0.0
"""

STOPPED = """
import errno
stopped = None
def stopped_by():
    return stopped
def why(error):
    return errno.errorcode.get(getattr(error, "errno", None) or 0, type(error).__name__)
"""


def hostile_rows(o: dict) -> dict[str, Row]:
    """Every row, with the outside's paths, port, pty, key and secret (``Outside.placeholders``) filled in."""
    return {
        # ---- the verdict: each of these passes the naive judge (its control), none passes here
        "lies_in_comparisons_inside_and_all_not": Row(
            LIAR + "def add(a, b):\n    return Liar()\n", control="always",
            tests=["assert add(2, 3) == 5 and add(1, 1) == 2", "assert all(add(x, 1) == x + 1 for x in range(3))",
                   "assert not add(2, 3) != 5", "assert add(10, 5) > 14"]),
        "lies_in_arithmetic_inside_a_tolerance": Row(
            LIAR + "def add(a, b):\n    return Liar()\n", control="always",
            tests=["assert abs(add(0.1, 0.2) - 0.3) < 1e-9", "assert abs(0.3 - add(0.1, 0.2)) <= 1e-9",
                   "assert -1e-9 < add(0.1, 0.2) - 0.3 < 1e-9"]),
        "patches_math_isclose": Row(
            "import math\nmath.isclose = lambda *args, **kwargs: True\ndef add(a, b):\n    return -1.0\n",
            control="always", tests=["assert math.isclose(add(0.1, 0.2), 0.3)",
                                     "assert math.isclose(add(1, 1), 2, rel_tol=1e-9)"]),
        "int_and_str_subclasses_that_lie": Row("""
            class LyingInt(int):
                def __eq__(self, other): return True
                def __ne__(self, other): return False
                def __gt__(self, other): return True
                __hash__ = int.__hash__
            class LyingStr(str):
                def __eq__(self, other): return True
                __hash__ = str.__hash__
            def add(a, b):
                return LyingStr("") if isinstance(a, str) else LyingInt(0)
        """, control="always", tests=TESTS + ["assert add('a', 'b') == 'ab'"]),
        # Looks for an assert's text ("add(2, 3) == 5", "0 == add(-4, 4)") anywhere in its interpreter.
        "reads_the_tests_from_frames_and_the_heap": Row("""
            import gc, re, sys
            def texts():
                found, frame = [], sys._getframe()
                while frame is not None:
                    found += list(frame.f_locals.values()) + list(frame.f_globals.values()) + list(frame.f_code.co_consts)
                    frame = frame.f_back
                for obj in gc.get_objects() + found:
                    values = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (list, tuple)) else [obj]
                    yield from (v.decode("latin-1") if isinstance(v, bytes) else v for v in values
                                if isinstance(v, (str, bytes)))
            def add(a, b):
                for text in texts():
                    m = re.search(rf"add\\({a}, {b}\\)\\s*(==|>)\\s*(-?\\d+)|(-?\\d+)\\s*==\\s*add\\({a}, {b}\\)", text)
                    if m:
                        return int(m.group(2) or m.group(3)) + (m.group(1) == ">")
        """),
        "rewrites_builtins_and_the_harness": Row("""
            import builtins, os, sys
            class Anything:
                def __eq__(self, other): return True
            builtins.eval = lambda *args, **kwargs: 5
            builtins.repr = lambda *args: "5"
            builtins.AssertionError = type("Harmless", (Exception,), {})
            sys.exit = os._exit = lambda *args: None
            sys.modules["wire"].encode = lambda value: ["i", "5"]  # every answer is 5
            def add(a, b):
                return Anything()
        """, expect=0.25),  # forging the harness buys what `return 5` would: add(2, 3) == 5 only
        "traces_the_harness_and_registers_atexit": Row("""
            import atexit, os, sys, threading
            def forge():
                for fd in range(3, 64):
                    try:
                        os.write(fd, b'{"kind":"value","id":0,"value":["i","5"]}\\n')
                    except OSError:
                        pass
            atexit.register(forge)
            def tracer(frame, event, arg):
                wire = frame.f_globals.get("wire")
                if wire is not None:
                    wire.encode = lambda value: ["b", True]
                return tracer
            sys.settrace(tracer)
            threading.settrace(tracer)
            def add(a, b):
                return None
        """),
        "raises_base_exceptions_with_lying_str": Row("""
            class Weird(BaseException):
                def __str__(self): return "passed"
                def __repr__(self): raise RuntimeError
            def add(a, b):
                raise {(2, 3): SystemExit(0), (1, 1): KeyboardInterrupt(), (-4, 4): GeneratorExit(),
                       (10, 5): Weird()}[(a, b)]
        """, control="always"),  # the naive judge exits 0 on the first SystemExit(0)
        "prints_a_forged_report": Row("""
            import json, os, sys
            print("All tests passed")
            print(json.dumps({"kind": "value", "id": 0, "value": ["i", "5"]}))
            print("4/4 tests passed", file=sys.stderr)
            os._exit(0)
        """, control="always"),
        "forges_report_records": Row("""
            import json, os
            lines = [{"kind": "loaded"}] + [{"kind": "value", "id": i, "value": ["i", "5"]} for i in range(4)]
            data = "".join(json.dumps(line) + "\\n" for line in lines).encode()
            for fd in range(3, 64):
                try:
                    os.write(fd, data)
                except OSError:
                    pass
            def add(a, b):
                return None
        """, errors=1),
        "writes_garbage_to_the_report": Row(textwrap.dedent("""
            import os
            for fd in range(3, 64):
                try:
                    os.write(fd, b"\\xff\\xfe" + b"[" * 100000 + b"\\n")
                except OSError:
                    pass
        """) + CORRECT, errors=1),
        "returns_deep_cyclic_and_huge_values": Row("""
            def add(a, b):
                if (a, b) == (2, 3):
                    value = 5
                    for _ in range(100000):
                        value = [value]
                    return value
                if (a, b) == (1, 1):
                    value = []
                    value.append(value)
                    return value
                if (a, b) == (-4, 4):
                    return list(range(300_000))  # more values than a reply may hold
                return {i: str(i) for i in range(250_000)}
        """),
        "a_process_outlives_the_run_and_writes_later": Row("""
            import os, time
            if os.fork() == 0:
                os.setsid()
                time.sleep(1.0)
                for fd in range(3, 64):
                    try:
                        os.write(fd, b'{"kind":"value","id":0,"value":["i","5"]}\\n')
                    except OSError:
                        pass
                os._exit(0)
            def add(a, b):
                return None
        """),  # errors=0: had it lived past the run, its line would count as tampering
        "exits_early": Row("import sys\nsys.exit(0)\n" + CORRECT, control="always"),
        "exits_early_hard": Row("import os\nos._exit(0)\n" + CORRECT, control="always"),
        # ---- the limits: each row asks the program what stopped it
        "infinite_loop": Row("while True:\n    pass\n" + CORRECT),
        "cpu_bound_test": Row("def add(a, b):\n    while True:\n        pass\n"),
        "memory_bomb": Row(STOPPED + textwrap.dedent("""
            try:
                blob = bytearray(8 << 30)
            except MemoryError as error:
                blob, stopped = None, why(error)
            def add(a, b):
                return a + b if blob is not None else None
        """), expect=0.2, tests=TESTS + ["assert stopped_by() == 'MemoryError'"]),
        "gradual_memory_bomb": Row("def add(a, b):\n    hoard = []\n    while True:\n        hoard.append(bytearray(1 << 26))\n"),
        "huge_output": Row("import sys\nfor _ in range(3 << 10):\n    print('All tests passed ' * 60)\n"
                           "print('x' * (1 << 20), file=sys.stderr)\n" + CORRECT),  # 3 MiB out: over the 1 MiB cap
        "fork_bomb": Row(STOPPED + textwrap.dedent("""
            import os, time
            forks = 0
            for _ in range(300):
                try:
                    if os.fork() == 0:
                        time.sleep(3600)
                        os._exit(0)
                    forks += 1
                except OSError as error:
                    stopped = why(error)
                    break
            def forked():
                return forks
            def add(a, b):
                return a + b if forks >= 300 else None
        """), expect=2 / 6, tests=TESTS + ["assert stopped_by() == 'EAGAIN'", "assert forked() < 16"]),
        "fills_the_disk": Row(STOPPED + textwrap.dedent("""
            total = 0
            try:
                for i in range(1000):
                    with open(f"f{i}", "wb") as f:
                        for _ in range(8):
                            f.write(b"x" * (1 << 20))
                            f.flush()
                            total += 1 << 20
            except OSError as error:
                stopped = why(error)
            def written():
                return total
            def add(a, b):
                return a + b if total > 64 << 20 else None
        """), expect=2 / 3, tests=TESTS[:1] + ["assert stopped_by() == 'ENOSPC'", "assert written() >= 32 << 20"]),
        "many_files": Row(STOPPED + textwrap.dedent("""
            count = 0
            try:
                for i in range(1_000_000):
                    open(f"n{i}", "w").close()
                    count += 1
            except OSError as error:
                stopped = why(error)
            def made():
                return count
            def add(a, b):
                return a + b if count >= 1_000_000 else None
        """), expect=2 / 3, tests=TESTS[:1] + ["assert stopped_by() == 'ENOSPC'", "assert made() >= 1000"]),
        "huge_file": Row(STOPPED + textwrap.dedent("""
            import signal
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            total = 0
            try:
                with open("big", "wb") as f:
                    while True:
                        f.write(b"x" * (1 << 20))
                        f.flush()
                        total += 1 << 20
            except OSError as error:
                stopped = why(error)
            def written():
                return total
            def add(a, b):
                return a + b if total > 16 << 20 else None
        """), expect=2 / 3, tests=TESTS[:1] + ["assert stopped_by() == 'EFBIG'", "assert written() >= 8 << 20"]),
        "sleeps_forever_in_an_escaped_child": Row(textwrap.dedent("""
            import os, time
            if os.fork() == 0:
                os.setsid()
                time.sleep(3600)
            time.sleep(3600)
        """) + CORRECT, limits={"timeout_seconds": 2}),
        # ---- the host: each works bare as the trainer (control), none works here (checked outside too)
        "reads_a_canary_file": Row(f"""
            import os
            found = ""
            roots = ["", "/proc/1/root", "/proc/self/root", "/proc/self/cwd/" + "../" * 8]
            roots += [f"/proc/self/fd/{{n}}/" + "../" * 12 for n in range(64)]
            roots += [f"/proc/{{p}}/root" for p in (os.listdir("/proc") if os.path.isdir("/proc") else []) if p.isdigit()]
            for root in roots:
                try:
                    found += open(root + {o['canary']!r}).read()
                except OSError:
                    pass
            def add(a, b):
                return a + b if {o['secret']!r} in found else None
        """, control="always"),
        "reads_the_trainers_environment": Row(f"""
            import os
            leak = os.environ.get("HF_TOKEN", "") + os.environ.get("WANDB_API_KEY", "")
            for pid in ["1", str(os.getppid())] + (os.listdir("/proc") if os.path.isdir("/proc") else []):
                try:
                    leak += open(f"/proc/{{pid}}/environ").read()
                except OSError:
                    pass
            def add(a, b):
                return a + b if {o['secret']!r} in leak else None
        """, control="always"),
        "connects_to_a_unix_socket": Row(f"""
            import socket
            connected = False
            try:
                s = socket.socket(socket.AF_UNIX)
                s.settimeout(2)
                s.connect({o['unix']!r})
                connected = True
            except OSError:
                pass
            def add(a, b):
                return a + b if connected else None
        """, control="always"),
        "connects_to_tcp_on_loopback": Row(f"""
            import socket
            connected = False
            try:
                socket.create_connection(("127.0.0.1", {o['port']}), timeout=2)
                connected = True
            except OSError:
                pass
            def add(a, b):
                return a + b if connected else None
        """, control="always"),
        "leaves_ipc_objects_behind": Row(f"""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            key, name = {o['ipc_key']}, {o['mq_name']!r}.encode()
            shm = libc.shmget(key, 4096, 0o1666)
            sem = libc.semget(key, 1, 0o1666)
            msg = libc.msgget(key, 0o1666)
            queue = libc.mq_open(name, os.O_CREAT | os.O_RDWR, 0o666, None)
            created = min(shm, sem, msg, queue) >= 0
            def add(a, b):
                return a + b if created else None
        """, expect=1.0, control="always"),  # it may make them: in its own IPC namespace, gone with it
        "opens_core_pattern_for_writing": Row("""
            import os
            opened = []
            for path in ["/proc/sys/kernel/core_pattern", "/proc/1/root/proc/sys/kernel/core_pattern",
                         "/proc/self/root/proc/sys/kernel/core_pattern", "/proc/sys/kernel/modprobe",
                         "/proc/sysrq-trigger"]:
                try:
                    os.close(os.open(path, os.O_WRONLY))  # opened, never written
                    opened.append(path)
                except OSError:
                    pass
            def add(a, b):
                return a + b if opened else None
        """, control="root"),
        "opens_kmsg_and_the_terminal": Row(f"""
            import os
            opened = []
            for path in ["/dev/kmsg", "/dev/tty", "/dev/console", "/dev/ptmx", {o['pty']!r}]:
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOCTTY | os.O_NONBLOCK)
                    opened.append(path)
                    os.close(fd)
                except OSError:
                    pass
            try:
                fd = os.open({o['pty']!r}, os.O_WRONLY | os.O_NOCTTY)
                os.write(fd, b"PWNED\\n")
            except OSError:
                pass
            def add(a, b):
                return a + b if opened else None
        """, control="always"),
        "reads_the_session_and_user_keyrings": Row(f"""
            import ctypes, platform
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            keyctl, request_key = {{"x86_64": (250, 249), "aarch64": (219, 218)}}[platform.machine()]
            description, found = {o['key']!r}.encode(), b""
            keys = [libc.syscall(keyctl, 10, ring, b"user", description, 0) for ring in (-1, -2, -3, -4, -5)]
            keys.append(libc.syscall(request_key, b"user", description, None, 0))
            for key in keys:
                buffer = ctypes.create_string_buffer(256)
                if key >= 0 and libc.syscall(keyctl, 11, key, buffer, 256) > 0:
                    found += buffer.value
            def add(a, b):
                return a + b if {o['secret']!r}.encode() in found else None
        """, control="always"),
        "writes_outside_its_directory": Row(f"""
            import os
            written = []
            for path in [{o['writable']!r} + "/PWNED", "/proc/1/root" + {o['writable']!r} + "/PWNED2"]:
                try:
                    open(path, "w").write("x")
                    written.append(path)
                except OSError:
                    pass
            def add(a, b):
                return a + b if written else None
        """, control="always"),
        "makes_a_nested_namespace_or_becomes_root": Row("""
            import ctypes, os
            libc = ctypes.CDLL(None, use_errno=True)
            gained = []
            if libc.unshare(0x10000000) == 0:
                gained.append("a user namespace")
            try:
                os.setuid(0)
                gained.append("uid 0")
            except OSError:
                pass
            def add(a, b):
                return a + b if gained else None
        """, control="always"),
        # ---- correct programs that use what they may: they score 1
        "writes_files_in_its_directory": Row("""
            import os, tempfile
            os.makedirs("a/b", exist_ok=True)
            with open("a/b/data.txt", "w") as f:
                f.write("hello")
            fd, name = tempfile.mkstemp()
            os.write(fd, b"temporary")
            os.close(fd)
            ok = open("a/b/data.txt").read() == "hello" and open(name, "rb").read() == b"temporary"
            open("/tmp/also", "w").write("x")
            def add(a, b):
                return a + b if ok else None
        """, expect=1.0),
        "uses_the_standard_library": Row("""
            import collections, ctypes, decimal, fractions, hashlib, json, math, re, subprocess, sys, zlib
            ok = zlib.decompress(zlib.compress(b"x" * 100)) == b"x" * 100 and ctypes.sizeof(ctypes.c_int) == 4
            ok &= hashlib.sha256(b"").hexdigest().startswith("e3b0") and json.loads("[1]") == [1]
            ok &= subprocess.run([sys.executable, "-I", "-S", "-c", "print(2 + 3)"], capture_output=True,
                                 text=True).stdout == "5\\n"
            def add(a, b):
                return a + b if ok else None
        """, expect=1.0),
    }


def _controlled(row: Row) -> bool:
    return row.control == "always" or (row.control == "root" and os.geteuid() == 0)


def check_row(name: str, row: Row, outside: Outside) -> list[str]:
    """What is wrong with ``row`` here (``[]`` if nothing): its control, its score and errors, the outside."""
    problems = []
    program = textwrap.dedent(row.program)
    if _controlled(row):
        if not bare_passes(program, row.tests):
            problems.append("control: the attack fails even unsandboxed, so the row would test nothing")
        outside.clean_up_after_control()
        _remove_ipc(outside)
    before = outside.snapshot()
    value, errors = score_and_errors(program, row.tests, row.limits)
    if abs(value - row.expect) > 1e-9:
        problems.append(f"scored {value}, not {row.expect}")
    if row.errors is not None and errors != row.errors:
        problems.append(f"counted {errors} errors, not {row.errors}")
    return problems + outside.changes(before)


def _remove_ipc(outside: Outside) -> None:
    """What a control made in the trainer's own IPC namespace (the sandboxed run must leave nothing)."""
    key, rmid = outside.ipc_key, 0
    if (shm := _LIBC.shmget(key, 0, 0)) >= 0:
        _LIBC.shmctl(shm, rmid, None)
    if (sem := _LIBC.semget(key, 0, 0)) >= 0:
        _LIBC.semctl(sem, 0, rmid)
    if (msg := _LIBC.msgget(key, 0)) >= 0:
        _LIBC.msgctl(msg, rmid, None)
    _LIBC.mq_unlink(outside.mq_name.encode())


def check_table(names: list[str]) -> dict[str, list[str]]:
    """Every named row checked as this process's user, with a fresh outside."""
    outside = Outside()
    os.environ["HF_TOKEN"] = SECRET
    try:
        rows = hostile_rows(outside.placeholders())
        return {name: check_row(name, rows[name], outside) for name in names}
    finally:
        os.environ.pop("HF_TOKEN")
        outside.close()


@pytest.fixture(scope="module")
def outside():
    made = Outside()
    yield made
    made.close()


ROW_NAMES = sorted(hostile_rows(Outside.dummy()))


def test_the_outside_sees_a_bare_connection_at_once(outside):
    """The watcher is not blind, and not late: a connection made before a snapshot is counted by it."""
    before = outside.snapshot()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(outside.placeholders()["unix"])
    socket.create_connection(("127.0.0.1", outside.placeholders()["port"]), timeout=2).close()
    assert outside.snapshot()["accepted"] == {"unix": before["accepted"]["unix"] + 1,
                                              "tcp": before["accepted"]["tcp"] + 1}
    assert outside.changes(outside.snapshot()) == []


@needs_namespaces
@pytest.mark.parametrize("name", ROW_NAMES)
def test_hostile_program(name, outside, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    started = time.monotonic()
    assert check_row(name, hostile_rows(outside.placeholders())[name], outside) == []
    assert time.monotonic() - started < LIMITS["timeout_seconds"] + 10


@pytest.fixture(scope="module", autouse=True)
def nobody_table(request):
    """The table as uid 65534 runs in a child process from the module's first test on, beside the others;
    ``test_hostile_table_as_a_normal_user`` (last in the file) collects it."""
    wanted = any(item.name == "test_hostile_table_as_a_normal_user" for item in request.session.items)
    if not (wanted and CONFINED and os.geteuid() == 0):
        yield None
        return
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT / 'tests' / 'sandbox')!r}); import test_sandbox as t;"
            f" print(json.dumps(t.check_table(t.ROW_NAMES)))")
    reach = [sys.base_prefix, sys.prefix, sys.executable, str(ROOT)]
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen([sys.executable, str(ROOT / "tests" / "sandbox" / "_as_nobody.py"), *reach, "--",
                                    sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=errors, text=True,
                                   env={"PATH": os.environ.get("PATH", ""), "HOME": "/tmp"})
        process.errors = errors
        yield process
        if process.poll() is None:
            process.kill()
        process.wait()


@needs_namespaces
def test_an_interpreter_under_tmp_still_gives_a_writable_tmp():
    """A checkout or venv under /tmp (CI clones there) puts shown paths under /tmp: the run must start,
    and a program that writes to /tmp must still work (a bug once: every program failed at start)."""
    link_dir = Path(tempfile.mkdtemp(prefix="stare-lit-venv-", dir="/tmp"))
    try:
        os.chmod(link_dir, 0o755)
        python = link_dir / "python"
        python.symlink_to(os.path.realpath(sys.executable))
        program = "open('/tmp/x', 'w').write('ok'); print(open('/tmp/x').read())"
        probe = f"from stare_lit.sandbox.sandbox import Sandbox; r = Sandbox().run({program!r}); print(repr(r.stdout))"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        done = subprocess.run([str(python), "-c", probe], capture_output=True, text=True, timeout=120, env=env)
        assert done.returncode == 0 and done.stdout.strip() == repr("ok\n"), done.stdout + done.stderr
    finally:
        shutil.rmtree(link_dir)


# ---------------------------------------------------------------------------------------- the reward
def test_correct_and_partly_correct_programs():
    assert score(CORRECT) == 1.0
    assert score("def add(a, b):\n    return a + b if a > 0 else 1\n") == 0.75  # fails add(-4, 4) only
    assert score("def add(a, b):\n    return a + b if a > 0 else 1\n", all_or_nothing=True) == 0.0
    assert score("def add(a, b):\n    return (a + b) * (a != 1)\n") == 0.75
    assert score("def add(a, b):\n    return str(a + b)\n") == 0.0  # "5" is not 5
    assert score("def add(a, b):\n    raise ValueError\n") == 0.0
    assert score("def add(a, b):\n    return 5\n") == 0.25  # what forging every answer as 5 earns, above


def test_the_judge_decides_outside_on_plain_values():
    """Forms a dataset uses, decided here: tolerances, comprehensions, generators, conversions, methods."""
    program = """
        import math
        def add(a, b):
            return a + b
        def gen(n):
            yield from range(n)
        class Frac:
            def __init__(self, a, b): self.a, self.b = a, b
            def __str__(self): return f"{self.a}/{self.b}"
    """
    tests = ["assert abs(add(0.1, 0.2) - 0.3) < 1e-9", "assert math.isclose(add(0.1, 0.2), 0.3)",
             "assert all(add(x, 1) == x + 1 for x in range(5))", "assert [add(x, y) for x, y in [(1, 2)]] == [3]",
             "assert list(gen(3)) == [0, 1, 2]", "assert sorted(gen(3), reverse=True) == [2, 1, 0]",
             "assert str(Frac(1, 2)) == '1/2'", "assert add('a', 'b').upper() == 'AB'", "assert 1 < add(1, 1) < 3",
             "assert add(1, 1) is not None and isinstance(add(1, 1), int)", "assert f'{add(1, 1)}' == '2'"]
    assert score(program, tests=tests) == 1.0
    # Wrong: only gen, sorted, Frac and the None/int check still hold.
    assert score(program.replace("return a + b", "return a - b"), tests=tests) == 4 / 11


def test_tests_as_one_string_and_a_program_that_prints():
    tests = "assert add(2, 3) == 5\nassert add(1, 1) == 2\nassert 0 == add(-4, 4)\nassert add(10, 5) > 14\n"
    assert score("print('hello')\n" + CORRECT, tests=tests) == 1.0


def test_a_test_the_judge_cannot_decide_is_refused_with_one_line():
    r = reward()
    for test, why in [("x = add(1, 1)", "not one `assert EXPRESSION`"), ("assert add(1, 1) ==", "not valid Python"),
                      ("assert re.match('a', add('a', ''))", "a module the program can import"),
                      ("assert add(1, 1) == bytes([2])", "must not be evaluated where the program runs"),
                      ("assert 1 == 1", "evaluates nothing of the program")]:
        with pytest.raises(UnjudgeableTest, match=r"CodeTestReward: test 2 of the row .*" + re.escape(why)):
            r(["p"], [CORRECT], tests=[[TESTS[0], test]])
    with pytest.raises(ConfigError, match="reads the column 'checks', which is not a dataset column"):
        CodeTestReward(tests=AssertTests(column="checks"))(["p"], [CORRECT], tests=[TESTS])
    assert r(["p", "p"], [CORRECT, CORRECT], tests=[[], None]) == [None, None]


def test_fenced_extraction():
    r = CodeTestReward(sandbox=Sandbox(**LIMITS))
    completions = [
        "Here is my answer:\n```python\n" + CORRECT + "```\nDone.",
        "First try:\n```\ndef add(a, b): return 0\n```\nBetter:\n```py\n" + CORRECT + "```",
        CORRECT,  # no fenced block: nothing to run
    ]
    assert r(["p"] * 3, completions, tests=[TESTS] * 3) == [1.0, 1.0, 0.0]
    assert r.program("```python\nx = 1\n```") == "x = 1\n"


def test_stdio_tests():
    cases = [{"input": "2 3\n", "output": "5\n"}, {"input": "1 1\n", "output": "2"}, {"input": "-4 4", "output": "0"}]
    program = "a, b = map(int, input().split())\nprint(a + b if a > 0 else 1)\n"
    assert score("a, b = map(int, input().split())\nprint(a + b)\n", tests=cases, format=StdioTests()) == 1.0
    assert score(program, tests=cases, format=StdioTests()) == pytest.approx(2 / 3)
    flood = "a, b = map(int, input().split())\nprint('x' * (2 << 20))\nprint(a + b)\n"
    assert score(flood, tests=cases, format=StdioTests()) == 0.0
    long_input = [{"input": "1 " * 100_000 + "\n", "output": "100000"}]  # 200 KB: more than a pipe holds
    assert score("print(len(input().split()))\n", tests=long_input, format=StdioTests()) == 1.0
    crash = "a, b = map(int, input().split())\nprint(a + b)\nraise SystemExit(3)\n"
    assert score(crash, tests=cases, format=StdioTests()) == 0.0
    # The right output, and a forged line in the report: 0, counted as an error.
    forged = "import os\nfor fd in range(3, 64):\n    try:\n        os.write(fd, b'{\"kind\":\"loaded\"}\\n')\n" \
             "    except OSError:\n        pass\nprint(5)\n"
    from stare_lit.rewards.runner import RewardRunner, RewardWarning, Scoring

    r = reward(tests=StdioTests())
    with RewardRunner([r], scoring=Scoring(on_error="fail")) as runner:
        with pytest.warns(RewardWarning, match="error score"):
            scored = runner(["p"], [forged], {"tests": [cases[:1]]})
    assert scored.per_reward["code_test_reward"].tolist() == [0.0] and scored.errors == {"code_test_reward": 1}


def test_a_tampered_report_is_counted_and_never_raises():
    """A forged report under on_error: fail: the completion scores 0, counted in errors; training goes on."""
    from stare_lit.rewards.runner import RewardRunner, RewardWarning, Scoring

    forger = textwrap.dedent(hostile_rows(Outside.dummy())["forges_report_records"].program)
    with RewardRunner([reward()], scoring=Scoring(on_error="fail")) as runner:
        with pytest.warns(RewardWarning, match="gave 1 of 2 completions an error score"):
            scored = runner(["p", "p"], [forger, CORRECT], {"tests": [TESTS, TESTS]})
    assert scored.per_reward["code_test_reward"].tolist() == [0.0, 1.0] and scored.errors == {"code_test_reward": 1}


def test_a_stuck_reward_is_bounded_by_the_scoring_timeout():
    """model.scoring.timeout shorter than the sandbox's: the worker's policy applies (timeout_score)."""
    from stare_lit.rewards.runner import RewardRunner, RewardWarning, Scoring

    slow = CodeTestReward(extract="whole", sandbox=Sandbox(timeout_seconds=30, cpu_seconds=30, isolation=MODE))
    with RewardRunner([slow], scoring=Scoring(timeout=3, timeout_score=0.0)) as runner:
        with pytest.warns(RewardWarning, match="longer than model.scoring.timeout"):
            scored = runner(["p"], ["import time\ntime.sleep(60)\n" + CORRECT], {"tests": [TESTS]})
    assert scored.per_reward["code_test_reward"].tolist() == [0.0] and scored.timeouts == {"code_test_reward": 1}
    time.sleep(0.5)  # the killed worker's sandbox dies with it (PR_SET_PDEATHSIG)
    assert _sandboxes_of_dead_parents() == []
    # What the killed worker left (its run's directory and cgroups) is swept by the next process's first run.
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Path(tempfile.mkdtemp(prefix=f"stare-lit-sandbox-{gone.pid}-"))  # as a killed worker leaves one
    (stale / "sub").mkdir()
    left = [p for p in Path(tempfile.gettempdir()).glob("stare-lit-sandbox-*") if not _alive(p.name.split("-")[3])]
    assert stale in left
    sandbox_module._swept = False
    probe()
    assert not any(p.exists() for p in left)


def _alive(pid: str) -> bool:
    return os.path.exists(f"/proc/{pid}")


def _sandboxes_of_dead_parents() -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            args = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"sandbox/child.py") for a in args) and not os.path.exists(f"/proc/{int(args[-2])}"):
            found.append(b" ".join(args).decode())
    return found


@needs_namespaces
def test_killing_its_parent_fails_and_the_worker_lives_on():
    """Through the reward worker (model.scoring.timeout set): the killer scores 0, the worker survives it."""
    from stare_lit.rewards.runner import RewardRunner, Scoring

    killer = textwrap.dedent("""
        import os, signal
        for target in (os.getppid(), 1, -1):
            try:
                os.kill(target, signal.SIGKILL)
            except OSError:
                pass
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass
        os.killpg(0, signal.SIGKILL)
    """) + CORRECT
    with RewardRunner([reward()], scoring=Scoring(timeout=60)) as runner:
        scored = runner(["p"] * 3, [killer, CORRECT, killer], {"tests": [TESTS] * 3})
        workers = runner._workers
        # none lost (a lost one leaves the list until the next batch): nothing killed a worker
        assert len(workers) == min(runner.pool, 3) and all(worker.alive for worker in workers)
    assert scored.per_reward["code_test_reward"].tolist() == [0.0, 1.0, 0.0]
    assert scored.timeouts == {"code_test_reward": 0} and scored.errors == {"code_test_reward": 0}


def test_environment_is_scrubbed_but_allowed_variables_pass(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("STARE_LIT_ALLOWED", "yes")
    sandbox = Sandbox(**LIMITS, env_allow=["STARE_LIT_ALLOWED"])
    run = sandbox.run("import os\nprint(sorted(os.environ.items()))")
    assert "STARE_LIT_ALLOWED', 'yes'" in run.stdout and SECRET not in run.stdout and "PATH" not in run.stdout


# ---------------------------------------------------------------------------------------- where it cannot confine
def test_a_machine_without_user_namespaces_gets_a_refusal():
    """Real, not mocked: from a user namespace whose limit on nested ones is 0, the sandbox cannot make its own."""
    code = textwrap.dedent("""
        import ctypes, json
        libc = ctypes.CDLL(None, use_errno=True)
        assert libc.unshare(0x10000000) == 0
        open("/proc/sys/user/max_user_namespaces", "w").write("0")
        from stare_lit.errors import ConfigError
        from stare_lit.sandbox.sandbox import Sandbox, probe
        refused = probe()["refused"]
        with Sandbox(isolation="limits_only").session("def add(a, b):\\n    return a + b\\n") as session:
            five = session.value("add(2, 3)", {})
        print(json.dumps([refused, five, session.isolation["isolation"]]))
    """)
    if not CONFINED:  # no user namespaces here at all: the module's own probe was refused
        assert ISOLATION["refused"].startswith("CodeTestReward init_args.sandbox: this machine cannot confine")
        assert "sandbox.isolation: limits_only" in ISOLATION["refused"]
        return
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    refused, five, mode = json.loads(done.stdout.strip().splitlines()[-1])
    assert refused.startswith("CodeTestReward init_args.sandbox: this machine cannot confine programs")
    assert "unshare(user|mount|pid|network|ipc|uts|cgroup namespaces): No space left on device" in refused
    assert "sandbox.isolation: limits_only" in refused
    assert (five, mode) == (5, "limits_only")


def test_limits_only_is_weaker_and_says_so():
    """The documented weaker mode: limits, scrubbed environment, no root; but the machine is in view."""
    sandbox = Sandbox(**{**LIMITS, "isolation": "limits_only"})
    sandbox_module._warned = False
    with pytest.warns(SandboxWarning, match="limits_only: programs run without namespaces"):
        run = sandbox.run("import os\nopen('x', 'w').write('x')\nprint(os.getuid(), os.path.exists('/etc/hostname'))")
    assert run.isolation["isolation"] == "limits_only" and "minimal_root" not in run.isolation
    uid, sees_the_host = run.stdout.split()
    assert int(uid) == (65534 if os.geteuid() == 0 else os.geteuid()) and sees_the_host == "True"
    assert score(CORRECT, limits={"isolation": "limits_only"}) == 1.0


def test_sandbox_checks_its_settings():
    with pytest.raises(ConfigError, match=r"sandbox\.cpu_seconds"):
        Sandbox(cpu_seconds=0)
    with pytest.raises(ConfigError, match=r"sandbox\.max_files"):
        Sandbox(max_files=1)
    with pytest.raises(ConfigError, match=r"sandbox\.isolation='none'; use namespaces"):
        Sandbox(isolation="none")
    with pytest.raises(ConfigError, match=r"init_args.tests='asserts'; give a class_path"):
        CodeTestReward(tests="asserts")


@needs_namespaces
def test_what_the_sandbox_reports_it_is():
    """The isolation record of this machine's runs: every part the README promises."""
    assert ISOLATION["isolation"] == "namespaces" and ISOLATION["minimal_root"] is True
    assert all(ISOLATION[f"{name}_namespace"] for name in ("user", "mount", "pid", "network", "ipc", "uts"))
    assert ISOLATION["uid_inside"] == 1000 and ISOLATION["uid_outside"] == (65534 if os.geteuid() == 0 else os.geteuid())
    assert ISOLATION["proc"] in ("pids_only", "read_only", "none") and ISOLATION["keyring"] in ("new", "unavailable")
    assert ISOLATION["process_cap"] is True


# ---------------------------------------------------------------------------------------- the built-in code task
def test_every_built_in_task_is_solved_by_its_solution():
    from stare_lit.data.tasks.code import TASKS

    rows = [json.loads(line) for line in TASKS.read_text().splitlines()]
    assert len(rows) >= 30 and all(row["prompt"] and row["tests"] for row in rows)
    r = CodeTestReward(extract="fenced", sandbox=Sandbox(**LIMITS))
    completions = [f"```python\n{row['solution']}```" for row in rows]
    assert r([row["prompt"] for row in rows], completions, tests=[row["tests"] for row in rows]) == [1.0] * len(rows)
    sample = rows[::3]
    wrong = [f"```python\n{sample[(i + 1) % len(sample)]['solution']}```" for i in range(len(sample))]  # another's
    assert r([row["prompt"] for row in sample], wrong, tests=[row["tests"] for row in sample]) == [0.0] * len(sample)


@needs_namespaces  # the config keeps the default isolation, which such a machine refuses
def test_code_config_trains_through_the_reward_worker(tmp_path, capsys):
    """configs/code_grpo.yaml for two steps: a config-built tiny model, every completion run in the
    sandbox in the reward worker (model.scoring.timeout is set); a random model scores ~0."""
    import csv

    from stare_lit.commands.cli import main
    from stare_lit.data.tasks.code import TOKENIZER

    main(["fit", "--config", str(ROOT / "configs" / "code_grpo.yaml"), "--model.policy.tokenizer", str(TOKENIZER),
          "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
          "--trainer.max_steps", "2", "--model.sampling.max_new_tokens", "24"])
    (metrics,) = tmp_path.glob("version_*/metrics.csv")
    rows = [row for row in csv.DictReader(metrics.open()) if row.get("reward/code_test_reward")]
    assert len(rows) == 2
    for row in rows:
        assert 0.0 <= float(row["reward/code_test_reward"]) <= 1.0
        assert float(row["reward/code_test_reward_timeouts"]) == 0 and float(row["reward/code_test_reward_errors"]) == 0
        assert float(row["reward/code_test_reward_none_frac"]) == 0


@needs_namespaces
@pytest.mark.skipif(os.geteuid() != 0, reason="the table already ran as a normal user: this process is one")
def test_hostile_table_as_a_normal_user(nobody_table):
    """The whole table as uid 65534, from a child process of this root one (tests/sandbox/_as_nobody.py)."""
    out, _ = nobody_table.communicate(timeout=600)
    nobody_table.errors.seek(0)
    assert nobody_table.returncode == 0, nobody_table.errors.read()[-3000:]
    problems = json.loads(out.strip().splitlines()[-1])
    assert set(problems) == set(ROW_NAMES)
    assert {name: found for name, found in problems.items() if found} == {}

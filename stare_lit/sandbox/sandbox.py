"""Run an untrusted Python program confined, and read what it reports as data that cannot hurt the reader (Linux).

What a run is (``isolation: namespaces``, the default; stare_lit.sandbox.child does it):

- a new ``python -I -S`` process in a scrubbed environment, under resource limits (CPU seconds,
  address space, file size, open files, processes; no core files), with stdout and stderr read
  through capped pipes and a wall-clock limit after which everything it started is killed;
- as uid 1000 in new user, mount, PID, network, IPC, UTS and cgroup namespaces, mapped to nobody
  (65534) when the trainer is root and to the trainer's own uid otherwise, with no capabilities
  and no new privileges, and no nested user namespaces;
- in a minimal root: the standard library, the interpreter and the shared libraries read-only,
  ``/dev/null``, ``/dev/zero``, ``/dev/urandom``, a read-only ``/proc`` of its own PID namespace
  (or none), and a private tmpfs ``/sandbox`` (``disk_mb``, ``max_files``) as its working
  directory: no host file, socket, terminal, ``/dev/kmsg`` or writable ``/proc/sys``;
- with a new session keyring, and (as root) in a pids and a memory cgroup below the trainer's.

A machine that cannot give all of that gets a ``ConfigError`` naming what failed, before any program
runs; ``isolation: limits_only`` is the documented weaker mode (docs/code_rewards.md).

What comes back is checked here, and nothing in it is trusted: one JSON line per record
(stare_lit.sandbox.wire), in a fixed order — isolation, ``loaded``, then one reply per request with
the request's id — each bounded in size and nesting, values decoded to plain data by exact type. A
line out of order, a duplicate or missing reply, a wrong id, bad UTF-8 or JSON, an unknown field,
too much data: the run is marked ``tampered`` and scores 0 (counted in ``reward/<name>_errors``).
The verdict is not here at all: stare_lit.sandbox.judge decides each test from the values.
"""

from __future__ import annotations

import functools
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

from stare_lit.errors import ConfigError, check
from stare_lit.sandbox import wire
from stare_lit.sandbox.child import cgroup_dirs
from stare_lit.sandbox.wire import Malformed, NoValue

_CHILD = Path(__file__).with_name("child.py")  # run by path: under -I -S, stare_lit is not importable
_PREFIX = "stare-lit-sandbox-"  # + the parent's pid: directories and cgroups of dead parents are swept
_MAX_PENDING = 2 * wire.MAX_LINE_BYTES  # report bytes waiting to be read: at most one reply is outstanding
# Variables a Python program needs to behave normally; nothing that can hold a secret.
DEFAULT_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")
_LIMITS = ("cpu_seconds", "memory_mb", "file_size_mb", "max_processes", "max_open_files", "disk_mb", "max_files")


class SandboxWarning(UserWarning):
    """The sandbox runs programs with less isolation than its default (``isolation: limits_only``)."""


@dataclass
class Sandbox:
    """Limits and isolation of one sandboxed run.

    Args:
        timeout_seconds: Wall-clock limit of a run (the program and all its tests); then its
            processes are killed.
        cpu_seconds: CPU time limit of each process (RLIMIT_CPU).
        memory_mb: Address-space limit of each process (RLIMIT_AS), in MiB; as root also a memory
            cgroup for all of them together.
        file_size_mb: Largest file it may write (RLIMIT_FSIZE), in MiB.
        max_processes: Processes it may have at once, itself included (RLIMIT_NPROC, which binds
            because the program never runs as root; as root also a pids cgroup).
        max_open_files: Open file descriptors per process (RLIMIT_NOFILE).
        disk_mb: Size of its working directory, a private tmpfs.
        max_files: Files and directories it may create there (the tmpfs's inodes).
        max_output_bytes: stdout and stderr kept, each; a run that writes more fails.
        env_allow: Environment variables passed through from the trainer; all others (HF_TOKEN,
            WANDB_API_KEY, ...) are removed. ``None`` is PATH, LANG, LC_ALL, LC_CTYPE and TZ.
        isolation: ``namespaces`` (the module docstring; refused with a ``ConfigError`` where the
            machine cannot give it) or ``limits_only``: no namespaces, the limits, a scrubbed
            environment, a new session keyring, and root dropped to nobody — the program then sees
            the machine as that user does (docs/code_rewards.md).
    """

    timeout_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 16
    max_open_files: int = 64
    disk_mb: int = 64
    max_files: int = 4096
    max_output_bytes: int = 1 << 20
    env_allow: Optional[list[str]] = None
    isolation: Literal["namespaces", "limits_only"] = "namespaces"

    def __post_init__(self) -> None:
        key = "CodeTestReward init_args.sandbox"
        check(self.timeout_seconds > 0, f"{key}.timeout_seconds={self.timeout_seconds}; use a number of seconds > 0.")
        for name in _LIMITS + ("max_output_bytes",):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{key}.{name}={value!r}; use a whole number >= 1.")
        check(self.memory_mb >= 64, f"{key}.memory_mb={self.memory_mb}; Python itself needs ~30 MiB, use >= 64.")
        check(self.max_processes >= 1, f"{key}.max_processes={self.max_processes}; use >= 1.")
        check(self.max_open_files >= 16, f"{key}.max_open_files={self.max_open_files}; Python needs ~10, use >= 16.")
        check(self.max_files >= 16, f"{key}.max_files={self.max_files}; use >= 16.")
        check(self.isolation in ("namespaces", "limits_only"),
              f"{key}.isolation={self.isolation!r}; use namespaces (the default) or limits_only (README, 'Code"
              " rewards': what it does not stop).")

    def run(self, program: str, stdin: str = "") -> "Run":
        """Run ``program`` to its end with ``stdin`` as its input (a stdio test).

        Raises:
            ConfigError: This machine cannot confine it as ``isolation`` says.
        """
        with Session(self, program, "stdio", stdin.encode()) as session:
            pass
        return session.run

    def session(self, program: str) -> "Session":
        """Load ``program`` in the sandbox and keep it running to answer requests (``with``; asserts tests)."""
        return Session(self, program, "asserts", b"")

    def _environment(self) -> dict[str, str]:
        allow = DEFAULT_ENV_ALLOW if self.env_allow is None else self.env_allow
        return {key: os.environ[key] for key in allow if key in os.environ}


@dataclass
class Run:
    """What one run did.

    Attributes:
        isolation: What confined it, as the child reported before the program started.
        loaded: The program ran to its end (asserts mode): requests were answered.
        exit_code: The child's exit status; ``None`` if it was killed at the time limit.
        timed_out: It ran past ``timeout_seconds``.
        overflowed: stdout or stderr went past ``max_output_bytes``.
        stdout: What it printed (at most ``max_output_bytes``).
        stderr: Its error output (at most ``max_output_bytes``).
        tampered: Its report broke the protocol (``Session``): the run scores 0 and counts as an error.
        seconds: Wall-clock time of the run.
    """

    isolation: dict
    loaded: bool
    exit_code: Optional[int]
    timed_out: bool
    overflowed: bool
    stdout: str
    stderr: str
    tampered: bool
    seconds: float


class Session:
    """One sandboxed run: the program is loaded, then answers :meth:`value` requests until the ``with`` ends.

    The reading side of the protocol. Every line from the child goes through :func:`parse_record`;
    the order is checked here. Whatever the child sends, this raises nothing but ``ConfigError``
    (only from the isolation record, written before the program runs) and :class:`NoValue`.
    """

    def __init__(self, sandbox: Sandbox, program: str, mode: str, stdin: bytes) -> None:
        self.sandbox, self.program, self.mode, self.stdin = sandbox, program, mode, stdin
        self.isolation: dict = {}
        self.loaded = self.tampered = self.timed_out = False
        self.run: Optional[Run] = None
        self._ended = False  # the child has nothing more to say (closed, timed out, overflowed, tampered)
        self._next_id = 0

    # ------------------------------------------------------------------ the run
    def __enter__(self) -> "Session":
        _sweep_once()
        _warn_if_weaker(self.sandbox)
        self._start()
        try:
            first = self._record()
            if first is not None and first["kind"] != "isolation":
                self._tamper()
            elif first is not None:
                self.isolation = first["isolation"]
                if "refused" in first:
                    raise ConfigError(_refusal(first["refused"], self.sandbox))
            elif not self.timed_out:
                self._tamper()  # the child said nothing at all: the harness failed, not the program
            if self.mode == "asserts" and not self._ended:
                second = self._record()
                self.loaded = second is not None and second["kind"] == "loaded"
                if second is not None and not self.loaded:
                    self._tamper()
        except BaseException:
            self._stop()
            raise
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._finish()
        finally:
            self._stop()

    def value(self, source: str, names: dict, iterate: bool = False) -> Any:
        """The value of the program expression ``source`` (with the test's variables ``names``), as plain data.

        Raises:
            NoValue: It raised, is not plain data, the run ended, or the report broke the protocol.
        """
        if self._ended or not self.loaded:
            raise NoValue(source)
        request = {"id": self._next_id, "source": source, "iterate": iterate,
                   "names": {name: _encode(value) for name, value in names.items()}}
        self._next_id += 1
        self._pipes.outgoing += wire.dumps(request)  # sent while the reply is awaited: neither side blocks
        record = self._record()
        if record is None:
            raise NoValue(source)
        if record["kind"] not in ("value", "raised", "unplain") or record["id"] != request["id"]:
            self._tamper()
            raise NoValue(source)
        if record["kind"] != "value":
            raise NoValue(source)
        return record["value"]

    @property
    def deadline(self) -> float:
        return self._deadline

    # ------------------------------------------------------------------ the child
    def _start(self) -> None:
        self._workdir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        self._cgroup = f"{_PREFIX}{os.getpid()}-{os.urandom(6).hex()}"
        job = {"program": self.program, "mode": self.mode, "isolation": self.sandbox.isolation,
               "cgroup": self._cgroup, "limits": {name: getattr(self.sandbox, name) for name in _LIMITS},
               "libpython": _libpython()}
        Path(self._workdir, ".job.json").write_text(json.dumps(job), encoding="utf-8")
        report_r, report_w = os.pipe()
        request_r, request_w = os.pipe()
        self._started = time.monotonic()
        self._deadline = self._started + self.sandbox.timeout_seconds
        with tempfile.TemporaryFile() as given:  # a file, not a pipe: any size, and nothing to block on
            given.write(self.stdin)
            given.seek(0)
            stdin = given if self.mode == "stdio" else subprocess.DEVNULL
            try:
                self._child = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(_CHILD), str(report_w), str(request_r), str(os.getpid())],
                    cwd=self._workdir, env=self.sandbox._environment(), stdin=stdin, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, pass_fds=(report_w, request_r), start_new_session=True)
            finally:
                os.close(report_w), os.close(request_r)
        os.set_blocking(request_w, False)
        self._pipes = _Pipes(report_r, self._child.stdout.fileno(), self._child.stderr.fileno(), request_w,
                             self.sandbox.max_output_bytes)

    def _record(self) -> Optional[dict]:
        """The next record; ``None`` if the child ended, or the run timed out, overflowed or was found tampered."""
        if self._ended:
            return None
        line = self._pipes.next_line(self._deadline)
        if line is None:
            self._end_of_lines()
            return None
        try:
            return parse_record(line)
        except Malformed:
            self._tamper()
            return None

    def _end_of_lines(self) -> None:
        pipes = self._pipes
        if pipes.pending_too_long or pipes.report in pipes.overflowed:
            self._tamper()
        self.timed_out |= pipes.timed_out
        self._ended = True

    def _tamper(self) -> None:
        self.tampered = self._ended = True

    def _finish(self) -> None:
        """No more requests: let the child end, and check that it says nothing more."""
        self._pipes.close_outgoing()
        if not self._ended and self._record() is not None:
            self._tamper()  # a line nobody asked for
        if not self.timed_out and not self._pipes.overflowed and not _exited(self._child, self._deadline):
            self.timed_out = True

    def _stop(self) -> None:
        pipes, child = self._pipes, self._child
        try:
            _kill_group(child)
        finally:
            pipes.close()
            child.stdout.close(), child.stderr.close()
            _remove_cgroup(self._cgroup)
            shutil.rmtree(self._workdir, onerror=_force_remove)
        self.run = Run(isolation=self.isolation, loaded=self.loaded,
                       exit_code=None if self.timed_out else child.returncode, timed_out=self.timed_out,
                       overflowed=bool(pipes.overflowed - {pipes.report}), stdout=pipes.text(pipes.out),
                       stderr=pipes.text(pipes.err), tampered=self.tampered, seconds=time.monotonic() - self._started)


@functools.lru_cache(maxsize=1)
def _libpython() -> str:
    """The interpreter's shared library, if it has one (the sandbox shows it, for a program that starts Python)."""
    import sysconfig  # noqa: PLC0415

    path = os.path.join(sysconfig.get_config_var("LIBDIR") or "", sysconfig.get_config_var("INSTSONAME") or "")
    return path if os.path.isfile(path) else ""


def _encode(value: Any) -> Any:
    try:
        return wire.encode(value)
    except wire.NotPlain:
        raise NoValue("a test variable that is not plain data") from None


def _warn_if_weaker(sandbox: Sandbox) -> None:
    global _warned
    if sandbox.isolation == "limits_only" and not _warned:
        _warned = True
        warnings.warn("sandbox.isolation: limits_only: programs run without namespaces (as nobody if the trainer is"
                      " root, else as your user): they can read what that user can, use the network and see your"
                      " processes (docs/code_rewards.md)", SandboxWarning, stacklevel=4)


_warned = False


def _refusal(reason: str, sandbox: Sandbox) -> str:
    return (f"CodeTestReward init_args.sandbox: this machine cannot confine programs as isolation:"
            f" {sandbox.isolation} requires ({reason[:300]}); allow user namespaces (sysctl"
            " user.max_user_namespaces > 0; on Ubuntu 24.04+ kernel.apparmor_restrict_unprivileged_userns=0; in"
            " Docker, --security-opt seccomp=unconfined --security-opt apparmor=unconfined), or set"
            " sandbox.isolation: limits_only to run programs with limits only (docs/code_rewards.md says what"
            " that does not stop)")


# ---------------------------------------------------------------------------------------- records
_ISOLATION_VALUES = (bool, int, str)


def parse_record(line: bytes) -> dict:
    """One line of the child's report as a record of a known shape, values decoded; :class:`Malformed` otherwise.

    Shapes: ``{"kind": "isolation", "isolation": {name: bool | int | str}, ["refused": str]}``,
    ``{"kind": "loaded"}``, ``{"kind": "value", "id": int, "value": <wire value>}``,
    ``{"kind": "raised" | "unplain", "id": int}``. Never raises anything but :class:`Malformed`.
    """
    record = wire.loads(line)
    if type(record) is not dict or type(record.get("kind")) is not str:
        raise Malformed("not a record")
    kind, keys = record["kind"], set(record)
    if kind == "isolation":
        isolation = record.get("isolation")
        if not ({"kind", "isolation"} <= keys <= {"kind", "isolation", "refused"} and type(isolation) is dict
                and len(isolation) <= 64 and all(type(v) in _ISOLATION_VALUES for v in isolation.values())
                and type(record.get("refused", "")) is str):
            raise Malformed("a bad isolation record")
        return record
    if kind == "loaded" and keys == {"kind"}:
        return record
    if kind in ("value", "raised", "unplain") and type(record.get("id")) is int and record["id"] >= 0:
        if kind != "value" and keys == {"kind", "id"}:
            return record
        if kind == "value" and keys == {"kind", "id", "value"}:
            return {**record, "value": wire.decode(record["value"])}
    raise Malformed(f"a record of kind {kind[:20]!r} with fields {sorted(keys)[:8]}")


class _Pipes:
    """The child's report, stdout and stderr, read together under caps; requests written to it without blocking."""

    def __init__(self, report: int, out: int, err: int, requests: int, output_cap: int) -> None:
        self.report, self.out, self.err, self.requests = report, out, err, requests
        self.caps = {report: _MAX_PENDING, out: output_cap, err: output_cap}
        self.data = {fd: bytearray() for fd in self.caps}  # the report's lines are removed as they are read
        self.open = set(self.caps)
        self.overflowed: set[int] = set()
        self.outgoing = b""
        self.timed_out = self.pending_too_long = False

    def next_line(self, deadline: float) -> Optional[bytes]:
        """The report's next line; ``None`` once it closed, a stream overflowed, the deadline passed or a line never ends."""
        buffer = self.data[self.report]
        while True:
            end = buffer.find(b"\n")
            if end >= 0:
                line = bytes(buffer[:end])
                del buffer[: end + 1]
                return line
            if len(buffer) > wire.MAX_LINE_BYTES:
                self.pending_too_long = True
                return None
            if self.report not in self.open or self.overflowed or not self._pump(deadline):
                return None

    def _pump(self, deadline: float) -> bool:
        """Read what is there (and write what requests fit) once; False at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            self.timed_out = True
            return False
        writing = [self.requests] if self.outgoing and self.requests is not None else []
        readable, writable, _ = select.select(list(self.open), writing, [], remaining)
        if writable:
            try:
                self.outgoing = self.outgoing[os.write(self.requests, self.outgoing):]
            except BlockingIOError:
                pass
            except BrokenPipeError:  # it stopped reading: what it was asked goes unanswered
                self.outgoing = b""
        for fd in readable:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                self.open.discard(fd)
                continue
            self.data[fd] += chunk
            if len(self.data[fd]) > self.caps[fd]:
                self.overflowed.add(fd)
        return True

    def close_outgoing(self) -> None:
        if self.requests is not None:
            os.close(self.requests)
            self.requests = None

    def close(self) -> None:
        self.close_outgoing()
        os.close(self.report)

    def text(self, fd: int) -> str:
        return bytes(self.data[fd][: self.caps[fd]]).decode("utf-8", "replace")


def probe(isolation: str = "namespaces") -> dict:
    """What a run is isolated by on this machine; ``{"refused": why}`` where it cannot be."""
    try:
        with Sandbox(timeout_seconds=30, isolation=isolation).session("pass") as session:
            pass
    except ConfigError as error:
        return {"refused": str(error)}
    return session.isolation


def _exited(child: subprocess.Popen, deadline: float) -> bool:
    """Wait until the child exits or the deadline passes, without reaping it (its group id stays reserved)."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.002)
    return False


def _kill_group(child: subprocess.Popen) -> None:
    """Kill the child's process group, then reap the child.

    In that order: until the child is reaped its group id cannot be reused, so the signal cannot
    reach an unrelated group.
    """
    try:
        os.killpg(child.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _remove_cgroup(name: str) -> None:
    for path in cgroup_dirs(name).values():
        if not os.path.isdir(path):
            continue
        for _ in range(100):  # processes leave the cgroup as the kernel reaps them
            try:
                os.rmdir(path)
                break
            except OSError:
                _kill_cgroup(path)
                time.sleep(0.01)


_swept = False


def _sweep_once() -> None:
    """Remove what runs of dead parents left (a reward worker killed at model.scoring.timeout cannot
    clean up after itself): their temporary directories and cgroups. Once per process."""
    global _swept
    if _swept:
        return
    _swept = True
    places = [tempfile.gettempdir()] + [os.path.dirname(path) for path in cgroup_dirs("x").values()]
    for place in places:
        try:
            names = [name for name in os.listdir(place) if name.startswith(_PREFIX)]
        except OSError:
            continue
        for name in names:
            pid = name[len(_PREFIX):].split("-")[0]
            if not pid.isdigit() or os.path.exists(f"/proc/{pid}"):
                continue
            path = os.path.join(place, name)
            if place == tempfile.gettempdir():
                shutil.rmtree(path, onerror=_force_remove)
            else:
                _kill_cgroup(path)
                try:
                    os.rmdir(path)
                except OSError:
                    pass


def _kill_cgroup(path: str) -> None:
    try:
        pids = Path(path, "cgroup.procs").read_text().split()
    except OSError:
        return
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _force_remove(function, path, _exc_info) -> None:
    """rmtree's error hook: the program may have made a directory unwritable; make it writable and retry."""
    try:
        os.chmod(os.path.dirname(path), 0o700)
        os.chmod(path, 0o700)
        function(path)
    except OSError:
        pass

"""Run an untrusted Python program under limits, and learn what it did through a channel it cannot forge (Linux).

**A resource-and-mistake sandbox, not a security boundary.** It stops what model-written code
does by accident or by reward hacking (loops forever, forks, eats memory, floods output, writes
into your files, reads your tokens, calls the network, kills the trainer, prints "All tests
passed"). It does not stop a determined attacker with a kernel exploit, or one who reads the
harness's memory to fake the result of a test that is not a plain ``assert value == literal``.
For untrusted code from people, run the rewards in a container (``docker run --rm --network none
--pids-limit 64 --memory 1g --read-only``, gVisor's ``runsc``) or a sandbox service.

Each run (:meth:`Sandbox.run`):

- a new process (``python -I -S``: no site, no user paths, no ``PYTHON*`` variables) in a fresh
  temporary directory, removed afterwards, with only the allowed environment variables;
- resource limits (``setrlimit`` in the child): CPU seconds, address space, file size, open
  files, processes (RLIMIT_NPROC, or a pids cgroup as root, where RLIMIT_NPROC does not apply);
- where the kernel allows unprivileged user namespaces: new network (no interfaces but a down
  loopback), PID (the trainer's processes cannot be seen or signalled) and mount namespaces
  (every mount read-only except the run's directory; a private /proc), all capabilities dropped;
- a wall-clock limit, after which its process group (and, with a PID namespace, every process it
  started) is killed;
- stdout and stderr read through pipes, at most ``max_output_bytes``.

What is isolated on this machine is in each result's ``isolation`` (and :func:`probe`).

The verdict: the child reports on a pipe, each line tagged with a random per-run nonce; the
parent keeps only lines with the nonce, in the order the harness writes them (isolation, program
loaded, then each test), and discards the whole run on anything else. For a test ``assert EXPR ==
LITERAL`` (either side) the child is sent only ``EXPR`` and returns its value as plain data; the
parent compares it with the literal it kept, so even a forged line must carry the right answer.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

from stare_lit.rewards._sandbox_child import cgroup_dirs
from stare_lit.errors import ConfigError, check

_CHILD = Path(__file__).with_name("_sandbox_child.py")
_PREFIX = "stare-lit-sandbox-"  # + the parent's pid: directories and cgroups of dead parents are swept
_MAX_REPORT_BYTES = 1 << 20  # what the child may send on the result pipe; more is tampering
# Variables a Python program needs to behave normally; nothing that can hold a secret.
DEFAULT_ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ")


@dataclass
class Sandbox:
    """Limits of one sandboxed run.

    Args:
        timeout_seconds: Wall-clock limit of a run; then its processes are killed.
        cpu_seconds: CPU time limit of each process (RLIMIT_CPU).
        memory_mb: Address-space limit of each process (RLIMIT_AS), in MiB.
        file_size_mb: Largest file it may write (RLIMIT_FSIZE), in MiB.
        max_processes: Processes it may have at once, itself included (RLIMIT_NPROC, or a pids
            cgroup when run as root).
        max_open_files: Open file descriptors per process (RLIMIT_NOFILE).
        disk_mb: Size of its working directory, a private tmpfs (where user namespaces work).
        max_output_bytes: stdout and stderr kept, each; a run that writes more fails.
        env_allow: Environment variables passed through from the trainer; all others (HF_TOKEN,
            WANDB_API_KEY, ...) are removed. ``None`` is PATH, LANG, LC_ALL, LC_CTYPE and TZ.
        require_process_cap: Refuse to run a program when nothing caps its processes (root
            without a writable pids cgroup, where RLIMIT_NPROC does not apply): a fork bomb
            there could exhaust the machine's process table before the time limit.
    """

    timeout_seconds: float = 10.0
    cpu_seconds: int = 5
    memory_mb: int = 1024
    file_size_mb: int = 16
    max_processes: int = 16
    max_open_files: int = 64
    disk_mb: int = 64
    max_output_bytes: int = 1 << 20
    env_allow: Optional[list[str]] = None
    require_process_cap: bool = True

    def __post_init__(self) -> None:
        key = "CodeTestReward init_args.sandbox"
        check(self.timeout_seconds > 0, f"{key}.timeout_seconds={self.timeout_seconds}; use a number of seconds > 0.")
        for name in ("cpu_seconds", "memory_mb", "file_size_mb", "max_processes", "max_open_files", "disk_mb",
                     "max_output_bytes"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{key}.{name}={value!r}; use a whole number >= 1.")
        check(self.memory_mb >= 64, f"{key}.memory_mb={self.memory_mb}; Python itself needs ~30 MiB, use >= 64.")
        check(self.max_processes >= 2, f"{key}.max_processes={self.max_processes}; the harness needs 2, use >= 2.")
        check(self.max_open_files >= 16, f"{key}.max_open_files={self.max_open_files}; Python needs ~10, use >= 16.")

    def run(self, program: str, mode: Literal["asserts", "stdio"], tests: list[dict] = (), stdin: str = "") -> "Run":
        """Run ``program``; in ``asserts`` mode then each test, in ``stdio`` mode with ``stdin`` as its input.

        A test is ``{"kind": "values", "exprs": [...]}`` (the run returns each expression's value
        as plain data, for the caller to judge) or ``{"kind": "statement", "source": ...}`` (the
        run says whether it raised).

        Raises:
            ConfigError: Nothing caps the processes here and ``require_process_cap`` is on.
        """
        _sweep_once()
        nonce = secrets.token_hex(16)
        workdir = tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-")
        cgroup = f"{_PREFIX}{os.getpid()}-{nonce[:12]}"
        job = {"program": program, "mode": mode, "tests": list(tests), "nonce": nonce, "cgroup": cgroup,
               "limits": {name: getattr(self, name) for name in
                          ("cpu_seconds", "memory_mb", "file_size_mb", "max_processes", "max_open_files",
                           "disk_mb", "require_process_cap")}}
        try:
            Path(workdir, ".job.json").write_text(json.dumps(job), encoding="utf-8")
            run = self._run(workdir, nonce, stdin.encode())
        finally:
            _remove_cgroup(cgroup)
            shutil.rmtree(workdir, onerror=_force_remove)
        if self.require_process_cap and run.isolation.get("process_cap") is False:
            raise ConfigError(
                "CodeTestReward init_args.sandbox: the trainer runs as root with no writable pids cgroup, so nothing"
                " caps the processes a program may start (RLIMIT_NPROC does not bind root); run as a normal user, or"
                " give the trainer a pids cgroup, or set sandbox.require_process_cap: false to run without a cap.")
        return run

    def _run(self, workdir: str, nonce: str, stdin: bytes) -> "Run":
        report_r, report_w = os.pipe()
        started = time.monotonic()
        deadline = started + self.timeout_seconds
        with tempfile.TemporaryFile() as given:  # a file, not a pipe: any size, and nothing to block on
            given.write(stdin)
            given.seek(0)
            try:
                child = subprocess.Popen(
                    [sys.executable, "-I", "-S", str(_CHILD), str(report_w), str(os.getpid())],
                    cwd=workdir, env=self._environment(workdir), stdin=given, stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE, pass_fds=(report_w,), start_new_session=True)
            finally:
                os.close(report_w)
        out, err = child.stdout.fileno(), child.stderr.fileno()
        try:
            streams = _Streams({report_r: _MAX_REPORT_BYTES, out: self.max_output_bytes, err: self.max_output_bytes})
            timed_out = not streams.read_until(deadline) or not (streams.overflowed or _exited(child, deadline))
        finally:
            _kill_group(child)
            os.close(report_r)
            child.stdout.close(), child.stderr.close()
        records = _parse_report(streams.data[report_r], nonce)
        tampered = records is None or report_r in streams.overflowed
        return Run(records=[] if tampered else records, exit_code=None if timed_out else child.returncode,
                   timed_out=timed_out, overflowed=bool(streams.overflowed - {report_r}),
                   stdout=streams.data[out].decode("utf-8", "replace"),
                   stderr=streams.data[err].decode("utf-8", "replace"),
                   tampered=tampered, seconds=time.monotonic() - started)

    def _environment(self, workdir: str) -> dict[str, str]:
        allow = DEFAULT_ENV_ALLOW if self.env_allow is None else self.env_allow
        env = {key: os.environ[key] for key in allow if key in os.environ}
        return {**env, "HOME": workdir, "TMPDIR": workdir}


@dataclass
class Run:
    """What one run did.

    Attributes:
        records: The harness's lines that carried the nonce, in order: isolation, ``loaded`` (the
            program ran to its end), then one per test; ``[]`` when the report was tampered with.
        exit_code: The child's exit status; ``None`` if it was killed at the time limit.
        timed_out: It ran past ``timeout_seconds``.
        overflowed: stdout or stderr went past ``max_output_bytes``.
        stdout: What it printed (at most ``max_output_bytes``).
        stderr: Its error output (at most ``max_output_bytes``).
        tampered: Something else was written to the result pipe: the run scores nothing.
        seconds: Wall-clock time of the run.
    """

    records: list[dict]
    exit_code: Optional[int]
    timed_out: bool
    overflowed: bool
    stdout: str
    stderr: str
    tampered: bool
    seconds: float
    isolation: dict = field(init=False)

    def __post_init__(self) -> None:
        first = self.records[0] if self.records else {}
        self.isolation = {k: v for k, v in first.items() if k != "kind"} if first.get("kind") == "isolation" else {}

    @property
    def loaded(self) -> bool:
        """The program ran to its end (asserts mode): its tests ran after it."""
        return len(self.records) > 1 and self.records[1] == {"kind": "loaded"}

    def tests(self) -> list[dict]:
        """The per-test records, in order; a run that did not load has none."""
        return self.records[2:] if self.loaded else []


def probe() -> dict:
    """What a run is isolated by on this machine: ``{"user_namespace": True, ...}``."""
    return Sandbox(timeout_seconds=30).run("pass", "asserts").isolation


class _Streams:
    """Reads several pipes until they all close or a deadline, keeping at most a cap of each."""

    def __init__(self, caps: dict[int, int]) -> None:
        self.caps = caps
        self.data = {fd: b"" for fd in caps}
        self.overflowed: set[int] = set()

    def read_until(self, deadline: float) -> bool:
        """False if the deadline passed first; reading stops too when a pipe overflows."""
        open_fds = set(self.caps)
        while open_fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            ready, _, _ = select.select(list(open_fds), [], [], remaining)
            for fd in ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    open_fds.discard(fd)
                    continue
                self.data[fd] += chunk
                if len(self.data[fd]) > self.caps[fd]:
                    self.data[fd] = self.data[fd][: self.caps[fd]]
                    self.overflowed.add(fd)
                    return True  # enough: the caller kills it
        return True


def _parse_report(data: bytes, nonce: str) -> Optional[list[dict]]:
    """The nonce-tagged records in harness order, or ``None`` if anything else is in the report."""
    records = []
    for line in data.split(b"\n")[:-1] if data.endswith(b"\n") else data.split(b"\n"):
        tag, _, body = line.partition(b"\t")
        if tag != nonce.encode():
            return None
        try:
            records.append(json.loads(body))
        except ValueError:
            return None
    kinds = [r.get("kind") if isinstance(r, dict) else None for r in records]
    expected = ["isolation", "loaded"] + ["test"] * max(0, len(records) - 2)
    if kinds != expected[: len(kinds)]:
        return None
    if any(r.get("index") != i for i, r in enumerate(records[2:])):
        return None
    return records


def _exited(child: subprocess.Popen, deadline: float) -> bool:
    """Wait until the child exits or the deadline passes, without reaping it (its group id stays reserved)."""
    while time.monotonic() < deadline:
        if os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return True
        time.sleep(0.005)
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

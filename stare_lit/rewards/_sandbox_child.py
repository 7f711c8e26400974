"""The sandbox's child side: confine this process, then run one untrusted program. Stdlib only.

Started by stare_lit.rewards.sandbox as ``python -I -S _sandbox_child.py RESULT_FD PARENT_PID`` with a
scrubbed environment, in a fresh temporary directory (its working directory) that holds the job
file ``.job.json``. This file is trusted code; everything after ``_run_job`` starts is not.

Two processes, because a PID namespace takes effect for the children of the process that makes
it: the *holder* (this process) joins pids and memory cgroups (as root), enters new user, mount, network
and PID namespaces, mounts a small tmpfs on the working directory and makes every other mount
read-only, and forks *init*,
PID 1 of the new namespace, which mounts its own /proc (the parent's processes and their
environments vanish) and forks the *runner*. When the runner ends, init ends and the kernel kills
everything the program started; when the holder dies (the parent kills it on a time-out), init
and the runner die too (``PR_SET_PDEATHSIG``).

The runner sets the resource limits, drops every capability, and runs the job. What it reports goes to
RESULT_FD as lines ``NONCE<TAB>JSON``; the parent trusts only what it can check (see
stare_lit.rewards.sandbox).
"""

import builtins
import ctypes
import json
import os
import resource
import signal
import sys
import traceback

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME, MS_STRICTATIME = 1024, 2048, 1 << 21, 1 << 24
_MOUNT_FLAGS = {"nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
                "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME, "strictatime": MS_STRICTATIME}
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 24, 38
_LIBC = ctypes.CDLL(None, use_errno=True)

# The builtins as they are before the program runs: the tests see these, whatever it patches.
_PRISTINE = dict(builtins.__dict__)
# ...and the harness's own references to the ones it calls, so patching builtins cannot reach it.
_exec, _eval, _compile, _repr, _type, _len, _all = exec, eval, compile, repr, type, len, all
_PLAIN = (int, float, complex, str, bytes, bool, type(None))


def main() -> None:
    result_fd, parent = int(sys.argv[1]), int(sys.argv[2])
    with open(".job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.unlink(".job.json")  # the program must not read the nonce or the tests from disk
    _die_with(parent)
    isolation = _join_cgroups(job["cgroup"], job["limits"])
    # RLIMIT_NPROC binds everyone but root; root needs the pids cgroup.
    isolation["process_cap"] = isolation["pids_cgroup"] or os.geteuid() != 0
    if job["limits"]["require_process_cap"] and not isolation["process_cap"]:
        _report(result_fd, job["nonce"], {"kind": "isolation", **isolation})
        os._exit(71)  # nothing would stop a fork bomb: the program does not run
    isolation.update(_enter_namespaces(os.getcwd(), job["limits"]["disk_mb"]))
    init = os.fork()
    if init == 0:
        _init(job, result_fd, isolation)
    os.close(result_fd)  # only the runner writes from here on
    _, status = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _init(job: dict, result_fd: int, isolation: dict) -> None:
    """PID 1 of the new namespace: reaps, and ends with the runner, which takes every other process with it.

    The runner is not PID 1 itself, because PID 1 ignores the signals it has no handler for,
    SIGXCPU from RLIMIT_CPU among them.
    """
    _die_with(os.getppid())
    if isolation["pid_namespace"]:
        isolation["private_proc"] = _mount(b"proc", b"/proc", b"proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _report(result_fd, job["nonce"], {"kind": "isolation", "private_proc": False, **isolation})
    init = os.getpid()
    runner = os.fork()
    if runner == 0:
        _runner(job, result_fd, init, isolation["user_namespace"])
    os.close(result_fd)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == runner:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _runner(job: dict, result_fd: int, parent: int, per_namespace: bool) -> None:
    """Confine itself the rest of the way, then run the job; never returns."""
    try:
        _die_with(parent)
        _limit(job["limits"], per_namespace)
        _drop_capabilities()
        code = _run_job(job, result_fd)
    except BaseException:  # the program's own errors are caught in _run_job; this is the harness failing
        code = 70
    try:
        sys.stdout.flush()  # os._exit skips it; in stdio mode the output is the answer
    except BaseException:
        pass
    os._exit(code)


def _die_with(parent: int) -> None:
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody will read the result
        os._exit(1)


def cgroup_dirs(name: str) -> dict[str, str]:
    """Where this run's cgroups go, by controller: below the caller's own (v1 pids and memory, or v2).

    Below, not beside: a memory limit the trainer's container sets still covers the run.
    """
    dirs = {}
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as f:
            lines = [line.rstrip("\n").split(":", 2) for line in f]
    except OSError:
        return dirs
    for _, controllers, path in lines:
        for controller in controllers.split(","):
            if controller in ("pids", "memory"):
                dirs[controller] = os.path.join("/sys/fs/cgroup", controller, path.lstrip("/"), name)
        if controllers == "" and os.path.exists("/sys/fs/cgroup/cgroup.controllers"):  # v2 mounted at the top
            dirs["unified"] = os.path.join("/sys/fs/cgroup", path.lstrip("/"), name)
    return dirs


def _join_cgroups(name: str, limits: dict) -> dict:
    """As root, RLIMIT_NPROC is not enforced: cgroups cap the processes (and their memory, together)."""
    joined = {"pids_cgroup": False, "memory_cgroup": False}
    if os.geteuid() != 0:
        return joined
    memory = str(limits["memory_mb"] << 20)
    settings = {"pids": {"pids.max": str(limits["max_processes"])},
                "memory": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory},
                "unified": {"pids.max": str(limits["max_processes"]), "memory.max": memory, "memory.swap.max": "0"}}
    for controller, path in cgroup_dirs(name).items():
        try:
            os.mkdir(path)
        except OSError:
            continue
        done = {key: _write(os.path.join(path, key), value) for key, value in settings[controller].items()}
        if _write(os.path.join(path, "cgroup.procs"), str(os.getpid())):
            joined["pids_cgroup"] |= done.get("pids.max", False)
            joined["memory_cgroup"] |= done.get("memory.limit_in_bytes", False) or done.get("memory.max", False)
    return joined


def _write(path: str, value: str) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


def _enter_namespaces(workdir: str, disk_mb: int) -> dict:
    """New user, mount, network and PID namespaces where the kernel allows; what worked, by name."""
    flags = CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if _LIBC.unshare(flags) == 0:
        return {"user_namespace": True, "network_namespace": True, "pid_namespace": True,
                **_read_only_except(workdir, disk_mb)}
    # No user namespaces (a hardened kernel): the network alone still works for root.
    alone = _LIBC.unshare(CLONE_NEWNET) == 0
    return {"user_namespace": False, "network_namespace": alone, "pid_namespace": False,
            "read_only_filesystem": False, "private_disk": False}


def _read_only_except(workdir: str, disk_mb: int) -> dict:
    """Every mount read-only; ``workdir`` a fresh tmpfs of ``disk_mb`` (a bind mount where tmpfs fails)."""
    if not _mount(None, b"/", None, MS_REC | MS_PRIVATE):  # nothing done here reaches the parent's mounts
        return {"read_only_filesystem": False, "private_disk": False}
    target = workdir.encode()
    private = _mount(b"tmpfs", target, b"tmpfs", MS_NOSUID | MS_NODEV,
                     f"size={disk_mb}m,nr_inodes=4096,mode=700".encode())
    if not private and not _mount(target, target, None, MS_BIND | MS_REC):
        return {"read_only_filesystem": False, "private_disk": False}
    os.chdir(workdir)  # into the new mount; the old directory is under it
    ok = True
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounts = [line.split() for line in f]
    for fields in mounts:
        point = fields[4].encode().decode("unicode_escape").encode()
        if point == target:
            continue
        # Flags the mount already has are locked in a user namespace: a remount must keep them.
        kept = sum(_MOUNT_FLAGS.get(option, 0) for option in fields[5].split(","))
        ok &= _mount(None, point, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    return {"read_only_filesystem": ok, "private_disk": private}


def _mount(source, target, fstype, flags: int, data=None) -> bool:
    return _LIBC.mount(source, target, fstype, ctypes.c_ulong(flags), data) == 0


def _limit(limits: dict, per_namespace: bool) -> None:
    mib = 1 << 20
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    # RLIMIT_NPROC counts the user's processes in this user namespace only; outside one it counts
    # all of the user's processes and threads, the trainer's included, so those are added.
    nproc = limits["max_processes"] + (0 if per_namespace else _tasks_of(os.getuid()))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _tasks_of(uid: int) -> int:
    count = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


def _drop_capabilities() -> None:
    """No capabilities now or after an exec: the program cannot undo the mounts or the limits."""
    for cap in range(64):
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails past the last capability: harmless
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    _LIBC.capset(header, data)
    _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)


def _run_job(job: dict, result_fd: int) -> int:
    """Run the program, then (asserts mode) each test; the exit status is the program's."""
    nonce, write, dumps, exc_info = job["nonce"], os.write, json.dumps, sys.exc_info
    main_module = _type(sys)("__main__")  # `import __main__` gives the program its own module, not this one
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    namespace["__builtins__"] = builtins
    try:
        _exec(_compile(job["program"], "<program>", "exec"), namespace)
    except SystemExit as stop:  # an exit while loading: the tests never run
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        traceback.print_exc()  # into Run.stderr, for whoever reads it
        return 1
    if job["mode"] == "stdio":
        return 0
    write(result_fd, f"{nonce}\t{dumps({'kind': 'loaded'})}\n".encode())
    scope = _test_scope(namespace)
    for i, test in enumerate(job["tests"]):
        record = {"kind": "test", "index": i, "passed": False}
        try:
            if test["kind"] == "values":  # judged outside, on plain data
                record["values"] = [_plain_repr(_eval(expr, dict(scope))) for expr in test["exprs"]]
                record["passed"] = None not in record["values"]
            else:
                _exec(test["source"], dict(scope))
                record["passed"] = True
        except BaseException:
            exc_info()  # whatever the program raised (SystemExit too) fails this test only
        write(result_fd, f"{nonce}\t{dumps(record)}\n".encode())
    return 0


def _test_scope(namespace: dict) -> dict:
    """The program's names for the tests, with the builtins as they were before it ran.

    A program that defines ``len`` or patches ``builtins.isinstance`` changes what its own code
    sees, never what a test sees.
    """
    scope = {k: v for k, v in namespace.items() if k not in _PRISTINE}
    scope["__builtins__"] = dict(_PRISTINE)
    return scope


def _plain_repr(value, _depth: int = 0):
    """``repr`` of plain data (numbers, text, None and lists/tuples/sets/dicts of them), else None.

    Exact types only: an object whose ``__eq__`` says yes to anything is not plain data.
    """
    if _depth > 20 or not _is_plain(value, _depth):
        return None
    text = _repr(value)
    return text if _len(text) <= 100_000 else None


def _is_plain(value, depth: int) -> bool:
    kind = _type(value)
    if kind in _PLAIN:
        return True
    if depth > 20:
        return False
    if kind in (list, tuple, set, frozenset):
        return _all(_is_plain(item, depth + 1) for item in value)
    if kind is dict:
        return _all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    return False


def _report(fd: int, nonce: str, record: dict) -> None:
    os.write(fd, f"{nonce}\t{json.dumps(record)}\n".encode())


if __name__ == "__main__":
    main()

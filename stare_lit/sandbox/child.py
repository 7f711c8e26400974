"""The sandbox's child side: confine, then run one untrusted program and answer the judge. Stdlib only.

Started by stare_lit.sandbox.sandbox as ``python -I -S child.py RESULT_FD REQUEST_FD PARENT_PID``
with a scrubbed environment, in a fresh temporary directory that holds the job file ``.job.json``.
Everything here is trusted until the program starts; from then on nothing in this process is: the
judge (stare_lit.sandbox.judge) believes only plain values, and the parent only a well-formed report.

**Isolation ``namespaces``** (the default), four processes, because a user namespace's uid map must
be written from outside it and a PID namespace takes effect for the children of its maker:

- the *holder* (this process, the trainer's user) joins a pids and a memory cgroup (as root) and
  forks the *unsharer*, then writes the unsharer's uid and gid maps: one uid inside, 1000, mapped
  to 65534 (nobody) when the trainer is root, to the trainer's own uid otherwise;
- the *unsharer* enters new user, mount, PID, network, IPC, UTS and cgroup namespaces, opens the
  paths it will show the program (as the trainer's user, who can reach them), becomes uid 1000,
  forbids nested user namespaces, and forks *init*;
- *init*, PID 1 of the new namespace, builds a minimal root — a tmpfs holding read-only binds of
  the standard library, the interpreter, the shared libraries and ``/etc/ld.so.cache``, binds of
  ``/dev/null``, ``/dev/zero`` and ``/dev/urandom``, a fresh read-only ``/proc`` of this PID
  namespace (process directories only where the kernel can), and a private tmpfs ``/sandbox`` of
  ``disk_mb`` as the working directory — ``pivot_root``\\ s into it and drops the old root, makes
  ``/`` read-only, joins a new session keyring, and forks the *runner*;
- the *runner* sets the resource limits, drops every capability (no new privileges either), writes
  the isolation record and runs the job.

If any of this fails the run is refused (the isolation record says what failed and the parent
raises a ``ConfigError``); it never runs with less than it reports. When the runner ends, init ends
and the kernel kills everything in the namespace; when the holder dies, the rest die too
(``PR_SET_PDEATHSIG``, set again after each change of user, which clears it).

**Isolation ``limits_only``** (chosen in the config, for machines without user namespaces): the
runner drops to uid 65534 if the trainer is root, joins a new session keyring, sets the limits and
drops capabilities; no namespaces, so the program sees the machine as that user does.

The report, on RESULT_FD, one JSON line per record (stare_lit.sandbox.wire): the isolation
record; then, in ``asserts`` mode, ``loaded`` once the program has run, and one reply per request
read from REQUEST_FD (``{"id", "source", "names", "iterate"}``): ``value`` with the expression's
value as plain data, ``raised``, or ``unplain``.
"""

import builtins
import ctypes
import json
import os
import resource
import signal
import stat
import sys

if __name__ == "__main__":  # run by path under -I -S, where stare_lit cannot be imported: load the wire format
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # from beside this file, before anything is confined
    import wire
    del sys.path[0]
else:  # imported by the parent (for cgroup_dirs), which must not get a top-level `wire` module
    from stare_lit.sandbox import wire

CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x02000000, 0x04000000, 0x08000000
CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x10000000, 0x20000000, 0x40000000
_NAMESPACES = {"user": CLONE_NEWUSER, "mount": CLONE_NEWNS, "pid": CLONE_NEWPID, "network": CLONE_NEWNET,
               "ipc": CLONE_NEWIPC, "uts": CLONE_NEWUTS, "cgroup": CLONE_NEWCGROUP}
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = (
    1, 2, 4, 8, 32, 4096, 16384, 1 << 18)
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
MNT_DETACH = 2
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
KEYCTL_GET_KEYRING_ID, KEYCTL_JOIN_SESSION_KEYRING, KEY_SPEC_SESSION_KEYRING = 0, 1, -3
_SYSCALLS = {"x86_64": {"pivot_root": 155, "keyctl": 250}, "aarch64": {"pivot_root": 41, "keyctl": 219}}
_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.syscall.restype = ctypes.c_long

INSIDE_ID = 1000  # the program's uid and gid inside the namespace
NOBODY = 65534  # what they map to when the trainer is root
WORKDIR = "/sandbox"
# Shared libraries live here; a program that imports zlib or ctypes needs them (read-only).
_LIBRARY_DIRS = ("/lib", "/lib64", "/lib32", "/libx32", "/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32",
                 "/usr/local/lib", "/etc/ld.so.cache")
_DEVICES = ("/dev/null", "/dev/zero", "/dev/urandom")

# The builtins as they are before the program runs: the program's expressions see these.
_PRISTINE = dict(builtins.__dict__)


class _Refused(Exception):
    """A step of the confinement failed: the program does not run, and the parent is told which step."""


def main() -> None:
    result_fd, request_fd, parent = (int(arg) for arg in sys.argv[1:4])
    with open(".job.json", encoding="utf-8") as f:
        job = json.load(f)
    os.unlink(".job.json")  # the program must not read it from disk
    _die_with(parent)
    isolation = {"isolation": job["isolation"], **_join_cgroups(job["cgroup"], job["limits"])}
    try:
        if job["isolation"] == "namespaces":
            _holder(job, result_fd, request_fd, isolation)
        else:
            _limits_only(job, result_fd, request_fd, isolation)
    except _Refused as why:
        _refuse(result_fd, isolation, str(why))


def _refuse(result_fd: int, isolation: dict, why: str) -> None:
    _report(result_fd, {"kind": "isolation", "isolation": isolation, "refused": why})
    os._exit(71)


# ---------------------------------------------------------------------------------------- holder
def _holder(job: dict, result_fd: int, request_fd: int, isolation: dict) -> None:
    """Fork the unsharer and write its uid and gid maps from out here; wait for it."""
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    me = os.getpid()
    unsharer = os.fork()
    if unsharer == 0:
        os.close(ready_r), os.close(go_w)
        _unsharer(job, result_fd, request_fd, isolation, ready_w, go_r, me, os.geteuid() == 0)
    os.close(ready_w), os.close(go_r), os.close(request_fd)
    if os.read(ready_r, 1) == b"1":  # it has unshared (else it reported why and exits)
        try:
            outside = _write_maps(unsharer)
        except OSError as error:
            os.write(go_w, b"-")
            os.waitpid(unsharer, 0)
            _refuse(result_fd, isolation, f"writing the user namespace's uid map: {error.strerror}")
        os.write(go_w, f"{outside}\n".encode())  # the uid it runs as, outside
    os.close(result_fd)
    _, status = os.waitpid(unsharer, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _write_maps(pid: int) -> int:
    """Map uid and gid 1000 inside to nobody (root) or to the trainer's own ids; return the uid outside."""
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0:  # an unprivileged writer may map only itself, and must give up setgroups first
        _write(f"/proc/{pid}/setgroups", "deny", strict=True)
    for outside_uid, outside_gid in ([(NOBODY, NOBODY)] if uid == 0 else []) + [(uid, gid)]:
        try:
            _write(f"/proc/{pid}/uid_map", f"{INSIDE_ID} {outside_uid} 1", strict=True)
            _write(f"/proc/{pid}/gid_map", f"{INSIDE_ID} {outside_gid} 1", strict=True)
            return outside_uid
        except OSError:
            if outside_uid == uid:  # root whose own user namespace has no nobody falls back to itself
                raise
    raise AssertionError("unreachable")


# ---------------------------------------------------------------------------------------- unsharer
def _unsharer(job, result_fd, request_fd, isolation, ready_w, go_r, holder, trainer_is_root: bool) -> None:
    try:
        _die_with(holder)
        flags = sum(_NAMESPACES.values())
        if _LIBC.unshare(flags) != 0:
            os.write(ready_w, b"0")
            raise _Refused(f"unshare({'|'.join(_NAMESPACES)} namespaces): {_errno()}")
        os.write(ready_w, b"1")
        outside = os.read(go_r, 32)
        os.close(ready_w), os.close(go_r)
        if not outside.endswith(b"\n"):
            os._exit(71)  # the holder reports why
        isolation.update({f"{name}_namespace": True for name in _NAMESPACES}, uid_inside=INSIDE_ID,
                         uid_outside=int(outside))
        sources, links = _open_sources(job["libpython"]), _links()
        _become_inside_user(drop_groups=trainer_is_root)
        _die_with(holder)  # a change of user cleared it
        if not _write("/proc/sys/user/max_user_namespaces", "0"):  # this namespace's own limit, for its children
            raise _Refused("forbidding nested user namespaces (user.max_user_namespaces in the new namespace)")
        isolation["nested_user_namespaces"] = False
        _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)  # the program may not read this process's memory or fds
        init = os.fork()
        if init == 0:
            _init(job, result_fd, request_fd, isolation, sources, links, parent=0)  # its parent is outside its PID ns
    except _Refused as why:
        _refuse(result_fd, isolation, str(why))
    os.close(result_fd), os.close(request_fd)
    for fd in sources.values():
        os.close(fd)
    _, status = os.waitpid(init, 0)
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _open_sources(libpython: str) -> dict[str, int]:
    """``O_PATH`` descriptors of what the minimal root shows, by the path it shows them at.

    Opened while still the trainer's user: bind mounts are made later from ``/proc/self/fd/N``, as
    uid 1000, who may not be able to walk to them (a Python under ``/root``).
    """
    wanted = [p for p in sys.path if p and os.path.exists(p)]  # -I -S: the standard library only
    wanted.append(os.path.realpath(sys.executable))  # a program may start the interpreter again
    wanted += [libpython] if libpython else []  # ...which needs libpython (the parent found it)
    wanted += [p for p in _LIBRARY_DIRS if os.path.exists(p) and not os.path.islink(p)]  # links are copied
    sources = {}
    for path in sorted(set(wanted)):
        if any(path.startswith(outer.rstrip("/") + "/") for outer in sources):
            continue  # inside a directory already shown
        sources[path] = _open_path(path)
    for device in _DEVICES:
        sources[device] = _open_path(device)
    return sources


def _links() -> dict[str, str]:
    """Symbolic links the minimal root copies: ``/lib -> usr/lib`` (merged /usr), and a venv's python to the real one."""
    links = {path: os.readlink(path) for path in _LIBRARY_DIRS if os.path.islink(path)}
    if os.path.islink(sys.executable):
        links[sys.executable] = os.path.realpath(sys.executable)  # resolved here: uid 1000 may not walk to it
    return links


def _open_path(path: str) -> int:
    try:
        return os.open(path, os.O_PATH | os.O_CLOEXEC)
    except OSError as error:
        raise _Refused(f"opening {path} for the sandbox's root: {error.strerror}") from None


def _become_inside_user(drop_groups: bool) -> None:
    """uid and gid 1000 (mapped); capabilities in the namespace stay until the runner drops them.

    Root's holder leaves setgroups allowed, so its supplementary groups (group root among them) can
    be dropped; a normal user's must deny it to write its own map, and keeps its groups.
    """
    try:
        if drop_groups:
            os.setgroups([])  # root's supplementary groups would keep group access to its files
        os.setresgid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
        os.setresuid(INSIDE_ID, INSIDE_ID, INSIDE_ID)
    except OSError as error:
        raise _Refused(f"becoming uid {INSIDE_ID} in the user namespace: {error.strerror}") from None


# ---------------------------------------------------------------------------------------- init
def _init(job, result_fd, request_fd, isolation, sources, links, parent) -> None:
    """PID 1 of the new namespace: build the root, fork the runner, reap until it ends.

    The runner is not PID 1 itself, because PID 1 ignores the signals it has no handler for,
    SIGXCPU from RLIMIT_CPU among them.
    """
    try:
        _die_with(parent)
        isolation.update(_minimal_root(sources, links, job["limits"]))
        isolation["keyring"] = _new_session_keyring()
    except _Refused as why:
        _refuse(result_fd, isolation, str(why))
    _LIBC.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    me = os.getpid()
    runner = os.fork()
    if runner == 0:
        _runner(job, result_fd, request_fd, isolation, me, extra_tasks=2)  # the unsharer and init share its uid
    os.close(result_fd), os.close(request_fd)
    while True:
        pid, status = os.waitpid(-1, 0)
        if pid == runner:
            os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _minimal_root(sources: dict[str, int], links: dict[str, str], limits: dict) -> dict:
    """A new root: read-only binds of ``sources``, the devices, /proc, a private /sandbox; then pivot into it."""
    if not _mount(None, "/", None, MS_REC | MS_PRIVATE):  # nothing done here reaches the trainer's mounts
        raise _Refused(f"making the mounts private: {_errno()}")
    root = os.getcwd()  # the run's directory on the host: the new root is mounted over it
    _mount_or_refuse("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,nr_inodes=4096,mode=755")
    # A project or venv under /tmp (a CI checkout, say) puts shown paths there: /tmp is then a tmpfs of its
    # own, as small as the run's directory, with those paths bound into it; else a link to the directory.
    tmp_shown = any(p.startswith("/tmp/") for p in [*sources, *links])
    if tmp_shown:
        os.mkdir(root + "/tmp", 0o755)
        _mount_or_refuse("tmpfs", root + "/tmp", "tmpfs", MS_NOSUID | MS_NODEV,
                         f"size={limits['disk_mb']}m,nr_inodes={limits['max_files']},mode=1777")
    for path, fd in sources.items():
        _bind(root, path, fd, device=path in _DEVICES)
        os.close(fd)
    for path, target in links.items():
        if not os.path.lexists(root + path):
            os.makedirs(os.path.dirname(root + path), mode=0o755, exist_ok=True)
            os.symlink(target, root + path)
    proc = _mount_proc(root)
    os.mkdir(root + WORKDIR, 0o755)
    _mount_or_refuse("tmpfs", root + WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV,
                     f"size={limits['disk_mb']}m,nr_inodes={limits['max_files']},mode=700")
    if not tmp_shown:
        os.symlink(WORKDIR.lstrip("/"), root + "/tmp")  # for programs that write to /tmp
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, f"{root}/dev/{name}")
    shown = [p for p in sys.path if p and os.path.exists(p)]
    _pivot_into(root)
    missing = [p for p in shown if not os.path.exists(p)]
    if missing:
        raise _Refused(f"the standard library is not visible inside the sandbox ({missing[0]})")
    return {"minimal_root": True, "proc": proc, "disk_mb": limits["disk_mb"]}


def _bind(root: str, path: str, fd: int, device: bool) -> None:
    """Show ``path`` (open as ``fd``) at the same place under ``root``: read-only, or a usable device node."""
    target = root + path
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    if stat.S_ISDIR(os.fstat(fd).st_mode):
        os.mkdir(target, 0o755)
    else:
        os.close(os.open(target, os.O_CREAT | os.O_WRONLY, 0o644))
    _mount_or_refuse(f"/proc/self/fd/{fd}", target, None, MS_BIND)
    # Flags the source mount has are locked in a user namespace: a remount must keep them.
    flags = os.statvfs(target).f_flag
    kept = (flags & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)) | (
        MS_RELATIME if flags & 4096 else 0)
    extra = MS_NOSUID | MS_NOEXEC if device else MS_RDONLY | MS_NOSUID | MS_NODEV
    _mount_or_refuse(None, target, None, MS_REMOUNT | MS_BIND | extra | kept, what=f"read-only bind of {path}")


def _mount_proc(root: str) -> str:
    """A /proc of this PID namespace, read-only: process directories only where the kernel can, else all; or none.

    None where the kernel refuses a new proc (a container that masks parts of its own /proc): the
    program then has no /proc, which is also no writable /proc/sys.
    """
    os.mkdir(root + "/proc", 0o555)
    flags = MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _mount("proc", root + "/proc", "proc", flags, "subset=pid"):
        return "pids_only"
    if _mount("proc", root + "/proc", "proc", flags):
        return "read_only"
    return "none"


def _pivot_into(root: str) -> None:
    os.chdir(root)
    if _LIBC.syscall(_syscall("pivot_root"), b".", b".") != 0:  # the old root ends up stacked under the new one
        raise _Refused(f"pivot_root into the sandbox's root: {_errno()}")
    if _LIBC.umount2(b".", MNT_DETACH) != 0:
        raise _Refused(f"detaching the old root: {_errno()}")
    os.chdir("/")
    _mount_or_refuse(None, "/", None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV,
                     what="making / read-only")
    os.chdir(WORKDIR)


def _new_session_keyring() -> str:
    """A new anonymous session keyring: the trainer's keys (its session's) are out of reach.

    ``"unavailable"`` where the kernel or a seccomp filter refuses keyctl to this process (as
    Docker's default profile does): the program, under the same filter, cannot reach any keyring.
    """
    keyctl = _syscall("keyctl")
    if _LIBC.syscall(keyctl, KEYCTL_JOIN_SESSION_KEYRING, None) >= 0:
        return "new"
    joined = ctypes.get_errno()
    if _LIBC.syscall(keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0) < 0 and ctypes.get_errno() == joined:
        return "unavailable"
    raise _Refused(f"joining a new session keyring: {os.strerror(joined)}")


def _syscall(name: str) -> int:
    machine = os.uname().machine
    numbers = _SYSCALLS.get(machine)
    if numbers is None:
        raise _Refused(f"no syscall numbers for {machine} (known: {', '.join(_SYSCALLS)})")
    return numbers[name]


# ---------------------------------------------------------------------------------------- limits only
def _limits_only(job: dict, result_fd: int, request_fd: int, isolation: dict) -> None:
    """No namespaces: drop root to nobody, a new session keyring, the limits."""
    if os.geteuid() == 0:
        os.chown(".", NOBODY, NOBODY)  # its directory stays writable for it
        try:
            os.setgroups([])
            os.setresgid(NOBODY, NOBODY, NOBODY)
            os.setresuid(NOBODY, NOBODY, NOBODY)
        except OSError as error:
            raise _Refused(f"dropping root to uid {NOBODY}: {error.strerror}") from None
        _die_with(int(sys.argv[3]))
    isolation.update(uid_inside=os.geteuid(), uid_outside=os.geteuid(), keyring=_new_session_keyring())
    _runner(job, result_fd, request_fd, isolation, os.getppid(), extra_tasks=_tasks_of(os.getuid()))


def _tasks_of(uid: int) -> int:
    """Outside a user namespace RLIMIT_NPROC counts all of the user's tasks: those already running are added."""
    count = 0
    for pid in os.listdir("/proc"):
        try:
            if pid.isdigit() and os.stat(f"/proc/{pid}").st_uid == uid:
                count += len(os.listdir(f"/proc/{pid}/task"))
        except OSError:
            pass
    return count


# ---------------------------------------------------------------------------------------- runner
def _runner(job, result_fd, request_fd, isolation, parent, extra_tasks: int) -> None:
    """Confine itself the rest of the way, report, then run the job; never returns."""
    try:
        _die_with(parent)
        _limit(job["limits"], extra_tasks)
        _drop_capabilities()
    except (_Refused, OSError) as why:
        _refuse(result_fd, isolation, f"setting the limits: {why}")
    os.environ.update(HOME=os.getcwd(), TMPDIR=os.getcwd())
    isolation["process_cap"] = os.getuid() != 0  # RLIMIT_NPROC binds every user but root
    _report(result_fd, {"kind": "isolation", "isolation": isolation})
    try:
        code = _run_job(job, result_fd, request_fd)
    except BaseException:  # the program's own errors are caught in _run_job; this is the harness failing
        code = 70
    try:
        sys.stdout.flush()  # os._exit skips it; in stdio mode the output is the answer
    except BaseException:
        pass
    os._exit(code)


def _limit(limits: dict, extra_tasks: int) -> None:
    mib = 1 << 20
    cpu = limits["cpu_seconds"]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))  # SIGXCPU, then SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * mib,) * 2)
    resource.setrlimit(resource.RLIMIT_NOFILE, (limits["max_open_files"],) * 2)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    nproc = limits["max_processes"] + extra_tasks
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def _drop_capabilities() -> None:
    """No capabilities now or after an exec: the program cannot undo the mounts or the limits."""
    for cap in range(64):
        _LIBC.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)  # fails past the last capability: harmless
    header = (ctypes.c_uint32 * 2)(0x20080522, 0)
    data = (ctypes.c_uint32 * 6)()
    if _LIBC.capset(header, data) != 0 or _LIBC.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise _Refused(f"dropping capabilities: {_errno()}")


def _run_job(job: dict, result_fd: int, request_fd: int) -> int:
    """Run the program, then (asserts mode) answer the judge's requests; the exit status is the program's."""
    os.set_inheritable(result_fd, False), os.set_inheritable(request_fd, False)
    main_module = type(sys)("__main__")  # `import __main__` gives the program its own module, not this one
    sys.modules["__main__"] = main_module
    namespace = main_module.__dict__
    namespace["__builtins__"] = builtins
    try:
        exec(compile(job["program"], "<program>", "exec"), namespace)
    except SystemExit as stop:  # an exit while loading: no request is answered
        return stop.code if isinstance(stop.code, int) else 1
    except BaseException:
        import traceback  # noqa: PLC0415  (only a program that fails to load needs it)

        traceback.print_exc()  # into Run.stderr, for whoever reads it
        return 1
    if job["mode"] == "stdio":
        return 0
    _report(result_fd, {"kind": "loaded"})
    scope = {k: v for k, v in namespace.items() if k not in _PRISTINE}  # a program's own `len` is not the test's
    scope["__builtins__"] = dict(_PRISTINE)
    with os.fdopen(request_fd, "rb") as requests:
        for line in requests:
            _write_all(result_fd, _answer(json.loads(line), scope))
    return 0


def _answer(request: dict, scope: dict) -> bytes:
    """Evaluate one program expression: its value as plain data, or only that it raised or was not plain."""
    try:
        names = {name: wire.decode(encoded) for name, encoded in request["names"].items()}
        value = eval(compile(request["source"], "<test>", "eval"), {**scope, **names})
        if request["iterate"]:  # the judge only iterates it
            value = list(value)
        line = wire.dumps({"kind": "value", "id": request["id"], "value": wire.encode(value)})
        if len(line) > wire.MAX_LINE_BYTES:
            raise wire.NotPlain("too large")
        return line
    except wire.NotPlain:
        return wire.dumps({"kind": "unplain", "id": request["id"]})
    except BaseException:  # whatever the program raised (SystemExit too) answers this request only
        return wire.dumps({"kind": "raised", "id": request["id"]})


# ---------------------------------------------------------------------------------------- helpers
def _report(fd: int, record: dict) -> None:
    _write_all(fd, wire.dumps(record))


def _write_all(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def _die_with(parent: int) -> None:
    _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before the line above: nobody will read the result
        os._exit(1)


def _mount(source, target, fstype, flags: int, data=None) -> bool:
    encode = (lambda s: s if s is None else s.encode())
    return _LIBC.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) == 0


def _mount_or_refuse(source, target, fstype, flags, data=None, what=None) -> None:
    if not _mount(source, target, fstype, flags, data):
        raise _Refused(f"{what or 'mounting ' + (fstype or 'a bind') + ' on ' + target}: {_errno()}")


def _errno() -> str:
    return os.strerror(ctypes.get_errno())


def _write(path: str, value: str, strict: bool = False) -> bool:
    try:
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        if strict:
            raise
        return False


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
    """As root, put the run in a pids and a memory cgroup: its processes, and their memory together, are capped."""
    joined = {"pids_cgroup": False, "memory_cgroup": False}
    if os.geteuid() != 0:
        return joined
    memory = str(limits["memory_mb"] << 20)
    settings = {"pids": {"pids.max": str(limits["max_processes"] + 3)},  # + holder, unsharer and init
                "memory": {"memory.limit_in_bytes": memory, "memory.memsw.limit_in_bytes": memory},
                "unified": {"pids.max": str(limits["max_processes"] + 3), "memory.max": memory,
                            "memory.swap.max": "0"}}
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


if __name__ == "__main__":
    main()

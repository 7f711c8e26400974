"""Run a command as uid 65534 (nobody), from root, with the paths it needs reachable. A test helper, stdlib only.

    python tests/sandbox/_as_nobody.py PATH... -- COMMAND...

The sandbox has to be tested as a normal user too, and this machine (like CI) runs as root. Dropping
to nobody is the easy part; the hard part is that the interpreter may live where nobody cannot
walk (pyenv under a 0700 ``/root``). So, in a private mount namespace of this process only, each
directory on the way to a PATH that nobody cannot search is covered by a 0755 tmpfs holding binds
of just the entries on the way; then the ids are dropped and COMMAND is executed. Nothing on the
host changes.
"""

import ctypes
import os
import sys

CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE = 0x00020000, 4096, 16384, 1 << 18
NOBODY = 65534
_LIBC = ctypes.CDLL(None, use_errno=True)


def _mount(source, target, fstype, flags, data=None) -> None:
    encode = (lambda s: s if s is None else s.encode())
    if _LIBC.mount(encode(source), encode(target), encode(fstype), ctypes.c_ulong(flags), encode(data)) != 0:
        raise OSError(ctypes.get_errno(), f"mount {source} on {target}")


def _blocked(paths: list[str]) -> dict[str, set[str]]:
    """Directories nobody cannot search, each with the entries below it that lead to ``paths``."""
    blocked: dict[str, set[str]] = {}
    for path in paths:
        parts = os.path.abspath(path).split("/")[1:]
        for depth in range(len(parts) - 1):
            directory = "/" + "/".join(parts[:depth])
            if not os.stat(directory).st_mode & 0o001:
                blocked.setdefault(directory, set()).add(parts[depth])
    return blocked


def reach(paths: list[str]) -> None:
    """Make every directory on the way to ``paths`` searchable by others, in this process's mount namespace."""
    if _LIBC.unshare(CLONE_NEWNS) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    while True:
        blocked = _blocked(paths)
        if not blocked:
            return
        directory = min(blocked, key=len)  # outermost first: what is below it is bound back in
        entries = {name: os.open(os.path.join(directory, name), os.O_PATH) for name in blocked[directory]}
        _mount("tmpfs", directory, "tmpfs", 0, "mode=755")
        for name, fd in entries.items():
            target = os.path.join(directory, name)
            if os.path.isdir(f"/proc/self/fd/{fd}"):
                os.mkdir(target)
            else:
                open(target, "w").close()
            _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
            os.close(fd)


def main(argv: list[str]) -> None:
    split = argv.index("--")
    paths, command = argv[:split], argv[split + 1:]
    reach([os.path.realpath(p) for p in paths] + paths)
    os.setgroups([])
    os.setresgid(NOBODY, NOBODY, NOBODY)
    os.setresuid(NOBODY, NOBODY, NOBODY)
    os.execv(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])

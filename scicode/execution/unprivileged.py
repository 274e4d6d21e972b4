"""Start bubblewrap as an unprivileged host user, with the paths it binds staged where it can reach them.

    python -I unprivileged.py UID GID -- bwrap ARGS...

Run by root. bubblewrap maps the sandbox's uid to the uid that starts it, so started by root the
sandbox would be the host's root: the owner of kernel-wide settings and of every root-owned file a
mistake could expose. Started as an unprivileged user instead, it could not reach a bind source
under a private directory (a venv in a 0700 checkout). So, in a mount namespace of its own:

1. each `--ro-bind SRC DEST` source is opened, as root, in the new namespace;
2. a small tmpfs covers `/tmp`, and each source is bound at `/tmp/N` there (through its open
   descriptor: the cover hides sources under `/tmp` from their paths);
3. this process becomes UID:GID with no groups and no capabilities, and execs bubblewrap with
   `--ro-bind /tmp/N DEST`. Nothing of this is visible outside the namespace.

Standard library only, run with `-I`: it starts before any sandbox and trusts nothing in the
environment or the working directory.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import sys

_KERNEL_PATHS = ("/proc/", "/dev/")  # bubblewrap resolves these itself
#: Options whose values must not be read as options (option + values).
_WITH_VALUES = {"--ro-bind": 3, "--symlink": 3, "--uid": 2, "--gid": 2, "--size": 2, "--chdir": 2}
_WITH_VALUES |= {"--proc": 2, "--dev": 2, "--tmpfs": 2, "--cap-drop": 2, "--remount-ro": 2}
_STAGE = "/tmp"  # noqa: S108 - covered by a private tmpfs below
CLONE_NEWNS, MS_BIND, MS_REC, MS_PRIVATE, MS_NOSUID, MS_NODEV = 0x20000, 4096, 16384, 1 << 18, 2, 4

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    if _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) != 0:
        err = ctypes.get_errno()
        sys.exit(f"scicode: cannot stage {source or fstype} for the sandbox: {os.strerror(err)}")


def _split(args: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """The arguments with each bind source replaced by a staged path, and the sources (index, path)."""
    out: list[str] = []
    sources: list[tuple[int, str]] = []
    i = 0
    while i < len(args):
        if args[i] == "--":
            return out + args[i:], sources
        if args[i] == "--ro-bind" and not args[i + 1].startswith(_KERNEL_PATHS):
            sources.append((len(sources), args[i + 1]))
            out += ["--ro-bind", f"{_STAGE}/{len(sources) - 1}", args[i + 2]]
            i += 3
            continue
        arity = _WITH_VALUES.get(args[i], 1)
        out += args[i : i + arity]
        i += arity
    return out, sources


def _stage(sources: list[tuple[int, str]]) -> None:
    if _libc.unshare(CLONE_NEWNS) != 0:
        sys.exit(f"scicode: cannot make a mount namespace: {os.strerror(ctypes.get_errno())}")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Opened inside the new namespace: a bind's source must be one of its own mounts.
    descriptors = [(n, os.open(path, os.O_PATH), os.path.isdir(path)) for n, path in sources]
    _mount("tmpfs", _STAGE, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    for n, fd, is_dir in descriptors:
        target = f"{_STAGE}/{n}"
        if is_dir:
            os.mkdir(target)
        else:
            open(target, "wb").close()
        _mount(f"/proc/self/fd/{fd}", target, None, MS_BIND | MS_REC)
        os.close(fd)


def main(argv: list[str]) -> None:
    """Stage the binds, become the unprivileged user, exec bubblewrap."""
    uid, gid, separator, *command = argv[1:]
    if separator != "--" or not command:
        sys.exit("usage: unprivileged.py UID GID -- bwrap ARGS...")
    args, sources = _split(command)
    executable = shutil.which(args[0])  # now: the interpreter's own files may be out of reach later
    if executable is None:
        sys.exit(f"scicode: {args[0]} not found")
    _stage(sources)
    os.setgroups([])
    os.setresgid(int(gid), int(gid), int(gid))
    os.setresuid(int(uid), int(uid), int(uid))
    os.execv(executable, args)  # noqa: S606


if __name__ == "__main__":
    main(sys.argv)
